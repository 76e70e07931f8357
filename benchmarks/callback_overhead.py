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

This machine stalls now and then (a run at half speed); the script prints the
median ratio over repetitions and the ratio of best throughputs, which
resists stalls.
"""

import os
import statistics

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from overhead import BATCH_SIZE, EpochTimer, build_cnn, samples_per_second, setup  # noqa: E402

from keras_playbook.callbacks import (  # noqa: E402
    CosineRestarts,
    CurveDiagnosis,
    LossComponents,
    OneCycle,
    StepDownLR,
    UpdateRatioMonitor,
    WeightDecayMonitor,
)
from keras_playbook.stages import training  # noqa: E402


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


def run(initial_weights, x, y, epochs, make, sample):
    model = build_cnn()
    model.set_weights(initial_weights)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=1e-4),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    timer = EpochTimer()
    made = make()
    chosen = training.watchers(model, sample) if made is None else made
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=epochs, verbose=0, callbacks=chosen + [timer])
    return samples_per_second(timer, len(x))


def main():
    arguments, x, y, initial_weights = setup(__doc__.splitlines()[0], repetitions=7, epochs=6)
    sample = (x[:256], y[:256])
    makers = callbacks(sample)
    names = list(makers)
    ratios = {name: [] for name in names if name != "none"}
    best = {name: 0.0 for name in names}
    for repetition in range(arguments.repetitions):
        order = names[repetition % len(names):] + names[: repetition % len(names)]
        measured = {name: run(initial_weights, x, y, arguments.epochs, makers[name], sample) for name in order}
        for name in ratios:
            ratios[name].append(measured[name] / measured["none"])
        best = {name: max(best[name], measured[name]) for name in names}
        print(f"rep {repetition}: " + ", ".join(f"{name} {measured[name]:.0f}" for name in names) + " samples/s")
    print("\ncallback              median ratio (with / without)   min     max   ratio of best")
    for name, values in ratios.items():
        print(f"{name:<21} {statistics.median(values):>28.3f} {min(values):>7.3f} {max(values):>7.3f}"
              f" {best[name] / best['none']:>14.3f}")
    for label, value in (("median ratio", lambda n: statistics.median(ratios[n])),
                         ("ratio of best", lambda n: best[n] / best["none"])):
        met = all(value(name) >= 0.95 for name in ratios)
        print(f"Target ({label} >= 0.95 for each): {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
