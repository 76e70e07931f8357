"""Learning-rate schedules as Keras callbacks.

`StepDownLR` is the step-down schedule of Krizhevsky et al. 2012: hold the learning rate as long
as learning progresses, then divide it (by 10, or 8) when the monitored loss
stops improving or turns unstable. Unlike exponential decay it does not lower
the rate while the rate still works, and unlike Keras's `ReduceLROnPlateau`
it also reacts at once to a spike or a NaN, says why it stepped down, and can
step down at fixed milestones.

`OneCycle` is Smith's 1cycle (Smith & Topin 2019): the rate climbs from the lower to
the upper bound found by the range test and back, then anneals far below the
lower bound, while the momentum (or Adam's `beta_1`) cycles the other way.

`CosineRestarts` and `TwoStage` (Loshchilov & Hutter 2017: cosine annealing with restarts is
the state of the art; a high rate then a low one also works) are Keras's own
`CosineDecayRestarts` and `PiecewiseConstantDecay` in callback form, sized in
epochs, with an optional linear warm-up (`WarmUp`, a schedule an optimizer can
also take directly). `ScheduledLR` drives any `LearningRateSchedule` this way.

All of them set the rate through the optimizer's `learning_rate` variable
before every step (nothing is retraced; works under `tf.distribute`) and
write it to the logs at every epoch end as `learning_rate`.

References:
    Krizhevsky, Sutskever & Hinton 2012, "ImageNet Classification with Deep
    Convolutional Neural Networks" (divide the rate by 10 when the
    validation error stops improving); He et al. 2016, arXiv:1512.03385.
    Smith & Topin 2019, "Super-Convergence", arXiv:1708.07120 (one cycle);
    Smith 2018, arXiv:1803.09820 (its bounds).
    Loshchilov & Hutter 2017, "SGDR", arXiv:1608.03983.
    Goyal et al. 2017, arXiv:1706.02677 (warm-up).
"""

import math

import keras
import numpy as np

from keras_playbook import _validation as validation
from keras_playbook._session import innermost_optimizer, optimizer_scope, read_value
from keras_playbook.callbacks._config import ConfigurableCallback

_MAX_NAMES = ("acc", "accuracy", "auc", "precision", "recall")
DEFAULT_MIN_LR_FRACTION = 1e-3  # StepDownLR's floor: at most three steps of 1/10 from the first rate.


def _require_float_learning_rate(optimizer, callback):
    optimizer = innermost_optimizer(optimizer)
    if isinstance(getattr(optimizer, "_learning_rate", None), keras.optimizers.schedules.LearningRateSchedule):
        raise ValueError(
            f"{callback} sets the learning rate itself, but {type(optimizer).__name__} follows a "
            "LearningRateSchedule. Compile with a float learning rate (or use the schedule alone)."
        )


def _direction(monitor):
    name = monitor[4:] if monitor.startswith("val_") else monitor
    return "max" if any(name == key or name.endswith("_" + key) for key in _MAX_NAMES) else "min"


