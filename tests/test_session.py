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
