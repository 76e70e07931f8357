"""How good is `find_lr`? Its suggestion against a full learning-rate sweep.

For each small problem (data that ships with scikit-learn, nothing downloaded):
1. the sweep trains the model to convergence at 13 learning rates from 1e-4
   to 1 (two seeds each) and keeps the best score;
2. one `Playbook.find_lr()` run suggests a learning rate by every rule, and
   each suggestion is trained exactly like a sweep point.

Printed per problem and rule: accuracy ratio (score at the suggestion / best
score of the sweep) and compute ratio (range-test steps / sweep steps).
Targets: accuracy ratio >= 0.99 on every problem, compute ratio <= 0.05.
The score of a run is the validation accuracy averaged over its last three
epochs (the plateau, not a lucky epoch), then over seeds.

Usage:
    python benchmarks/lr_finder_quality.py [--quick] [--smoothing 0.9]
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_breast_cancer, load_digits  # noqa: E402

from keras_playbook import Playbook  # noqa: E402
from keras_playbook._stages.lr_curves import SUGGESTION_RULES  # noqa: E402

SWEEP = np.geomspace(1e-4, 1.0, 13)
SEEDS = (0, 1)
BATCH_SIZE = 32


def _split(x, y, validation_fraction=0.2, seed=0):
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(len(x) * (1 - validation_fraction))
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


def digits_mlp():
    x, y = load_digits(return_X_y=True)
    data = _split((x / 16.0).astype("float32"), y.astype("int64"))

    def build():
        return keras.Sequential(
            [
                keras.Input((64,)),
                keras.layers.Dense(128, activation="relu"),
                keras.layers.Dense(10),
            ]
        )

    return dict(
        name="digits MLP, Adam",
        build=build,
        data=data,
        epochs=20,
        optimizer=lambda lr: keras.optimizers.Adam(lr),
        loss=lambda: keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )


def digits_cnn():
    x, y = load_digits(return_X_y=True)
    data = _split((x / 16.0).reshape(-1, 8, 8, 1).astype("float32"), y.astype("int64"))

    def build():
        return keras.Sequential(
            [
                keras.Input((8, 8, 1)),
                keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
                keras.layers.MaxPooling2D(),
                keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
                keras.layers.Flatten(),
                keras.layers.Dense(10),
            ]
        )

    return dict(
        name="digits CNN, SGD+momentum",
        build=build,
        data=data,
        epochs=20,
        optimizer=lambda lr: keras.optimizers.SGD(lr, momentum=0.9),
        loss=lambda: keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )


def breast_cancer_mlp():
    x, y = load_breast_cancer(return_X_y=True)
    x_train, y_train, x_val, y_val = _split(x.astype("float32"), y.astype("float32"))
    mean, std = x_train.mean(0), x_train.std(0)
    data = ((x_train - mean) / std, y_train, (x_val - mean) / std, y_val)

    def build():
        return keras.Sequential(
            [
                keras.Input((30,)),
                keras.layers.Dense(32, activation="relu"),
                keras.layers.Dense(1),
            ]
        )

    return dict(
        name="breast cancer MLP, RMSprop",
        build=build,
        data=data,
        epochs=30,
        optimizer=lambda lr: keras.optimizers.RMSprop(lr),
        loss=lambda: keras.losses.BinaryCrossentropy(from_logits=True),
    )


def score(problem, learning_rate):
    """Mean validation accuracy of the last 3 epochs, averaged over seeds."""
    x_train, y_train, x_val, y_val = problem["data"]
    binary = y_train.ndim == 1 and y_train.dtype.kind == "f"
    metric = keras.metrics.BinaryAccuracy(threshold=0.0) if binary else "accuracy"
    scores = []
    for seed in SEEDS:
        keras.utils.set_random_seed(seed)
        model = problem["build"]()
        model.compile(problem["optimizer"](float(learning_rate)), problem["loss"](), metrics=[metric])
        history = model.fit(
            x_train,
            y_train,
            batch_size=BATCH_SIZE,
            epochs=problem["epochs"],
            validation_data=(x_val, y_val),
            verbose=0,
        )
        key = [name for name in history.history if name.startswith("val_") and "acc" in name][0]
        values = history.history[key]
        scores.append(float(np.mean(values[-3:])) if np.all(np.isfinite(values)) else 0.0)
    return float(np.mean(scores))


def run(problem, smoothing):
    x_train, y_train, x_val, y_val = problem["data"]
    steps_per_epoch = int(np.ceil(len(x_train) / BATCH_SIZE))
    sweep_steps = len(SWEEP) * len(SEEDS) * problem["epochs"] * steps_per_epoch
    started = time.perf_counter()
    sweep = {float(lr): score(problem, lr) for lr in SWEEP}
    sweep_seconds = time.perf_counter() - started
    best_lr = max(sweep, key=sweep.get)

    keras.utils.set_random_seed(0)
    playbook = Playbook(
        problem["build"],
        (x_train, y_train),
        validation_data=(x_val, y_val),
        loss=problem["loss"](),
        optimizer=problem["optimizer"](1e-3),
        batch_size=BATCH_SIZE,
        verbose=0,
    )
    started = time.perf_counter()
    result = playbook.find_lr(smoothing=smoothing)
    finder_seconds = time.perf_counter() - started

    print(f"\n== {problem['name']}: {len(x_train)} training examples, {problem['epochs']} epochs per run")
    print("   sweep:", "  ".join(f"{lr:.2g}:{value:.3f}" for lr, value in sweep.items()))
    print(f"   best of sweep: lr={best_lr:.2g}, score {sweep[best_lr]:.4f}  ({sweep_seconds:.0f} s)")
    steps = result.total_steps or result.steps_run  # All data orders the test ran over.
    compute_ratio = steps / sweep_steps
    print(
        f"   range test: {steps} steps vs sweep {sweep_steps} steps: "
        f"compute ratio {compute_ratio:.4f} ({finder_seconds:.1f} s vs {sweep_seconds:.0f} s)"
    )
    ratios = {}
    for rule in SUGGESTION_RULES:
        suggested = result.suggestions.get(rule)
        if suggested is None:
            print(f"   {rule:>11}: no suggestion ({result.message})")
            ratios[rule] = 0.0
            continue
        value = score(problem, suggested)
        ratios[rule] = value / sweep[best_lr]
        marker = " (default)" if rule == result.rule else ""
        print(f"   {rule:>11}: lr={suggested:.3g} score {value:.4f} accuracy ratio {ratios[rule]:.4f}{marker}")
    return ratios, compute_ratio


def main():
    sys.stdout.reconfigure(line_buffering=True)  # Progress shows when piped to a file.
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoothing", type=float, default=0.9)
    parser.add_argument("--quick", action="store_true", help="one problem only")
    arguments = parser.parse_args()
    problems = [digits_mlp(), digits_cnn(), breast_cancer_mlp()]
    if arguments.quick:
        problems = problems[:1]
    table = [run(problem, arguments.smoothing) for problem in problems]
    print("\nSummary (accuracy ratio per rule; target >= 0.99 on every problem, compute ratio <= 0.05):")
    for rule in SUGGESTION_RULES:
        values = [ratios[rule] for ratios, _ in table]
        verdict = "meets" if min(values) >= 0.99 else "misses"
        print(
            f"   {rule:>11}: "
            + "  ".join(f"{value:.4f}" for value in values)
            + f"   worst {min(values):.4f} ({verdict} the target)"
        )
    print("   compute ratio: " + "  ".join(f"{ratio:.4f}" for _, ratio in table))


if __name__ == "__main__":
    main()
