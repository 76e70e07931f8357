"""The Playbook's KerasTuner oracles: explicit grids and the coarse-to-fine grid.

`GridOracle` runs a given list of configurations, each exactly once, in
order. KerasTuner's `GridSearchOracle` walks a space instead and keeps its
position in memory only (`_populate_next`, `_ordered_ids` are not in its saved
state), so a reloaded project stops early; `GridOracle` finds the next
configuration from the trials already recorded, which is all a resumed or a
distributed search needs.

`CoarseToFineOracle` is Johnson's steps 4-5 (EECS 498 Lecture 11): a coarse learning rate x weight
decay grid trained for a few epochs, then a refined grid centred on the best
coarse cell, trained longer at a constant learning rate. The second stage
waits (`IDLE`) until every coarse trial has ended, so it also works with
several workers.

Both are plain `keras_tuner.Oracle` subclasses: any `keras_tuner.Tuner` runs
them, with the project directory, resume and chief/worker distribution that
KerasTuner provides.

References:
    Johnson, EECS 498 Lecture 11, steps 4-5.
    Godbole et al. 2023, "Deep Learning Tuning Playbook" (borders).
"""

import json
import math

import keras_tuner
from keras_tuner.engine import trial as trial_module

from keras_playbook import _validation as validation

STAGE = "stage"
_RUNNING = trial_module.TrialStatus.RUNNING
_IDLE = trial_module.TrialStatus.IDLE
_STOPPED = trial_module.TrialStatus.STOPPED
_COMPLETED = trial_module.TrialStatus.COMPLETED


def declare_values(hyperparameters, name, values):
    """Declares `name` in a `HyperParameters` space as a choice among `values`.

    Returns:
        The values converted to the declared type (numbers mixing int and
        float become floats, as KerasTuner's `Choice` needs one type).

    Raises:
        ValueError: for an empty list or values of several kinds.
    """
    values = list(values)
    if not values:
        raise ValueError(f"The values of {name!r} are empty: give at least one value.")
    if all(isinstance(value, bool) for value in values):
        kind = bool
    elif all(isinstance(value, str) for value in values):
        kind = str
    elif all(validation.is_int(value) for value in values):
        kind = int
    elif all(validation.is_number(value) for value in values):
        kind = float
    else:
        raise ValueError(
            f"The values of {name!r} must be all numbers, all strings or all booleans. Received: {values!r}."
        )
    values = [kind(value) for value in values]
    unique = list(dict.fromkeys(values))
    if kind is bool:
        hyperparameters.Boolean(name, default=unique[0])
    else:
        hyperparameters.Choice(name, unique, ordered=kind is not str)
    return values


class GridOracle(keras_tuner.Oracle):
    """Runs each of a list of configurations exactly once, in order.

    Args:
        cells: A list of dicts, each the hyperparameter values of one trial,
            e.g. `[{"weight_decay": 0.0}, {"weight_decay": 1e-4}]`.
        objective: As for `keras_tuner.Oracle` (e.g. `"val_loss"`).
        hyperparameters: Optional `HyperParameters` holding values shared by
            every trial (declare them with `hp.Fixed`). A name a cell leaves
            out takes its default; hyperparameters a model builder declares
            and the grid does not name keep their defaults.
        seed: Oracle seed.
        max_retries_per_trial: Reruns of a crashed trial.
        max_consecutive_failed_trials: Failures in a row that stop the search.

    Raises:
        ValueError: for no cells, or a project reloaded with other cells.

    Example:

    ```python
    oracle = GridOracle([{"weight_decay": wd} for wd in (0.0, 1e-5, 1e-4)],
                        objective="val_loss")
    tuner = keras_tuner.Tuner(oracle, hypermodel, directory="runs", project_name="wd")
    tuner.search(x, y, epochs=5, validation_data=(x_val, y_val))
    ```
    """

    def __init__(
        self,
        cells,
        objective=None,
        hyperparameters=None,
        seed=None,
        max_retries_per_trial=0,
        max_consecutive_failed_trials=3,
    ):
        cells = [dict(cell) for cell in cells]
        if not cells:
            raise ValueError("GridOracle: `cells` is empty: give at least one configuration.")
        space = hyperparameters.copy() if hyperparameters is not None else keras_tuner.HyperParameters()
        for name in dict.fromkeys(name for cell in cells for name in cell):
            if name in space.values:
                continue
            converted = declare_values(space, name, [cell[name] for cell in cells if name in cell])
            converted = iter(converted)
            for cell in cells:
                if name in cell:
                    cell[name] = next(converted)
        super().__init__(
            objective=objective,
            max_trials=len(cells),
            hyperparameters=space,
            # Hyperparameters a builder declares but the grid does not name
            # keep their defaults in every trial.
            tune_new_entries=False,
            seed=seed,
            max_retries_per_trial=max_retries_per_trial,
            max_consecutive_failed_trials=max_consecutive_failed_trials,
        )
        self.cells = cells

    def _next_untried(self, cells):
        for cell in cells:
            hyperparameters = self.get_space()
            values = dict(cell)
            for hp in hyperparameters.space:
                # A name the cell leaves out takes its default, not a random sample.
                if hp.name not in values and hyperparameters.is_active(hp):
                    values[hp.name] = hp.default
            if not self._tried(values):
                return {"status": _RUNNING, "values": values}
        return None

    def _tried(self, values):
        """True when a recorded trial (of any status) ran these values.

        Compared name by name rather than by KerasTuner's hash of all values:
        a builder adds its own hyperparameters to a trial's values as it runs,
        which changes that hash.
        """
        return any(_runs(trial, values) for trial in self.trials.values())

    def populate_space(self, trial_id):
        response = self._next_untried(self.cells)
        if response is not None:
            return response
        return {"status": _IDLE if self.ongoing_trials else _STOPPED, "values": None}

    def _fixed_values(self):
        return {
            hp.name: hp.value
            for hp in self.hyperparameters.space
            if isinstance(hp, keras_tuner.engine.hyperparameters.Fixed)
        }

    def get_state(self):
        state = super().get_state()
        state["cells"] = self.cells
        state["fixed"] = self._fixed_values()
        return state

    def set_state(self, state):
        # Resuming is only right when the trials on disk ran what this search
        # would run: the same cells, with the same shared values.
        saved = {"cells": state.get("cells"), "fixed": state.get("fixed")}
        current = json.loads(json.dumps({"cells": self.cells, "fixed": self._fixed_values()}))
        for key, words in (("cells", "configurations"), ("fixed", "shared values")):
            if saved[key] is not None and saved[key] != current[key]:
                raise ValueError(
                    f"The KerasTuner project in {self._project_dir!r} was searched with "
                    f"other {words} ({_short(saved[key])}) than these "
                    f"({_short(current[key])}). Pass `overwrite=True` to start it again, "
                    "or another `project_name`."
                )
        super().set_state(state)


