"""A rerun knows what changed: the set-up's identity, fix and run again, rerun_from, display is not identity."""

import json
import random
import re
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_playbook import Playbook
from keras_playbook import _fingerprints as fingerprints
from keras_playbook._data import make_pipeline
from tests import helpers

FIT_ONE_EPOCH = [("fit", {"epochs": 1})]


def _model(initializer="glorot_uniform", activation="relu", dropout=0.0, l2=None, seed=None):
    layers = [
        keras.Input((64,)),
        keras.layers.Dense(
            32,
            activation=activation,
            kernel_initializer=keras.initializers.get({"class_name": initializer, "config": {"seed": seed}}),
            kernel_regularizer=None if l2 is None else keras.regularizers.L2(l2),
        ),
    ]
    if dropout:
        layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(10, kernel_initializer=keras.initializers.GlorotUniform(seed)))
    return keras.Sequential(layers)


def _playbook(digits, directory, *, model=None, y_train=None, x_scale=1.0, **kwargs):
    kwargs.setdefault("loss", helpers.LOGITS_LOSS)
    kwargs.setdefault("batch_size", 32)
    return Playbook(
        model if model is not None else _model(),
        (digits["x_train"] * x_scale, digits["y_train"] if y_train is None else y_train),
        validation_data=(digits["x_val"], digits["y_val"]),
        directory=directory,
        verbose=0,
        **kwargs,
    )


def _quietly(build):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        playbook = build()
    return playbook, [str(warning.message) for warning in caught if issubclass(warning.category, UserWarning)]


