"""The procedure as one resumable whole: `Playbook.run`, the stage runner, resume after a kill."""

import _thread
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import keras
import numpy as np
import pytest

from keras_playbook import Playbook
from keras_playbook._records import FitRecord, RunResult
from tests import helpers

# A tiny plan: every stage of the default one, at budgets that take seconds.
TINY_PLAN = [
    "check_initial_loss",
    ("overfit_small_sample", {"max_steps": 100}),
    (
        "find_batch_size",
        {"initial_batch_size": 16, "max_batch_size": 32, "criterion": "largest", "min_steps_per_epoch": 10},
    ),
    ("find_lr", {"repeats": 1}),
    ("probe_lrs", {"num_steps": 20}),
    ("sweep_momentum", {"num_steps": 20, "values": [0.95, 0.9]}),
    ("grid_weight_decay", {"values": [1e-3, 0.0], "epochs": 2, "confirm_seeds": 0}),
    ("fit", {"epochs": 2, "schedule": "step_down", "restore_best": True, "verbose": 0}),
]


def _playbook(digits, strategy=None, directory=None, optimizer=None, **kwargs):
    model = helpers.mlp(hidden=16)
    return Playbook(
        model,
        (digits["x_train"], digits["y_train"]),
        validation_data=(digits["x_val"], digits["y_val"]),
        loss=helpers.LOGITS_LOSS,
        metrics=["accuracy"],
        batch_size=32,
        strategy=strategy,
        directory=directory,
        optimizer=optimizer or keras.optimizers.SGD(0.01, momentum=0.9),
        verbose=0,
        **kwargs,
    )


@pytest.mark.slow
def test_run_chains_the_stages_and_fit_trains_at_what_the_journal_settled(strategy, digits, tmp_path):
    pb = _playbook(digits, strategy, directory=tmp_path)
    result = pb.run(epochs=2, plan=TINY_PLAN)
    assert isinstance(result, RunResult) and pb.journal[-1] is result
    assert [step["stage"] for step in result.steps] == [
        step if isinstance(step, str) else step[0] for step in TINY_PLAN
    ]
    assert not any(step["skipped"] for step in result.steps)
    record = pb.journal.latest("fit")
    settled = {name: entry["value"] for name, entry in result.settled.items()}
    # The final fit trained at exactly the values the journal settled, each from the stage that settled it.
    assert record.hyperparameters == settled
    assert result.settled["learning_rate"]["stage"] == "find_lr"
    assert result.settled["momentum"]["stage"] == "sweep_momentum"
    assert result.settled["weight_decay"]["stage"] == "grid_weight_decay"
    assert record.hyperparameters["batch_size"] == pb.journal.latest("find_batch_size").batch_size
    assert result.best_epoch == record.best_epoch and "val_loss" in result.final
    assert result.steps[-1]["steps"] > 0 and result.steps[0]["steps"] == 0  # Training steps: fit, not the check.
    assert "Decisions:" in result.message and "(find_lr)" in result.message
    # Every stage's record carries its call: arguments, the values it read, time and steps.
    find_lr = pb.journal.latest("find_lr")
    assert find_lr.call["arguments"]["num_steps"] == 100 and find_lr.call["depends_on"] == {
        "batch_size": pb.journal.latest("find_batch_size").batch_size
    }
    assert os.path.exists(tmp_path / record.weights)


def test_running_again_reads_every_finished_stage_back(digits, tmp_path):
    _playbook(digits, directory=tmp_path).run(epochs=2, plan=TINY_PLAN)
    before = json.loads((tmp_path / "journal.json").read_text())["results"]
    pb = _playbook(digits, directory=tmp_path)  # A new process would build the same; the journal is carried on.
    trained = pb.model.get_weights()
    result = pb.run(epochs=2, plan=TINY_PLAN)
    assert all(step["skipped"] for step in result.steps)
    after = json.loads((tmp_path / "journal.json").read_text())["results"]
    assert after[: len(before)] == before and len(after) == len(before) + 1  # Only the new RunResult.
    # The model holds the final fit's weights, read back from beside the journal.
    saved = keras.models.clone_model(pb.model)
    saved.load_weights(tmp_path / pb.journal.latest("fit").weights)
    helpers.assert_same_values(saved.get_weights(), pb.model.get_weights())
    assert any(not np.array_equal(a, b) for a, b in zip(trained, pb.model.get_weights()))

    changed = TINY_PLAN[:-1] + [("fit", {"epochs": 3, "schedule": "step_down", "restore_best": True, "verbose": 0})]
    result = pb.run(epochs=3, plan=changed)
    assert [step["skipped"] for step in result.steps] == [True] * 7 + [False]  # Rerun from the first change.
    assert pb.journal.latest("fit").epochs == 3


