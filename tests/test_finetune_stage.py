"""Playbook.for_fine_tuning and fine_tune: a backbone pretrained on digits 0-4, fine-tuned on 5-9."""

import keras
import numpy as np
import pytest

from keras_playbook import Playbook, finetune
from keras_playbook._session import read_value
from tests import helpers


def _backbone():
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="block1_conv"),
            keras.layers.BatchNormalization(momentum=0.9, name="block1_bn"),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="block2_conv"),
            keras.layers.BatchNormalization(momentum=0.9, name="block2_bn"),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="block3_conv"),
        ],
        name="backbone",
    )


def _split(digits, low):
    """Images of digits low..low+4 with labels 0..4."""
    parts = {}
    for part in ("train", "val"):
        keep = (digits[f"y_{part}"] >= low) & (digits[f"y_{part}"] < low + 5)
        parts[part] = (digits[f"x_{part}"][keep].reshape(-1, 8, 8, 1), digits[f"y_{part}"][keep] - low)
    return parts


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A backbone trained briefly on digits 0-4, saved as .weights.h5 and .keras."""
    keras.utils.set_random_seed(0)
    data = _split(helpers.digits_data(num_train=1200, num_val=300), 0)
    backbone = _backbone()
    model = keras.Sequential([backbone, keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(5)])
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=helpers.LOGITS_LOSS)
    model.fit(*data["train"], epochs=8, batch_size=32, verbose=0)
    folder = tmp_path_factory.mktemp("pretrained")
    backbone.save_weights(folder / "backbone.weights.h5")
    backbone.save(folder / "backbone.keras")
    return {"folder": folder, "weights": [np.array(w) for w in backbone.get_weights()]}


def test_backbone_weights_load_from_local_files(pretrained, digits):
    data = _split(digits, 5)
    for source in ("backbone.weights.h5", "backbone.keras"):
        pb = Playbook.for_fine_tuning(
            _backbone(), 5, data["train"], data["val"], weights=pretrained["folder"] / source, strategy=None, verbose=0
        )
        backbone = pb.model.get_layer("backbone")
        for got, want in zip(backbone.get_weights(), pretrained["weights"]):
            np.testing.assert_array_equal(got, want)
    pb = Playbook.for_fine_tuning(str(pretrained["folder"] / "backbone.keras"), 5, data["train"], verbose=0)
    assert [layer.name for layer in finetune.layer_groups(pb.model, n=3)[-1]] == ["head"]


@pytest.mark.slow
def test_fine_tune_runs_both_phases_and_records_them(strategy, pretrained, digits):
    data = _split(digits, 5)
    pb = Playbook.for_fine_tuning(
        _backbone(),
        5,
        data["train"],
        data["val"],
        weights=pretrained["folder"] / "backbone.weights.h5",
        batch_size=16,
        strategy=strategy,
        verbose=0,
    )
    backbone_weights = [np.array(read_value(v)) for v in pb.model.get_layer("backbone").weights]
    head_snapshot = []

    class _AfterHeadPhase(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            head_snapshot.append([np.array(read_value(v)) for v in pb.model.get_layer("backbone").weights])

    result = pb.fine_tune(head_epochs=2, epochs=3, groups=3, callbacks=[_AfterHeadPhase()], verbose=0)
    # Phase 1 left the backbone (BatchNorm statistics included) exactly as loaded.
    for got, want in zip(head_snapshot[0], backbone_weights):
        np.testing.assert_array_equal(got, want)
    # Phase 2 trained it, with discriminative rates.
    assert any(not np.array_equal(got, want) for got, want in zip(head_snapshot[1], backbone_weights))
    assert isinstance(pb.model.optimizer, finetune.DiscriminativeOptimizer)
    assert result.multipliers == pytest.approx([1 / 2.6**2, 1 / 2.6, 1.0])
    assert result.groups[-1] == ["head"] and len(result.groups) == 3
    kinds = [record.kind for record in pb.journal]
    assert kinds[-5:] == ["find_lr", "fit", "find_lr", "fit", "fine_tune"]
    assert result.head_learning_rate == pytest.approx(pb.journal[-5].suggested_lr)
    assert result.learning_rate == pytest.approx(pb.journal[-3].suggested_lr)
    assert result.ok and result.best < 1.0  # Five classes: ln 5 = 1.61 at chance.
    assert "Howard & Ruder 2018" in result.message


def test_fine_tune_refuses_bad_input_before_training(pretrained, digits):
    data = _split(digits, 5)
    with pytest.raises(ValueError, match="num_classes"):
        Playbook.for_fine_tuning(_backbone(), 1, data["train"], verbose=0)
    with pytest.raises(ValueError, match="does not exist"):
        Playbook.for_fine_tuning(_backbone(), 5, data["train"], weights="missing.weights.h5", verbose=0)
    pb = Playbook.for_fine_tuning(_backbone(), 5, data["train"], data["val"], verbose=0)
    before = helpers.variables_of(pb.model)
    with pytest.raises(ValueError, match="3 groups, 2 multipliers"):
        pb.fine_tune(head_epochs=1, epochs=1, multipliers=[0.1, 1.0])
    with pytest.raises(ValueError, match="no layer named 'stem'"):
        pb.fine_tune(head_epochs=1, epochs=1, groups=[["stem"]])
    with pytest.raises(ValueError, match="head_epochs=0"):
        pb.fine_tune(head_epochs=0)
    helpers.assert_same_values(before, helpers.variables_of(pb.model))
    assert len(pb.journal) == 1
    assert all(layer.trainable for layer in finetune.weighted_layers(pb.model))


def _model_state(pb):
    # An optimizer that was never built is built (all zeros, as a fresh one) to compare it element for element.
    pb.session.snapshot()
    return (
        [layer.trainable for layer in finetune.weighted_layers(pb.model)],
        pb.model.optimizer,
        helpers.variables_of(pb.model),
        [result.kind for result in pb.journal],
    )


def _assert_as_before(pb, before):
    trainable, optimizer, variables, kinds = before
    assert [layer.trainable for layer in finetune.weighted_layers(pb.model)] == trainable
    assert pb.model.optimizer is optimizer
    helpers.assert_same_values(variables, helpers.variables_of(pb.model))
    assert [result.kind for result in pb.journal] == kinds


def test_a_failed_fine_tune_leaves_the_model_as_it_was(pretrained, digits, tmp_path):
    data = _split(digits, 5)
    backbone = _backbone()
    backbone.load_weights(pretrained["folder"] / "backbone.weights.h5")
    inputs = keras.Input((8, 8, 1))
    logits = keras.layers.Dense(5, name="head")(keras.layers.GlobalAveragePooling2D()(backbone(inputs)))
    # A head whose logits are multiplied by 0: the loss cannot fall, so the range test finds no rate.
    model = keras.Model(inputs, keras.layers.Rescaling(0.0, name="zeroed")(logits))
    pb = Playbook(
        model, data["train"], data["val"], loss=helpers.LOGITS_LOSS, batch_size=16, directory=tmp_path, verbose=0
    )
    pb.fit(1, verbose=0)  # The optimizer has state to lose.
    before = _model_state(pb)
    on_disk = (tmp_path / "journal.json").read_text()
    with pytest.raises(ValueError, match="found no learning rate"):
        pb.fine_tune(head_epochs=1, epochs=1, find_lr_steps=30)
    _assert_as_before(pb, before)
    assert (tmp_path / "journal.json").read_text() == on_disk
    pb.fit(1, verbose=0)  # And the next fit trains every layer again.
    assert any(not np.array_equal(a, b) for a, b in zip(before[2], helpers.variables_of(pb.model)))


class _Interrupt(keras.callbacks.Callback):
    """Ctrl-C at the first batch of the second fit it sees (phase 2)."""

    def __init__(self):
        super().__init__()
        self.fits = 0

    def on_train_begin(self, logs=None):
        self.fits += 1

    def on_train_batch_begin(self, batch, logs=None):
        if self.fits == 2:
            raise KeyboardInterrupt


def test_ctrl_c_in_phase_2_restores_everything(strategy, pretrained, digits):
    data = _split(digits, 5)
    pb = Playbook.for_fine_tuning(
        _backbone(),
        5,
        data["train"],
        data["val"],
        weights=pretrained["folder"] / "backbone.weights.h5",
        batch_size=16,
        strategy=strategy,
        verbose=0,
    )
    before = _model_state(pb)
    with pytest.raises(KeyboardInterrupt):
        pb.fine_tune(
            head_epochs=1, epochs=2, head_learning_rate=1e-2, learning_rate=1e-3, callbacks=[_Interrupt()], verbose=0
        )
    _assert_as_before(pb, before)
    assert not isinstance(pb.model.optimizer, finetune.DiscriminativeOptimizer)


@pytest.mark.slow
def test_a_phase_2_that_makes_things_worse_is_not_ok_and_keeps_phase_1(pretrained, digits):
    from matplotlib.figure import Figure

    data = _split(digits, 5)
    pb = Playbook.for_fine_tuning(
        _backbone(),
        5,
        data["train"],
        data["val"],
        weights=pretrained["folder"] / "backbone.weights.h5",
        batch_size=16,
        verbose=0,
    )
    # A base rate far too high for Adam wrecks the pretrained backbone in phase 2.
    result = pb.fine_tune(head_epochs=2, epochs=2, head_learning_rate=1e-2, learning_rate=3.0, verbose=0)
    assert result.best > result.head_best and not result.ok
    assert "keeps phase 1's best weights" in result.message
    val_loss = pb.model.evaluate(*data["val"], verbose=0, return_dict=True)["loss"]
    assert val_loss == pytest.approx(result.head_best, rel=1e-3)  # The model holds phase 1's best epoch.
    figure = result.plot()
    assert isinstance(figure, Figure)
    (axes,) = figure.axes
    assert len(axes.lines[0].get_xdata()) == 4  # Both phases on one time line.
    assert pb.journal.latest("fit").restored_best


@pytest.mark.parametrize("train_batch_norm", [False, True])
def test_phase_2_keeps_batch_norm_and_the_users_frozen_layers_frozen(strategy, pretrained, digits, train_batch_norm):
    data = _split(digits, 5)
    pb = Playbook.for_fine_tuning(
        _backbone(),
        5,
        data["train"],
        data["val"],
        strategy=strategy,
        weights=pretrained["folder"] / "backbone.weights.h5",
        batch_size=16,
        verbose=0,
    )
    backbone = pb.model.get_layer("backbone")
    backbone.get_layer("block1_conv").trainable = False  # Frozen on purpose.
    before = {layer.name: [np.array(w) for w in layer.get_weights()] for layer in backbone.layers}
    result = pb.fine_tune(
        head_epochs=1,
        epochs=2,
        head_learning_rate=1e-2,
        learning_rate=1e-2,
        train_batch_norm=train_batch_norm,
        verbose=0,
    )
    assert "Left frozen as you had them: block1_conv." in result.message
    assert ("2 BatchNormalization layers stayed in inference mode" in result.message) is not train_batch_norm

    def changed(name):
        return any(not np.array_equal(a, b) for a, b in zip(backbone.get_layer(name).get_weights(), before[name]))

    assert not changed("block1_conv") and not backbone.get_layer("block1_conv").trainable
    assert changed("block2_conv") and changed("block3_conv")
    for name in ("block1_bn", "block2_bn"):  # Statistics and scale: pretrained unless asked.
        assert changed(name) is train_batch_norm
        assert backbone.get_layer(name).trainable is train_batch_norm


def test_gradual_phase_2_keeps_them_frozen_too(pretrained, digits):
    data = _split(digits, 5)
    pb = Playbook.for_fine_tuning(
        _backbone(),
        5,
        data["train"],
        data["val"],
        weights=pretrained["folder"] / "backbone.weights.h5",
        batch_size=16,
        verbose=0,
    )
    backbone = pb.model.get_layer("backbone")
    backbone.get_layer("block1_conv").trainable = False
    before = [
        np.array(w)
        for w in backbone.get_layer("block1_conv").get_weights() + backbone.get_layer("block1_bn").get_weights()
    ]
    pb.fine_tune(
        head_epochs=1, epochs=3, groups=3, head_learning_rate=1e-2, learning_rate=1e-2, gradual=True, verbose=0
    )
    after = backbone.get_layer("block1_conv").get_weights() + backbone.get_layer("block1_bn").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    callback = finetune.GradualUnfreezing(finetune.layer_groups(pb.model, n=3), keep_frozen=["block1_bn"])
    config = callback.get_config()
    assert config["keep_frozen"] == ["block1_bn"]
    assert finetune.GradualUnfreezing.from_config(config).get_config() == config


def test_phase_2_starts_from_the_optimizer_as_compiled_not_as_a_run_left_it(pretrained, digits):
    from keras_playbook._session import innermost_optimizer

    data = _split(digits, 5)
    pb = Playbook.for_fine_tuning(
        _backbone(), 5, data["train"], data["val"], weights=pretrained["folder"] / "backbone.weights.h5", verbose=0
    )
    pb.fit(epochs=1, weight_decay=0.01, learning_rate=0.5, verbose=0)  # An override: for that run only.
    seen = []

    class _Optimizer(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            inner = innermost_optimizer(self.model.optimizer)
            seen.append((type(self.model.optimizer).__name__, inner.weight_decay, inner.get_config()["epsilon"]))

    pb.fine_tune(head_epochs=1, epochs=1, head_learning_rate=1e-3, learning_rate=1e-3, callbacks=[_Optimizer()])
    epsilon = keras.optimizers.Adam().epsilon  # Compiled with "adam": Keras's defaults.
    assert seen == [("Adam", None, epsilon), ("DiscriminativeOptimizer", None, epsilon)]
    inner = innermost_optimizer(pb.model.optimizer)
    assert float(read_value(inner.learning_rate)) == pytest.approx(1e-3)


# Reading fine_tune back (a new process running the same plan) --------------------------------------------------------

_FINE_TUNE = {"head_epochs": 1, "epochs": 2, "head_learning_rate": 1e-2, "verbose": 0}


def _fine_tuning_playbook(pretrained, data, directory, strategy=None):
    keras.utils.set_random_seed(0)  # As a new process builds it: the same backbone file, the same head.
    return Playbook.for_fine_tuning(
        _backbone(),
        5,
        data["train"],
        data["val"],
        weights=pretrained["folder"] / "backbone.weights.h5",
        batch_size=16,
        strategy=strategy,
        directory=directory,
        verbose=0,
    )


def _ending(pb):
    """What the model holds besides the journal: trainability (containers too), optimizer and its state, weights."""
    from keras_playbook.callbacks.monitors import leaf_layers

    model = pb.model
    layers = [model, model.get_layer("backbone"), *leaf_layers(model)]
    optimizer = model.optimizer
    return {
        "trainable": [(layer.name, layer.trainable) for layer in layers],
        "optimizer": type(optimizer).__name__,
        "multipliers": dict(getattr(optimizer, "multipliers", {})),
        "iterations": int(read_value(optimizer.iterations)),
        "state": [np.array(read_value(v)) for v in optimizer.variables],
        "weights": [np.array(w) for w in model.get_weights()],
    }


def _assert_same_ending(got, want):
    assert got["trainable"] == want["trainable"]
    assert (got["optimizer"], got["multipliers"], got["iterations"]) == (
        want["optimizer"],
        want["multipliers"],
        want["iterations"],
    )
    helpers.assert_same_values(want["state"], got["state"])
    helpers.assert_same_values(want["weights"], got["weights"])


def _recorded_on_disk(directory):
    import json

    results = json.loads((directory / "journal.json").read_text())["results"]
    return [result for result in results if result["kind"] == "fine_tune"][-1]


def test_a_fine_tune_read_back_gives_back_trainability_and_the_optimizer_with_its_state(
    strategy, pretrained, digits, tmp_path
):
    data = _split(digits, 5)
    plan = [("fine_tune", {**_FINE_TUNE, "learning_rate": 1e-3})]
    first = _fine_tuning_playbook(pretrained, data, tmp_path, strategy)
    first.run(1, plan=plan)
    want = _ending(first)
    assert want["optimizer"] == "DiscriminativeOptimizer" and want["iterations"] > 0
    assert ("block1_bn", False) in want["trainable"] and ("block1_conv", True) in want["trainable"]
    on_disk = _recorded_on_disk(tmp_path)
    assert on_disk["ok"]
    assert dict(on_disk["trainable"])["backbone/block2_bn"] is False
    assert dict(on_disk["trainable"])["backbone/block2_conv"] is True
    assert on_disk["optimizer"]["kind"] == "discriminative"
    assert on_disk["optimizer"]["config"]["config"]["multipliers"] == want["multipliers"]

    # A new process: a model built afresh, trainable everywhere, with a plain Adam; the same folder and plan.
    second = _fine_tuning_playbook(pretrained, data, tmp_path, strategy)
    assert type(second.model.optimizer).__name__ == "Adam"
    assert all(trainable for _, trainable in _ending(second)["trainable"])
    result = second.run(1, plan=plan)
    assert [step["skipped"] for step in result.steps] == [True]
    _assert_same_ending(_ending(second), want)

    # A fit after it trains with the DiscriminativeOptimizer from its state, BatchNormalization still frozen.
    seen = []

    class _Seen(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            optimizer = self.model.optimizer
            frozen = [layer.trainable for layer in self.model.get_layer("backbone").layers[1::2]]
            seen.append((type(optimizer).__name__, int(read_value(optimizer.iterations)), frozen))

    batch_norm = [np.array(w) for w in second.model.get_layer("backbone").get_layer("block1_bn").get_weights()]
    fit = ("fit", {"epochs": 1, "learning_rate": 1e-3, "callbacks": [_Seen()], "verbose": 0})
    result = second.run(1, plan=[*plan, fit])
    assert [step["skipped"] for step in result.steps] == [True, False]
    assert seen == [("DiscriminativeOptimizer", want["iterations"], [False, False])]
    assert int(read_value(second.model.optimizer.iterations)) > want["iterations"]
    after = second.model.get_layer("backbone").get_layer("block1_bn").get_weights()
    helpers.assert_same_values(batch_norm, after)  # Inference mode: the pretrained statistics stay.


def test_a_fine_tune_read_back_whose_phase_2_did_not_improve_gives_back_what_the_model_held(
    pretrained, digits, tmp_path
):
    data = _split(digits, 5)
    # A base rate far too high for Adam: phase 2 wrecks the backbone.
    plan = [("fine_tune", {**_FINE_TUNE, "head_epochs": 2, "learning_rate": 3.0})]
    first = _fine_tuning_playbook(pretrained, data, tmp_path)
    recorded = first.run(1, plan=plan) and first.journal.latest("fine_tune")
    assert not recorded.ok
    want = _ending(first)  # Phase 1's weights, phase 2's optimizer (and its state) and trainability.
    assert want["optimizer"] == "DiscriminativeOptimizer"
    assert not _recorded_on_disk(tmp_path)["ok"]

    second = _fine_tuning_playbook(pretrained, data, tmp_path)
    result = second.run(1, plan=plan)
    assert [step["skipped"] for step in result.steps] == [True]
    _assert_same_ending(_ending(second), want)
    val_loss = second.model.evaluate(*data["val"], verbose=0, return_dict=True)["loss"]
    assert val_loss == pytest.approx(recorded.head_best, rel=1e-3)  # Phase 1's best epoch, read back.
