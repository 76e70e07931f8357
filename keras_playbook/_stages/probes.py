"""Short runs from the same start: `probe_lrs` and `sweep_momentum`.

Johnson, EECS 498 Lecture 11, step 3: on the full training data, find the learning rate that
makes the loss drop significantly within ~100 iterations; good values to try
are 1e-1, 1e-2, 1e-3, 1e-4. Smith 2018: short runs with momentum 0.99, 0.97,
0.95 and 0.9 quickly show the best momentum, judged by the validation loss.

Every run trains its own copy of the model from the same weights (the
model's current ones) with a fresh optimizer; the model is not touched.

References:
    Johnson, EECS 498 Lecture 11, step 3.
    Smith 2018, "A disciplined approach to neural network hyper-parameters:
    Part 1", arXiv:1803.09820 (momentum).
"""

import dataclasses
import math

import numpy as np
from matplotlib.figure import Figure

from keras_playbook import _short_runs as short_runs
from keras_playbook import _validation as validation
from keras_playbook._journal import Result
from keras_playbook._loss_key import read_loss
from keras_playbook._runner import stage
from keras_playbook._session import innermost_optimizer

_PROBES = "Johnson, EECS 498 Lecture 11, step 3"
_MOMENTUM = "Smith 2018"
DEFAULT_PROBE_LRS = (1e-1, 1e-2, 1e-3, 1e-4)
DEFAULT_MOMENTUMS = (0.99, 0.97, 0.95, 0.9)
NUM_EVAL_BATCHES = 10  # Batches of the fixed training sample a probe's drop is measured on.
# Optimizers whose momentum is `momentum` (SGD, RMSprop); Adam's family uses beta_1.
_MOMENTUM_NAMES = ("momentum", "beta_1")


def _plot_runs(title, labels, step_losses, best_label):
    figure = Figure(figsize=(7, 4.5))
    axes = figure.add_subplot()
    for label, losses in zip(labels, step_losses):
        values = np.asarray(losses, dtype=float)
        width = 2.5 if label == best_label else 1.0
        axes.plot(np.arange(1, len(values) + 1), values, linewidth=width, label=label)
    axes.set_yscale("log")
    axes.set_xlabel("step")
    axes.set_ylabel("training loss (per step)")
    axes.set_title(title)
    axes.legend(fontsize="small")
    return figure


def _evaluate(model, dataset, loss_key, steps=None):
    logs = model.evaluate(dataset, steps=steps, verbose=0, return_dict=True)
    return read_loss(logs, loss_key, "the model's test_step")


# probe_lrs ------------------------------------------------------------------


@dataclasses.dataclass
class ProbeResult(Result):
    """How far the loss fell in a short run at each of a few learning rates.

    Attributes:
        chosen_lr: The largest learning rate whose loss dropped significantly
            without diverging, or None.
        learning_rates: Learning rates probed, largest first.
        drops: Relative loss drop of each, `1 - final / initial` (NaN when
            diverged).
        diverged: Whether each run diverged (NaN/inf, or ended above its start).
        initial_loss: Loss on a fixed training sample before training.
        final_losses: Loss on the same sample after each run.
        step_losses: Per-step training losses of each run.
        num_steps: Steps per run.
        min_drop: The drop counted as significant.
        compared_with: A learning rate to compare with (find_lr's), or None.
    """

    kind = "probe_lrs"
    chosen_lr: float | None
    learning_rates: list
    drops: list
    diverged: list
    initial_loss: float
    final_losses: list
    step_losses: list
    num_steps: int
    min_drop: float
    compared_with: float | None
    ok: bool
    message: str

    def plot(self):
        """Per-step training loss of each probe (log scale)."""
        labels = [f"lr={value:.0e}" for value in self.learning_rates]
        best = None if self.chosen_lr is None else f"lr={self.chosen_lr:.0e}"
        return _plot_runs("Learning-rate probes", labels, self.step_losses, best)