def test_a_bad_plan_is_refused_before_any_compute(digits, tmp_path):
    pb = _playbook(digits, directory=tmp_path)
    on_disk = (tmp_path / "journal.json").read_text()
    with pytest.raises(ValueError, match=r"unknown stage 'find_learning_rate'.*'find_lr'"):
        pb.run(epochs=2, plan=["check_initial_loss", "find_learning_rate"])
    with pytest.raises(ValueError, match=r"find_lr: .*'num_step'.*num_steps"):
        pb.run(epochs=2, plan=[("find_lr", {"num_step": 10})])
    with pytest.raises(ValueError, match=r"fit does not take \['dropout'\]"):
        pb.run(epochs=2, plan=[("fit", {"epochs": 1, "dropout": 0.5})])
    with pytest.raises(ValueError, match="epochs=0"):
        pb.run(epochs=0)
    with pytest.raises(ValueError, match="search"):
        pb.run(epochs=1, search="random")
    with pytest.raises(ValueError, match=r"one_cycle.*Put find_lr before fit"):
        pb.run(epochs=1, plan=[("fit", {"epochs": 1, "schedule": "one_cycle"})])
    assert (tmp_path / "journal.json").read_text() == on_disk and len(pb.journal) == 1

    no_validation = Playbook(helpers.mlp(hidden=16), (digits["x_train"], digits["y_train"]), loss=helpers.LOGITS_LOSS)
    with pytest.raises(ValueError, match="sweep_momentum judges on validation data"):
        no_validation.run(epochs=1, plan=["find_lr", "sweep_momentum", ("fit", {"epochs": 1})])
    assert "sweep_momentum" not in [s if isinstance(s, str) else s[0] for s in _default(no_validation)]

    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 100, 0.5)
    scheduled = _playbook(digits, optimizer=keras.optimizers.SGD(schedule))
    with pytest.raises(ValueError, match=r"fit needs a learning rate.*Put find_lr before fit"):
        scheduled.run(epochs=1, plan=["check_initial_loss", ("fit", {"epochs": 1})])


def _default(pb):
    from keras_playbook._procedure import default_plan

    return default_plan(pb, 1)


def test_a_failed_sanity_verdict_stops_the_run(digits):
    # Inputs far from normalized: the untrained model is confidently wrong (initial loss >> ln 10).
    wild = {**digits, "x_train": digits["x_train"] * 300, "x_val": digits["x_val"] * 300}
    pb = _playbook(wild)
    result = pb.run(epochs=1, plan=["check_initial_loss", ("find_lr", {"repeats": 1, "num_steps": 20})])
    assert result.stopped == "check_initial_loss" and not result.ok
    assert [step["stage"] for step in result.steps] == ["check_initial_loss"]
    assert "stop_on_failure=False" in result.message
    result = pb.run(
        epochs=1, plan=["check_initial_loss", ("find_lr", {"repeats": 1, "num_steps": 20})], stop_on_failure=False
    )
    assert [step["stage"] for step in result.steps] == ["check_initial_loss", "find_lr"]


