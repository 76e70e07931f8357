"""diagnose(history): labelled synthetic curves of every shape, and real tiny runs."""

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_playbook import FitRecord
from keras_playbook._diagnosis import WINDOW, diagnose, too_short
from keras_playbook.callbacks import CurveDiagnosis
from tests import helpers

EPOCHS = 20
t = np.arange(EPOCHS, dtype=float)


def _healthy():
    loss = 2.3 * np.exp(-t / 2) + 0.05
    return {"loss": loss, "val_loss": loss + 0.05}


def _diverged():
    curves = _healthy()
    curves["loss"] = curves["loss"].copy()
    curves["loss"][12:] = np.nan
    return curves


def _not_decreasing():
    return {"loss": 2.3 + 0.0 * t}


def _bad_initialization():
    loss = np.where(t < 5, 2.3, 1.5 * np.exp(-(t - 5) / 3) + 0.1)
    return {"loss": loss}


def _plateau():
    loss = 1.0 + 1.3 * np.exp(-t / 2)
    return {"loss": loss, "val_loss": loss + 0.05}


def _decay_too_early():
    loss = np.where(t < 6, 2.3 - 0.13 * t, 2.3 - 0.13 * 5)
    return {"loss": loss, "learning_rate": np.where(t < 6, 0.1, 0.01)}


def _overfitting():
    loss = 2.3 * np.exp(-t / 3) + 0.01
    validation = np.where(t < 6, 2.3 * np.exp(-t / 3) + 0.3, 2.3 * np.exp(-5 / 3) + 0.3 + 0.05 * (t - 5))
    return {"loss": loss, "val_loss": validation}


def _worse_after_convergence():
    loss = np.where(t < 10, 2.3 * np.exp(-t / 3) + 0.2, 2.3 * np.exp(-3) + 0.2 + 0.02 * (t - 9))
    return {"loss": loss}


def _underfitting():
    loss = 2.3 * np.exp(-t / 15)
    return {"loss": loss, "val_loss": loss + 0.02, "accuracy": 0.2 + 0.02 * t}


def _needs_longer_training():
    loss = 2.3 * np.exp(-t / 15)
    return {"loss": loss, "val_loss": loss + 0.02, "accuracy": 0.9 + 0.004 * t}


SHAPES = {
    None: _healthy,
    "diverged": _diverged,
    "not_decreasing": _not_decreasing,
    "bad_initialization": _bad_initialization,
    "plateau": _plateau,
    "decay_too_early": _decay_too_early,
    "overfitting": _overfitting,
    "worse_after_convergence": _worse_after_convergence,
    "underfitting": _underfitting,
    "needs_longer_training": _needs_longer_training,
}


def _noisy(curves, seed, scale=0.01):
    rng = np.random.default_rng(seed)
    noisy = {}
    for name, values in curves.items():
        values = np.asarray(values, dtype=float)
        noise = 1 + scale * rng.standard_normal(len(values)) if name in ("loss", "val_loss") else 1
        noisy[name] = (values * noise).tolist()
    return noisy


def test_each_shape_is_recognized_without_noise():
    for label, make in SHAPES.items():
        kinds = [finding.kind for finding in diagnose(make())]
        assert kinds[:1] == ([] if label is None else [label]), (label, kinds)


def test_detector_accuracy_over_a_labelled_set():
    results = []
    for label, make in SHAPES.items():
        for seed in range(10):
            kinds = [finding.kind for finding in diagnose(_noisy(make(), seed))]
            results.append((kinds[0] if kinds else None) == label)
    accuracy = float(np.mean(results))
    # Each point of the loss curves carries 1% noise (multiplicative, Gaussian).
    print(f"\ndiagnose: {sum(results)}/{len(results)} labelled noisy curves right ({accuracy:.1%})")
    assert accuracy >= 0.9


def test_findings_carry_evidence_and_advice():
    [finding] = diagnose(_overfitting())
    assert finding.epochs[0] == 6 and finding.evidence["gap_now"] > finding.evidence["gap_at_best"]
    assert "Johnson" in finding.advice and finding.to_dict()["kind"] == "overfitting"
    with pytest.raises(ValueError, match="'loss' curve"):
        diagnose({"val_loss": [1.0, 0.5]})


