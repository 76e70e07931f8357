"""Sanity stage: overfit a small sample with regularization off (`overfit_small_sample`).

Johnson, EECS 498 Lecture 11, step 2; CS231n's sanity checks: before tuning anything, check
that the model can memorize ~5-10 mini-batches with regularization off. A model that cannot
overfit a tiny sample has something fundamentally broken.

References:
    Johnson, EECS 498 Lecture 11, step 2.
    Stanford CS231n, "Neural Networks Part 3: Learning and Evaluation"
    (sanity checks).
"""

import dataclasses
import math

import keras
import tensorflow as tf
from matplotlib.figure import Figure

from keras_playbook import _losses as losses
from keras_playbook import _short_runs as short_runs
from keras_playbook import _validation as validation
from keras_playbook._data import as_model_input
from keras_playbook._journal import Result
from keras_playbook._loss_key import FirstStepCheck, loss_key_in, read_loss
from keras_playbook._runner import stage
from keras_playbook._session import read_value
from keras_playbook._stages.sanity import several_losses

_OVERFIT = "Johnson, EECS 498 Lecture 11, step 2"


@dataclasses.dataclass
class OverfitResult(Result):
    """How well the model memorized a small sample with regularization off.

    Attributes:
        verdict: "memorized", "not_decreasing", "diverged", "too_slow", or
            "unknown_floor" (a loss without a known lowest value that went
            to or below zero: "near zero" means nothing for it; pass
            `target_loss`).
        num_examples: Size of the sample.
        steps: Training steps run.
        learning_rate: Learning rate used.
        initial_loss: Loss on the sample before training.
        final_loss: Training loss of the last pass (NaN if diverged).
        final_accuracy: Training accuracy of the last pass, or None when
            the loss is not a classification loss.
        target_loss: Loss counted as "near zero".
        losses: Training loss after each pass over the sample.
        accuracies: Training accuracy after each pass (empty without one).
        steps_per_pass: Steps in one pass over the sample.
        regularization_disabled: What was turned off in the working copy.
        regularization_left_on: What could not be turned off (losses a
            layer adds itself with `add_loss`).
        learning_rate_source: Where the rate came from: "given", "settled"
            (an earlier stage's), "range test" (a short range test on the
            sample) or "optimizer" (the compiled rate, when the range test
            found none).
        checked: False when memorizing could not be judged
            ("unknown_floor"); the result is then OK but says NOT CHECKED.
    """

    kind = "overfit_small_sample"
    verdict: str
    num_examples: int
    steps: int
    learning_rate: float
    initial_loss: float
    final_loss: float
    final_accuracy: float | None
    target_loss: float
    losses: list
    accuracies: list
    steps_per_pass: int
    regularization_disabled: list
    ok: bool
    message: str
    regularization_left_on: list = dataclasses.field(default_factory=list)
    learning_rate_source: str = "given"
    checked: bool = dataclasses.field(default=True, kw_only=True)

    def summary(self):
        verdict = "NOT CHECKED" if not self.checked and self.ok else ("OK" if self.ok else "CHECK")
        return f"{self.kind}: {verdict} - {self.message}"

    def plot(self):
        """Training loss (log scale) and accuracy against steps."""
        figure = Figure(figsize=(6, 4))
        axes = figure.add_subplot()
        steps = [self.steps_per_pass * (index + 1) for index in range(len(self.losses))]
        axes.plot([0] + steps, [self.initial_loss] + list(self.losses), marker=".", label="loss")
        axes.axhline(self.target_loss, color="grey", linestyle=":", label="target loss")
        axes.set_yscale("log")
        axes.set_xlabel("step")
        axes.set_ylabel("training loss on the sample")
        if self.accuracies:
            twin = axes.twinx()
            twin.plot(steps, self.accuracies, color="tab:green", label="accuracy")
            twin.set_ylim(0, 1.05)
            twin.set_ylabel("accuracy")
        axes.set_title(f"Overfit a small sample: {self.verdict}")
        axes.legend(loc="upper right")
        return figure


