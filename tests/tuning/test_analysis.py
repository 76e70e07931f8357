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


def _curve_record(curve, **values):
    import numpy as np

    curve = list(curve)
    return {
        "history": {"val_loss": curve},
        "score": float(np.min(curve)),
        "values": values,
        "best_epoch": int(np.argmin(curve)) + 1,
        "epochs": len(curve),
    }


def test_a_difference_within_the_curves_noise_is_a_tie():
    import numpy as np

    from keras_playbook.tuning.analysis import curve_noise, search_noise, ties_with_best

    rng = np.random.default_rng(0)
    # Two regression runs at ~3441 whose curves wobble by ~1 from epoch to epoch; best 3441.00 vs 3441.25.
    runs = [3441.0 + rng.normal(0, 1.0, 12) for _ in range(2)]
    for run, best in zip(runs, (3441.00, 3441.25)):
        run += best - run.min()
    records = [_curve_record(runs[0], weight_decay=1e-3), _curve_record(runs[1], weight_decay=0.0)]
    noise = search_noise(records, "val_loss")
    assert 0.3 < noise < 3 and curve_noise(records[0], "val_loss") is not None
    assert len(ties_with_best(records, "min", noise)) == 2  # 0.25 apart: a tie, not a result.
    far = [_curve_record(runs[0], weight_decay=1e-3), _curve_record(runs[1] + 50, weight_decay=0.0)]
    assert [r["values"] for r in ties_with_best(far, "min", search_noise(far, "val_loss"))] == [{"weight_decay": 1e-3}]
    assert curve_noise(_curve_record([1.0, 0.9, 0.8]), "val_loss") is None  # Too short to tell.
