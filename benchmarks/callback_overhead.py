"""Throughput with and without each of the Playbook's callbacks.

Trains the small CNN of `overhead.py` (AdamW, so WeightDecayMonitor has a
decay to watch) on the same arrays from the same initial weights, once with
no callback, once with each callback at its default frequency and once with
the watchers `Playbook.fit` adds by default, the order rotating in every
repetition, and prints the
median ratio of samples/s (with / without) per callback. The epoch timer runs
after the callback, so work a callback does at the end of an epoch is
counted. Target (issue 5): ratio >= 0.95 for each.

    python benchmarks/callback_overhead.py [--repetitions 7] [--epochs 6]

This machine switches between two speeds now and then (whole runs at half
speed), so three figures are printed per callback: the median ratio over
repetitions; the ratio of the fastest epochs (epoch 1 traces and is left
out), which resists stalls; and 1 - the share of epoch time spent inside the
callback's own hooks (timed around each hook), which does not depend on the
machine's speed at all.
"""

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from overhead import BATCH_SIZE, EpochTimer, build_cnn, samples_per_second, setup  # noqa: E402

from keras_playbook._stages import training  # noqa: E402
from keras_playbook.callbacks import (  # noqa: E402
    CosineRestarts,
    CurveDiagnosis,
    LossComponents,
    OneCycle,
    StepDownLR,
    UpdateRatioMonitor,
    WeightDecayMonitor,
)


def callbacks(sample):
    """Name -> a function making the callbacks of one run."""
    return {
        "none": lambda: [],
        "StepDownLR": lambda: [StepDownLR(monitor="loss")],
        "OneCycle": lambda: [OneCycle((1e-4, 1e-3))],  # Sets the LR and beta_1 before every step.
        "CosineRestarts": lambda: [CosineRestarts(cycle_epochs=2)],
        "UpdateRatioMonitor": lambda: [UpdateRatioMonitor()],
        "WeightDecayMonitor": lambda: [WeightDecayMonitor()],  # AdamW's decoupled decay.
        "CurveDiagnosis": lambda: [CurveDiagnosis(verbose=0)],
        "LossComponents": lambda: [LossComponents(sample)],
        "pb.fit watchers": lambda: None,  # What Playbook.fit adds by default (watch=True).
    }


_HOOKS = (
    "on_train_begin",
    "on_train_end",
    "on_epoch_begin",
    "on_epoch_end",
    "on_train_batch_begin",
    "on_train_batch_end",
)


class HookTimer(keras.callbacks.Callback):
    """Runs a callback and adds up the seconds spent in its hooks after the first epoch.

    The share of an epoch spent in a callback's own code does not depend on
    how fast the machine happens to run at that moment, unlike throughput.
    """

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.seconds = 0.0
        self._epoch = 0
        for hook in _HOOKS:
            setattr(self, hook, self._timed(hook))

    def _timed(self, hook):
        method = getattr(self.inner, hook)

        def call(*args, **kwargs):
            if hook == "on_epoch_begin":
                self._epoch = args[0]
            start = time.perf_counter()
            method(*args, **kwargs)
            if self._epoch >= 1:  # The first epoch traces the train step: not counted, as for the timer.
                self.seconds += time.perf_counter() - start

        return call

    def set_model(self, model):
        super().set_model(model)
        self.inner.set_model(model)

    def set_params(self, params):
        super().set_params(params)
        self.inner.set_params(params)


def run(initial_weights, x, y, epochs, make, sample):
    """Median samples/s, the fastest epoch's duration, and the share of epochs spent in the callbacks' hooks."""
    model = build_cnn()
    model.set_weights(initial_weights)
    model.compile(
        optimizer=keras.optimizers.AdamW(1e-3, weight_decay=1e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    timer = EpochTimer()
    made = make()
    chosen = [HookTimer(c) for c in (training.watchers(model, lambda: sample) if made is None else made)]
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=epochs, verbose=0, callbacks=chosen + [timer])
    share = sum(c.seconds for c in chosen) / sum(timer.durations[1:])
    return samples_per_second(timer, len(x)), min(timer.durations[1:]), share


def main():
    arguments, x, y, initial_weights = setup(
        __doc__.splitlines()[0],
        repetitions=7,
        epochs=6,
        extra=[("--only", {"default": "", "help": "comma-separated callbacks"})],
    )
    sample = (x[:256], y[:256])
    makers = callbacks(sample)
    if arguments.only:
        makers = {name: makers[name] for name in ["none", *arguments.only.split(",")]}
    names = list(makers)
    ratios = {name: [] for name in names if name != "none"}
    fastest = {name: float("inf") for name in names}
    shares = {name: [] for name in names}
    for repetition in range(arguments.repetitions):
        order = names[repetition % len(names) :] + names[: repetition % len(names)]
        measured = {name: run(initial_weights, x, y, arguments.epochs, makers[name], sample) for name in order}
        for name in ratios:
            ratios[name].append(measured[name][0] / measured["none"][0])
        for name in names:
            fastest[name] = min(fastest[name], measured[name][1])
            shares[name].append(measured[name][2])
        print(f"rep {repetition}: " + ", ".join(f"{name} {measured[name][0]:.0f}" for name in names) + " samples/s")
    print("\ncallback              median ratio   min     max   fastest-epoch ratio   1 - share of epoch in hooks")
    estimates = {}
    for name, values in ratios.items():
        estimates[name] = {
            "median ratio": statistics.median(values),
            "fastest-epoch ratio": fastest["none"] / fastest[name],
            "1 - hook share": 1 - statistics.median(shares[name]),
        }
        e = estimates[name]
        print(
            f"{name:<21} {e['median ratio']:>12.3f} {min(values):>7.3f} {max(values):>7.3f}"
            f" {e['fastest-epoch ratio']:>21.3f} {e['1 - hook share']:>29.4f}"
        )
    for label in ("median ratio", "fastest-epoch ratio", "1 - hook share"):
        met = all(estimates[name][label] >= 0.95 for name in ratios)
        print(f"Target ({label} >= 0.95 for each): {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
