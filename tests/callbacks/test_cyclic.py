"""OneCycle, CosineRestarts, TwoStage, ScheduledLR and WarmUp on real training runs."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_playbook._session import read_value
from keras_playbook.callbacks import CosineRestarts, OneCycle, ScheduledLR, TwoStage, WarmUp
from tests import helpers

BATCH = 64  # 512 training digits: 8 steps per epoch.


class _Probe(keras.callbacks.Callback):
    """Reads the optimizer's rate and momentum before every step (after the schedule set them)."""

    def __init__(self, name=None):
        super().__init__()
        self.name = name
        self.rates, self.momenta = [], []

    def on_train_batch_begin(self, batch, logs=None):
        optimizer = self.model.optimizer
        self.rates.append(float(read_value(optimizer.learning_rate)))
        if self.name:
            self.momenta.append(float(read_value(getattr(optimizer, self.name))))


def _compiled(strategy, make_optimizer):
    """The MLP compiled with `make_optimizer()` (an optimizer binds to the strategy it is made in)."""
    with strategy.scope():
        model = helpers.mlp()
        model.compile(optimizer=make_optimizer(), loss=helpers.LOGITS_LOSS)
    return model


def _fit(model, digits, callbacks, epochs):
    return model.fit(
        digits["x_train"],
        digits["y_train"],
        epochs=epochs,
        batch_size=BATCH,
        callbacks=callbacks,
        shuffle=False,
        verbose=0,
    )


def _one_cycle_reference(t, total, low, high, m_low, m_high, cycle_fraction=0.9, final=0.01):
    """Smith's 1cycle written out step by step."""
    cycle = round(cycle_fraction * total)
    peak = cycle // 2
    if t < peak:
        return low + (high - low) * t / peak, m_high - (m_high - m_low) * t / peak
    if t < cycle:
        s = (t - peak) / (cycle - peak)
        return high - (high - low) * s, m_low + (m_high - m_low) * s
    return low - (low - low * final) * (t - cycle + 1) / (total - cycle), m_high


@pytest.mark.parametrize("optimizer_name", ["sgd", "adam"])
def test_one_cycle_follows_its_formulas_step_by_step(strategy, digits, optimizer_name):
    name = "momentum" if optimizer_name == "sgd" else "beta_1"
    model = _compiled(
        strategy,
        lambda: keras.optimizers.SGD(0.01, momentum=0.9) if optimizer_name == "sgd" else keras.optimizers.Adam(1e-3),
    )
    optimizer = model.optimizer
    probe = _Probe(name)
    history = _fit(model, digits, [OneCycle((0.01, 0.1)), probe], epochs=4)
    total = 4 * 8
    expected = np.array([_one_cycle_reference(t, total, 0.01, 0.1, 0.85, 0.95) for t in range(total)])
    np.testing.assert_allclose(probe.rates, expected[:, 0], rtol=1e-6)
    np.testing.assert_allclose(probe.momenta, expected[:, 1], rtol=1e-6)
    assert max(probe.rates) == pytest.approx(0.1) and probe.rates[-1] == pytest.approx(1e-4)  # Ends below the min.
    np.testing.assert_allclose(history.history["learning_rate"], expected[7::8, 0], rtol=1e-6)
    np.testing.assert_allclose(history.history[name], expected[7::8, 1], rtol=1e-6)
    # The user's momentum is back, and the optimizer's state did not grow.
    assert getattr(optimizer, name) == 0.9 and isinstance(getattr(optimizer, name), float)
    assert not [v.path for v in optimizer.variables if "one_cycle" in v.path]


