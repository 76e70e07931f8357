"""What the stage runner and `run()` cost: the digits recipe's procedure via `run()` against the same stages by hand.

Prints each stage's share of the total time, the ratio of total times (by hand
/ via run(); target >= 0.97: the runner costs nothing; both run twice, in the
order run, hand, hand, run, since a process slows as it traces more functions
and KerasTuner's memory grows), and the time a resumed
run spends before it reaches the interrupted stage (a new Playbook on the
directory of a run that finished every stage but the final fit, then run()
again: construction and reading back, against the time of the stages it
skips; target under 5%).

    python benchmarks/procedure.py [--epochs 15]
"""

import argparse
import os
import shutil
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

from keras_playbook import Playbook  # noqa: E402


def data():
    digits = load_digits()
    images = (digits.images / 16.0).astype("float32")[..., None]
    return train_test_split(images, digits.target, test_size=0.2, random_state=0, stratify=digits.target)


def build_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(10),
        ],
        name="digits_cnn",
    )


def playbook(directory, split):
    x_train, x_val, y_train, y_val = split
    return Playbook(
        build_model,
        (x_train, y_train),
        validation_data=(x_val, y_val),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        optimizer=keras.optimizers.Adam(3e-3),
        metrics=["accuracy"],
        batch_size=64,
        directory=directory,
        verbose=0,
    )


def plan(epochs):
    """The digits recipe's calls."""
    return [
        ("check_initial_loss", {}),
        ("overfit_small_sample", {}),
        ("find_batch_size", {"max_batch_size": 128}),
        ("find_lr", {}),
        ("probe_lrs", {}),
        ("sweep_momentum", {}),
        ("grid_weight_decay", {"epochs": 5}),
        ("fit", {"epochs": epochs, "verbose": 0}),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    split, calls = data(), plan(args.epochs)
    root = tempfile.mkdtemp(prefix="procedure-benchmark-")

    def by_hand_once(folder):
        start = time.perf_counter()
        pb = playbook(os.path.join(root, folder), split)
        for name, arguments in calls:
            getattr(pb, name)(**arguments)
        stages = {entry.call["stage"]: entry.call["seconds"] for entry in pb.journal if entry.call}
        return time.perf_counter() - start, stages

    def via_run_once(folder):
        start = time.perf_counter()
        result = playbook(os.path.join(root, folder), split).run(epochs=args.epochs, plan=calls)
        return time.perf_counter() - start, {step["stage"]: step["seconds"] for step in result.steps}

    try:
        timings = [via_run_once("run_1"), by_hand_once("hand_1"), by_hand_once("hand_2"), via_run_once("run_2")]
        by_hand = timings[1][0] + timings[2][0]
        via_run = timings[0][0] + timings[3][0]
        hand_stages = {name: timings[1][1][name] + timings[2][1][name] for name in timings[1][1]}
        run_stages = {name: timings[0][1][name] + timings[3][1][name] for name in timings[0][1]}

        resumed_directory = os.path.join(root, "resumed")
        playbook(resumed_directory, split).run(epochs=args.epochs, plan=calls[:-1])  # Interrupted before fit.
        start = time.perf_counter()
        again = playbook(resumed_directory, split)
        constructed = time.perf_counter() - start
        resumed = again.run(epochs=args.epochs, plan=calls)
        before_fit = constructed + resumed.steps[-1]["reached_after"]
        skipped = sum(step["seconds"] for step in resumed.steps if step["skipped"])
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"{'stage (two runs each)':<22} {'by hand s':>10} {'share':>7} {'run() s':>9} {'share':>7}")
    for name, seconds in run_stages.items():
        print(
            f"{name:<22} {hand_stages[name]:10.2f} {hand_stages[name] / by_hand:7.1%} "
            f"{seconds:9.2f} {seconds / via_run:7.1%}"
        )
    print(
        f"total: by hand {by_hand:.1f} s ({timings[1][0]:.1f} + {timings[2][0]:.1f}), via run() {via_run:.1f} s "
        f"({timings[0][0]:.1f} + {timings[3][0]:.1f})"
    )
    print(f"ratio by hand / run() = {by_hand / via_run:.3f} (target >= 0.97)")
    print(
        f"resumed run: {before_fit:.3f} s before the interrupted fit (Playbook {constructed:.3f} s, reading back "
        f"{resumed.steps[-1]['reached_after']:.3f} s) against {skipped:.1f} s of stages skipped = "
        f"{before_fit / skipped:.2%} (target < 5%)"
    )


if __name__ == "__main__":
    main()
