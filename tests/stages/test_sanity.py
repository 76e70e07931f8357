import math

import keras
import numpy as np
import pytest
from matplotlib.figure import Figure
from sklearn.datasets import load_breast_cancer

from keras_playbook import Playbook
from keras_playbook._stages import disable_regularization
from tests import helpers


def _playbook(digits, strategy=None, model=helpers.mlp, x=None, y=None, **kwargs):
    kwargs.setdefault("loss", helpers.LOGITS_LOSS)
    return Playbook(
        model,
        (digits["x_train"] if x is None else x, digits["y_train"] if y is None else y),
        batch_size=32,
        strategy=strategy,
        verbose=0,
        **kwargs,
    )


# check_initial_loss ----------------------------------------------------------


def test_logits_model_starts_near_ln_c(strategy, digits):
    result = _playbook(digits, strategy).check_initial_loss()
    assert result.ok, result.message
    assert result.expected == pytest.approx(math.log(10))
    assert abs(result.loss - math.log(10)) < 0.25 * math.log(10)
    assert result.output_kind == "logits"
    assert result.num_examples == min(10 * 32 * strategy.num_replicas_in_sync, 512)
    assert "ln 10" in result.message and "Johnson, EECS 498 Lecture 11, step 1" in result.message
    assert isinstance(result.plot(), Figure)


def test_softmax_model_with_probability_loss_is_ok(digits):
    result = _playbook(
        digits, model=lambda: helpers.mlp(activation="softmax"), loss="sparse_categorical_crossentropy"
    ).check_initial_loss()
    assert result.ok and result.output_kind == "probabilities", result.message


def test_one_hot_labels_use_categorical_crossentropy(digits):
    one_hot = keras.utils.to_categorical(digits["y_train"], 10)
    result = _playbook(
        digits, y=one_hot, loss=keras.losses.CategoricalCrossentropy(from_logits=True)
    ).check_initial_loss()
    assert result.ok and result.expected == pytest.approx(math.log(10)), result.message


def test_binary_crossentropy_expects_ln_2():
    data = load_breast_cancer()
    x = ((data.data - data.data.mean(0)) / data.data.std(0)).astype("float32")
    pb = Playbook(
        lambda: helpers.mlp(num_classes=1, input_dim=30, activation="sigmoid"),
        (x, data.target.astype("float32")),
        loss="binary_crossentropy",
        verbose=0,
    )
    result = pb.check_initial_loss()
    assert result.expected == pytest.approx(math.log(2))
    assert result.ok, result.message


def test_logits_with_probability_loss_is_flagged(digits):
    result = _playbook(digits, loss="sparse_categorical_crossentropy").check_initial_loss()
    assert not result.ok
    assert "from_logits=True" in result.message and "outputs logits" in result.message


def test_softmax_with_logits_loss_is_flagged(digits):
    result = _playbook(digits, model=lambda: helpers.mlp(activation="softmax")).check_initial_loss()
    assert not result.ok
    assert "from_logits=True and applies it again" in result.message


def test_unnormalized_inputs_give_a_loss_far_above_ln_c(strategy, digits):
    result = _playbook(digits, strategy, x=digits["x_train"] * 100.0).check_initial_loss()
    assert not result.ok
    assert result.loss > 1.25 * math.log(10)
    assert "normalized" in result.message


def test_trained_model_scores_below_chance(digits):
    model = helpers.mlp()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=helpers.LOGITS_LOSS)
    model.fit(digits["x_train"], digits["y_train"], epochs=5, verbose=0)
    result = _playbook(digits, model=model, loss=None).check_initial_loss()
    assert not result.ok and result.loss < 0.75 * math.log(10)
    assert "pretrained" in result.message


def test_a_loss_without_expectation_says_nothing_was_checked(digits):
    result = _playbook(
        digits, model=lambda: helpers.mlp(num_classes=1), y=digits["y_train"].astype("float32"), loss="huber"
    ).check_initial_loss()
    assert result.expected is None and result.ok and not result.checked
    assert "Nothing was checked" in result.message and math.isfinite(result.loss)
    # Digit labels 0-9 as mean-squared-error targets are not centred: that is checked now.
    result = _playbook(
        digits, model=lambda: helpers.mlp(num_classes=1), y=digits["y_train"].astype("float32"), loss="mse"
    ).check_initial_loss()
    assert result.checked and not result.ok and "not centred" in result.message


@pytest.mark.parametrize("arguments, match", [({"num_batches": 0}, "num_batches"), ({"tolerance": -0.1}, "tolerance")])
def test_initial_loss_bad_arguments(digits, arguments, match):
    with pytest.raises(ValueError, match=match):
        _playbook(digits).check_initial_loss(**arguments)


# overfit_small_sample ------------------------------------------------------------


