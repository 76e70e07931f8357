"""One batched input pipeline from arrays, a `tf.data.Dataset` or a PyDataset.

Everything the user passes becomes a dataset of single examples
`(x, y)` or `(x, y, sample_weight)`; `DataPipeline` batches it with a known
global batch size (per-replica size × replicas), the size `model.fit` splits
across the replicas of a `tf.distribute` strategy. Keeping the unbatched
examples lets later stages rebatch (the batch-size finder) and draw small
fixed samples (the sanity stages). A `keras.utils.PyDataset` keeps its own
batches: whole epochs read it through Keras's own `PyDatasetAdapter`
(workers, queue, a new batch order every epoch) as `model.fit` does
(`fit_arguments`), and only short runs and samples read its tf.data wrapper.
An infinite dataset needs its steps per epoch (`check_length`).
"""

import keras
import numpy as np
import tensorflow as tf

from keras_playbook import _inputs as inputs
from keras_playbook import _py_dataset as py_datasets
from keras_playbook import _validation as validation
from keras_playbook._class_weight import class_weight_map, class_weighted

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
        py_dataset: The user's `keras.utils.PyDataset`, if the examples
            come from one: whole passes then read it through Keras's own
            `PyDatasetAdapter` (`keras_input`), and its batches are its own.
        steps: Batches per epoch (`steps_per_epoch` / `validation_steps`,
            as `model.fit` takes them), or None for one pass over the data.
        class_weight: None, or a dict class id -> weight (`check_class_weight`
            completes it): every batch `dataset` and `sample` give then
            carries per-example weights `sample_weight * class_weight[y]`
            (`class_weight_map`).

    Arrays are read in an order that is a function of the seed and the
    epoch alone (`epoch_callback`), so a `fit` resumed in a new process at
    epoch k sees the batches an uninterrupted one saw at epoch k; so is a
    PyDataset's batch order.
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
        py_dataset=None,
        steps=None,
        class_weight=None,
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
        self.py_dataset = py_dataset
        self.steps = steps
        self.class_weight = class_weight
        self._dataset = None
        self._first_batches = {}
        self._samples = {}

    @property
    def global_batch_size(self):
        return self.per_replica_batch_size * self.num_replicas

    @property
    def dataset(self):
        """The batched, prefetched `tf.data.Dataset` that `fit` consumes."""
        if self._dataset is None:
            if self.arrays is not None:
                dataset = self._batched_arrays()
            elif self.py_dataset is not None:  # Its own batches, in an order drawn from the seed.
                dataset = py_datasets.to_tf(self.py_dataset, shuffle=self.shuffle, seed=self.seed)
            else:
                dataset = self._batched_examples()
            if self.class_weight is not None:
                dataset = dataset.map(class_weight_map(self.class_weight), num_parallel_calls=tf.data.AUTOTUNE)
            self._dataset = _with_distribute_options(dataset).prefetch(tf.data.AUTOTUNE)
        return self._dataset

    @property
    def keras_input(self):
        """What `model.fit` / `evaluate` read for whole passes: the PyDataset itself, else `dataset`.

        A PyDataset goes through Keras's own `PyDatasetAdapter`, as in
        `model.fit(py_dataset)`: its `workers`, `use_multiprocessing` and
        `max_queue_size`, and (with `fit_arguments`) a new batch order every
        epoch. Short runs of a few steps read `dataset`, its tf.data wrapper.
        """
        return self.dataset if self.py_dataset is None else self.py_dataset

    @property
    def steps_per_pass(self):
        """Batches in one epoch: `steps` when given, else one pass over the data when its size is known, else None."""
        if self.steps is not None:
            return self.steps
        if self.py_dataset is not None:
            return self.py_dataset.num_batches
        if self.num_examples is None:
            return None
        return -(-self.num_examples // self.global_batch_size)

    @property
    def infinite(self):
        """Whether the data never ends (a `.repeat()`ed dataset, a PyDataset without `num_batches`)."""
        if self.py_dataset is not None:
            return self.py_dataset.num_batches is None
        return int(self.examples.cardinality()) == tf.data.INFINITE_CARDINALITY

    @property
    def reorders(self):
        """Whether another seed reads the data in another order (arrays and PyDatasets; a tf.data.Dataset never)."""
        return self.shuffle and (self.arrays is not None or self.py_dataset is not None)

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
        """A callback that keys the data order of each epoch to the epoch's index (see `_epoch_order`), or None.

        For a PyDataset, whose batch order Keras draws from Python's `random`
        at the start of every epoch, the callback seeds it from `(seed,
        epoch)` (`_py_dataset.BatchOrder`).
        """
        if self.py_dataset is not None and self.shuffle:
            return py_datasets.BatchOrder(self.seed)
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

        Raises:
            ValueError: for another size when the data is a PyDataset, which
                makes its own batches.
        """
        if self.py_dataset is not None and per_replica_batch_size != self.per_replica_batch_size:
            raise ValueError(
                f"The data is a keras.utils.PyDataset, which makes its own batches ({self.global_batch_size} = "
                f"{self.per_replica_batch_size} per replica x {self.num_replicas}): it cannot be read at batch size "
                f"{per_replica_batch_size} per replica. Change the PyDataset's batch size, or pass the data as "
                "arrays or a tf.data.Dataset."
            )
        return DataPipeline(
            self.examples,
            per_replica_batch_size=per_replica_batch_size,
            num_replicas=self.num_replicas,
            num_examples=self.num_examples,
            shuffle=self.shuffle,
            seed=self.seed if seed is None else seed,
            arrays=self.arrays,
            epoch_counter=self.epoch_counter if seed is None else None,
            py_dataset=self.py_dataset,
            steps=self.steps,
            class_weight=self.class_weight,
        )

    def with_class_weight(self, class_weight):
        """The same pipeline with other class weights (a dict completed by `check_class_weight`, or None)."""
        pipeline = self.with_batch_size(self.per_replica_batch_size)
        pipeline.class_weight = class_weight
        return pipeline

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
            data holds fewer); strings come as `tf.string` tensors, which
            Keras's `predict`/`evaluate` take (`as_model_input`). With
            `class_weight`, the sample weights are multiplied by them.
        """
        size = num_batches * self.global_batch_size
        if self.py_dataset is not None and self.py_dataset.num_batches is not None:
            if (num_batches, seed) not in self._samples:  # Reading a PyDataset's batches may be slow: read once.
                self._samples[num_batches, seed] = as_model_input(
                    self._class_weighted(py_datasets.sample(self.py_dataset, num_batches, seed))
                )
            return self._samples[num_batches, seed]
        if self.arrays is not None:
            count = len(tf.nest.flatten(self.arrays)[0])
            rng = np.random.default_rng(seed)
            indices = np.sort(rng.choice(count, size=min(size, count), replace=False))
            return as_model_input(
                self._class_weighted(tf.nest.map_structure(lambda array: array[indices], self.arrays))
            )
        buffer_size = min(max(4 * size, 1024), 50_000)
        drawn = self.examples.shuffle(buffer_size, seed=seed, reshuffle_each_iteration=False).take(size)
        return as_model_input(self._class_weighted(next(iter(drawn.batch(size).as_numpy_iterator()))))

    def _class_weighted(self, sample):
        """`sample` with the class weights as per-example weights (times its own), as `dataset` gives them."""
        return sample if self.class_weight is None else class_weighted(sample, self.class_weight)

    def __repr__(self):
        return (
            f"<DataPipeline examples={self.num_examples} batch="
            f"{self.per_replica_batch_size}x{self.num_replicas}="
            f"{self.global_batch_size}>"
        )


def make_pipeline(
    data,
    *,
    batch_size,
    num_replicas,
    shuffle,
    seed=None,
    input_rank=None,
    input_dtypes=None,
    name="data",
    steps=None,
):
    """Turns arrays, a `tf.data.Dataset` or a `keras.utils.PyDataset` into a pipeline.

    Args:
        data: `(x, y)` or `(x, y, sample_weight)` arrays (x may be a dict or
            list of arrays), a `tf.data.Dataset` batched or not, or a
            `keras.utils.PyDataset`.
        batch_size: Examples per replica, or None: 32 for unbatched data,
            the data's own batch size split over the replicas for batched data.
            A PyDataset makes its own batches: None, or its batch size over
            the replicas.
        num_replicas: Replicas of the strategy.
        shuffle: Whether to reshuffle every epoch (arrays' examples, a
            PyDataset's batch order, as `model.fit(shuffle=True)` does; a
            tf.data.Dataset keeps the order the user gave it, as in
            `model.fit`).
        seed: Shuffle and sampling seed.
        input_rank: Rank of the model's input including the batch axis, when
            known; tells batched from unbatched datasets.
        input_dtypes: The model's input dtypes in the structure of its
            inputs (`model.input`), when known: arrays of strings are taken
            for string inputs (`keras.Input(shape=(), dtype="string")`), and
            refused for the others.
        name: How error messages call this data ("training data", ...).
        steps: Batches per epoch, or None for one pass (see `check_length`).

    Returns:
        A `DataPipeline`.

    Raises:
        TypeError: for data of an unsupported type.
        ValueError: for empty data, unequal lengths, data without labels,
            or a PyDataset whose batches are not `batch_size` x replicas.
    """
    if batch_size is not None:
        validate_batch_size(batch_size)
    arrays = None
    num_examples = None
    if isinstance(data, tf.data.Dataset):
        examples, batch_seen = _unbatched(data, input_rank, name)
    elif isinstance(data, keras.utils.PyDataset):
        examples, batch_seen = _unbatched(py_datasets.to_tf(data, name=name), input_rank, name)
    elif isinstance(data, (tuple, list)):
        arrays = inputs.as_arrays(data, name, input_dtypes)
        num_examples = len(tf.nest.flatten(arrays)[0])
        examples = tf.data.Dataset.from_tensor_slices(arrays)
        batch_seen = None
    else:
        raise TypeError(
            f"Unsupported {name}: {type(data).__name__}. Pass a tuple "
            "`(x, y)` of arrays, a `tf.data.Dataset` yielding `(x, y)`, or a "
            "`keras.utils.PyDataset` (for a model whose own train_step reads no labels, a VAE, pass `(x, x)`)."
        )
    py_dataset = data if isinstance(data, keras.utils.PyDataset) else None
    if arrays is None:
        # Keras reshuffles a PyDataset's batch order, unless it is infinite; never a tf.data.Dataset.
        shuffle = shuffle and py_dataset is not None and py_dataset.num_batches is not None
        cardinality = int(examples.cardinality())
        num_examples = cardinality if cardinality >= 0 else None
        if num_examples is None and isinstance(data, tf.data.Dataset) and int(data.cardinality()) >= 0:
            # Unbatching loses the count. The source has a known, finite length (an in-memory
            # dataset, as a rule: file readers report none), so counting it is one cheap pass; a
            # known count lets Keras size its progress bar and stops its "ran out of data" warning.
            num_examples = int(examples.reduce(np.int64(0), lambda count, _: count + 1))
            examples = examples.apply(tf.data.experimental.assert_cardinality(num_examples))
    inputs.check_not_empty(examples, name)
    per_replica = batch_size
    if py_dataset is not None:
        per_replica = py_datasets.per_replica_batch_size(batch_seen, batch_size, num_replicas, name)
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
        py_dataset=py_dataset,
        steps=steps,
    )


