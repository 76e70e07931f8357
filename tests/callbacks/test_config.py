"""Every public callback and schedule: its config is JSON and rebuilds an equivalent one."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_playbook import finetune
from keras_playbook.callbacks import (
    CosineRestarts,
    CurveDiagnosis,
    LossComponents,
    OneCycle,
    ScheduledLR,
    StepDownLR,
    StepProgress,
    TwoStage,
    UpdateRatioMonitor,
    WarmUp,
    WeightDecayMonitor,
)
from tests import helpers

_SAMPLE = (np.arange(12, dtype="float32").reshape(3, 4), np.array([0, 1, 2], dtype="int64"))


@pytest.mark.parametrize(
    "callback",
    [
        StepDownLR(monitor="val_accuracy", factor=1 / 8, patience=4, milestones=[30, 60], min_lr=1e-5),
        StepDownLR(),
        OneCycle((1e-3, 1e-2), momentum_bounds=(0.8, 0.9), total_steps=100, anneal="cos"),
        OneCycle((1e-3, 1e-2), momentum_bounds=None),
        CosineRestarts(max_lr=0.1, cycle_epochs=5, warmup_epochs=1),
        TwoStage(high_lr=0.1, switch_epoch=3),
        ScheduledLR(keras.optimizers.schedules.ExponentialDecay(0.1, 100, 0.5), warmup_steps=10),
        UpdateRatioMonitor(frequency=50, window=3, warmup_steps=5, target=2e-3, tolerance=30.0, patience=3),
        CurveDiagnosis(stop_on_divergence=False, verbose=0),
        WeightDecayMonitor(sample=_SAMPLE, frequency=10),
        WeightDecayMonitor(),
        LossComponents(_SAMPLE, prefix="parts/"),
        StepProgress(10, "title"),
    ],
    ids=lambda callback: type(callback).__name__,
)
def test_config_is_json_and_round_trips(callback):
    config = callback.get_config()
    text = json.dumps(config)  # JSON, not arrays or objects.
    again = type(callback).from_config(json.loads(text))
    assert type(again) is type(callback)
    assert json.dumps(again.get_config()) == text
    sample = getattr(again, "sample", None)
    if sample is not None:  # Arrays come back with their values and dtypes.
        for first, second in zip(sample, _SAMPLE):
            assert first.dtype == second.dtype
            np.testing.assert_array_equal(first, second)


def test_warmup_schedule_round_trips():
    schedule = WarmUp(keras.optimizers.schedules.CosineDecayRestarts(0.1, 100), warmup_steps=10)
    again = WarmUp.from_config(json.loads(json.dumps(schedule.get_config())))
    steps = np.arange(0, 300, 7)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(again(steps)), keras.ops.convert_to_numpy(schedule(steps)))


def test_gradual_unfreezing_round_trips_by_layer_names(digits):
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(16, activation="relu", name="early"),
            keras.layers.Dense(16, activation="relu", name="middle"),
            keras.layers.Dense(10, name="head"),
        ]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=helpers.LOGITS_LOSS)
    groups = finetune.layer_groups(model, groups=[["early"], ["middle"], ["head"]])
    callback = finetune.GradualUnfreezing(groups, every_epochs=1)
    config = json.loads(json.dumps(callback.get_config()))
    assert config["groups"] == [["early"], ["middle"], ["head"]]
    again = finetune.GradualUnfreezing.from_config(config)
    finetune.prepare_optimizer(model)
    model.fit(digits["x_train"], digits["y_train"], epochs=3, callbacks=[again], verbose=0)
    assert [thaw["group"] for thaw in again.thawed] == [1, 0]  # Resolved to the model's layers, and ran.


def test_bare_callbacks_keep_working_after_a_round_trip(digits):
    model = helpers.mlp()
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss=helpers.LOGITS_LOSS)
    cycle = OneCycle.from_config(OneCycle((0.01, 0.1)).get_config())
    history = model.fit(digits["x_train"], digits["y_train"], epochs=2, batch_size=64, callbacks=[cycle], verbose=0)
    assert max(history.history["learning_rate"]) <= 0.1 and "momentum" in history.history
    assert tf.is_tensor(model.optimizer.momentum) is False and model.optimizer.momentum == 0.9