@pytest.mark.parametrize("optimizer_name", ["sgd", "adam"])
def test_one_cycle_momentum_reaches_the_update(strategy, digits, optimizer_name):
    """Training with OneCycle equals training step by step with each step's values set as floats."""

    def make_optimizer():
        if optimizer_name == "sgd":
            return keras.optimizers.SGD(0.01, momentum=0.9)
        return keras.optimizers.Adam(1e-3)

    name = "momentum" if optimizer_name == "sgd" else "beta_1"
    x, y = digits["x_train"][:256], digits["y_train"][:256]
    keras.utils.set_random_seed(1)
    model = _compiled(strategy, make_optimizer)
    initial = model.get_weights()
    callback = OneCycle((0.02, 0.2), momentum_bounds=(0.5, 0.95))
    model.fit(x, y, epochs=2, batch_size=BATCH, callbacks=[callback], shuffle=False, verbose=0)

    def step_by_step(cycle_momentum):
        reference = _compiled(tf.distribute.get_strategy(), make_optimizer)
        reference.set_weights(initial)
        for step in range(8):
            batch = slice((step % 4) * BATCH, (step % 4 + 1) * BATCH)
            reference.optimizer.learning_rate = callback.learning_rate_at(step)
            if cycle_momentum:
                setattr(reference.optimizer, name, callback.momentum_at(step))
                reference.make_train_function(force=True)  # Retrace with this step's float.
            reference.train_on_batch(x[batch], y[batch])
        return np.concatenate([w.ravel() for w in reference.get_weights()])

    got = np.concatenate([w.ravel() for w in model.get_weights()])
    np.testing.assert_allclose(got, step_by_step(cycle_momentum=True), rtol=1e-4, atol=1e-5)
    # The same rates with the momentum held at the user's value end far away: the cycle is applied.
    assert np.max(np.abs(got - step_by_step(cycle_momentum=False))) > 1e-3


def test_one_cycle_saves_and_trains_again(tmp_path, digits):
    model = _compiled(tf.distribute.get_strategy(), lambda: keras.optimizers.SGD(0.01, momentum=0.9))
    optimizer = model.optimizer
    _fit(model, digits, [OneCycle((0.01, 0.1))], epochs=1)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.optimizer.momentum == pytest.approx(0.9)
    assert len(loaded.optimizer.variables) == len(optimizer.variables)
    probe = _Probe("momentum")
    _fit(model, digits, [probe], epochs=1)  # Plain training afterwards uses the user's momentum.
    assert probe.momenta == pytest.approx([0.9] * 8)


def test_one_cycle_bad_arguments_and_optimizers(digits):
    for arguments, match in (
        ({"lr_bounds": (0.1, 0.01)}, "lower < upper"),
        ({"lr_bounds": (0.1, 0.1)}, "lower < upper"),
        ({"lr_bounds": (-1.0, 0.1)}, "`lr_bounds` must be a finite number > 0"),
        ({"lr_bounds": 0.1}, "\\(lower, upper\\)"),
        ({"lr_bounds": (0.01, 0.1), "momentum_bounds": (0.95, 0.85)}, "lower <= upper"),
        ({"lr_bounds": (0.01, 0.1), "momentum_bounds": (0.85, 1.2)}, "`momentum_bounds`"),
        ({"lr_bounds": (0.01, 0.1), "cycle_fraction": 0}, "`cycle_fraction`"),
        ({"lr_bounds": (0.01, 0.1), "anneal": "exp"}, "`anneal`"),
        ({"lr_bounds": (0.01, 0.1), "total_steps": 1}, "`total_steps`"),
    ):
        with pytest.raises(ValueError, match=match):
            OneCycle(**arguments)
    for make_optimizer, match in (
        (lambda: keras.optimizers.SGD(0.01), "momentum=0"),
        (lambda: keras.optimizers.RMSprop(0.01), "has neither"),
        (
            lambda: keras.optimizers.SGD(keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5), momentum=0.9),
            "LearningRateSchedule",
        ),
    ):
        model = _compiled(tf.distribute.get_strategy(), make_optimizer)
        before = helpers.variables_of(model)
        with pytest.raises(ValueError, match=match):
            _fit(model, digits, [OneCycle((0.01, 0.1))], epochs=1)
        helpers.assert_same_values(before, helpers.variables_of(model))  # No step was taken.
    probe = _Probe()  # momentum_bounds=None cycles only the rate, on any optimizer.
    _fit(
        _compiled(tf.distribute.get_strategy(), lambda: keras.optimizers.RMSprop(0.01)),
        digits,
        [OneCycle((0.01, 0.1), momentum_bounds=None, anneal="cos"), probe],
        epochs=1,
    )
    assert max(probe.rates) == pytest.approx(0.1, rel=0.05)


