"""`from_config` for callbacks, and arrays written into a config as JSON.

Keras's own callbacks have neither `get_config` nor `from_config`; ours have
both, so a callback can be written into the journal (or any JSON file) and
rebuilt from it: `type(callback).from_config(callback.get_config())`.
"""

import copy

import keras
import numpy as np
import tensorflow as tf


class ConfigurableCallback(keras.callbacks.Callback):
    """A Keras callback that rebuilds from its `get_config()`.

    Subclasses return their `__init__` arguments from `get_config()`, as
    JSON-ready values; `from_config` passes them back.

    A callback whose judgement builds up over epochs (a best value, a
    patience count, the findings so far) names the attributes holding it in
    `resume_state`: `get_state()` copies them at the end of an epoch and
    `set_state()` puts them back when a `fit` resumed from a backup starts
    (Keras's `BackupAndRestore` gives back the weights and the optimizer, not
    the callbacks' state). The Playbook's `fit` saves it beside its backup.
    """

    resume_state = ()

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def get_state(self):
        """A copy of what this callback has built up so far (the attributes named in `resume_state`)."""
        return {name: copy.deepcopy(getattr(self, name)) for name in self.resume_state}

    def set_state(self, state):
        """Puts back what `get_state()` returned (called after `on_train_begin` of a resumed `fit`)."""
        for name, value in state.items():
            setattr(self, name, copy.deepcopy(value))


def arrays_to_config(structure):
    """NumPy arrays (in any nest of tuples, lists, dicts) as JSON-ready dicts.

    Each array becomes `{"array": nested lists, "dtype": name}`, so
    `arrays_from_config` gives back the same values with the same dtype.
    """
    if structure is None:
        return None
    return tf.nest.map_structure(
        lambda array: {"array": np.asarray(array).tolist(), "dtype": np.asarray(array).dtype.name},
        _as_lists(structure),
    )


def arrays_from_config(structure):
    """The inverse of `arrays_to_config` (tuples come back as tuples of arrays)."""
    if structure is None:
        return None

    def is_leaf(item):
        return isinstance(item, dict) and set(item) == {"array", "dtype"}

    def convert(item):
        if is_leaf(item):
            return np.asarray(item["array"], dtype=item["dtype"])
        if isinstance(item, dict):
            return {key: convert(value) for key, value in item.items()}
        return tuple(convert(value) for value in item)

    return convert(structure)


def _as_lists(structure):
    if isinstance(structure, dict):
        return {key: _as_lists(value) for key, value in structure.items()}
    if isinstance(structure, (list, tuple)):
        return [_as_lists(value) for value in structure]
    return structure