def _run(model_kwargs, optimizer, epochs, num_train, callbacks=(), strategy=None):
    data = helpers.digits_data(num_train=1200, num_val=500)
    keras.utils.set_random_seed(0)
    with (strategy or tf.distribute.get_strategy()).scope():
        model = helpers.mlp(**model_kwargs)
        model.compile(optimizer=optimizer, loss=helpers.LOGITS_LOSS, metrics=["accuracy"])
    return model.fit(
        data["x_train"][:num_train],
        data["y_train"][:num_train],
        validation_data=(data["x_val"], data["y_val"]),
        epochs=epochs,
        batch_size=32,
        callbacks=list(callbacks),
        verbose=0,
    )


def test_real_runs_made_to_overfit_and_underfit_and_a_healthy_one():
    overfit = _run({"hidden": 256}, keras.optimizers.Adam(1e-2), 30, num_train=64)
    assert [f.kind for f in diagnose(overfit)] == ["overfitting"]
    underfit = _run({}, keras.optimizers.Adam(3e-4), 8, num_train=512)
    assert [f.kind for f in diagnose(underfit)] == ["underfitting"]
    healthy = _run({"l2": 1e-3}, keras.optimizers.Adam(1e-2), 30, num_train=1200)
    assert diagnose(healthy) == []


def test_curve_diagnosis_callback_stops_on_divergence(strategy):
    diagnosis = CurveDiagnosis(verbose=0)
    history = _run({}, keras.optimizers.SGD(1e20), 10, num_train=256, callbacks=[diagnosis], strategy=strategy)
    assert [f.kind for f in diagnosis.findings] == ["diverged"]
    assert len(history.history["loss"]) == 1 and not math.isfinite(history.history["loss"][-1])  # Stopped at once.
    assert CurveDiagnosis(**diagnosis.get_config()).get_config() == {
        "stop_on_divergence": True,
        "schedule": None,
        "verbose": 0,
        "initial_loss": None,
        "loss_key": None,
    }


def test_weight_decay_ratio_from_the_monitor_is_read():
    loss = list(2.0 * 0.7 ** np.arange(10))
    dominated = diagnose({"loss": loss, "weight_decay_ratio": [0.2] * 6 + [1.5, 2.0, 2.5, 3.0]})
    (finding,) = [f for f in dominated if f.kind == "weight_decay_dominating"]
    assert finding.epochs == [7, 8, 9, 10] and "Loshchilov & Hutter 2019" in finding.advice
    assert not [
        f for f in diagnose({"loss": loss, "weight_decay_ratio": [0.2] * 10}) if f.kind == "weight_decay_dominating"
    ]


def test_a_short_run_that_learns_is_not_called_flat():
    # Three epochs: the first and last epochs are compared, not two identical three-epoch windows.
    assert "not_decreasing" not in [f.kind for f in diagnose({"loss": [2.0, 1.5, 1.2]})]
    assert [f.kind for f in diagnose({"loss": [2.0, 2.0, 2.0]})] == ["not_decreasing"]


def test_planned_and_earned_decays_are_not_mistakes():
    curves = _decay_too_early()
    assert [f.kind for f in diagnose(curves)][:1] == ["decay_too_early"]  # Nobody planned it.
    for schedule in ("OneCycle", {"name": "CosineRestarts"}, "StepDownLR", "ReduceLROnPlateau"):
        assert "decay_too_early" not in [f.kind for f in diagnose(curves, schedule=schedule)], schedule
    diagnosis = CurveDiagnosis(schedule="OneCycle", verbose=0)
    assert diagnosis.get_config()["schedule"] == "OneCycle"


def test_a_run_that_learns_far_too_slowly_gets_a_finding():
    epochs = np.arange(30, dtype=float)
    slow = {"loss": 2.3 - 0.006 * epochs, "val_loss": 2.31 - 0.006 * epochs, "accuracy": 0.1 + 0.005 * epochs}
    (finding,) = diagnose(_noisy(slow, 0, scale=0.001))
    assert finding.kind == "learning_too_slowly" and "far too low" in finding.advice
    assert finding.evidence["fall"] < 0.1 and len(json.dumps(finding.to_dict())) < 600  # A summary, not curves.
    # A run that learned in its first epoch and then sat at its floor is not slow, nor flat.
    converged = {"loss": [0.31, 0.30, 0.30, 0.31, 0.30, 0.30], "accuracy": [0.9] * 6}
    assert [f.kind for f in diagnose(converged)] == ["not_decreasing"]  # Without the loss before training...
    assert diagnose(converged, initial_loss=2.3) == []  # ...with it, a run that converged early.


