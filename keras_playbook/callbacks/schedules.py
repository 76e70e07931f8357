"""Learning-rate schedules sized in epochs, as Keras callbacks.

`CosineRestarts` and `TwoStage` (Loshchilov & Hutter 2017: cosine annealing with restarts is
the state of the art; a high rate then a low one also works) are Keras's own
`CosineDecayRestarts` and `PiecewiseConstantDecay` in callback form, sized in
epochs, with an optional linear warm-up (`WarmUp`, a schedule an optimizer can
also take directly). `ScheduledLR` drives any `LearningRateSchedule` this way.
`StepDownLR` (`step_down.py`) and `OneCycle` (`one_cycle.py`) live beside them.

All of them set the rate through the optimizer's `learning_rate` variable
before every step (nothing is retraced; works under `tf.distribute`) and
write it to the logs at every epoch end as `learning_rate`.

References:
    Loshchilov & Hutter 2017, "SGDR", arXiv:1608.03983.
    Goyal et al. 2017, arXiv:1706.02677 (warm-up).
"""

import keras
import numpy as np

from keras_playbook import _validation as validation
from keras_playbook._session import innermost_optimizer, read_value
from keras_playbook.callbacks._config import ConfigurableCallback


def _require_float_learning_rate(optimizer, callback):
    optimizer = innermost_optimizer(optimizer)
    if isinstance(getattr(optimizer, "_learning_rate", None), keras.optimizers.schedules.LearningRateSchedule):
        raise ValueError(
            f"{callback} sets the learning rate itself, but {type(optimizer).__name__} follows a "
            "LearningRateSchedule. Compile with a float learning rate (or use the schedule alone)."
        )


_CHUNK = 1024  # Steps of a schedule evaluated at once (one vectorized call).


def _learning_rate_variable(optimizer):
    """The variable behind `optimizer.learning_rate` (inside a wrapper such as LossScaleOptimizer)."""
    return innermost_optimizer(optimizer)._learning_rate


def _assign(variable, value):
    """`variable.assign(value)` without reading the value back: half the cost, paid before every step."""
    getattr(variable, "value", variable).assign(value, read_value=False)


def _evaluate(schedule, start, stop):
    """`schedule(step)` for steps start..stop-1, in one call when the schedule takes an array."""
    steps = np.arange(start, stop)
    try:
        values = np.asarray(keras.ops.convert_to_numpy(schedule(steps)), dtype="float64")
        if values.shape == steps.shape:
            return values
    except Exception:  # A schedule written for one step at a time (Python `if` on the step).
        pass
    return np.asarray([float(keras.ops.convert_to_numpy(schedule(int(step)))) for step in steps])


class _PerStepSchedule(ConfigurableCallback):
    """Sets the learning rate before every training step from `_rates(start, stop)`.

    Subclasses define `_start()` (called when training starts, with the model
    and `self.params` known) and `_rates(start, stop)` (the rates of steps
    start..stop-1 as a NumPy array). Steps count from 0 at the start of each
    `fit`; a `fit` that starts at epoch k (`initial_epoch=k`, or resumed by
    `BackupAndRestore`) starts at step k x steps per epoch, where an
    uninterrupted one would be. With `steps_per_execution > 1` the rate is
    set once per execution.
    """

    def __init__(self):
        super().__init__()
        self._epoch_start = 0
        self._seen = 0
        self._first_epoch = None
        self._last = None
        self._cache_start = 0
        self._cache = np.empty(0)

    def _steps_per_epoch(self, what):
        steps = (self.params or {}).get("steps")
        if not steps:
            raise ValueError(
                f"{type(self).__name__}: {what} needs the number of steps per epoch, which Keras does "
                "not know for this data. Pass `steps_per_epoch` to `model.fit`."
            )
        return int(steps)

    def _start(self):
        pass

    def _rates(self, start, stop):
        raise NotImplementedError

    def learning_rate_at(self, step):
        """The learning rate of the 0-based training step `step` (once training has started)."""
        return float(self._rates(step, step + 1)[0])

    def _rate(self, step):
        index = step - self._cache_start
        if not 0 <= index < len(self._cache):
            self._cache_start, self._cache, index = step, self._rates(step, step + _CHUNK), 0
        return float(self._cache[index])

    def on_train_begin(self, logs=None):
        _require_float_learning_rate(self.model.optimizer, type(self).__name__)
        self._epoch_start = self._seen = 0
        self._first_epoch = None
        self._last = None
        self._cache_start, self._cache = 0, np.empty(0)
        self._start()

    def on_epoch_begin(self, epoch, logs=None):
        if self._first_epoch is None:
            # A fit that starts at a later epoch (resumed by BackupAndRestore, or `initial_epoch=`) goes on
            # where the schedule was: its first step is `epoch` epochs of steps in.
            self._first_epoch = epoch
            if epoch:
                self._seen = epoch * self._steps_per_epoch(f"starting at epoch {epoch + 1}")
        self._epoch_start = self._seen

    def on_train_batch_begin(self, batch, logs=None):
        rate = self._rate(self._epoch_start + batch)
        if rate != self._last:
            _assign(_learning_rate_variable(self.model.optimizer), rate)
            self._last = rate

    def on_train_batch_end(self, batch, logs=None):
        self._seen = self._epoch_start + batch + 1

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self._last is not None:
            logs["learning_rate"] = self._last  # The rate of the epoch's last step.


