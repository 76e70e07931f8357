"""The batch-size finder: the largest batch that fits, and the throughput of each.

The Tuning Playbook picks the batch size that minimizes training time: larger
batches reduce it while they still raise throughput, and the same final
performance is attainable at any batch size once the other hyperparameters
are retuned.
Goyal et al. 2017 and Smith 2018: the total batch size is constrained by the
GPU memory, and a larger batch accepts, and needs, a larger learning rate.

The default criterion follows throughput: the size doubles while doubling
still raises the samples per second materially (by `min_gain`), and stops at
the first doubling that does not; the size before it is chosen. "largest"
(the largest that fits) and "fastest" (the highest throughput measured) are
there too. Whatever the criterion, a size never leaves fewer than
`min_steps_per_epoch` steps per epoch: with a budget of epochs, fewer steps
train less, and large batches generalize worse at a fixed epoch budget
(Keskar et al. 2017; Masters & Luschi 2018).

Sizes are per replica (what one device holds); the global batch is that
times the number of replicas. Each size trains a copy of the model for a few
real steps: first doubling (`mode="power"`), then, with `mode="binsearch"`,
a binary search between the last size that fitted and the first that did not.

Out of memory is detected two ways. On GPU, TensorFlow raises
`ResourceExhaustedError`: the size is too large, memory is freed and the
search goes on. On CPU the operating system kills a process that runs out of
memory (nothing to catch), so the finder keeps within `memory_limit`: it
measures the process's peak resident memory at each size, refuses a size
whose measured peak went over the limit, and does not try one predicted
(memory growing in proportion to the batch) to go over it.

References:
    Godbole et al. 2023, "Deep Learning Tuning Playbook" (choosing the
    batch size).
    Goyal et al. 2017, arXiv:1706.02677; Smith 2018, arXiv:1803.09820.
    Keskar et al. 2017, arXiv:1609.04836; Masters & Luschi 2018,
    arXiv:1804.07612 (large batches and generalization).
"""

import dataclasses
import gc
import math
import threading
import time

import keras
import numpy as np
import psutil
import tensorflow as tf
from matplotlib.figure import Figure

from keras_playbook import _short_runs as short_runs
from keras_playbook import _validation as validation
from keras_playbook._data import validate_batch_size
from keras_playbook._journal import Result
from keras_playbook._runner import stage

_BATCH_SIZE = "Tuning Playbook; Smith 2018"
MODES = ("power", "binsearch")
CRITERIA = ("throughput", "largest", "fastest")
NO_GAIN = "no material gain"
FITS = "ok"
OUT_OF_MEMORY = "out of memory"
OVER_LIMIT = "over memory limit"
PREDICTED_OVER_LIMIT = "predicted over memory limit"