CHANGES = {
    "labels permuted": ({"y_train": "permuted"}, r"data: the training data's labels changed"),
    "initializer": ({"model": lambda: _model(initializer="RandomNormal")}, r"model: the config of layer 1 \(Dense\)"),
    "activation": ({"model": lambda: _model(activation="tanh")}, r"model: the config of layer 1 \(Dense\)"),
    "dropout rate": (
        {"model": lambda: _model(dropout=0.3)},
        r"model: 2 layers -> 3 layers",
    ),
    "regularizer": ({"model": lambda: _model(l2=1e-3)}, r"model: the config of layer 1 \(Dense\)"),
    "loss": (
        {"loss": keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")},
        r"loss: SparseCategoricalCrossentropy: reduction 'sum_over_batch_size' -> 'sum'",
    ),
    "optimizer value": ({"optimizer": keras.optimizers.Adam(1e-2)}, r"optimizer: Adam: learning_rate 0\.001 -> 0\.01"),
    "optimizer class": ({"optimizer": keras.optimizers.SGD(0.05, momentum=0.9)}, r"optimizer: Adam -> SGD"),
    "batch size": ({"batch_size": 64}, r"batch size: 32 -> 64"),
    "seed": ({"seed": 3}, r"seed: 0 -> 3"),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_changed_component_starts_a_new_setup_and_every_stage_runs_again(digits, tmp_path, change):
    arguments, named = CHANGES[change]
    first = _playbook(digits, tmp_path)
    first.run(epochs=1, plan=["check_initial_loss", *FIT_ONE_EPOCH])
    trained = first.model.get_weights()
    arguments = dict(arguments)
    if arguments.get("y_train") == "permuted":
        arguments["y_train"] = np.random.default_rng(0).permutation(digits["y_train"])
    if callable(arguments.get("model")):
        arguments["model"] = arguments["model"]()
    again, said = _quietly(lambda: _playbook(digits, tmp_path, **arguments))
    assert any("The set-up changed" in message and re.search(named, message) for message in said), said
    assert [result.kind for result in again.journal].count("setup") == 2
    assert again.journal.settled() == again.journal.setup.settles()  # Only this set-up's values count.
    result = again.run(epochs=1, plan=["check_initial_loss", *FIT_ONE_EPOCH])
    assert [step["skipped"] for step in result.steps] == [False, False]
    assert result.message.startswith("The set-up changed") and re.search(named, result.message)
    assert not all(np.array_equal(a, b) for a, b in zip(again.model.get_weights(), trained))
    # What the first set-up measured is history: kept on disk, never settled again.
    on_disk = json.loads((tmp_path / "journal.json").read_text())["results"]
    assert [entry["kind"] for entry in on_disk][:3] == ["setup", "check_initial_loss", "fit"]
    assert again.journal.latest("fit") is again.journal[len(again.journal) - 2]


def test_the_same_setup_built_again_reads_everything_back_from_the_saved_initial_weights(strategy, digits, tmp_path):
    first = _playbook(digits, tmp_path, strategy=strategy)  # An unseeded model: a rebuild draws other initial weights.
    initial = first.session.initial_weights
    first.run(epochs=1, plan=["check_initial_loss", *FIT_ONE_EPOCH])
    again, said = _quietly(lambda: _playbook(digits, tmp_path, strategy=strategy))
    assert not any("set-up changed" in message for message in said)
    assert any("starts from the ones saved in" in message and "initial-000-" in message for message in said)
    helpers.assert_same_values(again.session.initial_weights, initial)
    result = again.run(epochs=1, plan=["check_initial_loss", *FIT_ONE_EPOCH])
    assert [step["skipped"] for step in result.steps] == [True, True]
    assert "starts from the ones saved in" in result.message
    helpers.assert_same_values(again.model.get_weights(), first.model.get_weights())
    # Seeded initializers: the same weights, nothing to say; the saved file is where the journal says.
    seeded = tmp_path / "seeded"
    _playbook(digits, seeded, model=_model(seed=1))
    _, said = _quietly(lambda: _playbook(digits, seeded, model=_model(seed=1)))
    assert said == []
    setup = json.loads((seeded / "journal.json").read_text())["results"][0]
    assert (seeded / setup["initial_weights"]["file"]).exists()


def test_the_constructor_is_what_trains(digits, tmp_path):
    _playbook(digits, tmp_path).run(epochs=1, plan=FIT_ONE_EPOCH)
    faster, _ = _quietly(lambda: _playbook(digits, tmp_path, optimizer=keras.optimizers.Adam(1e-2), batch_size=64))
    faster.run(epochs=1, plan=FIT_ONE_EPOCH)
    fit = faster.journal.latest("fit")
    assert fit.call["read"]["learning_rate"] == pytest.approx(1e-2) and fit.call["read"]["batch_size"] == 64
    assert "beta_1" in fit.call["read"]
    sgd, _ = _quietly(lambda: _playbook(digits, tmp_path, optimizer=keras.optimizers.SGD(0.05, momentum=0.9)))
    sgd.run(epochs=1, plan=FIT_ONE_EPOCH)  # Asked for Adam's beta_1 when the old set-up's values held.
    read = sgd.journal.latest("fit").call["read"]
    assert "beta_1" not in read and read["momentum"] == pytest.approx(0.9)
    assert read["learning_rate"] == pytest.approx(0.05)


class _Batches(keras.utils.PyDataset):
    def __init__(self, x, y):
        super().__init__()
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x) // 32

    def __getitem__(self, index):
        return self.x[index * 32 : (index + 1) * 32], self.y[index * 32 : (index + 1) * 32]


def test_data_fingerprints_arrays_datasets_and_what_they_cannot_see(digits, monkeypatch):
    arrays = (digits["x_train"], digits["y_train"])

    def fingerprint(data, **kwargs):
        return fingerprints.data_fingerprint(
            make_pipeline(data, batch_size=32, num_replicas=1, shuffle=True, **kwargs), "training data"
        )

    by_value, note = fingerprint(arrays)
    assert by_value["how"] == "values" and note is None
    permuted = (digits["x_train"], np.random.default_rng(0).permutation(digits["y_train"]))
    assert fingerprint(permuted)[0]["y"] != by_value["y"] and fingerprint(permuted)[0]["x"] == by_value["x"]
    dataset = tf.data.Dataset.from_tensor_slices(arrays).batch(32)
    in_order, note = fingerprint(dataset, input_rank=2)
    assert in_order["how"] == "first examples" and note is None
    relabelled = tf.data.Dataset.from_tensor_slices(permuted).batch(32)
    assert fingerprint(relabelled, input_rank=2)[0]["y"] != in_order["y"]
    batches = fingerprint(_Batches(*arrays), input_rank=2)[0]
    assert batches["how"] == "first examples" and batches["x"] == in_order["x"]
    assert fingerprint(_Batches(*permuted), input_rank=2)[0]["y"] != batches["y"]
    shuffled, note = fingerprint(tf.data.Dataset.from_tensor_slices(arrays).shuffle(512).batch(32), input_rank=2)
    assert shuffled["how"] == "spec only" and "data_version" in note
    # Above the size limit, a strided sample with the shapes, and the note says so.
    monkeypatch.setattr(fingerprints, "MAX_HASHED_BYTES", 10_000)
    monkeypatch.setattr(fingerprints, "_SAMPLED_BYTES", 5_000)
    sampled, note = fingerprint(arrays)
    assert sampled["how"] == "sampled" and "every" in note and "th example" in note


def test_data_version_names_data_read_in_a_random_order(digits, tmp_path):
    def shuffled(y):
        return tf.data.Dataset.from_tensor_slices((digits["x_train"], y)).shuffle(512).batch(32)

    pb, said = _quietly(
        lambda: Playbook(_model(), shuffled(digits["y_train"]), loss=helpers.LOGITS_LOSS, directory=tmp_path, verbose=0)
    )
    assert any("not fingerprinted" in message and "data_version" in message for message in said)
    assert "not fingerprinted" in pb.journal.setup.message

    def versioned(version):
        return Playbook(
            _model(),
            shuffled(digits["y_train"]),
            loss=helpers.LOGITS_LOSS,
            directory=tmp_path / "v",
            verbose=0,
            data_version=version,
        )

    _quietly(lambda: versioned("v1"))
    _, said = _quietly(lambda: versioned("v1"))
    assert not any("set-up changed" in message for message in said)
    _, said = _quietly(lambda: versioned("v2"))
    assert any("data_version 'v1' -> 'v2'" in message for message in said)
    with pytest.raises(TypeError, match="data_version"):
        versioned(["v3"])


def test_what_a_preprocessing_layer_adapted_is_part_of_the_model(digits, tmp_path):
    def adapted(scale):
        normalization = keras.layers.Normalization()
        normalization.adapt(digits["x_train"] * scale)
        return keras.Sequential([keras.Input((64,)), normalization, keras.layers.Dense(10)])

    _quietly(lambda: _playbook(digits, tmp_path, model=adapted(1.0)))
    _, said = _quietly(lambda: _playbook(digits, tmp_path, model=adapted(1.0)))
    assert not any("set-up changed" in message for message in said)
    _, said = _quietly(lambda: _playbook(digits, tmp_path, model=adapted(2.0)))
    assert any("The set-up changed" in message and "non-trainable weights" in message for message in said)


class _Subclassed(keras.Model):
    def __init__(self, units):
        super().__init__()
        self.hidden = keras.layers.Dense(units, activation="relu")
        self.out = keras.layers.Dense(10)

    def call(self, inputs):
        return self.out(self.hidden(inputs))


def test_a_subclassed_model_without_get_config_is_fingerprinted_by_its_weights_and_says_so(digits, tmp_path):
    model = _Subclassed(16)
    pb, said = _quietly(lambda: _playbook(digits, tmp_path, model=model))
    assert any("has no get_config" in message for message in said)
    assert "has no get_config" in " ".join(pb.journal.setup.notes)
    _, said = _quietly(lambda: _playbook(digits, tmp_path, model=_Subclassed(16)))  # Other initial weights.
    assert any("The set-up changed" in message and "model:" in message for message in said)


def test_fix_and_run_again_runs_a_failed_sanity_check_again(digits, tmp_path):
    plan = ["check_initial_loss", "overfit_small_sample", *FIT_ONE_EPOCH]
    broken = _playbook(digits, tmp_path, x_scale=300.0)  # Inputs not normalized: outputs far too confident.
    first = broken.run(epochs=1, plan=plan)
    assert first.stopped == "check_initial_loss" and "fix it and run again" in first.message
    # The same script again: the failed check runs again instead of being read back (it is cheap, and a
    # fix may be invisible to the set-up's fingerprint).
    same = _playbook(digits, tmp_path, x_scale=300.0).run(epochs=1, plan=plan)
    assert same.stopped == "check_initial_loss" and same.steps[0]["skipped"] is False
    fixed, _ = _quietly(lambda: _playbook(digits, tmp_path))
    result = fixed.run(epochs=1, plan=plan)
    assert result.stopped is None and [step["skipped"] for step in result.steps] == [False, False, False]
    assert result.steps[0]["ok"]
    # A last layer initialized N(0, 5^2): the same loop through a changed initializer.
    big = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10, kernel_initializer=keras.initializers.RandomNormal(stddev=5.0)),
        ]
    )
    loud, _ = _quietly(lambda: _playbook(digits, tmp_path / "init", model=big))
    assert loud.run(epochs=1, plan=plan).stopped == "check_initial_loss"
    calm, _ = _quietly(lambda: _playbook(digits, tmp_path / "init", model=_model()))
    assert calm.run(epochs=1, plan=plan).stopped is None


