"""Sanity stages: check the initial loss, overfit a small sample.

Johnson, EECS 498 Lecture 11, steps 1 and 2; CS231n's sanity checks: before
tuning anything, check that an untrained classifier scores about ln C, and
that the model can memorize ~5-10 mini-batches with regularization off. A
model that cannot overfit a tiny sample has something fundamentally broken.

References:
    Johnson, EECS 498 Lecture 11, steps 1-2.
    Stanford CS231n, "Neural Networks Part 3: Learning and Evaluation"
    (sanity checks).
"""

import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf
from matplotlib.figure import Figure

from keras_playbook import _losses as losses
from keras_playbook import _short_runs as short_runs
from keras_playbook import _validation as validation
from keras_playbook._journal import Result
from keras_playbook._runner import stage
from keras_playbook._session import read_value

_INITIAL_LOSS = "Johnson, EECS 498 Lecture 11, step 1"
_OVERFIT = "Johnson, EECS 498 Lecture 11, step 2"


@dataclasses.dataclass
class InitialLossResult(Result):
    """The untrained model's loss against the loss of uniform guessing.

    Attributes:
        loss: Mean loss of the model at its initial weights on the sample.
        expected: ln C (softmax cross-entropy over C classes) or ln 2 (binary
            cross-entropy); None when the loss has no such expectation.
        tolerance: Accepted relative deviation from `expected`.
        num_classes: Size of the model's output axis.
        loss_name: The compiled loss's name.
        from_logits: Whether the loss expects logits.
        output_kind: "logits" or "probabilities", read off the outputs.
        output_std: Standard deviation of the model's raw outputs.
        num_examples: Examples evaluated.
        per_example_losses: Loss of each example (for `plot`).
        checked: Whether anything was checked: False when no expectation
            exists for the loss (or the model has several outputs), in
            which case `ok` only means nothing was found wrong.
        input_dependence: How much the outputs vary across examples
            (their standard deviation over the batch axis, the largest over
            output units); 0 means the output does not depend on the input.
    """

    kind = "check_initial_loss"
    loss: float
    expected: float | None
    tolerance: float
    num_classes: int
    loss_name: str
    from_logits: bool
    output_kind: str
    output_std: float
    num_examples: int
    per_example_losses: list
    ok: bool
    message: str
    checked: bool = True
    input_dependence: float | None = None

    def summary(self):
        verdict = "NOT CHECKED" if self.checked is False and self.ok else ("OK" if self.ok else "CHECK")
        return f"{self.kind}: {verdict} - {self.message}"

    def plot(self):
        """Histogram of per-example initial losses, with ln C (or the targets' variance) marked."""
        figure = Figure(figsize=(6, 4))
        axes = figure.add_subplot()
        values = np.asarray(self.per_example_losses, dtype=float)
        values = values[np.isfinite(values)]
        axes.hist(values, bins=30, color="tab:blue", alpha=0.7)
        axes.axvline(self.loss, color="tab:blue", label=f"mean = {self.loss:.3g}")
        if self.expected is not None:
            axes.axvline(
                self.expected,
                color="tab:red",
                linestyle="--",
                label=f"expected = {self.expected:.3g}",
            )
        axes.set_xlabel("initial loss per example")
        axes.set_ylabel("examples")
        axes.set_title("Initial loss (" + ("OK" if self.ok else "check") + ")")
        axes.legend()
        return figure


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


def _output_kind(predictions, loss_kind):
    in_unit_interval = predictions.min() >= 0.0 and predictions.max() <= 1.0
    if loss_kind == losses.BINARY or predictions.shape[-1] == 1:
        return "probabilities" if in_unit_interval else "logits"
    sums_to_one = np.allclose(predictions.sum(axis=-1), 1.0, atol=1e-3)
    return "probabilities" if in_unit_interval and sums_to_one else "logits"


def _several_losses(loss):
    return isinstance(loss, (dict, list, tuple))


def _mean_loss(loss, y_true, y_pred):
    function = keras.losses.get(loss) if isinstance(loss, str) else loss
    return float(np.mean(keras.ops.convert_to_numpy(function(y_true, y_pred))))


