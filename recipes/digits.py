"""
Title: The tuning procedure on scikit-learn's digits, offline
Description: Checks the initial loss, overfits a small sample, finds the batch
size, the learning rate and the momentum, grids the weight decay on
KerasTuner, then trains, printing each stage's verdict. Runs in about a
minute on 2 CPU cores.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

from keras_playbook import Playbook  # noqa: E402

"""## Data: 1,797 8x8 digit images that ship with scikit-learn"""

digits = load_digits()
images = (digits.images / 16.0).astype("float32")[..., None]
x_train, x_val, y_train, y_val = train_test_split(
    images, digits.target, test_size=0.2, random_state=0, stratify=digits.target
)


"""## Model: a small CNN, built by a function so trials can rebuild it"""


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


"""## The procedure"""

pb = Playbook(
    build_model,
    (x_train, y_train),
    validation_data=(x_val, y_val),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    optimizer=keras.optimizers.Adam(3e-3),
    metrics=["accuracy"],
    batch_size=64,
    directory=os.environ.get("PLAYBOOK_DIR", "runs/digits"),
    overwrite=True,  # A fresh journal each run; without it, a second run carries the first one's journal on.
)
print(pb.journal[0].summary())
print(pb.check_initial_loss().summary())
print(pb.overfit_small_sample().summary())
# Tuning Playbook: the batch size (capped: on a CPU the largest is the whole
# dataset), then the learning rate at that batch size, then momentum.
batch = pb.find_batch_size(max_batch_size=128)
print(batch.table())
print(batch.summary())
lr = pb.find_lr()
print(lr.summary())
print(pb.probe_lrs().summary())
print(pb.sweep_momentum().summary())
lr.plot().savefig(os.path.join(os.path.dirname(pb.journal.path), "find_lr.png"))
# Smith 2018: with LR, batch size and momentum fixed, a weight-decay
# grid (KerasTuner trials in runs/digits/tuning; overwrite=False would resume).
decay = pb.grid_weight_decay(epochs=5, overwrite=True)
print(decay.table())
print(decay.summary())
history = pb.fit(epochs=15, verbose=0)
print(pb.journal[-1].summary())
print(f"Validation accuracy: {history.history['val_accuracy'][-1]:.3f}")
print(f"Journal written to {pb.journal.path}")
