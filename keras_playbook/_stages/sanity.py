"""Sanity stage: check the initial loss (`check_initial_loss`).

Johnson, EECS 498 Lecture 11, step 1; CS231n's sanity checks: before tuning anything, check
that an untrained classifier scores about ln C (and a regression model about the loss of
predicting the mean). The other sanity stage, overfitting a small sample, is `overfit.py`.

References:
    Johnson, EECS 498 Lecture 11, step 1.
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
from keras_playbook import _validation as validation
from keras_playbook._journal import Result
from keras_playbook._runner import loss_on, stage

_INITIAL_LOSS = "Johnson, EECS 498 Lecture 11, step 1"


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


def _output_kind(predictions, loss_kind):
    in_unit_interval = predictions.min() >= 0.0 and predictions.max() <= 1.0
    if loss_kind == losses.BINARY or predictions.shape[-1] == 1:
        return "probabilities" if in_unit_interval else "logits"
    sums_to_one = np.allclose(predictions.sum(axis=-1), 1.0, atol=1e-3)
    return "probabilities" if in_unit_interval and sums_to_one else "logits"


def several_losses(loss):
    return isinstance(loss, (dict, list, tuple))


def _mean_loss(loss, y_true, y_pred):
    function = keras.losses.get(loss) if isinstance(loss, str) else loss
    return float(np.mean(keras.ops.convert_to_numpy(function(y_true, y_pred))))


def _check_initial_loss_arguments(arguments, session):
    """`check_initial_loss`'s argument check, before anything runs (`StageSpec.check`)."""
    stage = "check_initial_loss"
    validation.check_int(arguments["num_batches"], "num_batches", stage)
    validation.check_number(arguments["tolerance"], "tolerance", stage)


@stage("check_initial_loss", check=_check_initial_loss_arguments)
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
    session, pipeline = ctx.session, ctx.train
    sample = pipeline.sample(num_batches, seed=ctx.seed)
    x, y = sample[:2]
    model = session.model
    own_loss = model.loss is None  # A train_step/test_step of its own computes the loss (`Session.check_loss`).
    loss_key = ctx.loss_key() if own_loss else None
    with session.preserved():
        model.set_weights(session.initial_weights)
        predictions = model.predict(x, batch_size=pipeline.global_batch_size, verbose=0)
        own_measured = loss_on(model, sample, pipeline.global_batch_size, loss_key) if own_loss else None
    dependence = _input_dependence(predictions)
    if own_loss:
        return _own_loss_result(own_measured, loss_key, tolerance, len(tf.nest.flatten(y)[0]), dependence)
    if isinstance(predictions, (list, tuple, dict)) or several_losses(model.loss):
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
    if not np.all(np.isfinite(predictions)):  # Not logits, not a scale: nothing to compare with ln C.
        return _non_finite_result(predictions, x, info, tolerance, num_classes, dependence)
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


def _own_loss_result(measured, loss_key, tolerance, count, dependence):
    """`check_initial_loss` for a model whose own step computes its loss: measured, not judged against ln C."""
    ok, message = (
        True,
        (
            f"Nothing was judged: initial {loss_key} {measured:.4g}, computed by the model's own test_step with no "
            "compiled loss, so there is no expectation (ln C, the targets' variance) to compare it with. Check it "
            f"against what your loss gives for uniform guessing ({_INITIAL_LOSS})."
        ),
    )
    if dependence == 0:
        ok, message = False, _constant_output_message(count)
    return InitialLossResult(
        loss=measured,
        expected=None,
        tolerance=tolerance,
        num_classes=0,
        loss_name=loss_key,
        from_logits=False,
        output_kind="unknown",
        output_std=math.nan,
        num_examples=count,
        per_example_losses=[],
        ok=ok,
        message=message,
        checked=not ok,
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


def _non_finite_result(predictions, x, info, tolerance, num_classes, dependence):
    """The verdict on initial outputs holding NaN or inf: their source, before any reading of their values."""
    bad_rows = np.flatnonzero(~np.isfinite(predictions.reshape(len(predictions), -1)).all(axis=1))
    inputs_bad = [
        leaf
        for leaf in tf.nest.flatten(x)
        if np.issubdtype(np.asarray(leaf).dtype, np.number) and not np.all(np.isfinite(np.asarray(leaf, "float64")))
    ]
    cause = (
        "the inputs of those examples hold NaN or inf (a stream is checked over its first batches only, when the "
        "Playbook is made): clean or impute them"
        if inputs_bad
        else "the inputs are finite, so a layer overflows at the initial weights (a log of 0, a float16 "
        "overflow under mixed precision, weights initialized huge): look at the layers' outputs one by one"
    )
    message = (
        f"The model's initial outputs hold NaN or inf for {len(bad_rows)} of {len(predictions)} examples of the "
        f"sample: {cause}. One NaN makes every weight NaN at the first step ({_INITIAL_LOSS})."
    )
    return InitialLossResult(
        loss=math.nan,
        expected=info.expected_initial_loss(num_classes),
        tolerance=tolerance,
        num_classes=num_classes,
        loss_name=info.name,
        from_logits=info.from_logits,
        output_kind="non-finite",
        output_std=math.nan,
        num_examples=len(predictions),
        per_example_losses=[],
        ok=False,
        message=message,
        checked=True,
        input_dependence=dependence,
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
