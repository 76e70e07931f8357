"""How far the verdicts can be trusted: false alarms on healthy runs, detections on broken ones.

A labelled set of real runs, from data that ships with scikit-learn or that
this script makes:
- healthy: digits MLP (Adam), digits CNN with BatchNorm and augmentation
  (Adam), iris (SGD with momentum), breast cancer (binary, Adam), a
  standardized regression (MSE), a two-output model, a GRU on a token task;
- broken: no capacity (a one-unit bottleneck), dead units (every ReLU off),
  unscaled regression targets, a rate far too high, a rate far too low, a
  `from_logits` mismatch (softmax output, logits loss), an overfitting set-up
  (a wide model on 64 examples).
Each goes through `check_initial_loss`, `overfit_small_sample`, `find_lr` and
`fit` (with its watchers); a stage "flags" a run when its result is not OK
(for the overfitting set-up: when the fit's findings name overfitting). The
script prints, per stage, the false alarms on the healthy runs and the
detections of the broken set-ups meant for that stage.

Then three defaults against what they replace, each measured side by side:
- the searches' "meaningfully better" verdict on a tie (weight decays too
  small to matter) and on a real difference;
- `find_batch_size()` with its defaults, then `find_lr` and `fit`, against
  the same chain at batch 32 (digits and breast cancer; validation accuracy
  at the best epoch, mean over seeds; target >= 0.99);
- `fit(schedule="one_cycle")` from `find_lr` against a constant rate at
  `find_lr`'s suggestion (every healthy classification problem above, and
  the CNN without augmentation; target: never below the constant rate).

Usage:
    python benchmarks/verdicts.py [--seeds 2] [--epochs 10] [--only stages,search,batch,one_cycle]
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_breast_cancer, load_digits, load_iris  # noqa: E402

from keras_playbook import Playbook  # noqa: E402

LOGITS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


# Data -------------------------------------------------------------------------


def _split(x, y, train, seed=0):
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    return (x[:train], y[:train]), (x[train:], y[train:])


def digits(images=False):
    data = load_digits()
    x = (data.data / 16.0).astype("float32")
    if images:
        x = x.reshape(-1, 8, 8, 1)
    return _split(x, data.target.astype("int64"), 1400)


def iris():
    x, y = load_iris(return_X_y=True)
    return _split(((x - x.mean(0)) / x.std(0)).astype("float32"), y, 120)


def cancer():
    x, y = load_breast_cancer(return_X_y=True)
    return _split(((x - x.mean(0)) / x.std(0)).astype("float32"), y.astype("float32"), 450)


def regression(scale=1.0, shift=0.0):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1200, 10)).astype("float32")
    y = np.tanh(x @ rng.standard_normal(10) / 3) + 0.05 * rng.standard_normal(1200)
    y = ((y - y.mean()) / y.std() * scale + shift).astype("float32")
    return _split(x, y, 1000)


def two_outputs():
    (x, y), (xv, yv) = regression()
    return (x, (y, -y)), (xv, (yv, -yv))


def tokens():
    rng = np.random.default_rng(0)
    x = rng.integers(1, 20, (1200, 12))
    return _split(x, (x == 3).any(axis=1).astype("float32"), 1000)


# Models -----------------------------------------------------------------------


def mlp(inputs=64, units=10, hidden=32, activation=None, bias=None):
    initializer = "zeros" if bias is None else keras.initializers.Constant(bias)
    return keras.Sequential(
        [
            keras.Input((inputs,)),
            keras.layers.Dense(hidden, activation="relu", bias_initializer=initializer),
            keras.layers.Dense(units, activation=activation),
        ]
    )


def cnn(augment=True):
    layers = [keras.Input((8, 8, 1))]
    if augment:
        layers += [keras.layers.RandomTranslation(0.1, 0.1)]
    layers += [
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.BatchNormalization(),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.BatchNormalization(),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10),
    ]
    return keras.Sequential(layers)


def gru():
    return keras.Sequential(
        [keras.Input((12,), dtype="int32"), keras.layers.Embedding(20, 8), keras.layers.GRU(16), keras.layers.Dense(1)]
    )


def two_headed():
    inputs = keras.Input((10,))
    hidden = keras.layers.Dense(32, activation="relu")(inputs)
    return keras.Model(inputs, [keras.layers.Dense(1, name="a")(hidden), keras.layers.Dense(1, name="b")(hidden)])


BINARY_LOGITS = keras.losses.BinaryCrossentropy(from_logits=True)
BINARY_ACCURACY = keras.metrics.BinaryAccuracy(threshold=0.0)

# name: (build, data, loss, optimizer, metrics, fit overrides, the stage meant to catch it or None)
PROBLEMS = {
    "digits MLP, Adam": (lambda: mlp(), digits, LOGITS, "adam", ["accuracy"], {}, None),
    "digits CNN, BatchNorm + augmentation": (cnn, lambda: digits(True), LOGITS, "adam", ["accuracy"], {}, None),
    "iris, SGD momentum": (
        lambda: mlp(4, 3, 16),
        iris,
        LOGITS,
        lambda: keras.optimizers.SGD(0.01, momentum=0.9),
        ["accuracy"],
        {},
        None,
    ),
    "breast cancer, binary": (lambda: mlp(30, 1), cancer, BINARY_LOGITS, "adam", [BINARY_ACCURACY], {}, None),
    "regression, standardized": (lambda: mlp(10, 1), regression, "mse", "adam", None, {}, None),
    "two outputs": (two_headed, two_outputs, ["mse", "mse"], "adam", None, {}, None),
    "GRU on tokens": (gru, tokens, BINARY_LOGITS, "adam", [BINARY_ACCURACY], {}, None),
    "no capacity": (
        lambda: keras.Sequential([keras.Input((64,)), keras.layers.Dense(1), keras.layers.Dense(10)]),
        digits,
        LOGITS,
        "adam",
        ["accuracy"],
        {},
        "overfit_small_sample",
    ),
    "dead units": (lambda: mlp(bias=-100.0), digits, LOGITS, "adam", ["accuracy"], {}, "check_initial_loss"),
    "unscaled targets": (
        lambda: mlp(10, 1),
        lambda: regression(50.0, 200.0),
        "mse",
        "adam",
        None,
        {},
        "check_initial_loss",
    ),
    "rate far too high": (
        lambda: mlp(),
        digits,
        LOGITS,
        lambda: keras.optimizers.SGD(0.1),
        ["accuracy"],
        {"learning_rate": 50.0},
        "fit",
    ),
    "rate far too low": (
        lambda: mlp(),
        digits,
        LOGITS,
        lambda: keras.optimizers.SGD(0.1),
        ["accuracy"],
        {"learning_rate": 1e-4},
        "fit",
    ),
    "from_logits mismatch": (
        lambda: mlp(activation="softmax"),
        digits,
        LOGITS,
        "adam",
        ["accuracy"],
        {},
        "check_initial_loss",
    ),
    "overfitting set-up": (
        lambda: mlp(hidden=512),
        lambda: digits_small(),
        LOGITS,
        lambda: keras.optimizers.Adam(1e-2),
        ["accuracy"],
        {"epochs": 60},
        "fit (overfitting)",
    ),
}


def digits_small():
    (x, y), validation = digits()
    return (x[:64], y[:64]), validation


def _optimizer(spec):
    return spec() if callable(spec) else spec


def run_stages(epochs, seed):
    rows = []
    for name, (build, data, loss, optimizer, metrics, overrides, meant) in PROBLEMS.items():
        keras.utils.set_random_seed(seed)
        train, validation = data()
        pb = Playbook(
            build,
            train,
            validation_data=validation,
            loss=loss,
            optimizer=_optimizer(optimizer),
            metrics=metrics,
            batch_size=32,
            seed=seed,
            verbose=0,
        )
        flags = {}
        initial = pb.check_initial_loss()
        flags["check_initial_loss"] = not initial.ok
        flags["overfit_small_sample"] = not pb.overfit_small_sample().ok
        found = pb.find_lr()
        overrides = dict(overrides)
        run_epochs = overrides.pop("epochs", epochs)  # 64 examples are 2 steps an epoch: overfitting takes more.
        if "learning_rate" not in overrides and not found.ok:
            overrides["learning_rate"] = 1e-3
        pb.fit(run_epochs, verbose=0, **overrides)
        record = pb.journal.latest("fit")
        kinds = [finding["kind"] for finding in record.findings]
        flags["fit"] = not record.ok
        flags["fit (overfitting)"] = "overfitting" in kinds
        rows.append((name, meant, flags, kinds, initial.checked))
        print(
            f"  {name:38s} initial {'FLAG' if flags['check_initial_loss'] else 'ok  '}"
            f"{'' if initial.checked else ' (not checked)'}  "
            f"overfit {'FLAG' if flags['overfit_small_sample'] else 'ok  '}"
            f"  fit {'FLAG' if flags['fit'] else 'ok  '}  findings {kinds}",
            flush=True,
        )
    print("\nPer stage: false alarms on healthy runs, detections of the set-ups meant for it")
    for stage in ("check_initial_loss", "overfit_small_sample", "fit", "fit (overfitting)"):
        healthy = [flags[stage] for name, meant, flags, _, _ in rows if meant is None]
        broken = [flags[stage] for name, meant, flags, _, _ in rows if meant == stage]
        detected = f"{sum(broken)}/{len(broken)}" if broken else "-"
        print(f"  {stage:22s} false alarms {sum(healthy)}/{len(healthy)} (target 0)   detections {detected}")


def run_search(epochs):
    (x, y), validation = digits()
    pb = Playbook(lambda: mlp(), (x, y), validation_data=validation, loss=LOGITS, metrics=["accuracy"], verbose=0)
    pb.find_lr()
    tie = pb.grid_weight_decay(values=[0.0, 1e-9, 1e-8], epochs=epochs, overwrite=True)
    real = pb.grid_weight_decay(values=[0.0, 1.0], epochs=epochs, overwrite=True)
    print(
        f"  weight decays 0, 1e-9, 1e-8 (a tie): meaningful={tie.meaningful} (target False), "
        f"adopted {tie.adopted.get('weight_decay')} (target 0), noise {tie.noise}"
    )
    print(
        f"  weight decays 0, 1.0 (a real difference): meaningful={real.meaningful} (target True), "
        f"adopted {real.adopted.get('weight_decay')} (target 0)"
    )


def _best_accuracy(record):
    name = next(key for key in record.history if key.startswith("val_") and "accuracy" in key)
    return max(record.history[name])


def _seeded_playbook(build, data, loss, metrics, seed, optimizer="adam"):
    """A Playbook at batch 32 whose initial weights and data order come from `seed`."""
    keras.utils.set_random_seed(seed)
    train, validation = data()
    return Playbook(
        build,
        train,
        validation_data=validation,
        loss=loss,
        metrics=metrics,
        optimizer=_optimizer(optimizer),
        batch_size=32,
        seed=seed,
        verbose=0,
    )


def run_batch(epochs, seeds):
    problems = {
        "digits": (lambda: mlp(), digits, LOGITS, ["accuracy"]),
        "breast cancer": (lambda: mlp(30, 1), cancer, BINARY_LOGITS, [BINARY_ACCURACY]),
    }
    for name, (build, data, loss, metrics) in problems.items():
        scores = {"find_batch_size": [], "batch 32": []}
        chosen = []
        for seed in range(seeds):
            for way in scores:
                pb = _seeded_playbook(build, data, loss, metrics, seed)
                if way == "find_batch_size":
                    chosen.append(pb.find_batch_size().batch_size)
                pb.find_lr()
                pb.fit(epochs, verbose=0)
                scores[way].append(_best_accuracy(pb.journal.latest("fit")))
        ratio = np.mean(scores["find_batch_size"]) / np.mean(scores["batch 32"])
        print(
            f"  {name}: chosen batch sizes {chosen}; best-epoch val accuracy "
            f"{np.mean(scores['find_batch_size']):.4f} vs {np.mean(scores['batch 32']):.4f} at 32: "
            f"ratio {ratio:.3f} (target >= 0.99)"
        )


def run_one_cycle(epochs, seeds):
    problems = {
        "BatchNorm CNN, no augmentation": (
            lambda: cnn(augment=False),
            lambda: digits(True),
            LOGITS,
            ["accuracy"],
            "adam",
        )
    }
    for name, (build, data, loss, optimizer, metrics, _, meant) in PROBLEMS.items():
        if meant is None and metrics is not None:  # The healthy classification problems (accuracy to compare).
            problems[name] = (build, data, loss, metrics, optimizer)
    for name, (build, data, loss, metrics, optimizer) in problems.items():
        final = {"one_cycle": [], "constant": []}
        for seed in range(seeds):
            for way in final:
                pb = _seeded_playbook(build, data, loss, metrics, seed, optimizer)
                found = pb.find_lr()
                if not found.ok:
                    final[way].append(float("nan"))
                    continue
                pb.fit(epochs, schedule="one_cycle" if way == "one_cycle" else None, verbose=0)
                record = pb.journal.latest("fit")
                name_acc = next(key for key in record.history if key.startswith("val_") and "accuracy" in key)
                final[way].append(record.history[name_acc][-1])
        print(
            f"  {name}: final val accuracy one_cycle {np.nanmean(final['one_cycle']):.4f} vs constant "
            f"{np.nanmean(final['constant']):.4f} "
            f"(ratio {np.nanmean(final['one_cycle']) / np.nanmean(final['constant']):.3f}; "
            f"target >= 1.0)"
        )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--only", default="stages,search,batch,one_cycle")
    arguments = parser.parse_args()
    parts = arguments.only.split(",")
    start = time.perf_counter()
    if "stages" in parts:
        print("Verdicts on labelled runs (seed 0):")
        run_stages(arguments.epochs, 0)
    if "search" in parts:
        print("\nThe searches' 'meaningfully better' verdict:")
        run_search(6)
    if "batch" in parts:
        print(
            f"\nfind_batch_size defaults, then find_lr and fit({arguments.epochs}), against batch 32 "
            f"({arguments.seeds} seeds):"
        )
        run_batch(arguments.epochs, arguments.seeds)
    if "one_cycle" in parts:
        print(
            f"\none_cycle from find_lr against a constant rate at its suggestion ({arguments.seeds} seeds, "
            f"{arguments.epochs} epochs):"
        )
        run_one_cycle(arguments.epochs, arguments.seeds)
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
