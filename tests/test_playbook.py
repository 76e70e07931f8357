import dataclasses
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_playbook import FitRecord, Playbook, Result
from tests import helpers


@dataclasses.dataclass
class _FoundLearningRate(Result):
    kind = "test_found_learning_rate"
    learning_rate: float
    ok: bool
    message: str

    def settles(self):
        return {"learning_rate": self.learning_rate}


def _playbook(strategy, digits, model=None, **kwargs):
    kwargs.setdefault("loss", helpers.LOGITS_LOSS)
    kwargs.setdefault("batch_size", 16)
    return Playbook(
        model or helpers.mlp,
        (digits["x_train"], digits["y_train"]),
        validation_data=(digits["x_val"], digits["y_val"]),
        strategy=strategy,
        verbose=0,
        **kwargs,
    )


def test_setup_is_recorded_with_both_batch_sizes(strategy, digits, tmp_path):
    pb = _playbook(strategy, digits, directory=tmp_path)
    replicas = strategy.num_replicas_in_sync
    setup = pb.journal[0]
    assert (setup.per_replica_batch_size, setup.global_batch_size) == (16, 16 * replicas)
    assert setup.num_replicas == replicas and setup.num_train_examples == 512
    on_disk = json.loads((tmp_path / "journal.json").read_text())
    assert on_disk["results"][0]["global_batch_size"] == 16 * replicas


def test_accepts_compiled_uncompiled_models_and_builders(digits):
    compiled = helpers.mlp()
    compiled.compile(optimizer=keras.optimizers.SGD(0.05), loss=helpers.LOGITS_LOSS, metrics=["accuracy"])
    pb = _playbook(None, digits, model=compiled, loss=None)
    assert pb.model is compiled and pb.model.optimizer.__class__ is keras.optimizers.SGD
    uncompiled = helpers.mlp()
    pb = _playbook(None, digits, model=uncompiled, optimizer="rmsprop")
    assert pb.model.compiled and isinstance(pb.model.optimizer, keras.optimizers.RMSprop)
    built_by_function = _playbook(None, digits, model=helpers.mlp)
    assert isinstance(built_by_function.model.optimizer, keras.optimizers.Adam)


def test_unbuilt_model_is_built_from_the_data(digits):
    model = keras.Sequential([keras.layers.Dense(16, activation="relu"), keras.layers.Dense(10)])
    pb = _playbook(None, digits, model=model)
    assert pb.model.built and len(pb.session.initial_weights) == 4


def test_fit_trains_and_records_learning_curves(strategy, digits, tmp_path):
    pb = _playbook(strategy, digits, metrics=["accuracy"], directory=tmp_path)
    history = pb.fit(epochs=3, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0]
    record = pb.journal[-1]
    assert isinstance(record, FitRecord) and record.ok and record.monitor == "val_loss"
    assert record.history["val_accuracy"] == pytest.approx(history.history["val_accuracy"])
    assert 1 <= record.best_epoch <= 3
    assert json.loads((tmp_path / "journal.json").read_text())["results"][-1]["kind"] == "fit"
    assert record.plot().axes


def test_fit_uses_settled_hyperparameters_unless_overridden(strategy, digits):
    pb = _playbook(strategy, digits, optimizer=keras.optimizers.SGD(0.01))
    pb.journal.append(_FoundLearningRate(learning_rate=0.2, ok=True, message=""))
    pb.fit(epochs=1, verbose=0)
    assert keras.ops.convert_to_numpy(pb.model.optimizer.learning_rate) == pytest.approx(0.2)
    # The set-up settles the batch size and the optimizer's own momentum; the stage settled the learning rate.
    assert pb.journal[-1].hyperparameters == {"learning_rate": 0.2, "batch_size": 16, "momentum": 0.0}
    pb.fit(epochs=1, verbose=0, learning_rate=0.05, weight_decay=1e-4, batch_size=8)
    assert keras.ops.convert_to_numpy(pb.model.optimizer.learning_rate) == pytest.approx(0.05)
    assert pb.model.optimizer.weight_decay == 1e-4
    assert pb.journal[-1].hyperparameters == {
        "learning_rate": 0.05,
        "weight_decay": 1e-4,
        "batch_size": 8,
        "momentum": 0.0,
    }


def test_fit_rejects_bad_arguments_before_training(digits):
    pb = _playbook(None, digits)
    before = helpers.variables_of(pb.model)
    with pytest.raises(TypeError, match=r"unknown hyperparameter\(s\) \['dropout'\]"):
        pb.fit(epochs=1, dropout=0.5)
    with pytest.raises(ValueError, match="learning_rate=-0.1"):
        pb.fit(epochs=1, learning_rate=-0.1)
    with pytest.raises(ValueError, match="epochs=0"):
        pb.fit(epochs=0)
    with pytest.raises(ValueError, match=r"momentum.*\[0, 1\)"):
        pb.fit(epochs=1, momentum=1.5)
    with pytest.raises(ValueError, match="has no `momentum`"):  # The default optimizer is Adam.
        pb.fit(epochs=1, momentum=0.9)
    helpers.assert_same_values(before, helpers.variables_of(pb.model))
    assert len(pb.journal) == 1