def _check_probe_arguments(arguments, session):
    """`probe_lrs`'s argument check, before anything runs (`StageSpec.check`)."""
    stage = "probe_lrs"
    validation.check_numbers(arguments["learning_rates"], "learning_rates", stage, distinct=True)
    validation.check_int(arguments["num_steps"], "num_steps", stage)
    validation.check_number(arguments["min_drop"], "min_drop", stage, within="(0, 1)")


@stage("probe_lrs", uses=("momentum", "beta_1", "weight_decay"), check=_check_probe_arguments)
def probe_lrs(ctx, *, learning_rates, num_steps, min_drop):
    """Finds the learning rate that makes the loss go down (Johnson, EECS 498 Lecture 11, step 3).

    Each learning rate trains its own copy of the model, from the same
    weights, for `num_steps` steps on the full training data. The loss on a
    fixed training sample before and after gives each run's drop. The chosen
    rate is the largest one whose drop is at least `min_drop` and at least
    half the best drop, without diverging: a cross-check of `find_lr`.

    Every run applies the settled momentum and weight decay; the choice is
    compared with the latest `find_lr` suggestion when there is one.

    Args:
        ctx: The runner's `StageContext`.
        learning_rates: Rates to probe.
        num_steps: Steps per run (Johnson: ~100).
        min_drop: Relative drop counted as significant.

    Returns:
        A `ProbeResult`.
    """
    session, pipeline, seed = ctx.session, ctx.train, ctx.seed
    found = ctx.journal.latest("find_lr")
    compare_with = found.suggested_lr if found is not None else None
    callbacks = ctx.progress(num_steps, "Probing a learning rate")
    learning_rates = sorted((float(value) for value in learning_rates), reverse=True)
    sample = short_runs.fixed_sample(pipeline, NUM_EVAL_BATCHES, seed)
    changes = ctx.optimizer_changes()
    initial_loss, loss_key = None, ctx.loss_key()
    final_losses, step_losses = [], []
    for learning_rate in learning_rates:
        model = short_runs.working_copy(session, **changes, learning_rate=learning_rate)
        if initial_loss is None:
            initial_loss = _evaluate(model, sample, loss_key)
        order = short_runs.fixed_order(pipeline, seed)
        step_losses.append(short_runs.train_steps(model, order, num_steps, callbacks, loss_key=loss_key))
        final_losses.append(_evaluate(model, sample, loss_key))
    diverged = [
        not (math.isfinite(final) and all(math.isfinite(loss) for loss in losses)) or final >= initial_loss
        for final, losses in zip(final_losses, step_losses)
    ]
    drops = [math.nan if bad else 1.0 - final / initial_loss for final, bad in zip(final_losses, diverged)]
    valid = [drop for drop in drops if math.isfinite(drop)]
    best_drop = max(valid) if valid else math.nan
    chosen = next(
        (
            lr
            for lr, drop in zip(learning_rates, drops)
            if math.isfinite(drop) and drop >= min_drop and drop >= 0.5 * best_drop
        ),
        None,
    )
    result = ProbeResult(
        chosen_lr=chosen,
        learning_rates=learning_rates,
        drops=drops,
        diverged=diverged,
        initial_loss=initial_loss,
        final_losses=final_losses,
        step_losses=step_losses,
        num_steps=num_steps,
        min_drop=float(min_drop),
        compared_with=None if compare_with is None else float(compare_with),
        ok=chosen is not None,
        message="",
    )
    result.message = _probe_message(result)
    return result


def _probe_message(result):
    table = ", ".join(
        f"{lr:.0e}: " + ("diverged" if bad else f"{drop:.0%}")
        for lr, drop, bad in zip(result.learning_rates, result.drops, result.diverged)
    )
    if result.chosen_lr is None:
        return (
            f"No learning rate made the loss drop by {result.min_drop:.0%} within "
            f"{result.num_steps} steps (drops: {table}). The model or the data has a "
            "problem (run check_initial_loss and overfit_small_sample), or the rates "
            f"are all too small or too large ({_PROBES})."
        )
    message = (
        f"Learning rate {result.chosen_lr:.0e} is the largest that makes the loss go "
        f"down within {result.num_steps} steps (loss drops: {table}) ({_PROBES})."
    )
    if result.compared_with is not None:
        ratio = result.compared_with / result.chosen_lr
        if 0.1 <= ratio <= 10:
            message += f" find_lr's suggestion {result.compared_with:.2g} agrees (within 10x)."
        else:
            message += (
                f" find_lr suggested {result.compared_with:.2g}, {ratio:.3g}x this: the "
                "two disagree; look at find_lr's plot before trusting either."
            )
    return message


