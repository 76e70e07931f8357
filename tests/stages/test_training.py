"""Playbook.fit with a schedule by name and the watchers, on real training runs."""

import keras
import numpy as np
import pytest

from keras_playbook import FitRecord, Journal, Playbook
from keras_playbook.callbacks import CosineRestarts
from tests import helpers


def _playbook(strategy, digits, model=None, directory=None, **kwargs):
    return Playbook(
        model or helpers.mlp,
        (digits["x_train"], digits["y_train"]),
        validation_data=(digits["x_val"], digits["y_val"]),
        loss=helpers.LOGITS_LOSS,
        batch_size=32,
        strategy=strategy,
        directory=directory,
        verbose=0,
        **kwargs,
    )


def test_one_cycle_takes_its_bounds_from_find_lr(strategy, digits, tmp_path):
    pb = _playbook(strategy, digits, directory=tmp_path)
    found = pb.find_lr(num_steps=40)
    assert found.ok
    history = pb.fit(epochs=3, schedule="one_cycle", verbose=0)
    record = pb.journal.latest("fit")
    assert record.schedule["name"] == "OneCycle"
    assert record.schedule["config"]["lr_bounds"] == pytest.approx(found.one_cycle_lr_bounds)
    low, high = found.one_cycle_lr_bounds
    rates = history.history["learning_rate"]
    assert max(rates) <= high * (1 + 1e-6) and rates[-1] < low  # Up to the max bound, then below the min.
    assert "beta_1" in history.history  # Adam: beta_1 cycles with the rate.
    # The journal on disk keeps the schedule and the findings.
    again = Journal.load(tmp_path / "journal.json").latest("fit")
    assert again.schedule == record.schedule and again.findings == record.findings
    # The record states what trained: the schedule's rates, not a settled one it never used.
    assert "learning_rate" not in record.hyperparameters


def test_one_cycle_refuses_what_it_cannot_honour_before_training(digits):
    pb = _playbook(None, digits)
    pb.find_lr(num_steps=40)
    before = helpers.variables_of(pb.model)
    with pytest.raises(
        ValueError, match=r"learning_rate=0.01 would not be trained at.*OneCycle\(lr_bounds=\(0.001, 0.01\)\)"
    ):
        pb.fit(epochs=1, schedule="one_cycle", learning_rate=0.01)
    with pytest.raises(ValueError, match="range test run at batch size 32.*trains at 64"):
        pb.fit(epochs=1, schedule="one_cycle", batch_size=64)
    helpers.assert_same_values(before, helpers.variables_of(pb.model))
    assert pb.journal.latest("fit") is None


def test_named_schedules_start_from_the_settled_rate(digits):
    pb = _playbook(None, digits, optimizer=keras.optimizers.SGD(0.05))
    history = pb.fit(epochs=4, schedule="two_stage", verbose=0)
    assert history.history["learning_rate"] == pytest.approx([0.05, 0.05, 0.005, 0.005])
    history = pb.fit(epochs=2, schedule="step_down", learning_rate=0.02, verbose=0)
    assert history.history["learning_rate"] == pytest.approx([0.02, 0.02])  # Still learning: kept.
    history = pb.fit(epochs=2, schedule=CosineRestarts(cycle_epochs=1), learning_rate=0.02, verbose=0)
    assert history.history["learning_rate"][0] < 0.02 * 0.01  # The end of a cosine cycle.
    assert pb.journal.latest("fit").schedule == {
        "name": "CosineRestarts",
        "config": CosineRestarts(cycle_epochs=1).get_config(),
    }


def test_watchers_record_what_they_see(strategy, digits):
    pb = _playbook(strategy, digits, model=lambda: helpers.mlp(l2=1.0), optimizer=keras.optimizers.SGD(0.05))
    pb.fit(epochs=2, verbose=0)
    record = pb.journal.latest("fit")
    kinds = [finding["kind"] for finding in record.findings]
    assert "weight_decay_dominating" in kinds and "weight_decay_dominating" in record.message
    assert "weight_decay_ratio" in record.history and "update_ratio" in record.history
    (finding,) = [f for f in record.findings if f["kind"] == "weight_decay_dominating"]
    assert finding["evidence"]["pull"] > finding["evidence"]["push"] and "Loshchilov & Hutter 2019" in finding["advice"]
    pb = _playbook(strategy, digits, optimizer=keras.optimizers.SGD(0.05))
    pb.fit(epochs=3, verbose=0)  # A healthy short run: the finished curves, not epoch 3's view, are recorded.
    assert "not_decreasing" not in [f["kind"] for f in pb.journal.latest("fit").findings]
    history = pb.fit(epochs=2, watch=False, verbose=0)
    assert pb.journal.latest("fit").findings == [] and "update_ratio" not in history.history