@stage("check_initial_loss")
def check_initial_loss(ctx, *, num_batches, tolerance):
    """Compares the untrained model's loss with the loss of uniform guessing.

    A classifier at initialization should predict close to uniformly, so its
    softmax cross-entropy over C classes is about ln C (binary cross-entropy:
    ln 2). A loss far above it means outputs that are too confident from the
    start (inputs not normalized, a last layer initialized too large); far
    below it means the model already knows something (pretrained weights, or
    labels leaking into the inputs). The outputs are also inspected for a
    mismatch between `from_logits` and the model's last activation.

    The model is evaluated at the weights the Playbook started from, in
    inference mode (BatchNormalization uses its moving statistics); its
    current weights and optimizer state are restored afterwards.

    Args:
        ctx: The runner's `StageContext`.
        num_batches: Global batches to evaluate.
        tolerance: Accepted relative deviation from the expected loss. The
            default, 50%, lets through what Keras's default initializers
            give (random logits of scale s add about s**2/2 nats to ln C,
            s**2/8 to ln 2: typically 10-40%) and flags the gross errors the
            check exists for (unnormalized inputs give many times ln C).

    Returns:
        An `InitialLossResult`.

    References:
        Johnson, EECS 498 Lecture 11, step 1: check initial loss (expect log C).
    """
    stage = "check_initial_loss"
    validation.check_int(num_batches, "num_batches", stage)
    validation.check_number(tolerance, "tolerance", stage)
    session, pipeline = ctx.session, ctx.train
    x, y = pipeline.sample(num_batches, seed=ctx.seed)[:2]
    model = session.model
    with session.preserved():
        model.set_weights(session.initial_weights)
        predictions = model.predict(x, batch_size=pipeline.global_batch_size, verbose=0)
    dependence = _input_dependence(predictions)
    if isinstance(predictions, (list, tuple, dict)) or _several_losses(model.loss):
        ok, message = (
            True,
            (
                "Nothing was checked: no initial-loss expectation is computed for a model "
                "with several outputs or losses; check each output's loss by hand "
                f"({_INITIAL_LOSS})."
            ),
        )
        if dependence == 0:
            ok, message = False, _constant_output_message(len(tf.nest.flatten(y)[0]))
        return InitialLossResult(
            loss=math.nan,
            expected=None,
            tolerance=tolerance,
            num_classes=0,
            loss_name=str(model.loss),
            from_logits=False,
            output_kind="unknown",
            output_std=math.nan,
            num_examples=len(tf.nest.flatten(y)[0]),
            per_example_losses=[],
            ok=ok,
            message=message,
            checked=not ok,
            input_dependence=dependence,
        )
    predictions = np.asarray(predictions, dtype=np.float64)
    info = losses.describe_loss(model.loss)
    num_classes = int(predictions.shape[-1])
    expected = info.expected_initial_loss(num_classes)
    regression = expected is None and info.name in _REGRESSION_LOSSES
    if regression:
        per_example = _regression_per_example(info.name, y, predictions)
        measured = float(np.mean(per_example))
        expected = _regression_baseline(info.name, y, predictions.shape)
    elif expected is None:
        per_example = []
        measured = _mean_loss(model.loss, y, predictions.astype(np.float32))
    else:
        per_example = info.per_example(y, predictions.astype(np.float32))
        measured = float(np.mean(per_example))
    output_kind = _output_kind(predictions, info.kind) if not regression else "values"
    checked = expected is not None
    if dependence == 0 and not _zero_last_layer(model):
        ok, message, checked = False, _constant_output_message(len(predictions)), True
    elif regression:
        ok, message = _regression_verdict(info.name, measured, expected, y, predictions)
    else:
        ok, message = _initial_loss_verdict(
            info,
            measured,
            expected,
            tolerance,
            output_kind,
            float(predictions.std()),
            num_classes,
        )
    return InitialLossResult(
        loss=measured,
        expected=expected,
        tolerance=tolerance,
        num_classes=num_classes,
        loss_name=info.name,
        from_logits=info.from_logits,
        output_kind=output_kind,
        output_std=float(predictions.std()),
        num_examples=len(predictions),
        per_example_losses=list(per_example),
        ok=ok,
        message=message,
        checked=checked,
        input_dependence=dependence,
    )


# Regression: the loss of predicting the mean -----------------------------------

_REGRESSION_LOSSES = ("mean_squared_error", "mean_absolute_error")
REGRESSION_FACTOR = 3.0  # An initial loss above this many times the mean's loss is "far above".


def _targets(y, shape):
    return np.asarray(y, dtype=np.float64).reshape(shape)


def _regression_per_example(name, y, predictions):
    error = _targets(y, predictions.shape) - predictions
    values = error**2 if name == "mean_squared_error" else np.abs(error)
    return values.reshape(len(values), -1).mean(axis=1)