# sweep_momentum ---------------------------------------------------------------


def momentum_name(optimizer):
    """The optimizer's momentum hyperparameter: "momentum" (SGD, RMSprop) or "beta_1" (Adam family).

    Raises:
        TypeError: for an optimizer with neither (Adagrad, Adadelta, Ftrl).
    """
    for name in _MOMENTUM_NAMES:
        if isinstance(getattr(optimizer, name, None), (int, float)):
            return name
    raise _without_momentum(type(optimizer).__name__)


def _without_momentum(kind):
    return TypeError(
        f"sweep_momentum: the optimizer {kind} has no momentum (`momentum` or `beta_1`) to sweep. Use SGD, "
        "RMSprop or an Adam-family optimizer, or skip this stage."
    )


@dataclasses.dataclass
class MomentumResult(Result):
    """Validation loss after a short run at each momentum value.

    Attributes:
        best_value: The value with the lowest validation loss, or None.
        hyperparameter: "momentum" (SGD, RMSprop) or "beta_1" (Adam family).
        values: Values swept.
        validation_losses: Validation loss after each run (NaN if diverged).
        step_losses: Per-step training losses of each run.
        learning_rate: Learning rate of every run.
        num_steps: Steps per run.
        batch_size: Per-replica batch size of the runs.
    """

    kind = "sweep_momentum"
    best_value: float | None
    hyperparameter: str
    values: list
    validation_losses: list
    step_losses: list
    learning_rate: float
    num_steps: int
    batch_size: int
    ok: bool
    message: str

    def settles(self):
        return {self.hyperparameter: self.best_value} if self.ok else {}

    def plot(self):
        """Validation loss per value (left) and per-step training loss (right)."""
        figure = Figure(figsize=(10, 4))
        left, right = figure.subplots(1, 2)
        labels = [f"{value:g}" for value in self.values]
        losses = np.asarray(self.validation_losses, dtype=float)
        colors = ["tab:red" if value == self.best_value else "tab:blue" for value in self.values]
        left.bar(labels, np.where(np.isfinite(losses), losses, 0.0), color=colors)
        left.set_xlabel(self.hyperparameter)
        left.set_ylabel("validation loss after the run")
        left.set_title(f"{self.hyperparameter} sweep at lr={self.learning_rate:.2g}")
        for label, run in zip(labels, self.step_losses):
            right.plot(np.arange(1, len(run) + 1), run, label=f"{self.hyperparameter}={label}")
        right.set_yscale("log")
        right.set_xlabel("step")
        right.set_ylabel("training loss (per step)")
        right.legend(fontsize="small")
        return figure


def _check_sweep_arguments(arguments, session):
    """`sweep_momentum`'s argument check, before anything runs (`StageSpec.check`)."""
    stage = "sweep_momentum"
    config = session.initial_optimizer_config  # As compiled: a cycling momentum left behind is no matter here.
    if not any(validation.is_number(config.get(name)) for name in _MOMENTUM_NAMES):
        raise _without_momentum(type(innermost_optimizer(session.model.optimizer)).__name__)
    validation.check_numbers(arguments["values"], "values", stage, within="[0, 1)", distinct=True)
    validation.check_int(arguments["num_steps"], "num_steps", stage)
    validation.check_number(arguments["learning_rate"], "learning_rate", stage, allow_none=True)


