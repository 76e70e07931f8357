"""Learning-curve diagnosis: what the shape of a run's curves says (pure NumPy).

Johnson's step 6: look at the learning curves, adjust, go back.
`diagnose(history)` reads per-epoch curves (a Keras `History` or its
`history` dict) and returns findings, each with the epochs and a summary of
the values it rests on, and advice citing the practice:

- `diverged`: a NaN or infinite loss (rate too high, bad initialization).
- `rate_too_high`: the training loss rose while the learning rate rose (a
  schedule climbing past what the model takes).
- `not_decreasing`: the training loss does not go down (rate too low, bad
  initialization).
- `learning_too_slowly`: the loss falls steadily, but by under 10% over the
  whole run (rate far too low).
- `bad_initialization`: a flat start, then a sudden drop.
- `plateau`: the training loss stopped falling well above its floor (the
  optimizer overshoots: decay the learning rate).
- `decay_too_early`: the rate was lowered while the loss was still falling,
  and the loss went flat after it. Only decays nobody planned or earned
  count: a one-cycle or cosine anneal is planned, a step-down on a stalled
  loss (`StepDownLR`, `ReduceLROnPlateau`) is earned.
- `overfitting`: the validation loss rises from its best epoch (by more than
  noise: a share of its fall, or a steady trend) while the
  training loss keeps falling.
- `worse_after_convergence`: the training loss rises after its best epoch at
  a constant rate (weight decay overpowering the learning; without weight
  decay, the rate).
- `weight_decay_dominating`: `WeightDecayMonitor` logged a decay pull larger
  than the data-loss push (`weight_decay_ratio` > 1).
- `underfitting`: still improving at the end with a low training accuracy.
- `needs_longer_training`: a good curve still improving at the end.

A run shorter than `WINDOW` epochs is too short for the curves' shape:
only a NaN or infinite loss, the weight-decay ratio and a run worse than
untrained are judged (`rate_too_high`: the first epoch's training loss, or
the last epoch's training or validation loss, ended above `initial_loss`,
the untrained model's loss in a Playbook, by more than `RISE` of it);
`too_short(epochs)` says what needs more epochs. The first-epoch check runs
at any length.

A run that converged shows no finding. `SEVERE` lists the findings that mean
the run did not work (a `FitRecord` with one is not OK, unless its evidence
says the run `recovered`); the others are advice on a run that did. A rise of
the loss counts when it exceeds a share of the loss's fall so far
(`RISE_OF_FALL` x (start - best)), not a share of its level: a loss near 0,
or one that goes negative, is judged by how far it came. Thresholds are
module constants.

References:
    Johnson, EECS 498 Lecture 11 (learning curves, step 6).
    Krizhevsky, Sutskever & Hinton 2012 (step the rate down when the
    validation error stops improving).
    Loshchilov & Hutter 2019, arXiv:1711.05101; van Laarhoven 2017,
    arXiv:1706.05350 (weight decay against the learning gradient).
"""

import dataclasses
import math

import numpy as np

from keras_playbook import _references as references

FLAT = 0.02  # Relative change per epoch below which a curve is flat.
SUDDEN_DROP = 0.2  # Relative fall in one epoch that counts as sudden.
WINDOW = 3  # Epochs a trend must last.
RISE = 0.1  # Relative rise past the best that counts as getting worse.
FLOOR = 0.05  # A loss below this fraction of its start has converged.
STILL_IMPROVING = 0.01  # Relative fall per epoch at the end that says "not done".
UNDERFIT_ACCURACY = 0.9  # Training accuracy below which a still-improving run underfits.
DECAY_WINS = 1.0  # Weight-decay pull / data-loss push above which the decay wins.
SLOW = 0.1  # A run whose loss falls by less than this over its course learns too slowly.
SLOW_MIN_EPOCHS = 5  # Epochs before "too slow" can be told from "just started".
RATE_ROSE = 1.5  # The rate at an epoch over the rate at the best epoch that counts as "rose".
RISE_OF_FALL = 0.25  # A rise past the best by this share of the loss's fall (start - best) is a real rise.

