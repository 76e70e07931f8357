"""grid_weight_decay and tune_lr_wd through the Playbook, on real KerasTuner searches."""

import os

import keras
import keras_tuner
import numpy as np
import pytest
from matplotlib.figure import Figure

from keras_playbook import Journal, LRWeightDecayResult, Playbook, Result, WeightDecayResult
from tests import helpers


def _playbook(
    digits, strategy=None, optimizer=None, validation=True, directory=None, model=None, loss=None, metrics=None
):
    return Playbook(
        model if model is not None else helpers.mlp(),
        (digits["x_train"], digits["y_train"]),
        validation_data=(digits["x_val"], digits["y_val"]) if validation else None,
        loss=loss or helpers.LOGITS_LOSS,
        optimizer=optimizer or keras.optimizers.Adam(3e-3),
        metrics=metrics or ["accuracy"],
        batch_size=64,
        strategy=strategy,
        directory=directory,
        verbose=0,
    )


@pytest.mark.slow
def test_weight_decay_grid(digits, strategy, tmp_path):
    pb = _playbook(digits, strategy=strategy, directory=tmp_path)
    before = helpers.variables_of(pb.model)
    result = pb.grid_weight_decay(values=[0, 1e-4, 1e-2], epochs=2, confirm_seeds=0)
    assert isinstance(result, WeightDecayResult) and pb.journal.latest("grid_weight_decay") is result
    assert [t["values"]["weight_decay"] for t in result.trials] == [0.0, 1e-4, 1e-2]
    for trial in result.trials:
        assert trial["values"]["learning_rate"] == pytest.approx(3e-3)  # The fixed values ride along.
        assert trial["values"]["batch_size"] == 64
        curve = trial["history"]["val_loss"]
        assert len(curve) == 2 and len(trial["history"]["val_accuracy"]) == 2
        # Scored at the best epoch, not the last.
        assert trial["score"] == pytest.approx(min(curve))
        assert trial["best_epoch"] == int(np.argmin(curve)) + 1
    best = min(result.trials, key=lambda t: t["score"])
    assert result.best == best["values"] and result.best_score == best["score"]
    assert pb.journal.settled()["weight_decay"] == best["values"]["weight_decay"]
    assert result.epochs_spent == 6
    assert "decoupled" in result.message and "Smith 2018" in result.message
    assert os.path.dirname(result.project_dir) == os.path.join(str(tmp_path), "tuning")
    assert os.path.basename(result.project_dir).startswith("grid_weight_decay_")
    assert "<- best" in result.table()
    assert isinstance(result.plot(), Figure)
    helpers.assert_same_values(before, helpers.variables_of(pb.model))
    again = Result.from_dict(result.to_dict())
    assert again == result
    assert Journal.load(tmp_path / "journal.json").latest("grid_weight_decay") == result


def test_running_again_resumes_the_project(digits, tmp_path):
    pb = _playbook(digits, directory=tmp_path)
    first = pb.grid_weight_decay(values=[0, 1e-3], epochs=1, confirm_seeds=0)
    second = pb.grid_weight_decay(values=[0, 1e-3], epochs=1, confirm_seeds=0)
    # Nothing ran again: the same trials, read back from KerasTuner's project.
    assert [t["history"] for t in second.trials] == [t["history"] for t in first.trials]
    assert second.project_dir == first.project_dir
    # Another search gets its own project by default: no collision, nothing to overwrite.
    other = pb.grid_weight_decay(values=[0, 1e-4], epochs=1, confirm_seeds=0)
    assert other.project_dir != first.project_dir and [t["values"]["weight_decay"] for t in other.trials] == [0, 1e-4]
    # A project named by hand is still checked against what it holds.
    name = os.path.basename(first.project_dir)
    with pytest.raises(ValueError, match="overwrite=True"):
        pb.grid_weight_decay(values=[0, 1e-2], epochs=1, project_name=name, confirm_seeds=0)
    # Two comparisons of other configurations in one Playbook (the same search would resume).
    first = pb.compare_seeds({"a": {"weight_decay": 0.0}, "b": {"weight_decay": 1e-3}}, seeds=2, epochs=1)
    second = pb.compare_seeds({"a": {"weight_decay": 0.0}, "c": {"weight_decay": 1e-2}}, seeds=2, epochs=1)
    assert first.project_dir != second.project_dir


