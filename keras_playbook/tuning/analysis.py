"""Reading a finished search: trial records, best epochs, borders (pure Python).

The Tuning Playbook's evaluation of a round of experiments:
- epochs are not tuned; every trial runs the same number and is scored at
  its best epoch. When the best epoch is always in the first 20% of the
  budget, fewer epochs would do; when it is usually in the last 20%, train
  longer.
- when the best value of a hyperparameter sits on the border of the range
  searched, the range was too small: widen it.

References:
    Godbole et al. 2023, "Deep Learning Tuning Playbook" (best epoch,
    search-space borders).
"""

import json
import math
import os

import numpy as np
from keras_tuner.engine import trial as trial_module

from keras_playbook import _validation as validation
from keras_playbook.tuning.hypermodel import best_epoch

EARLY_FRACTION = 0.2
LATE_FRACTION = 0.2


def trial_records(tuner, objective, trial_ids=None):
    """One JSON-ready dict per trial of a finished search, in trial order.

    Each holds `trial_id`, `status`, `values` (the hyperparameters), `history`
    (per-epoch metrics, from `history.json`), `epochs` (epochs run), `score`
    (the objective at the best epoch) and `best_epoch` (1-based). Scores are
    recomputed from the history, so a worker, whose oracle lives in the
    chief, reads the same numbers as the chief.

    Args:
        tuner: A `PlaybookTuner` after `search`.
        objective: The oracle's `keras_tuner.Objective`.
        trial_ids: Trials to read; defaults to every trial of the oracle
            (only on the chief or a single process).
    """
    if trial_ids is None:
        trials = sorted(tuner.oracle.trials.values(), key=lambda trial: trial.trial_id)
        items = [(trial.trial_id, trial.status, dict(trial.hyperparameters.values)) for trial in trials]
    else:
        items = [(trial_id, trial_module.TrialStatus.COMPLETED, None) for trial_id in trial_ids]
    records = []
    for trial_id, status, values in items:
        history = tuner.read_history(trial_id) or {}
        score, index = best_epoch(history, objective)
        records.append(
            {
                "trial_id": trial_id,
                "status": str(status),
                "values": values if values is not None else _values_from_history_folder(tuner, trial_id),
                "history": history,
                "epochs": len(next(iter(history.values()), [])),
                "score": None if math.isnan(score) else score,
                "best_epoch": index + 1,
            }
        )
    return records


def _values_from_history_folder(tuner, trial_id):
    path = os.path.join(tuner.get_trial_dir(trial_id), "trial.json")
    if not os.path.exists(path):
        return {}
    with open(path) as file:
        return dict(json.load(file).get("hyperparameters", {}).get("values", {}))


def scored(records):
    """Records with a finite score."""
    return [record for record in records if record["score"] is not None]


def best_record(records, direction):
    """The record with the best score (first on ties), or None."""
    candidates = scored(records)
    if not candidates:
        return None
    pick = max if direction == "max" else min
    return pick(candidates, key=lambda record: record["score"])


TIE_SIGMAS = 2.0  # A difference below this many standard errors of a difference is a tie.


