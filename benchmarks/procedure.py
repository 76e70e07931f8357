"""What the stage runner and `run()` cost: the digits recipe's procedure via `run()` against the same stages by hand.

Prints each stage's share of the total time, the ratio of total times (by hand
/ via run(); target >= 0.97: the runner costs nothing), the time each way spends
outside the stages themselves (planning, staleness checks, writing the journal),
and the time a resumed run spends before it reaches the interrupted stage (a new
Playbook on the directory of a run that finished every stage but the final fit,
then run() again: construction and reading back, against the time of the stages
it skips; target under 5%).

Each run is a fresh process, in the order run, hand, hand, run, run, hand, ...:
within one process every run is slower than the one before (TensorFlow traces
more functions, KerasTuner's memory grows), and this machine switches whole
runs between two speeds, so the ratio is the median over pairs.

    python benchmarks/procedure.py [--epochs 15] [--pairs 3]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
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


def one_run(mode, directory, epochs):
    """Runs the procedure once, by hand or via run(); returns wall seconds and each stage's seconds."""
    split, calls = data(), plan(epochs)
    start = time.perf_counter()
    pb = playbook(directory, split)
    if mode == "run":
        steps = pb.run(epochs=epochs, plan=calls).steps
        stages = {step["stage"]: step["seconds"] for step in steps}
    else:
        for name, arguments in calls:
            getattr(pb, name)(**arguments)
        stages = {entry.call["stage"]: entry.call["seconds"] for entry in pb.journal if entry.call}
    return {"total": time.perf_counter() - start, "stages": stages}


def resumed_run(directory, epochs):
    """A run interrupted before its final fit, then run again: the time before it reaches the fit."""
    split, calls = data(), plan(epochs)
    playbook(directory, split).run(epochs=epochs, plan=calls[:-1])
    start = time.perf_counter()
    again = playbook(directory, split)
    constructed = time.perf_counter() - start
    resumed = again.run(epochs=epochs, plan=calls)
    return {
        "constructed": constructed,
        "reached_after": resumed.steps[-1]["reached_after"],
        "skipped": sum(step["seconds"] for step in resumed.steps if step["skipped"]),
    }


def in_fresh_process(*arguments):
    output = subprocess.run(
        [sys.executable, __file__, "--worker", *map(str, arguments)], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)  # MODE DIRECTORY, in a fresh process.
    args = parser.parse_args()
    if args.worker:
        mode, directory = args.worker
        result = resumed_run(directory, args.epochs) if mode == "resumed" else one_run(mode, directory, args.epochs)
        print(json.dumps(result))
        return
    root = tempfile.mkdtemp(prefix="procedure-benchmark-")
    runs = {"run": [], "hand": []}
    try:
        for pair in range(args.pairs):
            for mode in ("run", "hand") if pair % 2 == 0 else ("hand", "run"):
                folder = os.path.join(root, f"{mode}_{pair}")
                runs[mode].append(in_fresh_process(mode, folder, "--epochs", args.epochs))
        resumed = in_fresh_process("resumed", os.path.join(root, "resumed"), "--epochs", args.epochs)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    totals = {mode: sum(run["total"] for run in done) for mode, done in runs.items()}
    stages = {
        mode: {name: sum(run["stages"][name] for run in done) for name in done[0]["stages"]}
        for mode, done in runs.items()
    }
    heading = f"stage ({args.pairs} runs each)"
    print(f"{heading:<22} {'by hand s':>10} {'share':>7} {'run() s':>9} {'share':>7}")
    for name, seconds in stages["run"].items():
        hand = stages["hand"][name]
        print(f"{name:<22} {hand:10.2f} {hand / totals['hand']:7.1%} {seconds:9.2f} {seconds / totals['run']:7.1%}")
    print(
        "each run, s: by hand "
        + ", ".join(f"{run['total']:.1f}" for run in runs["hand"])
        + "; via run() "
        + ", ".join(f"{run['total']:.1f}" for run in runs["run"])
    )
    for mode, label in (("hand", "by hand"), ("run", "via run()")):
        outside = totals[mode] - sum(stages[mode].values())
        print(f"outside the stages {label}: {outside / args.pairs:.3f} s a run ({outside / totals[mode]:.2%})")
    ratios = [hand["total"] / run["total"] for hand, run in zip(runs["hand"], runs["run"])]
    print(
        f"ratio by hand / run() = {statistics.median(ratios):.3f}, median of pairs "
        + ", ".join(f"{ratio:.3f}" for ratio in ratios)
        + f"; of the sums {totals['hand'] / totals['run']:.3f} (target >= 0.97)"
    )
    before_fit = resumed["constructed"] + resumed["reached_after"]
    print(
        f"resumed run: {before_fit:.3f} s before the interrupted fit (Playbook {resumed['constructed']:.3f} s, "
        f"reading back {resumed['reached_after']:.3f} s) against {resumed['skipped']:.1f} s of stages skipped = "
        f"{before_fit / resumed['skipped']:.2%} (target < 5%)"
    )


if __name__ == "__main__":
    main()
