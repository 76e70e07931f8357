"""A training killed at any moment resumes as the same training (issue: kills, resumed schedules, best epochs).

The kills are simulated in a separate process with op determinism on: a
`Killed` exception (a `BaseException`, as a signal would end the process
without any handler) raised at the moment that matters, then a new Playbook
on a freshly built model and the same folder, as a new process would make.
Each resumed run is compared with an uninterrupted one.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_playbook import Playbook
from keras_playbook._folder import collect_garbage
from keras_playbook._journal import Journal
from tests import helpers

_SCRIPT = r"""
import json, os, sys
import numpy as np
import tensorflow as tf
import keras
sys.path.insert(0, {root!r})
tf.config.experimental.enable_op_determinism()
from keras_playbook import Playbook, _runner
from keras_playbook._stages import training
from keras_playbook.callbacks import StepDownLR
from tests import helpers

class Killed(BaseException):
    pass

DATA = helpers.digits_data(num_train=256, num_val=64)
SCHEDULES = {{"one_cycle": "one_cycle", "step_down": StepDownLR(monitor="val_loss", patience=1, factor=0.3)}}

def playbook(directory):
    keras.utils.set_random_seed(1)
    model = helpers.mlp(hidden=16)
    return Playbook(model, (DATA["x_train"], DATA["y_train"]), validation_data=(DATA["x_val"], DATA["y_val"]),
                    loss=helpers.LOGITS_LOSS, metrics=["accuracy"], batch_size=32, directory=directory,
                    optimizer=keras.optimizers.SGD(0.01, momentum=0.9), verbose=0)

def plan(schedule):
    return [("find_lr", {{"repeats": 1, "num_steps": 30}}),
            ("fit", {{"epochs": 5, "schedule": SCHEDULES[schedule], "restore_best": True, "verbose": 0}})]

class Killer(keras.callbacks.Callback):
    def __init__(self, when):
        super().__init__()
        self.when = when
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        if self.when == "between_epochs" and epoch == 3:
            raise Killed()
    def on_train_batch_end(self, batch, logs=None):
        if self.when == "mid_epoch" and self.epoch == 2 and batch == 3:
            raise Killed()

def arm(when):
    callbacks, on_train_end = training.TrainingBackup.callbacks, training.TrainingBackup.on_train_end
    save = _runner.save_weights
    def with_killer(self):
        return [Killer(when)] + callbacks(self)
    def killed_at_end(self, logs=None):
        raise Killed()
    def save_then_kill(model, directory, name):
        save(model, directory, name)
        raise Killed()
    training.TrainingBackup.callbacks = with_killer
    if when == "after_last_backup":
        training.TrainingBackup.on_train_end = killed_at_end
    if when == "before_record":
        _runner.save_weights = save_then_kill
    def disarm():
        training.TrainingBackup.callbacks, training.TrainingBackup.on_train_end = callbacks, on_train_end
        _runner.save_weights = save
    return disarm

def describe(pb, result):
    fit = pb.journal.latest("fit")
    return {{
        "settled": result.settled, "epochs": fit.epochs, "best_epoch": fit.best_epoch,
        "learning_rate": fit.history.get("learning_rate"), "loss": fit.history["loss"],
        "val_loss": fit.history["val_loss"], "resumed_from": fit.resumed_from, "steps": fit.call["steps"],
        "skipped": [step["skipped"] for step in result.steps], "message": fit.message,
        "final": result.final, "weights": [w.tolist() for w in pb.model.get_weights()],
        "backups": sorted(os.listdir(backup)) if os.path.isdir(backup := os.path.join(pb.directory, "backup")) else [],
    }}

out = {{}}
schedule, root_dir = sys.argv[1], sys.argv[2]
whole = playbook(os.path.join(root_dir, "whole"))
out["whole"] = describe(whole, whole.run(epochs=5, plan=plan(schedule)))
for when in ("mid_epoch", "between_epochs", "after_last_backup", "before_record"):
    directory = os.path.join(root_dir, when)
    disarm = arm(when)
    try:
        playbook(directory).run(epochs=5, plan=plan(schedule))
        raise SystemExit("not killed: " + when)
    except Killed:
        pass
    finally:
        disarm()
    pb = playbook(directory)
    out[when] = describe(pb, pb.run(epochs=5, plan=plan(schedule)))