MEMORIZED_ACCURACY = 0.99  # Training accuracy on the sample that counts as memorized.


class _StopWhenMemorized(keras.callbacks.Callback):
    """Stops training once a pass over the sample is fully right or near-zero loss."""

    def __init__(self, target_loss, loss_key="loss"):
        super().__init__()
        self.target_loss = target_loss
        self.loss_key = loss_key

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if logs.get("accuracy", 0.0) >= MEMORIZED_ACCURACY or logs.get(self.loss_key, math.inf) <= self.target_loss:
            self.model.stop_training = True


def _chance_loss(session, model, x):
    """ln C for the model's classifier output (ln 2 for a binary one), or None when not a known classification loss."""
    one = as_model_input(tf.nest.map_structure(lambda array: array[:1], x))
    with session.scope():
        width = int(keras.ops.shape(tf.nest.flatten(model(one, training=False))[0])[-1])
    return losses.describe_loss(session.model.loss).expected_initial_loss(width)


def _memorized(loss, accuracy, target_loss):
    return (accuracy is not None and accuracy >= MEMORIZED_ACCURACY) or (math.isfinite(loss) and loss <= target_loss)


def _check_overfit_arguments(arguments, session):
    """`overfit_small_sample`'s argument check, before anything runs (`StageSpec.check`)."""
    stage = "overfit_small_sample"
    validation.check_int(arguments["num_batches"], "num_batches", stage)
    validation.check_int(arguments["max_steps"], "max_steps", stage)
    validation.check_number(arguments["learning_rate"], "learning_rate", stage, allow_none=True)
    validation.check_number(
        arguments["target_loss"],
        "target_loss",
        stage,
        within=None,
        allow_none=True,
        hint="it may be negative, for such a loss",
    )