def test_a_loss_that_rises_with_the_rate_means_the_rate_is_too_high():
    rates = [0.01, 0.05, 0.1, 0.5, 1.0, 0.5, 0.1, 0.05]
    destroyed = {"loss": [1.0, 0.5, 0.3, 0.8, 2.0, 2.2, 2.1, 2.1], "learning_rate": rates}
    (finding,) = [f for f in diagnose(destroyed) if f.kind == "rate_too_high"]
    assert finding.epochs == [3, 4] and not finding.evidence["recovered"]
    assert "too high" in finding.advice and "too low" not in finding.advice
    recovered = {"loss": [1.0, 0.5, 0.3, 0.8, 2.0, 0.6, 0.25, 0.2], "learning_rate": rates}
    (finding,) = [f for f in diagnose(recovered) if f.kind == "rate_too_high"]
    assert finding.evidence["recovered"] and "recovered" in finding.advice


def test_worse_after_convergence_without_weight_decay_blames_the_rate():
    (finding,) = diagnose(_worse_after_convergence(), weight_decay=False)
    assert finding.kind == "worse_after_convergence" and "without weight decay" in finding.advice
    (finding,) = diagnose(_worse_after_convergence())
    assert "weight-decay" in finding.advice


def test_noise_around_the_floor_is_not_getting_worse():
    rng = np.random.default_rng(0)
    loss = np.concatenate([2.0 * 0.5 ** np.arange(8), 0.05 + 0.02 * rng.random(22)])
    assert diagnose({"loss": loss.tolist()}, initial_loss=2.3) == []


def test_a_converged_validation_loss_bouncing_in_its_noise_is_not_overfitting():
    # A healthy two-output regression (seen on the verdict benchmark): both losses have converged and
    # bounce around their floor; the last validation loss is above the best, but by noise.
    history = {
        "loss": [0.7001, 0.1654, 0.0895, 0.0493, 0.0344, 0.0223, 0.0199, 0.0211, 0.0247, 0.0192],
        "val_loss": [0.1732, 0.1126, 0.07, 0.0325, 0.0213, 0.0196, 0.0168, 0.0253, 0.0174, 0.0242],
    }
    assert [finding.kind for finding in diagnose(history)] == []


def _kinds(findings):
    return [finding.kind for finding in findings]


def test_a_short_run_worse_than_untrained_is_told_at_any_length():
    # The runs of issue 22: 2 epochs at lr 5, 1 epoch at lr 55, against an untrained 2.51.
    (finding,) = diagnose({"loss": [976.6, 5.23], "val_loss": [8.29, 5.63]}, initial_loss=2.51)
    assert finding.kind == "rate_too_high" and not finding.evidence["recovered"] and finding.epochs == [1, 2]
    assert finding.evidence["final_val_loss"] == 5.63 and "too high" in finding.advice
    (finding,) = diagnose({"loss": [1.1e5], "val_loss": [73.3]}, initial_loss=2.51)
    assert finding.kind == "rate_too_high" and not finding.evidence["recovered"] and finding.epochs == [1]
    # A training loss near the start while the validation loss ends far above it: worse than untrained too.
    (finding,) = diagnose({"loss": [2.45, 2.4], "val_loss": [4.0, 5.63]}, initial_loss=2.51)
    assert finding.kind == "rate_too_high" and not finding.evidence["recovered"] and "validation 5.63" in finding.advice
    # A first epoch above the start, then below it: told, but recovered (not a failed run).
    (finding,) = diagnose({"loss": [5.2, 1.5], "val_loss": [2.16, 1.9]}, initial_loss=2.32)
    assert finding.evidence["recovered"] and "recovered" in finding.advice
    # Healthy short runs, and short runs without the loss before training: nothing to say.
    assert diagnose({"loss": [2.31, 2.19], "val_loss": [2.27, 2.18]}, initial_loss=2.32) == []
    assert diagnose({"loss": [2.31], "val_loss": [2.27]}, initial_loss=2.32) == []
    assert diagnose({"loss": [976.6, 5.23], "val_loss": [8.29, 5.63]}) == []
    assert diagnose({"loss": [976.6, 5.23]}, initial_loss=float("nan")) == []


