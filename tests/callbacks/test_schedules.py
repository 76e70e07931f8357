"""StepDownLR on real training runs."""

import keras
import numpy as np
import pytest

from keras_playbook.callbacks import StepDownLR
from tests import helpers


def _model(strategy, learning_rate=0.05, frozen=False):
    with strategy.scope():
        model = helpers.mlp()
        model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss=helpers.LOGITS_LOSS)
    if frozen:
        model.trainable = False  # The loss cannot move: a plateau by construction.
        with strategy.scope():
            model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss=helpers.LOGITS_LOSS)
    return model


def _fit(model, digits, callback, epochs):
    return model.fit(
        digits["x_train"],
        digits["y_train"],
        validation_data=(digits["x_val"], digits["y_val"]),
        epochs=epochs,
        batch_size=64,
        callbacks=[callback],
        verbose=0,
    )


def test_steps_down_on_a_plateau_and_not_before(strategy, digits):
    callback = StepDownLR(monitor="loss", factor=0.1, patience=2)
    history = _fit(_model(strategy, frozen=True), digits, callback, epochs=6)
    # Best at epoch 1; no progress at epochs 2, 3: step down after epoch 3, then after epoch 5.
    assert [s["epoch"] for s in callback.step_downs] == [3, 5]
    assert all(s["reason"].startswith("plateau") for s in callback.step_downs)
    np.testing.assert_allclose(history.history["learning_rate"], [0.05, 0.05, 0.05, 0.005, 0.005, 0.0005], rtol=1e-6)


def test_a_healthy_run_keeps_its_learning_rate(strategy, digits):
    callback = StepDownLR(patience=2)
    history = _fit(_model(strategy), digits, callback, epochs=5)
    assert np.all(np.diff(history.history["val_loss"]) < 0)  # Still learning...
    assert callback.step_downs == []  # ...so the rate is kept (Krizhevsky et al. 2012).
    assert history.history["learning_rate"] == pytest.approx([0.05] * 5)


class _RaiseLearningRate(keras.callbacks.Callback):
    """Sets a far too large learning rate from epoch 3 on: the loss jumps."""

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 2:
            self.model.optimizer.learning_rate = 20.0


def test_a_spike_steps_down_at_once(digits):
    import tensorflow as tf

    callback = StepDownLR(monitor="loss", patience=10, spike_tolerance=0.5)
    history = _model(tf.distribute.get_strategy()).fit(
        digits["x_train"],
        digits["y_train"],
        epochs=4,
        batch_size=64,
        callbacks=[_RaiseLearningRate(), callback],
        verbose=0,
    )
    losses = history.history["loss"]
    assert not losses[2] < 1.5 * losses[1]  # The jump happened...
    first = callback.step_downs[0]
    assert first["epoch"] == 3 and first["from"] == pytest.approx(20.0)  # ...and was met at once,
    assert first["reason"].split(":")[0] in ("unstable", "diverged")  # not after `patience` epochs.


def test_milestones_and_min_lr(digits):
    import tensorflow as tf

    callback = StepDownLR(monitor="loss", milestones=[1, 2], min_lr=0.01, patience=5)
    history = _fit(_model(tf.distribute.get_strategy()), digits, callback, epochs=3)
    # 0.05 -> 0.005 is clamped at min_lr; at epoch 2 the rate is at the floor, so nothing more.
    assert [s["reason"] for s in callback.step_downs] == ["milestone: epoch 1"]
    assert callback.step_downs[0]["to"] == pytest.approx(0.01)
    assert history.history["learning_rate"] == pytest.approx([0.05, 0.01, 0.01])


def test_config_round_trip_and_bad_arguments():
    callback = StepDownLR(monitor="val_accuracy", factor=1 / 8, patience=4, milestones=[30, 60])
    again = StepDownLR(**callback.get_config())
    assert again.get_config() == callback.get_config() and again.direction == "max"
    for arguments, match in (
        ({"factor": 1.5}, "`factor` must be in \\(0, 1\\)"),
        ({"factor": 0}, "`factor`"),
        ({"patience": 0}, "`patience`"),
        ({"min_lr": -1.0}, "`min_lr`"),
        ({"milestones": [60, 30]}, "increasing"),
        ({"spike_tolerance": 0}, "spike_tolerance"),
        ({"monitor": ""}, "`monitor`"),
    ):
        with pytest.raises(ValueError, match=match):
            StepDownLR(**arguments)


def test_unknown_monitor_key_is_named(digits):
    import tensorflow as tf

    model = _model(tf.distribute.get_strategy())
    with pytest.raises(ValueError, match="no 'val_acc'.*Available"):
        _fit(model, digits, StepDownLR(monitor="val_acc"), epochs=1)
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.05)


def test_cooldown_waits_before_counting_again(digits):
    import tensorflow as tf

    callback = StepDownLR(monitor="loss", patience=1, cooldown=2)
    _fit(_model(tf.distribute.get_strategy(), frozen=True), digits, callback, epochs=6)
    assert [s["epoch"] for s in callback.step_downs] == [2, 5]


def test_default_floor_is_three_steps_of_a_tenth(digits):
    import tensorflow as tf

    callback = StepDownLR(monitor="loss", milestones=[1, 2, 3, 4, 5], patience=10)
    history = _fit(_model(tf.distribute.get_strategy()), digits, callback, epochs=6)
    # 0.05 -> 5e-3 -> 5e-4 -> 5e-5, the floor (a thousandth of the first rate): no 5e-12 ever.
    assert len(callback.step_downs) == 3
    assert history.history["learning_rate"] == pytest.approx([0.05, 0.005, 5e-4, 5e-5, 5e-5, 5e-5])
