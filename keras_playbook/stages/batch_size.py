"""The batch-size finder: the largest batch that fits, and the throughput of each.

The Tuning Playbook picks the batch size that minimizes training time: larger
batches reduce it while they still raise throughput, and the same final
performance is attainable at any batch size once the other hyperparameters
are retuned.
Goyal et al. 2017 and Smith 2018: the total batch size is constrained by the
GPU memory, and a larger batch accepts, and needs, a larger learning rate.

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
import psutil
import tensorflow as tf
from matplotlib.figure import Figure

from keras_playbook import validation
from keras_playbook.data import validate_batch_size
from keras_playbook.journal import Result
from keras_playbook.stages import trials

_BATCH_SIZE = "Tuning Playbook; Smith 2018"
MODES = ("power", "binsearch")
CRITERIA = ("largest", "fastest")
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
        criterion: "largest" (the Tuning Playbook's choice) or "fastest".
        device: "GPU" or "CPU".
        memory_limit_bytes: Memory the finder allowed itself above the
            process's start (CPU only), or None.
        max_batch_size: The cap on the per-replica size.
        num_replicas: Replicas in sync.
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

    def settles(self):
        return {"batch_size": self.batch_size} if self.ok else {}

    def table(self):
        """Returns the trials as text: size, global size, samples/s or the failure."""
        lines = ["per replica   global   samples/s       peak memory"]
        for trial in self.trials:
            speed = (
                f"{trial['samples_per_second']:10.0f}" if trial["status"] == FITS
                else f"{trial['status']:>10}"
            )
            memory = trial["peak_memory_bytes"]
            memory = f"{memory / 2**20:8.0f} MiB" if memory else "         -"
            lines.append(f"{trial['batch_size']:11d} {trial['global_batch_size']:8d}   {speed}   {memory}")
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
                axes.annotate(trial["status"], (trial["batch_size"], top), fontsize="small",
                              textcoords="offset points", xytext=(4, -12))
        if self.batch_size is not None:
            axes.axvline(self.batch_size, color="tab:green", linestyle="--",
                         label=f"chosen: {self.batch_size} per replica")
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
        float((logs or {}).get("loss", 0.0))  # Waits for the step to finish.
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


def _check_arguments(mode, criterion, initial_batch_size, max_batch_size, steps_per_size,
                     max_trials, memory_limit):
    stage = "find_batch_size"
    if mode not in MODES:
        raise ValueError(f"{stage}: argument `mode` must be one of {MODES}. Received: mode={mode!r}.")
    if criterion not in CRITERIA:
        raise ValueError(
            f"{stage}: argument `criterion` must be one of {CRITERIA}. Received: criterion={criterion!r}."
        )
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


def find_batch_size(
    session,
    pipeline,
    *,
    mode="power",
    criterion="largest",
    initial_batch_size=8,
    max_batch_size=None,
    steps_per_size=3,
    max_trials=25,
    memory_limit=None,
    callbacks=None,
):
    """Finds the largest per-replica batch size that fits, measuring throughput.

    Args:
        session: The `Session` holding the model.
        pipeline: The training `DataPipeline`.
        mode: "power" doubles until a size does not fit and keeps the last
            that did; "binsearch" then searches between the two.
        criterion: "largest" (the Tuning Playbook: the largest batch that fits) or
            "fastest" (the highest samples/s among those that fit).
        initial_batch_size: First per-replica size tried.
        max_batch_size: Cap on the per-replica size; the data caps it too
            (one global batch never exceeds the dataset).
        steps_per_size: Timed training steps per size, after one untimed
            warm-up step (which traces the step function).
        max_trials: At most this many sizes are tried.
        memory_limit: On CPU, bytes the search may use above the process's
            memory at its start; defaults to half of the host's available
            memory. Ignored on GPU, where running out raises and is caught.
        callbacks: Extra callbacks for each trial's `fit`.

    Returns:
        A `BatchSizeResult`.

    Example:

    ```python
    result = find_batch_size(session, pipeline, mode="binsearch")
    print(result.table())
    ```
    """
    _check_arguments(mode, criterion, initial_batch_size, max_batch_size, steps_per_size,
                     max_trials, memory_limit)
    replicas = pipeline.num_replicas
    cap = max_batch_size or 2**31
    if pipeline.num_examples is not None:
        cap = min(cap, max(pipeline.num_examples // replicas, 1))
    gpus = tf.config.list_logical_devices("GPU")
    device = "GPU" if gpus else "CPU"
    limit = None if gpus else int(memory_limit or _default_memory_limit())
    start_memory = psutil.Process().memory_info().rss
    model = trials.trial_copy(session)
    results = {}

    def measure(size):
        results[size] = _measure(
            model, pipeline, size, steps_per_size, gpus, limit, start_memory, results, callbacks
        )
        return results[size]["status"] == FITS

    size = min(initial_batch_size, cap)
    fitted, failed = None, None
    while len(results) < max_trials:
        if measure(size):
            fitted = size
            if size >= cap:
                break
            size = min(2 * size, cap)
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
    return _result(trials_table, mode, criterion, device, limit, cap, replicas)


def _measure(model, pipeline, size, steps, gpus, limit, start_memory, results, callbacks):
    global_size = size * pipeline.num_replicas
    trial = {"batch_size": size, "global_batch_size": global_size,
             "samples_per_second": None, "peak_memory_bytes": None, "status": FITS}
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
            model.fit(dataset, epochs=1, steps_per_epoch=steps + 1, callbacks=[timer, *(callbacks or [])],
                      shuffle=False, verbose=0)
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
    elapsed = timer.times[-1] - timer.times[0]
    trial["samples_per_second"] = examples / elapsed if elapsed > 0 else math.inf
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


def _result(trials_table, mode, criterion, device, limit, cap, replicas):
    fitting = [trial for trial in trials_table if trial["status"] == FITS]
    chosen = None
    if fitting:
        key = (lambda t: t["batch_size"]) if criterion == "largest" else (lambda t: t["samples_per_second"])
        chosen = max(fitting, key=key)
    result = BatchSizeResult(
        batch_size=None if chosen is None else chosen["batch_size"],
        global_batch_size=None if chosen is None else chosen["global_batch_size"],
        trials=trials_table, mode=mode, criterion=criterion, device=device,
        memory_limit_bytes=limit, max_batch_size=int(cap), num_replicas=replicas,
        ok=chosen is not None, message="",
    )
    result.message = _message(result, fitting, chosen)
    return result


def _message(result, fitting, chosen):
    if chosen is None:
        first = result.trials[0]
        return (
            f"Not even batch size {first['batch_size']} per replica fits ({first['status']}): "
            "use a smaller initial_batch_size, a smaller model or input, or mixed "
            f"precision ({_BATCH_SIZE})."
        )
    failures = [t for t in result.trials if t["status"] != FITS]
    bound = (
        f"the first size that did not fit was {failures[0]['batch_size']} ({failures[0]['status']})"
        if failures else f"every size up to the cap {result.max_batch_size} fitted"
    )
    why = "the largest that fits" if result.criterion == "largest" else "the fastest"
    message = (
        f"Batch size {chosen['batch_size']} per replica ({chosen['global_batch_size']} global, "
        f"{chosen['samples_per_second']:.0f} samples/s) is {why}; {bound}."
    )
    fastest = max(fitting, key=lambda t: t["samples_per_second"])
    if result.criterion == "largest" and fastest is not chosen:
        gain = fastest["samples_per_second"] / chosen["samples_per_second"] - 1
        if gain > 0.1:
            message += (
                f" Batch {fastest['batch_size']} ran {gain:.0%} faster: the batch size is "
                "meant to minimize training time, consider criterion='fastest'."
            )
    return message + (
        " The learning rate and momentum found at another batch size no longer "
        f"hold: run find_lr (and sweep_momentum) again ({_BATCH_SIZE})."
    )
