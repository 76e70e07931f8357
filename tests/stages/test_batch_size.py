"""The batch-size finder: doubling, binary search, real out-of-memory errors, memory limit."""

import keras
import pytest
import tensorflow as tf
from matplotlib.figure import Figure

from keras_playbook import BatchSizeResult, Playbook, Result
from keras_playbook._stages import batch_size as batch_size_stage
from tests import helpers


class AllocatesTooMuchAbove(keras.layers.Layer):
    """Identity that asks TensorFlow for terabytes once the batch exceeds `limit`.

    The allocation fails at once with a real `ResourceExhaustedError` (what a
    GPU raises when a batch does not fit), without touching any memory.
    """

    def __init__(self, limit, **kwargs):
        super().__init__(**kwargs)
        self.limit = limit

    def call(self, inputs):
        size = tf.cast(tf.shape(inputs)[0], tf.int64)
        rows = tf.maximum(size - self.limit, 0) * 2**36
        huge = tf.random.uniform(tf.stack([rows, tf.constant(1, tf.int64)]))
        return inputs + tf.minimum(tf.reduce_sum(huge), 0.0)

    def get_config(self):
        return {**super().get_config(), "limit": self.limit}


def _playbook(digits, model=None, strategy=None):
    return Playbook(
        model or helpers.mlp(),
        (digits["x_train"], digits["y_train"]),
        validation_data=(digits["x_val"], digits["y_val"]),
        loss=helpers.LOGITS_LOSS,
        strategy=strategy,
        verbose=0,
    )


def test_doubling_reaches_the_data_cap(strategy, digits):
    pb = _playbook(digits, strategy=strategy)
    before = helpers.variables_of(pb.model)
    result = pb.find_batch_size(initial_batch_size=16, criterion="largest", min_steps_per_epoch=1)
    replicas = strategy.num_replicas_in_sync
    cap = len(digits["x_train"]) // replicas
    sizes = [trial["batch_size"] for trial in result.trials]
    expected = [16]
    while 2 * expected[-1] <= cap:
        expected.append(2 * expected[-1])
    assert sizes == expected
    assert result.batch_size == cap
    assert result.global_batch_size == cap * replicas
    assert all(trial["samples_per_second"] > 0 for trial in result.trials)
    assert pb.journal.settled()["batch_size"] == cap
    helpers.assert_same_values(before, helpers.variables_of(pb.model))


def test_binary_search_finds_the_exact_out_of_memory_edge(strategy, digits):
    model = keras.Sequential([keras.Input((64,)), AllocatesTooMuchAbove(40), keras.layers.Dense(10)], name="hog")
    pb = _playbook(digits, model=model, strategy=strategy)
    result = pb.find_batch_size(
        mode="binsearch", initial_batch_size=8, criterion="largest", min_steps_per_epoch=1, steps_per_size=2
    )
    statuses = {trial["batch_size"]: trial["status"] for trial in result.trials}
    assert statuses[32] == "ok" and statuses[64] == "out of memory"
    assert statuses[40] == "ok" and statuses[41] == "out of memory"
    assert result.batch_size == 40
    assert "first size that did not fit was 64" in result.message


def test_power_mode_stops_at_the_first_failure(digits):
    model = keras.Sequential([keras.Input((64,)), AllocatesTooMuchAbove(40), keras.layers.Dense(10)], name="hog")
    result = _playbook(digits, model=model).find_batch_size(
        mode="power", initial_batch_size=8, criterion="largest", steps_per_size=2, min_steps_per_epoch=1
    )
    assert [trial["batch_size"] for trial in result.trials] == [8, 16, 32, 64]
    assert result.batch_size == 32


def test_memory_limit_keeps_the_search_within_host_memory(digits):
    wide = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(8192, activation="relu"), keras.layers.Dense(10)],
        name="wide",
    )
    pb = _playbook(digits, model=wide)
    limit = 24 * 2**20  # Activations of 8192 floats cost 32 KiB per example.
    result = pb.find_batch_size(initial_batch_size=16, memory_limit=limit, criterion="largest", min_steps_per_epoch=1)
    statuses = [trial["status"] for trial in result.trials]
    assert statuses[-1] in ("over memory limit", "predicted over memory limit")
    assert result.batch_size < len(digits["x_train"])
    assert result.memory_limit_bytes == limit


def test_fastest_criterion_picks_the_highest_throughput(digits):
    result = _playbook(digits).find_batch_size(
        criterion="fastest", initial_batch_size=32, max_batch_size=128, min_steps_per_epoch=1
    )
    fitting = [trial for trial in result.trials if trial["status"] == "ok"]
    assert result.batch_size == max(fitting, key=lambda t: t["samples_per_second"])["batch_size"]
    assert max(trial["batch_size"] for trial in result.trials) == 128