def fit_arguments(train, validation=None):
    """`model.fit`'s data arguments for whole epochs over `train` (and `validation`) pipelines.

    A PyDataset is passed itself, so that Keras's `PyDatasetAdapter` reads
    it (workers, queue) and reshuffles its batch order every epoch
    (`shuffle`), as `model.fit(py_dataset)` does; arrays come as a dataset
    that reshuffles itself, and a tf.data.Dataset is read as given.
    `steps_per_epoch` / `validation_steps` are the Playbook's. Class weights come in the dataset's batches; a PyDataset
    takes them as `model.fit(class_weight=...)` does, unless it yields
    sample weights of its own, which Keras's adapter refuses with class
    weights: its tf.data wrapper then multiplies the two.
    """
    # Only a PyDataset is shuffled by Keras (it warns that it ignores `shuffle` for a tf.data.Dataset).
    shuffle = bool(train.shuffle) and train.py_dataset is not None
    arguments = {"x": train.keras_input, "shuffle": shuffle, "steps_per_epoch": train.steps}
    if train.py_dataset is not None and train.class_weight is not None:
        if len(train.examples.element_spec) == 3:
            arguments["x"] = train.dataset
        else:
            arguments["class_weight"] = train.class_weight
    if validation is not None:
        arguments.update(validation_data=validation.keras_input, validation_steps=validation.steps)
    return arguments


