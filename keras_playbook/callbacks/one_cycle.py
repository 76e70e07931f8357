"""OneCycle: Smith's 1cycle as a Keras callback, with the momentum cycling the other way.

The rate climbs from the lower to the upper bound found by the range test and back, then
anneals far below the lower bound, while the momentum (or Adam's `beta_1`) cycles the other
way through a stand-in variable that `restore_momentum` undoes.

References:
    Smith & Topin 2019, "Super-Convergence", arXiv:1708.07120 (one cycle);
    Smith 2018, arXiv:1803.09820 (its bounds and the momentum cycle).
"""

import keras
import numpy as np

from keras_playbook import _validation as validation
from keras_playbook._session import innermost_optimizer, optimizer_scope
from keras_playbook.callbacks.schedules import _assign, _PerStepSchedule


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
