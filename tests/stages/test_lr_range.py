"""The learning-rate range test, on real training of tiny models."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from matplotlib.figure import Figure

from keras_playbook import LRRangeResult, Playbook, Result
from keras_playbook._data import make_pipeline
from keras_playbook._session import Session
from keras_playbook._stages import lr_curves, lr_range
from tests import helpers


def _playbook(digits, optimizer=None, strategy=None, **kwargs):
    return Playbook(
        helpers.mlp(),
        (digits["x_train"], digits["y_train"]),
        validation_data=(digits["x_val"], digits["y_val"]),
        loss=helpers.LOGITS_LOSS,
        optimizer=optimizer or keras.optimizers.Adam(1e-3),
        strategy=strategy,
        verbose=0,
        **kwargs,
    )


def _accuracy_after_training(digits, learning_rate, epochs=30):
    keras.utils.set_random_seed(0)
    model = helpers.mlp()
    model.compile(keras.optimizers.Adam(learning_rate), helpers.LOGITS_LOSS, metrics=["accuracy"])
    model.fit(digits["x_train"], digits["y_train"], batch_size=32, epochs=epochs, verbose=0)
    return model.evaluate(digits["x_val"], digits["y_val"], verbose=0, return_dict=True)["accuracy"]


@pytest.mark.slow
def test_suggestion_lands_in_the_sweeps_good_band(digits):
    grid = (1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 1.0)
    sweep = {lr: _accuracy_after_training(digits, lr) for lr in grid}
    best = max(sweep.values())
    # Good: within 5 points of the best (the 128 validation examples move in 0.8-point steps).
    good = [lr for lr, accuracy in sweep.items() if accuracy >= best - 0.05]
    assert 1e-4 not in good and 1.0 not in good  # The band is inside the range.
    keras.utils.set_random_seed(0)
    result = _playbook(digits).find_lr()
    assert result.ok, result.message
    # Inside the band, widened by half a grid step (x sqrt(3)) on each side.
    assert min(good) / 3**0.5 <= result.suggested_lr <= max(good) * 3**0.5, (sweep, result.suggestions)
    assert _accuracy_after_training(digits, result.suggested_lr) >= best - 0.05


def test_records_each_steps_own_loss_not_the_running_mean(digits):
    """Replays the test's learning rates in a hand-written SGD loop."""
    keras.utils.set_random_seed(0)
    model = helpers.mlp()
    model.compile(keras.optimizers.SGD(0.1), helpers.LOGITS_LOSS)
    session = Session(model)
    session.compile()
    session.ensure_built(digits["x_train"][:1])
    pipeline = make_pipeline(
        (digits["x_train"], digits["y_train"]),
        batch_size=32,
        num_replicas=1,
        shuffle=False,
        seed=0,
        input_rank=2,
        name="training data",
    )
    result = lr_range.range_test(session, pipeline, min_lr=1e-3, max_lr=1.0, num_steps=30, smoothing=0.5)
    assert result.steps_run == 30

    replay = keras.models.clone_model(model)
    replay.set_weights(session.initial_weights)
    manual = []
    batches = list(pipeline.dataset.repeat().take(30).as_numpy_iterator())
    for (x, y), learning_rate in zip(batches, result.learning_rates):
        with tf.GradientTape() as tape:
            loss = helpers.LOGITS_LOSS(y, replay(x, training=True))
        gradients = tape.gradient(loss, replay.trainable_variables)
        for variable, gradient in zip(replay.trainable_variables, gradients):
            variable.assign_sub(learning_rate * gradient)
        manual.append(float(loss))
    np.testing.assert_allclose(result.losses, manual, rtol=1e-4, atol=1e-5)
    running_mean = np.cumsum(manual) / np.arange(1, len(manual) + 1)
    assert not np.allclose(result.losses, running_mean, rtol=1e-2)
    assert result.learning_rates[0] == pytest.approx(1e-3) and result.learning_rates[-1] == pytest.approx(1.0)


def test_leaves_model_and_optimizer_state_exactly(strategy, digits):
    pb = _playbook(digits, strategy=strategy)
    pb.fit(epochs=1, verbose=0)  # The optimizer has moments and a step count.
    before = helpers.variables_of(pb.model)
    learning_rate = keras.ops.convert_to_numpy(pb.model.optimizer.learning_rate)
    result = pb.find_lr(num_steps=40)
    assert result.steps_run > 10
    helpers.assert_same_values(before, helpers.variables_of(pb.model))
    assert keras.ops.convert_to_numpy(pb.model.optimizer.learning_rate) == learning_rate


