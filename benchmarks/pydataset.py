"""Time of `pb.fit` vs plain `model.fit` on a slow `keras.utils.PyDataset` read by 4 workers.

Each batch of the PyDataset sleeps 30 ms (a file read, a decode) and the
dataset asks for `workers=4`: `model.fit` reads it through Keras's
`PyDatasetAdapter`, four batches at a time. `pb.fit` must read it the same
way (issue 23: it took 3.6 s against 1.3 s for `model.fit` when the Playbook
wrapped the PyDataset in a serial tf.data generator). Both train the same MLP
from the same initial weights, alternating in each repetition, and the whole
call is timed (the Playbook's watchers and its samples included). Prints
each repetition's times and the ratio of medians, pb.fit / model.fit.
Target: within 1.5x.

    python benchmarks/pydataset.py [--repetitions 3] [--epochs 3]
"""

import argparse
import math
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from keras_playbook import Playbook  # noqa: E402

BATCH_SIZE = 32
WORKERS = 4
SLEEP_SECONDS = 0.03


class SlowBatches(keras.utils.PyDataset):
    """Digits in batches of 32; every batch takes 30 ms to read."""

    def __init__(self, x, y, **kwargs):
        super().__init__(**kwargs)
        self.x, self.y = x, y

    def __len__(self):
        return math.ceil(len(self.x) / BATCH_SIZE)

    def __getitem__(self, index):
        time.sleep(SLEEP_SECONDS)
        part = slice(index * BATCH_SIZE, (index + 1) * BATCH_SIZE)
        return self.x[part], self.y[part]


def build_mlp():
    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)])


LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def run_plain(initial_weights, data, epochs):
    model = build_mlp()
    model.set_weights(initial_weights)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=LOSS)
    start = time.perf_counter()
    model.fit(data, epochs=epochs, verbose=0)
    return time.perf_counter() - start


def run_playbook(initial_weights, data, epochs):
    model = build_mlp()
    model.set_weights(initial_weights)
    pb = Playbook(model, data, optimizer=keras.optimizers.Adam(1e-3), loss=LOSS, verbose=0)
    start = time.perf_counter()
    pb.fit(epochs=epochs, verbose=0)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    digits = load_digits()
    x, y = (digits.data / 16.0).astype("float32"), digits.target.astype("int64")
    data = SlowBatches(x, y, workers=WORKERS)
    initial_weights = build_mlp().get_weights()
    serial = len(data) * SLEEP_SECONDS * args.epochs
    print(
        f"{len(data)} batches of {BATCH_SIZE}, {SLEEP_SECONDS * 1000:.0f} ms each, workers={WORKERS}, "
        f"{args.epochs} epochs (read serially: {serial:.2f} s)"
    )
    run_plain(initial_weights, data, 1)  # Warm-up: TensorFlow's first traces.
    plain, playbook = [], []
    for repetition in range(args.repetitions):
        plain.append(run_plain(initial_weights, data, args.epochs))
        playbook.append(run_playbook(initial_weights, data, args.epochs))
        print(f"repetition {repetition + 1}: model.fit {plain[-1]:.2f} s, pb.fit {playbook[-1]:.2f} s")
    ratio = statistics.median(playbook) / statistics.median(plain)
    print(
        f"median: model.fit {statistics.median(plain):.2f} s, pb.fit {statistics.median(playbook):.2f} s; "
        f"ratio pb.fit / model.fit = {ratio:.2f} (target <= 1.5)"
    )
    return 0 if np.isfinite(ratio) else 1


if __name__ == "__main__":
    raise SystemExit(main())