@stage(
    "sweep_momentum",
    requires=("learning_rate",),
    uses=("weight_decay",),
    depends_on=("batch_size",),
    given=lambda a: {"learning_rate": a["learning_rate"]} if a["learning_rate"] is not None else {},
    check=_check_sweep_arguments,
)
def sweep_momentum(ctx, *, values, num_steps, learning_rate):
    """Short runs at several momentum values; the best by validation loss (Smith 2018).

    For SGD and RMSprop the swept hyperparameter is `momentum`; for Adam,
    AdamW, Adamax, Nadam and Lion it is `beta_1`, the same moving average of
    the gradient. Every run starts from the same weights with a fresh
    optimizer at `learning_rate`.

    Args:
        ctx: The runner's `StageContext` (the validation data is required;
            the data order is the same for every run: a fair comparison).
        values: Momentum values, each in [0, 1).
        num_steps: Steps per run.
        learning_rate: Learning rate of the runs; defaults to the settled one.

    Returns:
        A `MomentumResult`.

    Raises:
        TypeError: for an optimizer without momentum.
        ValueError: without validation data, or for bad values.
    """
    stage = "sweep_momentum"
    session, pipeline, validation_pipeline, seed = ctx.session, ctx.train, ctx.validation, ctx.seed
    name = momentum_name(innermost_optimizer(session.model.optimizer))
    if validation_pipeline is None:
        raise ValueError(
            f"{stage}: momentum is judged by the validation loss (Smith 2018); pass `validation_data` to the Playbook."
        )
    learning_rate = ctx.values.get("learning_rate")
    if learning_rate is None:
        raise ValueError(
            f"{stage}: no learning rate is settled (the optimizer follows a schedule): run "
            "pb.find_lr() first, or pass `learning_rate`."
        )
    validation.check_number(learning_rate, "learning_rate", stage)
    callbacks = ctx.progress(num_steps, "Sweeping momentum: one run")
    values = sorted((float(value) for value in values), reverse=True)
    changes = ctx.optimizer_changes()
    changes.pop(name, None)
    validation_losses, step_losses, loss_key = [], [], ctx.loss_key()
    for value in values:
        model = short_runs.working_copy(session, **changes, learning_rate=float(learning_rate), **{name: value})
        order = short_runs.fixed_order(pipeline, seed)
        step_losses.append(short_runs.train_steps(model, order, num_steps, callbacks, loss_key=loss_key))
        finite = all(math.isfinite(loss) for loss in step_losses[-1])
        # The whole validation data (a PyDataset through Keras's adapter; `validation_steps` batches when given).
        whole = validation_pipeline.keras_input
        validation_losses.append(_evaluate(model, whole, loss_key, validation_pipeline.steps) if finite else math.nan)
    scored = [(loss, value) for loss, value in zip(validation_losses, values) if math.isfinite(loss)]
    best = min(scored)[1] if scored else None
    result = MomentumResult(
        best_value=best,
        hyperparameter=name,
        values=values,
        validation_losses=validation_losses,
        step_losses=step_losses,
        learning_rate=float(learning_rate),
        num_steps=num_steps,
        batch_size=pipeline.per_replica_batch_size,
        ok=best is not None,
        message="",
    )
    result.message = _momentum_message(result)
    return result


def _momentum_message(result):
    name = result.hyperparameter
    table = ", ".join(
        f"{value:g}: {loss:.4g}" if math.isfinite(loss) else f"{value:g}: diverged"
        for value, loss in zip(result.values, result.validation_losses)
    )
    if result.best_value is None:
        return (
            f"Every run diverged at learning rate {result.learning_rate:.2g}: lower "
            f"the learning rate (run find_lr) before sweeping {name} ({_MOMENTUM})."
        )
    edge = ""
    if result.best_value in (result.values[0], result.values[-1]) and len(result.values) > 2:
        edge = " The best value is at the edge of the swept range: widen it."
    return (
        f"{name}={result.best_value:g} gives the lowest validation loss after "
        f"{result.num_steps} steps at learning rate {result.learning_rate:.2g} "
        f"(validation loss by {name}: {table}) ({_MOMENTUM}).{edge}"
    )
