"""What the data pipeline does with a `keras.utils.PyDataset` besides handing it to Keras.

Whole epochs read a PyDataset through Keras's own `PyDatasetAdapter`
(`_data.fit_arguments`): its workers, queue and a new batch order every
epoch, as `model.fit(py_dataset)` reads it. This module holds the rest: its
batch size (its own), the tf.data wrapper that short runs and samples read,
a sample of whole batches read by index, and the callback that draws each
epoch's batch order from the seed and the epoch (`BatchOrder`).

References:
    Keras, `keras/src/trainers/data_adapters/py_dataset_adapter.py`
    (`PyDatasetAdapter`, `OrderedEnqueuer`).
"""

import itertools
import random

import keras
import numpy as np
import tensorflow as tf


def per_replica_batch_size(batch_seen, batch_size, num_replicas, name):
    """A PyDataset's per-replica batch size: its own batches split over the replicas."""
    if batch_seen % num_replicas:
        raise ValueError(
            f"The {name} is a keras.utils.PyDataset whose batches hold {batch_seen} examples, which do not split "
            f"evenly over {num_replicas} replicas. Make its batch size a multiple of {num_replicas}."
        )
    if batch_size is not None and batch_size * num_replicas != batch_seen:
        raise ValueError(
            f"The {name} is a keras.utils.PyDataset, which makes its own batches ({batch_seen} examples = "
            f"{batch_seen // num_replicas} per replica x {num_replicas}), so batch_size={batch_size} cannot apply. "
            "Leave batch_size=None, or change the PyDataset's batch size."
        )
    return batch_seen // num_replicas


def as_tuple(batch):
    """A batch as a tuple `(x, y[, sample_weight])` (a lone array is `(x,)`)."""
    return tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)


def to_tf(py_dataset, *, name="data", shuffle=False, seed=None):
    """Wraps a PyDataset as a batched tf.data.Dataset of its own batches (one pass per iteration).

    For short runs and samples, which read a few batches; whole epochs go
    through Keras's `PyDatasetAdapter` (`_data.DataPipeline.keras_input`). With
    `shuffle`, pass k of a finite PyDataset reads its batches in a
    permutation drawn from `(seed, k)` alone (Keras's adapter reshuffles
    the batch order every epoch too).
    """
    num_batches = py_dataset.num_batches
    if num_batches == 0:
        raise ValueError(f"The {name} is empty (a PyDataset with 0 batches).")
    first = tf.nest.map_structure(np.asarray, as_tuple(py_dataset[0]))
    signature = tf.nest.map_structure(
        lambda array: tf.TensorSpec((None,) + array.shape[1:], tf.as_dtype(array.dtype)),
        first,
    )

    passes = [0]

    def generate():
        if num_batches is None:
            order = itertools.count()
        elif shuffle:
            order = np.random.default_rng([0 if seed is None else int(seed), passes[0]]).permutation(num_batches)
        else:
            order = range(num_batches)
        passes[0] += 1
        for index in order:
            try:
                batch = py_dataset[int(index)]
            except IndexError:
                break
            yield as_tuple(batch)
        py_dataset.on_epoch_end()

    return tf.data.Dataset.from_generator(generate, output_signature=signature)


def sample(py_dataset, num_batches, seed):
    """`num_batches` batches of a finite PyDataset drawn by `seed`, read by index and joined (NumPy)."""
    count = py_dataset.num_batches
    rng = np.random.default_rng(seed)
    indices = np.sort(rng.choice(count, size=min(num_batches, count), replace=False))
    batches = [tf.nest.map_structure(np.asarray, as_tuple(py_dataset[int(index)])) for index in indices]
    return tf.nest.map_structure(lambda *parts: np.concatenate(parts), *batches)


class BatchOrder(keras.callbacks.Callback):
    """Draws a PyDataset's batch order of each epoch from `(seed, epoch)` alone, your Python `random` kept.

    Keras's `PyDatasetAdapter` shuffles the batch order with Python's
    `random.shuffle` when an epoch starts, after the callbacks'
    `on_epoch_begin`: seeding `random` there makes the order a function of
    the seed and the epoch, so a resumed `fit` reads what an uninterrupted
    one read. The state of `random` before training is given back when it
    ends (Keras skips `on_train_end` when `fit` raises: the Playbook's `fit`
    then calls it itself).
    """

    def __init__(self, seed):
        super().__init__()
        self.seed = 0 if seed is None else int(seed)
        self._state = None

    def on_train_begin(self, logs=None):
        self._state = random.getstate()

    def on_epoch_begin(self, epoch, logs=None):
        random.seed(f"keras-playbook/{self.seed}/{epoch}")

    def on_train_end(self, logs=None):
        if self._state is not None:
            random.setstate(self._state)
            self._state = None
