"""The short-run toolkit: one way to copy the model, one rule for weight decay off."""

import keras
import numpy as np
import pytest

from keras_playbook import Playbook
from keras_playbook import _short_runs as short_runs
from keras_playbook._session import read_value
from tests import helpers


def _playbook(digits, optimizer=None, strategy=None, **model_options):
    model = helpers.mlp(**model_options)
    model.compile(optimizer=optimizer or keras.optimizers.SGD(0.05, momentum=0.9), loss=helpers.LOGITS_LOSS)
    return Playbook(model, (digits["x_train"], digits["y_train"]), batch_size=32, strategy=strategy, verbose=0)


def test_a_copy_never_touches_the_model(strategy, digits):
    pb = _playbook(digits, strategy=strategy, dropout=0.5, l2=1e-3)
    pb.model.fit(digits["x_train"][:64], digits["y_train"][:64], epochs=1, verbose=0)  # Optimizer state to keep.
    before = helpers.variables_of(pb.model)
    copy = short_runs.working_copy(pb.session, regularization=False, learning_rate=0.5, momentum=0.0)
    short_runs.train_steps(copy, short_runs.fixed_order(pb.train_data, seed=0), num_steps=3)
    helpers.assert_same_values(before, helpers.variables_of(pb.model))
    assert pb.model.layers[1].rate == 0.5 and pb.model.layers[0].kernel.regularizer is not None
    assert read_value(pb.model.optimizer.learning_rate) == pytest.approx(0.05) and pb.model.optimizer.momentum == 0.9
    assert copy.layers[1].rate == 0.0 and copy.layers[0].kernel.regularizer is None
    assert read_value(copy.optimizer.learning_rate) == pytest.approx(0.5) and copy.optimizer.momentum == 0.0


def test_a_copy_starts_where_asked(digits):
    pb = _playbook(digits)
    initial = pb.session.initial_weights
    pb.model.fit(digits["x_train"][:64], digits["y_train"][:64], epochs=1, verbose=0)
    current = pb.model.get_weights()
    helpers.assert_same_values(current, short_runs.working_copy(pb.session).get_weights())
    helpers.assert_same_values(initial, short_runs.working_copy(pb.session, weights=short_runs.INITIAL).get_weights())
    fresh = short_runs.working_copy(pb.session, weights=short_runs.FRESH).get_weights()
    assert not np.array_equal(fresh[0], initial[0]) and not np.array_equal(fresh[0], current[0])
    with pytest.raises(ValueError, match="`weights` must be"):
        short_runs.working_copy(pb.session, weights="latest")


@pytest.mark.parametrize(
    "optimizer, off",
    [
        (keras.optimizers.SGD(0.1), None),
        (keras.optimizers.SGD(0.1, weight_decay=1e-4), 0.0),
        (keras.optimizers.AdamW(1e-3), 0.0),  # AdamW refuses None.
    ],
)
def test_weight_decay_off_is_one_rule(digits, optimizer, off):
    pb = _playbook(digits, optimizer=optimizer)
    assert short_runs.weight_decay_off(pb.session) == off
    for regularization, changes in ((True, {"weight_decay": 0}), (True, {"weight_decay": None}), (False, {})):
        copy = short_runs.working_copy(pb.session, regularization=regularization, **changes)
        assert copy.optimizer.weight_decay == off
    assert ("optimizer weight_decay" in short_runs.regularization_in(pb.session)) == (off == 0.0)


def test_regularization_in_reads_without_changing(digits):
    pb = _playbook(digits, dropout=0.3, l2=1e-3)
    found = short_runs.regularization_in(pb.session)
    assert [item.split(":")[0] for item in found] == ["dropout", "regularizer"]
    assert found[0].endswith("(rate 0.3)") and found[1].endswith("/kernel")
    assert pb.model.layers[1].rate == 0.3 and pb.model.layers[0].kernel.regularizer is not None


def test_a_fixed_sample_is_the_same_every_time(digits):
    pb = _playbook(digits)
    train = pb.train_data
    first, second = (
        np.concatenate([x for x, _ in short_runs.fixed_sample(train, 2, seed=3).as_numpy_iterator()]) for _ in range(2)
    )
    assert first.shape == (64, 64)
    np.testing.assert_array_equal(first, second)
    other = np.concatenate([x for x, _ in short_runs.fixed_sample(train, 2, seed=4).as_numpy_iterator()])
    assert not np.array_equal(first, other)


def test_a_copy_starts_from_the_optimizer_as_compiled_not_as_a_run_left_it(digits):
    pb = _playbook(digits)  # SGD(0.05, momentum=0.9), no weight decay.
    pb.fit(epochs=1, learning_rate=0.5, momentum=0.5, weight_decay=0.01, verbose=0)
    live = pb.model.optimizer  # As the run left it.
    assert read_value(live.learning_rate) == pytest.approx(0.5) and live.momentum == 0.5
    assert live.weight_decay == pytest.approx(0.01)
    copy = short_runs.working_copy(pb.session)
    assert read_value(copy.optimizer.learning_rate) == pytest.approx(0.05)
    assert copy.optimizer.momentum == 0.9 and copy.optimizer.weight_decay is None
    assert short_runs.weight_decay_off(pb.session) is None
    assert "optimizer weight_decay" not in short_runs.regularization_in(pb.session)


def test_overfit_falls_back_on_the_compiled_rate_not_the_live_one(digits):
    # A dead hidden layer (zero kernel, ReLU): only the last bias learns, the loss cannot fall 5%, and the
    # range test on the sample finds no rate.
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(16, activation="relu", kernel_initializer="zeros"),
            keras.layers.Dense(10),
        ]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=helpers.LOGITS_LOSS)
    pb = Playbook(model, (digits["x_train"], digits["y_train"]), batch_size=32, verbose=0)
    pb.fit(epochs=1, learning_rate=0.5, verbose=0)  # Leaves the live rate at 0.5; it settles nothing.
    result = pb.overfit_small_sample(max_steps=20)
    assert result.learning_rate_source == "optimizer"
    assert result.learning_rate == pytest.approx(0.05)
    assert "as compiled" in result.message
