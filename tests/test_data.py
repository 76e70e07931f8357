import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_playbook import _data as data_module
from keras_playbook import _inputs as inputs


class _Batches(keras.utils.PyDataset):
    def __init__(self, x, y, batch_size):
        super().__init__()
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self):
        return int(np.ceil(len(self.x) / self.batch_size))

    def __getitem__(self, index):
        part = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return self.x[part], self.y[part]


def _count(pipeline):
    return sum(len(batch[1]) for batch in pipeline.dataset.as_numpy_iterator())


def test_arrays_are_batched_per_replica_times_replicas(strategy, digits):
    replicas = strategy.num_replicas_in_sync
    pipeline = data_module.make_pipeline(
        (digits["x_train"], digits["y_train"]),
        batch_size=16,
        num_replicas=replicas,
        shuffle=True,
        seed=1,
    )
    assert pipeline.global_batch_size == 16 * replicas
    first = next(pipeline.dataset.as_numpy_iterator())
    assert first[0].shape == (16 * replicas, 64)
    assert _count(pipeline) == 512
    assert pipeline.num_examples == 512


def test_arrays_reshuffle_every_epoch(digits):
    pipeline = data_module.make_pipeline(
        (digits["x_train"], digits["y_train"]),
        batch_size=512,
        num_replicas=1,
        shuffle=True,
        seed=1,
    )
    first = next(pipeline.dataset.as_numpy_iterator())[1]
    second = next(pipeline.dataset.as_numpy_iterator())[1]
    assert sorted(first) == sorted(second) and not np.array_equal(first, second)


@pytest.mark.parametrize("form", ["batched", "unbatched", "py_dataset"])
def test_datasets_and_py_datasets_give_the_same_examples(form, digits):
    x, y = digits["x_train"], digits["y_train"]
    if form == "batched":
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(20)
    elif form == "unbatched":
        data = tf.data.Dataset.from_tensor_slices((x, y))
    else:
        data = _Batches(x, y, 20)
    own = form == "py_dataset"  # A PyDataset keeps its own batches (of 20), in a new order every pass.
    pipeline = data_module.make_pipeline(
        data,
        batch_size=None if own else 8,
        num_replicas=2,
        shuffle=True,
        input_rank=2,
    )
    assert pipeline.global_batch_size == (20 if own else 16)
    batches = list(pipeline.dataset.as_numpy_iterator())
    assert batches[0][0].shape == (pipeline.global_batch_size, 64)
    labels = np.concatenate([b[1] for b in batches])
    np.testing.assert_array_equal(np.sort(labels) if own else labels, np.sort(y) if own else y)


def test_batch_size_defaults_to_the_data_batch(digits):
    data = tf.data.Dataset.from_tensor_slices((digits["x_train"], digits["y_train"])).batch(40)
    pipeline = data_module.make_pipeline(data, batch_size=None, num_replicas=2, shuffle=False)
    assert (pipeline.per_replica_batch_size, pipeline.global_batch_size) == (20, 40)
    arrays = data_module.make_pipeline(
        (digits["x_train"], digits["y_train"]), batch_size=None, num_replicas=2, shuffle=False
    )
    assert arrays.per_replica_batch_size == data_module.DEFAULT_BATCH_SIZE


def test_sample_is_fixed_by_seed(digits):
    pipeline = data_module.make_pipeline(
        (digits["x_train"], digits["y_train"]),
        batch_size=16,
        num_replicas=1,
        shuffle=True,
    )
    first = pipeline.sample(2, seed=3)
    assert first[0].shape == (32, 64)
    np.testing.assert_array_equal(first[1], pipeline.sample(2, seed=3)[1])
    assert not np.array_equal(first[1], pipeline.sample(2, seed=4)[1])
    unbatched = data_module.make_pipeline(
        tf.data.Dataset.from_tensor_slices((digits["x_train"], digits["y_train"])),
        batch_size=16,
        num_replicas=1,
        shuffle=False,
        input_rank=2,
    )
    np.testing.assert_array_equal(unbatched.sample(2, seed=3)[1], unbatched.sample(2, seed=3)[1])


@pytest.mark.parametrize(
    "batch_size, error", [(0, ValueError), (-4, ValueError), ("32", TypeError), (True, TypeError), (2.0, TypeError)]
)
def test_bad_batch_size_raises(batch_size, error, digits):
    with pytest.raises(error, match="batch_size"):
        data_module.make_pipeline(
            (digits["x_train"], digits["y_train"]),
            batch_size=batch_size,
            num_replicas=1,
            shuffle=False,
        )


def test_empty_data_raises():
    with pytest.raises(ValueError, match="empty"):
        data_module.make_pipeline((np.zeros((0, 4)), np.zeros((0,))), batch_size=4, num_replicas=1, shuffle=False)
    empty = tf.data.Dataset.from_tensor_slices((np.zeros((0, 4)), np.zeros((0,))))
    with pytest.raises(ValueError, match="empty"):
        data_module.make_pipeline(empty, batch_size=4, num_replicas=1, shuffle=False)


