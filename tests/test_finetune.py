"""Fine-tuning: layer groups, freezing, discriminative learning rates, gradual unfreezing (real training)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_playbook import finetune
from keras_playbook._session import leaf_layers, read_value
from tests import helpers

LOSS = helpers.LOGITS_LOSS


def _backbone_model(num_classes=10):
    """A small "pretrained" CNN backbone with BatchNorm, nested in a model with a head."""
    backbone = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, padding="same", name="block1_conv"),
            keras.layers.BatchNormalization(name="block1_bn"),
            keras.layers.ReLU(name="block1_relu"),
            keras.layers.Conv2D(8, 3, padding="same", name="block2_conv"),
            keras.layers.BatchNormalization(name="block2_bn"),
            keras.layers.ReLU(name="block2_relu"),
            keras.layers.Conv2D(16, 3, padding="same", name="block3_conv"),
        ],
        name="backbone",
    )
    inputs = keras.Input((8, 8, 1))
    features = keras.layers.GlobalAveragePooling2D(name="pool")(backbone(inputs))
    outputs = keras.layers.Dense(num_classes, name="head")(features)
    return keras.Model(inputs, outputs, name="classifier")


def _images(digits):
    return digits["x_train"].reshape(-1, 8, 8, 1), digits["y_train"]


def _values(variables):
    return [np.array(read_value(v)) for v in variables]


def test_groups_by_depth_prefix_and_list():
    model = _backbone_model()
    groups = finetune.layer_groups(model, n=3)
    names = [[layer.name for layer in group] for group in groups]
    assert names[-1] == ["head"]  # The layers after the nested backbone.
    assert sum(names[:-1], []) == ["block1_conv", "block1_bn", "block2_conv", "block2_bn", "block3_conv"]
    assert [len(group) for group in names[:-1]] == [3, 2]
    by_prefix = finetune.layer_groups(model, prefixes=[["block1", "block2"], "block3"])
    assert [[layer.name for layer in group] for group in by_prefix] == [
        ["block1_conv", "block1_bn", "block2_conv", "block2_bn"],
        ["block3_conv"],
        ["head"],
    ]
    explicit = finetune.layer_groups(model, groups=[["block1_conv", "block1_bn"], ["block3_conv"]])
    assert [[layer.name for layer in group] for group in explicit] == [
        ["block1_conv", "block1_bn"],
        ["block3_conv"],
        ["head"],
    ]
    with pytest.raises(ValueError, match="no layer named 'block9_conv'"):
        finetune.layer_groups(model, groups=[["block9_conv"]])
    with pytest.raises(ValueError, match="starts with 'stage1'"):
        finetune.layer_groups(model, prefixes=["stage1"])
    with pytest.raises(ValueError, match="`n` must be an int >= 2"):
        finetune.layer_groups(model, n=1)


def test_groups_on_a_real_keras_applications_architecture():
    backbone = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None)
    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Dense(5, name="head")(keras.layers.GlobalAveragePooling2D()(backbone(inputs)))
    model = keras.Model(inputs, outputs)
    blocks = [f"block_{i}_" for i in range(1, 17)]
    groups = finetune.layer_groups(model, prefixes=[["Conv1", "bn_Conv1", "expanded_conv"], blocks[:8], blocks[8:]])
    assert groups[0][0].name == "Conv1" and groups[1][0].name.startswith("block_1_")
    # The last convolution ("Conv_1", "Conv_1_bn") matches no prefix: it joins the block before it.
    assert groups[2][0].name.startswith("block_9_") and groups[2][-1].name == "Conv_1_bn"
    assert [layer.name for layer in groups[-1]] == ["head"]
    assert sum(len(group) for group in groups) == len(finetune.weighted_layers(model))  # Every weighted layer placed.
    by_depth = finetune.layer_groups(model, n=4)
    sizes = [len(group) for group in by_depth[:-1]]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == len(finetune.weighted_layers(model)) - 1


def test_frozen_groups_do_not_move_bn_statistics_included(strategy, digits):
    with strategy.scope():
        model = _backbone_model()
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=LOSS)
    groups = finetune.layer_groups(model, n=3)
    finetune.freeze(model, groups[:1])
    frozen = [v for layer in groups[0] for v in layer.weights]  # BN moving mean/variance included.
    moving = [v for layer in groups[1] + groups[2] for v in layer.weights]
    before, before_moving = _values(frozen), _values(moving)
    x, y = _images(digits)
    model.fit(x, y, batch_size=64, epochs=2, verbose=0)
    for got, want in zip(_values(frozen), before):
        np.testing.assert_array_equal(got, want)  # Element for element.
    assert all(not np.array_equal(got, want) for got, want in zip(_values(moving), before_moving))
    # Thawing group 1 later keeps group 0 frozen, its BatchNorm in inference mode.
    finetune.unfreeze(model, groups[1])
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)
    for got, want in zip(_values(frozen), before):
        np.testing.assert_array_equal(got, want)
    assert not groups[0][1].trainable and groups[1][0].trainable


def _one_sgd_step(model, x, y):
    """Gradients at the current weights, then one full-batch step of `fit`; returns (gradients, updates)."""
    with tf.GradientTape() as tape:
        loss = LOSS(y, model(x, training=True))
    gradients = _values(tape.gradient(loss, model.trainable_variables))
    before = _values(model.trainable_variables)
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    return gradients, [after - b for after, b in zip(_values(model.trainable_variables), before)]


def test_sgd_update_is_multiplier_times_rate_times_gradient(strategy, digits):
    multipliers = [0.01, 0.1, 1.0]
    with strategy.scope():
        model = _backbone_model()
        x, y = _images(digits)
        model(x[:1])
        groups = finetune.layer_groups(model, n=3)
        model.compile(optimizer=finetune.discriminative(keras.optimizers.SGD(0.5), groups, multipliers), loss=LOSS)
    # BatchNorm in training mode moves its statistics: compare on a model with them frozen.
    finetune.freeze(model, [layer for layer in finetune.weighted_layers(model) if "bn" in layer.name])
    x, y = x[:128], y[:128]
    gradients, updates = _one_sgd_step(model, x, y)
    expected = finetune.trainable_multipliers(model)
    assert set(expected.values()) == set(multipliers)
    for variable, gradient, update in zip(model.trainable_variables, gradients, updates):
        np.testing.assert_allclose(update, -expected[variable.path] * 0.5 * gradient, rtol=1e-4, atol=1e-7)


def test_adam_step_sizes_scale_by_the_multipliers(digits):
    model = helpers.mlp(hidden=16)
    groups = finetune.layer_groups(model, n=2)
    model.compile(optimizer=finetune.discriminative(keras.optimizers.Adam(1e-3), groups, [0.1, 1.0]), loss=LOSS)
    before = _values(model.trainable_variables)
    model.fit(digits["x_train"], digits["y_train"], batch_size=512, epochs=1, verbose=0)
    # Adam's first step moves each weight by lr * g / |g| (up to epsilon): the multiplier shows as is.
    for variable, start, multiplier in zip(model.trainable_variables, before, [0.1, 0.1, 1.0, 1.0]):
        steps = np.abs(_values([variable])[0] - start)
        moved = steps[steps > 1e-9]
        assert np.median(moved) == pytest.approx(multiplier * 1e-3, rel=1e-2)


def test_callbacks_that_set_the_base_rate_reach_every_group(digits):
    model = helpers.mlp(hidden=16)
    groups = finetune.layer_groups(model, n=2)
    model.compile(optimizer=finetune.discriminative(keras.optimizers.SGD(1.0), groups, [0.5, 1.0]), loss=LOSS)
    x, y = digits["x_train"][:128], digits["y_train"][:128]
    with tf.GradientTape() as tape:
        loss = LOSS(y, model(x, training=True))
    gradients = _values(tape.gradient(loss, model.trainable_variables))
    before = _values(model.trainable_variables)
    schedule = keras.callbacks.LearningRateScheduler(lambda epoch, rate: 0.2)  # Keras's own callback.
    model.fit(x, y, batch_size=128, epochs=1, shuffle=False, callbacks=[schedule], verbose=0)
    for after, start, gradient, multiplier in zip(
        _values(model.trainable_variables), before, gradients, [0.5, 0.5, 1, 1]
    ):
        # float32 weights of ~0.1 round their difference to ~1e-8.
        np.testing.assert_allclose(after - start, -multiplier * 0.2 * gradient, rtol=1e-4, atol=3e-8)
    assert finetune.learning_rates(model)[model.trainable_variables[0].path] == pytest.approx(0.1)
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=10.0)
    model.fit(x, y, batch_size=128, epochs=2, callbacks=[plateau], verbose=0)
    # Epoch 1 is its first best; epoch 2 "does not improve by 10": the base rate is halved, through the wrapper.
    assert float(read_value(model.optimizer.learning_rate)) == pytest.approx(0.1)
    assert float(read_value(model.optimizer.inner_optimizer.learning_rate)) == pytest.approx(0.1)


def test_multipliers_survive_save_and_load(tmp_path, digits):
    model = helpers.mlp(hidden=16)
    groups = finetune.layer_groups(model, n=2)
    model.compile(optimizer=finetune.discriminative(keras.optimizers.Adam(1e-3), groups, [0.1, 1.0]), loss=LOSS)
    x, y = digits["x_train"], digits["y_train"]
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert isinstance(loaded.optimizer, finetune.DiscriminativeOptimizer)
    assert loaded.optimizer.multipliers == model.optimizer.multipliers
    for got, want in zip(_values(loaded.optimizer.variables), _values(model.optimizer.variables)):
        np.testing.assert_array_equal(got, want)  # Adam's moments and the step count came back.
    model.fit(x[:64], y[:64], batch_size=64, epochs=1, shuffle=False, verbose=0)
    loaded.fit(x[:64], y[:64], batch_size=64, epochs=1, shuffle=False, verbose=0)
    for got, want in zip(_values(loaded.weights), _values(model.weights)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_gradual_unfreezing_thaws_from_the_top(strategy, digits):
    with strategy.scope():
        model = _backbone_model()
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=LOSS)
    groups = finetune.layer_groups(model, n=3)
    snapshots = []

    class _Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            snapshots.append([_values([v for layer in group for v in layer.weights]) for group in groups])

    x, y = _images(digits)
    initial = [_values([v for layer in group for v in layer.weights]) for group in groups]
    callback = finetune.GradualUnfreezing(groups, every_epochs=1)
    history = model.fit(x, y, batch_size=64, epochs=3, callbacks=[callback, _Snapshot()], verbose=0)
    assert callback.thawed == [{"epoch": 1, "group": 1}, {"epoch": 2, "group": 0}]
    assert history.history["trainable_groups"] == [2, 3, 3]

    def same(a, b):
        return all(np.array_equal(p, q) for p, q in zip(a, b))

    # Epoch 1 trains the head only; epoch 2 also group 1; epoch 3 everything.
    assert same(snapshots[0][0], initial[0]) and same(snapshots[0][1], initial[1])
    assert not same(snapshots[0][2], initial[2])
    assert same(snapshots[1][0], initial[0]) and not same(snapshots[1][1], snapshots[0][1])
    assert not same(snapshots[2][0], snapshots[1][0])


def test_bad_input_is_refused(digits):
    model = helpers.mlp(hidden=16)
    groups = finetune.layer_groups(model, n=2)
    with pytest.raises(ValueError, match="2 groups, 3 multipliers"):
        finetune.discriminative(keras.optimizers.SGD(0.1), groups, [0.1, 0.5, 1.0])
    with pytest.raises(ValueError, match="> 0"):
        finetune.discriminative(keras.optimizers.SGD(0.1), groups, [0.0, 1.0])
    with pytest.raises(ValueError, match="> 0"):
        finetune.discriminative(keras.optimizers.SGD(0.1), groups, [-1.0, 1.0])
    with pytest.raises(ValueError, match="at least 2 layer groups"):
        finetune.GradualUnfreezing(groups[:1])
    with pytest.raises(ValueError, match=r"`k` must be an int in \[0, 2\]"):
        finetune.freeze_to(model, groups, 3)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    with pytest.warns(UserWarning, match="Every layer .* is frozen"):
        finetune.freeze(model)
    assert model.trainable_variables == []
    finetune.unfreeze(model)
    assert len(model.trainable_variables) == 4
    multipliers = finetune.geometric_multipliers(3)
    assert multipliers == pytest.approx([1 / 2.6**2, 1 / 2.6, 1.0])


def test_one_cycle_drives_a_discriminative_optimizer(digits):
    from keras_playbook.callbacks import OneCycle

    model = helpers.mlp(hidden=16)
    groups = finetune.layer_groups(model, n=2)
    model.compile(
        optimizer=finetune.discriminative(keras.optimizers.SGD(0.1, momentum=0.9), groups, [0.25, 1.0]), loss=LOSS
    )
    history = model.fit(
        digits["x_train"], digits["y_train"], batch_size=64, epochs=2, callbacks=[OneCycle((0.01, 0.1))], verbose=0
    )
    assert history.history["momentum"][-1] == pytest.approx(0.95)  # Cycled on the inner SGD.
    assert model.optimizer.inner_optimizer.momentum == 0.9  # And given back.
    final = history.history["learning_rate"][-1]
    rates = finetune.learning_rates(model)
    assert sorted(set(round(rate / final, 6) for rate in rates.values())) == [0.25, 1.0]


def test_gradual_unfreezing_on_a_plateau(digits):
    model = helpers.mlp(hidden=16)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=LOSS)  # Nothing learns: every epoch is a plateau.
    groups = finetune.layer_groups(model, n=2)
    callback = finetune.GradualUnfreezing(groups, monitor="val_loss", patience=1)
    model.fit(
        digits["x_train"],
        digits["y_train"],
        validation_data=(digits["x_val"], digits["y_val"]),
        epochs=3,
        callbacks=[callback],
        verbose=0,
    )
    assert callback.thawed == [{"epoch": 2, "group": 0}]  # Best at epoch 1, no progress at 2: thaw.
    with pytest.raises(ValueError, match="no 'val_acc'"):
        model.fit(
            digits["x_train"],
            digits["y_train"],
            epochs=1,
            verbose=0,
            callbacks=[finetune.GradualUnfreezing(groups, monitor="val_acc")],
        )


def test_freeze_to_after_freezing_everything_does_not_warn(recwarn):
    model = helpers.mlp(hidden=16)
    groups = finetune.layer_groups(model, n=2)
    with pytest.warns(UserWarning, match="is frozen"):
        finetune.freeze(model)
    recwarn.clear()
    finetune.freeze_to(model, groups, 1)  # One change: the head thaws as the rest stays frozen.
    assert not [w for w in recwarn if "is frozen" in str(w.message)]
    assert [layer.trainable for layer in finetune.weighted_layers(model)] == [False, True]


def test_an_interrupted_gradual_unfreezing_gives_the_trainability_back(strategy, digits):
    from keras_playbook import Playbook

    class _CtrlC(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 1:
                raise KeyboardInterrupt

    with strategy.scope():
        model = _backbone_model()
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=LOSS)
    groups = finetune.layer_groups(model, n=3)
    groups[0][0].trainable = False  # Frozen by the user on purpose: stays so.
    before = [layer.trainable for layer in leaf_layers(model)]
    x, y = _images(digits)
    callback = finetune.GradualUnfreezing(groups, every_epochs=1)
    with pytest.raises(KeyboardInterrupt):  # A bare callback: Keras calls no on_train_end.
        model.fit(x, y, batch_size=64, epochs=2, callbacks=[callback, _CtrlC()], verbose=0)
    assert [layer.trainable for layer in leaf_layers(model)] != before
    callback.restore()
    assert [layer.trainable for layer in leaf_layers(model)] == before

    pb = Playbook(model, (x, y), batch_size=64, strategy=strategy, verbose=0)
    with pytest.raises(KeyboardInterrupt):  # Inside the Playbook: given back on the way out of fit.
        pb.fit(
            2,
            callbacks=[finetune.GradualUnfreezing(groups, every_epochs=1), _CtrlC()],
            watch=False,
            learning_rate=1e-3,
            verbose=0,
        )
    assert [layer.trainable for layer in leaf_layers(pb.model)] == before
