"""Best-epoch and border advice (Tuning Playbook), on constructed trial records."""

from keras_playbook.tuning.analysis import best_record, border_advice, epoch_advice


def _record(best_epoch, epochs=10, score=1.0, **values):
    return {"best_epoch": best_epoch, "epochs": epochs, "score": score, "values": values}


def test_best_epoch_always_early_says_fewer_epochs():
    advice = epoch_advice([_record(1), _record(2), _record(2)])
    assert len(advice) == 1 and "fewer epochs" in advice[0] and "Tuning Playbook" in advice[0]


def test_best_epoch_usually_late_says_train_longer():
    advice = epoch_advice([_record(10), _record(9), _record(5)])
    assert len(advice) == 1 and "train longer" in advice[0] and "2 of 3" in advice[0]


def test_best_epoch_in_the_middle_or_runs_too_short_say_nothing():
    assert epoch_advice([_record(5), _record(6), _record(10)]) == []
    assert epoch_advice([_record(2, epochs=2)]) == []  # Too short to tell.
    assert epoch_advice([_record(1, score=None)]) == []


def test_only_the_longest_runs_count():
    # Coarse 3-epoch trials ending at their last epoch do not make 15-epoch runs "late".
    records = [_record(3, epochs=3) for _ in range(5)] + [_record(7, epochs=15)]
    assert epoch_advice(records) == []


def test_grid_border():
    grid = {"weight_decay": [0.0, 1e-5, 1e-4, 1e-3]}
    assert "widen the range upwards" in border_advice(grid, {"weight_decay": 1e-3})[0]
    assert border_advice(grid, {"weight_decay": 1e-4}) == []
    assert border_advice(grid, {"weight_decay": 0.0}) == []  # Nothing below zero to try.
    low = border_advice({"learning_rate": [1e-3, 1e-2, 1e-1]}, {"learning_rate": 1e-3}, "coarse grid")
    assert "smallest value tried of the coarse grid" in low[0] and "downwards" in low[0]


def test_range_border():
    space = {"learning_rate": ("log", 1e-4, 1e-1)}
    assert "near the top" in border_advice(space, {"learning_rate": 0.09})[0]
    assert "near the bottom" in border_advice(space, {"learning_rate": 1.1e-4})[0]
    assert border_advice(space, {"learning_rate": 3e-3}) == []
    assert "near the top" in border_advice({"units": ("int", 8, 128)}, {"units": 125})[0]


def test_best_record_follows_the_direction():
    records = [_record(1, score=0.5), _record(1, score=0.9), _record(1, score=None)]
    assert best_record(records, "max")["score"] == 0.9
    assert best_record(records, "min")["score"] == 0.5
    assert best_record([_record(1, score=None)], "min") is None