def test_worse_than_untrained_compares_differences_so_negative_losses_are_judged_right():
    # A loss that goes negative (a log-likelihood, a similarity) is judged by how far it moved, not by a
    # ratio to its start: -1.2 against a start of -1.0 is better (a ratio of 1.2 would call it worse)...
    assert diagnose({"loss": [-1.05, -1.2]}, initial_loss=-1.0) == []
    assert diagnose({"loss": [0.3, -0.4], "val_loss": [0.2, -0.5]}, initial_loss=0.5) == []
    # ...and -0.4 against -1.0 is worse (a ratio of 0.4 would call it better).
    (finding,) = diagnose({"loss": [-0.5, -0.4]}, initial_loss=-1.0)
    assert finding.kind == "rate_too_high" and not finding.evidence["recovered"]
    # The same rule at every length: a long run whose loss went negative is not worse than untrained.
    falling = list(0.5 - 0.2 * np.arange(12))
    assert "rate_too_high" not in _kinds(diagnose({"loss": falling}, initial_loss=0.5))


def test_a_nan_in_a_short_run_is_diverged():
    (finding,) = diagnose({"loss": [float("nan")]}, initial_loss=2.3)
    assert finding.kind == "diverged" and finding.epochs == [1]
    (finding,) = diagnose({"loss": [2.2, 2.0], "val_loss": [2.1, float("inf")]}, initial_loss=2.3)
    assert finding.kind == "diverged" and finding.epochs == [2]


def test_a_three_epoch_run_recovers_on_the_epochs_after_the_first():
    # The first epoch's own loss is not part of "did it recover".
    (finding,) = diagnose({"loss": [40.0, 2.0, 1.8], "val_loss": [3.0, 1.9, 1.7]}, initial_loss=2.3)
    assert finding.kind == "rate_too_high" and finding.evidence["recovered"]


def test_too_short_says_what_needs_more_epochs():
    note = too_short(2)
    assert note.startswith("2 epochs: too few to judge") and "overfitting" in note and "plateau" in note
    assert f"needs {WINDOW}" in note and "worse than the untrained" in note
    assert too_short(1).startswith("1 epoch:") and "untrained" not in too_short(1, untrained_known=False)
    assert too_short(WINDOW) == "" and too_short(30) == ""


class _History:
    def __init__(self, history):
        self.history = history


def test_a_short_record_is_ok_when_healthy_and_says_what_it_could_not_check():
    curves = {"loss": [2.31, 2.19], "val_loss": [2.27, 2.18]}
    findings = [f.to_dict() for f in diagnose(curves, initial_loss=2.32)]
    record = FitRecord.from_history(_History(curves), {"learning_rate": 1e-3}, findings=findings, initial_loss=2.32)
    assert record.ok and record.message.startswith("Trained 2 epochs") and too_short(2) in record.message
    bad = {"loss": [976.6, 5.23], "val_loss": [8.29, 5.63]}
    findings = [f.to_dict() for f in diagnose(bad, initial_loss=2.51)]
    record = FitRecord.from_history(_History(bad), {"learning_rate": 5.0}, findings=findings, initial_loss=2.51)
    assert not record.ok and record.message.startswith("Training did not work") and "rate_too_high" in record.message
    long = {"loss": list(2.3 * 0.7 ** np.arange(8)), "val_loss": list(2.3 * 0.7 ** np.arange(8) + 0.1)}
    record = FitRecord.from_history(_History(long), {}, initial_loss=2.3)
    assert "too few" not in record.message


def test_curve_diagnosis_given_the_loss_before_training_tells_a_bad_first_epoch():
    diagnosis = CurveDiagnosis(verbose=0, initial_loss=2.3)
    diagnosis.on_train_begin()
    diagnosis.on_epoch_end(0, {"loss": 900.0, "val_loss": 8.0})
    assert _kinds(diagnosis.findings) == ["rate_too_high"]
    assert CurveDiagnosis(**diagnosis.get_config()).initial_loss == 2.3
    unknown = CurveDiagnosis(verbose=0)
    unknown.on_train_begin()
    unknown.on_epoch_end(0, {"loss": 900.0, "val_loss": 8.0})
    assert unknown.findings == []
