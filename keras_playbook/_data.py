"""One batched input pipeline from arrays, a `tf.data.Dataset` or a PyDataset.

Everything the user passes becomes a dataset of single examples
`(x, y)` or `(x, y, sample_weight)`; `DataPipeline` batches it with a known
global batch size (per-replica size × replicas), the size `model.fit` splits
across the replicas of a `tf.distribute` strategy. Keeping the unbatched
examples lets later stages rebatch (the batch-size finder) and draw small
fixed samples (the sanity stages).
"""

import keras
import numpy as np
import tensorflow as tf

from keras_playbook import _validation as validation

_COMPONENT_NAMES = ("x", "y", "sample_weight")
DEFAULT_BATCH_SIZE = 32


def validate_batch_size(batch_size, name="batch_size"):
    """Raises unless `batch_size` is a positive int."""
    if not validation.is_int(batch_size):
        raise TypeError(
            f"Argument `{name}` must be a positive int (examples per replica). "
            f"Received: {name}={batch_size!r} (of type {type(batch_size).__name__})."
        )
    validation.check_int(batch_size, name, hint="examples per replica")


class DataPipeline:
    """Examples batched for training under a strategy.

    Build one with `make_pipeline`; the constructor takes examples that are
    already unbatched.

    Args:
        examples: `tf.data.Dataset` of single `(x, y[, sample_weight])` tuples.
        per_replica_batch_size: Examples each replica sees per step.
        num_replicas: Replicas in the strategy's sync group.
        num_examples: Number of examples, or None when unknown.
        shuffle: Whether `dataset` reshuffles every epoch.
        seed: Seed of the shuffle and of `sample`.
        arrays: The NumPy tuple the examples came from, if any (for fast
            sampling).
        epoch_counter: The counter of epochs drawn (shared by the pipelines
            `with_batch_size` makes); None makes one.

    Arrays are read in an order that is a function of the seed and the
    epoch alone (`epoch_callback`), so a `fit` resumed in a new process at
    epoch k sees the batches an uninterrupted one saw at epoch k.
    """

    def __init__(
        self,
        examples,
        *,
        per_replica_batch_size,
        num_replicas,
        num_examples=None,
        shuffle=False,
        seed=None,
        arrays=None,
        epoch_counter=None,
    ):
        validate_batch_size(per_replica_batch_size)
        self.examples = examples
        self.per_replica_batch_size = int(per_replica_batch_size)
        self.num_replicas = int(num_replicas)
        self.num_examples = num_examples
        self.shuffle = shuffle
        self.seed = seed
        self.arrays = arrays
        if epoch_counter is None and arrays is not None and shuffle:
            with tf.device("/cpu:0"):  # Read by the input pipeline, which runs on the host.
                epoch_counter = tf.Variable(0, dtype="int64", trainable=False, name="epochs_drawn")
        self.epoch_counter = epoch_counter
        self._dataset = None
        self._first_batches = {}

    @property
    def global_batch_size(self):
        return self.per_replica_batch_size * self.num_replicas

    @property
    def dataset(self):
        """The batched, prefetched `tf.data.Dataset` that `fit` consumes."""
        if self._dataset is None:
            if self.arrays is not None:
                dataset = self._batched_arrays()
            else:
                dataset = self._batched_examples()
            self._dataset = _with_distribute_options(dataset).prefetch(tf.data.AUTOTUNE)
        return self._dataset

    def _batched_arrays(self):
        """Shuffles indices and gathers whole batches, as Keras's array adapter does.

        The arrays enter the graph once through `from_tensors(...).repeat()`
        rather than as constants, and one gather per batch replaces a
        per-example shuffle buffer.
        """
        if self.shuffle:
            indices = self._epoch_order()
        else:
            indices = tf.data.Dataset.range(self.num_examples)
        indices = indices.batch(self.global_batch_size)
        arrays = tf.data.Dataset.from_tensors(self.arrays).repeat()
        return tf.data.Dataset.zip(indices, arrays).map(
            lambda batch, tensors: tf.nest.map_structure(lambda tensor: tf.gather(tensor, batch), tensors),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )

    def _epoch_order(self):
        """The indices of one pass: a permutation drawn from `(seed, epoch)` alone.

        Every new iterator (Keras makes one per epoch) draws the next epoch's
        permutation from `tf.random.stateless_uniform`, which depends on its
        seed and nothing else (not on the global seed, nor on how many
        iterators this process made before): `epoch_callback` sets the
        counter to the epoch `fit` is at, so a resumed run draws what an
        uninterrupted one drew.
        """
        counter, size = self.epoch_counter, self.num_examples
        seed = tf.constant(0 if self.seed is None else int(self.seed), dtype="int64")

        def permutation(_):
            epoch = counter.assign_add(1) - 1
            return tf.argsort(tf.random.stateless_uniform([size], seed=tf.stack([seed, epoch])))

        return tf.data.Dataset.from_tensors(0).map(permutation).unbatch()

    def epoch_callback(self):
        """A callback that keys the data order of each epoch to the epoch's index (see `_epoch_order`), or None."""
        return None if self.epoch_counter is None else _DataEpoch(self.epoch_counter)

    def _batched_examples(self):
        dataset = self.examples
        if self.shuffle:
            buffer_size = self.num_examples or 10 * self.global_batch_size
            dataset = dataset.shuffle(buffer_size, seed=self.seed, reshuffle_each_iteration=True)
        return dataset.batch(self.global_batch_size)

    def with_batch_size(self, per_replica_batch_size, *, seed=None):
        """Returns the same examples batched with another per-replica size.

        Args:
            per_replica_batch_size: Examples per replica per step.
            seed: Another shuffle seed (another data order); None keeps this one.
        """
        return DataPipeline(
            self.examples,
            per_replica_batch_size=per_replica_batch_size,
            num_replicas=self.num_replicas,
            num_examples=self.num_examples,
            shuffle=self.shuffle,
            seed=self.seed if seed is None else seed,
            arrays=self.arrays,
            epoch_counter=self.epoch_counter if seed is None else None,
        )

    def first_batches(self, num_batches):
        """Returns the first `num_batches` global batches (unshuffled) as NumPy."""
        if num_batches not in self._first_batches:
            batches = self.examples.batch(self.global_batch_size).take(num_batches)
            self._first_batches[num_batches] = list(batches.as_numpy_iterator())
        return self._first_batches[num_batches]

    def sample(self, num_batches, seed=0):
        """Draws a fixed random sample of `num_batches` global batches.

        The same seed gives the same examples every time, so a stage can be
        rerun on identical data.

        Returns:
            A tuple `(x, y)` or `(x, y, sample_weight)` of NumPy structures
            holding `num_batches * global_batch_size` examples (fewer if the
            data holds fewer).
        """
        size = num_batches * self.global_batch_size
        if self.arrays is not None:
            count = len(tf.nest.flatten(self.arrays)[0])
            rng = np.random.default_rng(seed)
            indices = np.sort(rng.choice(count, size=min(size, count), replace=False))
            return tf.nest.map_structure(lambda array: array[indices], self.arrays)
        buffer_size = min(max(4 * size, 1024), 50_000)
        drawn = self.examples.shuffle(buffer_size, seed=seed, reshuffle_each_iteration=False).take(size)
        return next(iter(drawn.batch(size).as_numpy_iterator()))

    def __repr__(self):
        return (
            f"<DataPipeline examples={self.num_examples} batch="
            f"{self.per_replica_batch_size}x{self.num_replicas}="
            f"{self.global_batch_size}>"
        )