def test_overfit_memorizes_with_regularization_off(strategy, digits):
    pb = _playbook(
        digits,
        strategy,
        model=lambda: helpers.mlp(hidden=64, dropout=0.5, l2=1e-2),
        optimizer=keras.optimizers.AdamW(1e-2, weight_decay=0.1),
    )
    before = helpers.variables_of(pb.model)
    result = pb.overfit_small_sample(num_batches=4, max_steps=400)
    assert result.verdict == "memorized" and result.ok, result.message
    assert result.final_accuracy >= 0.99
    assert result.steps < 400
    assert result.num_examples == 4 * 32 * strategy.num_replicas_in_sync
    assert any(item.startswith("dropout") for item in result.regularization_disabled)
    assert any(item.startswith("regularizer") for item in result.regularization_disabled)
    assert "optimizer weight_decay" in result.regularization_disabled
    # The user's model, its regularization and optimizer are untouched.
    helpers.assert_same_values(before, helpers.variables_of(pb.model))
    assert pb.model.layers[1].rate == 0.5
    assert pb.model.optimizer.weight_decay == 0.1
    assert pb.journal[-1] is result
    assert isinstance(result.plot(), Figure)


def test_overfit_with_huge_learning_rate_diverges(strategy, digits):
    pb = _playbook(digits, strategy, optimizer=keras.optimizers.SGD(1.0))
    result = pb.overfit_small_sample(num_batches=2, max_steps=60, learning_rate=1e12)
    assert result.verdict == "diverged" and not result.ok
    assert "too high" in result.message and "learning_rate=1e+11" in result.message


def test_overfit_with_tiny_learning_rate_does_not_decrease(digits):
    pb = _playbook(digits, optimizer=keras.optimizers.SGD(1e-9))
    result = pb.overfit_small_sample(num_batches=2, max_steps=20, learning_rate=1e-9)
    assert result.verdict == "not_decreasing" and not result.ok
    assert "too low" in result.message
    assert result.learning_rate == pytest.approx(1e-9) and result.learning_rate_source == "given"


def test_overfit_too_short_budget_says_so(digits):
    result = _playbook(digits, optimizer=keras.optimizers.Adam(1e-2)).overfit_small_sample(num_batches=4, max_steps=8)
    assert result.verdict == "too_slow" and not result.ok
    assert "max_steps" in result.message


def test_overfit_from_a_loss_far_above_chance_is_not_memorized_at_chance_accuracy(digits):
    """Unnormalized inputs start the loss at many times ln C: 99% of the way down is still no memorization."""
    x = digits["x_train"] * 400.0
    result = _playbook(digits, x=x, optimizer=keras.optimizers.SGD(1e-4)).overfit_small_sample(
        num_batches=2, max_steps=10, learning_rate=1e-4
    )
    assert result.initial_loss > 20 * math.log(10)
    assert result.target_loss <= 0.01 * math.log(10) + 1e-9
    if result.final_accuracy < 0.5:
        assert result.verdict != "memorized" and not result.ok, result.message


def test_overfit_regression_uses_the_loss_target(digits):
    rng = np.random.default_rng(0)
    y = (digits["x_train"] @ rng.normal(size=64)).astype("float32")
    result = _playbook(
        digits,
        model=lambda: helpers.mlp(num_classes=1, hidden=64),
        y=y,
        loss="mse",
        optimizer=keras.optimizers.Adam(1e-2),
    ).overfit_small_sample(num_batches=2, max_steps=600)
    assert result.final_accuracy is None
    assert result.verdict == "memorized", result.message
    assert result.final_loss <= result.target_loss


@pytest.mark.parametrize(
    "arguments, match",
    [
        ({"num_batches": 0}, "num_batches"),
        ({"max_steps": -5}, "max_steps"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"target_loss": float("nan")}, "target_loss"),
    ],
)
def test_overfit_bad_arguments(digits, arguments, match):
    pb = _playbook(digits)
    with pytest.raises(ValueError, match=match):
        pb.overfit_small_sample(**arguments)
    assert len(pb.journal) == 1


def test_disable_regularization_turns_everything_off():
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(8, kernel_regularizer="l2", bias_regularizer="l1", activity_regularizer="l2"),
            keras.layers.GaussianNoise(0.3),
            keras.layers.Dropout(0.4),
            keras.layers.Reshape((2, 4)),
            keras.layers.LSTM(4, dropout=0.2, recurrent_dropout=0.1),
        ]
    )
    disabled = disable_regularization(model)
    assert len(model.losses) == 0 or all(float(loss) == 0 for loss in model.losses)
    assert model.layers[2].rate == 0.0 and model.layers[1].stddev == 0.0
    assert model.layers[4].cell.dropout == 0.0 and model.layers[4].cell.recurrent_dropout == 0.0
    assert any("activity_regularizer" in item for item in disabled)
    assert sum(item.startswith("regularizer") for item in disabled) == 2