def test_keras_tuner_tools_read_the_project(digits, tmp_path, capsys):
    pb = _playbook(digits)
    logs = tmp_path / "logs"
    result = pb.grid_weight_decay(
        values=[0, 1e-3],
        epochs=1,
        directory=tmp_path,
        confirm_seeds=0,
        callbacks=[keras.callbacks.TensorBoard(log_dir=str(logs))],
    )
    # KerasTuner gives the TensorBoard callback one folder per trial, with hparams.
    assert sorted(os.listdir(logs)) == [t["trial_id"] for t in result.trials]
    assert os.listdir(logs / result.trials[0]["trial_id"] / "execution0")
    tuner = keras_tuner.GridSearch(
        lambda hp: None,
        objective="val_loss",
        directory=str(tmp_path),
        project_name=os.path.basename(result.project_dir),
    )
    tuner.results_summary()
    assert "weight_decay" in capsys.readouterr().out


def test_l2_mode_leaves_the_users_model_alone(digits):
    pb = _playbook(digits)
    before = helpers.variables_of(pb.model)
    result = pb.grid_weight_decay(values=[0, 1e-3], epochs=1, weight_decay_mode="l2", confirm_seeds=0)
    assert result.weight_decay_mode == "l2" and "L2 penalty" in result.message
    assert "weight_decay" not in pb.journal.settled()  # fit cannot apply an L2 penalty by itself.
    assert pb.model.losses == []
    assert all(v.regularizer is None for v in pb.model.trainable_variables)
    helpers.assert_same_values(before, helpers.variables_of(pb.model))


def test_border_and_epoch_advice(digits):
    pb = _playbook(digits, optimizer=keras.optimizers.SGD(1e-4))
    # A tiny learning rate: the loss still falls at the last epoch, and the
    # largest learning rate of the coarse grid wins.
    result = pb.tune_lr_wd(
        learning_rates=[1e-5, 1e-4], weight_decays=[0.0], coarse_epochs=1, fine_epochs=3, confirm_seeds=0
    )
    assert isinstance(result, LRWeightDecayResult)
    assert any("largest value tried of the coarse grid" in advice for advice in result.advice)
    assert any("train longer" in advice for advice in result.advice)
    assert not result.ok


@pytest.mark.slow
def test_tune_lr_wd_centres_on_find_lr_and_settles(digits, tmp_path):
    pb = _playbook(digits)
    found = pb.find_lr(num_steps=40)
    result = pb.tune_lr_wd(coarse_epochs=1, fine_epochs=2, weight_decays=[0.0, 1e-4], max_extensions=0, confirm_seeds=0)
    coarse = result.stage_trials("coarse")
    fine = result.stage_trials("fine")
    lrs = sorted({t["values"]["learning_rate"] for t in coarse})
    assert lrs == pytest.approx([found.suggested_lr * f for f in (0.1, 0.3, 1, 3)], rel=1e-3)
    assert len(coarse) == 8 and all(t["epochs"] == 1 for t in coarse)
    assert fine and all(t["epochs"] == 2 for t in fine)
    assert result.best in [t["values"] for t in fine]
    settled = pb.journal.settled()
    assert settled["learning_rate"] == result.best["learning_rate"]
    assert settled["weight_decay"] == result.best["weight_decay"]
    assert result.epochs_spent == 8 + 2 * len(fine)
    assert isinstance(result.plot(), Figure)
    pb.fit(epochs=1)  # Trains with what the search settled.
    assert pb.model.optimizer.learning_rate.numpy() == pytest.approx(result.best["learning_rate"])


