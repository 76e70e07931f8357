"""The Playbook's procedure against KerasTuner's RandomSearch and Hyperband.

For each small problem (data that ships with scikit-learn, nothing downloaded):
1. the Playbook: `find_lr()`, then `tune_lr_wd()` (a coarse LR x WD grid for
   3 epochs, a refined one for 15), with its default settings; its epochs
   are counted, the range test's steps as a fraction of an epoch;
2. KerasTuner's `RandomSearch` and `Hyperband` (max_epochs 15, factor 3) over
   the same space (learning rate log-uniform in [1e-4, 1], weight decay in
   {0, 1e-5, 1e-4, 1e-3}, decoupled), each given three times the Playbook's
   epochs in total; a callback counts every epoch trained and stops the
   search when the budget is spent.

All three score trials by validation accuracy at the best epoch, on the same
split. Printed per problem: best validation accuracy and epochs spent for
each, and the ratios. Target: the Playbook matches or beats both while
spending at most a third of their epochs.

The best validation accuracy of a search is the maximum over its trials, so a
search that runs more trials gains from lucky ones (on a few hundred
validation examples one trial's luck is worth a few examples). The script
therefore also re-measures each search's chosen configuration: trained again
from 3 fresh seeds for 15 epochs, mean best-epoch validation accuracy. That
is the accuracy a user gets by adopting the configuration.

Usage:
    python benchmarks/tuning_budget.py [--quick]
"""

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import keras_tuner  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_breast_cancer, load_digits  # noqa: E402

from keras_playbook import Playbook  # noqa: E402

BATCH_SIZE = 32
FINE_EPOCHS = 15
WEIGHT_DECAYS = [0.0, 1e-5, 1e-4, 1e-3]
LR_RANGE = (1e-4, 1.0)
BUDGET_FACTOR = 3


def _split(x, y, validation_fraction, seed=0):
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(len(x) * (1 - validation_fraction))
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


def digits_mlp():
    x, y = load_digits(return_X_y=True)

    def build():
        return keras.Sequential(
            [
                keras.Input((64,)),
                keras.layers.Dense(64, activation="relu"),
                keras.layers.Dense(10),
            ]
        )

    return dict(
        name="digits MLP, Adam",
        build=build,
        data=_split((x / 16.0).astype("float32"), y.astype("int64"), 0.4),
        optimizer=keras.optimizers.Adam,
    )


def breast_cancer_mlp():
    x, y = load_breast_cancer(return_X_y=True)
    x = ((x - x.mean(axis=0)) / x.std(axis=0)).astype("float32")

    def build():
        return keras.Sequential(
            [
                keras.Input((30,)),
                keras.layers.Dense(32, activation="relu"),
                keras.layers.Dense(2),
            ]
        )

    return dict(
        name="breast cancer MLP, SGD + momentum 0.9",
        build=build,
        data=_split(x, y.astype("int64"), 0.4),
        optimizer=lambda learning_rate=0.01, **kwargs: keras.optimizers.SGD(learning_rate, momentum=0.9, **kwargs),
    )


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def playbook_procedure(problem, directory):
    x, y, x_val, y_val = problem["data"]
    keras.utils.set_random_seed(0)
    pb = Playbook(
        problem["build"],
        (x, y),
        validation_data=(x_val, y_val),
        loss=_loss(),
        optimizer=problem["optimizer"](),
        metrics=["accuracy"],
        batch_size=BATCH_SIZE,
        verbose=0,
    )
    found = pb.find_lr()
    result = pb.tune_lr_wd(objective="val_accuracy", fine_epochs=FINE_EPOCHS, directory=directory)
    steps_per_epoch = int(np.ceil(len(x) / BATCH_SIZE))
    epochs = result.epochs_spent + len(found.losses) / steps_per_epoch
    return result.best_score, epochs, result.best


class _Budget(keras.callbacks.Callback):
    """Counts epochs over all trials; stops the search once the budget is spent."""

    spent = 0
    budget = 0

    def on_epoch_end(self, epoch, logs=None):
        type(self).spent += 1
        if type(self).spent >= type(self).budget:
            raise keras_tuner.errors.FatalError("epoch budget spent")