class CoarseToFineOracle(GridOracle):
    """Johnson, EECS 498 Lecture 11, steps 4-5: a coarse LR x weight-decay grid, then a refined one.

    Stage one runs every `(learning_rate, weight_decay)` cell of the coarse
    grid for `coarse_epochs`. When its best cell sits on the border of the
    grid (the largest or smallest learning rate, the largest non-zero weight
    decay), the grid grows one step past that border and the new cells run
    too (Tuning Playbook: a best value on the border means the range was too
    small), up to `max_extensions` times. Stage two waits for all coarse
    trials, takes the best coarse cell and runs a grid centred on it:
    learning rates `best_lr * lr_refine_factors` by weight decays `best_wd *
    wd_refine_factors` (when the best cell has no weight decay: 0 and the
    smallest non-zero coarse value times the smallest factor), each for
    `fine_epochs`. Trials carry `stage` ("coarse" or "fine") and `epochs`
    among their values. Every step is computed from the recorded trials, so
    a resumed or distributed search takes the same path.

    Args:
        learning_rates: Coarse learning rates (> 0).
        weight_decays: Coarse weight decays (>= 0).
        coarse_epochs: Epochs per coarse trial (Johnson: ~1-5).
        fine_epochs: Epochs per refined trial (Johnson: ~10-20).
        lr_refine_factors: Multipliers of the best learning rate.
        wd_refine_factors: Multipliers of the best weight decay.
        max_extensions: How many times the coarse grid may grow past a
            border (0 keeps it as given).
        **kwargs: As for `GridOracle` (`objective`, `hyperparameters`, ...).

    Example:

    ```python
    oracle = CoarseToFineOracle([1e-3, 3e-3, 1e-2], [0.0, 1e-5, 1e-4],
                                objective="val_accuracy")
    ```
    """

    def __init__(
        self,
        learning_rates,
        weight_decays,
        *,
        coarse_epochs=3,
        fine_epochs=15,
        lr_refine_factors=(10**-0.25, 1.0, 10**0.25),
        wd_refine_factors=(10**-0.5, 1.0, 10**0.5),
        max_extensions=2,
        **kwargs,
    ):
        self.learning_rates = sorted(float(value) for value in learning_rates)
        self.weight_decays = sorted(float(value) for value in weight_decays)
        self.coarse_epochs = int(coarse_epochs)
        self.fine_epochs = int(fine_epochs)
        self.lr_refine_factors = [float(value) for value in lr_refine_factors]
        self.wd_refine_factors = [float(value) for value in wd_refine_factors]
        self.max_extensions = int(max_extensions)
        hyperparameters = kwargs.pop("hyperparameters", None)
        space = hyperparameters.copy() if hyperparameters is not None else keras_tuner.HyperParameters()
        space.Float("learning_rate", 1e-12, 1e6, sampling="log")
        space.Float("weight_decay", 0.0, 1e6)
        space.Choice(STAGE, ["coarse", "fine"], ordered=False)
        space.Choice("epochs", sorted({self.coarse_epochs, self.fine_epochs}))
        super().__init__(self._coarse_cells(self.learning_rates, self.weight_decays), hyperparameters=space, **kwargs)
        self.max_trials = None  # The grid grows with the results.

    def _coarse_cells(self, learning_rates, weight_decays):
        return [
            {STAGE: "coarse", "epochs": self.coarse_epochs, "learning_rate": lr, "weight_decay": wd}
            for lr in learning_rates
            for wd in weight_decays
        ]

    def _ended(self, cell):
        running = {trial.trial_id for trial in self.ongoing_trials.values()}
        return any(trial.trial_id not in running and _runs(trial, cell) for trial in self.trials.values())

    def coarse_axes(self):
        """The coarse learning rates and weight decays, grown past the borders the best cell hit.

        Returns:
            `(learning_rates, weight_decays, extensions)`: the sorted axes and
            a list of sentences, one per extension.
        """
        lrs, wds, extensions = list(self.learning_rates), list(self.weight_decays), []
        while len(extensions) < self.max_extensions:
            cells = self._coarse_cells(lrs, wds)
            if not all(self._ended(cell) for cell in cells):
                break
            best = self.best_coarse_trial(cells)
            if best is None:
                break
            lr = best.hyperparameters.values["learning_rate"]
            wd = best.hyperparameters.values["weight_decay"]
            grown = []
            if len(lrs) >= 2 and lr == lrs[-1]:
                lrs.append(_tidy(lr * lrs[-1] / lrs[-2]))
                grown.append(f"learning rate up to {lrs[-1]:.3g}")
            elif len(lrs) >= 2 and lr == lrs[0]:
                lrs.insert(0, _tidy(lr * lrs[0] / lrs[1]))
                grown.append(f"learning rate down to {lrs[0]:.3g}")
            if wd > 0 and wd == wds[-1]:
                nonzero = [value for value in wds if value > 0]
                step = nonzero[-1] / nonzero[-2] if len(nonzero) >= 2 else 10.0
                wds.append(_tidy(wd * step))
                grown.append(f"weight decay up to {wds[-1]:.3g}")
            if not grown:
                break
            extensions.append(
                f"The best coarse cell (lr {lr:.3g}, wd {wd:.3g}) sat on the border of the "
                f"grid: it grew ({', '.join(grown)}; Tuning Playbook)."
            )
        return lrs, wds, extensions

    def best_coarse_trial(self, cells=None):
        """The best completed coarse trial (among those running `cells`, when given), or None."""
        completed = [
            trial
            for trial in self.trials.values()
            if trial.status == _COMPLETED
            and trial.hyperparameters.values.get(STAGE) == "coarse"
            and trial.score is not None
            and math.isfinite(trial.score)
            and (cells is None or any(_runs(trial, cell) for cell in cells))
        ]
        if not completed:
            return None
        completed.sort(key=lambda trial: trial.trial_id)
        pick = max if self.objective.direction == "max" else min
        return pick(completed, key=lambda trial: trial.score)

    def fine_cells(self):
        """The refined grid around the best coarse cell (None until there is one)."""
        best = self.best_coarse_trial()
        if best is None:
            return None
        lr = best.hyperparameters.values["learning_rate"]
        wd = best.hyperparameters.values["weight_decay"]
        learning_rates = [_tidy(lr * factor) for factor in self.lr_refine_factors]
        if wd > 0:
            weight_decays = [_tidy(wd * factor) for factor in self.wd_refine_factors]
        else:
            nonzero = [value for value in self.weight_decays if value > 0]
            weight_decays = [0.0]
            if nonzero:
                weight_decays.append(_tidy(min(nonzero) * min(self.wd_refine_factors)))
        return [
            {STAGE: "fine", "epochs": self.fine_epochs, "learning_rate": lr_value, "weight_decay": wd_value}
            for lr_value in dict.fromkeys(learning_rates)
            for wd_value in dict.fromkeys(weight_decays)
        ]

    def populate_space(self, trial_id):
        response = self._next_untried(self.cells)
        if response is not None:
            return response
        coarse_running = any(
            trial.hyperparameters.values.get(STAGE) == "coarse" for trial in self.ongoing_trials.values()
        )
        if coarse_running:
            return {"status": _IDLE, "values": None}
        learning_rates, weight_decays, _ = self.coarse_axes()
        response = self._next_untried(self._coarse_cells(learning_rates, weight_decays))
        if response is not None:
            return response
        fine = self.fine_cells()
        response = None if fine is None else self._next_untried(fine)
        if response is not None:
            return response
        return {"status": _IDLE if self.ongoing_trials else _STOPPED, "values": None}


def _runs(trial, values):
    """True when `trial`'s values hold every name of `values` with the same value."""
    return all(trial.hyperparameters.values.get(name) == value for name, value in values.items())


def _short(value):
    text = json.dumps(value)
    return text if len(text) <= 160 else text[:157] + "..."


def _tidy(value):
    """Rounds to 4 significant digits, so refined values read well and hash stably."""
    return float(f"{value:.4g}")