def test_stages_leave_the_model_exactly_as_it_was(strategy, digits):
    pb = _playbook(strategy, digits, model=lambda: helpers.mlp(dropout=0.5, l2=1e-3))
    pb.fit(epochs=1, verbose=0)
    before = helpers.variables_of(pb.model)
    pb.check_initial_loss(num_batches=2)
    pb.overfit_small_sample(num_batches=2, max_steps=20)
    helpers.assert_same_values(before, helpers.variables_of(pb.model))
    dropout = [layer for layer in pb.model.layers if isinstance(layer, keras.layers.Dropout)][0]
    assert dropout.rate == 0.5
    assert pb.model.layers[0].kernel.regularizer is not None


class _FailWhenArmed(keras.layers.Layer):
    """Identity that raises in eager or traced calls once `armed` is set."""

    armed = False

    def call(self, inputs):
        if _FailWhenArmed.armed:
            raise RuntimeError("armed failure inside the model")
        return inputs


def test_model_state_is_restored_when_a_stage_raises(strategy, digits):
    def build():
        return keras.Sequential([keras.Input((64,)), keras.layers.Dense(10), _FailWhenArmed()])

    pb = _playbook(strategy, digits, model=build)
    pb.fit(epochs=1, verbose=0)
    trained = helpers.variables_of(pb.model)
    assert not helpers.variables_of(pb.model)[0].tolist() == pb.session.initial_weights[0].tolist()
    _FailWhenArmed.armed = True
    try:
        with pytest.raises(RuntimeError, match="armed failure"):
            pb.check_initial_loss(num_batches=2)  # Loads the initial weights, then fails.
    finally:
        _FailWhenArmed.armed = False
    helpers.assert_same_values(trained, helpers.variables_of(pb.model))


# Bad input: a clear error before any training, and nothing of the user's changed.


def test_model_without_loss_raises(digits):
    model = helpers.mlp()
    with pytest.raises(ValueError, match="has no loss.*loss="):
        Playbook(model, (digits["x_train"], digits["y_train"]), verbose=0)
    assert not model.compiled


def test_builder_without_loss_raises(digits):
    with pytest.raises(ValueError, match="has no loss"):
        Playbook(helpers.mlp, (digits["x_train"], digits["y_train"]), verbose=0)


@pytest.mark.parametrize(
    "labels, loss, match",
    [
        (lambda y: y + 5, helpers.LOGITS_LOSS, r"range over \[5, 14\].*10 classes"),
        (lambda y: keras.utils.to_categorical(y, 10), helpers.LOGITS_LOSS, "integer class ids.*shape \\(512, 10\\)"),
        (
            lambda y: keras.utils.to_categorical(y, 12),
            "categorical_crossentropy",
            "one-hot labels with 10 columns.*\\(512, 12\\)",
        ),
        (lambda y: y, "binary_crossentropy", r"labels in \[0, 1\].*\[0, 9\]"),
    ],
)
def test_labels_that_do_not_fit_the_output_raise(digits, labels, loss, match):
    model = helpers.mlp()
    weights = model.get_weights()
    with pytest.raises(ValueError, match=match):
        Playbook(model, (digits["x_train"], labels(digits["y_train"])), loss=loss, verbose=0)
    assert not model.compiled
    helpers.assert_same_values(weights, model.get_weights())


def test_sparse_loss_with_one_output_unit_raises(digits):
    with pytest.raises(ValueError, match="needs one output unit per class.*binary_crossentropy"):
        Playbook(
            lambda: helpers.mlp(num_classes=1),
            (digits["x_train"], digits["y_train"] % 2),
            loss="sparse_categorical_crossentropy",
            verbose=0,
        )


def test_validation_labels_are_checked_too(digits):
    with pytest.raises(ValueError, match="validation data"):
        Playbook(
            helpers.mlp,
            (digits["x_train"], digits["y_train"]),
            validation_data=(digits["x_val"], digits["y_val"] + 1),
            loss=helpers.LOGITS_LOSS,
            verbose=0,
        )