@keras.saving.register_keras_serializable(package="keras_playbook")
class WarmUp(keras.optimizers.schedules.LearningRateSchedule):
    """A linear warm-up in front of another schedule.

    For the first `warmup_steps` steps the rate rises linearly from
    `initial_learning_rate` to the schedule's first rate; then the schedule
    runs as if it started there (its step 0 is step `warmup_steps`). Keras's
    `CosineDecay` has a warm-up of its own; this adds one to any schedule
    (`CosineDecayRestarts`, `PiecewiseConstantDecay`, ...) or a constant rate.

    Args:
        schedule: A `LearningRateSchedule`, or a float (a constant rate).
        warmup_steps: Steps of the warm-up (>= 1).
        initial_learning_rate: Rate at step 0.

    Example:

    ```python
    schedule = WarmUp(keras.optimizers.schedules.CosineDecayRestarts(0.1, 1000), warmup_steps=500)
    optimizer = keras.optimizers.SGD(schedule, momentum=0.9)
    ```
    """

    def __init__(self, schedule, warmup_steps, initial_learning_rate=0.0):
        if not isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            validation.check_number(schedule, "schedule")
            schedule = float(schedule)
        validation.check_int(warmup_steps, "warmup_steps")
        validation.check_number(initial_learning_rate, "initial_learning_rate", within=">= 0")
        self.schedule = schedule
        self.warmup_steps = warmup_steps
        self.initial_learning_rate = float(initial_learning_rate)

    def _after(self, step):
        if isinstance(self.schedule, float):
            return keras.ops.full_like(step, self.schedule)
        return keras.ops.cast(self.schedule(step), "float32")

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        target = self._after(keras.ops.zeros_like(step))
        ramp = self.initial_learning_rate + (target - self.initial_learning_rate) * (step / self.warmup_steps)
        return keras.ops.where(
            step < self.warmup_steps, ramp, self._after(keras.ops.maximum(step - self.warmup_steps, 0.0))
        )

    def get_config(self):
        schedule = self.schedule
        if not isinstance(schedule, float):
            schedule = keras.optimizers.schedules.serialize(schedule)
        return {
            "schedule": schedule,
            "warmup_steps": self.warmup_steps,
            "initial_learning_rate": self.initial_learning_rate,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config["schedule"], dict):
            config["schedule"] = keras.optimizers.schedules.deserialize(config["schedule"])
        return cls(**config)