def test_bad_schedules_fail_before_training(digits):
    pb = _playbook(None, digits)
    before = helpers.variables_of(pb.model)
    with pytest.raises(ValueError, match="unknown schedule 'cyclic'"):
        pb.fit(epochs=1, schedule="cyclic")
    with pytest.raises(ValueError, match="Run pb.find_lr\\(\\) first"):
        pb.fit(epochs=1, schedule="one_cycle")
    helpers.assert_same_values(before, helpers.variables_of(pb.model))
    assert len(pb.journal) == 1


def test_older_fit_records_load_without_schedule_and_findings():
    record = FitRecord.from_dict(
        {
            "kind": "fit",
            "epochs": 1,
            "hyperparameters": {},
            "history": {"loss": [1.0]},
            "monitor": "loss",
            "best_epoch": 1,
            "ok": True,
            "message": "",
        }
    )
    assert record.schedule is None and record.findings == []
    assert np.isfinite(record.history["loss"][0])


def _iris():
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    x = ((x - x.mean(0)) / x.std(0)).astype("float32")
    order = np.random.default_rng(0).permutation(len(x))
    return x[order[:120]], y[order[:120]], x[order[120:]], y[order[120:]]


def test_healthy_runs_with_the_librarys_own_schedules_are_ok():
    # A small tabular problem the other tests never use: each schedule's run works and is called OK;
    # a planned anneal (one cycle) and an earned step (step-down) are not "decay too early", an early
    # convergence is not "not decreasing".
    x, y, x_val, y_val = _iris()
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)])
    pb = Playbook(
        model,
        (x, y),
        validation_data=(x_val, y_val),
        loss=helpers.LOGITS_LOSS,
        metrics=["accuracy"],
        batch_size=16,
        verbose=0,
    )
    pb.find_lr()
    for schedule in ("one_cycle", "step_down", None):
        pb.model.set_weights(pb.session.initial_weights)  # Each schedule judged on a run from scratch.
        pb.fit(20, schedule=schedule, verbose=0)
        record = pb.journal.latest("fit")
        kinds = [finding["kind"] for finding in record.findings]
        assert record.ok and record.history["val_accuracy"][-1] >= 0.9, (schedule, record.message)
        assert not {"decay_too_early", "not_decreasing", "update_too_small", "update_too_large"} & set(kinds)
        assert record.initial_loss > record.history["loss"][-1]


def test_a_destroyed_run_is_not_ok_and_is_told_the_rate_is_too_high(digits):
    from keras_playbook.callbacks import OneCycle

    pb = _playbook(None, digits, optimizer=keras.optimizers.SGD(0.1, momentum=0.9), metrics=["accuracy"])
    pb.fit(epochs=6, schedule=OneCycle((0.5, 20.0)), verbose=0)
    record = pb.journal.latest("fit")
    assert not record.ok and record.message.startswith("Training did not work")
    (finding,) = [f for f in record.findings if f["kind"] == "rate_too_high"]
    assert not finding["evidence"]["recovered"] and "too low" not in finding["advice"]
    assert "rate_too_high" in record.message


def test_a_run_at_a_far_too_low_rate_is_not_ok(digits):
    pb = _playbook(None, digits, optimizer=keras.optimizers.SGD(1e-3), metrics=["accuracy"])
    pb.fit(epochs=30, verbose=0)
    record = pb.journal.latest("fit")
    assert not record.ok and "learning_too_slowly" in [f["kind"] for f in record.findings]
    assert "find_lr" in record.message and "see `findings`" not in record.message


