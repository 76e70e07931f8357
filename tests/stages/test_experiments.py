"""compare_seeds and run_round: seed-to-seed significance and rounds of experiments."""

import os

import keras
import pytest
from matplotlib.figure import Figure

from keras_playbook import Playbook, Result, RoundResult, SeedComparisonResult
from tests import helpers
from tests.tuning.test_hypermodel import build_with_dropout


def _playbook(digits, model=None, strategy=None, optimizer=None):
    return Playbook(
        model if model is not None else helpers.mlp(),
        (digits["x_train"], digits["y_train"]),
        validation_data=(digits["x_val"], digits["y_val"]),
        loss=helpers.LOGITS_LOSS,
        optimizer=optimizer or keras.optimizers.SGD(0.05, momentum=0.9),
        metrics=["accuracy"],
        batch_size=64,
        strategy=strategy,
        verbose=0,
    )


@pytest.mark.slow
def test_a_large_difference_is_significant(digits, strategy, tmp_path):
    pb = _playbook(digits, strategy=strategy)
    result = pb.compare_seeds(
        {"lr=0.05": {"learning_rate": 0.05}, "lr=1e-5": {"learning_rate": 1e-5}},
        seeds=3,
        epochs=4,
        directory=tmp_path,
    )
    assert isinstance(result, SeedComparisonResult)
    assert result.best_config == "lr=0.05"
    assert [len(scores) for scores in result.scores.values()] == [3, 3]
    # Seeds change the runs: initialization and data order.
    assert len(set(result.scores["lr=0.05"])) > 1
    [test] = result.tests
    assert test["significant"] and test["p_value"] < 0.01 and test["difference"] < -0.4  # val_loss
    assert result.ok and "larger than seed-to-seed variation" in result.message
    assert {t["values"]["seed"] for t in result.trials} == {0, 1, 2}
    assert isinstance(result.plot(), Figure)
    assert Result.from_dict(result.to_dict()) == result
    assert pb.journal.source("learning_rate").kind == "setup"


def test_a_null_difference_is_not_significant(digits, tmp_path):
    pb = _playbook(digits)
    result = pb.compare_seeds(
        {"none": {"weight_decay": 0}, "tiny": {"weight_decay": 1e-9}},
        seeds=4,
        epochs=2,
        directory=tmp_path,
    )
    [test] = result.tests
    assert not test["significant"] and test["p_value"] > 0.5
    assert not result.ok and "within seed-to-seed variation" in result.message
    assert result.stds["none"] > 0


def test_overwrite_starts_a_comparison_again(digits, tmp_path):
    pb = _playbook(digits)
    configs = {"a": {"weight_decay": 0.0}, "b": {"weight_decay": 1e-3}}
    first = pb.compare_seeds(configs, seeds=2, epochs=1, directory=tmp_path, overwrite=True)  # A first use.
    definition = os.path.join(first.project_dir, "playbook_search.json")
    assert len(first.trials) == 4 and os.path.exists(definition)
    resumed = pb.compare_seeds(configs, seeds=2, epochs=1, directory=tmp_path)
    assert resumed.trials == first.trials and resumed.project_dir == first.project_dir
    open(os.path.join(first.project_dir, "left_behind"), "w").close()
    again = pb.compare_seeds(configs, seeds=2, epochs=1, directory=tmp_path, overwrite=True)
    assert again.project_dir == first.project_dir and len(again.trials) == 4
    assert sorted(name for name in os.listdir(again.project_dir) if not name.startswith("trial_")) == [
        "oracle.json",
        "playbook_search.json",
        "tuner0.json",
    ]


