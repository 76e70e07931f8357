"""Data read as `model.fit` reads it: a PyDataset through Keras's own adapter, infinite datasets with their steps."""

import math
import multiprocessing.dummy
import threading
import warnings

import keras
import pytest
import tensorflow as tf

from keras_playbook import Playbook
from keras_playbook import _procedure as procedure
from tests import helpers


class _Recorded(keras.utils.PyDataset):
    """Digits in batches of `batch_size`; records, per epoch Keras announces, which batches are read and by whom.

    `num_batches=None` makes it infinite (batch `i` is batch `i % count`).
    """

    def __init__(self, x, y, batch_size, infinite=False, **kwargs):
        super().__init__(**kwargs)
        self.x, self.y, self.batch_size, self.infinite = x, y, batch_size, infinite
        self.count = math.ceil(len(x) / batch_size)
        self.epochs = []  # One list of (index, thread) per `on_epoch_begin` (which only Keras's adapter calls).
        self.lock = threading.Lock()

    @property
    def num_batches(self):
        return None if self.infinite else self.count

    def __getitem__(self, index):
        with self.lock:
            if self.epochs:
                self.epochs[-1].append((index, threading.current_thread()))
        part = slice((index % self.count) * self.batch_size, (index % self.count + 1) * self.batch_size)
        return self.x[part], self.y[part]

    def on_epoch_begin(self):
        with self.lock:
            self.epochs.append([])