def test_a_refused_fit_changes_nothing_not_even_an_unbuilt_optimizers_rate(digits):
    pb = _playbook(None, digits)  # Adam(1e-3): no momentum.
    found = pb.find_lr(num_steps=40, repeats=1)
    assert found.ok and found.suggested_lr != pytest.approx(1e-3)
    assert not pb.model.optimizer.built  # Its rate is a variable already: "nothing changed" sees it.
    before, length = helpers.variables_of(pb.model), len(pb.journal)
    with pytest.raises(ValueError, match=r"Adam has no `momentum`. Received: momentum=0.9"):
        pb.fit(epochs=1, momentum=0.9)
    with pytest.raises(ValueError, match=r"Adam has no `momentum`"):
        pb.fit(epochs=1, learning_rate=0.05, momentum=0.9, verbose=0)
    helpers.assert_same_values(before, helpers.variables_of(pb.model))
    assert float(keras.ops.convert_to_numpy(pb.model.optimizer.learning_rate)) == pytest.approx(1e-3)
    assert len(pb.journal) == length


def test_a_one_cycle_callback_with_a_learning_rate_is_refused_like_the_name(digits):
    from keras_playbook.callbacks import OneCycle

    pb = _playbook(None, digits)
    before = helpers.variables_of(pb.model)
    with pytest.raises(ValueError, match=r"OneCycle\(\.\.\.\) sets every step's rate from its own lr_bounds"):
        pb.fit(epochs=1, schedule=OneCycle((1e-3, 1e-2)), learning_rate=0.05, verbose=0)
    helpers.assert_same_values(before, helpers.variables_of(pb.model))
    assert len(pb.journal) == 1
    # Without one, it trains at its own bounds, and needs no settled rate (the record says so).
    history = pb.fit(epochs=2, schedule=OneCycle((1e-3, 1e-2)), verbose=0)
    assert max(history.history["learning_rate"]) <= 1e-2 * (1 + 1e-6)
    assert "learning_rate" not in pb.journal.latest("fit").hyperparameters


def test_fit_leaves_no_setting_of_an_earlier_run_behind(digits):
    from keras_playbook._session import innermost_optimizer

    # An override is for its own run: the next fit trains at the journal's values, else the compiled ones.
    pb = _playbook(None, digits, optimizer=keras.optimizers.SGD(0.05))
    pb.fit(epochs=1, weight_decay=0.01, verbose=0)
    assert pb.model.optimizer.weight_decay == pytest.approx(0.01)
    pb.fit(epochs=1, verbose=0)
    assert pb.model.optimizer.weight_decay is None
    # SGD built without momentum gets a new optimizer for a momentum: the compiled one at the values in force,
    # not a copy of the live one (whose weight decay the run before set).
    pb.fit(epochs=1, weight_decay=0.01, verbose=0)
    old = pb.model.optimizer
    pb.fit(epochs=1, momentum=0.9, verbose=0)
    optimizer = innermost_optimizer(pb.model.optimizer)
    assert optimizer is not old and optimizer.momentum == pytest.approx(0.9) and optimizer.weight_decay is None
    assert float(keras.ops.convert_to_numpy(optimizer.learning_rate)) == pytest.approx(0.05)


def test_a_short_run_at_a_destructive_rate_is_not_ok(digits):
    # Issue 22, item 8: 2 epochs at lr 5 and 1 epoch at lr 55 end far worse than the untrained model.
    for epochs, rate in ((2, 5.0), (1, 55.0)):
        pb = _playbook(None, digits)
        pb.fit(epochs=epochs, learning_rate=rate, verbose=0)
        record = pb.journal.latest("fit")
        assert not record.ok and record.message.startswith("Training did not work"), (epochs, record.message)
        (finding,) = [f for f in record.findings if f["kind"] == "rate_too_high"]
        assert not finding["evidence"]["recovered"] and finding["evidence"]["initial_loss"] > 0
        assert finding["evidence"]["final_val_loss"] > 1.1 * finding["evidence"]["initial_loss"]
        assert f"{epochs} epoch" in record.message and "too few to judge" in record.message


def test_a_healthy_short_run_is_ok_and_says_what_it_could_not_check(digits):
    pb = _playbook(None, digits)  # Adam(1e-3).
    pb.fit(epochs=2, verbose=0)
    record = pb.journal.latest("fit")
    assert record.ok and record.message.startswith("Trained 2 epochs"), record.message
    assert not [f for f in record.findings if f["kind"] == "rate_too_high"]
    assert "2 epochs: too few to judge" in record.message and "overfitting" in record.message
    assert "did not work" not in record.message