@dataclasses.dataclass
class BatchSizeResult(Result):
    """The batch sizes tried, their throughput, and the chosen one.

    Attributes:
        batch_size: Chosen per-replica batch size, or None if none fitted.
        global_batch_size: The chosen size times the replicas.
        trials: One dict per size tried, in order: `batch_size` (per
            replica), `global_batch_size`, `samples_per_second` (None when it
            did not fit), `peak_memory_bytes` (process peak on CPU, device
            peak on GPU; None when unknown) and `status`: "ok", "out of
            memory", "over memory limit" or "predicted over memory limit".
        mode: "power" or "binsearch".
        criterion: "throughput" (grow while doubling still pays), "largest"
            or "fastest".
        device: "GPU" or "CPU".
        memory_limit_bytes: Memory the finder allowed itself above the
            process's start (CPU only), or None.
        max_batch_size: The cap on the per-replica size (the data's, at
            `min_steps_per_epoch`, included).
        num_replicas: Replicas in sync.
        min_gain: Relative throughput gain a doubling must bring.
        min_steps_per_epoch: Fewest steps per epoch a size may leave.
    """

    kind = "find_batch_size"
    batch_size: int | None
    global_batch_size: int | None
    trials: list
    mode: str
    criterion: str
    device: str
    memory_limit_bytes: int | None
    max_batch_size: int
    num_replicas: int
    ok: bool
    message: str
    min_gain: float | None = None
    min_steps_per_epoch: int | None = None

    def settles(self):
        return {"batch_size": self.batch_size} if self.ok else {}

    def table(self):
        """Returns the trials as text: size, global size, samples/s or the failure."""
        lines = ["per replica   global   samples/s       peak memory"]
        for trial in self.trials:
            speed = f"{trial['samples_per_second']:10.0f}" if trial["status"] == FITS else f"{trial['status']:>10}"
            memory = trial["peak_memory_bytes"]
            memory = f"{memory / 2**20:8.0f} MiB" if memory else "         -"
            note = f"   ({trial['status_note']})" if trial.get("status_note") else ""
            lines.append(f"{trial['batch_size']:11d} {trial['global_batch_size']:8d}   {speed}   {memory}{note}")
        return "\n".join(lines)

    def plot(self):
        """Samples per second against batch size (log 2 axis); failures marked."""
        figure = Figure(figsize=(7, 4))
        axes = figure.add_subplot()
        good = sorted((t["batch_size"], t["samples_per_second"]) for t in self.trials if t["status"] == FITS)
        if good:
            axes.plot(*zip(*good), marker="o", label="fits")
        top = max((speed for _, speed in good), default=1.0)
        for trial in self.trials:
            if trial["status"] != FITS:
                axes.plot(trial["batch_size"], top, "x", color="tab:red", markersize=10)
                axes.annotate(
                    trial["status"],
                    (trial["batch_size"], top),
                    fontsize="small",
                    textcoords="offset points",
                    xytext=(4, -12),
                )
        if self.batch_size is not None:
            axes.axvline(
                self.batch_size, color="tab:green", linestyle="--", label=f"chosen: {self.batch_size} per replica"
            )
        axes.set_xscale("log", base=2)
        axes.set_xlabel("batch size per replica")
        axes.set_ylabel("training samples / second")
        axes.set_title(f"Batch-size finder ({self.device}, {self.num_replicas} replica(s))")
        axes.legend(fontsize="small")
        return figure


def is_out_of_memory(error):
    """True for TensorFlow's out-of-memory errors (ResourceExhaustedError, or an OOM message)."""
    if isinstance(error, tf.errors.ResourceExhaustedError):
        return True
    text = str(error)
    return isinstance(error, tf.errors.OpError) and ("OOM" in text or "out of memory" in text)


class _PeakMemory:
    """Peak memory during a block: the GPU allocator's peak, or the process's RSS sampled."""

    def __init__(self, gpu_device=None, interval=0.002):
        self.gpu_device = gpu_device
        self.interval = interval
        self.peak = None
        self._stop = threading.Event()
        self._process = psutil.Process()

    def __enter__(self):
        if self.gpu_device is not None:
            tf.config.experimental.reset_memory_stats(self.gpu_device)
            return self
        self.peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(self.interval)

    def __exit__(self, *exc_info):
        if self.gpu_device is not None:
            self.peak = tf.config.experimental.get_memory_info(self.gpu_device)["peak"]
            return False
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)
        return False