def test_staleness_is_the_same_for_every_stage(strategy, digits):
    pb = _playbook(digits, strategy)
    swept = pb.sweep_momentum(num_steps=5, values=[0.5, 0.6])  # At the compiled rate, batch size 32.
    assert pb.find_lr(repeats=1).ok
    found = pb.find_batch_size(initial_batch_size=8, max_trials=1, min_steps_per_epoch=1)
    assert found.batch_size == 8  # Measured at 32, the learning rate and momentum no longer hold.
    rate = f"learning_rate={pb.journal.settled()['learning_rate']:.3g} from find_lr was measured at batch_size=32"
    momentum = f"momentum={swept.best_value} from sweep_momentum was measured at batch_size=32"
    both = f"{rate}, but batch_size is now 8; {momentum}, but batch_size is now 8"
    why = "Hyperparameters tuned at one batch size do not carry over to another (Tuning Playbook)."
    # The whole advice: the stages to run again in the procedure's order, and only arguments the stage takes.
    for stage, message in (
        (
            lambda: pb.sweep_momentum(num_steps=5),
            f"sweep_momentum: {rate}, but batch_size is now 8. {why} Run pb.find_lr() again, or pass "
            "learning_rate=... to sweep_momentum.",
        ),
        (
            lambda: pb.grid_weight_decay(values=[0.0, 1e-4], epochs=1, confirm_seeds=0),
            f"grid_weight_decay: {both}. {why} Run pb.find_lr(), then pb.sweep_momentum() again.",
        ),
        (
            lambda: pb.tune_lr_wd(coarse_epochs=1, fine_epochs=1, confirm_seeds=0),
            f"tune_lr_wd: {both}. {why} Run pb.find_lr(), then pb.sweep_momentum() again (tune_lr_wd also "
            "takes learning_rate=...).",
        ),
        (
            lambda: pb.fit(epochs=1, verbose=0),
            f"fit: {both}. {why} Run pb.find_lr(), then pb.sweep_momentum() again, or pass learning_rate=..., "
            "momentum=... to fit.",
        ),
    ):
        with pytest.raises(ValueError) as raised:
            stage()
        assert str(raised.value) == message
    # A measuring stage does not apply a stale value: it uses the one that still holds (the compiled momentum).
    probe = pb.probe_lrs(learning_rates=[0.01], num_steps=5)
    assert swept.best_value in (0.5, 0.6) and probe.call["read"]["momentum"] == 0.9
    assert pb.sweep_momentum(num_steps=5, learning_rate=0.01).ok  # A rate given is not stale.


def test_ctrl_c_inside_a_stage_leaves_the_model_and_the_journal(digits):
    pb = _playbook(digits)
    pb.check_initial_loss()
    pb.fit(epochs=1, verbose=0)  # The optimizer has state: it must come back element for element.
    before, length = helpers.variables_of(pb.model), len(pb.journal)
    timer = threading.Timer(2.0, _thread.interrupt_main)
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        pb.find_lr(repeats=1, num_steps=20000, max_lr=1e-3)
    timer.cancel()
    helpers.assert_same_values(before, helpers.variables_of(pb.model))
    assert len(pb.journal) == length and pb.journal[-1].kind == "fit"


_SCRIPT = """
import sys, time
import keras
sys.path.insert(0, {root!r})
from tests import helpers
from tests.test_procedure import TINY_PLAN, _playbook

keras.utils.set_random_seed(0)
slow = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: time.sleep({pause}))
plan = TINY_PLAN[:-1] + [("fit", {{"epochs": 6, "schedule": "step_down", "verbose": 0, "callbacks": [slow]}})]
result = _playbook(helpers.digits_data(), directory=sys.argv[1]).run(epochs=6, plan=plan)
print("SKIPPED", [step["skipped"] for step in result.steps])
"""


