"""The learning-rate range test (`find_lr`) and its suggestion rules.

The range test (Smith 2017; Smith 2018): training starts at a small learning
rate that rises throughout a short run; as it rises, the loss falls, until
the rate becomes too large and the loss turns up. The rate at that turn is
the largest usable one. The lower bound of a cyclic schedule is that maximum
divided by 3-4, or by 10-20 when only one cycle is used (Smith 2018).

The suggestion rules share one signature, `rule(learning_rates, smoothed,
losses=None, smoothing=0.9) -> learning_rate`, over the finite part of the
curve (`smoothed` the causal average the test stops on, `losses` each step's
own loss), and are swappable through `find_lr(rule=...)`; every rule's answer
is kept on the result.

References:
    Smith, "Cyclical Learning Rates for Training Neural Networks", 2017.
    Smith, "A disciplined approach to neural network hyper-parameters:
    Part 1", 2018.
"""

import dataclasses
import math

import keras
import numpy as np
from matplotlib.figure import Figure

from keras_playbook import _short_runs as short_runs
from keras_playbook import _validation as validation
from keras_playbook._journal import Result
from keras_playbook._runner import stage

_RANGE_TEST = "Smith 2017; Smith 2018"
MODES = ("exponential", "linear")
MEASURED_ON = ("train", "validation")


# Schedules and smoothing ---------------------------------------------------


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


# Suggestion rules: (learning_rates, smoothed) -> learning rate --------------


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


# Result ---------------------------------------------------------------------


@dataclasses.dataclass
class LRRangeResult(Result):
    """The loss at each learning rate of a range test, and what it suggests.

    Attributes:
        suggested_lr: The learning rate to train with (by `rule`), or None
            when the curve gives no answer (see `message`).
        lr_bounds: `(max_lr / 4, max_lr)` for cyclic schedules, where the
            maximum is the LR at which the loss reaches its floor, on the
            finished curve smoothed both ways (no lag; see
            `upper_bound_index`), before it rises.
        one_cycle_lr_bounds: `(max_lr / 10, max_lr)`, the bounds for a single
            cycle (one-cycle policy).
        suggestions: Every rule's suggestion, by rule name.
        rule: The rule that gave `suggested_lr`.
        learning_rates: The learning rate of each step run.
        losses: The loss measured at each step (the step's own training loss,
            or the validation loss after the step with `on="validation"`).
        smoothed_losses: `losses` smoothed (bias-corrected moving average).
        min_lr, max_lr, num_steps, mode, on, stop_factor, smoothing: The
            test's settings.
        steps_run: Steps actually run.
        stop_reason: Why the test ended before `num_steps`, or None.
        batch_size: Per-replica batch size the test ran with; the LR is only
            valid for it.
        global_batch_size: Examples per step over all replicas.
        optimizer: Class name of the optimizer.
        suggestions_by_order: The suggestion of each data order the test
            ran over (`repeats`; None where an order found none).
        total_steps: Steps run over all data orders (its cost).
    """

    kind = "find_lr"
    suggested_lr: float | None
    lr_bounds: list | None
    one_cycle_lr_bounds: list | None
    suggestions: dict
    rule: str
    learning_rates: list
    losses: list
    smoothed_losses: list
    min_lr: float
    max_lr: float
    num_steps: int
    mode: str
    on: str
    stop_factor: float
    smoothing: float
    steps_run: int
    stop_reason: str | None
    batch_size: int
    global_batch_size: int
    optimizer: str
    ok: bool
    message: str
    suggestions_by_order: list = dataclasses.field(default_factory=list)
    total_steps: int | None = None

    def settles(self):
        return {"learning_rate": self.suggested_lr} if self.ok else {}

    def plot(self):
        """Loss against learning rate (log x axis), suggestions and bounds marked."""
        figure = Figure(figsize=(7, 4.5))
        axes = figure.add_subplot()
        rates = np.asarray(self.learning_rates)
        axes.plot(rates, self.losses, color="tab:blue", alpha=0.3, label=f"{self.on} loss")
        axes.plot(rates, self.smoothed_losses, color="tab:blue", label="smoothed")
        if self.lr_bounds is not None:
            axes.axvspan(*self.lr_bounds, color="tab:green", alpha=0.1, label="cyclic bounds")
            axes.axvline(self.lr_bounds[1], color="tab:green", linestyle=":")
        markers = iter("os^v")
        for name, value in self.suggestions.items():
            index = int(np.argmin(np.abs(np.log(rates) - math.log(value)))) if value else None
            if index is None:
                continue
            style = "tab:red" if name == self.rule else "grey"
            axes.plot(
                value,
                self.smoothed_losses[index],
                next(markers),
                color=style,
                label=f"{name}: {value:.2g}" + (" (suggested)" if name == self.rule else ""),
            )
        if self.mode == "exponential":
            axes.set_xscale("log")
        finite = [value for value in self.smoothed_losses if math.isfinite(value)]
        if finite:  # From the raw minimum to a little above the start: the cliff is cut off.
            low = min([value for value in self.losses if math.isfinite(value)] + finite)
            start = finite[0]
            axes.set_ylim(low - 0.1 * abs(start - low), start + 0.5 * abs(start - low) + 1e-8)
        axes.set_xlabel("learning rate")
        axes.set_ylabel("loss")
        axes.set_title("Learning-rate range test")
        axes.legend(fontsize="small")
        return figure