def make_pipeline(data, *, batch_size, num_replicas, shuffle, seed=None, input_rank=None, name="data"):
    """Turns arrays, a `tf.data.Dataset` or a `keras.utils.PyDataset` into a pipeline.

    Args:
        data: `(x, y)` or `(x, y, sample_weight)` arrays (x may be a dict or
            list of arrays), a `tf.data.Dataset` batched or not, or a
            `keras.utils.PyDataset`.
        batch_size: Examples per replica, or None: 32 for unbatched data,
            the data's own batch size split over the replicas for batched data.
        num_replicas: Replicas of the strategy.
        shuffle: Whether to reshuffle every epoch (applied to arrays only;
            datasets keep the order the user gave them, as in `model.fit`).
        seed: Shuffle and sampling seed.
        input_rank: Rank of the model's input including the batch axis, when
            known; tells batched from unbatched datasets.
        name: How error messages call this data ("training data", ...).

    Returns:
        A `DataPipeline`.

    Raises:
        TypeError: for data of an unsupported type.
        ValueError: for empty data, unequal lengths, or data without labels.
    """
    if batch_size is not None:
        validate_batch_size(batch_size)
    arrays = None
    num_examples = None
    if isinstance(data, tf.data.Dataset):
        examples, batch_seen = _unbatched(data, input_rank, name)
    elif isinstance(data, keras.utils.PyDataset):
        examples, batch_seen = _unbatched(_py_dataset_to_tf(data, name), input_rank, name)
    elif isinstance(data, (tuple, list)):
        arrays = _as_arrays(data, name)
        num_examples = len(tf.nest.flatten(arrays)[0])
        examples = tf.data.Dataset.from_tensor_slices(arrays)
        batch_seen = None
    else:
        raise TypeError(
            f"Unsupported {name}: {type(data).__name__}. Pass a tuple "
            "`(x, y)` of arrays, a `tf.data.Dataset` yielding `(x, y)`, or a "
            "`keras.utils.PyDataset`."
        )
    if arrays is None:
        shuffle = False
        cardinality = int(examples.cardinality())
        num_examples = cardinality if cardinality >= 0 else None
        if num_examples is None and isinstance(data, tf.data.Dataset) and int(data.cardinality()) >= 0:
            # Unbatching loses the count. The source has a known, finite length (an in-memory
            # dataset, as a rule: file readers report none), so counting it is one cheap pass; a
            # known count lets Keras size its progress bar and stops its "ran out of data" warning.
            num_examples = int(examples.reduce(np.int64(0), lambda count, _: count + 1))
            examples = examples.apply(tf.data.experimental.assert_cardinality(num_examples))
    _check_not_empty(examples, name)
    per_replica = batch_size
    if per_replica is None:
        per_replica = DEFAULT_BATCH_SIZE
        if batch_seen is not None:
            if batch_seen % num_replicas:
                raise ValueError(
                    f"The {name} comes in batches of {batch_seen}, which do not "
                    f"split evenly over {num_replicas} replicas. Pass "
                    "`batch_size` (examples per replica) explicitly."
                )
            per_replica = batch_seen // num_replicas
    return DataPipeline(
        examples,
        per_replica_batch_size=per_replica,
        num_replicas=num_replicas,
        num_examples=num_examples,
        shuffle=shuffle,
        seed=seed,
        arrays=arrays,
    )