class StepDownLR(ConfigurableCallback):
    """Holds the learning rate while learning progresses; steps it down when it stops (Krizhevsky et al. 2012).

    At the end of each epoch the learning rate is multiplied by `factor`
    (1/10 by default; Krizhevsky et al. 2012 divide by 10; 8 works too) when:
    - the monitored value has not improved by more than `min_delta`
      (relative) for `patience` epochs: a plateau, a rising validation loss
      or an oscillation, named as such;
    - it jumps more than `spike_tolerance` (relative) past its best: the
      rate has turned unstable, so it steps down at once;
    - it is NaN or infinite (diverged);
    - the epoch is one of `milestones` (1-based epoch numbers).
    After a step down it waits `cooldown` epochs before counting again, and
    it never goes below `min_lr`: by default a thousandth of the rate it
    first trained at, i.e. at most three steps of 1/10 (Krizhevsky et al.
    divided their rate by 10 three times in all; He et al. twice). Past
    that, a smaller rate only stalls training. The rate is set through the optimizer's
    `learning_rate` variable (no retracing; works under `tf.distribute`), and
    every epoch's rate is written to the logs as `learning_rate`, so History
    and TensorBoard show it.

    Args:
        monitor: Quantity to watch, e.g. "val_loss" (default), "loss",
            "val_accuracy" (direction inferred from the name).
        factor: Multiplier of the learning rate, in (0, 1).
        patience: Epochs without improvement before stepping down.
        min_delta: Relative improvement that counts as progress.
        cooldown: Epochs to wait after a step down before counting again.
        min_lr: Lower bound of the learning rate; None (default): the
            first rate this callback trained at x 1e-3.
        spike_tolerance: Relative worsening past the best that counts as
            unstable (None: never step down on a spike).
        milestones: 1-based epochs after which to step down regardless.
        verbose: 1 prints each step down and its reason.

    Attributes:
        step_downs: One dict per step down: `epoch` (1-based), `from`, `to`,
            `reason`.

    Raises:
        ValueError: for a factor outside (0, 1), a negative `min_lr`, a
            `patience` < 1, bad milestones, at construction; for a `monitor`
            the logs do not hold, at the end of the first epoch (before any
            change).

    Example:

    ```python
    model.fit(x, y, validation_data=(x_val, y_val), epochs=60,
              callbacks=[StepDownLR(factor=1/8, patience=4)])
    ```
    """

    def __init__(
        self,
        monitor="val_loss",
        factor=0.1,
        patience=3,
        min_delta=1e-3,
        cooldown=0,
        min_lr=None,
        spike_tolerance=0.5,
        milestones=None,
        verbose=0,
    ):
        super().__init__()
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(
                f"Argument `monitor` must be a metric name such as 'val_loss'. Received: monitor={monitor!r}."
            )
        validation.check_number(
            factor,
            "factor",
            within="(0, 1)",
            hint="the learning rate is multiplied by it (Krizhevsky et al. 2012: 1/10)",
        )
        validation.check_int(patience, "patience")
        validation.check_int(cooldown, "cooldown", minimum=0)
        validation.check_number(min_delta, "min_delta", within=">= 0")
        validation.check_number(min_lr, "min_lr", within=">= 0", allow_none=True)
        validation.check_number(spike_tolerance, "spike_tolerance", allow_none=True)
        milestones = [] if milestones is None else list(milestones)
        if not all(validation.is_int(m) and m >= 1 for m in milestones) or milestones != sorted(set(milestones)):
            raise ValueError(
                "Argument `milestones` must be increasing 1-based epoch numbers, e.g. [30, 60]. "
                f"Received: milestones={milestones!r}."
            )
        self.monitor = monitor
        self.factor = float(factor)
        self.patience = patience
        self.min_delta = float(min_delta)
        self.cooldown = cooldown
        self.min_lr = None if min_lr is None else float(min_lr)
        self._floor = self.min_lr
        self.spike_tolerance = None if spike_tolerance is None else float(spike_tolerance)
        self.milestones = milestones
        self.verbose = verbose
        self.direction = _direction(monitor)
        self.step_downs = []
        self._reset()

    def _reset(self):
        self._best = None
        self._wait = 0
        self._cooldown_left = 0
        self._recent = []

    def on_train_begin(self, logs=None):
        _require_float_learning_rate(self.model.optimizer, "StepDownLR")
        if self._floor is None:  # Kept for later fits, which start from a rate already stepped down.
            self._floor = float(read_value(self.model.optimizer.learning_rate)) * DEFAULT_MIN_LR_FRACTION
        self._reset()

    def _better(self, value, reference):
        margin = self.min_delta * abs(reference)
        return value < reference - margin if self.direction == "min" else value > reference + margin

    def _reason(self, epoch, value):
        """Why to step down after this epoch, or None."""
        if epoch + 1 in self.milestones:
            return f"milestone: epoch {epoch + 1}"
        if not math.isfinite(value):
            return f"diverged: {self.monitor} is {value}"
        if self._best is None or self._better(value, self._best):
            self._best, self._wait = value, 0
            return None
        worse = value - self._best if self.direction == "min" else self._best - value
        if self.spike_tolerance is not None and worse > self.spike_tolerance * abs(self._best):
            return f"unstable: {self.monitor} jumped to {value:.4g} (best {self._best:.4g})"
        if self._cooldown_left > 0:
            return None
        self._wait += 1
        if self._wait < self.patience:
            return None
        window = np.asarray(self._recent[-(self.patience + 1) :], dtype=float)
        steps = np.sign(np.diff(window))
        if len(steps) and np.all(steps > 0 if self.direction == "min" else steps < 0):
            kind = "rising"
        elif len(steps) > 1 and np.all(steps[1:] * steps[:-1] < 0):
            kind = "oscillating"
        else:
            kind = "plateau"
        return f"{kind}: no improvement of {self.monitor} for {self._wait} epochs (best {self._best:.4g})"

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if self.monitor not in logs:
            raise ValueError(
                f"StepDownLR: the logs have no {self.monitor!r}. Available: {sorted(logs)}. "
                "Pass one of them as `monitor` (validation metrics need validation data)."
            )
        value = float(logs[self.monitor])
        self._recent.append(value)
        optimizer = self.model.optimizer
        current = float(read_value(optimizer.learning_rate))
        logs["learning_rate"] = current  # The rate this epoch trained at.
        reason = self._reason(epoch, value)
        if self._cooldown_left > 0:
            self._cooldown_left -= 1
        floor = self._floor if self._floor is not None else 0.0
        if reason is not None and current > floor * (1 + 1e-6):
            new = max(current * self.factor, floor)
            optimizer.learning_rate = new
            self.step_downs.append({"epoch": epoch + 1, "from": current, "to": new, "reason": reason})
            self._wait, self._cooldown_left = 0, self.cooldown
            if self.verbose:
                print(f"\nStepDownLR: epoch {epoch + 1}: learning rate {current:.3g} -> {new:.3g} ({reason}).")

    def get_config(self):
        return {
            "monitor": self.monitor,
            "factor": self.factor,
            "patience": self.patience,
            "min_delta": self.min_delta,
            "cooldown": self.cooldown,
            "min_lr": self.min_lr,
            "spike_tolerance": self.spike_tolerance,
            "milestones": list(self.milestones),
            "verbose": self.verbose,
        }


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
    `fit`; with `steps_per_execution > 1` the rate is set once per execution.
    """

    def __init__(self):
        super().__init__()
        self._epoch_start = 0
        self._seen = 0
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
        self._last = None
        self._cache_start, self._cache = 0, np.empty(0)
        self._start()

    def on_epoch_begin(self, epoch, logs=None):
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


class _CyclingValue(keras.Variable):
    """A momentum (or `beta_1`) that `OneCycle` changes before every step.

    Keras's SGD asks `self.momentum != 0` in Python while it traces its
    update; this value cycles between bounds that `OneCycle` checked, and the
    optimizer was built with momentum buffers, so the answer is yes.
    """

    def __ne__(self, other):
        if isinstance(other, (int, float)) and other == 0:
            return True
        return super().__ne__(other)

    __hash__ = keras.Variable.__hash__


def restore_momentum(model):
    """Puts back the momentum (or `beta_1`) a `OneCycle` left cycling on a model's optimizer.

    `OneCycle` gives the optimizer a variable in place of its float momentum
    for the length of `fit` and restores it in `on_train_end`, which Keras
    does not call when `fit` raises. A model left so trains at the last
    cycled value, its optimizer's `get_config()` is not JSON and a saved
    copy does not load. This heals it (the Playbook calls it before every
    stage; the next `OneCycle` heals it too).

    Args:
        model: A compiled Keras model.

    Returns:
        True if a cycling value was replaced by the user's.

    Example:

    ```python
    try:
        model.fit(x, y, epochs=5, callbacks=[OneCycle((1e-3, 1e-2))])
    except KeyboardInterrupt:
        restore_momentum(model)
    ```
    """
    optimizer = innermost_optimizer(getattr(model, "optimizer", None))
    restored = False
    for name in ("momentum", "beta_1"):
        current = getattr(optimizer, name, None)
        if isinstance(current, _CyclingValue):
            object.__setattr__(optimizer, name, current.original)
            restored = True
    if restored:
        model.make_train_function(force=True)  # Trace the update again, reading the user's float.
    return restored


def momentum_attribute(optimizer):
    """The optimizer (inside a loss-scale wrapper) and the name of its momentum."""
    inner = innermost_optimizer(optimizer)
    if isinstance(inner, keras.optimizers.SGD):
        if not isinstance(inner.momentum, keras.Variable) and inner.momentum == 0:
            raise ValueError(
                "OneCycle cycles the momentum, but the model's SGD has momentum=0 (no momentum buffers). "
                "Compile with SGD(momentum=0.9), or pass momentum_bounds=None to cycle only the learning rate."
            )
        return inner, "momentum"
    if hasattr(inner, "beta_1"):
        return inner, "beta_1"
    raise ValueError(
        f"OneCycle cycles SGD's `momentum` or an Adam-family optimizer's `beta_1`; {type(inner).__name__} "
        "has neither. Pass momentum_bounds=None to cycle only the learning rate."
    )


class OneCycle(_PerStepSchedule):
    """Smith's 1cycle: the rate climbs to the upper bound and back, then anneals far lower (Smith & Topin 2019).

    Over the first `cycle_fraction` of the run the learning rate rises from
    the lower bound to the upper bound and falls back symmetrically, while the
    momentum (SGD's `momentum`, or `beta_1` of Adam and its kin) falls from
    the upper to the lower momentum bound and rises back. In the remaining
    steps the rate anneals from the lower bound to `lower * final_lr_ratio`
    with the momentum held at its upper bound. Step `t` of `T` (`C` =
    round(cycle_fraction * T) steps in the cycle, peak at `U` = C // 2), with
    `f(s) = s` (linear, Smith's) or `(1 - cos(pi * s)) / 2` ("cos"):
    - t < U: lr = lo + (hi - lo) f(t / U); momentum = m_hi + (m_lo - m_hi) f(t / U)
    - U <= t < C: lr = hi + (lo - hi) f((t - U) / (C - U)); momentum back up
    - t >= C: lr = lo + (lo * final_lr_ratio - lo) f((t - C + 1) / (T - C)); momentum m_hi

    Smith 2018: the lower bound is a factor of 10 to 20 below the upper bound
    when only one cycle is used; `find_lr`'s result carries such bounds as
    `one_cycle_lr_bounds`, and can be passed as `lr_bounds` directly.

    The rate goes through the optimizer's `learning_rate` variable. Keras
    optimizers read `momentum`/`beta_1` as Python floats when they trace
    their update, so for the length of `fit` the callback gives the optimizer
    a variable in their place (outside its tracked state: saving is not
    affected), and puts the user's value back at the end of training. The
    learning rate is left where the schedule ended, as Keras's schedules do.
    Each epoch's last rate and momentum are written to the logs
    (`learning_rate` and `momentum` or `beta_1`).

    Args:
        lr_bounds: `(lower, upper)` learning rates, or the result of
            `Playbook.find_lr` / `find_lr` (its `one_cycle_lr_bounds`).
        momentum_bounds: `(lower, upper)` momentum, default (0.85, 0.95);
            None to leave the momentum alone.
        total_steps: Steps of the schedule; default: epochs x steps per
            epoch of the `fit` call. Past it, the final values are held.
        cycle_fraction: Share of the steps in the up-and-down cycle, (0, 1].
        final_lr_ratio: Final rate as a fraction of the lower bound, (0, 1].
        anneal: "linear" (Smith) or "cos".

    Raises:
        ValueError: at construction, for bounds that are not two positive
            numbers with lower < upper, momentum bounds outside [0, 1) or
            reversed, a bad fraction or `anneal`; when training starts, for
            an optimizer whose momentum cannot cycle (SGD with momentum=0, an
            optimizer with neither `momentum` nor `beta_1`) or one compiled
            with a LearningRateSchedule.

    Example:

    ```python
    lr = pb.find_lr()
    model.fit(x, y, epochs=20, callbacks=[OneCycle(lr)])
    ```
    """

    def __init__(
        self,
        lr_bounds,
        momentum_bounds=(0.85, 0.95),
        total_steps=None,
        cycle_fraction=0.9,
        final_lr_ratio=0.01,
        anneal="linear",
    ):
        super().__init__()
        if hasattr(lr_bounds, "one_cycle_lr_bounds"):
            if lr_bounds.one_cycle_lr_bounds is None:
                raise ValueError(
                    "OneCycle: the range test found no usable learning rates "
                    f"({getattr(lr_bounds, 'message', '')}). Pass lr_bounds=(lower, upper) yourself."
                )
            lr_bounds = lr_bounds.one_cycle_lr_bounds
        if not isinstance(lr_bounds, (tuple, list)) or len(lr_bounds) != 2:
            raise ValueError(
                f"Argument `lr_bounds` must be (lower, upper) learning rates. Received: lr_bounds={lr_bounds!r}."
            )
        for value in lr_bounds:
            validation.check_number(value, "lr_bounds")
        if not lr_bounds[0] < lr_bounds[1]:
            raise ValueError(
                "Argument `lr_bounds` must be (lower, upper) with lower < upper (Smith 2018: lower = upper / 10 "
                f"for one cycle). Received: lr_bounds={tuple(lr_bounds)!r}."
            )
        if momentum_bounds is not None:
            valid = (
                isinstance(momentum_bounds, (tuple, list))
                and len(momentum_bounds) == 2
                and all(validation.is_number(m) and 0 <= m < 1 for m in momentum_bounds)
            )
            if not valid or not momentum_bounds[0] <= momentum_bounds[1]:
                raise ValueError(
                    "Argument `momentum_bounds` must be (lower, upper) in [0, 1) with lower <= upper, e.g. "
                    f"(0.85, 0.95), or None. Received: momentum_bounds={momentum_bounds!r}."
                )
        validation.check_int(total_steps, "total_steps", minimum=2, allow_none=True)
        validation.check_number(cycle_fraction, "cycle_fraction", within="(0, 1]")
        validation.check_number(final_lr_ratio, "final_lr_ratio", within="(0, 1]")
        if anneal not in ("linear", "cos"):
            raise ValueError(f"Argument `anneal` must be 'linear' or 'cos'. Received: anneal={anneal!r}.")
        self.lr_bounds = (float(lr_bounds[0]), float(lr_bounds[1]))
        self.momentum_bounds = (
            None if momentum_bounds is None else (float(momentum_bounds[0]), float(momentum_bounds[1]))
        )
        self.total_steps = total_steps
        self.cycle_fraction = float(cycle_fraction)
        self.final_lr_ratio = float(final_lr_ratio)
        self.anneal = anneal
        self._total = total_steps
        self._momentum = None  # (optimizer, attribute, variable, user's value) while training.
        self._last_momentum = None

    def _start(self):
        if self.total_steps is None:
            self._total = max(2, int(self.params["epochs"]) * self._steps_per_epoch("total_steps=None"))
        if self.momentum_bounds is not None:
            optimizer, name = momentum_attribute(self.model.optimizer)
            current = getattr(optimizer, name)
            original = current.original if isinstance(current, _CyclingValue) else current
            with optimizer_scope(optimizer):  # Placed like the optimizer's own variables.
                variable = _CyclingValue(
                    self.momentum_bounds[1], dtype="float32", trainable=False, name=f"one_cycle_{name}"
                )
            variable.original = original
            # Outside the optimizer's tracked state, so `optimizer.variables` and saving do not change.
            object.__setattr__(optimizer, name, variable)
            self._momentum = (optimizer, name, variable, original)
            self._last_momentum = None
            self.model.make_train_function(force=True)  # Trace the update again, reading the variable.

    def _phases(self):
        total = self._total
        cycle = min(total, max(2, round(self.cycle_fraction * total)))
        return total, cycle, cycle // 2

    def _shape(self, s):
        s = np.clip(s, 0.0, 1.0)
        return s if self.anneal == "linear" else (1 - np.cos(np.pi * s)) / 2

    def _rates(self, start, stop):
        total, cycle, peak = self._phases()
        low, high = self.lr_bounds
        t = np.arange(start, stop, dtype="float64")
        up = low + (high - low) * self._shape(t / peak)
        down = high + (low - high) * self._shape((t - peak) / (cycle - peak))
        tail = low + (low * self.final_lr_ratio - low) * self._shape((t - cycle + 1) / max(total - cycle, 1))
        return np.where(t < peak, up, np.where(t < cycle, down, tail))

    def momentum_at(self, step):
        """The momentum (or `beta_1`) of the 0-based training step `step`, or None without momentum bounds."""
        if self.momentum_bounds is None:
            return None
        total, cycle, peak = self._phases()
        low, high = self.momentum_bounds
        if step < peak:
            return float(high + (low - high) * self._shape(step / peak))
        if step < cycle:
            return float(low + (high - low) * self._shape((step - peak) / (cycle - peak)))
        return high

    def on_train_batch_begin(self, batch, logs=None):
        super().on_train_batch_begin(batch, logs)
        if self._momentum is not None:
            value = self.momentum_at(self._epoch_start + batch)
            if value != self._last_momentum:
                _assign(self._momentum[2], value)
                self._last_momentum = value

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if logs is not None and self._momentum is not None and self._last_momentum is not None:
            logs[self._momentum[1]] = self._last_momentum

    def on_train_end(self, logs=None):
        self.restore()

    def restore(self):
        """Puts the user's momentum (or `beta_1`) back on the optimizer.

        Called at the end of training; Keras does not call `on_train_end`
        when `fit` raises (Ctrl-C, an error in another callback), so after an
        interrupted `fit` call this yourself (the Playbook does), or
        `restore_momentum(model)` when the callback is gone. Safe to call
        more than once.

        Returns:
            True if a cycling value was replaced.
        """
        self._momentum = None
        return restore_momentum(self.model) if self.model is not None else False

    def get_config(self):
        return {
            "lr_bounds": list(self.lr_bounds),
            "momentum_bounds": None if self.momentum_bounds is None else list(self.momentum_bounds),
            "total_steps": self.total_steps,
            "cycle_fraction": self.cycle_fraction,
            "final_lr_ratio": self.final_lr_ratio,
            "anneal": self.anneal,
        }


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
