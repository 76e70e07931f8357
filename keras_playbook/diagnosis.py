"""Learning-curve diagnosis: what the shape of a run's curves says (pure NumPy).

Seed 003, step 6 and "common problem detection": look at the learning curves,
adjust, go back. `diagnose(history)` reads per-epoch curves (a Keras
`History` or its `history` dict) and returns findings, each with the epochs
and values it rests on and the seed's advice:

- `diverged`: a NaN or infinite loss (LR too high, bad initialization).
- `not_decreasing`: the training loss does not go down (LR too low, bad
  initialization).
- `bad_initialization`: a flat start, then a sudden drop (weights started
  where gradients vanish).
- `plateau`: the training loss stopped falling well above its floor (the
  optimizer overshoots: decay the learning rate).
- `decay_too_early`: the learning rate was lowered while the loss was still
  falling, and the loss went flat after it.
- `overfitting`: the validation loss rises from its best epoch while the
  training loss keeps falling (more data or more regularization).
- `worse_after_convergence`: the training loss itself rises after its best
  epoch at a constant learning rate (seed 000 Q3-Q4: the weight-decay pull
  overpowers the learning).
- `weight_decay_dominating`: `WeightDecayMonitor` logged a weight-decay pull
  larger than the data-loss push (`weight_decay_ratio` > 1; seed 000 Q3).
- `underfitting`: still improving at the end with a low training accuracy
  (train longer, or a bigger model).
- `needs_longer_training`: a good curve still improving at the end.

A run that converged shows no finding. Thresholds are module constants.
"""

import dataclasses
import math

import numpy as np

FLAT = 0.02  # Relative change per epoch below which a curve is flat.
SUDDEN_DROP = 0.2  # Relative fall in one epoch that counts as sudden.
WINDOW = 3  # Epochs a trend must last.
RISE = 0.1  # Relative rise past the best that counts as getting worse.
FLOOR = 0.05  # A loss below this fraction of its start has converged.
STILL_IMPROVING = 0.01  # Relative fall per epoch at the end that says "not done".
UNDERFIT_ACCURACY = 0.9  # Training accuracy below which a still-improving run underfits.
DECAY_WINS = 1.0  # Weight-decay pull / data-loss push above which the decay wins.


@dataclasses.dataclass
class Finding:
    """One thing a learning curve shows.

    Attributes:
        kind: What it is (see the module docstring).
        epochs: The 1-based epochs it rests on.
        evidence: The values it rests on.
        advice: What to do, citing the practice.
    """

    kind: str
    epochs: list
    evidence: dict
    advice: str

    def to_dict(self):
        return dataclasses.asdict(self)


def _curves(history):
    curves = getattr(history, "history", history)
    if not isinstance(curves, dict) or "loss" not in curves:
        raise ValueError(
            "diagnose: expected a Keras History or its `history` dict with a 'loss' curve. "
            f"Received: {type(history).__name__} with keys {sorted(curves) if isinstance(curves, dict) else None}."
        )
    return {name: np.asarray(values, dtype=float) for name, values in curves.items()}


def _relative_fall(values, start, end):
    """Fall from values[start] to values[end], relative to values[start]."""
    return (values[start] - values[end]) / max(abs(values[start]), 1e-12)