def _playbook(model, train, validation=None, strategy=None, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Playbook(
            model,
            train,
            validation_data=validation,
            loss=helpers.LOGITS_LOSS,
            optimizer=keras.optimizers.Adam(3e-3),
            strategy=strategy,
            verbose=0,
            **kwargs,
        )


def _py_datasets(digits, **kwargs):
    train = _Recorded(digits["x_train"][:256], digits["y_train"][:256], 32, **kwargs)
    validation = _Recorded(digits["x_val"], digits["y_val"], 32, **kwargs)
    return train, validation


# A PyDataset through Keras's adapter ------------------------------------------------------------------------------


def test_a_py_dataset_with_workers_is_read_by_keras_workers_in_a_new_order_every_epoch(strategy, digits):
    train, validation = _py_datasets(digits, workers=3)
    pb = _playbook(helpers.mlp(), train, validation, strategy)
    assert pb.train_data.global_batch_size == 32  # Its own batches, split over the replicas.
    train.epochs.clear()
    history = pb.fit(epochs=3, verbose=0)
    # Keras's adapter announced every epoch (under a strategy, Keras first peeks at a batch in an epoch of its own,
    # before training and before every evaluation).
    peeks = int(strategy.num_replicas_in_sync > 1)
    assert len(train.epochs) == 3 + peeks and len(validation.epochs) == 3 * (1 + peeks)
    orders = [[index for index, _ in epoch] for epoch in train.epochs[-3:]]
    assert all(sorted(order) == list(range(train.count)) for order in orders)  # Each batch once per epoch.
    assert len({tuple(order) for order in orders}) > 1 and orders != [list(range(train.count))] * 3  # Reshuffled.
    # Read by the worker threads of Keras's OrderedEnqueuer (a multiprocessing.dummy pool), not by tf.data.
    readers = {thread for epoch in train.epochs for _, thread in epoch}
    assert all(isinstance(thread, multiprocessing.dummy.DummyProcess) for thread in readers)
    assert len(readers) > 1
    losses = history.history["loss"]
    assert len(losses) == 3 and losses[-1] < losses[0] and "val_loss" in history.history
    assert pb.journal.latest("fit").call["steps"] == 3 * train.count


def test_the_same_fit_reads_a_py_dataset_in_the_same_orders(digits):
    """The batch order of each epoch is drawn from (seed, epoch), and your Python `random` is left as it was."""
    import random

    orders = []
    for _ in range(2):
        train, _ = _py_datasets(digits)  # workers=1: batches read in the order Keras shuffled them.
        pb = _playbook(helpers.mlp(), train)
        train.epochs.clear()
        random.seed(5)
        pb.fit(epochs=2, verbose=0, watch=False)
        assert random.random() == random.Random(5).random()
        orders.append([[index for index, _ in epoch] for epoch in train.epochs])
    assert orders[0] == orders[1] and orders[0][0] != orders[0][1]


def test_stages_that_change_the_batch_size_refuse_a_py_dataset(digits):
    train, validation = _py_datasets(digits)
    pb = _playbook(helpers.mlp(), train, validation)
    with pytest.raises(
        ValueError,
        match=r"find_batch_size: the training data is a keras\.utils\.PyDataset, which "
        r"makes its own batches \(32 examples\)",
    ):
        pb.find_batch_size(max_trials=2, steps_per_size=2)
    with pytest.raises(ValueError, match=r"PyDataset, which makes its own batches.*batch size 64"):
        pb.fit(epochs=1, batch_size=64)
    assert pb.journal.latest("fit") is None
    pb.find_lr(num_steps=20)  # A rate measured at the PyDataset's batches: the PyDataset is named, not its staleness.
    with pytest.raises(ValueError, match=r"PyDataset, which makes its own batches.*batch size 64"):
        pb.fit(epochs=1, batch_size=64)
    with pytest.raises(ValueError, match=r"PyDataset, which makes its own batches \(32 examples.*batch_size=8"):
        _playbook(helpers.mlp(), train, batch_size=8)


def test_the_default_plan_leaves_find_batch_size_out_for_a_py_dataset(digits):
    train, validation = _py_datasets(digits)
    names = [
        step if isinstance(step, str) else step[0]
        for step in procedure.default_plan(_playbook(helpers.mlp(), train, validation), epochs=1)
    ]
    assert "find_batch_size" not in names and names[:2] == ["check_initial_loss", "overfit_small_sample"]
    arrays = _playbook(helpers.mlp(), (digits["x_train"], digits["y_train"]))
    assert "find_batch_size" in [
        step if isinstance(step, str) else step[0] for step in procedure.default_plan(arrays, epochs=1)
    ]


@pytest.mark.slow
def test_run_says_find_batch_size_was_left_out_for_a_py_dataset(digits):
    """The whole default plan (on the default strategy: 100 s on two replicas; fit's reading is tested on both)."""
    train, _ = _py_datasets(digits)
    pb = _playbook(helpers.mlp(), train)
    result = pb.run(epochs=1)
    assert "find_batch_size was left out of the plan" in result.message
    assert [step["stage"] for step in result.steps][:3] == ["check_initial_loss", "overfit_small_sample", "find_lr"]
    assert result.steps[-1]["stage"] == "fit" and result.steps[-1]["ok"]


def test_the_range_test_says_a_dataset_comes_in_one_order(digits):
    dataset = tf.data.Dataset.from_tensor_slices((digits["x_train"], digits["y_train"])).batch(32)
    result = _playbook(helpers.mlp(), dataset).find_lr(num_steps=20, repeats=3)
    assert "3 data orders" not in result.message and "that one order, not 3" in result.message
    assert len(result.suggestions_by_order) <= 1 and result.total_steps <= 20
    arrays = _playbook(helpers.mlp(), (digits["x_train"], digits["y_train"])).find_lr(num_steps=20, repeats=3)
    assert "one order" not in arrays.message and arrays.total_steps > 20  # Arrays are read in 3 orders.


# Infinite datasets --------------------------------------------------------------------------------------------------


def _builder_never_called():
    raise AssertionError("the model was built: the refusal came after compute")


def test_an_infinite_dataset_is_refused_without_its_steps_before_any_compute(digits):
    repeated = tf.data.Dataset.from_tensor_slices((digits["x_train"], digits["y_train"])).batch(32).repeat()
    with pytest.raises(
        ValueError,
        match=r"^The training data is infinite \(a tf\.data\.Dataset of infinite "
        r"cardinality \(repeated\)\).*pass `steps_per_epoch`",
    ):
        _playbook(_builder_never_called, repeated)
    train, _ = _py_datasets(digits, infinite=True)
    with pytest.raises(ValueError, match=r"PyDataset whose num_batches is None.*`steps_per_epoch`"):
        _playbook(_builder_never_called, train)
    finite = (digits["x_train"], digits["y_train"])
    with pytest.raises(ValueError, match=r"The validation data is infinite.*`validation_steps`"):
        _playbook(_builder_never_called, finite, repeated, steps_per_epoch=4)
    with pytest.raises(ValueError, match=r"steps_per_epoch.*Received: steps_per_epoch=0"):
        _playbook(_builder_never_called, repeated, steps_per_epoch=0)


@pytest.mark.parametrize("kind", ["dataset", "py_dataset"])
def test_an_infinite_dataset_trains_epochs_of_its_steps(strategy, digits, kind):
    if kind == "dataset":
        train = tf.data.Dataset.from_tensor_slices((digits["x_train"], digits["y_train"])).shuffle(512, seed=1)
        train = train.batch(32).repeat()
        validation = tf.data.Dataset.from_tensor_slices((digits["x_val"], digits["y_val"])).batch(32).repeat()
    else:
        train, validation = _py_datasets(digits, infinite=True)
    pb = _playbook(helpers.mlp(), train, validation, strategy, steps_per_epoch=5, validation_steps=2)
    history = pb.fit(epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2 and len(history.history["val_loss"]) == 2
    assert pb.journal.latest("fit").call["steps"] == 10
    setup = pb.journal.setup
    assert (setup.steps_per_epoch, setup.validation_steps) == (5, 2)
    assert "5 steps per epoch" in setup.message


def test_steps_per_epoch_is_part_of_the_set_up(digits, tmp_path):
    repeated = tf.data.Dataset.from_tensor_slices((digits["x_train"], digits["y_train"])).batch(32).repeat()
    first = _playbook(helpers.mlp(), repeated, directory=tmp_path, steps_per_epoch=5)
    assert first.journal.setup.fingerprints["steps_per_epoch"] == 5
    with pytest.warns(UserWarning, match=r"steps per epoch: 5 -> 6"):
        Playbook(helpers.mlp(), repeated, loss=helpers.LOGITS_LOSS, directory=tmp_path, steps_per_epoch=6, verbose=0)
    arrays = _playbook(helpers.mlp(), (digits["x_train"], digits["y_train"]))
    assert "steps_per_epoch" not in arrays.journal.setup.fingerprints  # Unchanged for data read in whole passes.


@pytest.mark.parametrize("kind", ["dataset", "py_dataset"])
def test_find_batch_size_refuses_infinite_data_and_the_default_plan_leaves_it_out(digits, kind):
    """Its size unknown and its epochs steps long: no batch size can be proposed (one was 3x the data)."""
    if kind == "dataset":
        train = tf.data.Dataset.from_tensor_slices((digits["x_train"], digits["y_train"])).batch(32).repeat()
        validation = tf.data.Dataset.from_tensor_slices((digits["x_val"], digits["y_val"])).batch(32)
    else:
        train, validation = _py_datasets(digits, infinite=True)
    pb = _playbook(helpers.mlp(), train, validation, None, steps_per_epoch=5, validation_steps=2)
    before = len(pb.journal)
    with pytest.raises(ValueError, match=r"find_batch_size: the training data is infinite|PyDataset"):
        pb.find_batch_size()
    assert len(pb.journal) == before
    names = [step if isinstance(step, str) else step[0] for step in procedure.default_plan(pb, 2)]
    assert "find_batch_size" not in names and procedure.left_out_note(pb)


def test_a_fit_that_raises_gives_back_the_users_python_random(digits):
    """The PyDataset's batch order seeds Python's `random`; a fit that stops on an error still gives it back."""
    import random

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise RuntimeError("stopped by the test")

    train, validation = _py_datasets(digits)
    pb = _playbook(helpers.mlp(), train, validation)
    random.seed(1234)
    expected = random.getstate()
    with pytest.raises(RuntimeError, match="stopped by the test"):
        pb.fit(epochs=2, callbacks=[Stop()], verbose=0)
    assert random.getstate() == expected
