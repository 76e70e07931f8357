"""Throughput of training through the Playbook vs plain `model.fit`.

Trains the same small CNN, from the same initial weights, on the same arrays,
alternating the two ways in each repetition, and prints samples/s of each and
their ratio (Playbook / plain). The first epoch of every run (tracing) is not
timed. Target (issue 2): ratio >= 0.97.

    python benchmarks/overhead.py [--repetitions 7] [--epochs 8]
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_playbook import Playbook  # noqa: E402

BATCH_SIZE = 64


class EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.durations = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.durations.append(time.perf_counter() - self._start)


def build_cnn():
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10),
        ]
    )


def samples_per_second(timer, num_examples):
    # The first epoch traces the train step; the median epoch resists the
    # stalls a shared 2-core machine throws in.
    return num_examples / statistics.median(timer.durations[1:])


def run_plain(initial_weights, x, y, epochs):
    model = build_cnn()
    model.set_weights(initial_weights)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    timer = EpochTimer()
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=epochs, callbacks=[timer], verbose=0)
    return samples_per_second(timer, len(x))


def run_playbook(initial_weights, x, y, epochs):
    model = build_cnn()
    model.set_weights(initial_weights)
    pb = Playbook(
        model,
        (x, y),
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        batch_size=BATCH_SIZE,
        verbose=0,
    )
    timer = EpochTimer()
    pb.fit(epochs=epochs, callbacks=[timer], verbose=0)
    return samples_per_second(timer, len(x))


def setup(description, repetitions, epochs, extra=()):
    """Parses the shared arguments (and `extra` (flag, options) pairs).

    Returns them with synthetic images and the CNN's initial weights.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repetitions", type=int, default=repetitions)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--examples", type=int, default=4096)
    for flag, options in extra:
        parser.add_argument(flag, **options)
    arguments = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.random((arguments.examples, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, arguments.examples)
    keras.utils.set_random_seed(0)
    return arguments, x, y, build_cnn().get_weights()


def main():
    arguments, x, y, initial_weights = setup(__doc__.splitlines()[0], repetitions=7, epochs=8)
    ratios, best = [], {"plain": 0.0, "playbook": 0.0}
    print(f"{'rep':>3} {'plain samples/s':>16} {'playbook samples/s':>19} {'ratio':>6}")
    for repetition in range(arguments.repetitions):
        runs = [("plain", run_plain), ("playbook", run_playbook)]
        if repetition % 2:
            runs.reverse()  # Alternate the order to cancel drift.
        measured = {name: run(initial_weights, x, y, arguments.epochs) for name, run in runs}
        ratio = measured["playbook"] / measured["plain"]
        ratios.append(ratio)
        best = {name: max(best[name], measured[name]) for name in best}
        print(f"{repetition:>3} {measured['plain']:>16.0f} {measured['playbook']:>19.0f} {ratio:>6.3f}")
    print(
        f"median ratio (Playbook / plain model.fit): {statistics.median(ratios):.3f} "
        f"(min {min(ratios):.3f}, max {max(ratios):.3f}); target >= 0.97"
    )
    print(
        f"ratio of best throughputs: {best['playbook'] / best['plain']:.3f} "
        f"({best['playbook']:.0f} vs {best['plain']:.0f} samples/s)"
    )


if __name__ == "__main__":
    main()