@stage(
    "overfit_small_sample",
    uses=("learning_rate",),
    given=lambda a: {"learning_rate": a["learning_rate"]} if a["learning_rate"] is not None else {},
    check=_check_overfit_arguments,
)
def overfit_small_sample(ctx, *, num_batches, max_steps, learning_rate, target_loss):
    """Trains a copy of the model to memorize a few batches, regularization off.

    A copy starting from the Playbook's initial weights, with dropout, noise,
    random augmentation, weight regularizers and the optimizer's weight decay
    turned off, trains on `num_batches` global batches until the training
    accuracy reaches 99% or the loss falls to `target_loss`, at most
    `max_steps` steps. The rate is one that can memorize: the one given (or
    settled), else what a short range test on the sample suggests (at the
    compiled default rate many healthy models need far more steps). The
    user's model, its regularization and its optimizer are not touched.

    Args:
        ctx: The runner's `StageContext`.
        num_batches: Global batches in the sample (Johnson: 5-10).
        max_steps: Step budget.
        learning_rate: Learning rate; None takes the one a stage settled
            (`find_lr`'s), else runs a short range test on the sample
            (`find_lr`'s rule) and uses its suggestion, falling back to the
            optimizer's rate when it finds none.
        target_loss: Loss counted as memorized (any finite number: it may be
            negative); defaults to 1% of the way from the initial loss down
            to the lowest the loss can take (0 for Keras's losses, -1 for
            cosine similarity), and for a classifier at most 1% of ln C (a
            loss that starts far above chance, as with unnormalized inputs,
            must still end near zero, not merely 99% lower). A loss this library does not know that goes
            to or below zero, or one a `train_step` of its own computes (no
            compiled loss), gets the verdict "unknown_floor" (not checked)
            unless it is given.

    Returns:
        An `OverfitResult`.

    References:
        Johnson, EECS 498 Lecture 11, step 2: overfit a small sample (~5-10 mini-batches) to 100%
        training accuracy with regularization off.
    """
    session, pipeline, seed = ctx.session, ctx.train, ctx.seed
    source = "given"
    if learning_rate is None and ctx.measured("learning_rate") is not None:
        learning_rate, source = ctx.measured("learning_rate"), "settled"
    sample = pipeline.sample(num_batches, seed=seed)
    num_examples = len(tf.nest.flatten(sample[0])[0])
    steps_per_pass = math.ceil(num_examples / pipeline.global_batch_size)
    classification = (
        not several_losses(session.model.loss) and losses.describe_loss(session.model.loss).kind is not None
    )

    source = source if learning_rate is not None else "range test"
    if learning_rate is None:
        learning_rate = _sample_range_test(session, pipeline, sample, seed)
        if learning_rate is None:  # The rate in force from the journal: the set-up's, as compiled.
            learning_rate, source = ctx.values.get("learning_rate"), "optimizer"
    model = short_runs.working_copy(
        session,
        weights=short_runs.INITIAL,
        regularization=False,
        metrics=["accuracy"] if classification else None,
        **({} if learning_rate is None else {"learning_rate": learning_rate}),
    )
    disabled = short_runs.regularization_in(session)
    left_on = short_runs.losses_left_on(
        model, tf.nest.map_structure(lambda a: a[: pipeline.global_batch_size], sample[0])
    )
    used_learning_rate = float(read_value(model.optimizer.learning_rate))
    dataset = short_runs.batched(sample, pipeline.global_batch_size, shuffle_seed=seed)
    loss_key = ctx.loss_key()
    initial = {
        "loss": read_loss(model.evaluate(dataset, verbose=0, return_dict=True), loss_key, "the model's test_step")
    }
    # "Near zero" is 1% of the way from the initial loss down to the lowest the loss can take; for a
    # classifier, never more than 1% of ln C: from a loss far above chance (unnormalized inputs), 1% of
    # the way down can still be worse than guessing.
    own_loss = session.model.loss is None  # A step of its own computes it: its lowest value is unknown.
    if own_loss:
        floor = None
    else:
        floor = 0.0 if several_losses(session.model.loss) else losses.describe_loss(session.model.loss).minimum
    lowest = 0.0 if floor is None else floor
    span = initial["loss"] - lowest
    chance = _chance_loss(session, model, sample[0]) if classification else None
    if chance is not None:
        span = min(span, chance)
    target = target_loss if target_loss is not None else lowest + 0.01 * span
    history = model.fit(
        dataset,
        epochs=math.ceil(max_steps / steps_per_pass),
        callbacks=[
            FirstStepCheck(loss_key, "overfit_small_sample"),
            keras.callbacks.TerminateOnNaN(),
            _StopWhenMemorized(target, loss_key),
        ]
        + ctx.progress(max_steps, "Overfitting a small sample"),
        shuffle=False,  # The dataset reshuffles itself.
        verbose=0,
    )
    train_losses = [
        float(value) for value in history.history[loss_key_in(history.history, loss_key, "the History of fit")]
    ]
    accuracies = [float(value) for value in history.history.get("accuracy", [])]
    final_loss = train_losses[-1]
    final_accuracy = accuracies[-1] if classification and accuracies else None  # A step of its own may log none.
    unknown_floor = (
        target_loss is None and floor is None and (own_loss or initial["loss"] <= 0 or min(train_losses) < 0)
    )
    if not all(math.isfinite(value) for value in train_losses):
        verdict = "diverged"
    elif final_accuracy is not None and final_accuracy >= MEMORIZED_ACCURACY:
        verdict = "memorized"
    elif unknown_floor:
        verdict = "unknown_floor"
    elif _memorized(final_loss, final_accuracy, target):
        verdict = "memorized"
    elif initial["loss"] - min(train_losses) < 0.1 * abs(initial["loss"] - lowest):
        verdict = "not_decreasing"
    else:
        verdict = "too_slow"
    result = OverfitResult(
        verdict=verdict,
        num_examples=num_examples,
        steps=len(train_losses) * steps_per_pass,
        learning_rate=used_learning_rate,
        initial_loss=float(initial["loss"]),
        final_loss=final_loss,
        final_accuracy=final_accuracy,
        target_loss=float(target),
        losses=train_losses,
        accuracies=accuracies,
        steps_per_pass=steps_per_pass,
        regularization_disabled=sorted(disabled),
        ok=verdict in ("memorized", "unknown_floor"),
        message="",
        regularization_left_on=left_on,
        learning_rate_source=source,
        checked=verdict != "unknown_floor",
    )
    result.message = _overfit_message(result)
    return result


