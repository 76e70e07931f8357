"""The learning-rate range test (`find_lr`).

The range test (Smith 2017; Smith 2018): training starts at a small learning
rate that rises throughout a short run; as it rises, the loss falls, until
the rate becomes too large and the loss turns up. The rate at that turn is
the largest usable one. The lower bound of a cyclic schedule is that maximum
divided by 3-4, or by 10-20 when only one cycle is used (Smith 2018).

The curve's maths and the swappable suggestion rules live in `lr_curves.py`;
every rule's answer is kept on the result.

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
from keras_playbook._loss_key import logged_loss_key, read_loss
from keras_playbook._runner import stage
from keras_playbook._stages.lr_curves import (
    DEFAULT_RULE,
    SUGGESTION_RULES,
    MovingAverage,
    diverged,
    range_learning_rates,
    stopped_falling,
    upper_bound_index,
    warm_up_steps,
)

_RANGE_TEST = "Smith 2017; Smith 2018"
MODES = ("exponential", "linear")
MEASURED_ON = ("train", "validation")


# Schedules and smoothing ---------------------------------------------------


# Suggestion rules: (learning_rates, smoothed) -> learning rate --------------


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


class _RangeTest(keras.callbacks.Callback):
    """Sets each step's learning rate, measures, smooths, and stops on divergence."""

    def __init__(self, learning_rates, smoothing, stop_factor, validation_dataset=None, loss_key=None):
        super().__init__()
        self.loss_key = loss_key
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
            loss = read_loss(logs, self.loss_key, "the model's train_step")
        else:
            logs = self.model.evaluate(self.validation_dataset, verbose=0, return_dict=True)
            loss = read_loss(logs, self.loss_key, "the model's test_step")
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
    _check_values(min_lr, max_lr, num_steps, mode, on, stop_factor, smoothing, rule, num_validation_batches)
    if on == "validation" and validation_pipeline is None:
        raise ValueError(
            f"{stage}: on='validation' needs validation data; pass `validation_data` "
            "to the Playbook, or use on='train'."
        )
    available = pipeline.steps_per_pass  # One epoch: the Playbook's steps_per_epoch, else one pass.
    if not allow_repeat and available is not None:
        if num_steps > available:
            held = (
                f"{available} batches"
                if pipeline.num_examples is None or pipeline.steps is not None
                else (f"{pipeline.num_examples} examples = {available} batches")
            )
            raise ValueError(
                f"{stage}: num_steps={num_steps} needs more batches than the training "
                f"data holds in an epoch ({held} of {pipeline.global_batch_size}) and allow_repeat=False. "
                "Lower num_steps, lower the batch size, or pass allow_repeat=True to go over the data again."
            )


def _check_values(min_lr, max_lr, num_steps, mode, on, stop_factor, smoothing, rule, num_validation_batches):
    """The range test's arguments that are wrong whatever the data: checked before anything runs."""
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


def _check_find_lr_arguments(arguments, session):
    """`find_lr`'s argument check, before anything runs (`StageSpec.check`); the data's part waits for the data."""
    _check_values(
        *(
            arguments[name]
            for name in (
                "min_lr",
                "max_lr",
                "num_steps",
                "mode",
                "on",
                "stop_factor",
                "smoothing",
                "rule",
                "num_validation_batches",
            )
        )
    )
    validation.check_bool(arguments["allow_repeat"], "allow_repeat", "find_lr")
    validation.check_int(arguments["repeats"], "repeats", "find_lr")


@stage(
    "find_lr",
    uses=("momentum", "beta_1", "weight_decay"),
    depends_on=("batch_size",),
    check=_check_find_lr_arguments,
)
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
        repeats: Data orders to run the test over (>= 1); one for a
            tf.data.Dataset or an infinite PyDataset, which are never
            reshuffled. The suggestion
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
    loss_key = logged_loss_key(session, pipeline)
    validation_dataset = None
    if on == "validation":
        validation_dataset = short_runs.fixed_sample(validation_pipeline, num_validation_batches, seed)
    results = []
    orders = repeats if pipeline.reorders else 1  # Another seed reads a tf.data.Dataset in the same order.
    for order in range(orders):
        model = short_runs.working_copy(session, **{**(optimizer_changes or {}), "learning_rate": float(min_lr)})
        test = _RangeTest(learning_rates, float(smoothing), float(stop_factor), validation_dataset, loss_key)
        short_runs.train_steps(
            model,
            short_runs.fixed_order(pipeline, seed + order),
            num_steps,
            callbacks=[test, *(callbacks or [])],
            loss_key=loss_key,
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
    chosen = _over_orders(results)
    if orders < repeats:
        kind = "a tf.data.Dataset" if pipeline.py_dataset is None else "an infinite PyDataset"
        chosen.message += (
            f" The training data is {kind}"
            f", which is read in the order it gives and never reshuffled (as model.fit reads it), so the test ran over "
            f"that one order, not {repeats}."
        )
    return chosen


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