@pytest.mark.parametrize(
    "configs, seeds, match",
    [
        ({"a": {"weight_decay": 0}, "b": {"weight_decay": 1e-4}}, 1, "at least 2 seeds"),
        ({"a": {"weight_decay": 0}, "b": {"weight_decay": 1e-4}}, [3, 3], "2 distinct"),
        ({"a": {"weight_decay": 0}}, 3, "at least 2 named configurations"),
        ({"a": {"dropout": 0.1}, "b": {}}, 3, "unknown hyperparameter 'dropout'"),
        ({"a": {"weight_decay": -1.0}, "b": {}}, 3, "weight_decay"),
        ({"a": {"epochs": 5}, "b": {}}, 3, "not a hyperparameter to tune"),
    ],
)
def test_bad_comparisons_are_refused_before_any_run(digits, tmp_path, configs, seeds, match):
    pb = _playbook(digits)
    with pytest.raises(ValueError, match=match):
        pb.compare_seeds(configs, seeds=seeds, directory=tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_round_tunes_nuisance_per_scientific_value(digits, strategy, tmp_path):
    pb = _playbook(digits, model=build_with_dropout, strategy=strategy)
    result = pb.run_round(
        goal="Does dropout help?",
        scientific={"dropout": [0.0, 0.5]},
        nuisance={"learning_rate": ("log", 1e-3, 1e-1)},
        fixed={"batch_size": 32},
        max_trials=4,
        epochs=2,
        directory=tmp_path,
    )
    assert isinstance(result, RoundResult)
    assert [cell["values"] for cell in result.cells] == [{"dropout": 0.0}, {"dropout": 0.5}]
    for cell in result.cells:
        assert len(cell["trials"]) == 2
        assert all(
            t["values"]["batch_size"] == 32 and t["values"]["dropout"] == cell["values"]["dropout"]
            for t in cell["trials"]
        )
        assert cell["best_score"] == min(t["score"] for t in cell["trials"])
        assert set(cell["best_values"]) == {"learning_rate"}
    # The same nuisance samples for every scientific value: a fair comparison.
    first, second = ([t["values"]["learning_rate"] for t in cell["trials"]] for cell in result.cells)
    assert first == second
    assert result.best_label in ("dropout=0", "dropout=0.5")
    assert "seeds=5" in result.message and not result.ok
    assert result.epochs_spent == 8
    assert "Does dropout help?" in result.table()
    assert isinstance(result.plot(), Figure)
    assert Result.from_dict(result.to_dict()) == result


def test_round_with_seeds_compares_the_best_of_each_value(digits, tmp_path):
    pb = _playbook(digits, model=build_with_dropout)
    result = pb.run_round(
        goal="Wider or narrower?",
        scientific={"units": [16, 32]},
        nuisance={"weight_decay": [0.0, 1e-4]},
        max_trials=2,
        epochs=1,
        seeds=2,
        directory=tmp_path,
        overwrite=True,
    )
    comparison = result.comparison
    assert comparison is not None and set(comparison["scores"]) == {"units=16", "units=32"}
    assert all(len(scores) == 2 for scores in comparison["scores"].values())
    assert "Over seeds" in result.message
    assert result.epochs_spent == 2 + 4
    # overwrite=True on a first use: every project of the round (one per value, the seeds') records its definition.
    projects = sorted(os.listdir(result.project_dir))
    assert projects == ["seeds", "units=16", "units=32"]
    for project in projects:
        assert os.path.exists(os.path.join(result.project_dir, project, "playbook_search.json"))


@pytest.mark.parametrize(
    "arguments, match",
    [
        ({"scientific": {"dropuot": [0.0, 0.5]}}, "unknown hyperparameter 'dropuot'"),
        ({"scientific": {}}, "`scientific` is empty"),
        ({"scientific": {"dropout": []}}, "non-empty list"),
        ({"scientific": {"dropout": [0.1]}}, "at least two"),
        ({"nuisance": {"dropout": [0.1, 0.2]}}, r"\['dropout'\] appear in both `scientific` and `nuisance`"),
        ({"fixed": {"dropout": 0.1}}, "both `scientific` and `fixed`"),
        ({"nuisance": {"learning_rate": ("log", 0.0, 1.0)}}, "0 < low < high"),
        ({"nuisance": {"learning_rate": []}}, "empty list"),
        ({"nuisance": {"weight_decay": [0.0, -1e-3]}}, "weight_decay"),
        ({"nuisance": {"epochs": [1, 2]}}, "not a hyperparameter to tune"),
        ({"fixed": {"optimizer": "sgd"}}, "unknown hyperparameter 'optimizer'"),
        ({"seeds": 1}, "at least 2 seeds"),
        ({"max_trials": 1}, "fewer than the 2 scientific values"),
        ({"oracle": "grid"}, "`oracle` must be one of"),
        ({"goal": ""}, "needs a `goal`"),
    ],
)
def test_bad_rounds_are_refused_before_any_trial(digits, tmp_path, arguments, match):
    pb = _playbook(digits, model=build_with_dropout)
    options = {
        "goal": "g",
        "scientific": {"dropout": [0.0, 0.5]},
        "max_trials": 4,
        "directory": tmp_path / "never",
        **arguments,
    }
    with pytest.raises(ValueError, match=match):
        pb.run_round(**options)
    assert not (tmp_path / "never").exists()