def _as_arrays(data, name):
    if len(data) not in (2, 3):
        raise ValueError(
            f"The {name} must be `(x, y)` or `(x, y, sample_weight)`. Received "
            f"a {type(data).__name__} of length {len(data)}."
        )
    arrays = tuple(tf.nest.map_structure(np.asarray, _structure(component)) for component in data)
    for component, component_name in zip(arrays, _COMPONENT_NAMES):
        for path, leaf in _leaves_with_paths(component, component_name):
            _check_numeric(leaf, path, component_name, name)
    lengths = {
        path: len(leaf)
        for component, component_name in zip(arrays, _COMPONENT_NAMES)
        for path, leaf in _leaves_with_paths(component, component_name)
    }
    if len(set(lengths.values())) > 1:
        raise ValueError(f"All arrays of the {name} must have the same length. Received lengths {lengths}.")
    if 0 in lengths.values():
        raise ValueError(f"The {name} is empty (0 examples). Pass at least one batch.")
    return arrays


def _structure(component):
    """A component as `tf.data` should read it: Python lists of numbers become arrays, lists of arrays tuples.

    `tf.data` stacks a Python list into one tensor, so `[y1, y2]` for a
    two-output model (which `model.fit` accepts) would become one array of
    shape (2, n); a tuple keeps the outputs apart. A list of numbers (or of
    lists of numbers) is one array, as `model.fit` reads it.
    """
    if isinstance(component, dict):
        return {key: _structure(value) for key, value in component.items()}
    if isinstance(component, (list, tuple)):
        if component and all(
            isinstance(item, (np.ndarray, dict, tf.Tensor)) or _is_array_like(item) for item in component
        ):
            return tuple(_structure(item) for item in component)
        return np.asarray(component)
    return component


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
        f"`{path}` of the {name} holds strings or objects (e.g. {sample}), dtype {leaf.dtype}; the model "
        "needs numbers. Encode that column first (one-hot or integer codes), or put a "
        "keras.layers.StringLookup in the model and pass a tf.data.Dataset of strings."
    )