def test_weights_fixed_by_hand_after_a_failed_check_are_taken_as_a_fix(digits, tmp_path):
    def model(scale):
        built = _model(seed=1)
        kernel, bias = built.layers[-1].get_weights()
        built.layers[-1].set_weights([kernel * scale, bias])  # The config does not change.
        return built

    plan = ["check_initial_loss", *FIT_ONE_EPOCH]
    assert _playbook(digits, tmp_path, model=model(40.0)).run(epochs=1, plan=plan).stopped == "check_initial_loss"
    fixed, said = _quietly(lambda: _playbook(digits, tmp_path, model=model(1.0)))
    assert any("taken as a fix" in message for message in said)
    result = fixed.run(epochs=1, plan=plan)
    assert result.stopped is None and result.steps[0]["ok"] and "taken as a fix" in result.message


def test_a_rerun_in_the_same_process_starts_where_a_new_process_would(strategy, digits, tmp_path):
    plan = ["check_initial_loss", ("fit", {"epochs": 2})]
    pb = _playbook(digits, tmp_path, model=_model, strategy=strategy)  # A builder: placed, never compiled.
    pb.run(epochs=2, plan=plan)
    first = pb.journal.latest("fit").initial_loss
    # The same Playbook, the fit again: from the state it started with, not from the trained model.
    pb.run(epochs=2, plan=plan, rerun_from="fit")
    assert pb.journal.latest("fit").initial_loss == pytest.approx(first, rel=1e-5)
    pb.run(epochs=3, plan=["check_initial_loss", ("fit", {"epochs": 3})])  # A changed stage: the same.
    assert pb.journal.latest("fit").initial_loss == pytest.approx(first, rel=1e-5)