print("RESULT" + json.dumps(out))
"""


def _scenarios(schedule, tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.run(
        [sys.executable, "-c", _SCRIPT.format(root=root), schedule, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert process.returncode == 0, process.stderr[-4000:]
    line = next(line for line in process.stdout.splitlines() if line.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])


# Epochs finished (on disk) when each kill happens, of 5; steps per epoch at 256 examples, batch 32.
_DONE = {"mid_epoch": 2, "between_epochs": 3, "after_last_backup": 5, "before_record": 5}
_STEPS_PER_EPOCH = 8


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["one_cycle", "step_down"])
def test_a_fit_killed_at_any_moment_resumes_as_the_same_training(schedule, tmp_path):
    runs = _scenarios(schedule, tmp_path)
    whole = runs.pop("whole")
    assert whole["resumed_from"] is None and whole["steps"] == 5 * _STEPS_PER_EPOCH
    for when, run in runs.items():
        done = _DONE[when]
        # Only the epochs not on disk were trained again; the record says it resumed, and where.
        assert run["skipped"] == [True, False], when
        assert run["steps"] == (5 - done) * _STEPS_PER_EPOCH, when
        assert run["resumed_from"] == done + 1, (when, run["message"])
        resumed = f"Resumed at epoch {done + 1}" if done < 5 else "with all 5 epochs on disk: nothing was left"
        assert resumed in run["message"], (when, run["message"])
        # The same training: decisions, epochs, the learning-rate curve and the best epoch exactly.
        assert run["settled"] == whole["settled"], when
        assert run["epochs"] == whole["epochs"] == 5 and run["best_epoch"] == whole["best_epoch"], when
        np.testing.assert_array_equal(
            np.float32(run["learning_rate"]), np.float32(whole["learning_rate"]), err_msg=when
        )
        # Weights and losses within a tolerance; the model holds the best epoch's weights, as the record says.
        np.testing.assert_allclose(run["loss"], whole["loss"], rtol=1e-4, err_msg=when)
        np.testing.assert_allclose(run["val_loss"], whole["val_loss"], rtol=1e-4, err_msg=when)
        for mine, theirs in zip(run["weights"], whole["weights"]):
            np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-5, err_msg=when)
        assert run["final"] == pytest.approx(whole["final"], rel=1e-4), when
        assert run["backups"] == [], when  # Recorded: the backup is gone.


def _tiny(directory, data, **kwargs):
    return Playbook(
        helpers.mlp(hidden=8),
        (data["x_train"], data["y_train"]),
        validation_data=(data["x_val"], data["y_val"]),
        loss=helpers.LOGITS_LOSS,
        batch_size=32,
        directory=directory,
        verbose=0,
        **kwargs,
    )


def test_overwrite_removes_what_the_old_journal_owned_and_never_resumes_its_backup(tmp_path):
    data = helpers.digits_data(num_train=128, num_val=32)
    pb = _tiny(tmp_path, data)
    pb.fit(epochs=1, verbose=0)
    (tmp_path / "tuning" / "old-search").mkdir(parents=True)
    # A backup of an interrupted fit of the old run, at the point a new run's first fit would be.
    backup = tmp_path / "backup" / "interrupted"
    backup.mkdir(parents=True)
    (tmp_path / "notes.txt").write_text("mine")
    old_weights = sorted(os.listdir(tmp_path / "weights"))
    other = helpers.digits_data(num_train=96, num_val=32)
    pb = _tiny(tmp_path, {**other, "x_train": other["x_train"][::-1].copy()}, overwrite=True)
    assert not (tmp_path / "tuning").exists() and not (tmp_path / "backup").exists()
    assert not set(old_weights) & set(os.listdir(tmp_path / "weights"))  # Only the new set-up's initial weights.
    assert (tmp_path / "notes.txt").read_text() == "mine"  # What the journal did not own is left alone.
    pb.fit(epochs=2, verbose=0)
    record = pb.journal.latest("fit")
    assert record.resumed_from is None and len(record.history["loss"]) == 2
    assert record.call["steps"] == 2 * 3  # 96 examples at batch 32: nothing of the old run was resumed.


def test_a_fine_tune_taken_back_leaves_no_backup_to_resume(tmp_path):
    data = helpers.digits_data(num_train=128, num_val=32)
    pb = _tiny(tmp_path, data)

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if self.model.optimizer.__class__.__name__ == "DiscriminativeOptimizer" and epoch == 0:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pb.fine_tune(head_epochs=1, epochs=3, groups=2, callbacks=[Interrupt()], verbose=0)
    assert not (tmp_path / "backup").exists() or not os.listdir(tmp_path / "backup")
    assert len(pb.journal) == 1 and sorted(os.listdir(tmp_path / "weights")) == [
        os.path.basename(pb.journal.setup.initial_weights["file"])
    ]
    pb.fine_tune(head_epochs=1, epochs=2, groups=2, verbose=0)
    phase_two = [result for result in pb.journal if result.kind == "fit"][-1]
    assert phase_two.resumed_from is None and len(phase_two.history["loss"]) == 2


def test_files_no_record_refers_to_are_removed(tmp_path):
    data = helpers.digits_data(num_train=64, num_val=32)
    pb = _tiny(tmp_path, data)
    for _ in range(3):
        pb.fit(epochs=1, verbose=0)
    weights = tmp_path / "weights"
    referenced = {os.path.basename(result.weights) for result in pb.journal if result.kind == "fit"}
    assert referenced <= set(os.listdir(weights)) and len(referenced) == 3
    (weights / "fit-009-orphan.weights.h5").write_bytes(b"left by a kill before the record")
    pb.journal.truncate(2)  # The last two fits taken back: their weights are no longer referenced.
    removed = collect_garbage(str(tmp_path), pb.journal)
    assert "weights/fit-009-orphan.weights.h5" in removed
    left = set(os.listdir(weights))
    assert len([name for name in left if name.startswith("fit-")]) == 1
    assert os.path.basename(pb.journal.setup.initial_weights["file"]) in left


class _KilledBetweenEpochs(keras.callbacks.Callback):
    """Ends a fit before its third epoch, as a kill would (no handler in the library catches it)."""

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 2:
            raise SystemExit("killed")


def test_a_fit_resumes_in_a_new_playbook_on_both_strategies(strategy, tmp_path):
    data = helpers.digits_data(num_train=128, num_val=32)

    def playbook():
        keras.utils.set_random_seed(3)
        return _tiny(tmp_path, data, strategy=strategy)

    pb = playbook()
    call = {"epochs": 4, "schedule": "two_stage", "restore_best": True, "verbose": 0}
    killer = _KilledBetweenEpochs()  # No get_config: not part of the call, as a kill is not.
    with pytest.raises(SystemExit):
        pb.fit(**call, callbacks=[killer])
    assert [name for name in os.listdir(tmp_path / "backup") if not name.endswith(".csv")]
    pb = playbook()
    pb.fit(**call, callbacks=[])
    record = pb.journal.latest("fit")
    steps_per_epoch = -(-128 // pb.train_data.global_batch_size)
    assert record.resumed_from == 3 and record.call["steps"] == 2 * steps_per_epoch  # Only epochs 3 and 4 ran.
    assert len(record.history["loss"]) == 4 and len(record.history["learning_rate"]) == 4
    assert record.history["learning_rate"][:2] == pytest.approx([record.history["learning_rate"][0]] * 2)
    assert not os.listdir(tmp_path / "backup")


def test_a_plan_changed_and_changed_back_reads_back_instead_of_training_again(tmp_path):
    data = helpers.digits_data(num_train=64, num_val=32)

    def playbook():
        keras.utils.set_random_seed(5)
        return _tiny(tmp_path, data)

    def plan(epochs):
        return ["check_initial_loss", ("fit", {"epochs": epochs, "learning_rate": 0.05, "verbose": 0})]

    skipped = []
    for epochs in (1, 2, 2, 1, 2):  # Each run in a new Playbook, as a new process would.
        result = playbook().run(epochs=epochs, plan=plan(epochs))
        skipped.append([step["skipped"] for step in result.steps])
    assert skipped == [[False, False], [True, False], [True, True], [True, True], [True, True]]
    pb = playbook()
    assert len([result for result in pb.journal if result.kind == "fit"]) == 2  # Trained once per plan.
    assert len([name for name in os.listdir(tmp_path / "weights") if name.startswith("fit-")]) == 2
    # A fit called by hand from the trained weights did not start where the plan's fit starts: never read back.
    pb.run(epochs=2, plan=plan(2))
    pb.fit(epochs=2, learning_rate=0.05, verbose=0)
    again = playbook().run(epochs=2, plan=plan(2))
    assert [step["skipped"] for step in again.steps] == [True, True]
    on_disk = Journal.load(str(tmp_path / "journal.json"))
    assert len([result for result in on_disk if result.kind == "fit"]) == 3  # The two plans' and the hand one.