def evaluate_arguments(pipeline):
    """`model.evaluate`'s data arguments for a whole pass over `pipeline` (its `steps` when given)."""
    return {"x": pipeline.keras_input, "steps": pipeline.steps}


def validation_at(pipeline, per_replica_batch_size):
    """The validation pipeline for training at another batch size; a PyDataset keeps its own batches.

    The validation batch size changes no loss, only how many examples an
    evaluation step reads (`model.fit`'s `validation_batch_size`), so a
    PyDataset's validation batches stay as it makes them.
    """
    if pipeline is None or pipeline.py_dataset is not None:
        return pipeline
    return pipeline.with_batch_size(per_replica_batch_size)


def as_model_input(structure):
    """`structure` with its NumPy arrays of strings (unicode, bytes, or objects holding them) as `tf.string` tensors.

    Keras's `predict` and `evaluate` refuse NumPy string arrays ("Invalid
    dtype"), and `tf.data` gives strings as object arrays of bytes: every
    place the library feeds data to a model itself passes it through this.
    When a structure holds strings, its other arrays become tensors too (a
    model called on a dict refuses tensors mixed with arrays); a structure
    without strings is returned as it is.
    """

    def is_strings(leaf):
        return isinstance(leaf, np.ndarray) and (
            leaf.dtype.kind in "US" or (leaf.dtype.kind == "O" and leaf.size and isinstance(leaf.flat[0], (str, bytes)))
        )

    if not any(is_strings(leaf) for leaf in tf.nest.flatten(structure)):
        return structure
    return tf.nest.map_structure(
        lambda leaf: tf.constant(leaf, dtype=tf.string) if is_strings(leaf) else tf.convert_to_tensor(leaf),
        structure,
    )


def _unbatched(dataset, input_rank, name):
    """Returns `(examples, batch_size_seen)`; batched data is unbatched."""
    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) not in (2, 3):
        raise ValueError(
            f"The {name} must yield `(x, y)` or `(x, y, sample_weight)` tuples. "
            f"Received elements with structure {spec}. For a model whose own train_step reads no labels (a VAE, "
            "which `model.fit(x)` takes), yield `(x, x)`."
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


def labels_of(pipeline, num_batches=3):
    """Returns the labels to check: all of them for arrays, else the first batches."""
    if pipeline.arrays is not None:
        return pipeline.arrays[1]
    batches = pipeline.first_batches(num_batches)
    return tf.nest.map_structure(lambda *parts: np.concatenate(parts), *[b[1] for b in batches])