def test_result_table_plot_and_round_trip(digits):
    result = _playbook(digits).find_batch_size(initial_batch_size=64, max_batch_size=128, min_steps_per_epoch=1)
    assert "samples/s" in result.table()
    assert isinstance(result.plot(), Figure)
    again = Result.from_dict(result.to_dict())
    assert isinstance(again, BatchSizeResult) and again.trials == result.trials


def test_a_new_batch_size_makes_an_earlier_learning_rate_stale(digits):
    pb = _playbook(digits)
    pb.find_lr(num_steps=30)
    found = pb.find_batch_size(initial_batch_size=64, max_batch_size=128, criterion="largest", min_steps_per_epoch=1)
    assert "learning_rate was tuned at another batch size" in found.message
    assert "learning_rate" in pb.journal.stale()
    assert "STALE" in str(pb.journal)
    with pytest.raises(ValueError, match=r"Run pb.find_lr\(\) again"):
        pb.fit(epochs=1, verbose=0)
    found = pb.find_lr(num_steps=30)
    assert found.batch_size == 128
    assert not pb.journal.stale()
    pb.fit(epochs=1, verbose=0)
    assert pb.journal[-1].hyperparameters["batch_size"] == 128


def test_counts_partial_batches_in_the_throughput():
    # 10 examples in batches of 4: 4, 4, 2, 4, 4, 2, ...
    assert batch_size_stage._examples_in_steps(10, 4, 0, 3) == 4 + 2 + 4
    assert batch_size_stage._examples_in_steps(None, 4, 0, 3) == 12


def test_recognizes_out_of_memory_errors():
    assert batch_size_stage.is_out_of_memory(tf.errors.ResourceExhaustedError(None, None, "OOM"))
    assert batch_size_stage.is_out_of_memory(tf.errors.InternalError(None, None, "CUDA: out of memory"))
    assert not batch_size_stage.is_out_of_memory(tf.errors.InvalidArgumentError(None, None, "shapes"))


@pytest.mark.parametrize(
    "arguments, error, match",
    [
        ({"mode": "halving"}, ValueError, "mode"),
        ({"criterion": "smallest"}, ValueError, "criterion"),
        ({"initial_batch_size": 0}, ValueError, "initial_batch_size"),
        ({"initial_batch_size": 2.5}, TypeError, "initial_batch_size"),
        ({"initial_batch_size": 64, "max_batch_size": 32}, ValueError, "max_batch_size must be >="),
        ({"steps_per_size": 0}, ValueError, "steps_per_size"),
        ({"memory_limit": -1}, ValueError, "memory_limit"),
    ],
)
def test_bad_arguments_fail_before_training(digits, arguments, error, match):
    pb = _playbook(digits)
    with pytest.raises(error, match=match):
        pb.find_batch_size(**arguments)
    assert len(pb.journal) == 1


def test_default_keeps_enough_steps_per_epoch_and_says_what_to_retune(strategy, digits):
    pb = _playbook(digits, strategy=strategy)
    result = pb.find_batch_size()
    replicas = strategy.num_replicas_in_sync
    assert result.criterion == "throughput" and result.ok
    # 512 examples and at least 50 steps per epoch: at most 10 per replica, in powers of 2 from 8.
    assert result.batch_size * replicas * 50 <= len(digits["x_train"]) or result.batch_size == 8 // replicas
    assert "fewer than 50 steps per epoch" in result.message or result.batch_size == 8
    assert "Find the learning rate at this batch size next" in result.message  # Nothing tuned yet: no "stale".
    assert "no longer hold" not in result.message


class _SlowPerExample(keras.layers.Layer):
    """Identity that sleeps 5 ms per example: throughput stops rising with the batch size."""

    def call(self, inputs):
        import time

        def wait(batch):
            time.sleep(0.005 * int(batch.shape[0]))
            return batch

        out = tf.py_function(wait, [inputs], inputs.dtype)
        out.set_shape(inputs.shape)
        return out


def test_doubling_stops_when_it_no_longer_pays(digits):
    model = keras.Sequential([keras.Input((64,)), _SlowPerExample(), keras.layers.Dense(10)], name="slow")
    result = _playbook(digits, model=model).find_batch_size(min_steps_per_epoch=1, steps_per_size=3)
    sizes = [trial["batch_size"] for trial in result.trials]
    assert sizes == [8, 16] and result.batch_size == 8, result.table()
    assert "gained only" in result.message and "no material gain" in result.table()
