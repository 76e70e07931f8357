"""probe_lrs and sweep_momentum: short runs from the same weights."""

import math

import keras
import pytest
from matplotlib.figure import Figure

from keras_playbook import MomentumResult, Playbook, ProbeResult, Result
from keras_playbook._stages.probes import momentum_name
from tests import helpers


def _playbook(digits, optimizer=None, strategy=None, validation=True):
    return Playbook(
        helpers.mlp(),
        (digits["x_train"], digits["y_train"]),
        validation_data=(digits["x_val"], digits["y_val"]) if validation else None,
        loss=helpers.LOGITS_LOSS,
        optimizer=optimizer or keras.optimizers.SGD(0.01),
        strategy=strategy,
        verbose=0,
    )


# probe_lrs --------------------------------------------------------------------


def test_probes_pick_the_largest_rate_that_lowers_the_loss(strategy, digits):
    pb = _playbook(digits, strategy=strategy)
    before = helpers.variables_of(pb.model)
    result = pb.probe_lrs(num_steps=40)
    assert result.learning_rates == [1e-1, 1e-2, 1e-3, 1e-4]
    # SGD: 1e-1 learns fastest here, 1e-4 barely moves the loss in 40 steps.
    assert result.chosen_lr == 1e-1
    assert result.drops[0] > result.drops[1] > result.drops[3]
    assert result.drops[3] < result.min_drop
    assert all(len(losses) == 40 for losses in result.step_losses)
    helpers.assert_same_values(before, helpers.variables_of(pb.model))
    assert pb.journal.source("learning_rate").kind == "setup"  # A cross-check settles nothing.


def test_diverging_rate_is_not_chosen(digits):
    result = _playbook(digits).probe_lrs(learning_rates=[1e4, 1e-1], num_steps=30)
    assert result.diverged == [True, False]
    assert math.isnan(result.drops[0])
    assert result.chosen_lr == 1e-1
    assert "diverged" in result.message


def test_probes_compare_with_find_lr(digits):
    pb = _playbook(digits, optimizer=keras.optimizers.Adam(1e-3))
    found = pb.find_lr(num_steps=60)
    result = pb.probe_lrs(num_steps=30)
    assert result.compared_with == found.suggested_lr
    assert "find_lr" in result.message


def test_no_rate_lowering_the_loss_is_not_ok(digits):
    result = _playbook(digits).probe_lrs(learning_rates=[1e-7, 1e-8], num_steps=20)
    assert result.chosen_lr is None and not result.ok
    assert "No learning rate" in result.message


def test_probe_result_round_trips_and_plots(digits):
    result = _playbook(digits).probe_lrs(learning_rates=[1e-1, 1e-3], num_steps=20)
    again = Result.from_dict(result.to_dict())
    assert isinstance(again, ProbeResult) and again.drops == result.drops
    assert isinstance(result.plot(), Figure)


@pytest.mark.parametrize(
    "arguments, match",
    [
        ({"learning_rates": []}, "non-empty"),
        ({"learning_rates": [0.1, -1.0]}, "learning_rates"),
        ({"learning_rates": [0.1, 0.1]}, "repeated"),
        ({"num_steps": 0}, "num_steps"),
        ({"min_drop": 1.5}, "min_drop"),
    ],
)
def test_probe_bad_arguments(digits, arguments, match):
    pb = _playbook(digits)
    with pytest.raises(ValueError, match=match):
        pb.probe_lrs(**arguments)
    assert len(pb.journal) == 1


# sweep_momentum -----------------------------------------------------------------


def test_sweep_picks_the_lowest_validation_loss_and_fit_uses_it(strategy, digits):
    pb = _playbook(digits, optimizer=keras.optimizers.SGD(0.05), strategy=strategy)
    before = helpers.variables_of(pb.model)
    result = pb.sweep_momentum(num_steps=40)
    assert result.hyperparameter == "momentum"
    assert result.values == [0.99, 0.97, 0.95, 0.9]
    finite = [(loss, value) for loss, value in zip(result.validation_losses, result.values) if math.isfinite(loss)]
    assert result.best_value == min(finite)[1]
    helpers.assert_same_values(before, helpers.variables_of(pb.model))
    # The model's SGD had no momentum: fit gives it the swept value.
    pb.fit(epochs=1, verbose=0)
    assert pb.model.optimizer.momentum == result.best_value
    assert pb.journal[-1].hyperparameters["momentum"] == result.best_value
    assert math.isfinite(pb.journal[-1].history["loss"][-1])


def test_adam_sweeps_beta_1_at_the_found_learning_rate(digits):
    pb = _playbook(digits, optimizer=keras.optimizers.Adam(1e-3))
    found = pb.find_lr(num_steps=60)
    result = pb.sweep_momentum(values=[0.95, 0.9, 0.8], num_steps=30)
    assert result.hyperparameter == "beta_1"
    assert result.learning_rate == found.suggested_lr
    pb.fit(epochs=1, verbose=0)
    assert pb.model.optimizer.beta_1 == result.best_value


def test_momentum_result_round_trips_and_plots(digits):
    result = _playbook(digits).sweep_momentum(values=[0.9, 0.5], num_steps=20)
    again = Result.from_dict(result.to_dict())
    assert isinstance(again, MomentumResult) and again.best_value == result.best_value
    assert isinstance(result.plot(), Figure)


def test_momentum_name_by_optimizer():
    assert momentum_name(keras.optimizers.SGD()) == "momentum"
    assert momentum_name(keras.optimizers.RMSprop()) == "momentum"
    assert momentum_name(keras.optimizers.AdamW()) == "beta_1"
    with pytest.raises(TypeError, match="Adagrad has no momentum"):
        momentum_name(keras.optimizers.Adagrad())


def test_sweep_needs_validation_data(digits):
    pb = _playbook(digits, validation=False)
    with pytest.raises(ValueError, match="validation loss"):
        pb.sweep_momentum()


@pytest.mark.parametrize("values", [[0.9, 1.0], [], [0.9, 0.9], [-0.1]])
def test_sweep_bad_values(digits, values):
    pb = _playbook(digits)
    with pytest.raises(ValueError, match="values"):
        pb.sweep_momentum(values=values)
    assert len(pb.journal) == 1
