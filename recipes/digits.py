"""
Title: The tuning procedure on scikit-learn's digits, offline
Description: The whole procedure with `Playbook.run`: checks the initial loss,
overfits a small sample, finds the batch size, the learning rate and the
momentum, grids the weight decay on KerasTuner, then trains, printing each
stage's verdict. Runs in about a minute on 2 CPU cores; run again, it resumes.
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


"""## The procedure

`pb.run` chains the stages, each decision feeding the next: the initial
loss, a small sample overfitted, the batch size (capped: on a CPU the
largest is the whole dataset), the learning rate at that batch size, its
cross-check, momentum, a weight-decay grid on KerasTuner (trials in
runs/digits/tuning), and the final training with a step-down schedule.
Run the script again and every finished stage is read back from the journal
instead of run again; an interrupted final training continues from its last
finished epoch. `PLAYBOOK_FRESH=1` starts a new journal.
"""

pb = Playbook(
    build_model,
    (x_train, y_train),
    validation_data=(x_val, y_val),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    optimizer=keras.optimizers.Adam(3e-3),
    metrics=["accuracy"],
    batch_size=64,
    directory=os.environ.get("PLAYBOOK_DIR", "runs/digits"),
    overwrite=bool(os.environ.get("PLAYBOOK_FRESH")),
)
print(pb.journal[0].summary())
result = pb.run(
    epochs=15,
    plan=[
        "check_initial_loss",
        "overfit_small_sample",
        ("find_batch_size", {"max_batch_size": 128}),
        "find_lr",
        "probe_lrs",
        "sweep_momentum",
        ("grid_weight_decay", {"epochs": 5}),
        ("fit", {"epochs": 15, "schedule": "step_down", "restore_best": True, "verbose": 0}),
    ],
)
for step in result.steps:
    print(pb.journal.latest(step["stage"]).summary())
print(pb.journal.latest("grid_weight_decay").table())
pb.journal.latest("find_lr").plot().savefig(os.path.join(os.path.dirname(pb.journal.path), "find_lr.png"))
print(result.table())
print(result.message)
print(f"Journal written to {pb.journal.path}")
