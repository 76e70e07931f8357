"""Class weights as `model.fit(class_weight=...)` takes them, for every stage that trains.

Keras turns `class_weight` into per-example weights: `class_weight_to_sample_weights`
for arrays and `make_class_weight_map_fn` for datasets (keras/src/trainers/
data_adapters), reading the class of a sparse label, of a one-hot label
(argmax) or of a binary 0/1 label (shape `(n,)` or `(n, 1)`). This module
builds on both. Where Keras refuses `class_weight` together with
`sample_weight`, the weights here are multiplied: a batch `(x, y[, sw])`
becomes `(x, y, sw * class_weight[class of y])`. As in Keras, only a model
with a single output takes class weights, and validation data is not
weighted.
"""

import collections.abc
import math

import numpy as np
import tensorflow as tf
from keras.src.trainers.data_adapters.data_adapter_utils import class_weight_to_sample_weights
from keras.src.trainers.data_adapters.tf_dataset_adapter import make_class_weight_map_fn

from keras_playbook import _validation as validation


def num_classes_of(output_shape):
    """The classes a single output of shape `output_shape` (batch axis first) tells apart, or None.

    A last axis of size 1 is a binary output (classes 0 and 1), as Keras
    reads a label of shape `(n, 1)`; a last axis of C > 1 holds C classes.
    """
    if output_shape is None or len(output_shape) < 2 or output_shape[-1] is None:
        return None
    return 2 if output_shape[-1] == 1 else int(output_shape[-1])


def check_class_weight(class_weight, *, num_classes=None, several_outputs=False, caller=None):
    """Checks `class_weight` before any compute and completes it with weight 1 for the classes it leaves out.

    Args:
        class_weight: None, or a dict class id (int >= 0) -> weight (a finite
            number >= 0), as `model.fit` takes it.
        num_classes: The classes the model's output tells apart
            (`num_classes_of`), when known: every key must be below it.
        several_outputs: Whether the model (or its labels) has several
            outputs, for which Keras takes no class weights.
        caller: The method named in messages ("fit"), or None for the Playbook.

    Returns:
        None, or a dict `{class id: float weight}` holding every class
        `0 .. max(num_classes, largest key + 1) - 1` (Keras's dataset map
        looks weights up in a table that long).

    Raises:
        TypeError: for a `class_weight` that is not a dict.
        ValueError: for an empty dict, a key that is not a class id the
            labels can hold, a weight that is not a finite number >= 0, or a
            model with several outputs.
    """
    if class_weight is None:
        return None
    prefix = f"{caller}: argument" if caller else "Argument"
    if not isinstance(class_weight, collections.abc.Mapping):
        raise TypeError(
            f"{prefix} `class_weight` must be a dict mapping class ids (ints) to weights, as in model.fit, e.g. "
            f"{{0: 1.0, 1: 5.0}}. Received: class_weight={class_weight!r} (of type {type(class_weight).__name__})."
        )
    if several_outputs:
        raise ValueError(
            f"{prefix} `class_weight` is only supported for models with a single output, as in Keras "
            "(model.fit). Weigh the examples of each output through the data's sample weights instead. "
            f"Received: class_weight={class_weight!r}."
        )
    if not class_weight:
        raise ValueError(f"{prefix} `class_weight` is empty: pass None for no class weights. Received: {{}}.")
    ids = f"ints in [0, {num_classes})" if num_classes is not None else "ints >= 0"
    for key, weight in class_weight.items():
        if not validation.is_int(key) or key < 0 or (num_classes is not None and key >= num_classes):
            where = f"the model's output tells {num_classes} classes apart" if num_classes is not None else ""
            raise ValueError(
                f"{prefix} `class_weight` must map class ids ({ids}) to weights: key {key!r} is not a class id "
                f"the labels can hold{' (' + where + ')' if where else ''}. Encode class names as ids first. "
                f"Received: class_weight={class_weight!r}."
            )
        if not validation.is_number(weight) or not math.isfinite(weight) or weight < 0:
            raise ValueError(
                f"{prefix} `class_weight` must map class ids to finite weights >= 0: class {key} has weight "
                f"{weight!r}. Received: class_weight={class_weight!r}."
            )
    size = max(int(max(class_weight)) + 1, num_classes or 0)
    return {index: float(class_weight.get(index, 1.0)) for index in range(size)}


def class_weight_map(class_weight):
    """A `tf.data` map of batches `(x, y[, sw])` to `(x, y, sw * class_weight[class of y])`.

    Builds on Keras's `make_class_weight_map_fn` (the class of each label)
    and multiplies a batch's own sample weights, broadcast over their
    trailing axes, where Keras refuses them.

    Args:
        class_weight: A dict completed by `check_class_weight`.
    """
    weigh = make_class_weight_map_fn(class_weight)

    def apply(*batch):
        x, y, weights = weigh(*batch[:2])
        if len(batch) < 3:
            return x, y, weights
        own = tf.cast(batch[2], weights.dtype)
        return x, y, own * tf.reshape(weights, [-1] + [1] * (own.shape.rank - 1))

    return apply


def class_weighted(sample, class_weight):
    """A NumPy sample `(x, y[, sw])` as `class_weight_map` weighs a batch (Keras's `class_weight_to_sample_weights`)."""
    weights = class_weight_to_sample_weights(sample[1], class_weight)
    if len(sample) < 3:
        return (*sample[:2], weights)
    own = np.asarray(sample[2], dtype=weights.dtype)
    return (*sample[:2], own * weights.reshape((-1,) + (1,) * (own.ndim - 1)))


def describe(class_weight):
    """`class_weight` as JSON for the set-up's fingerprint and a call's record: `{"class id": weight}`."""
    if class_weight is None:
        return None
    return {str(int(key)): float(value) for key, value in sorted(class_weight.items())}