def _regression_baseline(name, y, shape):
    """The loss of predicting the targets' mean (MSE: their variance) or median (MAE)."""
    targets = _targets(y, shape)
    if name == "mean_squared_error":
        return float(np.mean((targets - targets.mean(axis=0)) ** 2))
    return float(np.mean(np.abs(targets - np.median(targets, axis=0))))


def _regression_verdict(name, measured, baseline, y, predictions):
    targets = _targets(y, predictions.shape)
    mean, spread = float(np.mean(targets)), float(np.std(targets))
    what = "variance" if name == "mean_squared_error" else "mean absolute deviation"
    if baseline <= 0:
        return True, f"The targets are constant: nothing to learn ({_INITIAL_LOSS})."
    ratio = measured / baseline
    if ratio <= REGRESSION_FACTOR:
        return True, (
            f"Initial {name} {measured:.4g} is {ratio:.2g}x the targets' {what} {baseline:.4g} (the loss "
            "of predicting their mean): the untrained model starts where it should, near the mean "
            f"({_INITIAL_LOSS})."
        )
    if abs(mean) > spread:
        cause = (
            f"the targets are not centred (mean {mean:.4g}, standard deviation {spread:.4g}) while an untrained "
            "model predicts near 0. Standardize the targets (subtract the mean, divide by the standard "
            "deviation; undo it on the predictions), or initialize the last layer's bias at the mean"
        )
    else:
        cause = (
            f"the untrained outputs vary too much (standard deviation {float(predictions.std()):.3g} against "
            f"the targets' {spread:.3g}): inputs not normalized, or a last layer initialized too large"
        )
    return False, (
        f"Initial {name} {measured:.4g} is {ratio:.3g}x the targets' {what} {baseline:.4g} (the loss of "
        f"predicting their mean): {cause} ({_INITIAL_LOSS}; CS231n)."
    )


# Outputs that do not depend on the inputs ------------------------------------------


def _input_dependence(predictions):
    """The largest standard deviation over examples of any output unit (0: a constant output)."""
    spreads = [
        float(np.max(np.std(np.asarray(p, dtype=np.float64).reshape(len(p), -1), axis=0)))
        for p in tf.nest.flatten(predictions)
        if np.size(p)
    ]
    return max(spreads) if spreads else None


def _zero_last_layer(model):
    """Whether the last weighted layer's kernel is all zeros (a zero-initialized head: constant on purpose)."""
    layers = [layer for layer in model._flatten_layers(include_self=False, recursive=True) if layer.weights]
    kernel = getattr(layers[-1], "kernel", None) if layers else None
    return kernel is not None and not np.any(keras.ops.convert_to_numpy(kernel))


def _constant_output_message(count):
    return (
        f"The untrained model gives the same output for all {count} examples: its output does not depend "
        "on its input. Look for a dead layer (every ReLU off, e.g. from a large negative bias), a path that "
        "multiplies by zero, inputs that never reach the output, or a backbone that expects another input "
        f"range (keras.applications preprocessing) ({_INITIAL_LOSS}; CS231n)."
    )


def _initial_loss_verdict(info, measured, expected, tolerance, output_kind, output_std, num_classes):
    if expected is None:
        return True, (
            f"Nothing was checked: initial loss {measured:.4g}, and no expectation exists for loss "
            f"{info.name!r} (ln C applies to cross-entropy, the targets' variance to mean squared "
            f"error) ({_INITIAL_LOSS})."
        )
    target = "ln 2" if info.kind == losses.BINARY else f"ln {num_classes}"
    if output_kind == "logits" and not info.from_logits:
        return False, (
            f"The model outputs logits (values outside [0, 1] or rows not summing "
            f"to 1) but the loss {info.name!r} has from_logits=False, so it "
            "treats them as probabilities. Pass "
            f"keras.losses.{_class_name(info.name)}(from_logits=True), or end "
            f"the model with a softmax/sigmoid activation ({_INITIAL_LOSS})."
        )
    if output_kind == "probabilities" and info.from_logits:
        return False, (
            f"The model ends in a softmax/sigmoid (outputs are probabilities) but "
            f"the loss {info.name!r} has from_logits=True and applies it again: "
            f"the loss sits near {target} by accident and its gradients are "
            "squashed. Remove the final activation or set from_logits=False "
            f"({_INITIAL_LOSS})."
        )
    deviation = (measured - expected) / expected
    if abs(deviation) <= tolerance:
        return True, (
            f"Initial loss {measured:.4g} is close to {target} = {expected:.4g} "
            f"(within {tolerance:.0%}): the model starts by guessing uniformly, as "
            f"an untrained classifier should ({_INITIAL_LOSS})."
        )
    if deviation > 0:
        return False, (
            f"Initial loss {measured:.4g} is {deviation:.0%} above {target} = "
            f"{expected:.4g}: the untrained model is confidently wrong (output "
            f"std {output_std:.3g}). Likely causes: inputs not normalized (scale "
            "them to mean 0, std 1 or to [0, 1]), or a last layer initialized "
            "too large (use a smaller initializer or zero bias) "
            f"({_INITIAL_LOSS})."
        )
    return False, (
        f"Initial loss {measured:.4g} is {-deviation:.0%} below {target} = "
        f"{expected:.4g}, better than chance before any training: expected for "
        "pretrained weights; otherwise suspect labels leaking into the inputs or "
        f"a loss that does not match the labels ({_INITIAL_LOSS})."
    )