# The test -------------------------------------------------------------------


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


class _RangeTest(keras.callbacks.Callback):
    """Sets each step's learning rate, measures, smooths, and stops on divergence."""

    def __init__(self, learning_rates, smoothing, stop_factor, validation_dataset=None):
        super().__init__()
        self.learning_rates = learning_rates
        self.smoothing = smoothing
        self.stop_factor = stop_factor
        self.validation_dataset = validation_dataset
        self.losses = []
        self.smoothed = []
        self.stop_reason = None
        self.warm_up = warm_up_steps(len(learning_rates))
        self._average = MovingAverage(smoothing)

    def on_train_batch_begin(self, batch, logs=None):
        # A Python float assigned to the optimizer's variable: no retracing.
        self.model.optimizer.learning_rate = float(self.learning_rates[len(self.losses)])

    def on_train_batch_end(self, batch, logs=None):
        if self.validation_dataset is None:
            loss = float((logs or {}).get("loss", math.nan))
        else:
            loss = float(self.model.evaluate(self.validation_dataset, verbose=0, return_dict=True)["loss"])
        self.losses.append(loss)
        step = len(self.losses)
        smoothed = self._average.update(loss)
        self.smoothed.append(smoothed)
        if not math.isfinite(loss) or not math.isfinite(smoothed):
            self.stop_reason = f"the loss became {loss} at learning rate {self.learning_rates[step - 1]:.3g}"
        elif step > self.warm_up:
            reason = diverged(self.smoothed, self.warm_up, self.stop_factor)
            if reason is not None:
                self.stop_reason = f"{reason} at learning rate {self.learning_rates[step - 1]:.3g}"
        if self.stop_reason is not None or step == len(self.learning_rates):
            self.model.stop_training = True


def _check_arguments(
    pipeline,
    validation_pipeline,
    min_lr,
    max_lr,
    num_steps,
    mode,
    on,
    stop_factor,
    smoothing,
    rule,
    num_validation_batches,
    allow_repeat,
):
    stage = "find_lr"
    validation.check_number(min_lr, "min_lr", stage)
    validation.check_number(max_lr, "max_lr", stage)
    if min_lr >= max_lr:
        raise ValueError(f"{stage}: min_lr must be below max_lr. Received: min_lr={min_lr!r}, max_lr={max_lr!r}.")
    validation.check_int(num_steps, "num_steps", stage, minimum=10)
    validation.check_int(num_validation_batches, "num_validation_batches", stage)
    if mode not in MODES:
        raise ValueError(f"{stage}: argument `mode` must be one of {MODES}. Received: mode={mode!r}.")
    if on not in MEASURED_ON:
        raise ValueError(f"{stage}: argument `on` must be one of {MEASURED_ON}. Received: on={on!r}.")
    if on == "validation" and validation_pipeline is None:
        raise ValueError(
            f"{stage}: on='validation' needs validation data; pass `validation_data` "
            "to the Playbook, or use on='train'."
        )
    validation.check_number(
        stop_factor,
        "stop_factor",
        stage,
        within="> 1",
        hint="the test stops when the smoothed loss exceeds stop_factor x its minimum",
    )
    validation.check_number(smoothing, "smoothing", stage, within="[0, 1)")
    if rule not in SUGGESTION_RULES:
        raise ValueError(
            f"{stage}: argument `rule` must be one of {sorted(SUGGESTION_RULES)}. Received: rule={rule!r}."
        )
    if not allow_repeat and pipeline.num_examples is not None:
        available = math.ceil(pipeline.num_examples / pipeline.global_batch_size)
        if num_steps > available:
            raise ValueError(
                f"{stage}: num_steps={num_steps} needs more batches than the training "
                f"data holds ({pipeline.num_examples} examples = {available} batches of "
                f"{pipeline.global_batch_size}) and allow_repeat=False. Lower num_steps, "
                "lower the batch size, or pass allow_repeat=True to go over the data again."
            )