def _sample_range_test(session, pipeline, sample, seed):
    """The rate a short range test on the sample suggests (None when it finds none)."""
    from keras_playbook._data import DataPipeline
    from keras_playbook._stages import lr_range

    count = len(tf.nest.flatten(sample[0])[0])
    sample_pipeline = DataPipeline(
        tf.data.Dataset.from_tensor_slices(sample),
        per_replica_batch_size=pipeline.per_replica_batch_size,
        num_replicas=pipeline.num_replicas,
        num_examples=count,
        shuffle=True,
        seed=seed,
        arrays=sample,
    )
    found = lr_range.range_test(
        session,
        sample_pipeline,
        num_steps=60,
        min_lr=1e-6,
        max_lr=10.0,
        repeats=1,
        optimizer_changes={"weight_decay": None},
        seed=seed,
    )
    return found.suggested_lr


def _overfit_message(result):
    loss_path = f"loss {result.initial_loss:.3g} -> {result.final_loss:.3g}"
    accuracy = "" if result.final_accuracy is None else f", accuracy {result.final_accuracy:.0%}"
    lr = result.learning_rate
    where = {
        "given": "the rate given",
        "settled": "the settled rate",
        "range test": "the rate a range test on the sample suggests",
        "optimizer": "the optimizer's rate as compiled (a range test on the sample found none)",
    }.get(result.learning_rate_source, "the rate given")
    at = f"learning rate {lr:.3g} ({where})"
    off = ", ".join(sorted({item.split(":")[0] for item in result.regularization_disabled})) or "nothing to turn off"
    left = (
        (
            f" Left on: {', '.join(result.regularization_left_on)} (a layer's own add_loss cannot be turned off; "
            "if it fights the data loss, memorizing may need it removed)."
        )
        if result.regularization_left_on
        else ""
    )
    if result.verdict == "memorized":
        return (
            f"Memorized {result.num_examples} examples in {result.steps} steps "
            f"({loss_path}{accuracy}) at {at}, with regularization off ({off}): the model and the "
            f"training loop can learn ({_OVERFIT}).{left}"
        )
    if result.verdict == "unknown_floor":
        return (
            f"Nothing was judged: the loss went from {result.initial_loss:.4g} to {result.final_loss:.4g}{accuracy} "
            f"in {result.steps} steps at {at}, and the lowest this loss can take is not known (a loss that can "
            "go below zero, or one a train_step of its own computes, as a VAE's), so 'near zero' does not mean "
            f"memorized. Pass target_loss= (the loss of a memorized sample) to judge it ({_OVERFIT}).{left}"
        )
    if result.verdict == "diverged":
        return (
            f"The loss exploded to NaN/inf within {result.steps} steps at {at}: the learning rate is too "
            f"high or the initialization is bad ({_OVERFIT}). Try learning_rate={lr / 10:.3g}, check "
            f"the initializers, and look for a bug in the model or the loss.{left}"
        )
    if result.verdict == "not_decreasing":
        return (
            f"The loss is not going down ({loss_path} in {result.steps} steps) at {at}, with regularization "
            f"off ({off}): the model cannot learn this sample"
            + (
                f"; the learning rate may be too low (try learning_rate={lr * 10:.3g} or leave it to the range test)"
                if result.learning_rate_source != "range test"
                else ""
            )
            + ". Check that the loss matches the output "
            "(from_logits, the number of units), that the labels belong to the inputs, and that no layer is "
            f"dead (check_initial_loss) ({_OVERFIT}).{left}"
        )
    return (
        f"The loss went down ({loss_path}{accuracy}) but the sample was not "
        f"memorized within {result.steps} steps at {at}, with regularization off ({off}): give the model "
        f"more capacity, or raise `max_steps`; a model that cannot overfit a tiny sample has a problem "
        f"({_OVERFIT}).{left}"
    )