def baseline(problem, tuner_class, budget, directory, **tuner_arguments):
    x, y, x_val, y_val = problem["data"]

    def build(hp):
        learning_rate = hp.Float("learning_rate", *LR_RANGE, sampling="log")
        weight_decay = hp.Choice("weight_decay", WEIGHT_DECAYS)
        model = problem["build"]()
        model.compile(
            optimizer=problem["optimizer"](learning_rate=learning_rate, weight_decay=weight_decay or None),
            loss=_loss(),
            metrics=["accuracy"],
        )
        return model

    keras.utils.set_random_seed(0)
    _Budget.spent, _Budget.budget = 0, budget
    tuner = tuner_class(
        build,
        objective="val_accuracy",
        directory=directory,
        project_name=tuner_class.__name__,
        seed=0,
        **tuner_arguments,
    )
    try:
        tuner.search(
            x,
            y,
            validation_data=(x_val, y_val),
            batch_size=BATCH_SIZE,
            callbacks=[_Budget()],
            verbose=0,
            **({"epochs": FINE_EPOCHS} if tuner_class is keras_tuner.RandomSearch else {}),
        )
    except keras_tuner.errors.FatalError:
        pass
    best = tuner.oracle.get_best_trials(1)[0]
    return best.score, _Budget.spent, best.hyperparameters.values


def remeasure(problem, values, seeds=(100, 101, 102)):
    """Mean best-epoch validation accuracy of a configuration over fresh seeds."""
    x, y, x_val, y_val = problem["data"]
    scores = []
    for seed in seeds:
        keras.utils.set_random_seed(seed)
        model = problem["build"]()
        weight_decay = values.get("weight_decay") or None
        model.compile(
            optimizer=problem["optimizer"](learning_rate=values["learning_rate"], weight_decay=weight_decay),
            loss=_loss(),
            metrics=["accuracy"],
        )
        history = model.fit(x, y, validation_data=(x_val, y_val), epochs=FINE_EPOCHS, batch_size=BATCH_SIZE, verbose=0)
        scores.append(max(history.history["val_accuracy"]))
    return float(np.mean(scores))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the first problem")
    arguments = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    problems = [digits_mlp()] if arguments.quick else [digits_mlp(), breast_cancer_mlp()]
    rows = []
    for problem in problems:
        print(f"\n== {problem['name']} ==")
        with tempfile.TemporaryDirectory() as directory:
            start = time.perf_counter()
            score, epochs, best = playbook_procedure(problem, os.path.join(directory, "playbook"))
            again = remeasure(problem, best)
            print(
                f"Playbook     best val_accuracy {score:.4f}  re-measured {again:.4f}  epochs {epochs:7.1f}  "
                f"({time.perf_counter() - start:.0f} s)  lr {best['learning_rate']:.3g} wd {best['weight_decay']:.3g}"
            )
            budget = int(round(BUDGET_FACTOR * epochs))
            results = {"Playbook": (score, epochs, again)}
            for name, tuner_class, extra in (
                ("RandomSearch", keras_tuner.RandomSearch, {"max_trials": 10_000}),
                (
                    "Hyperband",
                    keras_tuner.Hyperband,
                    {"max_epochs": FINE_EPOCHS, "factor": 3, "hyperband_iterations": 100},
                ),
            ):
                start = time.perf_counter()
                base_score, spent, values = baseline(
                    problem, tuner_class, budget, os.path.join(directory, name), **extra
                )
                base_again = remeasure(problem, values)
                results[name] = (base_score, spent, base_again)
                print(
                    f"{name:<12} best val_accuracy {base_score:.4f}  re-measured {base_again:.4f}  epochs {spent:7d}  "
                    f"({time.perf_counter() - start:.0f} s)  "
                    f"lr {values['learning_rate']:.3g} wd {values['weight_decay']:.3g}"
                )
        for name in ("RandomSearch", "Hyperband"):
            rows.append(
                (problem["name"], name, score / results[name][0], again / results[name][2], epochs / results[name][1])
            )
    print(
        "\nproblem                                  against       best-accuracy ratio  re-measured ratio  epoch ratio"
    )
    for name, against, accuracy_ratio, again_ratio, epoch_ratio in rows:
        print(f"{name:<40} {against:<14} {accuracy_ratio:18.4f} {again_ratio:18.4f} {epoch_ratio:12.3f}")
    for label, column in (("best validation accuracy", 2), ("re-measured accuracy", 3)):
        met = all(row[column] >= 1.0 and row[4] <= 1 / BUDGET_FACTOR + 1e-9 for row in rows)
        print(f"Target on {label} (ratio >= 1, epoch ratio <= 1/3): {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