def _start(script, directory):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen(
        [sys.executable, "-c", script, str(directory)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill_when(process, ready, timeout=300):
    deadline = time.time() + timeout
    while not ready():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.time() < deadline, "the run never reached the point to kill it at"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()


def _journal(directory):
    try:
        return json.loads((directory / "journal.json").read_text())["results"]
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def _finished_epochs(directory):
    backup = directory / "backup"
    for metadata in backup.glob("*/training_metadata.json") if backup.exists() else []:
        try:
            return json.loads(metadata.read_text())["epoch"]
        except (json.JSONDecodeError, KeyError):
            return 0
    return 0


@pytest.mark.slow
def test_a_killed_run_resumes_where_it_stopped(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = _SCRIPT.format(root=root, pause=0.4)
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    # Killed during a later stage (the momentum sweep, once the probes are in the journal).
    _kill_when(_start(script, killed), lambda: any(entry["kind"] == "probe_lrs" for entry in _journal(killed)))
    earlier = _journal(killed)
    assert [entry["kind"] for entry in earlier][-1] == "probe_lrs"
    # Killed again during the final fit, after two finished epochs.
    _kill_when(_start(script, killed), lambda: _finished_epochs(killed) >= 2)
    resumed = _journal(killed)
    assert resumed[: len(earlier)] == earlier  # Nothing finished was run again or rewritten.
    assert [entry["kind"] for entry in resumed[len(earlier) :]] == ["sweep_momentum", "grid_weight_decay"]
    finishing = _start(script, killed)
    output, errors = finishing.communicate(timeout=300)
    assert finishing.returncode == 0, errors[-3000:]
    assert "SKIPPED [True, True, True, True, True, True, True, False]" in output
    final = _journal(killed)
    assert final[: len(resumed)] == resumed
    fit = FitRecord.from_dict(final[-2])
    assert fit.epochs == 6 and len(fit.history["loss"]) == 6  # The curves of every epoch, also those before the kill.
    steps_per_epoch = -(-len(helpers.digits_data()["x_train"]) // fit.hyperparameters["batch_size"])
    assert fit.call["steps"] <= 4 * steps_per_epoch  # It continued from its last finished epoch.

    uninterrupted = _start(script, whole)
    assert uninterrupted.communicate(timeout=300)[0].count("False") == 8
    decisions = {entry["kind"]: entry["settled"] for entry in _journal(whole) if entry["kind"] == "run"}
    assert {entry["kind"]: entry["settled"] for entry in final if entry["kind"] == "run"} == decisions


def test_every_call_of_a_plan_is_checked_before_the_first_stage_runs(digits, tmp_path):
    from keras_playbook.callbacks import OneCycle

    pb = _playbook(digits, directory=tmp_path)
    on_disk = (tmp_path / "journal.json").read_text()
    before = helpers.variables_of(pb.model)
    refused = [
        (["check_initial_loss", ("grid_weight_decay", {"values": [-1]})], r"grid_weight_decay: .*values\[0\].*-1"),
        (
            [("find_lr", {"repeats": 1}), ("fit", {"epochs": 1, "schedule": "one_cycle", "learning_rate": 0.01})],
            r"schedule='one_cycle' sets every step's rate.*learning_rate=0.01 would not be trained at",
        ),
        (
            ["check_initial_loss", ("fit", {"epochs": 1, "schedule": OneCycle((1e-3, 1e-2)), "learning_rate": 0.01})],
            r"OneCycle\(\.\.\.\) sets every step's rate from its own lr_bounds",
        ),
        (["check_initial_loss", ("fit", {"epochs": 1, "beta_1": 0.9})], r"SGD has no `beta_1`"),
        (["check_initial_loss", ("find_lr", {"min_lr": 1.0, "max_lr": 0.1})], r"min_lr must be below max_lr"),
        (["check_initial_loss", ("sweep_momentum", {"values": [1.5]})], r"sweep_momentum: .*values\[0\]"),
        (["check_initial_loss", ("compare_seeds", {"configs": {"a": {}}})], r"compare_seeds: `configs` must be"),
        (["check_initial_loss", ("fine_tune", {"groups": 2, "multipliers": [1.0]})], r"2 groups, 1 multipliers"),
    ]
    for plan, message in refused:
        with pytest.raises((ValueError, TypeError), match=message):
            pb.run(epochs=1, plan=plan)
    assert (tmp_path / "journal.json").read_text() == on_disk and len(pb.journal) == 1
    helpers.assert_same_values(before, helpers.variables_of(pb.model))


def test_a_journal_whose_saved_weights_are_missing_is_refused_before_any_compute(digits, tmp_path):
    plan = ["check_initial_loss", ("fit", {"epochs": 1, "verbose": 0})]
    _playbook(digits, directory=tmp_path).run(epochs=1, plan=plan)
    pb = _playbook(digits, directory=tmp_path)
    weights = tmp_path / pb.journal.latest("fit").weights
    os.remove(weights)
    on_disk, before = (tmp_path / "journal.json").read_text(), helpers.variables_of(pb.model)
    with pytest.raises(ValueError, match=rf"fit \(result \d+ of the journal\).*missing: {re.escape(str(weights))}"):
        pb.run(epochs=1, plan=plan)
    assert (tmp_path / "journal.json").read_text() == on_disk
    helpers.assert_same_values(before, helpers.variables_of(pb.model))
    # Running it again (the weights are then saved anew) is the way on.
    result = pb.run(epochs=1, plan=plan, rerun_from="fit")
    assert [step["skipped"] for step in result.steps] == [True, False]
    assert (tmp_path / pb.journal.latest("fit").weights).exists()


# What trained, and training by hand -------------------------------------------------------------

SWEEP_AND_FIT = [
    ("find_lr", {"repeats": 1, "num_steps": 40}),
    ("sweep_momentum", {"num_steps": 10, "values": [0.95, 0.9]}),
    ("fit", {"epochs": 1, "verbose": 0}),
]


def test_run_reports_the_values_its_final_fit_trained_at(digits, tmp_path):
    pb = _playbook(digits, directory=tmp_path, optimizer=keras.optimizers.Adam(1e-3))
    first = pb.run(epochs=1, plan=SWEEP_AND_FIT)
    trained_at = pb.journal.latest("fit").hyperparameters["beta_1"]
    assert first.settled["beta_1"] == {"value": trained_at, "stage": "sweep_momentum"}
    by_hand = pb.sweep_momentum(num_steps=10, values=[0.7, 0.6])  # Settles another beta_1 in the journal.
    assert pb.journal.settled()["beta_1"] == by_hand.best_value != trained_at

    # Read back: the fit trained at the first sweep's value, and the result says so (not the journal's latest).
    again = pb.run(epochs=1, plan=SWEEP_AND_FIT)
    assert all(step["skipped"] for step in again.steps)
    assert again.settled["beta_1"] == {"value": trained_at, "stage": "sweep_momentum"}
    assert f"beta_1 {trained_at:.3g} (sweep_momentum)" in again.message
    assert again.settled["learning_rate"]["stage"] == "find_lr"

    # Run again: the fit now trains at the value swept by hand, and the optimizer held it during training.
    seen = []
    plan = SWEEP_AND_FIT[:-1] + [("fit", {"epochs": 1, "verbose": 0})]
    watch = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(pb.model.optimizer.beta_1))
    plan[-1][1]["callbacks"] = [watch]
    rerun = pb.run(epochs=1, plan=plan, rerun_from="fit")
    record = pb.journal.latest("fit")
    assert record.hyperparameters["beta_1"] == by_hand.best_value == pytest.approx(seen[0])
    assert rerun.settled["beta_1"] == {"value": by_hand.best_value, "stage": "sweep_momentum"}
    # An override given to fit is named as such.
    given = pb.run(epochs=1, plan=SWEEP_AND_FIT[:-1] + [("fit", {"epochs": 1, "verbose": 0, "beta_1": 0.8})])
    assert given.settled["beta_1"] == {"value": 0.8, "stage": "fit"}


def test_run_refuses_to_overwrite_a_model_trained_by_hand(digits, tmp_path):
    plan = ["check_initial_loss", ("fit", {"epochs": 1, "verbose": 0})]
    pb = _playbook(digits, directory=tmp_path)
    pb.run(epochs=1, plan=plan)
    pb.model.fit(digits["x_train"][:64], digits["y_train"][:64], epochs=1, verbose=0)  # Not through the journal.
    hand_trained, on_disk = pb.model.get_weights(), (tmp_path / "journal.json").read_text()
    for rerun_from in (None, "fit", "check_initial_loss"):  # Read back (loads the fit's weights), or restarts.
        with pytest.raises(ValueError, match=r"changed outside the journal.*pb\.fit.*save_weights.*overwrite=True"):
            pb.run(epochs=1, plan=plan, rerun_from=rerun_from)
        helpers.assert_same_values(hand_trained, pb.model.get_weights())
        assert (tmp_path / "journal.json").read_text() == on_disk

    # The same without a directory: nothing saved, what the Playbook last left is the reference.
    memory = _playbook(digits)
    memory.run(epochs=1, plan=plan)
    memory.run(epochs=1, plan=plan)  # What the library left: not refused.
    memory.model.fit(digits["x_train"][:64], digits["y_train"][:64], epochs=1, verbose=0)
    with pytest.raises(ValueError, match="changed outside the journal"):
        memory.run(epochs=1, plan=plan)

    # A new Playbook on the folder (a new process) starts from the initial weights: never refused.
    fresh = _playbook(digits, directory=tmp_path)
    assert all(step["skipped"] for step in fresh.run(epochs=1, plan=plan).steps)


def test_run_after_an_interrupted_fit_is_not_refused(digits, tmp_path):
    def interrupt(epoch, logs):
        if epoch == 1:
            raise KeyboardInterrupt

    plan = ["check_initial_loss", ("fit", {"epochs": 3, "verbose": 0})]
    pb = _playbook(digits, directory=tmp_path)
    pb.run(epochs=3, plan=plan)
    with pytest.raises(KeyboardInterrupt):
        pb.fit(epochs=3, verbose=0, callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=interrupt)])
    result = pb.run(epochs=3, plan=plan)  # The library left the model so: not the user's training.
    assert [step["skipped"] for step in result.steps] == [True, True]
    saved = keras.models.clone_model(pb.model)
    saved.load_weights(tmp_path / pb.journal.latest("fit").weights)
    helpers.assert_same_values(saved.get_weights(), pb.model.get_weights())
    # Interrupted with nothing on record yet: the rerun starts from the initial weights, not refused either.
    memory = _playbook(digits)
    with pytest.raises(KeyboardInterrupt):
        memory.fit(epochs=3, verbose=0, callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=interrupt)])
    assert memory.run(epochs=1, plan=["check_initial_loss", ("fit", {"epochs": 1, "verbose": 0})]).ok