@stage("find_lr", uses=("momentum", "beta_1", "weight_decay"), depends_on=("batch_size",))
def find_lr(
    ctx,
    *,
    min_lr,
    max_lr,
    num_steps,
    mode,
    on,
    stop_factor,
    smoothing,
    rule,
    num_validation_batches,
    allow_repeat,
    repeats,
):
    """The range test as a stage: on the training data at the batch size in force, settled optimizer values applied.

    See `range_test` for the arguments; the suggestion holds for the batch
    size it was measured at (recorded with the call).
    """
    return range_test(
        ctx.session,
        ctx.train,
        validation_pipeline=ctx.validation,
        min_lr=min_lr,
        max_lr=max_lr,
        num_steps=num_steps,
        mode=mode,
        on=on,
        stop_factor=stop_factor,
        smoothing=smoothing,
        rule=rule,
        num_validation_batches=num_validation_batches,
        allow_repeat=allow_repeat,
        optimizer_changes=ctx.optimizer_changes(),
        repeats=repeats,
        seed=ctx.seed,
        callbacks=ctx.progress(num_steps, "Learning-rate range test"),
    )


def range_test(
    session,
    pipeline,
    *,
    validation_pipeline=None,
    min_lr=1e-7,
    max_lr=10.0,
    num_steps=100,
    mode="exponential",
    on="train",
    stop_factor=4.0,
    smoothing=0.9,
    rule=DEFAULT_RULE,
    num_validation_batches=4,
    allow_repeat=True,
    optimizer_changes=None,
    repeats=3,
    seed=0,
    callbacks=None,
):
    """Runs the learning-rate range test on a copy of the model.

    A copy of the model, from its current weights and with a fresh optimizer
    of the same kind and settings, trains `num_steps` steps while the learning
    rate rises from `min_lr` to `max_lr`, set each step through the
    optimizer's learning-rate variable (no retracing, works under any
    strategy). Each step's own loss is recorded (not Keras's running mean),
    smoothed, and the test stops early once the smoothed loss exceeds
    `stop_factor` times its minimum or the loss is NaN/inf. The model and its
    optimizer are not touched.

    Args:
        session: The `Session` holding the model.
        pipeline: The training `DataPipeline` (its batch size is the one the
            suggestion is valid for).
        validation_pipeline: Validation `DataPipeline`, needed for
            `on="validation"`.
        min_lr: First learning rate.
        max_lr: Last learning rate.
        num_steps: Steps from `min_lr` to `max_lr` (at least 10).
        mode: "exponential" (evenly spaced on a log scale) or "linear" (the
            form of Smith 2017; spends most steps at large rates).
        on: "train" judges each LR by the step's training loss; "validation"
            by the loss on `num_validation_batches` validation batches after
            the step (slower, closer to Smith 2018, who reads the validation loss).
        stop_factor: Stop once the smoothed loss exceeds this times its minimum.
        smoothing: Weight of the past in the moving average (0 for none).
            The default, 0.9, averages about 10 steps; fastai's 0.98 (about
            50) lags a 100-step test so much that the curve's minimum shows
            at rates several times too large.
        rule: Suggestion rule for `suggested_lr`: "minimum/10" (default: the
            only rule within 1% of a full sweep's accuracy on every problem
            of `benchmarks/lr_finder_quality.py`), "valley" (fastai's; too
            low on smooth curves) or "steepest" (too high with SGD, where the
            loss plunges just before diverging).
        num_validation_batches: Validation batches per measurement.
        allow_repeat: Whether the test may go over the training data more
            than once; if False, `num_steps` must fit in one pass.
        optimizer_changes: Changes to the optimizer's config for the test
            (settled momentum, weight decay).
        repeats: Data orders to run the test over (>= 1). The suggestion
            moves with the order the batches come in (measured: x1.5 to x4
            across 6 orders on small tabular and image problems); the
            result is the run whose suggestion is the median, and its
            message gives the range and warns when it is wider than x3.
        seed: Seed of the data order (order k uses `seed + k`) and of the
            validation sample: the same call gives the same answer.
        callbacks: Extra callbacks for the trial's `fit` (a progress bar).

    Returns:
        An `LRRangeResult`.

    Raises:
        ValueError: before any training, for min_lr >= max_lr, non-positive
            or non-finite rates, num_steps < 10, an unknown mode, rule or
            `on`, or more steps than one pass holds with allow_repeat=False.

    Example:

    ```python
    result = range_test(session, pipeline, num_steps=200)
    print(result.suggested_lr, result.lr_bounds)
    result.plot().savefig("lr_range.png")
    ```
    """
    _check_arguments(
        pipeline,
        validation_pipeline,
        min_lr,
        max_lr,
        num_steps,
        mode,
        on,
        stop_factor,
        smoothing,
        rule,
        num_validation_batches,
        allow_repeat,
    )
    validation.check_int(repeats, "repeats", "find_lr")
    learning_rates = range_learning_rates(min_lr, max_lr, num_steps, mode)
    validation_dataset = None
    if on == "validation":
        validation_dataset = short_runs.fixed_sample(validation_pipeline, num_validation_batches, seed)
    results = []
    for order in range(repeats):
        model = short_runs.working_copy(session, **{**(optimizer_changes or {}), "learning_rate": float(min_lr)})
        test = _RangeTest(learning_rates, float(smoothing), float(stop_factor), validation_dataset)
        short_runs.train_steps(
            model, short_runs.fixed_order(pipeline, seed + order), num_steps, callbacks=[test, *(callbacks or [])]
        )
        del model
        results.append(
            _result(
                test,
                learning_rates[: len(test.losses)],
                rule=rule,
                min_lr=min_lr,
                max_lr=max_lr,
                num_steps=num_steps,
                mode=mode,
                on=on,
                stop_factor=stop_factor,
                smoothing=smoothing,
                pipeline=pipeline,
                optimizer=type(session.model.optimizer).__name__,
            )
        )
    return _over_orders(results)


