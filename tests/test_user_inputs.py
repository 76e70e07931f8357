"""The inputs `model.fit` users bring: class weights, lists, NaN deep in arrays, `validation_split`, batch sizes."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_playbook import Playbook

NUM = 48  # One full-batch step per epoch: the order of examples within it changes nothing.
WEIGHTS = {0: 1.0, 1: 4.0, 2: 0.5}


def _data(encoding="sparse", num=NUM):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(num, 5)).astype("float32")
    classes = rng.integers(0, 2 if encoding == "binary" else 3, size=num)
    if encoding == "onehot":
        return x, np.eye(3, dtype="float32")[classes], classes
    if encoding == "binary":
        return x, classes.reshape(-1, 1).astype("float32"), classes
    return x, classes.astype("int64"), classes


def _builder(encoding="sparse", seed=7):
    def build():
        keras.utils.set_random_seed(seed)
        binary = encoding == "binary"
        model = keras.Sequential(
            [keras.Input((5,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1 if binary else 3)]
        )
        loss = {
            "sparse": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            "onehot": keras.losses.CategoricalCrossentropy(from_logits=True),
            "binary": keras.losses.BinaryCrossentropy(from_logits=True),
        }[encoding]
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss=loss)
        return model

    return build


def _reference(strategy, build, x, y, epochs=1, **fit_arguments):
    """The same model trained by `model.fit` in the same strategy, one full batch per step."""
    with strategy.scope():
        model = build()
    model.fit(x, y, batch_size=len(x), epochs=epochs, shuffle=False, verbose=0, **fit_arguments)
    return model.get_weights()


def _close(first, second, atol=1e-5):
    return all(np.allclose(a, b, atol=atol) for a, b in zip(first, second))


def _playbook(strategy, build, data, **kwargs):
    if "batch_size" not in kwargs:
        kwargs["batch_size"] = len(data[0]) // strategy.num_replicas_in_sync
    return Playbook(build, data, strategy=strategy, verbose=0, **kwargs)


# Item 7: class weights ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["sparse", "onehot", "binary"])
def test_class_weight_trains_as_model_fit_does(strategy, encoding):
    x, y, _ = _data(encoding)
    build = _builder(encoding)
    weights = {0: 1.0, 1: 4.0} if encoding == "binary" else WEIGHTS
    pb = _playbook(strategy, build, (x, y), class_weight=weights)
    pb.fit(epochs=2, watch=False, verbose=0)
    assert _close(pb.model.get_weights(), _reference(strategy, build, x, y, epochs=2, class_weight=weights))
    assert not _close(pb.model.get_weights(), _reference(strategy, build, x, y, epochs=2))


def test_class_weight_on_a_dataset_trains_as_model_fit_does(strategy):
    x, y, _ = _data()
    build = _builder()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(NUM)
    pb = _playbook(strategy, build, dataset, class_weight=WEIGHTS, batch_size=None)
    pb.fit(epochs=1, watch=False, verbose=0)
    assert _close(pb.model.get_weights(), _reference(strategy, build, x, y, class_weight=WEIGHTS))


class _Batches(keras.utils.PyDataset):
    """One full batch `(x, y[, sample_weight])` per epoch."""

    def __init__(self, *arrays):
        super().__init__()
        self.arrays = arrays

    def __len__(self):
        return 1

    def __getitem__(self, index):
        return self.arrays


@pytest.mark.parametrize("own_weights", [False, True])
def test_class_weight_on_a_py_dataset_trains_as_model_fit_does(strategy, own_weights):
    x, y, classes = _data()
    sample_weight = np.linspace(0.2, 2.0, NUM).astype("float32")
    build = _builder()
    data = _Batches(x, y, sample_weight) if own_weights else _Batches(x, y)
    pb = _playbook(strategy, build, data, class_weight=WEIGHTS, batch_size=None)
    pb.fit(epochs=2, watch=False, verbose=0)
    product = (sample_weight if own_weights else 1.0) * np.array([WEIGHTS[c] for c in classes], dtype="float32")
    assert _close(pb.model.get_weights(), _reference(strategy, build, x, y, epochs=2, sample_weight=product))


def test_class_weight_multiplies_the_sample_weights(strategy):
    x, y, classes = _data()
    sample_weight = np.linspace(0.2, 2.0, NUM).astype("float32")
    build = _builder()
    pb = _playbook(strategy, build, (x, y, sample_weight), class_weight=WEIGHTS)
    pb.fit(epochs=1, watch=False, verbose=0)
    product = sample_weight * np.array([WEIGHTS[c] for c in classes], dtype="float32")
    assert _close(pb.model.get_weights(), _reference(strategy, build, x, y, sample_weight=product))
    assert not _close(pb.model.get_weights(), _reference(strategy, build, x, y, sample_weight=sample_weight))


def test_fit_class_weight_replaces_the_playbooks_for_that_run_and_is_recorded(strategy):
    x, y, _ = _data()
    build = _builder()
    pb = _playbook(strategy, build, (x, y), class_weight={1: 9.0})
    pb.fit(epochs=1, watch=False, verbose=0, class_weight=WEIGHTS)
    assert _close(pb.model.get_weights(), _reference(strategy, build, x, y, class_weight=WEIGHTS))
    assert pb.journal.latest("fit").call["arguments"]["class_weight"] == {"0": 1.0, "1": 4.0, "2": 0.5}


def test_run_trains_with_the_class_weights(strategy):
    x, y, _ = _data()
    build = _builder()
    pb = _playbook(strategy, build, (x, y), class_weight=WEIGHTS)
    pb.run(epochs=1, plan=[("fit", {"epochs": 2, "watch": False})])
    assert _close(pb.model.get_weights(), _reference(strategy, build, x, y, epochs=2, class_weight=WEIGHTS))


def test_class_weight_is_part_of_the_setup(tmp_path):
    x, y, _ = _data()
    build = _builder()
    first = Playbook(build, (x, y), class_weight=WEIGHTS, directory=tmp_path, verbose=0)
    assert first.journal.setup.fingerprints["class_weight"] == {"0": 1.0, "1": 4.0, "2": 0.5}
    with pytest.warns(UserWarning, match=r"class weight: \{'0': 1.0, '1': 4.0, '2': 0.5\} -> \{'1': 2.0\}"):
        second = Playbook(build, (x, y), class_weight={1: 2.0}, directory=tmp_path, verbose=0)
    assert [result.kind for result in second.journal].count("setup") == 2
    third = Playbook(build, (x, y), class_weight={1: 2.0}, directory=tmp_path, verbose=0)
    assert [result.kind for result in third.journal].count("setup") == 2


@pytest.mark.parametrize(
    ("class_weight", "error", "match"),
    [
        ([1.0, 2.0], TypeError, r"must be a dict mapping class ids"),
        ({}, ValueError, "empty"),
        ({3: 1.0}, ValueError, r"key 3 is not a class id .* 3 classes"),
        ({"cat": 1.0}, ValueError, "key 'cat' is not a class id"),
        ({0: -1.0}, ValueError, "finite weights >= 0"),
    ],
)
def test_bad_class_weight_is_refused_before_any_compute(class_weight, error, match):
    x, y, _ = _data()
    with pytest.raises(error, match=match):
        Playbook(_builder(), (x, y), class_weight=class_weight, verbose=0)
    pb = Playbook(_builder(), (x, y), verbose=0)
    before = pb.model.get_weights()
    with pytest.raises(error, match="fit: argument `class_weight`"):
        pb.fit(epochs=1, class_weight=class_weight)
    assert _close(pb.model.get_weights(), before, atol=0)


def test_class_weight_is_refused_for_several_outputs():
    x, y, _ = _data()
    inputs = keras.Input((5,))
    model = keras.Model(inputs, [keras.layers.Dense(3)(inputs), keras.layers.Dense(3)(inputs)])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer="sgd", loss=[loss, loss])
    with pytest.raises(ValueError, match="only supported for models with a single output"):
        Playbook(model, (x, (y, y)), class_weight=WEIGHTS, verbose=0)


# Item 8: bad values and the inputs model.fit users type ------------------------------------------------------------


def test_nan_deep_in_arrays_is_refused_naming_its_row():
    x, y, _ = _data(num=200)
    x[120, 2] = np.nan
    with pytest.raises(ValueError, match=r"1 NaN or inf value\(s\) in `x`, in 1 example\(s\), the first at row 120"):
        Playbook(_builder(), (x, y), batch_size=16, verbose=0)
    x[120, 2] = 0.0
    y = y.astype("float32")
    y[150] = np.inf
    with pytest.raises(ValueError, match="row 150"):
        Playbook(_builder(), (x, y), batch_size=16, verbose=0)


def test_streamed_data_says_how_much_was_checked():
    x, y, _ = _data(num=64)
    x[3, 0] = np.nan
    with pytest.raises(ValueError, match="first 3 batches of 16 are checked"):
        Playbook(_builder(), tf.data.Dataset.from_tensor_slices((x, y)).batch(16), verbose=0)
    x[3, 0] = 0.0
    pb = Playbook(_builder(), tf.data.Dataset.from_tensor_slices((x, y)).batch(16), verbose=0)
    assert "only its first 3 batches (48 examples) were checked for NaN or inf" in pb.journal.setup.message
    arrays = Playbook(_builder(), (x, y), verbose=0)
    assert "NaN" not in arrays.journal.setup.message


def test_a_nan_past_the_checked_batches_of_a_stream_is_named_by_the_initial_loss_check():
    """Not "the model outputs logits": the initial outputs are NaN because an input is."""
    x, y, _ = _data(num=64)
    x[60, 0] = np.nan  # In the last batch: past the 3 batches checked when the Playbook is made.
    pb = Playbook(_builder(), tf.data.Dataset.from_tensor_slices((x, y)).batch(16), verbose=0)
    result = pb.check_initial_loss(num_batches=4)
    assert not result.ok and result.output_kind == "non-finite"
    assert "inputs of those examples hold NaN or inf" in result.message and "logits" not in result.message


def test_lists_of_rows_and_of_numpy_scalars_train_as_arrays(strategy):
    x, y, _ = _data()
    build = _builder()
    pb = _playbook(strategy, build, (list(x), list(y)))
    assert pb.train_data.arrays[0].shape == (NUM, 5) and pb.train_data.arrays[1].shape == (NUM,)
    pb.fit(epochs=1, watch=False, verbose=0)
    assert _close(pb.model.get_weights(), _reference(strategy, build, x, y))


def test_a_list_of_inputs_stays_the_inputs_of_a_multi_input_model():
    x, y, _ = _data()
    first, second = keras.Input((5,)), keras.Input((5,))
    model = keras.Model([first, second], keras.layers.Dense(3)(keras.layers.Concatenate()([first, second])))
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pb = Playbook(model, ([x, x * 2], list(y)), verbose=0)
    assert len(pb.train_data.arrays[0]) == 2 and pb.train_data.arrays[0][1].shape == (NUM, 5)
    with pytest.raises(ValueError, match="is a list of 48 arrays, but the model takes 2 inputs"):
        Playbook(model, (list(x), y), verbose=0)


def test_rows_of_different_shapes_are_refused_in_one_short_line():
    x, y, _ = _data(num=900)
    rows = [row[: 3 + index % 2] for index, row in enumerate(x)]
    with pytest.raises(ValueError) as caught:
        Playbook(_builder(), (rows, y), verbose=0)
    message = str(caught.value)
    assert "list of 900 items" in message and "not rows of one shape" in message
    assert len(message) < 300 and "\n" not in message


def test_validation_split_takes_the_last_fraction_before_shuffling(strategy):
    x, y, _ = _data(num=64)
    build = _builder()
    split = _playbook(strategy, build, (x, y), validation_split=0.25, batch_size=48 // strategy.num_replicas_in_sync)
    np.testing.assert_array_equal(split.validation_data.arrays[0], x[48:])
    np.testing.assert_array_equal(split.train_data.arrays[1], y[:48])
    history = split.fit(epochs=1, watch=False, verbose=0)
    assert "val_loss" in history.history
    assert _close(split.model.get_weights(), _reference(strategy, build, x[:48], y[:48]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"validation_split": 1.5}, r"`validation_split` must be in \(0, 1\).*Received: validation_split=1.5"),
        ({"validation_split": 0}, r"`validation_split` must be in \(0, 1\)"),
        ({"validation_split": 0.2, "validation_data": "arrays"}, "either `validation_data` or `validation_split`"),
        ({"validation_split": 0.2, "dataset": True}, "only supported for arrays"),
    ],
)
def test_bad_validation_split_is_refused(kwargs, match):
    x, y, _ = _data()
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8) if kwargs.pop("dataset", False) else (x, y)
    if kwargs.get("validation_data") == "arrays":
        kwargs["validation_data"] = (x, y)
    with pytest.raises(ValueError, match=match):
        Playbook(_builder(), data, verbose=0, **kwargs)


def test_a_batch_larger_than_the_data_warns_naming_both():
    x, y, _ = _data(num=40)
    with pytest.warns(UserWarning, match="global batch size 64 .* larger than the 40 training examples"):
        Playbook(_builder(), (x, y), batch_size=64, verbose=0)


@pytest.mark.parametrize("form", ["arrays", "stream of unknown size"])
def test_find_batch_size_never_proposes_more_than_the_data(strategy, form):
    x, y, _ = _data(num=40)
    data = (x, y)
    if form != "arrays":  # filter() hides the size: tf.data reports an unknown cardinality.
        data = tf.data.Dataset.from_tensor_slices(data).filter(lambda *_: True)
    pb = _playbook(strategy, _builder(), data, batch_size=2)
    assert (pb.train_data.num_examples is None) == (form != "arrays")
    result = pb.find_batch_size(
        initial_batch_size=2, min_steps_per_epoch=1, criterion="largest", steps_per_size=1, max_trials=8
    )
    per_replica = 40 // strategy.num_replicas_in_sync
    largest = 16 if per_replica == 20 else 32  # Doublings of 2 within the data.
    assert [trial["batch_size"] for trial in result.trials][-1] == largest
    assert all(trial["batch_size"] <= per_replica for trial in result.trials)
