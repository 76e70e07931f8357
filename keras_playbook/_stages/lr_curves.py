"""The maths of a range test's curve: rates, smoothing, where it stops, and the suggestion rules.

Pure functions of arrays, tested without training. The suggestion rules share one signature,
`rule(learning_rates, smoothed, losses=None, smoothing=0.9) -> learning_rate`, over the finite
part of the curve (`smoothed` the causal average the test stops on, `losses` each step's own
loss), and are swappable through `find_lr(rule=...)`.

References:
    Smith, "Cyclical Learning Rates for Training Neural Networks", 2017.
    Smith, "A disciplined approach to neural network hyper-parameters:
    Part 1", 2018.
"""

import math

import numpy as np


def range_learning_rates(min_lr, max_lr, num_steps, mode="exponential"):
    """The learning rate of each step of a range test, from `min_lr` to `max_lr`.

    Example: `range_learning_rates(1e-4, 1.0, 5)` is `[1e-4, 1e-3, 1e-2, 1e-1, 1]`.
    """
    if mode == "exponential":
        return np.geomspace(min_lr, max_lr, num_steps)
    return np.linspace(min_lr, max_lr, num_steps)


class MovingAverage:
    """Exponential moving average with bias correction (as in Adam).

    `update(loss)` returns `average / (1 - smoothing ** step)` with
    `average = smoothing * average + (1 - smoothing) * loss`, so the first
    values are not pulled towards zero.
    """

    def __init__(self, smoothing):
        self.smoothing = smoothing
        self.step = 0
        self.average = 0.0

    def update(self, value):
        self.step += 1
        self.average = self.smoothing * self.average + (1.0 - self.smoothing) * value
        return self.average / (1.0 - self.smoothing**self.step)


def smooth(losses, smoothing):
    """The bias-corrected moving average of `losses`; `smoothing=0` returns them."""
    average = MovingAverage(smoothing)
    return np.asarray([average.update(loss) for loss in losses], dtype=np.float64)