SPREAD_WARNING = 3.0  # Suggestions across data orders further apart than this factor: a noisy curve.


def _over_orders(results):
    """The run whose suggestion is the median over data orders, told the spread of the others."""
    found = [result for result in results if result.ok]
    for result in results:
        result.total_steps = sum(run.steps_run for run in results)
    if len(results) == 1:
        return results[0]
    if len(found) * 2 <= len(results):  # Most orders found nothing: say what the first said.
        chosen = results[0]
        chosen.message += f" ({len(found)} of {len(results)} data orders found a rate.)"
        chosen.suggestions_by_order = [result.suggested_lr for result in results]
        return chosen
    found.sort(key=lambda result: result.suggested_lr)
    chosen = found[(len(found) - 1) // 2]
    rates = [result.suggested_lr for result in found]
    spread = max(rates) / min(rates)
    chosen.suggestions_by_order = [result.suggested_lr for result in results]
    chosen.message += (
        f" Over {len(results)} data orders the suggestion ranged {min(rates):.2g}-{max(rates):.2g} "
        f"(x{spread:.1f}); this is the median."
    )
    if spread > SPREAD_WARNING:
        chosen.message += (
            " That is wide: the curve is noisy at this batch size. Raise num_steps, or the batch size, "
            "and run find_lr again before trusting the rate to better than that factor."
        )
    return chosen


def _result(test, learning_rates, *, rule, pipeline, optimizer, **settings):
    losses = np.asarray(test.losses, dtype=np.float64)
    smoothed = np.asarray(test.smoothed, dtype=np.float64)
    finite = int(np.argmax(~np.isfinite(smoothed))) if not np.isfinite(smoothed).all() else len(smoothed)
    rates, curve = np.asarray(learning_rates[:finite]), smoothed[:finite]
    suggestions, bounds, one_cycle, ok = {}, None, None, False
    if finite > warm_up_steps(settings["num_steps"]):  # No verdict from a handful of points.
        suggestions = {
            name: function(rates, curve, losses[:finite], settings["smoothing"])
            for name, function in SUGGESTION_RULES.items()
        }
        lowest = int(np.argmin(curve))
        maximum = float(rates[upper_bound_index(losses[:finite], settings["smoothing"])])
        # No rate to train at lies past where the loss reaches its floor: on a loss that holds its floor to
        # max_lr without turning up (a bounded loss, a task learned within the test), the minimum of the
        # flat floor is noise and can sit at max_lr itself.
        suggestions = {name: min(value, maximum) for name, value in suggestions.items()}
        bounds, one_cycle = [maximum / 4.0, maximum], [maximum / 10.0, maximum]
        fell = curve[0] - curve[lowest] > 0.05 * max(abs(curve[0]), abs(curve[lowest]))  # Also below zero.
        still_falling = (
            test.stop_reason is None
            and lowest >= len(curve) - max(2, len(curve) // 20)
            and not stopped_falling(losses[:finite], settings["smoothing"])
        )
        ok = bool(fell and not still_falling)
        message = _message(ok, fell, suggestions[rule], rule, bounds, one_cycle, curve, settings)
    else:
        message = (
            f"The loss diverged within {len(losses)} steps, at learning rates "
            f"{settings['min_lr']:.2g}-{float(learning_rates[-1]):.2g}: lower min_lr, "
            "check the model and the data (run check_initial_loss), then run "
            f"find_lr again ({_RANGE_TEST})."
        )
    return LRRangeResult(
        suggested_lr=suggestions.get(rule) if ok else None,
        lr_bounds=bounds if ok else None,
        one_cycle_lr_bounds=one_cycle if ok else None,
        suggestions=suggestions,
        rule=rule,
        learning_rates=[float(value) for value in learning_rates],
        losses=losses.tolist(),
        smoothed_losses=smoothed.tolist(),
        min_lr=float(settings["min_lr"]),
        max_lr=float(settings["max_lr"]),
        num_steps=int(settings["num_steps"]),
        mode=settings["mode"],
        on=settings["on"],
        stop_factor=float(settings["stop_factor"]),
        smoothing=float(settings["smoothing"]),
        steps_run=len(losses),
        stop_reason=test.stop_reason,
        batch_size=pipeline.per_replica_batch_size,
        global_batch_size=pipeline.global_batch_size,
        optimizer=optimizer,
        ok=ok,
        message=message,
    )


def _message(ok, fell, suggested, rule, bounds, one_cycle, curve, settings):
    if not fell:
        return (
            f"The loss never fell by 5% between learning rates {settings['min_lr']:.2g} "
            f"and {settings['max_lr']:.2g} (smoothed {curve[0]:.3g} -> min {curve.min():.3g}): "
            "no learning rate works. Check that the model can learn at all "
            f"(overfit_small_sample), or widen the range ({_RANGE_TEST})."
        )
    if not ok:
        return (
            f"The loss was still falling at max_lr={settings['max_lr']:.2g}: the "
            "maximum bound lies above the tested range. Raise max_lr and run find_lr "
            f"again ({_RANGE_TEST})."
        )
    return (
        f"Suggested learning rate {suggested:.2g} ({rule} of the loss curve). The loss "
        f"reaches its floor at {bounds[1]:.2g}, the maximum bound: use ({bounds[0]:.2g}, "
        f"{bounds[1]:.2g}) for cyclic schedules (max/4) and ({one_cycle[0]:.2g}, "
        f"{one_cycle[1]:.2g}) for one cycle (max/10) ({_RANGE_TEST})."
    )