def test_runs_under_two_replicas_and_settles_the_learning_rate(strategy, digits):
    pb = _playbook(digits, strategy=strategy)
    result = pb.find_lr(num_steps=60)
    assert result.ok, result.message
    assert result.global_batch_size == 32 * strategy.num_replicas_in_sync
    assert 1e-7 <= result.suggested_lr <= 10
    pb.fit(epochs=1, verbose=0)
    applied = keras.ops.convert_to_numpy(pb.model.optimizer.learning_rate)
    assert applied == pytest.approx(result.suggested_lr, rel=1e-6)
    assert pb.journal[-1].hyperparameters["learning_rate"] == result.suggested_lr


def test_divergence_stops_the_test_early(strategy, digits):
    pb = _playbook(digits, optimizer=keras.optimizers.SGD(0.01), strategy=strategy)
    result = pb.find_lr(min_lr=1e-3, max_lr=1e4, num_steps=200, repeats=1)
    assert result.steps_run < 200
    assert result.stop_reason is not None
    assert result.lr_bounds[1] < 1e4


@pytest.mark.parametrize(
    "optimizer",
    [
        keras.optimizers.SGD(0.01),
        keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True),
        keras.optimizers.RMSprop(1e-3),
        keras.optimizers.Adam(1e-3),
        keras.optimizers.AdamW(1e-3, weight_decay=1e-4),
    ],
    ids=lambda optimizer: type(optimizer).__name__ + ("+momentum" if getattr(optimizer, "momentum", 0) else ""),
)
@pytest.mark.slow
def test_works_with_each_optimizer(digits, optimizer):
    pb = _playbook(digits, optimizer=optimizer)
    result = pb.find_lr(num_steps=60)
    assert result.ok, result.message
    assert result.optimizer == type(optimizer).__name__
    assert result.lr_bounds[0] < result.lr_bounds[1]
    assert result.one_cycle_lr_bounds[0] == pytest.approx(result.lr_bounds[1] / 10)


def test_validation_mode_measures_the_validation_loss(strategy, digits):
    pb = _playbook(digits, strategy=strategy)
    # A range too low to learn anything: every measurement is the initial validation loss.
    result = pb.find_lr(min_lr=1e-12, max_lr=1e-11, num_steps=10, on="validation", num_validation_batches=2, repeats=1)
    sample = pb.validation_data.sample(2, seed=pb.seed)
    expected = pb.model.evaluate(sample[0], sample[1], verbose=0)
    assert result.on == "validation"
    np.testing.assert_allclose(result.losses, expected, rtol=1e-4)
    assert not result.ok and "never fell" in result.message
    assert pb.journal.source("learning_rate").kind == "setup"


def test_loss_still_falling_says_to_raise_max_lr(digits):
    result = _playbook(digits).find_lr(min_lr=1e-4, max_lr=1e-2, num_steps=60)
    assert not result.ok
    assert "Raise max_lr" in result.message


def test_linear_mode_spaces_rates_evenly(digits):
    result = _playbook(digits, optimizer=keras.optimizers.SGD(0.01)).find_lr(
        min_lr=1e-3, max_lr=1.0, num_steps=20, mode="linear", stop_factor=100
    )
    np.testing.assert_allclose(np.diff(result.learning_rates), (1.0 - 1e-3) / 19, rtol=1e-6)


@pytest.mark.parametrize(
    "arguments, match",
    [
        ({"min_lr": 1.0, "max_lr": 0.1}, "min_lr must be below max_lr"),
        ({"min_lr": 0.0}, "min_lr"),
        ({"max_lr": -1.0}, "max_lr"),
        ({"min_lr": float("nan")}, "min_lr"),
        ({"num_steps": 5}, "num_steps"),
        ({"num_steps": 100, "allow_repeat": False}, "more batches than the training data holds"),
        ({"mode": "cosine"}, "mode"),
        ({"rule": "magic"}, "rule"),
        ({"stop_factor": 1.0}, "stop_factor"),
        ({"smoothing": 1.0}, "smoothing"),
    ],
)
def test_bad_arguments_fail_before_training(digits, arguments, match):
    pb = _playbook(digits)
    before = helpers.variables_of(pb.model)
    with pytest.raises(ValueError, match=match):
        pb.find_lr(**arguments)
    assert len(pb.journal) == 1
    helpers.assert_same_values(before, helpers.variables_of(pb.model))


def test_validation_mode_needs_validation_data(digits):
    pb = Playbook(helpers.mlp(), (digits["x_train"], digits["y_train"]), loss=helpers.LOGITS_LOSS, verbose=0)
    with pytest.raises(ValueError, match="needs validation data"):
        pb.find_lr(on="validation")