def curve_noise(record, objective_name):
    """The epoch-to-epoch noise of a trial's objective curve near its end (a robust standard deviation).

    Consecutive epochs of a converging run differ by its trend plus noise;
    the spread (MAD) of those differences over the second half of the curve,
    divided by sqrt(2), estimates the noise of one epoch's value. It is free
    (no extra trial), but it is not the seed-to-seed spread: measured against
    five seeds of the same two cells, it was half of it on digits (0.012 vs
    0.023 in validation loss) and 5x it on breast cancer (0.041 vs 0.0074).
    A verdict from it is a first screen; `compare_seeds` is the measurement.
    """
    values = np.asarray(record["history"].get(objective_name, []), dtype=float)
    values = values[np.isfinite(values)]
    changes = np.diff(values[len(values) // 2 :])
    if len(changes) < 2:
        return None
    return float(1.4826 * np.median(np.abs(changes - np.median(changes))) / math.sqrt(2))


def search_noise(records, objective_name):
    """The median of the trials' curve noise, or None when the curves are too short to tell."""
    noises = [noise for noise in (curve_noise(r, objective_name) for r in scored(records)) if noise is not None]
    return float(np.median(noises)) if noises else None


def ties_with_best(records, direction, noise):
    """The scored records whose score is within noise of the best one (the best included).

    Two single runs differ by chance by about sqrt(2) x the noise of one;
    below `TIE_SIGMAS` times that, a difference is not a result.
    """
    best = best_record(records, direction)
    if best is None:
        return []
    if noise is None:
        return [best]
    margin = TIE_SIGMAS * math.sqrt(2) * noise
    return [r for r in scored(records) if abs(r["score"] - best["score"]) <= margin]


def epoch_advice(records):
    """The Tuning Playbook's best-epoch advice for trials run for the same budget.

    Args:
        records: Trial records (their `best_epoch` and `epochs`).

    Returns:
        A list of sentences (empty when the budget looks right or the runs
        are too short to tell).
    """
    runs = [record for record in scored(records) if record["epochs"] >= 3]
    if not runs:
        return []
    epochs = max(record["epochs"] for record in runs)
    runs = [record for record in runs if record["epochs"] == epochs]
    early = [record for record in runs if record["best_epoch"] <= EARLY_FRACTION * epochs]
    late = [record for record in runs if record["best_epoch"] > (1 - LATE_FRACTION) * epochs]
    best_epochs = sorted(record["best_epoch"] for record in runs)
    if len(early) == len(runs):
        return [
            f"The best epoch is always in the first 20% of the {epochs} epochs "
            f"(best epochs {best_epochs}): fewer epochs would do (Tuning Playbook)."
        ]
    if len(late) > len(runs) / 2:
        return [
            f"The best epoch is in the last 20% of the {epochs} epochs for "
            f"{len(late)} of {len(runs)} trials (best epochs {best_epochs}): the "
            "runs were still improving; train longer (Tuning Playbook)."
        ]
    return []


def border_advice(space, best_values, label=""):
    """Tuning Playbook: is the best value of a hyperparameter on the border of its range?

    Args:
        space: Dict mapping names to what was searched: a list of values, or
            a tuple `(sampling, low, high)` with sampling "log" or "linear"
            (or "int") for a continuous range.
        best_values: The best trial's values.
        label: Words naming the search, e.g. "coarse grid".

    Returns:
        A list of sentences, one per hyperparameter on a border.
    """
    where = f" of the {label}" if label else ""
    advice = []
    for name, searched in space.items():
        if name not in best_values:
            continue
        best = best_values[name]
        if not validation.is_number(best):
            continue
        if isinstance(searched, tuple):
            sampling, low, high = searched
            if sampling == "log":
                position = (math.log(best) - math.log(low)) / (math.log(high) - math.log(low))
            else:
                position = (best - low) / (high - low) if high > low else 0.5
            if position >= 0.9:
                advice.append(
                    f"The best {name} ({best:.3g}) is near the top of the range{where} "
                    f"[{low:.3g}, {high:.3g}]: widen it upwards (Tuning Playbook)."
                )
            elif position <= 0.1 and low > 0:
                advice.append(
                    f"The best {name} ({best:.3g}) is near the bottom of the range{where} "
                    f"[{low:.3g}, {high:.3g}]: widen it downwards (Tuning Playbook)."
                )
            continue
        values = sorted({value for value in searched if validation.is_number(value)})
        if len(values) < 2:
            continue
        if best == values[-1]:
            advice.append(
                f"The best {name} ({best:.3g}) is the largest value tried{where} "
                f"({_listed(values)}): widen the range upwards (Tuning Playbook)."
            )
        elif best == values[0] and values[0] > 0:
            advice.append(
                f"The best {name} ({best:.3g}) is the smallest value tried{where} "
                f"({_listed(values)}): widen the range downwards (Tuning Playbook)."
            )
    return advice


def _listed(values):
    return ", ".join(f"{value:.3g}" for value in values)


def scores_by(records, key):
    """Groups finite scores by `key(record)`, keeping first-seen order."""
    groups = {}
    for record in scored(records):
        groups.setdefault(key(record), []).append(record["score"])
    return {name: np.asarray(values, dtype=float) for name, values in groups.items()}