def test_cosine_restarts_follow_sgdr_with_a_warm_up(strategy, digits):
    probe = _Probe()
    callback = CosineRestarts(max_lr=0.1, cycle_epochs=1, t_mul=2.0, m_mul=0.5, min_lr=0.001, warmup_epochs=1)
    history = _fit(_compiled(strategy, lambda: keras.optimizers.SGD(0.5)), digits, [callback, probe], epochs=5)
    expected = [0.1 * t / 8 for t in range(8)]  # Warm-up from 0 over one epoch.
    for length, height in ((8, 1.0), (16, 0.5), (32, 0.25)):  # Cycles double in length, their height halves.
        for t in range(length):
            expected.append(0.001 + (0.1 - 0.001) * height * (1 + math.cos(math.pi * t / length)) / 2)
    np.testing.assert_allclose(probe.rates, expected[:40], rtol=1e-5)
    assert history.history["learning_rate"] == pytest.approx(probe.rates[7::8])
    assert isinstance(callback.schedule, keras.optimizers.schedules.CosineDecayRestarts)


def test_two_stage_defaults_come_from_the_optimizer(strategy, digits):
    probe = _Probe()
    callback = TwoStage()
    _fit(_compiled(strategy, lambda: keras.optimizers.SGD(0.05)), digits, [callback, probe], epochs=4)
    np.testing.assert_allclose(probe.rates, [0.05] * 16 + [0.005] * 16, rtol=1e-6)
    probe = _Probe()
    _fit(callback.model, digits, [callback, probe], epochs=2)  # Again: from 0.05, not from where it ended.
    np.testing.assert_allclose(probe.rates, [0.05] * 8 + [0.005] * 8, rtol=1e-6)


def test_scheduled_lr_takes_any_schedule_or_function(digits):
    probe = _Probe()
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=4, decay_rate=0.5)
    _fit(
        _compiled(tf.distribute.get_strategy(), lambda: keras.optimizers.SGD(1.0)),
        digits,
        [ScheduledLR(schedule, warmup_steps=2), probe],
        epochs=1,
    )
    np.testing.assert_allclose(probe.rates, [0.0, 0.05] + [0.1 * 0.5 ** (t / 4) for t in range(6)], rtol=1e-5)
    probe = _Probe()
    _fit(
        _compiled(tf.distribute.get_strategy(), lambda: keras.optimizers.SGD(1.0)),
        digits,
        [ScheduledLR(lambda step: 0.1 if step < 3 else 0.01), probe],
        epochs=1,
    )
    np.testing.assert_allclose(probe.rates, [0.1] * 3 + [0.01] * 5, rtol=1e-6)


def test_warm_up_schedule_saves_with_the_optimizer(tmp_path, digits):
    schedule = WarmUp(
        keras.optimizers.schedules.CosineDecayRestarts(0.1, 8), warmup_steps=4, initial_learning_rate=0.01
    )
    again = WarmUp.from_config(schedule.get_config())
    steps = np.arange(20)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(again(steps)), keras.ops.convert_to_numpy(schedule(steps)))
    model = _compiled(tf.distribute.get_strategy(), lambda: keras.optimizers.SGD(schedule, momentum=0.9))
    _fit(model, digits, [], epochs=1)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert isinstance(loaded.optimizer._learning_rate, WarmUp)
    assert float(read_value(loaded.optimizer.learning_rate)) == pytest.approx(
        float(read_value(model.optimizer.learning_rate))
    )