def test_a_changed_batch_size_makes_the_learning_rate_stale(digits):
    pb = _playbook(digits)
    found = pb.find_lr(num_steps=40)
    with pytest.raises(ValueError, match="measured at batch_size=32, but batch_size is now 64"):
        pb.fit(epochs=1, batch_size=64, verbose=0)
    pb.fit(epochs=1, batch_size=64, learning_rate=1e-3, verbose=0)  # An explicit LR is fine.
    pb.fit(epochs=1, verbose=0)  # At the measured batch size, the found LR holds.
    assert pb.journal[-1].hyperparameters["learning_rate"] == found.suggested_lr


def test_result_round_trips_and_plots(digits):
    result = _playbook(digits).find_lr(num_steps=40)
    again = Result.from_dict(result.to_dict())
    assert isinstance(again, LRRangeResult)
    assert again.suggested_lr == result.suggested_lr
    assert again.suggestions == result.suggestions
    figure = result.plot()
    assert isinstance(figure, Figure)
    assert figure.axes[0].get_xscale() == "log"


# Suggestion rules on a curve of known shape ------------------------------------


def _synthetic_curve():
    """Flat until 1e-4, falling until 1e-1 (fastest near 1e-2), then rising."""
    rates = np.geomspace(1e-6, 1.0, 121)
    x = np.log10(rates)
    falling = 2.0 - 1.5 / (1 + np.exp(-3 * (x + 2)))  # Sigmoid centred at 1e-2.
    rising = np.where(x > -1, 20 * (x + 1) ** 2, 0.0)
    return rates, falling + rising


def test_rules_on_a_known_curve():
    rates, losses = _synthetic_curve()
    minimum = rates[np.argmin(losses)]
    assert 0.05 < minimum < 0.2
    assert lr_curves.steepest(rates, losses) == pytest.approx(1e-2, rel=0.15)
    assert lr_curves.minimum_over_ten(rates, losses) == pytest.approx(minimum / 10)
    assert 1e-4 < lr_curves.valley(rates, losses) < minimum
    floor = lr_curves.floor_over_ten(rates, lr_curves.smooth(losses, 0.9), losses, 0.9)
    assert floor == pytest.approx(rates[lr_curves.upper_bound_index(losses, 0.9)] / 10)
    assert floor < minimum / 10  # The floor begins before the minimum of the curve.


def test_smoothing_is_bias_corrected():
    smoothed = lr_curves.smooth([2.0, 2.0, 2.0], 0.98)
    np.testing.assert_allclose(smoothed, [2.0, 2.0, 2.0])
    np.testing.assert_allclose(lr_curves.smooth([1.0, 3.0], 0.0), [1.0, 3.0])


def test_verbose_playbook_shows_one_bar_and_reports_bad_steps_by_name(digits, capsys):
    pb = Playbook(helpers.mlp(), (digits["x_train"], digits["y_train"]), loss=helpers.LOGITS_LOSS, verbose=1)
    with pytest.raises(ValueError, match="num_steps"):
        pb.find_lr(num_steps=5)
    pb.find_lr(num_steps=20)
    assert "Learning-rate range test" in capsys.readouterr().out


def test_the_same_call_gives_the_same_answer(digits):
    pb = _playbook(digits)
    first, second = pb.find_lr(), pb.find_lr()
    assert first.losses == second.losses and first.suggested_lr == second.suggested_lr


def test_the_upper_bound_sits_before_the_rise_when_the_task_is_learned_within_the_test():
    # An easy task the model learns within the test: the loss falls to a floor and stays there until
    # the cliff. The upper bound is where the floor begins, not at the cliff where the lagging
    # average has its minimum.

    rates = np.geomspace(1e-5, 10, 100)
    losses = np.where(
        rates < 1e-3,
        0.7,
        np.where(rates < 1.0, 0.7 * np.exp(-20 * (np.log10(rates) + 3)) + 0.01, 0.01 + 5 * (rates - 1.0)),
    )
    losses = losses * (1 + 0.02 * np.random.default_rng(0).standard_normal(100))
    index = lr_curves.upper_bound_index(losses, 0.9)
    lagging = int(np.argmin(lr_curves.smooth(losses, 0.9)))
    assert rates[index] < 0.05 < rates[lagging]
    rise = int(np.argmax(rates >= 1.0))
    assert index < rise


