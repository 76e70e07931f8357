import dataclasses
import json

import pytest

from keras_playbook import InitialLossResult, Journal, OverfitResult, Result


@dataclasses.dataclass
class _SettlingResult(Result):
    kind = "test_settling"
    learning_rate: float
    ok: bool
    message: str

    def settles(self):
        return {"learning_rate": self.learning_rate}


def _initial_loss_result():
    return InitialLossResult(
        loss=2.31,
        expected=2.302585,
        tolerance=0.25,
        num_classes=10,
        loss_name="sparse_categorical_crossentropy",
        from_logits=True,
        output_kind="logits",
        output_std=0.4,
        num_examples=3,
        per_example_losses=[2.2, 2.3, 2.43],
        ok=True,
        message="fine",
    )


def _overfit_result():
    return OverfitResult(
        verdict="diverged",
        num_examples=64,
        steps=10,
        learning_rate=10.0,
        initial_loss=2.3,
        final_loss=float("nan"),
        final_accuracy=None,
        target_loss=0.023,
        losses=[2.3, float("inf")],
        accuracies=[],
        steps_per_pass=2,
        regularization_disabled=["dropout: d (rate 0.5)"],
        ok=False,
        message="exploded",
    )


def test_result_round_trips_through_json():
    for result in (_initial_loss_result(), _overfit_result()):
        data = json.loads(json.dumps(result.to_dict()))
        rebuilt = Result.from_dict(data)
        assert type(rebuilt) is type(result)
        assert rebuilt.to_dict().keys() == result.to_dict().keys()
        assert rebuilt.message == result.message
    rebuilt = Result.from_dict(json.loads(json.dumps(_initial_loss_result().to_dict())))
    assert rebuilt == _initial_loss_result()


def test_journal_is_written_after_every_append(tmp_path):
    path = tmp_path / "run" / "journal.json"
    journal = Journal(path)
    journal.append(_initial_loss_result())
    assert len(json.loads(path.read_text())["results"]) == 1
    journal.append(_overfit_result())
    loaded = Journal.load(path)
    assert [result.kind for result in loaded] == ["check_initial_loss", "overfit_small_sample"]
    assert loaded[0] == _initial_loss_result()
    assert loaded[1].verdict == "diverged"
    assert "2 results" in str(loaded)


def test_settled_hyperparameters_later_results_win():
    journal = Journal()
    journal.append(_SettlingResult(learning_rate=0.1, ok=True, message=""))
    journal.append(_initial_loss_result())
    journal.append(_SettlingResult(learning_rate=0.01, ok=True, message=""))
    assert journal.settled() == {"learning_rate": 0.01}
    assert journal.latest("test_settling").learning_rate == 0.01
    assert journal.latest("missing") is None


def test_unknown_kind_and_bad_entries_raise():
    with pytest.raises(ValueError, match="Unknown result kind 'nope'"):
        Result.from_dict({"kind": "nope"})
    with pytest.raises(TypeError, match="must be `Result` instances"):
        Journal().append({"kind": "setup"})
    with pytest.raises(ValueError, match="Cannot load a 'check_initial_loss' result as OverfitResult"):
        OverfitResult.from_dict(_initial_loss_result().to_dict())


def test_result_without_plot_says_so():
    with pytest.raises(NotImplementedError, match="nothing to plot"):
        _SettlingResult(learning_rate=0.1, ok=True, message="").plot()
