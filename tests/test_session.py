import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_playbook._session import Session, resolve_strategy, weights_equal
from tests import helpers


def _compiled_session(strategy, model=None):
    session = Session(model or helpers.mlp, strategy=strategy)
    session.compile(loss=helpers.LOGITS_LOSS, optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    session.ensure_built(np.zeros((1, 64), "float32"))
    return session


def test_strategy_must_be_a_strategy():
    with pytest.raises(TypeError, match="`tf.distribute.Strategy`.*Received: strategy='mirrored'"):
        resolve_strategy("mirrored")


def test_without_gpus_the_default_strategy_is_chosen():
    assert resolve_strategy(None) is tf.distribute.get_strategy()


def test_active_scope_is_used(mirrored_strategy):
    with mirrored_strategy.scope():
        assert resolve_strategy(None) is mirrored_strategy


def test_model_built_outside_the_scope_is_rebuilt_inside_with_same_weights(mirrored_strategy, digits):
    user_model = helpers.mlp()
    user_model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=helpers.LOGITS_LOSS)
    user_model.fit(digits["x_train"], digits["y_train"], epochs=1, verbose=0)
    session = Session(user_model, strategy=mirrored_strategy)
    session.compile()
    assert session.model is not user_model
    assert all(mirrored_strategy.extended.variable_created_in_scope(v.value) for v in session.model.variables)
    assert weights_equal(session.model.get_weights(), user_model.get_weights())
    # The optimizer is copied with its state (step count, Adam moments).
    helpers.assert_same_values(
        [keras.ops.convert_to_numpy(v) for v in user_model.optimizer.variables],
        [keras.ops.convert_to_numpy(v) for v in session.model.optimizer.variables],
    )
    session.model.fit(digits["x_train"], digits["y_train"], epochs=1, verbose=0)


def test_model_on_the_default_strategy_is_used_as_is():
    user_model = helpers.mlp()
    session = Session(user_model, strategy=tf.distribute.get_strategy())
    assert session.model is user_model


@pytest.mark.parametrize("interruption", [RuntimeError, KeyboardInterrupt])
def test_preserved_restores_weights_and_optimizer_state(strategy, digits, interruption):
    session = _compiled_session(strategy)
    model = session.model
    model.fit(digits["x_train"], digits["y_train"], epochs=1, verbose=0)
    before = helpers.variables_of(model)
    with pytest.raises(interruption):
        with session.preserved():
            model.fit(digits["x_train"], digits["y_train"], epochs=2, verbose=0)
            assert not weights_equal(
                before[: len(model.variables)], helpers.variables_of(model)[: len(model.variables)]
            )
            raise interruption()
    helpers.assert_same_values(before, helpers.variables_of(model))


def test_preserved_on_a_fresh_optimizer_leaves_it_as_new(strategy, digits):
    session = _compiled_session(strategy)
    with session.preserved():
        session.model.fit(digits["x_train"], digits["y_train"], epochs=1, verbose=0)
    optimizer = session.model.optimizer
    assert int(keras.ops.convert_to_numpy(optimizer.iterations)) == 0
    assert all(not np.any(keras.ops.convert_to_numpy(v)) for v in optimizer.variables if "momentum" in v.path)


def test_trial_model_starts_from_initial_weights(strategy, digits):
    session = _compiled_session(strategy)
    initial = session.model.get_weights()
    session.model.fit(digits["x_train"], digits["y_train"], epochs=1, verbose=0)
    trial = session.trial_model()
    assert trial is not session.model
    assert weights_equal(trial.get_weights(), initial)
    assert not weights_equal(session.model.get_weights(), initial)


def test_uncopyable_subclassed_model_asks_for_a_builder():
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(10)

        def call(self, inputs):
            return self.dense(inputs)

    session = Session(Subclassed(), strategy=tf.distribute.get_strategy())
    session.compile(loss=helpers.LOGITS_LOSS)
    session.ensure_built(np.zeros((1, 64), "float32"))
    with pytest.raises(TypeError, match="Pass a builder"):
        session.trial_model()


def test_builder_must_return_a_model():
    with pytest.raises(TypeError, match="must return a `keras.Model`"):
        Session(lambda: "not a model")
    with pytest.raises(TypeError, match="`keras.Model` or a callable"):
        Session(42)


