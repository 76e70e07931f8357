"""UpdateRatioMonitor and LossComponents on real training runs."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_playbook.callbacks import UpdateRatioMonitor
from tests import helpers


def _model(strategy, learning_rate):
    with strategy.scope():
        model = helpers.mlp()
        model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss=helpers.LOGITS_LOSS)
    return model


def test_ratio_of_a_known_update(strategy, digits):
    learning_rate = 0.1
    model = _model(strategy, learning_rate)
    x, y = digits["x_train"][:64], digits["y_train"][:64]
    # The first step's update, computed by hand: plain SGD moves w by -lr * gradient.
    with tf.GradientTape() as tape:
        loss = helpers.LOGITS_LOSS(y, model(x, training=True))
    gradients = tape.gradient(loss, model.trainable_variables)
    expected = {}
    for layer in model.layers:
        indices = [i for i, v in enumerate(model.trainable_variables) if any(v is w for w in layer.trainable_weights)]
        change = np.sqrt(sum(np.sum((learning_rate * keras.ops.convert_to_numpy(gradients[i])) ** 2) for i in indices))
        size = np.sqrt(sum(np.sum(keras.ops.convert_to_numpy(model.trainable_variables[i]) ** 2) for i in indices))
        expected[layer.name] = change / size
    monitor = UpdateRatioMonitor(frequency=3, window=1, warmup_steps=0)
    history = model.fit(x, y, batch_size=64, epochs=7, shuffle=False, callbacks=[monitor], verbose=0)
    assert [entry["step"] for entry in monitor.history] == [0, 3, 6]
    assert monitor.history[0]["ratios"] == pytest.approx(expected, rel=1e-3)
    assert history.history["update_ratio"][-1] == pytest.approx(np.median(list(monitor.history[-1]["ratios"].values())))
    # Only fresh measurements are logged: the epochs (one step each) between windows say NaN, not a stale value.
    assert np.isnan(history.history["update_ratio"][1]) and np.isnan(history.history["update_ratio"][2])


def test_windows_skip_the_first_steps_and_take_medians(digits):
    model = _model(tf.distribute.get_strategy(), 0.05)
    monitor = UpdateRatioMonitor(frequency=20, window=4, warmup_steps=10)
    model.fit(digits["x_train"], digits["y_train"], batch_size=32, epochs=8, callbacks=[monitor], verbose=0)
    # 16 steps per epoch, 128 in all: windows of 4 steps start at step 10, then every 20 steps.
    assert [entry["step"] for entry in monitor.history] == [10, 30, 50, 70, 90, 110]


def test_flags_too_small_and_too_large_updates(digits):
    strategy = tf.distribute.get_strategy()
    slow = UpdateRatioMonitor(frequency=1, window=1)
    _model(strategy, 1e-7).fit(digits["x_train"], digits["y_train"], epochs=1, callbacks=[slow], verbose=0)
    assert slow.findings and all(f.kind == "update_too_small" and "CS231n" in f.advice for f in slow.findings)
    assert len(slow.findings) == 2  # Once per layer, not once per step.
    fast = UpdateRatioMonitor(frequency=1, window=1, warmup_steps=0)  # At 30 the first steps blow up.
    _model(strategy, 30.0).fit(digits["x_train"], digits["y_train"], epochs=1, callbacks=[fast], verbose=0)
    assert any(f.kind == "update_too_large" and "lower the learning rate" in f.advice for f in fast.findings)


def test_config_and_bad_arguments():
    monitor = UpdateRatioMonitor(frequency=50, target=2e-3, tolerance=5.0)
    assert UpdateRatioMonitor(**monitor.get_config()).get_config() == monitor.get_config()
    for arguments, match in (
        ({"frequency": 0}, "frequency"),
        ({"target": 0}, "target"),
        ({"tolerance": 1}, "tolerance"),
        ({"window": 0}, "window"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"patience": 0}, "patience"),
    ):
        with pytest.raises(ValueError, match=match):
            UpdateRatioMonitor(**arguments)


class _CenterLoss(keras.layers.Layer):
    """Adds a penalty on its activations with `add_loss`, as a center loss does."""

    def call(self, inputs):
        self.add_loss(0.01 * keras.ops.mean(keras.ops.square(inputs)))
        return inputs


def test_loss_components_add_up_to_the_total(strategy, digits):
    from matplotlib.figure import Figure

    from keras_playbook.callbacks import LossComponents

    with strategy.scope():
        model = keras.Sequential(
            [
                keras.Input((64,)),
                keras.layers.Dense(
                    32, activation="relu", kernel_regularizer=keras.regularizers.L2(1e-3), name="hidden"
                ),
                _CenterLoss(name="center"),
                keras.layers.Dense(10, name="logits"),
            ]
        )
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=helpers.LOGITS_LOSS)
    sample = (digits["x_val"], digits["y_val"])
    components = LossComponents(sample)
    history = model.fit(digits["x_train"], digits["y_train"], epochs=3, callbacks=[components], verbose=0)
    assert set(components.history) == {"data", "regularization/hidden", "extra/center"}
    assert all(len(values) == 3 for values in components.history.values())
    assert history.history["loss/regularization/hidden"] == components.history["regularization/hidden"]
    # The components are computed separately; Keras's own total on the same sample must match their sum.
    total = float(
        keras.ops.convert_to_numpy(
            model.compute_loss(x=sample[0], y=sample[1], y_pred=model(sample[0], training=False))
        )
    )
    assert sum(values[-1] for values in components.history.values()) == pytest.approx(total, rel=1e-4)
    assert components.history["data"][-1] < components.history["data"][0]  # It learned.
    assert isinstance(components.plot(), Figure)
    assert LossComponents(**components.get_config()).prefix == "loss/"
    with pytest.raises(ValueError, match="`sample`"):
        LossComponents(sample[0])


def test_nested_models_are_opened_up(digits):
    inner = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(16, activation="relu", name="inner_dense")], name="inner"
    )
    model = keras.Sequential([keras.Input((64,)), inner, keras.layers.Dense(10, name="head")])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=helpers.LOGITS_LOSS)
    monitor = UpdateRatioMonitor(frequency=5)
    model.fit(digits["x_train"], digits["y_train"], epochs=1, callbacks=[monitor], verbose=0)
    assert set(monitor.history[0]["ratios"]) == {"inner_dense", "head"}


@pytest.mark.parametrize("sample_size", [32, 128])
def test_loss_components_without_own_losses_use_the_compiled_call(strategy, digits, sample_size):
    from keras_playbook.callbacks import LossComponents

    with strategy.scope():
        model = helpers.mlp(l2=1e-3)
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=helpers.LOGITS_LOSS)
    sample = (digits["x_val"][:sample_size], digits["y_val"][:sample_size])
    components = LossComponents(sample)
    model.fit(digits["x_train"], digits["y_train"], epochs=2, callbacks=[components], verbose=0)
    assert components._extra_layers == []  # Later epochs went through the traced call...
    eager = float(keras.ops.convert_to_numpy(helpers.LOGITS_LOSS(sample[1], model(sample[0], training=False))))
    assert components.history["data"][-1] == pytest.approx(eager, rel=1e-5)  # ...with the same numbers.
    hidden = model.layers[0].name
    assert set(components.history) == {"data", f"regularization/{hidden}"}
    penalty = 1e-3 * float(np.sum(keras.ops.convert_to_numpy(model.layers[0].kernel) ** 2))
    assert components.history[f"regularization/{hidden}"][-1] == pytest.approx(penalty, rel=1e-4)


def test_a_healthy_run_raises_no_update_ratio_finding(digits):
    # Adam at its usual rate and SGD with momentum at a rate that trains well: the band holds for both.
    for optimizer in (keras.optimizers.Adam(3e-3), keras.optimizers.SGD(0.1, momentum=0.9)):
        model = helpers.mlp()
        model.compile(optimizer=optimizer, loss=helpers.LOGITS_LOSS, metrics=["accuracy"])
        monitor = UpdateRatioMonitor()
        history = model.fit(
            digits["x_train"],
            digits["y_train"],
            validation_data=(digits["x_val"], digits["y_val"]),
            epochs=6,
            batch_size=32,
            callbacks=[monitor],
            verbose=0,
        )
        assert history.history["val_accuracy"][-1] > 0.7  # Learning well (10% is chance).
        assert monitor.findings == [], [f.advice for f in monitor.findings]
        assert len(monitor.history) == 6  # One window per epoch by default, none at step 0.
        assert monitor.history[0]["step"] == 10
