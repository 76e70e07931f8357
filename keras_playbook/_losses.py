"""What the Playbook needs to know about a compiled loss.

`describe_loss` reads a Keras loss (a name, a function or a `keras.losses.Loss`)
and says which classification family it belongs to, whether it takes logits,
and the loss a model predicting uniformly at random should get (ln C for
softmax cross-entropy, ln 2 for binary cross-entropy; Johnson, EECS 498 Lecture 11, step 1).
`check_labels_fit` compares labels with the model's output before any training.

References:
    Johnson, EECS 498 Lecture 11, step 1 (initial loss ln C).
"""

import dataclasses
import math

import keras
import numpy as np

SPARSE_CATEGORICAL = "sparse_categorical_crossentropy"
CATEGORICAL = "categorical_crossentropy"
BINARY = "binary_crossentropy"
CROSSENTROPY_KINDS = (SPARSE_CATEGORICAL, CATEGORICAL, BINARY)
# Losses that compare labels and outputs element for element: their shapes must match.
ELEMENTWISE_LOSSES = (
    "mean_squared_error",
    "mean_absolute_error",
    "mean_absolute_percentage_error",
    "mean_squared_logarithmic_error",
    "huber",
    "log_cosh",
    "cosine_similarity",
)

# Other Keras losses that are never negative.
_OTHER_KERAS_LOSSES = (
    "hinge",
    "squared_hinge",
    "categorical_hinge",
    "kl_divergence",
    "poisson",
    "binary_focal_crossentropy",
    "categorical_focal_crossentropy",
    "dice",
    "tversky",
    "mean_squared_error",
    "mean_absolute_error",
)

_PER_EXAMPLE_FUNCTIONS = {
    SPARSE_CATEGORICAL: keras.losses.sparse_categorical_crossentropy,
    CATEGORICAL: keras.losses.categorical_crossentropy,
    BINARY: keras.losses.binary_crossentropy,
}


@dataclasses.dataclass(frozen=True)
class LossInfo:
    """A loss as the sanity stages see it.

    Attributes:
        name: The loss's name (e.g. `"sparse_categorical_crossentropy"`).
        kind: One of the three cross-entropy names, or None for any other
            loss (no expectation at initialization exists for those).
        from_logits: Whether the loss applies softmax/sigmoid itself.
    """

    name: str
    kind: str | None
    from_logits: bool

    @property
    def minimum(self):
        """The lowest value the loss can take: -1 for cosine similarity, 0 for Keras's other losses, else None.

        None for a loss this library does not know (a custom function may go
        below zero, as a Gaussian negative log-likelihood does).
        """
        if self.name == "cosine_similarity":
            return -1.0
        if self.kind is not None or self.name in ELEMENTWISE_LOSSES or self.name in _OTHER_KERAS_LOSSES:
            return 0.0
        return None

    def expected_initial_loss(self, num_classes):
        """Returns the loss of uniform predictions, or None if unknown.

        Args:
            num_classes: Size of the model's last output axis.
        """
        if self.kind == BINARY:
            return math.log(2.0)
        if self.kind in (SPARSE_CATEGORICAL, CATEGORICAL) and num_classes >= 2:
            return math.log(num_classes)
        return None

    def per_example(self, y_true, y_pred):
        """Returns the loss of each example as a NumPy vector."""
        function = _PER_EXAMPLE_FUNCTIONS[self.kind]
        y_true = np.asarray(y_true)
        if self.kind == BINARY and y_true.ndim == np.ndim(y_pred) - 1:
            y_true = y_true[..., None]  # (batch,) labels for a (batch, 1) output.
        values = function(
            y_true.astype(np.float32) if self.kind != SPARSE_CATEGORICAL else y_true,
            y_pred,
            from_logits=self.from_logits,
        )
        values = keras.ops.convert_to_numpy(values)
        return values.reshape(len(values), -1).mean(axis=1)