def test_unequal_lengths_and_unsupported_types_raise(digits):
    with pytest.raises(ValueError, match="same length"):
        data_module.make_pipeline(
            (digits["x_train"], digits["y_train"][:10]), batch_size=4, num_replicas=1, shuffle=False
        )
    with pytest.raises(TypeError, match="Unsupported training data: ndarray"):
        data_module.make_pipeline(digits["x_train"], batch_size=4, num_replicas=1, shuffle=False, name="training data")
    with pytest.raises(ValueError, match=r"must yield `\(x, y\)`"):
        data_module.make_pipeline(
            tf.data.Dataset.from_tensor_slices(digits["x_train"]), batch_size=4, num_replicas=1, shuffle=False
        )


@pytest.mark.parametrize("component", ["x", "y"])
def test_nan_or_inf_in_first_batches_raises(component, digits):
    x, y = digits["x_train"].copy(), digits["y_train"].astype("float32")
    if component == "x":
        x[5, 3] = np.nan
    else:
        y[7] = np.inf
    pipeline = data_module.make_pipeline((x, y), batch_size=16, num_replicas=1, shuffle=True)
    row = 5 if component == "x" else 7
    with pytest.raises(ValueError, match=f"NaN or inf value.*`{component}`.*the first at row {row}"):
        inputs.check_finite(pipeline)


def test_validation_structure_must_match(digits):
    train = data_module.make_pipeline(
        (digits["x_train"], digits["y_train"]), batch_size=8, num_replicas=1, shuffle=False
    )
    wrong_shape = data_module.make_pipeline(
        (digits["x_val"][:, :32], digits["y_val"]), batch_size=8, num_replicas=1, shuffle=False
    )
    with pytest.raises(ValueError, match="same structure.*shape"):
        inputs.check_same_structure(train, wrong_shape)
    wrong_nesting = data_module.make_pipeline(
        ({"pixels": digits["x_val"]}, digits["y_val"]), batch_size=8, num_replicas=1, shuffle=False
    )
    with pytest.raises(ValueError, match="same structure.*structures differ"):
        inputs.check_same_structure(train, wrong_nesting)
    with_weights = data_module.make_pipeline(
        (digits["x_val"], digits["y_val"], np.ones(len(digits["y_val"]))), batch_size=8, num_replicas=1, shuffle=False
    )
    with pytest.raises(ValueError, match="same structure"):
        inputs.check_same_structure(train, with_weights)


def test_unequal_lengths_inside_a_dict_input_raise(digits):
    x = {"left": digits["x_train"][:-1], "right": digits["x_train"]}
    with pytest.raises(ValueError, match=r"same length.*\"x\['left'\]\": 511"):
        data_module.make_pipeline((x, digits["y_train"]), batch_size=4, num_replicas=1, shuffle=False)


def _tiny(units=3):
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(units)])


def test_common_data_mistakes_get_clear_errors_before_any_compute():
    from keras_playbook import Playbook
    from tests import helpers

    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 4)).astype("float32")
    cases = [
        (
            (x, np.array(["setosa", "versicolor"] * 100)),
            helpers.LOGITS_LOSS,
            3,
            "labels .* are strings.*'setosa'.*np.unique",
        ),
        (
            ({"a": x, "b": np.array(["u", "v"] * 100)}, np.zeros(200, int)),
            helpers.LOGITS_LOSS,
            3,
            "`x\\['b'\\]` of the training data holds strings.*StringLookup",
        ),
        ((x, rng.standard_normal((200, 2))), "mse", 1, "shape \\(200, 2\\).*output is \\(None, 1\\).*broadcast"),
    ]
    for data, loss, units, match in cases:
        with pytest.raises(ValueError, match=match):
            Playbook(_tiny(units), data, loss=loss, verbose=0)


def test_python_lists_and_a_list_of_labels_per_output_are_read_as_model_fit_reads_them():
    from keras_playbook import Playbook
    from tests import helpers

    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 4)).astype("float32")
    pb = Playbook(_tiny(), (x.tolist(), [0, 1, 2, 1] * 50), loss=helpers.LOGITS_LOSS, verbose=0)
    assert pb.train_data.num_examples == 200
    assert pb.fit(1, verbose=0).history["loss"][0] > 0
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8)(inputs)
    two = keras.Model(inputs, [keras.layers.Dense(1, name="a")(hidden), keras.layers.Dense(1, name="b")(hidden)])
    pb = Playbook(two, (x, [x[:, 0], x[:, 1]]), loss=["mse", "mse"], verbose=0)
    history = pb.fit(1, verbose=0)  # Two outputs, two label arrays: not one stacked (2, 200) array.
    assert {"a_loss", "b_loss"} <= set(history.history)


def test_a_batched_in_memory_dataset_keeps_its_length(capsys):
    import warnings

    from keras_playbook import Playbook
    from tests import helpers

    data = helpers.digits_data()
    train = tf.data.Dataset.from_tensor_slices((data["x_train"], data["y_train"])).batch(32)
    validation = tf.data.Dataset.from_tensor_slices((data["x_val"], data["y_val"])).batch(32)
    pb = Playbook(
        helpers.mlp(),
        train,
        validation_data=validation,
        loss=helpers.LOGITS_LOSS,
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        verbose=0,
    )
    assert pb.train_data.num_examples == 512 and pb.validation_data.num_examples == 128
    assert int(pb.train_data.dataset.cardinality()) == 16
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pb.sweep_momentum(values=[0.9, 0.95], num_steps=5, learning_rate=0.05)
    assert not [w for w in caught if "ran out of data" in str(w.message)]
    pb.fit(1, verbose=1)
    assert "Unknown" not in capsys.readouterr().out