def test_the_suggestion_is_the_median_over_data_orders(digits):
    result = _playbook(digits).find_lr()
    found = [rate for rate in result.suggestions_by_order if rate is not None]
    assert len(result.suggestions_by_order) == 3 and len(found) >= 2
    assert result.suggested_lr == sorted(found)[(len(found) - 1) // 2]
    assert "data orders the suggestion ranged" in result.message
    single = _playbook(digits).find_lr(repeats=1)
    assert single.suggestions_by_order == [] and "data orders" not in single.message


def test_a_loss_that_reaches_its_floor_or_turns_up_is_not_still_falling():
    # Seen on iris with SGD and momentum: the model learns the task within the test and the loss
    # holds its floor, noisily, up to max_lr; or it turns up in the last steps, before the lagging
    # average sets off the stop. Neither means "raise max_lr".
    rates = np.geomspace(1e-7, 10, 100)
    falling = 1.3 - 1.0 / (1 + np.exp(-4 * (np.log10(rates) + 1)))  # Down from 1.3 to ~0.3 by 1.0.
    floor = np.where(rates < 1.0, falling, 0.3)
    steadily = 1.3 - 0.1 * (np.log10(rates) + 7)  # Still going down at max_lr.
    for seed in range(10):
        noise = np.where(rates < 0.05, 1, 1 + 0.2 * np.random.default_rng(seed).standard_normal(100))
        assert lr_curves.stopped_falling(floor * noise, 0.9)
        assert not lr_curves.stopped_falling(steadily * np.where(rates < 0.05, 1, noise**0.1), 0.9)
    turned_up = floor.copy()
    turned_up[-3:] = [0.6, 1.3, 1.3]
    assert lr_curves.stopped_falling(turned_up, 0.9)
    assert not lr_curves.stopped_falling(steadily, 0.9)


def test_iris_on_sgd_with_momentum_finds_a_rate_in_every_data_order():
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    x = ((x - x.mean(0)) / x.std(0)).astype("float32")
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)])
    model.compile(keras.optimizers.SGD(0.01, momentum=0.9), helpers.LOGITS_LOSS)
    result = Playbook(model, (x[:120], y[:120]), batch_size=32, seed=1, verbose=0).find_lr()
    assert result.ok and None not in result.suggestions_by_order, result.message


def test_one_noisy_batch_does_not_stop_the_test_before_its_warm_up():
    # The bias-corrected average of the first step is that one batch: a lucky first batch used to set
    # a minimum that the second batch "exceeded 4 x", ending the test after 2 steps.
    rates = lr_curves.range_learning_rates(1e-7, 10, 100)
    test = lr_range._RangeTest(rates, smoothing=0.9, stop_factor=4.0)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(), "mse")
    test.set_model(model)
    test.model.stop_training = False
    for step, loss in enumerate([0.01] + [0.5] * 20):
        test.on_train_batch_begin(step)
        test.on_train_batch_end(step, {"loss": loss})
        if test.model.stop_training:
            break
    assert len(test.losses) > lr_curves.warm_up_steps(100) and test.stop_reason is None


def _cosine_problem():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 8)).astype("float32")
    y = x @ rng.standard_normal((8, 4)).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(4)])
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.CosineSimilarity())
    return model, (x, y)


@keras.saving.register_keras_serializable(package="tests")
def _gaussian_nll(y_true, y_pred):
    mean, log_scale = y_pred[:, :1], y_pred[:, 1:]
    return keras.ops.mean(log_scale + 0.5 * keras.ops.square((y_true - mean) / keras.ops.exp(log_scale)), axis=-1)


def _gaussian_problem():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 4)).astype("float32")
    y = (0.2 * x @ np.array([[1.0], [-2.0], [0.5], [0.0]], "float32") + 0.02 * rng.standard_normal((512, 1))).astype(
        "float32"
    )
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(2)])
    model.compile(keras.optimizers.Adam(1e-3), _gaussian_nll)
    return model, (x, y)


@pytest.mark.parametrize("problem", [_cosine_problem, _gaussian_problem])
def test_losses_that_go_below_zero_get_a_real_range_test(problem):
    model, data = problem()
    result = Playbook(model, data, batch_size=32, verbose=0).find_lr(repeats=1)
    assert min(result.losses) < 0  # The loss does go below zero here.
    assert result.ok, result.message
    assert result.steps_run > 30 and 1e-4 < result.suggested_lr < 1.0


def test_overfit_judges_a_loss_that_goes_below_zero_against_its_own_floor():
    model, data = _cosine_problem()
    pb = Playbook(model, data, batch_size=32, verbose=0)
    result = pb.overfit_small_sample(learning_rate=3e-3)
    # Cosine similarity's lowest value is -1: memorized means within 1% of the way down to it.
    assert result.target_loss == pytest.approx(-1 + 0.01 * (result.initial_loss + 1))
    assert result.verdict != "memorized" or result.final_loss <= result.target_loss

    model, data = _gaussian_problem()
    pb = Playbook(model, data, batch_size=32, verbose=0)
    result = pb.overfit_small_sample(learning_rate=1e-2, max_steps=200)
    assert min(result.losses) < 0
    assert result.verdict == "unknown_floor" and result.ok and not result.checked
    assert "NOT CHECKED" in result.summary() and "target_loss=" in result.message
    judged = pb.overfit_small_sample(learning_rate=1e-2, max_steps=200, target_loss=-50.0)
    assert judged.checked and judged.verdict == "too_slow"