def describe_loss(loss):
    """Describes a Keras loss given as a name, a function or a Loss object.

    Args:
        loss: What was (or will be) passed to `model.compile(loss=...)`.

    Returns:
        A `LossInfo`.
    """
    if isinstance(loss, str):
        loss = keras.losses.get(loss)
    from_logits = False
    if isinstance(loss, keras.losses.Loss):
        from_logits = bool(loss.get_config().get("from_logits", False))
        function = getattr(loss, "fn", None)
        name = function.__name__ if function is not None else loss.name
    else:
        name = getattr(loss, "__name__", type(loss).__name__)
    kind = name if name in CROSSENTROPY_KINDS else None
    return LossInfo(name=name, kind=kind, from_logits=from_logits)


def check_labels_fit(info, labels, output_shape, source="training data"):
    """Raises if labels cannot be scored against the model's output.

    Args:
        info: The `LossInfo` of the compiled loss.
        labels: NumPy labels (all of them, or the first batches).
        output_shape: The model's output shape, batch axis first.
        source: Where the labels come from, for the message.

    Raises:
        ValueError: naming the labels' shape or values and the output shape.
    """
    num_classes = output_shape[-1]
    labels = np.asarray(labels)
    hint = f"The model's output shape is {tuple(output_shape)}."
    if info.kind == SPARSE_CATEGORICAL:
        if num_classes == 1:
            raise ValueError(
                f"{info.name} needs one output unit per class, but the model "
                f"has 1. {hint} Use loss='binary_crossentropy' for two "
                "classes with one sigmoid unit, or give the last layer C units."
            )
        if labels.ndim > len(output_shape) or (labels.ndim == len(output_shape) and labels.shape[-1] != 1):
            raise ValueError(
                f"{info.name} expects integer class ids, but the labels of the "
                f"{source} have shape {labels.shape}. {hint} For one-hot labels "
                "use loss='categorical_crossentropy'."
            )
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(
                f"Labels of the {source} range over [{labels.min()}, "
                f"{labels.max()}], but the model predicts {num_classes} classes "
                f"(ids 0 to {num_classes - 1}). {hint} Give the last layer "
                "as many units as there are classes."
            )
    elif info.kind == CATEGORICAL:
        if labels.shape[-1:] != (num_classes,):
            raise ValueError(
                f"{info.name} expects one-hot labels with {num_classes} "
                f"columns, but the labels of the {source} have shape "
                f"{labels.shape}. {hint} For integer class ids use "
                "loss='sparse_categorical_crossentropy'."
            )
    elif info.name in ELEMENTWISE_LOSSES:
        squeezed = labels.shape[1:] if labels.shape[-1:] != (1,) else labels.shape[1:-1]
        expected = tuple(output_shape[1:])
        if expected[-1:] == (1,):
            expected = expected[:-1]
        if None not in expected and tuple(squeezed) != expected:
            raise ValueError(
                f"Labels of the {source} have shape {labels.shape}, but the model's output is "
                f"{tuple(output_shape)}: {info.name} would broadcast one against the other and train on "
                "the wrong targets. Give the last layer as many units as the labels have columns, or pass "
                "the labels for this output only."
            )
    elif info.kind == BINARY:
        if labels.size and (labels.min() < 0 or labels.max() > 1):
            raise ValueError(
                f"{info.name} expects labels in [0, 1], but the labels of the "
                f"{source} range over [{labels.min()}, {labels.max()}]. For "
                "more than two classes use a softmax output and "
                "loss='sparse_categorical_crossentropy'."
            )
        squeezed = labels.shape[1:] if labels.shape[-1:] != (1,) else labels.shape[1:-1]
        expected = tuple(output_shape[1:])
        if expected[-1:] == (1,):
            expected = expected[:-1]
        if tuple(squeezed) != expected:
            raise ValueError(
                f"Labels of the {source} have shape {labels.shape}, which does not match the model's output. {hint}"
            )