def _regression_data(scale, shift, n=400):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 8)).astype("float32")
    y = (x @ rng.standard_normal(8) + 0.1 * rng.standard_normal(n)).astype("float32")
    return x, shift + scale * (y - y.mean()) / y.std()


def test_regression_is_checked_against_the_loss_of_predicting_the_mean(strategy):
    model = lambda: helpers.mlp(num_classes=1, input_dim=8)  # noqa: E731
    x, y = _regression_data(1.0, 0.0)
    result = Playbook(model, (x, y), loss="mse", batch_size=32, strategy=strategy, verbose=0).check_initial_loss()
    assert result.ok and result.checked, result.message
    assert result.expected == pytest.approx(float(np.var(y[: result.num_examples])), rel=0.2)
    x, y = _regression_data(50.0, 200.0)  # Unscaled targets: mean 200, std 50.
    result = Playbook(model, (x, y), loss="mse", batch_size=32, strategy=strategy, verbose=0).check_initial_loss()
    assert not result.ok and result.checked
    assert "not centred" in result.message and "Standardize the targets" in result.message
    assert "OK" not in result.summary().split(" - ")[0]


def test_not_checked_is_not_ok_in_disguise():
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    model = keras.Model(inputs, [keras.layers.Dense(1, name="a")(hidden), keras.layers.Dense(1, name="b")(hidden)])
    x, y = _regression_data(1.0, 0.0)
    pb = Playbook(model, (x, (y, y)), loss=["mse", "mse"], verbose=0)
    result = pb.check_initial_loss()
    assert result.ok and not result.checked and "Nothing was checked" in result.message
    assert result.summary().startswith("check_initial_loss: NOT CHECKED")


def test_an_output_that_does_not_depend_on_the_input_is_flagged(digits):
    def dead():
        return keras.Sequential(
            [
                keras.Input((64,)),
                keras.layers.Dense(32, activation="relu", bias_initializer=keras.initializers.Constant(-100.0)),
                keras.layers.Dense(10),
            ]
        )

    result = _playbook(digits, model=dead).check_initial_loss()
    assert not result.ok and result.input_dependence == 0 and "does not depend on its input" in result.message

    def zero_head():  # Constant on purpose: a zero-initialized last layer starts exactly at ln C.
        return keras.Sequential(
            [
                keras.Input((64,)),
                keras.layers.Dense(32, activation="relu"),
                keras.layers.Dense(10, kernel_initializer="zeros"),
            ]
        )

    result = _playbook(digits, model=zero_head).check_initial_loss()
    assert result.ok and result.loss == pytest.approx(math.log(10), rel=1e-4), result.message


def _cnn(augment=False, add_loss=False):
    layers = [keras.Input((8, 8, 1))]
    if augment:
        layers += [keras.layers.RandomFlip("horizontal"), keras.layers.RandomTranslation(0.2, 0.2)]
    layers += [
        keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.BatchNormalization(),
        keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
    ]
    if add_loss:
        layers.append(_ActivityPenalty(name="penalty"))
    layers.append(keras.layers.Dense(10))
    return keras.Sequential(layers)


class _ActivityPenalty(keras.layers.Layer):
    def call(self, inputs):
        self.add_loss(1e-4 * keras.ops.mean(keras.ops.square(inputs)))
        return inputs


def test_healthy_models_memorize_at_a_rate_found_on_the_sample(digits):
    # Models no other test uses, compiled with the usual defaults: none is called broken.
    images = digits["x_train"].reshape(-1, 8, 8, 1)
    cases = [
        (lambda: _cnn(augment=True), images, keras.optimizers.Adam()),
        (lambda: _cnn(add_loss=True), images, keras.optimizers.SGD(0.01, momentum=0.9)),
        (lambda: helpers.mlp(hidden=64), digits["x_train"], keras.optimizers.SGD(0.01)),
    ]
    for build, x, optimizer in cases:
        result = _playbook(digits, model=build, x=x, optimizer=optimizer).overfit_small_sample()
        assert result.ok and result.learning_rate_source == "range test", result.message
        assert result.steps < 500
    augmented = _playbook(digits, model=lambda: _cnn(augment=True), x=images).overfit_small_sample()
    assert sum(item.startswith("augmentation") for item in augmented.regularization_disabled) == 2
    penalized = _playbook(digits, model=lambda: _cnn(add_loss=True), x=images).overfit_small_sample()
    assert penalized.regularization_left_on == ["add_loss: penalty"] and "Left on" in penalized.message


def test_a_model_without_capacity_still_fails(digits):
    def bottleneck():  # One unit in the middle cannot separate ten classes.
        return keras.Sequential([keras.Input((64,)), keras.layers.Dense(1), keras.layers.Dense(10)])

    result = _playbook(digits, model=bottleneck).overfit_small_sample()
    assert not result.ok and result.verdict in ("too_slow", "not_decreasing"), result.message
