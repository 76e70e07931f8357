"""PlaybookHyperModel: trial models, seeds, the two weight-decay modes, builders with hp."""

import keras
import keras_tuner
import numpy as np
import pytest

from keras_playbook import Playbook
from keras_playbook._session import weights_equal
from keras_playbook.tuning import PlaybookHyperModel, apply_l2_penalty
from keras_playbook.tuning.hypermodel import known_hyperparameters
from tests import helpers


def _playbook(digits, model=None, strategy=None, optimizer=None):
    return Playbook(
        model if model is not None else helpers.mlp(),
        (digits["x_train"], digits["y_train"]),
        validation_data=(digits["x_val"], digits["y_val"]),
        loss=helpers.LOGITS_LOSS,
        optimizer=optimizer,
        metrics=["accuracy"],
        batch_size=64,
        strategy=strategy,
        verbose=0,
    )


def _hp(**values):
    hp = keras_tuner.HyperParameters()
    hp.values.update(values)
    return hp


def _hypermodel(pb, **kwargs):
    return PlaybookHyperModel(pb.session, pb.train_data, pb.validation_data, **kwargs)


def build_with_dropout(hp):
    rate = hp.Float("dropout", 0.0, 0.5, default=0.0)
    units = hp.Choice("units", [16, 32], default=32)
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(units, activation="relu"),
            keras.layers.Dropout(rate),
            keras.layers.Dense(10),
        ]
    )


def test_seeds_give_different_initial_weights_and_no_seed_the_playbooks(digits, strategy):
    pb = _playbook(digits, strategy=strategy)
    hypermodel = _hypermodel(pb)
    first = hypermodel.build(_hp(seed=1)).get_weights()
    again = hypermodel.build(_hp(seed=1)).get_weights()
    second = hypermodel.build(_hp(seed=2)).get_weights()
    assert weights_equal(first, again)
    assert not np.array_equal(first[0], second[0])
    assert weights_equal(hypermodel.build(_hp()).get_weights(), pb.session.initial_weights)


def test_trial_gets_the_training_hyperparameters(digits):
    pb = _playbook(digits, optimizer=keras.optimizers.SGD(0.1, momentum=0.5))
    model = _hypermodel(pb, defaults={"learning_rate": 0.05}).build(_hp(weight_decay=1e-3, momentum=0.9))
    optimizer = model.optimizer
    assert isinstance(optimizer, keras.optimizers.SGD) and optimizer is not pb.model.optimizer
    assert float(keras.ops.convert_to_numpy(optimizer.learning_rate)) == pytest.approx(0.05)
    assert optimizer.weight_decay == pytest.approx(1e-3) and optimizer.momentum == pytest.approx(0.9)
    assert pb.model.optimizer.momentum == 0.5 and pb.model.optimizer.weight_decay is None
    assert model.losses == []


def test_l2_mode_penalizes_the_trials_kernels_only(digits, strategy):
    pb = _playbook(digits, strategy=strategy, optimizer=keras.optimizers.AdamW(1e-3, weight_decay=4e-3))
    model = _hypermodel(pb, weight_decay_mode="l2").build(_hp(weight_decay=1e-2))
    assert not model.optimizer.weight_decay  # Only the L2 penalty decays the weights.
    kernels = [v for v in model.trainable_variables if v.name == "kernel"]
    expected = sum(1e-2 * np.sum(keras.ops.convert_to_numpy(v) ** 2) for v in kernels)
    assert float(sum(keras.ops.convert_to_numpy(loss) for loss in model.losses)) == pytest.approx(expected, rel=1e-5)
    # The user's model has no penalty and its optimizer keeps its decay.
    assert pb.model.losses == []
    assert all(v.regularizer is None for v in pb.model.trainable_variables)
    assert pb.model.optimizer.weight_decay == pytest.approx(4e-3)


def test_apply_l2_penalty_counts_kernels():
    model = helpers.mlp()
    assert apply_l2_penalty(model, 1e-3) == 2
    assert len(model.losses) == 2
    apply_l2_penalty(model, 0.0)
    assert model.losses == []