def diagnose(history):
    """Findings about a run's per-epoch curves (seed 003 step 6; seed 000 Q3-Q4).

    Args:
        history: A Keras `History`, or a dict of per-epoch lists with at least
            "loss"; "val_loss", "accuracy", "learning_rate" (as the
            schedules log it) and "weight_decay_ratio" (as
            `WeightDecayMonitor` logs it) are used when present.

    Returns:
        A list of `Finding`s, most severe first (empty for a run that converged).

    Example:

    ```python
    history = model.fit(x, y, validation_data=(x_val, y_val), epochs=30)
    for finding in diagnose(history):
        print(finding.kind, finding.advice)
    ```
    """
    curves = _curves(history)
    loss = curves["loss"]
    validation = curves.get("val_loss")
    bad = [index for name in ("loss", "val_loss") if name in curves
           for index in np.flatnonzero(~np.isfinite(curves[name]))]
    if bad:
        epoch = int(min(bad)) + 1
        return [Finding("diverged", [epoch], {"loss": [float(v) for v in loss[:epoch]]},
                        "The loss exploded to NaN/inf: the learning rate is too high or the "
                        "initialization is bad (seed 003).")]
    epochs = len(loss)
    if epochs < WINDOW:
        return []
    findings = []
    window = max(1, min(WINDOW, epochs // 2))  # First and last epochs, never overlapping.
    start, end = np.mean(loss[:window]), np.mean(loss[-window:])
    if end >= start * (1 - FLAT):
        return [Finding("not_decreasing", list(range(1, epochs + 1)), {"loss": loss.tolist()},
                        "The training loss is not going down: the learning rate is too low, or the "
                        "initialization is bad (seed 003).")] + _decay_dominating(curves.get("weight_decay_ratio"))
    findings += _bad_initialization(loss)
    findings += _decay_too_early(loss, curves.get("learning_rate"))
    overfit = _overfitting(loss, validation)
    findings += overfit
    findings += _worse_after_convergence(loss, curves.get("learning_rate"))
    findings += _decay_dominating(curves.get("weight_decay_ratio"))
    if not findings:
        findings += _plateau(loss)
    if not findings:
        findings += _still_improving(loss, validation, curves.get("accuracy"))
    return findings


def _bad_initialization(loss):
    for drop in range(2, len(loss)):
        start = loss[:drop]
        if (start.max() - start.min()) / max(abs(start[0]), 1e-12) >= 2 * FLAT:
            return []  # The start is not flat.
        if _relative_fall(loss, drop - 1, drop) > SUDDEN_DROP:
            return [Finding("bad_initialization", list(range(1, drop + 2)),
                            {"loss": loss[: drop + 1].tolist()},
                            f"The loss stayed flat for {drop} epochs, then dropped suddenly: the "
                            "weights started where gradients vanish. Try another initializer or "
                            "normalization layers (seed 003).")]
    return []


def _decay_too_early(loss, learning_rate):
    if learning_rate is None or len(learning_rate) != len(loss):
        return []
    for drop in range(2, len(loss) - WINDOW + 1):
        if not learning_rate[drop] < 0.9 * learning_rate[drop - 1]:
            continue
        falling = _relative_fall(loss, drop - 2, drop - 1) > STILL_IMPROVING
        flat_after = _relative_fall(loss, drop, drop + WINDOW - 1) < FLAT
        if falling and flat_after:
            return [Finding("decay_too_early", list(range(drop, drop + WINDOW + 1)),
                            {"loss": loss.tolist(), "learning_rate": learning_rate.tolist()},
                            f"The learning rate was lowered at epoch {drop + 1} while the loss was still "
                            "falling, and the loss went flat after it: decay later, hold the rate "
                            "while it works (seed 003; seed 000 Q2).")]
    return []


def _overfitting(loss, validation):
    if validation is None or len(validation) != len(loss):
        return []
    best = int(np.argmin(validation))
    if best > len(loss) - WINDOW or validation[-1] <= validation[best] * (1 + RISE):
        return []
    if not loss[-1] < loss[best] * (1 - FLAT):
        return []
    gap_then, gap_now = validation[best] - loss[best], validation[-1] - loss[-1]
    return [Finding("overfitting", [best + 1, len(loss)],
                    {"val_loss": validation.tolist(), "loss": loss.tolist(),
                     "gap_at_best": float(gap_then), "gap_now": float(gap_now)},
                    f"The validation loss is best at epoch {best + 1} and rises after it while the "
                    "training loss keeps falling: overfitting. Get more data or regularize more; "
                    "keep the best epoch's weights (seed 003; seed 002).")]


def _worse_after_convergence(loss, learning_rate):
    best = int(np.argmin(loss))
    if best > len(loss) - WINDOW or loss[-1] <= loss[best] * (1 + RISE):
        return []
    if learning_rate is not None and len(learning_rate) == len(loss) and np.any(np.diff(learning_rate[best:]) > 0):
        return []  # A schedule raised the rate: expected.
    return [Finding("worse_after_convergence", [best + 1, len(loss)], {"loss": loss.tolist()},
                    f"The training loss was best at epoch {best + 1} and rose after it at a constant "
                    "learning rate: the weight-decay pull is overpowering the learning gradient. "
                    "Reduce the weight decay, or raise the learning rate (seed 000 Q3-Q4).")]


def _decay_dominating(ratio):
    if ratio is None:
        return []
    epochs = [int(epoch) + 1 for epoch in np.flatnonzero(ratio > DECAY_WINS)]
    if not epochs:
        return []
    return [Finding("weight_decay_dominating", epochs, {"weight_decay_ratio": ratio.tolist()},
                    f"From epoch {epochs[0]} the weight-decay pull was up to {np.nanmax(ratio):.2g}x the "
                    "push of the data loss on some layer: the decay wins and learning stops (seed 000 Q3). "
                    "Reduce the weight decay (the seed also suggests a higher initial learning rate).")]


def _plateau(loss):
    if loss[-1] < FLOOR * loss[0] or len(loss) < 2 * WINDOW:
        return []
    recent = _relative_fall(loss, -WINDOW, -1) / (WINDOW - 1)
    if abs(recent) < FLAT / 2 and _relative_fall(loss, 0, -WINDOW) > 10 * FLAT:
        return [Finding("plateau", list(range(len(loss) - WINDOW + 1, len(loss) + 1)),
                        {"loss": loss.tolist()},
                        f"The loss stopped falling at {loss[-1]:.4g}, well above its floor: the "
                        "optimizer overshoots the minimum. Decay the learning rate (seed 003), e.g. "
                        "with StepDownLR (seed 000).")]
    return []


def _still_improving(loss, validation, accuracy):
    watched = validation if validation is not None and len(validation) == len(loss) else loss
    per_epoch = _relative_fall(watched, -WINDOW, -1) / (WINDOW - 1)
    if per_epoch <= STILL_IMPROVING or int(np.argmin(watched)) < len(watched) - 1:
        return []
    epochs = list(range(len(loss) - WINDOW + 1, len(loss) + 1))
    if accuracy is not None and len(accuracy) and math.isfinite(accuracy[-1]) and accuracy[-1] < UNDERFIT_ACCURACY:
        return [Finding("underfitting", epochs, {"loss": loss.tolist(), "accuracy": accuracy.tolist()},
                        f"Still improving at the end with training accuracy {accuracy[-1]:.3f}: "
                        "underfitting. Train longer, or use a bigger model (seed 003).")]
    return [Finding("needs_longer_training", epochs, {"curve": watched.tolist()},
                    f"The curve is good and still falling ({per_epoch:.1%} per epoch at the end): "
                    "train longer (seed 003; seed 002: the best epoch is the last).")]