@pytest.mark.parametrize(
    "arguments, match",
    [
        ({"values": []}, "non-empty list"),
        ({"values": [0, -1e-4]}, "must be a finite number >= 0"),
        ({"epochs": 0}, "`epochs` must be an int >= 1"),
        ({"weight_decay_mode": "l1"}, "weight_decay_mode"),
        ({"objective": "val_top5"}, "does not compute 'val_top5'"),
    ],
)
def test_bad_grid_input_is_refused_before_any_trial(digits, tmp_path, arguments, match):
    pb = _playbook(digits)
    with pytest.raises(ValueError, match=match):
        pb.grid_weight_decay(directory=tmp_path / "never", **arguments)
    assert not (tmp_path / "never").exists()


def test_searches_need_validation_data(digits, tmp_path):
    pb = _playbook(digits, validation=False)
    with pytest.raises(ValueError, match="validation_data"):
        pb.grid_weight_decay(directory=tmp_path)
    with pytest.raises(ValueError, match="validation_data"):
        pb.tune_lr_wd(directory=tmp_path)


def test_bad_lr_grid_is_refused(digits, tmp_path):
    pb = _playbook(digits)
    with pytest.raises(ValueError, match="learning_rates"):
        pb.tune_lr_wd(learning_rates=[], directory=tmp_path)
    with pytest.raises(ValueError, match="learning_rates"):
        pb.tune_lr_wd(learning_rates=[1e-3, -1.0], directory=tmp_path)
    with pytest.raises(ValueError, match="weight_decays"):
        pb.tune_lr_wd(weight_decays=[-1e-4], directory=tmp_path)
    with pytest.raises(ValueError, match="fine_epochs"):
        pb.tune_lr_wd(fine_epochs=0, directory=tmp_path)


def test_a_stale_learning_rate_is_refused(digits, tmp_path):
    pb = _playbook(digits)
    pb.find_lr(num_steps=20)
    pb.find_batch_size(initial_batch_size=8, max_batch_size=16, steps_per_size=1)
    with pytest.raises(ValueError, match="measured at batch_size=64.*pb.find_lr"):
        pb.grid_weight_decay(directory=tmp_path)


def test_default_project_names_are_the_same_in_every_process():
    import subprocess
    import sys

    from keras_playbook._stages.search import project_name_for

    arguments = dict(
        values=[0.0, 1e-4],
        epochs=10,
        mode="decoupled",
        objective=["val_loss", "min"],
        fixed={"learning_rate": 3e-3, "batch_size": 64},
        seed=0,
    )
    here = project_name_for("grid_weight_decay", **arguments)
    code = (
        "from keras_playbook._stages.search import project_name_for; "
        f"print(project_name_for('grid_weight_decay', **{arguments!r}))"
    )
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()[-1]
    assert here == there and here.startswith("grid_weight_decay_")
    assert project_name_for("grid_weight_decay", **{**arguments, "epochs": 5}) != here


def test_a_tie_keeps_no_weight_decay_and_gives_no_border_advice(digits):
    pb = _playbook(digits)
    # Weight decays far too small to matter: whatever wins, wins by noise.
    result = pb.grid_weight_decay(values=[0.0, 1e-9, 1e-8], epochs=6, confirm_seeds=2)
    assert result.noise is not None and result.meaningful is False, result.message
    assert result.adopted["weight_decay"] == 0.0 and pb.journal.settled()["weight_decay"] == 0.0
    if result.best["weight_decay"] != 0.0:  # The best single run was re-measured over seeds, and lost.
        assert result.confirmation is not None and "does not beat weight decay 0 by more than" in result.message
    else:
        assert "A tie" in result.message
    assert "widen" not in result.message
    assert not any("widen" in advice for advice in result.advice)
    figure = result.plot()
    bars = figure.axes[0]
    assert bars.get_ylim()[0] <= 0  # Bars from zero: the tie does not look like a win.