def test_configs_round_trip_and_bad_arguments():
    for callback in (
        OneCycle((0.01, 0.1), momentum_bounds=None, total_steps=100, anneal="cos"),
        CosineRestarts(max_lr=0.1, cycle_epochs=3, warmup_epochs=1),
        TwoStage(high_lr=0.1, low_lr=0.02, switch_epoch=5),
        ScheduledLR(keras.optimizers.schedules.PiecewiseConstantDecay([10], [0.1, 0.01]), warmup_steps=5),
    ):
        again = (
            type(callback).from_config(callback.get_config())
            if hasattr(type(callback), "from_config")
            else type(callback)(**callback.get_config())
        )
        assert again.get_config() == callback.get_config()
    for make, match in (
        (lambda: CosineRestarts(max_lr=0.1, min_lr=0.2), "`min_lr` must be below"),
        (lambda: CosineRestarts(cycle_epochs=0), "`cycle_epochs`"),
        (lambda: CosineRestarts(t_mul=0), "`t_mul`"),
        (lambda: TwoStage(high_lr=0.01, low_lr=0.1), "`low_lr` must be below"),
        (lambda: TwoStage(warmup_epochs=-1), "`warmup_epochs`"),
        (lambda: ScheduledLR(0.1), "`schedule`"),
        (lambda: WarmUp(0.1, warmup_steps=0), "`warmup_steps`"),
    ):
        with pytest.raises(ValueError, match=match):
            make()


def test_one_cycle_momentum_is_mirrored_under_two_replicas(mirrored_strategy, digits):
    seen = []

    class _Kind(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if not seen:
                seen.append(type(self.model.optimizer.momentum.value).__name__)

    _fit(
        _compiled(mirrored_strategy, lambda: keras.optimizers.SGD(0.01, momentum=0.9)),
        digits,
        [OneCycle((0.01, 0.1)), _Kind()],
        epochs=1,
    )
    assert seen == ["MirroredVariable"]


class _CtrlC(keras.callbacks.Callback):
    """Ctrl-C before the third step."""

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 2:
            raise KeyboardInterrupt


def _momentum_is_the_users(model, expected=0.9):
    import json

    assert isinstance(model.optimizer.momentum, float) and model.optimizer.momentum == pytest.approx(expected)
    json.dumps(model.optimizer.get_config())


def test_an_interrupted_one_cycle_is_healed(tmp_path, strategy, digits):
    from keras_playbook import Playbook
    from keras_playbook.callbacks import restore_momentum

    model = _compiled(strategy, lambda: keras.optimizers.SGD(0.01, momentum=0.9))
    cycle = OneCycle((0.01, 0.1))
    with pytest.raises(KeyboardInterrupt):  # A bare callback: Keras calls no on_train_end.
        _fit(model, digits, [cycle, _CtrlC()], epochs=1)
    assert not isinstance(model.optimizer.momentum, float)  # What the interruption leaves behind.
    assert cycle.restore() and not cycle.restore()  # The documented way back; safe twice.
    _momentum_is_the_users(model)
    probe = _Probe("momentum")
    _fit(model, digits, [probe], epochs=1)
    assert probe.momenta == pytest.approx([0.9] * 8)

    with pytest.raises(KeyboardInterrupt):
        _fit(model, digits, [OneCycle((0.01, 0.1)), _CtrlC()], epochs=1)
    assert restore_momentum(model)  # Without the callback object.
    _momentum_is_the_users(model)
    model.save(tmp_path / "model.keras")
    assert keras.models.load_model(tmp_path / "model.keras").optimizer.momentum == pytest.approx(0.9)

    # Inside the Playbook: restored on the way out of fit, and healed before any stage.
    pb = Playbook(model, (digits["x_train"], digits["y_train"]), batch_size=BATCH, strategy=strategy, verbose=0)
    with pytest.raises(KeyboardInterrupt):
        pb.fit(1, schedule=OneCycle((0.01, 0.1)), callbacks=[_CtrlC()], watch=False, verbose=0)
    _momentum_is_the_users(pb.model)
    with pytest.raises(KeyboardInterrupt):
        _fit(pb.model, digits, [OneCycle((0.01, 0.1)), _CtrlC()], epochs=1)
    probe = _Probe("momentum")
    pb.fit(1, callbacks=[probe], watch=False, verbose=0)
    assert probe.momenta and probe.momenta == pytest.approx([0.9] * len(probe.momenta))
    _momentum_is_the_users(pb.model)
