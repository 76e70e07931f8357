"""What the user passes as data, read as `model.fit` reads it and checked before any compute.

`make_pipeline` (in `_data.py`) turns what these functions accept into one
pipeline. Arrays are read as `model.fit` users type them (`as_arrays`: lists
of numbers or of rows become one array, a list of arrays stays the model's
inputs; strings only where the model's input takes strings); a
`validation_split` takes the last fraction of the arrays before shuffling
(Keras's `train_validation_split`); an infinite dataset needs its steps
(`check_length`); NaN and inf are looked for in every row of arrays and in
the first batches of a stream (`check_finite`); validation data must have
the training data's structure (`check_same_structure`).
"""

import itertools

import keras
import numpy as np
import tensorflow as tf
from keras.src.trainers.data_adapters.array_slicing import train_validation_split

from keras_playbook import _validation as validation

COMPONENT_NAMES = ("x", "y", "sample_weight")


def check_length(data, steps, name, argument):
    """Refuses an infinite dataset without a number of steps per epoch, before any of it is read.

    A `tf.data.Dataset` of `tf.data.INFINITE_CARDINALITY` (`.repeat()`) or a
    PyDataset whose `num_batches` is None never ends an epoch: `model.fit`
    takes `steps_per_epoch` / `validation_steps` for it, and so does the
    Playbook. A dataset of unknown length is taken as finite, as Keras does.

    Args:
        data: What the user passed (arrays, a dataset, a PyDataset).
        steps: The steps given for it, or None.
        name: How the message calls the data ("training data").
        argument: The Playbook argument that gives the steps.

    Raises:
        ValueError: for an infinite dataset without steps, or steps that are not a positive int.
    """
    if steps is not None:
        validation.check_int(steps, argument, hint="batches per epoch, as model.fit takes it")
        return
    if isinstance(data, tf.data.Dataset) and int(data.cardinality()) == tf.data.INFINITE_CARDINALITY:
        kind = "a tf.data.Dataset of infinite cardinality (repeated)"
    elif isinstance(data, keras.utils.PyDataset) and data.num_batches is None:
        kind = "a PyDataset whose num_batches is None"
    else:
        return
    raise ValueError(
        f"The {name} is infinite ({kind}), so an epoch would never end: pass `{argument}` (batches per epoch) "
        "to the Playbook, as to model.fit."
    )


def split_validation(data, validation_data, validation_split, input_dtypes=None):
    """The last `validation_split` of arrays as validation data, before any shuffling, as `model.fit` does.

    Builds on Keras's `train_validation_split` (keras/src/trainers/
    data_adapters/array_slicing.py), which `model.fit(validation_split=...)`
    calls.

    Args:
        data: The training data, `(x, y[, sample_weight])` arrays.
        validation_data: The Playbook's `validation_data` (must be None).
        validation_split: A float in (0, 1): the fraction of the examples,
            taken from the end, that become validation data.
        input_dtypes: As for `make_pipeline`.

    Returns:
        `(train_arrays, validation_arrays)`.

    Raises:
        ValueError: for a fraction outside (0, 1), one that leaves either
            part empty, data that is not arrays, or `validation_data` given too.
    """
    check_validation_split(data, validation_data, validation_split)
    arrays = as_arrays(data, "training data", input_dtypes)
    # Keras's slicing refuses NumPy's fixed-width strings ("Invalid dtype: str..."); objects it takes.
    arrays = tf.nest.map_structure(lambda leaf: leaf.astype(object) if leaf.dtype.kind in "US" else leaf, arrays)
    return train_validation_split(arrays, float(validation_split))


def check_validation_split(data, validation_data, validation_split):
    """`split_validation`'s refusals, before any compute (see there)."""
    validation.check_number(
        validation_split, "validation_split", within="(0, 1)", hint="the fraction of the arrays kept for validation"
    )
    if validation_data is not None:
        raise ValueError(
            "Pass either `validation_data` or `validation_split`, not both. Received: "
            f"validation_split={validation_split!r} and validation_data of type {type(validation_data).__name__}."
        )
    if not isinstance(data, (tuple, list)):
        raise ValueError(
            "Argument `validation_split` is only supported for arrays `(x, y[, sample_weight])`, as in model.fit: "
            f"a {type(data).__name__} cannot be split by the library. Pass `validation_data` instead. Received: "
            f"validation_split={validation_split!r}."
        )