class ScheduledLR(_PerStepSchedule):
    """Follows a Keras `LearningRateSchedule` (or any step -> rate function) from a callback.

    Unlike compiling the optimizer with the schedule, the optimizer keeps a
    plain learning-rate variable, so the rate is logged every epoch
    (`learning_rate`), other callbacks and the Playbook can read it, and the
    schedule can be swapped between `fit` calls. Steps count from 0 at the
    start of each `fit`. The schedule is evaluated 1024 steps at a time (one
    vectorized call) where it accepts an array of steps.

    Args:
        schedule: A `keras.optimizers.schedules.LearningRateSchedule`, or a
            function of the step returning the rate.
        warmup_steps: Linear warm-up steps from 0 in front of it (`WarmUp`).

    Example:

    ```python
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=100, decay_rate=0.5)
    model.fit(x, y, epochs=10, callbacks=[ScheduledLR(schedule, warmup_steps=50)])
    ```
    """

    def __init__(self, schedule, warmup_steps=0):
        super().__init__()
        if not callable(schedule):
            raise ValueError(
                "Argument `schedule` must be a keras.optimizers.schedules.LearningRateSchedule or a "
                f"function of the step. Received: schedule={schedule!r}."
            )
        validation.check_int(warmup_steps, "warmup_steps", minimum=0)
        if warmup_steps and not isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            raise ValueError(
                "A warm-up needs a keras.optimizers.schedules.LearningRateSchedule; wrap your function in one."
            )
        self.schedule = schedule
        self.warmup_steps = warmup_steps
        self._active = None

    def _build(self):
        return self.schedule, self.warmup_steps

    def _start(self):
        schedule, warmup_steps = self._build()
        self._active = WarmUp(schedule, warmup_steps) if warmup_steps else schedule

    def _rates(self, start, stop):
        return _evaluate(self._active, start, stop)

    def get_config(self):
        schedule = self.schedule
        if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            schedule = keras.optimizers.schedules.serialize(schedule)
        return {"schedule": schedule, "warmup_steps": self.warmup_steps}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config["schedule"], dict):
            config["schedule"] = keras.optimizers.schedules.deserialize(config["schedule"])
        return cls(**config)


class _EpochSizedSchedule(ScheduledLR):
    """A Keras schedule sized in epochs, built when training starts."""

    def __init__(self, warmup_epochs):
        validation.check_number(warmup_epochs, "warmup_epochs", within=">= 0", hint="a number of epochs")
        _PerStepSchedule.__init__(self)  # ScheduledLR's checks are for a schedule given up front.
        self.warmup_epochs = warmup_epochs
        self.schedule = None  # The Keras schedule, once training has started.
        self.warmup_steps = 0
        self._active = None
        self._found_rate = None

    def _base_rate(self, given):
        """`given`, or the optimizer's rate when this callback first started training.

        Kept for later `fit` calls, which would otherwise start from the
        small rate the previous schedule ended at.
        """
        if given is not None:
            return given
        if self._found_rate is None:
            self._found_rate = float(read_value(self.model.optimizer.learning_rate))
        return self._found_rate

    def _keras_schedule(self, steps_per_epoch):
        raise NotImplementedError

    def _build(self):
        steps = self._steps_per_epoch(f"{type(self).__name__} (sized in epochs)")
        self.schedule = self._keras_schedule(steps)
        self.warmup_steps = round(self.warmup_epochs * steps)
        return self.schedule, self.warmup_steps

    @classmethod
    def from_config(cls, config):
        return cls(**config)  # Plain arguments: the Keras schedule is built when training starts.

    def _run_epochs(self):
        return max(float(self.params["epochs"]) - self.warmup_epochs, 1.0)


