"""Models whose own `train_step`/`test_step` report their loss (issue 23, item 2).

The pattern of the Keras guide "Customizing what happens in fit()": a
`keras.Model` subclass computing its loss in `train_step`, tracked by a
`keras.metrics.Mean`, compiled with only an optimizer. Every stage reads the
loss where the model logs it (`Playbook(loss_key=...)` when that cannot be
found) and refuses a step that measures nothing.
"""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_playbook import Playbook
from keras_playbook._stages.training import watchers
from keras_playbook.callbacks import (
    CurveDiagnosis,
    LossComponents,
    StepProgress,
    UpdateRatioMonitor,
    WeightDecayMonitor,
)
from tests.helpers import assert_same_values, variables_of

_PACKAGE = "test_custom_step"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class GuideModel(keras.Model):
    """The guide's lower-level pattern: its own loss function and loss tracker, logged under `loss_name`."""

    loss_name = "loss"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_tracker = keras.metrics.Mean(name=self.loss_name)

    def step_loss(self, data, training):
        x, y = data[:2]
        # The loss function, not a `keras.losses.Loss`: under a strategy a Loss object divides by the replicas.
        return keras.ops.mean(keras.losses.sparse_categorical_crossentropy(y, self(x, training=training), True))

    def apply_gradients(self, gradients):
        self.optimizer.apply(gradients, self.trainable_variables)

    def train_step(self, data):
        with tf.GradientTape() as tape:
            loss = self.step_loss(data, training=True)
        self.apply_gradients(tape.gradient(loss, self.trainable_variables))
        self.loss_tracker.update_state(loss)
        return {metric.name: metric.result() for metric in self.metrics}

    def test_step(self, data):
        self.loss_tracker.update_state(self.step_loss(data, training=False))
        return {metric.name: metric.result() for metric in self.metrics}

    @property
    def metrics(self):
        return [self.loss_tracker]


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TotalLossModel(GuideModel):
    """Reports its loss as `total_loss` (as VAEs do)."""

    loss_name = "total_loss"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TwoLossesModel(GuideModel):
    """Reports two values ending in "loss": which one is the loss cannot be found alone."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_tracker = keras.metrics.Mean(name="data_loss")
        self.scale_tracker = keras.metrics.Mean(name="scale_loss")

    def train_step(self, data):
        logs = super().train_step(data)
        self.scale_tracker.update_state(keras.ops.mean(keras.ops.abs(self(data[0]))))
        return {**logs, "scale_loss": self.scale_tracker.result()}

    def test_step(self, data):
        logs = super().test_step(data)
        self.scale_tracker.update_state(keras.ops.mean(keras.ops.abs(self(data[0]))))
        return {**logs, "scale_loss": self.scale_tracker.result()}

    @property
    def metrics(self):
        return [self.loss_tracker, self.scale_tracker]


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TrainStepOnlyModel(GuideModel):
    """The guide's first example: its own `train_step`, Keras's `test_step` (which needs a compiled loss)."""

    test_step = keras.Model.test_step


@keras.saving.register_keras_serializable(package=_PACKAGE)
class NoLossModel(GuideModel):
    """Reports no value that could be the loss."""

    loss_name = "error"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class StaleTrackerModel(GuideModel):
    """Its train_step never updates its loss tracker (Keras's `Mean` then reports 0.0 every step)."""

    def train_step(self, data):
        with tf.GradientTape() as tape:
            loss = self.step_loss(data, training=True)
        self.apply_gradients(tape.gradient(loss, self.trainable_variables))
        return {metric.name: metric.result() for metric in self.metrics}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class OwnOptimizerModel(GuideModel):
    """Its train_step applies its gradients with an optimizer of its own, ignoring `model.optimizer`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.own_optimizer = keras.optimizers.SGD(0.05)

    def apply_gradients(self, gradients):
        self.own_optimizer.apply(gradients, self.trainable_variables)


def _custom(cls, strategy):
    with strategy.scope():
        inputs = keras.Input((64,))
        hidden = keras.layers.Dense(32, activation="relu")(inputs)
        model = cls(inputs, keras.layers.Dense(10)(hidden), name="custom")
        model.compile(optimizer=keras.optimizers.Adam(1e-3))  # Only an optimizer: the step has its loss.
    return model


def _playbook(cls, digits, strategy, validation=True, **kwargs):
    return Playbook(
        _custom(cls, strategy),
        (digits["x_train"], digits["y_train"]),
        validation_data=(digits["x_val"], digits["y_val"]) if validation else None,
        strategy=strategy,
        verbose=0,
        **kwargs,
    )


# (a) The guide's model, logging "loss" ------------------------------------------


def test_guide_model_is_accepted_and_fit(digits, strategy):
    pb = _playbook(GuideModel, digits, strategy, validation=False)
    initial = pb.check_initial_loss()
    assert initial.ok and not initial.checked  # Measured, not judged: no ln C for a loss of its own.
    assert 2.0 < initial.loss < 2.8 and "own test_step" in initial.message
    history = pb.fit(epochs=1, verbose=0)
    assert history.history["loss"][-1] < initial.loss
    assert pb.journal[-1].kind == "fit" and pb.journal[-1].monitor == "loss" and pb.journal[-1].ok


@pytest.mark.slow
def test_guide_model_is_trained_by_every_stage(digits, strategy):
    pb = _playbook(GuideModel, digits, strategy)
    initial = pb.check_initial_loss()
    found = pb.find_lr(num_steps=40, repeats=1)
    assert found.ok and found.suggested_lr is not None, found.message
    # The lowest a step's own loss can take is unknown (a VAE's never nears 0): judged only with target_loss.
    unjudged = pb.overfit_small_sample(num_batches=2, max_steps=100)
    assert unjudged.verdict == "unknown_floor" and unjudged.ok and "target_loss=" in unjudged.message
    overfit = pb.overfit_small_sample(num_batches=2, max_steps=100, target_loss=0.1)
    assert overfit.verdict == "memorized" and overfit.final_loss < 0.1 * overfit.initial_loss, overfit.message
    before = variables_of(pb.model)
    history = pb.fit(epochs=2, verbose=0)
    assert history.history["loss"][-1] < initial.loss
    assert pb.journal[-1].kind == "fit" and pb.journal[-1].monitor == "val_loss" and pb.journal[-1].ok
    assert not all(np.array_equal(a, b) for a, b in zip(before, variables_of(pb.model)))


# (b) A step reporting `total_loss` ------------------------------------------------


@pytest.mark.slow
def test_total_loss_is_read_by_every_stage_that_reads_a_loss(digits, strategy, tmp_path):
    pb = _playbook(TotalLossModel, digits, strategy, directory=tmp_path)
    initial = pb.check_initial_loss()
    assert initial.ok and initial.loss_name == "total_loss" and 2.0 < initial.loss < 2.8
    found = pb.find_lr(num_steps=40, repeats=1)
    assert found.ok and found.steps_run > 20 and min(found.losses) < 0.8 * found.losses[0], found.message
    on_validation = pb.find_lr(num_steps=20, repeats=1, on="validation", num_validation_batches=1)
    assert on_validation.on == "validation" and np.all(np.isfinite(on_validation.losses))
    assert len(on_validation.losses) > 5  # Not "diverged within 1 steps".
    overfit = pb.overfit_small_sample(num_batches=2, max_steps=100)
    assert overfit.initial_loss > 2.0 and overfit.final_loss < 0.1 * overfit.initial_loss, overfit.message
    probes = pb.probe_lrs(learning_rates=[1e-1, 1e-3], num_steps=10)
    assert probes.chosen_lr == 1e-1 and 2.0 < probes.initial_loss < 2.8, probes.message
    momentum = pb.sweep_momentum(values=[0.9, 0.5], num_steps=10)
    assert momentum.ok and all(np.isfinite(momentum.validation_losses)), momentum.message
    history = pb.fit(epochs=3, schedule="step_down", restore_best=True, verbose=0)
    assert sorted(key for key in history.history if "loss" in key) == ["total_loss", "val_total_loss"]
    record = pb.journal[-1]
    assert record.kind == "fit" and record.monitor == "val_total_loss" and record.epochs == 3
    assert record.initial_loss is not None and record.ok, record.message
    assert record.history["total_loss"] == history.history["total_loss"]
    assert record.weights is not None and (tmp_path / record.weights).exists()


def test_total_loss_with_a_compiled_loss_it_ignores_is_read_and_fit_recorded(digits, strategy, tmp_path):
    with strategy.scope():
        model = _custom(TotalLossModel, strategy)
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    pb = Playbook(
        model,
        (digits["x_train"], digits["y_train"]),
        validation_data=(digits["x_val"], digits["y_val"]),
        strategy=strategy,
        verbose=0,
        directory=tmp_path,
    )
    overfit = pb.overfit_small_sample(num_batches=1, max_steps=12, learning_rate=1e-2)
    assert overfit.initial_loss > 2.0 and overfit.final_loss < 0.8 * overfit.initial_loss, overfit.message
    history = pb.fit(epochs=1, verbose=0)
    assert "val_total_loss" in history.history
    record = pb.journal[-1]
    assert record.kind == "fit" and record.monitor == "val_total_loss" and record.ok, record.message


@pytest.mark.slow
def test_search_objective_is_the_validation_loss_where_the_model_logs_it(digits, mirrored_strategy, tmp_path):
    pb = _playbook(TotalLossModel, digits, mirrored_strategy, directory=tmp_path)
    result = pb.grid_weight_decay(values=[0.0, 1e-4], epochs=2, confirm_seeds=0)
    assert result.objective == "val_total_loss", result.message
    assert len(result.trials) == 2 and np.isfinite(result.best_score) and 1.0 < result.best_score < 2.5


def test_ambiguous_loss_is_refused_naming_the_keys_then_read_at_loss_key(digits, strategy):
    pb = _playbook(TwoLossesModel, digits, strategy, validation=False)
    before = pb.model.get_weights()
    with pytest.raises(ValueError, match=r"'data_loss', 'scale_loss'.*Playbook\(loss_key=\.\.\.\)"):
        pb.find_lr(num_steps=20, repeats=1)
    assert_same_values(before, pb.model.get_weights())
    pb = _playbook(TwoLossesModel, digits, strategy, validation=False, loss_key="data_loss")
    found = pb.find_lr(num_steps=10, repeats=1)
    assert found.steps_run == 10 and found.losses[0] > 2.0 and min(found.losses) < found.losses[0]
    assert pb.journal.setup.fingerprints["loss_key"] == "data_loss"
    history = pb.fit(epochs=1, verbose=0)
    assert pb.journal[-1].monitor == "data_loss" and "data_loss" in history.history


def test_loss_key_is_part_of_the_setup(digits, tmp_path):
    strategy = tf.distribute.get_strategy()
    _playbook(TwoLossesModel, digits, strategy, validation=False, directory=tmp_path, loss_key="data_loss")
    with pytest.warns(UserWarning, match="loss key: 'data_loss' -> 'scale_loss'"):
        pb = _playbook(TwoLossesModel, digits, strategy, validation=False, directory=tmp_path, loss_key="scale_loss")
    assert [record.kind for record in pb.journal] == ["setup", "setup"]
    assert "loss key" in pb.setup_changes[0]
    with pytest.raises(TypeError, match="loss_key"):
        _playbook(GuideModel, digits, strategy, loss_key=3)


def test_a_loss_key_the_model_does_not_log_is_refused(digits):
    pb = _playbook(GuideModel, digits, tf.distribute.get_strategy(), loss_key="total_loss")
    with pytest.raises(
        ValueError, match=r"loss is read under 'total_loss' \(the Playbook's `loss_key`.*not among them"
    ):
        pb.check_initial_loss()


# (c) Refusals -------------------------------------------------------------------


def test_no_readable_loss_is_refused_in_one_line_before_training(digits, strategy):
    pb = _playbook(NoLossModel, digits, strategy)
    before = pb.model.get_weights()
    for call in (pb.check_initial_loss, lambda: pb.find_lr(num_steps=20), lambda: pb.fit(epochs=1, verbose=0)):
        with pytest.raises(ValueError, match=r"Cannot read the loss.*\['error'\].*Playbook\(loss_key=\.\.\.\)"):
            call()
    assert_same_values(before, pb.model.get_weights())
    assert [record.kind for record in pb.journal] == ["setup"]


def test_a_model_without_loss_and_without_its_own_step_is_still_refused(digits):
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)])
    model.compile(optimizer="adam")
    with pytest.raises(ValueError, match="has no loss"):
        Playbook(model, (digits["x_train"], digits["y_train"]), verbose=0)


def test_a_train_step_of_its_own_with_keras_test_step_and_no_loss_is_refused_naming_test_step(digits):
    model = _custom(TrainStepOnlyModel, tf.distribute.get_strategy())
    with pytest.raises(ValueError, match=r"`train_step` of its own but Keras's `test_step`.*Add a `test_step`"):
        Playbook(model, (digits["x_train"], digits["y_train"]), verbose=0)


def test_a_loss_tracker_never_updated_is_refused(digits, strategy):
    pb = _playbook(StaleTrackerModel, digits, strategy)
    before = pb.model.get_weights()
    for call in (
        lambda: pb.find_lr(num_steps=10, repeats=1),
        lambda: pb.overfit_small_sample(num_batches=1, max_steps=20, learning_rate=1e-2),
        lambda: pb.fit(epochs=1, verbose=0),
    ):
        with pytest.raises(ValueError, match="exactly 0.0 from its first step: it does not update its loss tracker"):
            call()
    assert_same_values(before, pb.model.get_weights())  # fit's one step is undone.
    assert [record.kind for record in pb.journal] == ["setup"]


def test_a_step_with_an_optimizer_of_its_own_is_refused(digits, strategy):
    pb = _playbook(OwnOptimizerModel, digits, strategy, validation=False)
    before = pb.model.get_weights()
    for call in (lambda: pb.find_lr(num_steps=10, repeats=1), lambda: pb.fit(epochs=1, verbose=0)):
        with pytest.raises(ValueError, match=r"optimizer of its own.*self\.optimizer\.apply"):
            call()
    assert_same_values(before, pb.model.get_weights())  # fit's one step is undone.
    assert [record.kind for record in pb.journal] == ["setup"]


@pytest.mark.slow
def test_a_step_with_an_optimizer_of_its_own_is_refused_by_the_other_short_runs(digits, strategy):
    pb = _playbook(OwnOptimizerModel, digits, strategy)
    for call in (
        lambda: pb.probe_lrs(learning_rates=[1e-1, 1e-3], num_steps=5),
        lambda: pb.sweep_momentum(values=[0.9, 0.5], num_steps=5, learning_rate=1e-2),
        lambda: pb.overfit_small_sample(num_batches=1, max_steps=20, learning_rate=1e-2),
    ):
        with pytest.raises(ValueError, match=r"optimizer of its own.*self\.optimizer\.apply"):
            call()


# (d) fine_tune, the watchers of fit ----------------------------------------------


def _pretrained_total_loss_model(digits, strategy):
    """A `TotalLossModel` body trained a couple of epochs by Keras's own `model.fit` (its own step), then a head."""
    with strategy.scope():
        inputs = keras.Input((64,))
        hidden = keras.layers.Dense(32, activation="relu", name="body_1")(inputs)
        hidden = keras.layers.Dense(32, activation="relu", name="body_2")(hidden)
        model = TotalLossModel(inputs, keras.layers.Dense(10, name="head")(hidden), name="custom")
        model.compile(optimizer=keras.optimizers.Adam(3e-3))
    model.fit(digits["x_train"], digits["y_train"], epochs=2, batch_size=32, verbose=0)
    return model


@pytest.mark.slow
def test_fine_tune_reads_total_loss_in_its_range_tests_monitor_and_comparison(digits, strategy):
    model = _pretrained_total_loss_model(digits, strategy)
    pb = Playbook(
        model,
        (digits["x_train"], digits["y_train"]),
        validation_data=(digits["x_val"], digits["y_val"]),
        strategy=strategy,
        verbose=0,
    )
    result = pb.fine_tune(head_epochs=2, epochs=2, groups=3, find_lr_steps=30, verbose=0)
    ranges = [record for record in pb.journal if record.kind == "find_lr"]
    assert len(ranges) == 2 and all(found.ok and found.suggested_lr is not None for found in ranges)
    assert all(found.losses[0] > 0 and min(found.losses) < found.losses[0] for found in ranges)
    head, last = [record for record in pb.journal if record.kind == "fit"]
    assert head.monitor == last.monitor == result.monitor == "val_total_loss"
    assert result.head_best == pytest.approx(min(head.history["val_total_loss"]))
    assert result.best == pytest.approx(min(last.history["val_total_loss"]))
    assert np.isfinite(result.head_best) and np.isfinite(result.best)
    assert result.ok == (result.best < result.head_best) and "best val_total_loss" in result.message
    held = pb.model.evaluate(digits["x_val"], digits["y_val"], verbose=0, return_dict=True)["total_loss"]
    assert held == pytest.approx(min(result.best, result.head_best), rel=1e-3)  # The better phase's best epoch.
    (axes,) = result.plot().axes
    assert [line.get_label() for line in axes.lines[:2]] == ["total_loss", "val_total_loss"]
    assert len(axes.lines[0].get_xdata()) == 4  # Both phases on one time line.


def test_a_diverging_fit_of_a_total_loss_model_is_stopped_by_curve_diagnosis(digits, strategy):
    with strategy.scope():  # Linear layers under SGD far too fast: the loss overflows to NaN in the first epoch.
        inputs = keras.Input((64,))
        model = TotalLossModel(inputs, keras.layers.Dense(10)(keras.layers.Dense(32)(inputs)), name="custom")
        model.compile(optimizer=keras.optimizers.SGD(1e-2))
    pb = Playbook(
        model,
        (digits["x_train"], digits["y_train"]),
        validation_data=(digits["x_val"], digits["y_val"]),
        strategy=strategy,
        verbose=0,
    )
    history = pb.fit(epochs=5, learning_rate=1e4, verbose=0)
    assert len(history.history["total_loss"]) < 5  # Stopped early, not trained 5 epochs of NaN.
    record = pb.journal[-1]
    assert record.kind == "fit" and not record.ok
    assert "diverged" in [finding["kind"] for finding in record.findings]


def test_update_ratio_monitor_reads_its_reference_loss_at_loss_key(digits, strategy):
    # Updates far below the band (SGD at 1e-9) of a model whose loss (~2.3) is below half its
    # reference loss: a model that has learned and converged, not a dead one, once its loss is read.
    with strategy.scope():
        model = _custom(TotalLossModel, strategy)
        model.compile(optimizer=keras.optimizers.SGD(1e-9))
    kwargs = {"frequency": 1, "window": 1, "warmup_steps": 0, "reference_loss": 10.0}
    read = UpdateRatioMonitor(loss_key="total_loss", **kwargs)
    model.fit(digits["x_train"], digits["y_train"], batch_size=64, epochs=1, callbacks=[read], verbose=0)
    assert len(read.history) == 8 and read.findings == []
    unread = UpdateRatioMonitor(loss_key="loss", **kwargs)  # No "loss" logged: the loss cannot be read.
    with pytest.raises(ValueError, match=r"hold \['total_loss'\], not loss_key='loss'"):
        model.fit(digits["x_train"], digits["y_train"], batch_size=64, epochs=1, callbacks=[unread], verbose=0)
    assert UpdateRatioMonitor(**read.get_config()).loss_key == "total_loss"


def test_fit_gives_its_watchers_the_loss_key(digits):
    model = _custom(TotalLossModel, tf.distribute.get_strategy())
    watching = watchers(model, lambda: None, loss_key="total_loss")
    assert [type(callback) for callback in watching] == [CurveDiagnosis, UpdateRatioMonitor]
    assert all(callback.get_config()["loss_key"] == "total_loss" for callback in watching)


def _regularized_total_loss_model(strategy):
    """A `TotalLossModel` with an L2 penalty on a kernel, its step adding the penalty (`self.losses`)."""

    with strategy.scope():
        inputs = keras.Input((64,))
        hidden = keras.layers.Dense(32, activation="relu", kernel_regularizer=keras.regularizers.L2(1e-3))(inputs)
        model = PenalizedTotalLossModel(inputs, keras.layers.Dense(10)(hidden), name="custom")
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return model


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PenalizedTotalLossModel(TotalLossModel):
    """Reports `total_loss`, the data loss plus the weight penalties, with no compiled loss."""

    def step_loss(self, data, training):
        return super().step_loss(data, training) + keras.ops.sum(self.losses)


def test_a_model_without_a_compiled_loss_is_refused_by_the_monitors_that_need_one(digits, strategy):
    model = _regularized_total_loss_model(strategy)
    sample = (digits["x_val"][:64], digits["y_val"][:64])
    for monitor in (LossComponents(sample), WeightDecayMonitor(sample=sample)):
        with pytest.raises(ValueError, match=r"no compiled loss.*own train_step"):
            model.fit(digits["x_train"], digits["y_train"], epochs=1, callbacks=[monitor], verbose=0)
    # fit leaves that monitor out: training with an L2 penalty is watched without it and recorded.
    pb = Playbook(model, (digits["x_train"], digits["y_train"]), strategy=strategy, verbose=0)
    history = pb.fit(epochs=1, verbose=0)
    assert pb.journal[-1].kind == "fit" and pb.journal[-1].ok and "total_loss" in history.history


def test_the_progress_bar_shows_the_loss_where_the_model_logs_it(digits, strategy, capsys):
    model = _custom(TotalLossModel, strategy)
    bar = StepProgress(total_steps=8, title="steps")
    model.fit(digits["x_train"], digits["y_train"], batch_size=64, epochs=1, callbacks=[bar], verbose=0)
    shown = capsys.readouterr().out
    assert "8/8" in shown and "total_loss:" in shown, shown


@pytest.mark.slow
def test_run_summarizes_the_validation_curves_of_a_total_loss_model(digits, strategy):
    pb = _playbook(TotalLossModel, digits, strategy)
    result = pb.run(epochs=2, plan=[("fit", {"epochs": 2})])
    final_training = result.message.split("Final training: ")[1]
    assert "val_total_loss" in final_training, result.message
    assert not re.search(r"(?<!val_)total_loss", final_training), result.message  # Only the validation curves.
