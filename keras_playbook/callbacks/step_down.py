"""StepDownLR: the step-down schedule of Krizhevsky et al. 2012 as a Keras callback.

Hold the learning rate as long as learning progresses, then divide it (by 10, or 8) when the
monitored loss stops improving or turns unstable. Unlike exponential decay it does not lower
the rate while the rate still works, and unlike Keras's `ReduceLROnPlateau` it also reacts at
once to a spike or a NaN, says why it stepped down, and can step down at fixed milestones.

References:
    Krizhevsky, Sutskever & Hinton 2012, "ImageNet Classification with Deep
    Convolutional Neural Networks" (divide the rate by 10 when the
    validation error stops improving); He et al. 2016, arXiv:1512.03385.
"""

import math

import numpy as np

from keras_playbook import _validation as validation
from keras_playbook._session import read_value
from keras_playbook.callbacks._config import ConfigurableCallback
from keras_playbook.callbacks.schedules import _require_float_learning_rate

_MAX_NAMES = ("acc", "accuracy", "auc", "precision", "recall")
DEFAULT_MIN_LR_FRACTION = 1e-3  # StepDownLR's floor: at most three steps of 1/10 from the first rate.


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

    resume_state = ("_best", "_wait", "_cooldown_left", "_recent", "_floor", "step_downs")

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