def as_arrays(data, name, input_dtypes=None):
    if len(data) not in (2, 3):
        raise ValueError(
            f"The {name} must be `(x, y)` or `(x, y, sample_weight)`. Received "
            f"a {type(data).__name__} of length {len(data)}."
        )
    num_inputs = None if input_dtypes is None else len(tf.nest.flatten(input_dtypes))
    x = _structure(data[0], parts=num_inputs, rows=_rows(data[1]), path="x", name=name)
    components = [x] + [
        _structure(component, rows=_rows(x), path=component_name, name=name)
        for component, component_name in zip(data[1:], COMPONENT_NAMES[1:])
    ]
    arrays = tuple(tf.nest.map_structure(np.asarray, component) for component in components)
    strings = _string_input_paths(input_dtypes)
    for component, component_name in zip(arrays, COMPONENT_NAMES):
        for path, leaf in _leaves_with_paths(component, component_name):
            if path not in strings:
                _check_numeric(leaf, path, component_name, name)
    lengths = {
        path: len(leaf) if np.ndim(leaf) else None
        for component, component_name in zip(arrays, COMPONENT_NAMES)
        for path, leaf in _leaves_with_paths(component, component_name)
    }
    if len(set(lengths.values())) > 1 or None in lengths.values():
        shown = dict(itertools.islice(lengths.items(), 4))
        more = f" and {len(lengths) - 4} more" if len(lengths) > 4 else ""
        raise ValueError(
            f"All arrays of the {name} must have the same length (one row per example). Received "
            f"{len(lengths)} arrays of lengths {shown}{more}."
        )
    if 0 in lengths.values():
        raise ValueError(f"The {name} is empty (0 examples). Pass at least one batch.")
    return arrays


def _rows(component):
    """The examples in `component` when it is one array (or a list of numbers), else None."""
    if isinstance(component, (list, tuple)):
        scalars = component and all(not isinstance(item, dict) and np.ndim(item) == 0 for item in component)
        return len(component) if scalars else None
    return len(component) if _is_array_like(component) and np.ndim(component) else None


def _structure(component, parts=None, rows=None, path="x", name="data"):
    """A component as `tf.data` should read it: lists of rows or numbers become one array, lists of inputs tuples.

    `tf.data` stacks a Python list into one tensor, so `[x1, x2]` for a
    two-input model (which `model.fit` accepts) would become one array of
    shape (2, n); a tuple keeps the inputs apart. A list of numbers (also
    NumPy scalars, as `list(y)` gives) or of lists of numbers is one array,
    as `model.fit` reads it; so is a list of equal-shaped rows (`list(x)`)
    when the model takes one input (`parts`), or when the list holds as many
    items as the other components have examples (`rows`).

    Raises:
        ValueError: in one line, for a list that is neither the model's
            inputs nor rows of one shape.
    """
    if isinstance(component, dict):
        return {key: _structure(value, path=f"{path}[{key!r}]", name=name) for key, value in component.items()}
    if not isinstance(component, (list, tuple)):
        return component
    if not component or not all(
        isinstance(item, (np.ndarray, dict, tf.Tensor)) or _is_array_like(item) for item in component
    ):
        return np.asarray(component)
    if all(not isinstance(item, dict) and np.ndim(item) == 0 for item in component):
        return np.asarray(component)  # NumPy scalars (`list(y)`).
    inputs = tuple(_structure(item, path=f"{path}[{index}]", name=name) for index, item in enumerate(component))
    if (parts is not None and parts > 1 and len(component) == parts) or len(component) == 1:
        return inputs
    if parts is not None and parts > 1:
        raise ValueError(
            f"`{path}` of the {name} is a list of {len(component)} arrays, but the model takes {parts} inputs: pass "
            "one array per input (a list or dict), each with one row per example."
        )
    if parts is None and (rows is None or len(component) != rows):
        return inputs  # Several inputs or outputs, as far as can be told.
    shapes = {np.shape(item) for item in component if not isinstance(item, dict)}
    if len(shapes) == 1 and not any(isinstance(item, dict) for item in component):
        return np.stack([np.asarray(item) for item in component])  # A list of rows.
    takes = f"the model takes {parts} input(s)" if parts is not None else f"there are {rows} examples"
    raise ValueError(
        f"`{path}` of the {name} is a list of {len(component)} items, but {takes} and the items are not rows of "
        f"one shape ({len(shapes)} shapes): pass one NumPy array of rows, or one array per input."
    )


def _is_array_like(item):
    return hasattr(item, "__array__") and not isinstance(item, (list, tuple))


def _check_numeric(leaf, path, component_name, name):
    """Raises for strings or objects where numbers are expected, naming the array and what to do."""
    if leaf.dtype.kind in "biufc":
        return
    if leaf.dtype.kind == "O":
        try:
            leaf.astype(np.float64)
            return
        except (TypeError, ValueError):
            pass
    sample = next(
        (
            repr(value.item() if isinstance(value, np.generic) else value)
            for value in leaf.ravel()[:50]
            if isinstance(value, (str, bytes))
        ),
        repr(leaf.ravel()[0]) if leaf.size else "",
    )
    if component_name == "y":
        raise ValueError(
            f"The labels of the {name} (`{path}`) are strings or objects (e.g. {sample}), dtype "
            f"{leaf.dtype}. Encode them as integer class ids first, e.g. "
            "`classes, y = np.unique(y, return_inverse=True)` or sklearn's LabelEncoder."
        )
    raise ValueError(
        f"`{path}` of the {name} holds strings or objects (e.g. {sample}), dtype {leaf.dtype}; the model's "
        "input there takes numbers. Encode that column first (one-hot or integer codes), or give the model a "
        'string input (`keras.Input(shape=(), dtype="string")` followed by keras.layers.StringLookup or '
        "TextVectorization)."
    )