def _class_name(function_name):
    return "".join(part.capitalize() for part in function_name.split("_"))


# Overfitting a small sample ------------------------------------------------

MEMORIZED_ACCURACY = 0.99  # Training accuracy on the sample that counts as memorized.


class _StopWhenMemorized(keras.callbacks.Callback):
    """Stops training once a pass over the sample is fully right or near-zero loss."""

    def __init__(self, target_loss):
        super().__init__()
        self.target_loss = target_loss

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if logs.get("accuracy", 0.0) >= MEMORIZED_ACCURACY or logs.get("loss", math.inf) <= self.target_loss:
            self.model.stop_training = True


def _memorized(loss, accuracy, target_loss):
    return (accuracy is not None and accuracy >= MEMORIZED_ACCURACY) or (math.isfinite(loss) and loss <= target_loss)


@stage(
    "overfit_small_sample",
    uses=("learning_rate",),
    given=lambda a: {"learning_rate": a["learning_rate"]} if a["learning_rate"] is not None else {},
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
            cosine similarity). A loss this library does not know that goes
            to or below zero gets the verdict "unknown_floor" (not checked)
            unless it is given.

    Returns:
        An `OverfitResult`.

    References:
        Johnson, EECS 498 Lecture 11, step 2: overfit a small sample (~5-10 mini-batches) to 100%
        training accuracy with regularization off.
    """
    stage = "overfit_small_sample"
    validation.check_int(num_batches, "num_batches", stage)
    validation.check_int(max_steps, "max_steps", stage)
    if learning_rate is not None:
        validation.check_number(learning_rate, "learning_rate", stage)
    validation.check_number(
        target_loss, "target_loss", stage, within=None, allow_none=True, hint="it may be negative, for such a loss"
    )
    session, pipeline, seed = ctx.session, ctx.train, ctx.seed
    source = "given"
    if learning_rate is None and ctx.measured("learning_rate") is not None:
        learning_rate, source = ctx.measured("learning_rate"), "settled"
    sample = pipeline.sample(num_batches, seed=seed)
    num_examples = len(tf.nest.flatten(sample[0])[0])
    steps_per_pass = math.ceil(num_examples / pipeline.global_batch_size)
    classification = (
        not _several_losses(session.model.loss) and losses.describe_loss(session.model.loss).kind is not None
    )

    source = source if learning_rate is not None else "range test"
    if learning_rate is None:
        learning_rate = _sample_range_test(session, pipeline, sample, seed)
        if learning_rate is None:
            source = "optimizer"
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
    initial = model.evaluate(dataset, verbose=0, return_dict=True)
    # "Near zero" is 1% of the way from the initial loss down to the lowest the loss can take.
    floor = 0.0 if _several_losses(session.model.loss) else losses.describe_loss(session.model.loss).minimum
    lowest = 0.0 if floor is None else floor
    target = target_loss if target_loss is not None else lowest + 0.01 * (initial["loss"] - lowest)
    history = model.fit(
        dataset,
        epochs=math.ceil(max_steps / steps_per_pass),
        callbacks=[keras.callbacks.TerminateOnNaN(), _StopWhenMemorized(target)]
        + ctx.progress(max_steps, "Overfitting a small sample"),
        shuffle=False,  # The dataset reshuffles itself.
        verbose=0,
    )
    train_losses = [float(value) for value in history.history.get("loss", [])]
    accuracies = [float(value) for value in history.history.get("accuracy", [])]
    final_loss = train_losses[-1]
    final_accuracy = accuracies[-1] if classification else None
    unknown_floor = target_loss is None and floor is None and (initial["loss"] <= 0 or min(train_losses) < 0)
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
        "optimizer": "the optimizer's rate (a range test on the sample found none)",
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
            f"in {result.steps} steps at {at}, and this loss can go below zero, so 'near zero' does not mean "
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