def test_builder_taking_hp_declares_its_hyperparameters(digits):
    pb = _playbook(digits, model=build_with_dropout)
    assert pb.session.declared_hyperparameters() == {"dropout": 0.0, "units": 32}
    assert "dropout" in known_hyperparameters(pb.session)
    assert "learning_rate" in known_hyperparameters(pb.session)
    model = _hypermodel(pb).build(_hp(dropout=0.5, units=16))
    dropout = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)][0]
    assert dropout.rate == 0.5
    assert model.layers[0].units == 16  # Another architecture: its own initialization.
    # The Playbook's own model uses the defaults.
    assert pb.model.layers[0].units == 32


def test_a_keras_tuner_hypermodel_is_accepted(digits):
    class HyperMLP(keras_tuner.HyperModel):
        def build(self, hp):
            return build_with_dropout(hp)

    pb = _playbook(digits, model=HyperMLP())
    assert set(pb.session.declared_hyperparameters()) == {"dropout", "units"}


def _with_batch_norm():
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(32),
            keras.layers.BatchNormalization(),
            keras.layers.Activation("relu"),
            keras.layers.Dense(10),
        ]
    )


@pytest.mark.parametrize("kind", ["builder", "model"])
def test_every_copy_keeps_the_frozen_layers_frozen(strategy, digits, kind):
    from keras_playbook import _short_runs as short_runs
    from keras_playbook._session import leaf_layers

    pb = _playbook(digits, model=_with_batch_norm if kind == "builder" else _with_batch_norm(), strategy=strategy)
    pb.model.layers[0].trainable = False
    pb.model.layers[1].trainable = False  # Frozen BatchNormalization: inference mode.
    live = [layer.trainable for layer in leaf_layers(pb.model)]
    assert live == [False, False, True, True]
    copies = [pb.session.trial_model(), short_runs.working_copy(pb.session), _hypermodel(pb).build(_hp())]
    for copy in copies:
        assert [layer.trainable for layer in leaf_layers(copy)] == live
    # A trial trains only what the live model trains.
    trial = copies[2]
    frozen = [np.array(w) for w in trial.layers[0].get_weights() + trial.layers[1].get_weights()]
    trial.fit(digits["x_train"][:128], digits["y_train"][:128], batch_size=64, epochs=1, verbose=0)
    after = trial.layers[0].get_weights() + trial.layers[1].get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(frozen, after))


@pytest.mark.slow
def test_what_a_configuration_leaves_out_comes_from_the_journal_not_the_live_optimizer(digits, tmp_path):
    from keras_playbook.tuning.hypermodel import base_values, optimizer_hyperparameters

    pb = _playbook(digits)  # Adam(1e-3).
    found = pb.find_lr(num_steps=40, repeats=1)
    assert found.ok
    pb.fit(epochs=1, schedule="one_cycle", verbose=0)
    live = float(keras.ops.convert_to_numpy(pb.model.optimizer.learning_rate))
    assert live < found.one_cycle_lr_bounds[0]  # Where the schedule ended.
    # Without a value in force: the optimizer as compiled.
    names = ["learning_rate", "beta_1", "weight_decay"]
    assert base_values(pb.session, pb.train_data, {}, names) == {
        "learning_rate": 1e-3,
        "beta_1": 0.9,
        "weight_decay": 0.0,
    }
    assert "beta_1" in optimizer_hyperparameters(pb.session) and "momentum" not in optimizer_hyperparameters(pb.session)
    # In a Playbook, the value in force: the rate find_lr settled, for the configuration that leaves it out.
    result = pb.compare_seeds(
        {"settled rate": {"weight_decay": 1e-4}, "given rate": {"learning_rate": 0.01}},
        seeds=2,
        epochs=1,
        directory=tmp_path,
    )
    rates = {trial["values"]["config"]: trial["values"]["learning_rate"] for trial in result.trials}
    assert rates == {"settled rate": pytest.approx(found.suggested_lr), "given rate": 0.01}
    assert result.call["read"]["learning_rate"] == pytest.approx(found.suggested_lr)