def _check_not_empty(examples, name):
    for _ in examples.take(1):
        return
    raise ValueError(f"The {name} is empty (it yields no examples). Pass at least one batch.")


def _unbatched(dataset, input_rank, name):
    """Returns `(examples, batch_size_seen)`; batched data is unbatched."""
    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) not in (2, 3):
        raise ValueError(
            f"The {name} must yield `(x, y)` or `(x, y, sample_weight)` tuples. "
            f"Received elements with structure {spec}."
        )
    if not _looks_batched(spec, input_rank):
        return dataset, None
    first = next(iter(dataset.take(1)), None)
    batch_seen = None if first is None else int(tf.nest.flatten(first)[0].shape[0])
    return dataset.unbatch(), batch_seen


def _looks_batched(spec, input_rank):
    x_spec = spec[0]
    if isinstance(x_spec, tf.TensorSpec) and input_rank is not None and x_spec.shape.rank is not None:
        return x_spec.shape.rank == input_rank
    leaves = tf.nest.flatten(spec)
    return all(leaf.shape.rank is not None and leaf.shape.rank > 0 and leaf.shape[0] is None for leaf in leaves)


def _py_dataset_to_tf(py_dataset, name):
    """Wraps a PyDataset as a batched tf.data.Dataset (one pass per epoch)."""
    num_batches = py_dataset.num_batches
    if num_batches == 0:
        raise ValueError(f"The {name} is empty (a PyDataset with 0 batches).")

    def as_tuple(batch):
        return tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)

    first = tf.nest.map_structure(np.asarray, as_tuple(py_dataset[0]))
    signature = tf.nest.map_structure(
        lambda array: tf.TensorSpec((None,) + array.shape[1:], tf.as_dtype(array.dtype)),
        first,
    )

    def generate():
        count = num_batches if num_batches is not None else np.inf
        index = 0
        while index < count:
            try:
                batch = py_dataset[index]
            except IndexError:
                break
            yield as_tuple(batch)
            index += 1
        py_dataset.on_epoch_end()

    return tf.data.Dataset.from_generator(generate, output_signature=signature)


class _DataEpoch(keras.callbacks.Callback):
    """Sets a pipeline's epoch counter to the epoch `fit` starts (its data order is drawn from it)."""

    def __init__(self, counter):
        super().__init__()
        self.counter = counter

    def on_epoch_begin(self, epoch, logs=None):
        self.counter.assign(epoch)


def _with_distribute_options(dataset):
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


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
    """Raises if the first batches hold NaN or inf values.

    Raises:
        ValueError: naming the component (x, y, sample_weight), the batch and
            how many values are not finite.
    """
    for batch_index, batch in enumerate(pipeline.first_batches(num_batches)):
        for component, name_of_component in zip(batch, _COMPONENT_NAMES):
            for path, leaf in _leaves_with_paths(component, name_of_component):
                leaf = np.asarray(leaf)
                if not np.issubdtype(leaf.dtype, np.inexact):
                    continue
                bad = int(np.size(leaf) - np.count_nonzero(np.isfinite(leaf)))
                if bad:
                    raise ValueError(
                        f"The {name} holds {bad} NaN or inf value(s) in `{path}` "
                        f"of batch {batch_index}. Clean or impute them before "
                        "training: one NaN makes every weight NaN."
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


def labels_of(pipeline, num_batches=3):
    """Returns the labels to check: all of them for arrays, else the first batches."""
    if pipeline.arrays is not None:
        return pipeline.arrays[1]
    batches = pipeline.first_batches(num_batches)
    return tf.nest.map_structure(lambda *parts: np.concatenate(parts), *[b[1] for b in batches])
