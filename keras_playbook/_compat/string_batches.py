"""Keras's `fit`/`evaluate` on string inputs under a `tf.distribute` strategy of several replicas: the smallest fix.

Before its first step, Keras's TensorFlow trainer
(`TensorFlowTrainer._maybe_symbolic_build`, Keras 3.15) averages the first
per-replica batch over the replicas (`strategy.reduce("MEAN", ...)`) to build
the model's metrics symbolically. Strings cannot be averaged ("Value for attr
'T' of string is not in the list of allowed values ... AddN"), so a model
whose input is `keras.Input(shape=(), dtype="string")` cannot train under a
`MirroredStrategy` even with `model.fit`. The build needs only the batch's
shapes and dtypes: a batch holding strings is given as the first replica's
values instead. Every other batch goes through Keras's own method
unchanged, and nothing is patched until `install()` is called (by a
Playbook whose data holds strings and whose strategy has several replicas).
"""

import functools

import tensorflow as tf
from keras.src.backend.tensorflow import trainer as tensorflow_trainer


def _holds_strings(iterator):
    dataset = getattr(iterator, "_distributed_dataset", None)
    if dataset is None:
        return False
    specs = tf.nest.flatten(dataset.element_spec, expand_composites=True)
    return any(getattr(spec, "dtype", None) == tf.string for spec in specs)


def _first_replica(value):
    if isinstance(value, tf.distribute.DistributedValues):
        return value.values[0]
    return value


def install():
    """Makes Keras's symbolic build take the first replica's batch when the batch holds strings (once per process)."""
    trainer = tensorflow_trainer.TensorFlowTrainer
    original = trainer._maybe_symbolic_build
    if getattr(original, "_string_batches_fix", False):
        return

    @functools.wraps(original)
    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is None or self._distribute_strategy is None or not _holds_strings(iterator):
            return original(self, iterator=iterator, data_batch=data_batch)
        for _, _, batches in iterator:
            data_batch = tf.nest.map_structure(_first_replica, next(batches))
            break
        return original(self, data_batch=data_batch)

    maybe_symbolic_build._string_batches_fix = True
    trainer._maybe_symbolic_build = maybe_symbolic_build
