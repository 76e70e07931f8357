"""WeightDecayMonitor on real training runs: decoupled and coupled decay."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_playbook import diagnose
from keras_playbook.callbacks import WeightDecayMonitor
from tests import helpers


def _model(strategy, make_optimizer, l2=None):
    with strategy.scope():
        model = helpers.mlp(l2=l2)
        model.compile(optimizer=make_optimizer(), loss=helpers.LOGITS_LOSS)
    return model


def _layer_norms(model, tensors):
    """Per layer, the norm of `tensors` (aligned with model.trainable_variables)."""
    norms = {}
    for layer in model.layers:
        picked = [t for t, v in zip(tensors, model.trainable_variables) if any(v is w for w in layer.trainable_weights)]
        norms[layer.name] = np.sqrt(sum(np.sum(np.square(keras.ops.convert_to_numpy(t))) for t in picked))
    return norms


def test_decoupled_ratio_of_a_known_step(strategy, digits):
    """Plain SGD with decoupled decay: pull lr*wd*||w||, push lr*||gradient||, per layer."""
    weight_decay = 0.5
    model = _model(strategy, lambda: keras.optimizers.SGD(0.1, weight_decay=weight_decay))
    x, y = digits["x_train"][:64], digits["y_train"][:64]
    with tf.GradientTape() as tape:
        loss = helpers.LOGITS_LOSS(y, model(x, training=True))
    gradients = tape.gradient(loss, model.trainable_variables)
    sizes, pushes = _layer_norms(model, model.trainable_variables), _layer_norms(model, gradients)
    monitor = WeightDecayMonitor(frequency=1)
    history = model.fit(x, y, batch_size=64, epochs=1, shuffle=False, callbacks=[monitor], verbose=0)
    (entry,) = monitor.history
    assert entry["mode"] == "decoupled" and entry["step"] == 0
    expected = {name: weight_decay * sizes[name] / pushes[name] for name in sizes}  # lr cancels.
    assert entry["ratios"] == pytest.approx(expected, rel=1e-3)
    assert history.history["weight_decay_ratio"] == pytest.approx([max(expected.values())], rel=1e-3)


def test_coupled_ratio_on_the_sample(strategy, digits):
    """An L2 kernel penalty l*sum(w^2): pull ||2*l*w|| against the data-loss gradient on the sample."""
    l2 = 1e-3
    model = _model(strategy, lambda: keras.optimizers.SGD(0.1), l2=l2)
    sample = (digits["x_val"], digits["y_val"])
    monitor = WeightDecayMonitor(sample=sample, frequency=1)
    model.fit(digits["x_train"][:64], digits["y_train"][:64], batch_size=64, epochs=1, callbacks=[monitor], verbose=0)
    # Measured after the step: by hand at the model's current weights.
    with tf.GradientTape() as tape:
        loss = helpers.LOGITS_LOSS(sample[1], model(sample[0], training=False))
    kernel = model.layers[0].kernel  # The regularized variable: its bias is not pulled, so not compared.
    data = np.linalg.norm(keras.ops.convert_to_numpy(tape.gradient(loss, kernel)))
    pull = 2 * l2 * np.linalg.norm(keras.ops.convert_to_numpy(kernel))
    (entry,) = monitor.history
    assert entry["mode"] == "coupled" and list(entry["ratios"]) == [model.layers[0].name]  # Only the regularized layer.
    assert entry["ratios"][model.layers[0].name] == pytest.approx(pull / data, rel=1e-3)
    assert monitor.findings == []


def test_warns_when_the_decay_wins_and_diagnose_sees_it(digits):
    strategy = tf.distribute.get_strategy()
    sample = (digits["x_val"], digits["y_val"])
    strong = WeightDecayMonitor(sample=sample, frequency=4)
    history = _model(strategy, lambda: keras.optimizers.SGD(0.05), l2=1.0).fit(
        digits["x_train"], digits["y_train"], batch_size=64, epochs=3, callbacks=[strong], verbose=0
    )
    (finding,) = strong.findings  # Once for the layer, not at every measurement.
    assert finding.kind == "weight_decay_dominating" and "Loshchilov & Hutter 2019" in finding.advice
    assert finding.evidence["pull"] > finding.evidence["push"]
    assert "weight_decay_dominating" in [f.kind for f in diagnose(history)]
    mild = WeightDecayMonitor(sample=sample, frequency=4)
    history = _model(strategy, lambda: keras.optimizers.SGD(0.05), l2=1e-5).fit(
        digits["x_train"], digits["y_train"], batch_size=64, epochs=3, callbacks=[mild], verbose=0
    )
    assert mild.findings == [] and max(history.history["weight_decay_ratio"]) < 0.1
    assert "weight_decay_dominating" not in [f.kind for f in diagnose(history)]


def test_adamw_decoupled_decay_is_measured_in_steps(digits):
    """Adam scales the data step, not the decay: the ratio follows the real step."""
    monitor = WeightDecayMonitor(frequency=2)
    model = _model(tf.distribute.get_strategy(), lambda: keras.optimizers.AdamW(1e-3, weight_decay=1e-4))
    model.fit(digits["x_train"], digits["y_train"], batch_size=64, epochs=1, callbacks=[monitor], verbose=0)
    assert [entry["step"] for entry in monitor.history] == [0, 2, 4, 6]
    ratios = [r for entry in monitor.history for r in entry["ratios"].values()]
    assert all(0 < r < 1e-2 for r in ratios) and monitor.findings == []


def test_bad_arguments_and_models_without_decay(digits):
    for arguments, match in (
        ({"frequency": 0}, "frequency"),
        ({"threshold": 0}, "threshold"),
        ({"sample": [1]}, "sample"),
    ):
        with pytest.raises(ValueError, match=match):
            WeightDecayMonitor(**arguments)
    monitor = WeightDecayMonitor(sample=([1], [2]), frequency=7, threshold=2.0)
    assert WeightDecayMonitor.from_config(monitor.get_config()).get_config() == monitor.get_config()
    strategy = tf.distribute.get_strategy()
    for model, callback, match in (
        (_model(strategy, lambda: keras.optimizers.SGD(0.1)), WeightDecayMonitor(), "no weight decay"),
        (_model(strategy, lambda: keras.optimizers.SGD(0.1), l2=1e-3), WeightDecayMonitor(), "pass sample"),
    ):
        before = helpers.variables_of(model)
        with pytest.raises(ValueError, match=match):
            model.fit(digits["x_train"], digits["y_train"], epochs=1, callbacks=[callback], verbose=0)
        helpers.assert_same_values(before, helpers.variables_of(model))
