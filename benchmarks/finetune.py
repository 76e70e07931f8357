"""Fine-tuning on the digits transfer task: the Playbook's two phases vs from scratch vs one-LR fine-tuning.

A small CNN backbone is pretrained on digits 0-4 (scikit-learn's 8x8 digits,
nothing downloaded), then the task is digits 5-9 from few examples
(`--per-class` training images per class; the rest of 5-9 is validation).
Three ways, the same number of epochs each (`--head-epochs` + `--epochs`):

- playbook: `Playbook.for_fine_tuning` + `fine_tune`: the head alone on the
  frozen backbone at the rate a range test finds, then every layer with
  discriminative rates (x 1/2.6 per earlier group) at a fresh range test's
  base rate;
- scratch: the same network, randomly initialized, trained at the rate a
  range test finds;
- one LR: the pretrained network (new head), everything trainable from the
  start at the rate a range test finds for it.
- pb+BN: the Playbook's way with `train_batch_norm=True` (by default its
  BatchNormalization layers stay frozen, in inference mode with the
  pretrained statistics, as Keras's transfer-learning guide advises).

Every run's range test costs 100 steps, not counted in the epochs. Prints
the best-epoch and final validation accuracy of each way per seed and their
means. Target (issue 6): the Playbook's fine-tuning is best.

    python benchmarks/finetune.py [--seeds 3] [--per-class 20]
"""

import argparse
import os
import statistics

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from keras_playbook import (
    Playbook,  # noqa: E402
    finetune,  # noqa: E402
)

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def backbone():
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, padding="same", name="block1_conv"),
            keras.layers.BatchNormalization(momentum=0.9, name="block1_bn"),
            keras.layers.ReLU(),
            keras.layers.Conv2D(32, 3, padding="same", name="block2_conv"),
            keras.layers.BatchNormalization(momentum=0.9, name="block2_bn"),
            keras.layers.ReLU(),
            keras.layers.Conv2D(32, 3, padding="same", name="block3_conv"),
            keras.layers.BatchNormalization(momentum=0.9, name="block3_bn"),
            keras.layers.ReLU(),
        ],
        name="backbone",
    )


def pretrain(x, y, epochs=15):
    keras.utils.set_random_seed(0)
    net = backbone()
    model = keras.Sequential([net, keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(5)])
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=LOSS, metrics=["accuracy"])
    history = model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, validation_split=0.2)
    return net.get_weights(), history.history["val_accuracy"][-1]


def accuracy_curve(pb):
    return [r.history["val_accuracy"] for r in pb.journal if r.kind == "fit"]


def run_playbook(weights, train, val, head_epochs, epochs, seed, train_batch_norm=False):
    keras.utils.set_random_seed(seed)
    net = backbone()
    net.set_weights(weights)
    pb = Playbook.for_fine_tuning(net, 5, train, val, batch_size=16, seed=seed, verbose=0)
    pb.fine_tune(head_epochs=head_epochs, epochs=epochs, groups=3, verbose=0, train_batch_norm=train_batch_norm)
    return sum(accuracy_curve(pb), [])


def run_single_lr(weights, train, val, total_epochs, seed):
    keras.utils.set_random_seed(seed)
    net = backbone()
    if weights is not None:
        net.set_weights(weights)
    model = finetune.build_model(net, 5)
    pb = Playbook(model, train, val, loss=LOSS, metrics=["accuracy"], batch_size=16, seed=seed, verbose=0)
    pb.find_lr()
    pb.fit(total_epochs, watch=False, verbose=0)
    return accuracy_curve(pb)[-1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--head-epochs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=12)
    arguments = parser.parse_args()
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32").reshape(-1, 8, 8, 1)
    y = digits.target.astype("int64")
    source = y < 5
    weights, source_accuracy = pretrain(x[source], y[source])
    print(f"backbone pretrained on digits 0-4: validation accuracy {source_accuracy:.3f}")
    target_x, target_y = x[~source], y[~source] - 5
    total = arguments.head_epochs + arguments.epochs
    results = {"playbook": [], "pb+BN": [], "scratch": [], "one LR": []}
    print(f"{'seed':>4} {'way':<9} {'best val acc':>12} {'final val acc':>13}")
    for seed in range(arguments.seeds):
        rng = np.random.default_rng(seed)
        chosen = np.concatenate(
            [rng.choice(np.flatnonzero(target_y == c), arguments.per_class, replace=False) for c in range(5)]
        )
        rest = np.setdiff1d(np.arange(len(target_y)), chosen)
        train, val = (target_x[chosen], target_y[chosen]), (target_x[rest], target_y[rest])
        curves = {
            "playbook": run_playbook(weights, train, val, arguments.head_epochs, arguments.epochs, seed),
            "pb+BN": run_playbook(weights, train, val, arguments.head_epochs, arguments.epochs, seed, True),
            "scratch": run_single_lr(None, train, val, total, seed),
            "one LR": run_single_lr(weights, train, val, total, seed),
        }
        for way, curve in curves.items():
            results[way].append((max(curve), curve[-1]))
            print(f"{seed:>4} {way:<9} {max(curve):>12.4f} {curve[-1]:>13.4f}")
    print(
        f"\nmeans over {arguments.seeds} seeds ({arguments.per_class} training images per class, "
        f"{total} epochs each, validation {len(rest)} images):"
    )
    means = {
        way: (statistics.mean(b for b, _ in values), statistics.mean(f for _, f in values))
        for way, values in results.items()
    }
    for way, (best, final) in means.items():
        print(f"  {way:<9} best {best:.4f}  final {final:.4f}")
    others = [means[way][0] for way in means if way not in ("playbook", "pb+BN")]
    for way in ("playbook", "pb+BN"):
        print(
            f"Target (the Playbook's fine-tuning, {way}, is best, by mean best-epoch accuracy): "
            f"{'met' if means[way][0] >= max(others) else 'NOT met'}"
        )


if __name__ == "__main__":
    main()