def _string_input_paths(input_dtypes):
    """Paths (as `_leaves_with_paths` names them under "x") of the model's string inputs.

    A model with one input, a string one, takes a single array of strings
    whatever structure its input is declared in.
    """
    if input_dtypes is None:
        return set()
    leaves = list(_leaves_with_paths(input_dtypes, "x"))
    paths = {path for path, dtype in leaves if str(dtype) == "string"}
    if len(leaves) == 1 and paths:
        paths.add("x")
    return paths


def check_not_empty(examples, name):
    for _ in examples.take(1):
        return
    raise ValueError(f"The {name} is empty (it yields no examples). Pass at least one batch.")


def _leaves_with_paths(structure, prefix):
    if isinstance(structure, dict):
        for key, value in structure.items():
            yield from _leaves_with_paths(value, f"{prefix}[{key!r}]")
    elif isinstance(structure, (list, tuple)):
        for index, value in enumerate(structure):
            yield from _leaves_with_paths(value, f"{prefix}[{index}]")
    else:
        yield prefix, structure


def check_finite(pipeline, num_batches=3, name="training data"):
    """Raises if the data holds NaN or inf values: all of it for arrays, the first batches of a stream.

    Arrays (in memory) are checked whole, one vectorized `np.isfinite` per
    array. A `tf.data.Dataset` or `PyDataset` is read as it streams, so only
    its first `num_batches` batches are checked (the set-up record's message
    says so too, `finite_check_note`): a NaN further on reaches training, and `fit`'s watchers (`watch=
    True`) stop a run whose loss turns NaN.

    Raises:
        ValueError: naming the component (`x`, `y`, `sample_weight`), the
            first example (arrays) or batch (streams) holding one, and how many
            values are not finite.
    """
    if pipeline.arrays is not None:
        for component, name_of_component in zip(pipeline.arrays, COMPONENT_NAMES):
            for path, leaf in _leaves_with_paths(component, name_of_component):
                if not np.issubdtype(leaf.dtype, np.inexact):
                    continue
                finite = np.isfinite(leaf).reshape(len(leaf), -1).all(axis=1)
                if not finite.all():
                    rows = np.flatnonzero(~finite)
                    bad = int(np.size(leaf) - np.count_nonzero(np.isfinite(leaf)))
                    raise ValueError(
                        f"The {name} holds {bad} NaN or inf value(s) in `{path}`, in {len(rows)} example(s), the "
                        f"first at row {int(rows[0])}. Clean or impute them before training: one NaN makes every "
                        "weight NaN."
                    )
        return
    for batch_index, batch in enumerate(pipeline.first_batches(num_batches)):
        for component, name_of_component in zip(batch, COMPONENT_NAMES):
            for path, leaf in _leaves_with_paths(component, name_of_component):
                leaf = np.asarray(leaf)
                if not np.issubdtype(leaf.dtype, np.inexact):
                    continue
                bad = int(np.size(leaf) - np.count_nonzero(np.isfinite(leaf)))
                if bad:
                    raise ValueError(
                        f"The {name} holds {bad} NaN or inf value(s) in `{path}` "
                        f"of batch {batch_index} (a stream: its first {num_batches} batches of "
                        f"{pipeline.global_batch_size} are checked). Clean or impute them before "
                        "training: one NaN makes every weight NaN."
                    )


def finite_check_note(pipeline, name, num_batches=3):
    """What `check_finite` read of a streamed `pipeline`, as a sentence; None for arrays (read whole)."""
    if pipeline.arrays is not None:
        return None
    return (
        f"the {name} is streamed, so only its first {num_batches} batches ({num_batches * pipeline.global_batch_size} "
        "examples) were checked for NaN or inf"
    )


def _dtype_family(dtype):
    if dtype.is_floating:
        return "float"
    if dtype.is_integer or dtype.is_bool:
        return "integer"
    return dtype.name


def check_same_structure(train, validation):
    """Raises if validation examples differ in structure from training ones.

    Raises:
        ValueError: naming both structures.
    """
    train_spec = train.examples.element_spec
    validation_spec = validation.examples.element_spec
    problem = None
    try:
        tf.nest.assert_same_structure(train_spec, validation_spec)
    except (ValueError, TypeError) as error:
        problem = f"their structures differ ({error})"
    else:
        for train_leaf, validation_leaf in zip(tf.nest.flatten(train_spec), tf.nest.flatten(validation_spec)):
            if not train_leaf.shape.is_compatible_with(validation_leaf.shape):
                problem = (
                    f"an example of shape {validation_leaf.shape} does not match the training shape {train_leaf.shape}"
                )
            elif _dtype_family(train_leaf.dtype) != _dtype_family(validation_leaf.dtype):
                problem = (
                    f"dtype {validation_leaf.dtype.name} does not match the training dtype {train_leaf.dtype.name}"
                )
            if problem:
                break
    if problem:
        raise ValueError(
            "The validation data must have the same structure as the training "
            f"data, but {problem}. Training examples: {train_spec}. Validation "
            f"examples: {validation_spec}."
        )