class CosineRestarts(_EpochSizedSchedule):
    """Cosine annealing with warm restarts (SGDR), in epochs, with an optional warm-up (Loshchilov & Hutter 2017).

    Keras's `CosineDecayRestarts` sized in epochs when training starts: the
    rate falls from `max_lr` to `min_lr` along a cosine over `cycle_epochs`,
    jumps back up, and each next cycle is `t_mul` times longer and rises
    `m_mul` times as high above `min_lr`. With `warmup_epochs`, a linear warm-up from 0 comes
    first (`WarmUp`). Loshchilov & Hutter 2017: cyclic cosine schedules are the state of the
    art; an adaptive optimizer (Adam) may need no decay at all.

    Args:
        max_lr: Rate at the start of each cycle; default: the optimizer's
            learning rate when this callback first starts training (e.g. the
            one `find_lr` settled, applied by `Playbook.fit`).
        cycle_epochs: Length of the first cycle in epochs; default: the whole
            run after the warm-up (one cosine annealing, no restart).
        t_mul: Each cycle's length relative to the previous one.
        m_mul: Each cycle's starting rate relative to the previous one.
        min_lr: Rate at the end of each cycle.
        warmup_epochs: Epochs of linear warm-up first (0: none).

    Attributes:
        schedule: The Keras `CosineDecayRestarts`, once training has started.

    Example:

    ```python
    model.fit(x, y, epochs=30, callbacks=[CosineRestarts(max_lr=0.1, cycle_epochs=5, warmup_epochs=1)])
    ```
    """

    def __init__(self, max_lr=None, cycle_epochs=None, t_mul=2.0, m_mul=1.0, min_lr=0.0, warmup_epochs=0):
        super().__init__(warmup_epochs)
        if max_lr is not None:
            validation.check_number(max_lr, "max_lr")
        validation.check_number(cycle_epochs, "cycle_epochs", allow_none=True, hint="a number of epochs")
        validation.check_number(t_mul, "t_mul")
        validation.check_number(m_mul, "m_mul")
        validation.check_number(min_lr, "min_lr", within=">= 0")
        if max_lr is not None and not min_lr < max_lr:
            raise ValueError(
                f"Argument `min_lr` must be below `max_lr`. Received: min_lr={min_lr!r}, max_lr={max_lr!r}."
            )
        self.max_lr = max_lr
        self.cycle_epochs = cycle_epochs
        self.t_mul = float(t_mul)
        self.m_mul = float(m_mul)
        self.min_lr = float(min_lr)

    def _keras_schedule(self, steps_per_epoch):
        max_lr = self._base_rate(self.max_lr)
        if not self.min_lr < max_lr:
            raise ValueError(f"CosineRestarts: min_lr={self.min_lr!r} is not below the learning rate {max_lr!r}.")
        cycle = self.cycle_epochs if self.cycle_epochs is not None else self._run_epochs()
        return keras.optimizers.schedules.CosineDecayRestarts(
            initial_learning_rate=max_lr,
            first_decay_steps=max(1, round(cycle * steps_per_epoch)),
            t_mul=self.t_mul,
            m_mul=self.m_mul,
            alpha=self.min_lr / max_lr,
        )

    def get_config(self):
        return {
            "max_lr": self.max_lr,
            "cycle_epochs": self.cycle_epochs,
            "t_mul": self.t_mul,
            "m_mul": self.m_mul,
            "min_lr": self.min_lr,
            "warmup_epochs": self.warmup_epochs,
        }


class TwoStage(_EpochSizedSchedule):
    """A high learning rate, then a low one (He et al. 2016), with an optional warm-up.

    Keras's `PiecewiseConstantDecay` sized in epochs: `high_lr` for the first
    `switch_epoch` epochs (after the warm-up), `low_lr` after.

    Args:
        high_lr: The first rate; default: the optimizer's learning rate when
            this callback first starts training.
        low_lr: The second rate; default: `high_lr / 10` (Krizhevsky et al. 2012: step
            down by a factor of 10).
        switch_epoch: Epochs at `high_lr`; default: half the run after the
            warm-up.
        warmup_epochs: Epochs of linear warm-up first (0: none).

    Attributes:
        schedule: The Keras `PiecewiseConstantDecay`, once training has started.

    Example:

    ```python
    model.fit(x, y, epochs=20, callbacks=[TwoStage(high_lr=0.1, switch_epoch=15)])
    ```
    """

    def __init__(self, high_lr=None, low_lr=None, switch_epoch=None, warmup_epochs=0):
        super().__init__(warmup_epochs)
        for name, value in (("high_lr", high_lr), ("low_lr", low_lr)):
            if value is not None:
                validation.check_number(value, name)
        if high_lr is not None and low_lr is not None and not low_lr < high_lr:
            raise ValueError(
                f"Argument `low_lr` must be below `high_lr`. Received: low_lr={low_lr!r}, high_lr={high_lr!r}."
            )
        validation.check_number(switch_epoch, "switch_epoch", allow_none=True, hint="a number of epochs")
        self.high_lr = high_lr
        self.low_lr = low_lr
        self.switch_epoch = switch_epoch

    def _keras_schedule(self, steps_per_epoch):
        high = self._base_rate(self.high_lr)
        low = self.low_lr if self.low_lr is not None else high / 10
        if not low < high:
            raise ValueError(f"TwoStage: low_lr={low!r} is not below the learning rate {high!r}.")
        switch = self.switch_epoch if self.switch_epoch is not None else self._run_epochs() / 2
        # PiecewiseConstantDecay keeps the first value while step <= boundary.
        return keras.optimizers.schedules.PiecewiseConstantDecay(
            boundaries=[max(0, round(switch * steps_per_epoch) - 1)], values=[high, low]
        )

    def get_config(self):
        return {
            "high_lr": self.high_lr,
            "low_lr": self.low_lr,
            "switch_epoch": self.switch_epoch,
            "warmup_epochs": self.warmup_epochs,
        }