def test_tune_lr_wd_re_measures_its_best_cell_over_seeds_before_adopting_it(digits, tmp_path):
    pb = _playbook(digits)
    # The reference is the cell closest to the current rate (1e-4) with the least weight decay.
    result = pb.tune_lr_wd(
        learning_rate=1e-4,
        learning_rates=[1e-4, 3e-3],
        weight_decays=[0.0],
        coarse_epochs=1,
        fine_epochs=2,
        max_extensions=0,
        confirm_seeds=2,
        directory=tmp_path,
        overwrite=True,  # On a first use: the search's project and the confirmation's own.
    )
    fine = result.stage_trials("fine")
    reference = min(
        fine, key=lambda t: (abs(np.log(t["values"]["learning_rate"] / 1e-4)), t["values"]["weight_decay"])
    )["values"]
    assert result.best["learning_rate"] != reference["learning_rate"]
    confirmation = result.confirmation
    assert confirmation is not None and len(confirmation["seeds"]) == 2
    assert confirmation["reference"] == f"learning rate {reference['learning_rate']:g}, weight decay 0"
    assert result.meaningful is confirmation["ok"]
    kept = result.best if confirmation["ok"] else reference
    assert result.adopted["learning_rate"] == kept["learning_rate"]
    assert pb.journal.settled()["learning_rate"] == kept["learning_rate"]
    assert result.epochs_spent == sum(t["epochs"] for t in result.trials) + confirmation["epochs_spent"]
    assert ("Confirmed over 2 seeds" if confirmation["ok"] else "does not beat") in result.message
    assert confirmation["project_dir"] == result.project_dir + "_confirm"
    for project in (result.project_dir, confirmation["project_dir"]):
        assert os.path.exists(os.path.join(project, "playbook_search.json"))


def test_a_search_leaves_the_users_global_random_state_alone(digits):
    import random

    import tensorflow as tf

    def draws():
        return (random.random(), float(np.random.rand()), float(tf.random.uniform([])), float(keras.random.uniform([])))

    keras.utils.set_random_seed(123)
    draws()
    expected = draws()
    keras.utils.set_random_seed(123)
    draws()
    pb = _playbook(digits)
    pb.grid_weight_decay(values=[0, 1e-4], epochs=1, confirm_seeds=0)
    keras.utils.set_random_seed(123)  # The Playbook's set-up drew too: start the sequence again.
    draws()
    pb.grid_weight_decay(values=[0, 1e-3], epochs=1, confirm_seeds=0)
    assert draws() == expected


def test_a_search_without_a_directory_leaves_no_folder_behind():
    import subprocess
    import sys

    code = """
import keras
from tests import helpers
from keras_playbook import Playbook
data = helpers.digits_data(num_train=128, num_val=64)
pb = Playbook(helpers.mlp(), (data["x_train"], data["y_train"]), validation_data=(data["x_val"], data["y_val"]),
              loss=helpers.LOGITS_LOSS, batch_size=64, verbose=0)
result = pb.grid_weight_decay(values=[0, 1e-4], epochs=1, confirm_seeds=0)
import os
assert os.path.isdir(result.project_dir)
print("PROJECT", result.project_dir)
"""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    project = next(line.split(" ", 1)[1] for line in done.stdout.splitlines() if line.startswith("PROJECT"))
    assert not os.path.exists(os.path.dirname(project))