def test_a_sanity_check_that_passes_after_a_failure_keeps_what_came_after_it(digits, tmp_path):
    pb = _playbook(digits, tmp_path, x_scale=300.0, model=_model(seed=1))
    pb.run(epochs=1, plan=["check_initial_loss", *FIT_ONE_EPOCH], stop_on_failure=False)
    again = _playbook(digits, tmp_path, x_scale=300.0, model=_model(seed=1)).run(
        epochs=1, plan=["check_initial_loss", *FIT_ONE_EPOCH], stop_on_failure=False
    )
    assert [step["skipped"] for step in again.steps] == [False, True]  # Settles nothing: fit still holds.


def test_rerun_from_reruns_that_stage_and_every_later_one(digits, tmp_path):
    plan = ["check_initial_loss", ("find_lr", {"num_steps": 20, "repeats": 1}), *FIT_ONE_EPOCH]
    _playbook(digits, tmp_path).run(epochs=1, plan=plan)
    pb, _ = _quietly(lambda: _playbook(digits, tmp_path))
    written = (tmp_path / "journal.json").read_bytes()
    with pytest.raises(ValueError, match=r"rerun_from='probe_lrs'.*\['check_initial_loss', 'find_lr', 'fit'\]"):
        pb.run(epochs=1, plan=plan, rerun_from="probe_lrs")
    assert (tmp_path / "journal.json").read_bytes() == written
    result = pb.run(epochs=1, plan=plan, rerun_from="find_lr")
    assert [step["skipped"] for step in result.steps] == [True, False, False]
    assert pb.run(epochs=1, plan=plan).steps[-1]["skipped"] is True  # And then it resumes as usual.


def test_the_same_find_lr_call_gives_the_same_answer_with_dropout(digits):
    pb = Playbook(helpers.mlp(dropout=0.3), (digits["x_train"], digits["y_train"]), loss=helpers.LOGITS_LOSS, verbose=0)
    first = pb.find_lr(num_steps=40, repeats=1)
    random.random()  # The user's own draws between two identical calls.
    np.random.random()
    keras.random.uniform(())
    second = pb.find_lr(num_steps=40, repeats=1)
    assert first.losses == second.losses and first.suggested_lr == second.suggested_lr


class _Marker(keras.callbacks.Callback):
    """A callback with a config: part of what defines a call."""

    def __init__(self, tag):
        super().__init__()
        self.tag = tag

    def get_config(self):
        return {"tag": self.tag}


def test_display_is_not_identity(digits, tmp_path):
    def fit_with(callbacks, verbose=0):
        return [("fit", {"epochs": 1, "callbacks": callbacks, "verbose": verbose})]

    pb = _playbook(digits, tmp_path)
    pb.run(epochs=1, plan=fit_with([_Marker("a")]))
    shown = fit_with(
        [_Marker("a"), keras.callbacks.CSVLogger(str(tmp_path / "log.csv")), keras.callbacks.ProgbarLogger()],
        verbose=1,
    )
    assert pb.run(epochs=1, plan=shown).steps[0]["skipped"] is True
    # A callback without a readable config is left out, and the run says so.
    result = pb.run(epochs=1, plan=fit_with([_Marker("a"), keras.callbacks.EarlyStopping(patience=1)]))
    assert result.steps[0]["skipped"] is True
    assert "EarlyStopping" in result.message and "left out in deciding what to read back" in result.message
    # One whose config differs is another call.
    assert pb.run(epochs=1, plan=fit_with([_Marker("b")])).steps[0]["skipped"] is False