def test_nan_in_data_raises(digits):
    x = digits["x_train"].copy()
    x[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        Playbook(helpers.mlp, (x, digits["y_train"]), loss=helpers.LOGITS_LOSS, verbose=0)


def test_empty_dataset_raises():
    empty = tf.data.Dataset.from_tensor_slices((np.zeros((0, 64), "float32"), np.zeros((0,), "int64"))).batch(4)
    with pytest.raises(ValueError, match="empty"):
        Playbook(helpers.mlp, empty, loss=helpers.LOGITS_LOSS, verbose=0)


@pytest.mark.parametrize("batch_size, error", [(0, ValueError), (-1, ValueError), (1.5, TypeError)])
def test_bad_batch_size_raises(digits, batch_size, error):
    with pytest.raises(error, match=f"batch_size={batch_size}"):
        Playbook(
            helpers.mlp,
            (digits["x_train"], digits["y_train"]),
            loss=helpers.LOGITS_LOSS,
            batch_size=batch_size,
            verbose=0,
        )


def test_strategy_that_is_not_a_strategy_raises(digits):
    model = helpers.mlp()
    with pytest.raises(TypeError, match="strategy='mirrored'"):
        Playbook(
            model, (digits["x_train"], digits["y_train"]), loss=helpers.LOGITS_LOSS, strategy="mirrored", verbose=0
        )
    assert not model.compiled


def test_validation_structure_differing_from_training_raises(digits):
    with pytest.raises(ValueError, match="same structure"):
        Playbook(
            helpers.mlp,
            (digits["x_train"], digits["y_train"]),
            validation_data=({"features": digits["x_val"]}, digits["y_val"]),
            loss=helpers.LOGITS_LOSS,
            verbose=0,
        )


def test_weight_decay_override_takes_effect_after_a_first_fit(digits):
    def kernel_norm_after(weight_decay):
        keras.utils.set_random_seed(0)
        pb = _playbook(None, digits, optimizer=keras.optimizers.SGD(0.05))
        pb.fit(epochs=1, verbose=0)  # Traces the train step without decay.
        pb.fit(epochs=2, verbose=0, weight_decay=weight_decay)
        return float(np.linalg.norm(keras.ops.convert_to_numpy(pb.model.layers[0].kernel)))

    assert kernel_norm_after(weight_decay=2.0) < 0.9 * kernel_norm_after(weight_decay=0.0)


def test_sanity_checks_start_from_the_initial_weights_and_measurements_from_the_current(digits):
    import math

    pb = _playbook(None, digits)
    pb.fit(3, learning_rate=3e-3, verbose=0, watch=False)
    trained = pb.model.evaluate(digits["x_train"], digits["y_train"], verbose=0)
    assert trained < 1.0  # Well below ln 10 = 2.30: the live model has learned.
    found = pb.find_lr(num_steps=20, repeats=1)
    assert np.mean(found.losses[:3]) < 1.2  # The range test starts from the trained weights.
    initial = pb.check_initial_loss()
    assert abs(initial.loss - math.log(10)) < 0.5  # The sanity checks, from the untrained ones.
    overfit = pb.overfit_small_sample(max_steps=1)
    assert overfit.initial_loss > 1.8


def test_a_new_playbook_on_the_same_directory_carries_the_journal_on(digits, tmp_path):
    pb = _playbook(None, digits, directory=tmp_path)
    found = pb.find_lr(num_steps=60, repeats=1)  # 20 steps fail on some draws of the builder
    path = tmp_path / "journal.json"
    with pytest.warns(UserWarning, match="starts from the ones saved in"):  # Rebuilt: other initial weights.
        again = _playbook(None, digits, directory=tmp_path)  # The same set-up, built again (another model name).
    assert [result.kind for result in again.journal] == ["setup", "find_lr"]
    assert again.journal.settled()["learning_rate"] == found.suggested_lr
    # Another model, other data values, another initializer, optimizer or batch size: a new set-up after the
    # old one, which stays as history; nothing it settled holds (tests/test_rerun.py runs each through run()).
    changes = {
        "model: the config of layer 2 \\(Dense\\) changed": {
            "model": keras.Sequential(
                [
                    keras.Input((64,)),
                    keras.layers.Dense(32, activation="relu"),
                    keras.layers.Dense(10, kernel_initializer="he_normal"),
                ]
            )
        },
        "model: the config of layer 1": {"model": helpers.mlp(hidden=64)},
        "data: the training data's inputs changed": {"train": (digits["x_train"] * 0.5, digits["y_train"])},
        "optimizer: Adam -> SGD": {"optimizer": keras.optimizers.SGD(0.1)},
        "batch size: 16 -> 32": {"batch_size": 32},
    }
    for number, (named, change) in enumerate(changes.items(), start=1):
        train = change.pop("train", (digits["x_train"], digits["y_train"]))
        with pytest.warns(UserWarning, match=named):
            changed = Playbook(
                change.pop("model", helpers.mlp()),
                train,
                validation_data=(digits["x_val"], digits["y_val"]),
                loss=helpers.LOGITS_LOSS,
                directory=tmp_path,
                verbose=0,
                **{"batch_size": 16, **change},
            )
        assert [result.kind for result in changed.journal].count("setup") == 1 + number
        assert (
            "learning_rate" not in changed.journal.settled() or changed.journal.source("learning_rate").kind == "setup"
        )
        assert json.loads(path.read_text())["results"][1]["kind"] == "find_lr"  # History kept on disk.
    fresh = _playbook(None, digits, model=helpers.mlp(hidden=64), directory=tmp_path, overwrite=True)
    assert [result.kind for result in fresh.journal] == ["setup"]


def test_a_file_that_is_not_a_journal_is_refused_and_left_alone(digits, tmp_path):
    path = tmp_path / "journal.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"journal.json is not a journal this library can read"):
        _playbook(None, digits, directory=tmp_path)
    assert path.read_text() == "{not json"
