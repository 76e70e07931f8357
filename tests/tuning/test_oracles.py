"""GridOracle and CoarseToFineOracle under real KerasTuner searches."""

import json
import os

import keras
import keras_tuner
import numpy as np
import pytest

from keras_playbook._data import make_pipeline
from keras_playbook._session import Session
from keras_playbook.tuning import CoarseToFineOracle, GridOracle, PlaybookHyperModel, PlaybookTuner
from tests import helpers


def _hypermodel(digits, strategy=None, epochs=1):
    session = Session(helpers.mlp(), strategy=strategy)
    session.compile(loss=helpers.LOGITS_LOSS, metrics=["accuracy"])
    train = make_pipeline(
        (digits["x_train"], digits["y_train"]), batch_size=64, num_replicas=session.num_replicas, shuffle=True, seed=0
    )
    validation = make_pipeline(
        (digits["x_val"], digits["y_val"]), batch_size=64, num_replicas=session.num_replicas, shuffle=False
    )
    session.ensure_built(train.first_batches(1)[0][0])
    return PlaybookHyperModel(session, train, validation, epochs=epochs)


def _tuner(oracle, hypermodel, directory, **kwargs):
    return PlaybookTuner(
        oracle,
        hypermodel,
        directory=str(directory),
        project_name="p",
        distribution_strategy=hypermodel.session.strategy,
        **kwargs,
    )


class _RecordStarts(keras.callbacks.Callback):
    """Records the weight decay each trial trains with; raises at a chosen trial."""

    started = []
    interrupt_at = None

    def on_train_begin(self, logs=None):
        type(self).started.append(float(keras.ops.convert_to_numpy(self.model.optimizer.weight_decay or 0.0)))
        if len(type(self).started) == type(self).interrupt_at:
            raise KeyboardInterrupt


def test_grid_runs_every_cell_exactly_once(digits, tmp_path, strategy):
    cells = [{"weight_decay": value} for value in (0, 1e-4, 1e-3)]
    oracle = GridOracle(cells, objective="val_loss")
    tuner = _tuner(oracle, _hypermodel(digits, strategy), tmp_path)
    tuner.search(verbose=0)
    completed = [t for t in oracle.trials.values() if t.status == "COMPLETED"]
    assert sorted(t.hyperparameters.values["weight_decay"] for t in completed) == [0.0, 1e-4, 1e-3]
    assert len(oracle.trials) == 3
    # KerasTuner's own tools read the project as usual.
    assert tuner.get_best_hyperparameters()[0].values["weight_decay"] in (0.0, 1e-4, 1e-3)
    assert os.path.exists(os.path.join(tuner.project_dir, "oracle.json"))
    for trial_id in oracle.trials:
        assert len(tuner.read_history(trial_id)["val_loss"]) == 1


def test_interrupted_search_resumes_without_rerunning_finished_trials(digits, tmp_path):
    cells = [{"weight_decay": value} for value in (0.0, 1e-5, 1e-4, 1e-3)]
    hypermodel = _hypermodel(digits)
    _RecordStarts.started, _RecordStarts.interrupt_at = [], 3
    with pytest.raises(KeyboardInterrupt):
        _tuner(GridOracle(cells, objective="val_loss"), hypermodel, tmp_path).search(
            callbacks=[_RecordStarts()], verbose=0
        )
    assert _RecordStarts.started == [0.0, 1e-5, 1e-4]  # Interrupted inside the third.
    _RecordStarts.started, _RecordStarts.interrupt_at = [], None
    oracle = GridOracle(cells, objective="val_loss")
    _tuner(oracle, hypermodel, tmp_path).search(callbacks=[_RecordStarts()], verbose=0)
    # The two finished trials are not run again; the interrupted one and the last are.
    assert _RecordStarts.started == pytest.approx([1e-4, 1e-3])
    completed = sorted(
        t.hyperparameters.values["weight_decay"] for t in oracle.trials.values() if t.status == "COMPLETED"
    )
    assert completed == pytest.approx([0.0, 1e-5, 1e-4, 1e-3])


def test_reloading_a_project_with_another_grid_is_refused(digits, tmp_path):
    hypermodel = _hypermodel(digits)
    _tuner(GridOracle([{"weight_decay": 0.0}], objective="val_loss"), hypermodel, tmp_path).search(verbose=0)
    with pytest.raises(ValueError, match="other configurations.*overwrite=True"):
        _tuner(GridOracle([{"weight_decay": 1e-4}], objective="val_loss"), hypermodel, tmp_path)
    # The same cells with another shared value (e.g. a new learning rate) are refused too.
    shared = keras_tuner.HyperParameters()
    shared.Fixed("learning_rate", 0.5)
    with pytest.raises(ValueError, match="other shared values"):
        _tuner(GridOracle([{"weight_decay": 0.0}], objective="val_loss", hyperparameters=shared), hypermodel, tmp_path)
    # overwrite=True starts again.
    oracle = GridOracle([{"weight_decay": 1e-4}], objective="val_loss")
    _tuner(oracle, hypermodel, tmp_path, overwrite=True).search(verbose=0)
    assert [t.hyperparameters.values["weight_decay"] for t in oracle.trials.values()] == [1e-4]