PLANNED_SCHEDULES = ("OneCycle", "CosineRestarts", "TwoStage", "ScheduledLR", "LearningRateScheduler")
EARNED_SCHEDULES = ("StepDownLR", "ReduceLROnPlateau")
SEVERE = (
    "diverged",
    "rate_too_high",
    "not_decreasing",
    "learning_too_slowly",
    "worse_after_convergence",
    "weight_decay_dominating",
)

_CURVES = references.johnson(6)


@dataclasses.dataclass
class Finding:
    """One thing a learning curve shows.

    Attributes:
        kind: What it is (see the module docstring).
        epochs: The 1-based epochs it rests on.
        evidence: A summary of the values it rests on (a few numbers, not
            whole curves).
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


def schedule_name(schedule):
    """The class name of a schedule given as a callback, a `{"name": ...}` dict, a name, or None."""
    if schedule is None or isinstance(schedule, str):
        return schedule
    if isinstance(schedule, dict):
        return schedule.get("name")
    return type(schedule).__name__


def _relative_fall(values, start, end):
    """Fall from values[start] to values[end], relative to values[start]."""
    return (values[start] - values[end]) / max(abs(values[start]), 1e-12)


def _g(value):
    return float(f"{float(value):.4g}")


def diagnose(history, *, schedule=None, initial_loss=None, weight_decay=None):
    """Findings about a run's per-epoch curves.

    Args:
        history: A Keras `History`, or a dict of per-epoch lists with at least
            "loss"; "val_loss", "accuracy", "learning_rate" (as the
            schedules log it) and "weight_decay_ratio" (as
            `WeightDecayMonitor` logs it) are used when present.
        schedule: The learning-rate schedule that ran (a callback, its class
            name, or a `FitRecord`'s `schedule` dict): a decay it planned
            (`PLANNED_SCHEDULES`) or earned (`EARNED_SCHEDULES`) is not a
            mistake.
        initial_loss: The loss the run is judged from, when known: the
            training loss before its first step, or the untrained model's
            (for a run that continues training, the larger). A run that
            learned within its first epoch is then not called flat, and a
            rise is weighed against all the loss has fallen.
        weight_decay: Whether the run had weight decay (None: unknown); a
            loss that rises after convergence without any is blamed on the
            rate.

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
    learning_rate = curves.get("learning_rate")
    if learning_rate is not None and len(learning_rate) != len(loss):
        learning_rate = None
    name = schedule_name(schedule)
    bad = [
        index for key in ("loss", "val_loss") if key in curves for index in np.flatnonzero(~np.isfinite(curves[key]))
    ]
    if bad:
        epoch = int(min(bad)) + 1
        evidence = {"epoch": epoch, "last_finite_loss": _g(loss[epoch - 2]) if epoch > 1 else None}
        if learning_rate is not None:
            evidence["learning_rate"] = _g(learning_rate[epoch - 1])
        return [
            Finding(
                "diverged",
                [epoch],
                evidence,
                "The loss exploded to NaN/inf: the learning rate is too high or the "
                f"initialization is bad ({_CURVES}).",
            )
        ]
    epochs = len(loss)
    decay_ratio = curves.get("weight_decay_ratio")
    if epochs < WINDOW:  # Too short for the curves' shape (see `too_short`).
        return _worse_than_untrained(loss, validation, initial_loss, learning_rate) + _decay_dominating(decay_ratio)
    known_start = initial_loss is not None and math.isfinite(initial_loss)
    first = max(loss[0], float(initial_loss)) if known_start else loss[0]
    too_high = _worse_than_untrained(loss, validation, initial_loss, learning_rate) or _rate_too_high(
        loss, learning_rate, first
    )
    if too_high and not too_high[0].evidence["recovered"]:
        return too_high + _decay_dominating(decay_ratio)
    window = max(1, min(WINDOW, epochs // 2))  # First and last epochs, never overlapping.
    start = np.mean(loss[:window])
    if known_start:
        start = max(start, float(initial_loss))
    end = np.mean(loss[-window:])
    if end >= start - FLAT * abs(start):
        return [
            Finding(
                "not_decreasing",
                [1, epochs],
                {"first_epochs_loss": _g(start), "last_epochs_loss": _g(end)},
                "The training loss is not going down: the learning rate is too low, or the "
                f"initialization is bad ({_CURVES}).",
            )
        ] + _decay_dominating(decay_ratio)
    findings = too_high + _too_slow(loss, curves.get("accuracy"), initial_loss)
    findings += _bad_initialization(loss)
    if name not in PLANNED_SCHEDULES + EARNED_SCHEDULES:
        findings += _decay_too_early(loss, learning_rate)
    findings += _overfitting(loss, validation)
    findings += _worse_after_convergence(loss, learning_rate, weight_decay, first)
    findings += _decay_dominating(decay_ratio)
    if not findings:
        findings += _plateau(loss)
    if not findings:
        findings += _still_improving(loss, validation, curves.get("accuracy"))
    return findings


def _noise(loss):
    """Epoch-to-epoch noise of a curve: a robust spread (MAD) of its second half's epoch-to-epoch changes."""
    changes = np.diff(loss[len(loss) // 2 :])
    if len(changes) < 2:
        return 0.0
    return float(1.4826 * np.median(np.abs(changes - np.median(changes))))


def _risen(loss, best, value, start):
    """Whether `value` is a real rise past loss[best], not noise.

    Real: by more than `RISE_OF_FALL` of the fall start -> best, or by more
    than `RISE` of the best's level and three times the curve's own noise.
    """
    rise = value - loss[best]
    return rise > RISE_OF_FALL * max(start - loss[best], 0.0) or (
        rise > RISE * abs(loss[best]) and rise > 3 * _noise(loss)
    )


def _rate_too_high(loss, learning_rate, start):
    """The training loss rose well past its best while the rate stood well above the rate at that best."""
    if learning_rate is None:
        return []
    for epoch in range(1, len(loss)):
        best = int(np.argmin(loss[:epoch]))
        rose = learning_rate[epoch] > RATE_ROSE * learning_rate[best]
        if not (rose and _risen(loss, best, loss[epoch], start)):
            continue
        recovered = not _risen(loss, best, np.mean(loss[-WINDOW:]), start)
        what = (
            "The run recovered when the rate came down, but a lower peak trains more steadily"
            if recovered
            else "The run did not recover"
        )
        return [
            Finding(
                "rate_too_high",
                [best + 1, epoch + 1],
                {
                    "best_loss": _g(loss[best]),
                    "learning_rate_at_best": _g(learning_rate[best]),
                    "loss": _g(loss[epoch]),
                    "learning_rate": _g(learning_rate[epoch]),
                    "final_loss": _g(loss[-1]),
                    "recovered": bool(recovered),
                },
                f"The training loss rose from {loss[best]:.4g} (epoch {best + 1}, learning rate "
                f"{learning_rate[best]:.3g}) to {loss[epoch]:.4g} (epoch {epoch + 1}) as the learning rate "
                f"rose to {learning_rate[epoch]:.3g}: the rate is too high for this model. {what}: keep the peak "
                f"below {learning_rate[epoch]:.3g} (for one cycle, a lower upper bound; {references.ONE_CYCLE}), "
                f"or train at a constant rate near {learning_rate[best]:.3g} ({_CURVES}).",
            )
        ]
    return []


def _worse_than_untrained(loss, validation, initial_loss, learning_rate):
    """The run was worse than the untrained model: the rate was too high from the start.

    At any length: the first epoch's training loss ended above `initial_loss`
    by more than `RISE` of its size (a difference, not a ratio: a loss that
    starts or ends below 0 is judged the same way). Below `WINDOW` epochs,
    where nothing else is judged, also the last epoch's training or
    validation loss. The run `recovered` when the epochs after the first
    (the last `WINDOW` of them) average below `initial_loss` and a short
    run did not end above it.
    """
    if initial_loss is None or not math.isfinite(initial_loss):
        return []
    margin = RISE * abs(initial_loss)
    first_worse = loss[0] - initial_loss > margin
    ended = {"final_loss": loss[-1]}
    if validation is not None and len(validation) == len(loss):
        ended["final_val_loss"] = validation[-1]
    short = len(loss) < WINDOW
    ended_worse = short and any(value - initial_loss > margin for value in ended.values())
    if not (first_worse or ended_worse):
        return []
    later = loss[1:][-WINDOW:]
    recovered = bool(not ended_worse and len(later) and np.mean(later) < initial_loss)
    evidence = {"initial_loss": _g(initial_loss), "first_epoch_loss": _g(loss[0])}
    evidence.update({name: _g(value) for name, value in ended.items()})
    if "final_val_loss" in ended:
        evidence["best_val_loss"] = _g(np.min(validation))
    evidence["recovered"] = recovered
    rate = ""
    if learning_rate is not None:
        evidence["learning_rate"] = _g(learning_rate[0])
        rate = f" (learning rate {learning_rate[0]:.3g} at its end)"
    if first_worse:
        what = f"The first epoch ended at loss {loss[0]:.4g}{rate}"
        if ended_worse and len(loss) > 1:
            what += f" and the last at {_ended(ended)}"
    else:
        what = f"The run ended at {_ended(ended)}{rate}"
    return [
        Finding(
            "rate_too_high",
            list(range(1, len(loss) + 1)) if ended_worse else [1],
            evidence,
            f"{what}, above the {initial_loss:.4g} the run started from: "
            "the learning rate is too high from the start"
            + (" (the run recovered later)" if recovered else "")
            + f". Lower it (run find_lr; for one cycle, a lower upper bound; {references.ONE_CYCLE}) ({_CURVES}).",
        )
    ]


def _ended(ended):
    text = f"loss {ended['final_loss']:.4g}"
    if "final_val_loss" in ended:
        text += f" (validation {ended['final_val_loss']:.4g})"
    return text


def too_short(epochs, untrained_known=True):
    """What `diagnose` cannot judge in a run of `epochs` epochs, as a sentence ("" from `WINDOW` epochs on).

    Args:
        epochs: Epochs the run had.
        untrained_known: Whether the run was judged against the untrained
            model's loss (`diagnose(initial_loss=...)`).

    Returns:
        A sentence such as "2 epochs: too few to judge the curves' shape
        (...: needs 3 to 6 epochs); checked only for a loss that diverged
        or ended worse than the untrained model's.", or "".
    """
    if epochs >= WINDOW:
        return ""
    checked = "a loss that diverged" + (" or ended worse than the untrained model's" if untrained_known else "")
    return (
        f"{epochs} epoch{'' if epochs == 1 else 's'}: too few to judge the curves' shape (overfitting, a plateau, "
        f"a loss that stops falling or falls too slowly: needs {WINDOW} to {2 * WINDOW} epochs); checked only "
        f"for {checked}."
    )


def _too_slow(loss, accuracy, initial_loss):
    """A steady fall that adds up to under `SLOW` of the loss over the whole run."""
    if len(loss) < SLOW_MIN_EPOCHS:
        return []
    start = loss[0] if initial_loss is None or not math.isfinite(initial_loss) else max(loss[0], initial_loss)
    total = (start - loss[-1]) / max(abs(start), 1e-12)
    if total >= SLOW:
        return []
    half = len(loss) // 2
    late = (loss[half] - loss[-1]) / max(abs(start), 1e-12)
    still_falling = _relative_fall(loss, -WINDOW, -1) > 0 and late >= 0.3 * total
    rising_accuracy = accuracy is None or len(accuracy) != len(loss) or accuracy[-1] > accuracy[-WINDOW]
    if not (still_falling and rising_accuracy):
        return []
    evidence = {"start_loss": _g(start), "final_loss": _g(loss[-1]), "fall": _g(total)}
    if accuracy is not None and len(accuracy) == len(loss):
        evidence["accuracy"] = [_g(accuracy[0]), _g(accuracy[-1])]
    return [
        Finding(
            "learning_too_slowly",
            [1, len(loss)],
            evidence,
            f"The loss fell by only {total:.1%} over {len(loss)} epochs and is still falling steadily: "
            "the learning rate is far too low. Run find_lr and train at its suggestion "
            f"({references.RANGE_TEST}; {_CURVES}).",
        )
    ]


def _bad_initialization(loss):
    for drop in range(2, len(loss)):
        start = loss[:drop]
        if (start.max() - start.min()) / max(abs(start[0]), 1e-12) >= 2 * FLAT:
            return []  # The start is not flat.
        if _relative_fall(loss, drop - 1, drop) > SUDDEN_DROP:
            return [
                Finding(
                    "bad_initialization",
                    list(range(1, drop + 2)),
                    {"flat_loss": _g(loss[0]), "after_drop": _g(loss[drop]), "flat_epochs": drop},
                    f"The loss stayed flat for {drop} epochs, then dropped suddenly: the "
                    "weights started where gradients vanish. Try another initializer or "
                    f"normalization layers ({_CURVES}).",
                )
            ]
    return []


def _decay_too_early(loss, learning_rate):
    if learning_rate is None:
        return []
    for drop in range(2, len(loss) - WINDOW + 1):
        if not learning_rate[drop] < 0.9 * learning_rate[drop - 1]:
            continue
        falling = _relative_fall(loss, drop - 2, drop - 1) > STILL_IMPROVING
        flat_after = _relative_fall(loss, drop, drop + WINDOW - 1) < FLAT
        if falling and flat_after:
            return [
                Finding(
                    "decay_too_early",
                    list(range(drop, drop + WINDOW + 1)),
                    {
                        "learning_rate": [_g(learning_rate[drop - 1]), _g(learning_rate[drop])],
                        "loss_before": _g(loss[drop - 1]),
                        "loss_after": _g(loss[drop + WINDOW - 1]),
                    },
                    f"The learning rate was lowered at epoch {drop + 1} while the loss was still "
                    "falling, and the loss went flat after it: decay later, hold the rate "
                    f"while it works ({_CURVES}; {references.STEP_DOWN}).",
                )
            ]
    return []


def _overfitting(loss, validation):
    if validation is None or len(validation) != len(loss):
        return []
    best = int(np.argmin(validation))
    if best > len(loss) - WINDOW or validation[-1] <= validation[best] + RISE * abs(validation[best]):
        return []
    if not loss[-1] < loss[best] - FLAT * abs(loss[best]):
        return []
    rise = validation[-1] - validation[best]
    if rise <= RISE_OF_FALL * max(validation[0] - validation[best], 0.0) and not _rising_trend(validation[best:]):
        return []  # Noise around a converged validation loss, not a trend.
    gap_then, gap_now = validation[best] - loss[best], validation[-1] - loss[-1]
    return [
        Finding(
            "overfitting",
            [best + 1, len(loss)],
            {
                "best_val_loss": _g(validation[best]),
                "final_val_loss": _g(validation[-1]),
                "gap_at_best": _g(gap_then),
                "gap_now": _g(gap_now),
            },
            f"The validation loss is best at epoch {best + 1} and rises after it while the "
            "training loss keeps falling: overfitting. Get more data or regularize more; "
            f"keep the best epoch's weights ({_CURVES}; {references.playbook('best epoch')}).",
        )
    ]


def _rising_trend(values):
    """Whether a least-squares line through `values` rises with a t-statistic above 3 (a trend, not noise)."""
    if len(values) < WINDOW + 1:
        return False
    t = np.arange(len(values), dtype=float)
    slope, intercept = np.polyfit(t, values, 1)
    residuals = values - (slope * t + intercept)
    spread = np.sqrt(np.sum(residuals**2) / (len(values) - 2)) / np.sqrt(np.sum((t - t.mean()) ** 2))
    return bool(slope > 0 and (spread == 0 or slope / spread > 3))


def _worse_after_convergence(loss, learning_rate, weight_decay, start):
    best = int(np.argmin(loss))
    if best > len(loss) - WINDOW or not _risen(loss, best, np.mean(loss[-WINDOW:]), start):
        return []
    if loss[-1] - loss[best] <= RISE_OF_FALL * max(start - loss[best], 0.0) and not _rising_trend(loss[best:]):
        return []  # A small rise that is noise around the floor, not a trend.
    if learning_rate is not None and np.any(np.diff(learning_rate[best:]) > 0):
        return []  # A schedule raised the rate: `rate_too_high` judges that.
    evidence = {"best_loss": _g(loss[best]), "final_loss": _g(loss[-1])}
    if weight_decay is False:
        advice = (
            f"The training loss was best at epoch {best + 1} and rose after it at a constant learning rate, "
            "without weight decay: the rate is too high for the later phase of training. Lower it once "
            f"the loss stalls (StepDownLR; {references.STEP_DOWN})."
        )
    else:
        advice = (
            f"The training loss was best at epoch {best + 1} and rose after it at a constant learning rate: "
            "the weight-decay pull is likely overpowering the learning gradient. Reduce the weight decay, "
            f"or raise the learning rate ({references.DECOUPLED_DECAY}; {references.L2_VS_NORMALIZATION}); "
            "if the model has no weight decay, lower the rate once the loss stalls."
        )
    return [Finding("worse_after_convergence", [best + 1, len(loss)], evidence, advice)]


def _decay_dominating(ratio):
    if ratio is None:
        return []
    epochs = [int(epoch) + 1 for epoch in np.flatnonzero(ratio > DECAY_WINS)]
    if not epochs:
        return []
    return [
        Finding(
            "weight_decay_dominating",
            epochs,
            {"max_weight_decay_ratio": _g(np.nanmax(ratio))},
            f"From epoch {epochs[0]} the weight-decay pull was up to {np.nanmax(ratio):.2g}x the "
            "push of the data loss on some layer: the decay wins and learning stops. Reduce the "
            f"weight decay, or raise the learning rate ({references.DECOUPLED_DECAY}).",
        )
    ]


def _plateau(loss):
    if loss[-1] < FLOOR * loss[0] or len(loss) < 2 * WINDOW:
        return []
    recent = _relative_fall(loss, -WINDOW, -1) / (WINDOW - 1)
    if abs(recent) < FLAT / 2 and _relative_fall(loss, 0, -WINDOW) > 10 * FLAT:
        return [
            Finding(
                "plateau",
                list(range(len(loss) - WINDOW + 1, len(loss) + 1)),
                {"first_loss": _g(loss[0]), "final_loss": _g(loss[-1]), "recent_fall_per_epoch": _g(recent)},
                f"The loss stopped falling at {loss[-1]:.4g}, well above its floor: the "
                f"optimizer overshoots the minimum. Decay the learning rate ({_CURVES}), e.g. "
                f"with StepDownLR ({references.STEP_DOWN}).",
            )
        ]
    return []


def _still_improving(loss, validation, accuracy):
    watched = validation if validation is not None and len(validation) == len(loss) else loss
    per_epoch = _relative_fall(watched, -WINDOW, -1) / (WINDOW - 1)
    if per_epoch <= STILL_IMPROVING or int(np.argmin(watched)) < len(watched) - 1:
        return []
    epochs = list(range(len(loss) - WINDOW + 1, len(loss) + 1))
    if accuracy is not None and len(accuracy) and math.isfinite(accuracy[-1]) and accuracy[-1] < UNDERFIT_ACCURACY:
        return [
            Finding(
                "underfitting",
                epochs,
                {"final_loss": _g(loss[-1]), "final_accuracy": _g(accuracy[-1]), "fall_per_epoch": _g(per_epoch)},
                f"Still improving at the end with training accuracy {accuracy[-1]:.3f}: "
                f"underfitting. Train longer, or use a bigger model ({_CURVES}).",
            )
        ]
    return [
        Finding(
            "needs_longer_training",
            epochs,
            {"final": _g(watched[-1]), "fall_per_epoch": _g(per_epoch)},
            f"The curve is good and still falling ({per_epoch:.1%} per epoch at the end): "
            f"train longer ({_CURVES}; {references.playbook('best epoch')}: the best epoch is the last).",
        )
    ]