class _StepTimes(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times = []

    def on_train_batch_end(self, batch, logs=None):
        float(next(iter((logs or {}).values()), 0.0))  # Reading any logged value (the loss, whatever its key) waits.
        self.times.append(time.perf_counter())


def _examples_in_steps(num_examples, global_batch_size, first, last):
    """Examples in steps `first+1..last` (0-based) of batches that restart every pass."""
    if num_examples is None:
        return (last - first) * global_batch_size
    per_pass = math.ceil(num_examples / global_batch_size)
    sizes = [min(global_batch_size, num_examples - index * global_batch_size) for index in range(per_pass)]
    return sum(sizes[step % per_pass] for step in range(first + 1, last + 1))


def _default_memory_limit(fraction=0.5):
    return int(fraction * psutil.virtual_memory().available)


def _check_arguments(
    mode,
    criterion,
    initial_batch_size,
    max_batch_size,
    steps_per_size,
    max_trials,
    memory_limit,
    min_gain,
    min_steps_per_epoch,
):
    stage = "find_batch_size"
    if mode not in MODES:
        raise ValueError(f"{stage}: argument `mode` must be one of {MODES}. Received: mode={mode!r}.")
    if criterion not in CRITERIA:
        raise ValueError(f"{stage}: argument `criterion` must be one of {CRITERIA}. Received: criterion={criterion!r}.")
    validate_batch_size(initial_batch_size, "initial_batch_size")
    if max_batch_size is not None:
        validate_batch_size(max_batch_size, "max_batch_size")
        if max_batch_size < initial_batch_size:
            raise ValueError(
                f"{stage}: max_batch_size must be >= initial_batch_size. Received: "
                f"initial_batch_size={initial_batch_size}, max_batch_size={max_batch_size}."
            )
    validation.check_int(steps_per_size, "steps_per_size", stage)
    validation.check_int(max_trials, "max_trials", stage)
    if memory_limit is not None:
        validation.check_number(memory_limit, "memory_limit", stage)
    validation.check_number(min_gain, "min_gain", stage, within=">= 0")
    validation.check_int(min_steps_per_epoch, "min_steps_per_epoch", stage)


def _check_batch_size_arguments(arguments, session):
    """`find_batch_size`'s argument check, before anything runs (`StageSpec.check`)."""
    _check_arguments(**arguments)


@stage("find_batch_size", check=_check_batch_size_arguments)
def find_batch_size(
    ctx,
    *,
    mode,
    criterion,
    initial_batch_size,
    max_batch_size,
    steps_per_size,
    max_trials,
    memory_limit,
    min_gain,
    min_steps_per_epoch,
):
    """Finds the per-replica batch size that trains fastest without hurting, measuring throughput.

    The message says which settled values were measured at another batch
    size than the chosen one and must be tuned again.

    Args:
        ctx: The runner's `StageContext`.
        mode: "power" doubles until a size does not fit (or, for
            "throughput", stops paying) and keeps the last that did;
            "binsearch" then searches between the last that fitted and the
            first that did not.
        criterion: "throughput" (default; the Tuning Playbook's batch size
            that minimizes training time): grow while a doubling raises the
            samples/s by at least `min_gain`; "largest": the largest that
            fits; "fastest": the highest samples/s measured.
        initial_batch_size: First per-replica size tried.
        max_batch_size: Cap on the per-replica size; the data caps it too
            (one global batch never exceeds the dataset; for a stream of
            unknown size, a size is tried only if one global batch of it
            can be read).
        steps_per_size: Timed training steps per size, after one untimed
            warm-up step (which traces the step function); the median step
            time gives the throughput.
        max_trials: At most this many sizes are tried.
        memory_limit: On CPU, bytes the search may use above the process's
            memory at its start; defaults to half of the host's available
            memory. Ignored on GPU, where running out raises and is caught.
        min_gain: The relative gain in samples/s a doubling must bring to be
            worth it (0.1: 10%).
        min_steps_per_epoch: A size never leaves fewer steps per epoch than
            this (with a known number of examples); 1 lifts the cap.

    Returns:
        A `BatchSizeResult`.

    Raises:
        ValueError: before any compute, for training data that is a
            `keras.utils.PyDataset` (it makes its own batches) or infinite
            (its size unknown, its epochs `steps_per_epoch` long).

    Example:

    ```python
    result = pb.find_batch_size(mode="binsearch")
    print(result.table())
    ```
    """
    session, pipeline, callbacks = ctx.session, ctx.train, ctx.callbacks()
    if pipeline.py_dataset is not None:  # Before any compute.
        raise ValueError(
            "find_batch_size: the training data is a keras.utils.PyDataset, which makes its own batches "
            f"({pipeline.global_batch_size} examples): no other batch size can be tried. Leave find_batch_size out "
            "(run() does by default), or change the PyDataset's batch size yourself."
        )
    if pipeline.infinite:  # Before any compute.
        raise ValueError(
            "find_batch_size: the training data is infinite (a repeated dataset), so its size, which caps a batch, "
            f"is unknown, and an epoch is steps_per_epoch={pipeline.steps} steps, which a larger batch would make "
            "longer in examples. Leave find_batch_size out (run() does by default) and pass `batch_size` yourself, "
            "or give it finite data."
        )
    retune = ctx.journal.measured_at("batch_size")
    replicas = pipeline.num_replicas
    cap = max_batch_size or 2**31
    data_cap = None
    if pipeline.num_examples is not None:
        data_cap = max(pipeline.num_examples // (replicas * min_steps_per_epoch), 1)
        cap = min(cap, data_cap)
    gpus = tf.config.list_logical_devices("GPU")
    device = "GPU" if gpus else "CPU"
    limit = None if gpus else int(memory_limit or _default_memory_limit())
    start_memory = psutil.Process().memory_info().rss
    model = short_runs.working_copy(session)
    results = {}

    def measure(size):
        results[size] = _measure(model, pipeline, size, steps_per_size, gpus, limit, start_memory, results, callbacks)
        return results[size]["status"] == FITS

    size = min(initial_batch_size, cap)
    fitted, failed = None, None
    while len(results) < max_trials:
        if measure(size):
            if criterion == "throughput" and fitted is not None and not _pays(results, fitted, size, min_gain):
                results[size]["status_note"] = NO_GAIN
                break
            fitted = size
            if 2 * size > cap:  # Sizes stay the initial one times powers of 2, within the cap.
                break
            if pipeline.num_examples is None and not _holds(pipeline, 2 * size):  # A stream of unknown size.
                break
            size = 2 * size
        else:
            failed = size
            break
    if mode == "binsearch" and fitted is not None and failed is not None:
        while failed - fitted > 1 and len(results) < max_trials:
            size = (fitted + failed) // 2
            if measure(size):
                fitted = size
            else:
                failed = size
    trials_table = [results[size] for size in results]
    result = _result(trials_table, mode, criterion, device, limit, cap, replicas, fitted)
    result.min_gain, result.min_steps_per_epoch = float(min_gain), int(min_steps_per_epoch)
    result.message = _message(result, pipeline.num_examples, data_cap, retune)
    return result


def _holds(pipeline, size):
    """Whether data of unknown size holds one global batch of `size` per replica (reads at most that batch)."""
    batch = pipeline.with_batch_size(size).first_batches(1)[0]
    return len(tf.nest.flatten(batch)[0]) >= size * pipeline.num_replicas


def _pays(results, smaller, larger, min_gain):
    """Whether going from `smaller` to `larger` raised the samples/s by at least `min_gain`."""
    return results[larger]["samples_per_second"] >= (1 + min_gain) * results[smaller]["samples_per_second"]


def _measure(model, pipeline, size, steps, gpus, limit, start_memory, results, callbacks):
    global_size = size * pipeline.num_replicas
    trial = {
        "batch_size": size,
        "global_batch_size": global_size,
        "samples_per_second": None,
        "peak_memory_bytes": None,
        "status": FITS,
    }
    if limit is not None:
        predicted = _predicted_memory(size, results, start_memory)
        if predicted is not None and predicted > limit:
            trial["status"] = PREDICTED_OVER_LIMIT
            trial["peak_memory_bytes"] = int(start_memory + predicted)
            return trial
    timer = _StepTimes()
    dataset = pipeline.with_batch_size(size).dataset.repeat()
    try:
        with _PeakMemory(gpus[0].name if gpus else None) as memory:
            model.fit(
                dataset,
                epochs=1,
                steps_per_epoch=steps + 1,
                callbacks=[timer, *(callbacks or [])],
                shuffle=False,
                verbose=0,
            )
    except (tf.errors.OpError, MemoryError) as error:
        if not (isinstance(error, MemoryError) or is_out_of_memory(error)):
            raise
        del error
        gc.collect()
        trial["status"] = OUT_OF_MEMORY
        return trial
    trial["peak_memory_bytes"] = int(memory.peak) if memory.peak is not None else None
    if limit is not None and memory.peak - start_memory > limit:
        trial["status"] = OVER_LIMIT
        return trial
    examples = _examples_in_steps(pipeline.num_examples, global_size, 0, len(timer.times) - 1)
    per_step = float(np.median(np.diff(timer.times))) if len(timer.times) > 1 else 0.0
    steps = len(timer.times) - 1
    trial["samples_per_second"] = examples / (per_step * steps) if per_step > 0 else math.inf
    return trial


def _predicted_memory(size, results, start_memory):
    """Memory above the start predicted for `size`: proportional to the largest fitting size's."""
    measured = [
        (trial["batch_size"], trial["peak_memory_bytes"] - start_memory)
        for trial in results.values()
        if trial["status"] == FITS and trial["peak_memory_bytes"] is not None
    ]
    if not measured:
        return None
    largest, used = max(measured)
    return max(used, 0) * size / largest


def _result(trials_table, mode, criterion, device, limit, cap, replicas, fitted):
    fitting = [trial for trial in trials_table if trial["status"] == FITS]
    chosen = None
    if fitting:
        if criterion == "throughput":
            chosen = next(trial for trial in fitting if trial["batch_size"] == fitted)
        else:
            key = (lambda t: t["batch_size"]) if criterion == "largest" else (lambda t: t["samples_per_second"])
            chosen = max(fitting, key=key)
    return BatchSizeResult(
        batch_size=None if chosen is None else chosen["batch_size"],
        global_batch_size=None if chosen is None else chosen["global_batch_size"],
        trials=trials_table,
        mode=mode,
        criterion=criterion,
        device=device,
        memory_limit_bytes=limit,
        max_batch_size=int(cap),
        num_replicas=replicas,
        ok=chosen is not None,
        message="",
    )


def _message(result, num_examples, data_cap, retune):
    if result.batch_size is None:
        first = result.trials[0]
        return (
            f"Not even batch size {first['batch_size']} per replica fits ({first['status']}): "
            "use a smaller initial_batch_size, a smaller model or input, or mixed "
            f"precision ({_BATCH_SIZE})."
        )
    chosen = next(t for t in result.trials if t["batch_size"] == result.batch_size)
    speed = (
        f"{chosen['batch_size']} per replica ({chosen['global_batch_size']} global, "
        f"{chosen['samples_per_second']:.0f} samples/s)"
    )
    failures = [t for t in result.trials if t["status"] != FITS]
    no_gain = [t for t in result.trials if t.get("status_note") == NO_GAIN]
    stopped = failures or no_gain
    capped_by_data = (
        data_cap is not None and result.max_batch_size == data_cap and not stopped and 2 * result.batch_size > data_cap
    )
    if result.criterion == "throughput" and no_gain:
        gain = no_gain[0]["samples_per_second"] / chosen["samples_per_second"] - 1
        why = (
            f"Batch size {speed}: doubling it to {no_gain[0]['batch_size']} gained only {gain:+.0%} samples/s "
            f"(less than {result.min_gain:.0%}), so a larger batch would not train faster (Tuning Playbook: "
            "the batch size that minimizes training time)."
        )
    elif result.criterion == "throughput":
        why = f"Batch size {speed}: every doubling up to it raised the throughput by at least {result.min_gain:.0%}."
    else:
        which = "the largest that fits" if result.criterion == "largest" else "the fastest measured"
        why = f"Batch size {speed} is {which}."
    if failures:
        why += f" The first size that did not fit was {failures[0]['batch_size']} ({failures[0]['status']})."
    if capped_by_data:
        why += (
            f" Larger batches would leave fewer than {result.min_steps_per_epoch} steps per epoch of the "
            f"{num_examples} examples: at this data size the batch size barely matters for speed, and fewer "
            "steps train less in the same epochs (Keskar et al. 2017; Masters & Luschi 2018)."
        )
    retune = sorted(name for name, size in retune.items() if size != result.batch_size)
    if retune:
        why += (
            f" {', '.join(retune)} {'was' if len(retune) == 1 else 'were'} tuned at another batch size: retune "
            "at this one (find_lr, then sweep_momentum, the weight-decay grid; Tuning Playbook; Goyal et al. 2017)."
        )
    else:
        why += " Find the learning rate at this batch size next (find_lr)."
    return why