def test_a_project_of_another_search_is_refused_not_read_back(digits, tmp_path):
    pb = _playbook(digits)
    grid = dict(values=[0.0, 1e-4], epochs=1, confirm_seeds=0, directory=tmp_path)
    first = pb.grid_weight_decay(**grid, project_name="mine")
    # Same project, more epochs: KerasTuner alone would hand back the 1-epoch trials.
    with pytest.raises(ValueError, match=r"holds another search \(epochs: 1 -> 2\).*overwrite=True"):
        pb.grid_weight_decay(**{**grid, "epochs": 2}, project_name="mine")
    with pytest.raises(ValueError, match=r"holds another search \(mode: 'decoupled' -> 'l2'\)"):
        pb.grid_weight_decay(**grid, project_name="mine", weight_decay_mode="l2")
    # What the trials train: another model, the labels in another order (same shapes), another loss, AdamW
    # for Adam. Each is refused before any trial runs, naming what differs.
    smaller = _playbook(digits, model=helpers.mlp(hidden=8))
    permuted = _playbook({**digits, "y_train": np.random.default_rng(0).permutation(digits["y_train"])})
    summed = _playbook(digits, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum"))
    adamw = _playbook(digits, optimizer=keras.optimizers.AdamW(3e-3))
    for other, match in [
        (smaller, r"model: architecture '\w+' -> '\w+', config '\w+' -> '\w+', parameters 2410 -> 610\)"),
        (permuted, r"data: training data/y '\w+' -> '\w+'\)"),
        (summed, r"loss: config/reduction 'sum_over_batch_size' -> 'sum'\)"),
        (adamw, r"optimizer: 'Adam' -> 'AdamW'\)"),
    ]:
        with pytest.raises(ValueError, match=r"holds another search \(" + match + ".*overwrite=True"):
            other.grid_weight_decay(**grid, project_name="mine")
        assert other.journal.latest("grid_weight_decay") is None
    again = pb.grid_weight_decay(**grid, project_name="mine")
    assert again.trials == first.trials  # The same search resumes: its trials are read back.
    # Metrics the objective does not read are not part of a search on the loss: it resumes.
    counted = _playbook(digits, metrics=["accuracy", keras.metrics.SparseTopKCategoricalAccuracy(k=3)])
    assert counted.grid_weight_decay(**grid, project_name="mine").trials == first.trials
    # Without a project name, another model in the same directory gets its own project.
    assert smaller.grid_weight_decay(**grid).project_dir != first.project_dir
    # overwrite=True, as the refusal says: the project starts again with the permuted labels.
    restarted = permuted.grid_weight_decay(**grid, project_name="mine", overwrite=True)
    assert restarted.project_dir == first.project_dir and len(restarted.trials) == 2
    assert [t["history"] for t in restarted.trials] != [t["history"] for t in first.trials]
    # Now the project holds the search on the permuted labels: that one resumes, the first is refused.
    assert permuted.grid_weight_decay(**grid, project_name="mine").trials == restarted.trials
    with pytest.raises(ValueError, match=r"holds another search \(data: training data/y"):
        pb.grid_weight_decay(**grid, project_name="mine")
    # overwrite=True on a first use, under a given name and under the default one.
    fresh = pb.grid_weight_decay(**grid, project_name="fresh", overwrite=True)
    assert len(fresh.trials) == 2 and pb.grid_weight_decay(**grid, project_name="fresh").trials == fresh.trials
    assert len(pb.grid_weight_decay(**{**grid, "values": [0.0, 1e-3]}, overwrite=True).trials) == 2


def test_a_search_on_a_metric_is_defined_by_that_metric(digits, tmp_path):
    grid = dict(values=[0.0, 1e-4], epochs=1, confirm_seeds=0, directory=tmp_path, project_name="acc")
    first = _playbook(digits).grid_weight_decay(**grid, objective="val_accuracy")
    # Another metric under the same name: its scores are not this search's.
    top3 = _playbook(digits, metrics=[keras.metrics.SparseTopKCategoricalAccuracy(k=3, name="accuracy")])
    with pytest.raises(ValueError, match=r"holds another search \(metric: "):
        top3.grid_weight_decay(**grid, objective="val_accuracy")
    assert _playbook(digits).grid_weight_decay(**grid, objective="val_accuracy").trials == first.trials