@pytest.mark.slow
def test_refined_grid_is_centred_on_the_coarse_winner(digits, tmp_path):
    oracle = CoarseToFineOracle(
        [1e-5, 1e-3, 3e-2],
        [0.0, 1e-3],
        coarse_epochs=1,
        fine_epochs=2,
        objective="val_accuracy",
        max_extensions=0,
    )
    tuner = _tuner(oracle, _hypermodel(digits), tmp_path)
    tuner.search(verbose=0)
    trials = sorted(oracle.trials.values(), key=lambda t: t.trial_id)
    coarse = [t for t in trials if t.hyperparameters.values["stage"] == "coarse"]
    fine = [t for t in trials if t.hyperparameters.values["stage"] == "fine"]
    assert len(coarse) == 6
    winner = max(coarse, key=lambda t: t.score)
    assert winner.hyperparameters.values["learning_rate"] != 1e-5  # 1e-5 barely learns in an epoch.
    lr = winner.hyperparameters.values["learning_rate"]
    wd = winner.hyperparameters.values["weight_decay"]
    fine_lrs = sorted({t.hyperparameters.values["learning_rate"] for t in fine})
    assert len(fine_lrs) == 3
    assert fine_lrs[1] == pytest.approx(lr)
    assert np.sqrt(fine_lrs[0] * fine_lrs[2]) == pytest.approx(lr, rel=1e-3)  # Centred in log space.
    fine_wds = sorted({t.hyperparameters.values["weight_decay"] for t in fine})
    if wd > 0:
        assert fine_wds[1] == pytest.approx(wd)
    else:
        assert fine_wds == pytest.approx([0.0, 1e-3 * 10**-0.5], rel=1e-3)
    # Refined trials train longer, and every trial ran once.
    assert {t.hyperparameters.values["epochs"] for t in fine} == {2}
    assert all(len(tuner.read_history(t.trial_id)["val_loss"]) == t.hyperparameters.values["epochs"] for t in trials)
    assert len(trials) == len(coarse) + len(fine_lrs) * len(fine_wds)


def test_grid_values_must_share_a_type():
    with pytest.raises(ValueError, match="all numbers"):
        GridOracle([{"x": 1.0}, {"x": "a"}])
    with pytest.raises(ValueError, match="empty"):
        GridOracle([])
    oracle = GridOracle([{"weight_decay": 0}, {"weight_decay": 1e-4}])
    assert [cell["weight_decay"] for cell in oracle.cells] == [0.0, 1e-4]
    assert isinstance(oracle.get_space().get_config(), dict)
    json.dumps(oracle.get_state())
    assert isinstance(oracle, keras_tuner.Oracle)


def test_coarse_grid_grows_past_the_border_its_winner_sits_on(digits, tmp_path):
    # Adam at 1e-6 / 1e-5 for one epoch: the larger rate wins, on the border.
    oracle = CoarseToFineOracle(
        [1e-6, 1e-5],
        [0.0],
        coarse_epochs=1,
        fine_epochs=1,
        objective="val_loss",
        max_extensions=2,
    )
    tuner = _tuner(oracle, _hypermodel(digits), tmp_path)
    tuner.search(verbose=0)
    learning_rates, weight_decays, extensions = oracle.coarse_axes()
    assert learning_rates == pytest.approx([1e-6, 1e-5, 1e-4, 1e-3])  # Two steps of x10.
    assert weight_decays == [0.0] and len(extensions) == 2
    assert "up to 0.0001" in extensions[0] and "Tuning Playbook" in extensions[0]
    coarse = [t for t in oracle.trials.values() if t.hyperparameters.values["stage"] == "coarse"]
    assert sorted(t.hyperparameters.values["learning_rate"] for t in coarse) == pytest.approx(learning_rates)
    winner = oracle.best_coarse_trial().hyperparameters.values["learning_rate"]
    assert winner == pytest.approx(1e-3)
    fine = [
        t.hyperparameters.values["learning_rate"]
        for t in oracle.trials.values()
        if t.hyperparameters.values["stage"] == "fine"
    ]
    assert sorted(fine)[1] == pytest.approx(winner)