def zero_phase(losses, smoothing):
    """A centred running median of the losses: smooth, in phase, and not smeared by spikes.

    The causal average the test stops on trails the raw loss by about
    1 / (1 - smoothing) steps, so its minimum shows where the raw loss is
    already rising. A centred median over as many steps (at least 5) does
    not lag, and a spike of the exploding tail does not spread back over
    the valley as it would through an average run backwards.
    """
    losses = np.asarray(losses, dtype=np.float64)
    half = max(2, int(round(0.5 / max(1.0 - smoothing, 1e-6))))
    half = min(half, max(len(losses) // 10, 2))
    return np.asarray([np.median(losses[max(0, i - half) : i + half + 1]) for i in range(len(losses))])


FLOOR_SHARE = 0.05  # The upper bound: where the loss first comes within 5% of its fall of the floor.


def upper_bound_index(losses, smoothing):
    """Where a range test's loss reaches its floor: the upper bound of cyclic schedules.

    On the zero-phase smoothed curve (`zero_phase`), the first step whose loss is within
    `FLOOR_SHARE` of the whole fall (start - minimum) of the minimum: the
    bottom of the valley, before the rise. For a model that learns the task
    within the test (the loss falls to a floor and stays there until the
    cliff), that is where the floor begins, not its far end at the cliff.
    """
    curve = zero_phase(losses, smoothing)
    lowest = int(np.argmin(curve))
    fall = curve[0] - curve[lowest]
    if fall <= 0:
        return lowest
    return int(np.argmax(curve[: lowest + 1] <= curve[lowest] + FLOOR_SHARE * fall))


def stopped_falling(losses, smoothing):
    """Whether a range test's loss stopped falling before the end of the range, without a stop.

    The test stops once the causal average passes `stop_factor` x its
    minimum, and that average lags. A loss that has not set it off may
    still have stopped falling, in two ways:
    - it turned up: the median of the last 3 steps lies more than a quarter
      of the whole fall (start - minimum of the zero-phase curve,
      `zero_phase`) above the minimum: the cliff has begun;
    - it flattened: a model that learns the task within the test reaches a
      floor and holds it, noisily, while the rate keeps rising. The median
      of the last `FLOOR_SPAN` of the steps lies less than `FLOOR_SHARE` of
      the fall below the median of the steps just before, or by less than
      the noise allows (three standard errors of the difference of two
      medians, the noise read off the first differences, which a trend does
      not inflate).
    Otherwise the loss was still falling at the top of the range.
    """
    losses = np.asarray(losses, dtype=np.float64)
    curve = zero_phase(losses, smoothing)
    fall = curve[0] - curve.min()
    tail = max(3, int(round(FLOOR_SPAN * len(losses))))
    if fall <= 0 or len(losses) < 3 * tail:
        return False
    if np.median(losses[-3:]) > curve.min() + 0.25 * fall:
        return True
    steps = np.diff(losses[-2 * tail :])
    noise = 1.4826 * np.median(np.abs(steps - np.median(steps))) / math.sqrt(2)  # One step's, robustly.
    standard_error = math.sqrt(2) * 1.2533 * noise / math.sqrt(tail)  # Of a difference of two medians.
    drop = np.median(losses[-2 * tail : -tail]) - np.median(losses[-tail:])
    return bool(drop <= max(FLOOR_SHARE * fall, 3.0 * standard_error))


FLOOR_SPAN = 0.1  # The share of a range test's last steps over which a flat loss counts as a floor.


def steepest(learning_rates, smoothed, losses=None, smoothing=0.9):
    """Where the smoothed loss falls fastest per log-LR, before its minimum.

    The slope at each point is taken over a centred window of 5% of the
    points (at least 2 each side), and the first 10% of points are skipped:
    step-to-step noise must not pass for a descent.
    """
    end = int(np.argmin(smoothed)) + 1
    span = max(2, len(smoothed) // 20)
    start = max(span, len(smoothed) // 10)
    if end - span <= start:
        return float(learning_rates[max(end - 1, 0)])
    log_rates = np.log(learning_rates)
    centres = np.arange(start, end - span)
    slopes = (smoothed[centres + span] - smoothed[centres - span]) / (
        log_rates[centres + span] - log_rates[centres - span]
    )
    return float(learning_rates[int(centres[np.argmin(slopes)])])


def valley(learning_rates, smoothed, losses=None, smoothing=0.9):
    """Halfway down the longest descending stretch of the curve (fastai's "valley").

    The stretch ends at the point with the longest decreasing subsequence
    before it, and starts that many points earlier.
    """
    count = len(smoothed)
    longest = np.ones(count, dtype=int)
    for index in range(1, count):
        higher = smoothed[:index] > smoothed[index]
        if higher.any():
            longest[index] = longest[:index][higher].max() + 1
    end = int(np.argmax(longest))
    start = max(end - int(longest[end]), 0)
    third = (end - start) / 3
    return float(learning_rates[start + int(third) + int(third / 2)])


def minimum_over_ten(learning_rates, smoothed, losses=None, smoothing=0.9):
    """A tenth of the learning rate at the smoothed loss's minimum."""
    return float(learning_rates[int(np.argmin(smoothed))]) / 10.0


def floor_over_ten(learning_rates, smoothed, losses=None, smoothing=0.9):
    """A tenth of the learning rate where the loss reaches its floor: the one-cycle lower bound.

    The floor is found on the finished curve (`upper_bound_index`: each
    step's own loss under a centred running median), not on the causal
    average, whose minimum lags the raw loss by about 1 / (1 - smoothing)
    steps and so sits where the loss already rises. The rate to train at
    is a tenth of the largest usable one, as Smith 2018 puts the lower bound
    of one cycle; the suggestion and `one_cycle_lr_bounds` agree.
    """
    curve = smoothed if losses is None else losses
    return float(learning_rates[upper_bound_index(curve, smoothing)]) / 10.0


SUGGESTION_RULES = {
    "steepest": steepest,
    "valley": valley,
    "minimum/10": minimum_over_ten,
    "floor/10": floor_over_ten,
}


DEFAULT_RULE = "minimum/10"


WARM_UP_SHARE = 0.1  # The first 10% of a range test's steps (at least 5) never stop it.


def warm_up_steps(num_steps):
    """Steps before a range test may stop: its first smoothed values are a batch or two."""
    return max(5, int(round(WARM_UP_SHARE * num_steps)))


def diverged(smoothed, warm_up, stop_factor):
    """Why the smoothed loss has risen far enough above its minimum to stop the test, or None.

    The minimum is taken from the end of the warm-up on, where the average
    is no longer one noisy batch. For a positive minimum the rule is the
    classic `stop_factor` x the minimum (Smith 2017, fastai); a loss whose
    minimum is zero or negative (cosine similarity, a Gaussian negative
    log-likelihood) has no scale there, so it stops once it has risen back
    by its whole fall, above where it started.
    """
    minimum = min(smoothed[warm_up - 1 :])
    if minimum > 0:
        return (
            f"the smoothed loss exceeded {stop_factor:g} x its minimum"
            if smoothed[-1] > stop_factor * minimum
            else None
        )
    start = max(smoothed[:warm_up])
    return "the smoothed loss rose back above where it started" if smoothed[-1] > start > minimum else None