def test_optimizer_override_starts_fresh_on_a_rebuilt_model(mirrored_strategy, digits):
    user_model = helpers.mlp()
    user_model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=helpers.LOGITS_LOSS)
    user_model.fit(digits["x_train"], digits["y_train"], epochs=1, verbose=0)
    session = Session(user_model, strategy=mirrored_strategy)
    session.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    assert session.model.optimizer is not user_model.optimizer
    assert not session.model.optimizer.built or int(keras.ops.convert_to_numpy(session.model.optimizer.iterations)) == 0


def test_restore_refuses_a_snapshot_that_does_not_fit():
    import dataclasses

    session = _compiled_session(tf.distribute.get_strategy())
    state = session.snapshot()
    before = helpers.variables_of(session.model)
    shorter = dataclasses.replace(state, model=state.model[:-1])
    with pytest.raises(RuntimeError, match=r"Cannot restore the model: it has \d+ variables now and the snapshot"):
        session.restore(shorter)
    helpers.assert_same_values(before, helpers.variables_of(session.model))  # Nothing half-assigned.


def test_a_fresh_optimizer_starts_from_the_compiled_config_not_the_live_optimizer(strategy, digits):
    session = _compiled_session(strategy)  # SGD(0.1, momentum=0.9).
    optimizer = session.model.optimizer
    session.model.fit(digits["x_train"], digits["y_train"], epochs=1, verbose=0)
    optimizer.learning_rate = 9.25e-5  # Where a schedule left it.
    optimizer.momentum, optimizer.weight_decay = 0.5, 0.01  # What a run set.
    fresh = session.fresh_optimizer()
    assert fresh is not optimizer and not fresh.built
    assert float(keras.ops.convert_to_numpy(fresh.learning_rate)) == pytest.approx(0.1)
    assert fresh.momentum == 0.9 and fresh.weight_decay is None
    changed = session.fresh_optimizer(learning_rate=0.02, weight_decay=1e-4)
    assert float(keras.ops.convert_to_numpy(changed.learning_rate)) == pytest.approx(0.02)
    assert changed.momentum == 0.9 and changed.weight_decay == pytest.approx(1e-4)
    with pytest.raises(ValueError, match=r"SGD has no argument\(s\) \['beta_1'\]"):
        session.fresh_optimizer(beta_1=0.9)


def test_a_fresh_optimizer_keeps_the_models_wrappers(digits):
    from keras_playbook import finetune

    session = Session(helpers.mlp, strategy=tf.distribute.get_strategy())
    session.compile(
        loss=helpers.LOGITS_LOSS,
        optimizer=keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(1e-3), initial_scale=2.0**10),
    )
    session.ensure_built(np.zeros((1, 64), "float32"))
    session.model.optimizer.inner_optimizer.learning_rate = 0.5
    fresh = session.fresh_optimizer(learning_rate=0.01, beta_1=0.8)  # The settings of the optimizer inside.
    assert isinstance(fresh, keras.optimizers.LossScaleOptimizer) and fresh.initial_scale == 2.0**10
    assert isinstance(fresh.inner_optimizer, keras.optimizers.Adam) and fresh.inner_optimizer.beta_1 == 0.8
    assert float(keras.ops.convert_to_numpy(fresh.learning_rate)) == pytest.approx(0.01)
    assert float(keras.ops.convert_to_numpy(session.fresh_optimizer().learning_rate)) == pytest.approx(1e-3)

    # A DiscriminativeOptimizer (fine-tuning's phase 2) keeps its multipliers around the compiled optimizer.
    groups = finetune.layer_groups(session.model, n=2)
    session.compile_like(session.model, finetune.discriminative(keras.optimizers.Adam(0.3), groups, [0.1, 1.0]))
    fresh = session.fresh_optimizer(learning_rate=0.02)
    assert isinstance(fresh, finetune.DiscriminativeOptimizer)
    assert fresh.multipliers == session.model.optimizer.multipliers
    assert float(keras.ops.convert_to_numpy(fresh.learning_rate)) == pytest.approx(0.02)
    assert float(keras.ops.convert_to_numpy(session.fresh_optimizer().learning_rate)) == pytest.approx(1e-3)


def test_nothing_changed_sees_an_unbuilt_optimizers_rate_and_step_count():
    session = _compiled_session(tf.distribute.get_strategy())
    assert not session.model.optimizer.built
    before = helpers.variables_of(session.model)
    session.model.optimizer.learning_rate = 0.5
    with pytest.raises(AssertionError):
        helpers.assert_same_values(before, helpers.variables_of(session.model))
    session.model.optimizer.learning_rate = 0.1
    session.model.optimizer.iterations.assign(3)
    with pytest.raises(AssertionError):
        helpers.assert_same_values(before, helpers.variables_of(session.model))
