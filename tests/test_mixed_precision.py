"""Wrapped optimizers: every stage and callback under mixed precision, and `MultiOptimizer` refused.

Under `mixed_float16` Keras wraps the optimizer in a `LossScaleOptimizer`,
which takes no `learning_rate`, `weight_decay` or momentum of its own: the
stages' fresh optimizers must be the same wrapper around a fresh inner
optimizer, with the values going to the inner one.
"""

import keras
import numpy as np
import pytest

from keras_playbook import Playbook
from keras_playbook._session import innermost_optimizer
from keras_playbook.callbacks import (
    CurveDiagnosis,
    OneCycle,
    ScheduledLR,
    UpdateRatioMonitor,
    WarmUp,
    WeightDecayMonitor,
)
from keras_playbook.finetune import DiscriminativeOptimizer, GradualUnfreezing, freeze, layer_groups
from tests import helpers


@pytest.fixture
def mixed_precision():
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _model(optimizer):
    """A two-group classifier; its logits are float32, as Keras's mixed-precision guide asks."""
    body = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(16, activation="relu")],
        name="body",
    )
    inputs = keras.Input((64,))
    outputs = keras.layers.Dense(10, name="head", dtype="float32")(body(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=optimizer, loss=helpers.LOGITS_LOSS, metrics=["accuracy"])
    return model


def _playbook(digits, strategy, optimizer, model=None):
    return Playbook(
        model or _model(optimizer),
        (digits["x_train"], digits["y_train"]),
        validation_data=(digits["x_val"], digits["y_val"]),
        strategy=strategy,
        verbose=0,
    )


def _is_wrapped(optimizer, inner_class):
    return isinstance(optimizer, keras.optimizers.LossScaleOptimizer) and isinstance(
        innermost_optimizer(optimizer), inner_class
    )


def test_fresh_optimizers_are_the_wrapper_around_a_fresh_inner_one_with_the_values(mixed_precision, digits):
    pb = _playbook(digits, None, keras.optimizers.Adam(1e-3))
    assert isinstance(pb.model.optimizer, keras.optimizers.LossScaleOptimizer)
    fresh = pb.session.fresh_optimizer(learning_rate=0.05, weight_decay=1e-3, beta_1=0.95)
    assert _is_wrapped(fresh, keras.optimizers.Adam)
    inner = innermost_optimizer(fresh)
    assert inner.weight_decay == pytest.approx(1e-3) and inner.beta_1 == pytest.approx(0.95)
    assert float(keras.ops.convert_to_numpy(inner.learning_rate)) == pytest.approx(0.05)


@pytest.mark.slow
def test_every_measuring_stage_works_under_mixed_precision(mixed_precision, strategy, digits):
    pb = _playbook(digits, strategy, keras.optimizers.SGD(0.05, momentum=0.9))
    before = pb.model.get_weights()
    assert pb.check_initial_loss().ok
    overfit = pb.overfit_small_sample(num_batches=2, max_steps=150)
    assert overfit.ok, overfit.message
    found = pb.find_lr(num_steps=60)
    assert found.suggested_lr is not None and np.isfinite(found.suggested_lr), found.message
    probes = pb.probe_lrs(learning_rates=(1.0, 0.1, 0.001), num_steps=30)
    assert probes.chosen_lr is not None, probes.message
    # The momentum reaches the inner SGD: the sweep's runs differ (0.99 against 0.5 in 40 steps).
    momentum = pb.sweep_momentum(values=(0.99, 0.5), num_steps=40)
    assert len(set(np.round(momentum.validation_losses, 6))) == 2, momentum.message
    # The weight decay reaches the inner SGD: a huge decay trains another model than none.
    decay = pb.grid_weight_decay(values=(0.0, 0.5), epochs=1, confirm_seeds=0)
    assert len({round(trial["score"], 6) for trial in decay.trials}) == 2, decay.message
    assert _is_wrapped(pb.model.optimizer, keras.optimizers.SGD)
    helpers.assert_same_values(before, pb.model.get_weights())  # Measuring stages leave no trace.


@pytest.mark.slow
def test_the_searches_and_the_batch_size_finder_work_under_mixed_precision(mixed_precision, digits):
    pb = _playbook(digits, None, keras.optimizers.Adam(1e-3))
    assert pb.find_batch_size(max_trials=2, steps_per_size=5).batch_size is not None
    pb.find_lr(num_steps=40)
    grid = pb.tune_lr_wd(
        coarse_epochs=1,
        fine_epochs=1,
        learning_rates=(0.01, 0.001),
        weight_decays=(0.0, 1e-3),
        max_extensions=0,
        confirm_seeds=0,
    )
    assert grid.best_score is not None and np.isfinite(grid.best_score), grid.message
    seeds = pb.compare_seeds({"fast": {"learning_rate": 0.01}, "slow": {"learning_rate": 1e-4}}, seeds=2, epochs=1)
    assert "fast" in seeds.message, seeds.message
    round_ = pb.run_round("rate", {"learning_rate": [0.01, 0.001]}, max_trials=2, epochs=1)
    assert round_.best_label is not None, round_.message
    assert _is_wrapped(pb.model.optimizer, keras.optimizers.Adam)


@pytest.mark.parametrize("schedule", ["one_cycle", "step_down", "cosine", "two_stage"])
def test_fit_schedules_and_monitors_drive_the_inner_optimizer(mixed_precision, mirrored_strategy, digits, schedule):
    pb = _playbook(digits, mirrored_strategy, keras.optimizers.SGD(0.05, momentum=0.9))
    given = OneCycle(lr_bounds=(0.005, 0.05)) if schedule == "one_cycle" else schedule
    history = pb.fit(epochs=2, schedule=given, watch=True, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert "update_ratio" in history.history  # The update-ratio monitor read the wrapped optimizer's weights.
    rates = history.history.get("learning_rate")
    if schedule != "step_down":
        assert rates is not None and rates[0] != rates[-1]  # The schedule moved the inner optimizer's rate.
    assert _is_wrapped(pb.model.optimizer, keras.optimizers.SGD)


@pytest.mark.slow
def test_fine_tune_puts_a_discriminative_optimizer_inside_the_loss_scale_optimizer(mixed_precision, strategy, digits):
    pretrained = _model(keras.optimizers.Adam(1e-2))  # fine_tune is for a trained body: train it first.
    pretrained.fit(digits["x_train"], digits["y_train"], epochs=3, verbose=0)
    pretrained.compile(optimizer=keras.optimizers.Adam(1e-3), loss=helpers.LOGITS_LOSS, metrics=["accuracy"])
    pb = _playbook(digits, strategy, None, model=pretrained)
    result = pb.fine_tune(head_epochs=1, epochs=1, groups=2, find_lr_steps=30, verbose=0)
    optimizer = pb.model.optimizer
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer), type(optimizer)
    assert isinstance(optimizer.inner_optimizer, DiscriminativeOptimizer)
    assert isinstance(innermost_optimizer(optimizer), keras.optimizers.Adam)
    assert np.isfinite(result.learning_rate) and result.learning_rate > 0


def _multi_optimizer():
    mapping = keras.optimizers.OptimizerMap(keras.optimizers.SGD(0.1), {"body/.*": keras.optimizers.Adam(1e-3)})
    return keras.optimizers.MultiOptimizer(mapping)


@pytest.mark.parametrize("where", ["compiled", "argument"])
def test_a_multi_optimizer_is_refused_naming_the_discriminative_optimizer(digits, where):
    model = _model(_multi_optimizer() if where == "compiled" else "adam")
    before = [np.copy(weight) for weight in model.get_weights()]
    arguments = {"optimizer": _multi_optimizer()} if where == "argument" else {}
    with pytest.raises(ValueError, match=r"MultiOptimizer.*finetune\.discriminative"):
        Playbook(model, (digits["x_train"], digits["y_train"]), verbose=0, **arguments)
    helpers.assert_same_values(before, model.get_weights())


def test_the_callbacks_work_on_their_own_under_mixed_precision(mixed_precision, mirrored_strategy, digits):
    """In a plain `model.fit`, the wrapped AdamW's rate, decay and weights are what the callbacks read and set."""
    x, y = digits["x_train"], digits["y_train"]
    with mirrored_strategy.scope():
        model = _model(keras.optimizers.AdamW(1e-3, weight_decay=0.01))
    groups = layer_groups(model, 2)
    freeze(model, groups[:-1])
    model.compile(optimizer=model.optimizer, loss=helpers.LOGITS_LOSS, metrics=["accuracy"])
    warm_up = ScheduledLR(WarmUp(0.01, warmup_steps=8))
    ratio, decay = UpdateRatioMonitor(frequency=2), WeightDecayMonitor(frequency=4)
    unfreezing, diagnosis = GradualUnfreezing(groups, every_epochs=1), CurveDiagnosis(verbose=0)
    model.fit(
        x,
        y,
        batch_size=64,
        epochs=2,
        validation_data=(digits["x_val"], digits["y_val"]),
        callbacks=[warm_up, ratio, decay, unfreezing, diagnosis],
        verbose=0,
    )
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    inner = innermost_optimizer(model.optimizer)
    assert float(keras.ops.convert_to_numpy(inner.learning_rate)) == pytest.approx(0.01)  # Warmed up to 0.01.
    assert ratio.history and all(np.all(np.isfinite(list(entry["ratios"].values()))) for entry in ratio.history)
    # The warm-up's first step (rate 0) moved nothing: not read as "the weight decay wins".
    assert not decay.findings, [finding.advice for finding in decay.findings]
    assert decay.history and all(np.all(np.isfinite(list(entry["ratios"].values()))) for entry in decay.history)
    assert unfreezing.thawed and all(layer.trainable for layer in model.layers)
    assert not [finding for finding in diagnosis.findings if finding.kind == "diverged"]
