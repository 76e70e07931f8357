"""Grids on KerasTuner: the weight-decay grid and the coarse-to-fine LR x WD grid.

- `grid_weight_decay` (Smith 2018): with learning rate, batch size and
  momentum fixed, try weight decays 0, 1e-5, 1e-4, 1e-3 and keep the best.
- `tune_lr_wd` (Johnson, EECS 498 Lecture 11, steps 4-5): a coarse grid of learning rates around
  the one found so far by weight decays, for a few epochs; then a refined grid
  centred on the best coarse cell, trained longer at a constant learning rate.

Every trial is a KerasTuner trial (`PlaybookTuner` + the Playbook's oracles),
so results live in KerasTuner's project directory: an interrupted search
resumes where it stopped, `tuner.results_summary()` and TensorBoard work, and
KerasTuner's chief/worker mode spreads trials over processes. Each trial is
scored at its best epoch (Tuning Playbook); the result reads the best-epoch advice
and the borders of the ranges off the trials.

References:
    Smith 2018, arXiv:1803.09820 (the weight-decay grid).
    Johnson, EECS 498 Lecture 11, steps 4-5 (coarse and refined grids).
    Godbole et al. 2023, "Deep Learning Tuning Playbook" (best epoch,
    search-space borders).
"""

import atexit
import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile

import keras_tuner
import numpy as np
from matplotlib.figure import Figure

from keras_playbook import _validation as validation
from keras_playbook._journal import Result, to_builtin
from keras_playbook._runner import SEARCHED, stage
from keras_playbook._session import architecture_digest
from keras_playbook.tuning import analysis
from keras_playbook.tuning.hypermodel import EPOCHS, WEIGHT_DECAY_MODES, PlaybookHyperModel, PlaybookTuner
from keras_playbook.tuning.oracles import STAGE, CoarseToFineOracle, GridOracle

DEFAULT_WEIGHT_DECAYS = (0.0, 1e-5, 1e-4, 1e-3)
DEFAULT_COARSE_WEIGHT_DECAYS = (0.0, 1e-5, 1e-4)
DEFAULT_LR_FACTORS = (0.1, 0.3, 1.0, 3.0)

_MODE_WORDS = {
    "decoupled": "decoupled (the optimizer's weight_decay: w -= lr * wd * w each step)",
    "l2": "L2 penalty on kernels (wd * sum(w**2) added to the loss; what many call 'weight decay')",
}


# Running a search ----------------------------------------------------------


def tuning_role():
    """ "chief", "worker" or "single", from KerasTuner's `KERASTUNER_*` variables."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return "single"
    return "chief" if "chief" in os.environ.get("KERASTUNER_TUNER_ID", "") else "worker"


def make_objective(objective, session, caller):
    """Returns a `keras_tuner.Objective`, checked against the model's metrics.

    Raises:
        ValueError: for a metric the model does not compute or whose direction
            cannot be inferred.
    """
    if isinstance(objective, keras_tuner.Objective):
        return objective
    if not isinstance(objective, str):
        raise TypeError(
            f"{caller}: `objective` must be a metric name such as 'val_loss' or a "
            f"`keras_tuner.Objective`. Received: objective={objective!r}."
        )
    available = _metric_names(session)
    if available is not None:
        names = ["loss", "val_loss"] + [p + name for name in available for p in ("", "val_")]
        if objective not in names:
            raise ValueError(
                f"{caller}: the model does not compute {objective!r}. Available: "
                f"{names}. Compile the model (or the Playbook) with the metric, or "
                "pass a `keras_tuner.Objective`."
            )
    try:
        return keras_tuner.Oracle(objective=objective).objective
    except ValueError as error:
        raise ValueError(f"{caller}: {error}") from None


def _metric_names(session):
    metrics = session.model.get_compile_config().get("metrics")
    if metrics is None:
        return []
    if not isinstance(metrics, (list, tuple)):
        return None
    names = []
    for metric in metrics:
        if isinstance(metric, str):
            names.append(metric)
        elif isinstance(metric, dict) and "name" in metric.get("config", {}):
            names.append(metric["config"]["name"])
        else:
            return None
    return names


def check_search_inputs(caller, validation_pipeline, epochs, mode):
    """The checks every search stage shares, before any trial."""
    if validation_pipeline is None:
        raise ValueError(
            f"{caller}: trials are scored on validation data (Smith 2018: the "
            "validation loss is where the clues are), and none was given. Pass "
            "`validation_data=` to the Playbook."
        )
    validation.check_int(epochs, "epochs", caller)
    if mode not in WEIGHT_DECAY_MODES:
        raise ValueError(
            f"{caller}: argument `weight_decay_mode` must be one of "
            f"{WEIGHT_DECAY_MODES}. Received: weight_decay_mode={mode!r}."
        )


def check_weight_decays(values, caller, name="values"):
    """Raises ValueError for an empty grid or a negative / non-finite weight decay."""
    return validation.check_numbers(values, name, caller, within=">= 0", example=[0, 1e-5, 1e-4, 1e-3])


def fixed_space(values):
    """A `HyperParameters` space holding `values` as `Fixed` entries."""
    space = keras_tuner.HyperParameters()
    for name, value in values.items():
        space.Fixed(name, value.item() if isinstance(value, np.generic) else value)
    return space


def project_name_for(stage, **defining):
    """The default KerasTuner project of a search: the stage, then a digest of what defines the search.

    Two searches that differ in anything that defines them (grid, epochs,
    weight-decay mode, objective, fixed values, seeds) get different
    projects and never collide; the same search gets the same project and
    resumes.

    Example: `project_name_for("grid_weight_decay", values=[0, 1e-4], epochs=10)`
    is `"grid_weight_decay_"` followed by 8 hexadecimal digits.
    """
    text = json.dumps(to_builtin(defining), sort_keys=True, default=repr)
    return f"{stage}_{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def search_definition(session, **defining):
    """What defines a search, for its project's name and for the check when it resumes: the model and `defining`."""
    model = session.model
    return {
        "model": {"architecture": architecture_digest(model), "parameters": int(model.count_params())},
        **to_builtin(defining),
    }


DEFINITION_FILENAME = "playbook_search.json"


def check_definition(directory, project_name, definition, overwrite):
    """Refuses to resume a KerasTuner project that another search wrote; records this one's definition.

    KerasTuner resumes any project of the same name and returns its trials,
    whatever model, epochs, weight-decay mode, space or objective they were
    run with. A project this library started keeps its definition beside
    the trials (`playbook_search.json`); one that differs is refused,
    naming what differs.

    Raises:
        ValueError: when the project holds another search and `overwrite` is False.
    """
    path = os.path.join(directory, project_name, DEFINITION_FILENAME)
    definition = json.loads(json.dumps(definition, sort_keys=True, default=repr))
    if not overwrite and os.path.exists(path):
        with open(path) as file:
            recorded = json.load(file)
        differences = [
            f"{name}: {recorded.get(name)!r} -> {definition.get(name)!r}"
            for name in sorted(set(recorded) | set(definition))
            if recorded.get(name) != definition.get(name)
        ]
        if differences:
            raise ValueError(
                f"The KerasTuner project {os.path.join(directory, project_name)} holds another search ("
                + "; ".join(differences)
                + "): its trials would be read back as this one's. Pass another "
                "`project_name` (or none: the default name is unique to what defines the search), or "
                "overwrite=True to start it again."
            )
    return path, definition


def default_directory(directory):
    """The KerasTuner directory: the one given, else a new temporary folder removed when Python exits.

    A search without a directory cannot resume in another process anyway;
    its trials live on in the result (and the journal), so its folder is
    not left behind in the temporary directory. Pass `directory` (or give
    the Playbook one) to keep a search and resume it.
    """
    if directory is not None:
        return os.fspath(directory)
    path = tempfile.mkdtemp(prefix="keras_playbook_tuning_")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def run_search(session, oracle, hypermodel, *, directory, project_name, overwrite, definition, callbacks=(), verbose=0):
    """Runs a KerasTuner search and reads its trials back.

    A project that exists is resumed only if it was started for the same
    `definition` (`check_definition`).

    Returns:
        `(tuner, records, role)`: the `PlaybookTuner`, one record per trial
        (see `analysis.trial_records`; on a worker, only the trials it ran),
        and the process's role ("single", "chief" or "worker").
    """
    path, definition = check_definition(directory, project_name, definition, overwrite)
    tuner = PlaybookTuner(
        oracle,
        hypermodel,
        directory=directory,
        project_name=project_name,
        overwrite=overwrite,
        distribution_strategy=session.strategy,
    )
    if tuning_role() != "worker":
        with open(path, "w") as file:
            json.dump(definition, file, indent=2, sort_keys=True)
    tuner.search(callbacks=list(callbacks), verbose=verbose)
    role = tuning_role()
    trial_ids = tuner.ran_trial_ids if role == "worker" else None
    return tuner, analysis.trial_records(tuner, oracle.objective, trial_ids=trial_ids), role


# Results ----------------------------------------------------------------------


@dataclasses.dataclass
class SearchResult(Result):
    """What a search on KerasTuner found.

    Attributes:
        objective: The metric trials are scored on, at their best epoch.
        direction: "min" or "max".
        weight_decay_mode: "decoupled" or "l2".
        fixed: Values every trial shared (settled by earlier stages).
        trials: One record per trial: `values`, `history` (per-epoch
            metrics), `score`, `best_epoch` (1-based), `epochs`, `status`.
        best: The best trial's values (empty when no trial finished).
        best_score: Its score.
        best_epoch: Its best epoch (1-based).
        epochs_spent: Epochs trained over all trials.
        advice: Best-epoch and border advice (Tuning Playbook).
        project_dir: KerasTuner's project directory (resume, results_summary).
        role: "single", "chief" or "worker" (a worker lists its own trials).
        noise: The noise of one trial's score: the median over trials of
            their curves' epoch-to-epoch spread near the end
            (`analysis.curve_noise`); None when the runs are too short.
        meaningful: Whether the best beats every other trial by more than
            that noise allows (None when it cannot be told).
        adopted: The values settled: the best when it is meaningfully
            better, else the simplest of those tied with it (the smallest
            weight decay, the rate closest to the one settled before).
        confirmation: The seed comparison that decided `meaningful`
            (`compare_seeds`'s result as a dict), or None.
    """

    kind = "search"
    objective: str
    direction: str
    weight_decay_mode: str
    fixed: dict
    trials: list
    best: dict
    best_score: float | None
    best_epoch: int
    epochs_spent: int
    advice: list
    project_dir: str
    role: str
    ok: bool
    message: str
    # Keyword-only, after the subclasses' fields: older journals load without them.
    noise: float | None = dataclasses.field(default=None, kw_only=True)
    meaningful: bool | None = dataclasses.field(default=None, kw_only=True)
    adopted: dict = dataclasses.field(default_factory=dict, kw_only=True)
    confirmation: dict | None = dataclasses.field(default=None, kw_only=True)

    def _settles_from_search(self, names):
        if self.role == "worker" or not self.best:
            return {}
        chosen = self.adopted or self.best
        settled = {name: chosen[name] for name in names if name in chosen}
        if self.weight_decay_mode != "decoupled":
            settled.pop("weight_decay", None)
        return settled

    def table(self, names=("learning_rate", "weight_decay")):
        """The trials as text: values, score at the best epoch, best epoch / epochs."""
        names = [name for name in names if any(name in t["values"] for t in self.trials)]
        header = "  ".join(f"{name:>14}" for name in (*names, self.objective)) + "   best epoch"
        lines = [header]
        for trial in self.trials:
            cells = [_format(trial["values"].get(name)) for name in names]
            cells.append(_format(trial["score"]))
            marker = "  <- best" if trial["values"] == self.best else ""
            if self.adopted and self.adopted != self.best and trial["values"] == self.adopted:
                marker = "  <- adopted (tied with the best)"
            lines.append(
                "  ".join(f"{cell:>14}" for cell in cells) + f"   {trial['best_epoch']:>4} / {trial['epochs']}{marker}"
            )
        return "\n".join(lines)


def _format(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@dataclasses.dataclass
class WeightDecayResult(SearchResult):
    """The weight-decay grid (Smith 2018). `best["weight_decay"]` is settled (decoupled mode)."""

    kind = "grid_weight_decay"

    def settles(self):
        return self._settles_from_search(["weight_decay"])

    def plot(self):
        """The score of each weight decay, and each trial's validation curve."""
        figure = Figure(figsize=(11, 4))
        bars, curves = figure.subplots(1, 2)
        labels = [_format(trial["values"].get("weight_decay")) for trial in self.trials]
        scores = [np.nan if trial["score"] is None else trial["score"] for trial in self.trials]
        chosen = self.adopted or self.best
        colors = ["tab:green" if trial["values"] == chosen else "tab:blue" for trial in self.trials]
        band = None if self.noise is None else analysis.TIE_SIGMAS * self.noise
        bars.bar(labels, scores, color=colors, yerr=band, capsize=4 if band else 0)
        bars.set_xlabel(f"weight decay ({self.weight_decay_mode})")
        bars.set_ylabel(f"{self.objective} at the best epoch" + (" (+-2 noise)" if band else ""))
        finite = [score for score in scores if np.isfinite(score)]
        if finite and (min(finite) > 0 or max(finite) < 0):
            # Bars start at zero: a tie does not look like a win on a zoomed axis.
            low, high = min(0.0, min(finite)), max(0.0, max(finite))
            bars.set_ylim(low * 1.1, high * 1.1 + (band or 0))
        if self.meaningful is False:
            bars.set_title("a tie: no value beats the others by more than the noise", fontsize="small")
        _plot_curves(curves, self.trials, self.objective, "weight_decay")
        figure.suptitle("Weight-decay grid (Smith 2018)")
        figure.tight_layout()
        return figure


@dataclasses.dataclass
class LRWeightDecayResult(SearchResult):
    """The coarse-to-fine LR x weight-decay search (Johnson, EECS 498 Lecture 11, steps 4-5).

    Attributes:
        coarse_epochs: Epochs of each coarse trial.
        fine_epochs: Epochs of each refined trial.
    """

    kind = "tune_lr_wd"
    coarse_epochs: int
    fine_epochs: int

    def settles(self):
        return self._settles_from_search(["learning_rate", "weight_decay"])

    def stage_trials(self, stage):
        return [trial for trial in self.trials if trial["values"].get(STAGE) == stage]

    def plot(self):
        """Heat maps of the score over learning rate x weight decay, coarse and fine."""
        figure = Figure(figsize=(11, 4.5))
        for axes, phase in zip(figure.subplots(1, 2), ("coarse", "fine")):
            trials = self.stage_trials(phase)
            if not trials:
                axes.set_axis_off()
                axes.set_title(f"{stage}: no trials")
                continue
            lrs = sorted({t["values"]["learning_rate"] for t in trials})
            wds = sorted({t["values"]["weight_decay"] for t in trials})
            grid = np.full((len(wds), len(lrs)), np.nan)
            for t in trials:
                if t["score"] is not None:
                    grid[wds.index(t["values"]["weight_decay"]), lrs.index(t["values"]["learning_rate"])] = t["score"]
            cmap = "viridis" if self.direction == "max" else "viridis_r"
            image = axes.imshow(grid, cmap=cmap, aspect="auto", origin="lower")
            for (row, column), value in np.ndenumerate(grid):
                if np.isfinite(value):
                    axes.text(column, row, f"{value:.3g}", ha="center", va="center", fontsize="small", color="w")
            axes.set_xticks(range(len(lrs)), [f"{v:.2g}" for v in lrs])
            axes.set_yticks(range(len(wds)), [f"{v:.2g}" for v in wds])
            axes.set_xlabel("learning rate")
            axes.set_ylabel(f"weight decay ({self.weight_decay_mode})")
            epochs = self.coarse_epochs if stage == "coarse" else self.fine_epochs
            noise = "" if self.noise is None else f" (noise of one run {self.noise:.2g})"
            axes.set_title(f"{stage} grid, {epochs} epochs: {self.objective}{noise}", fontsize="small")
            figure.colorbar(image, ax=axes)
        figure.tight_layout()
        return figure


def _plot_curves(axes, trials, objective, label_name):
    for trial in trials:
        values = trial["history"].get(objective)
        if values:
            axes.plot(
                range(1, len(values) + 1),
                values,
                marker=".",
                label=f"{label_name}={_format(trial['values'].get(label_name))}",
            )
    axes.set_xlabel("epoch")
    axes.set_ylabel(objective)
    axes.legend(fontsize="small")


def summarize(records, objective, role):
    """Best record, epochs spent and the common part of a search message."""
    best = analysis.best_record(records, objective.direction)
    spent = int(sum(record["epochs"] for record in records))
    if role == "worker":
        head = f"This worker ran {len(records)} trial(s) ({spent} epochs); the chief's result holds the search."
    elif best is None:
        head = "No trial finished with a finite score: see KerasTuner's trial messages (tuner.results_summary())."
    else:
        head = ""
    return best, spent, head


def _result_fields(records, best, spent, objective, mode, fixed, advice, tuner, role, message):
    return dict(
        objective=objective.name,
        direction=objective.direction,
        weight_decay_mode=mode,
        fixed=dict(fixed),
        trials=records,
        best={} if best is None else dict(best["values"]),
        best_score=None if best is None else best["score"],
        best_epoch=0 if best is None else best["best_epoch"],
        epochs_spent=spent,
        advice=advice,
        project_dir=tuner.project_dir,
        role=role,
        ok=best is not None and not advice,
        message=message,
    )


# Stages -------------------------------------------------------------------------


def weight_decay_grid(
    session,
    train_pipeline,
    validation_pipeline,
    *,
    values=DEFAULT_WEIGHT_DECAYS,
    epochs=10,
    weight_decay_mode="decoupled",
    objective="val_loss",
    defaults=None,
    directory=None,
    project_name=None,
    overwrite=False,
    confirm_seeds=3,
    seed=0,
    callbacks=(),
    verbose=0,
):
    """Grid search of the weight decay with everything else fixed (Smith 2018).

    Each value trains a copy of the model from the Playbook's initial weights
    for `epochs` epochs (one KerasTuner trial each, resumable); each is scored
    at its best epoch. The best of single runs is an optimistic estimate:
    when it is not the smallest weight decay tried, the two are run again
    over `confirm_seeds` seeds (`compare_seeds`, its own project), and the
    best is adopted only when it beats the smaller value by more than
    seed-to-seed variation (Tuning Playbook); otherwise the smaller value is
    kept.

    Args:
        session: The Playbook's `Session`.
        train_pipeline: Training `DataPipeline`.
        validation_pipeline: Validation `DataPipeline` (required).
        values: Weight decays to try (>= 0; Smith 2018: 1e-3, 1e-4, 1e-5, 0).
        epochs: Epochs per trial (not tuned; Tuning Playbook).
        weight_decay_mode: "decoupled" (the optimizer's `weight_decay`) or
            "l2" (an L2 penalty on the kernels of the trial's copy).
        objective: Metric to score trials on ("val_loss", "val_accuracy", or
            a `keras_tuner.Objective`).
        defaults: Fixed values for every trial (learning rate, batch size,
            momentum ... settled by earlier stages).
        directory: KerasTuner's directory; when None, a temporary folder
            removed when Python exits (the trials stay in the result).
        project_name: KerasTuner's project name; default: the stage's name
            and a digest of what defines the search (`project_name_for`), so
            another search never collides with it and the same search
            resumes.
        overwrite: Start the project again instead of resuming.
        confirm_seeds: Seeds of the confirmation run (>= 2), or 0 to adopt
            the best single run as it is.
        seed: Seed of the trials (data order, dropout).
        callbacks: Keras callbacks for every trial (deep-copied by KerasTuner;
            a `TensorBoard` callback gets one log folder per trial).
        verbose: KerasTuner's trial display (0: silent).

    Returns:
        A `WeightDecayResult`.

    Raises:
        ValueError: for no validation data, an empty grid, a negative weight
            decay, bad epochs, mode or objective; before any trial runs.

    Example:

    ```python
    result = weight_decay_grid(session, train, validation, values=[0, 1e-4], epochs=5)
    print(result.table())
    ```
    """
    caller = "grid_weight_decay"
    check_search_inputs(caller, validation_pipeline, epochs, weight_decay_mode)
    values = check_weight_decays(values, caller)
    if confirm_seeds != 0:
        validation.check_int(confirm_seeds, "confirm_seeds", caller, minimum=2)
    objective = make_objective(objective, session, caller)
    fixed = {name: value for name, value in (defaults or {}).items() if name != "weight_decay"}
    oracle = GridOracle(
        [{"weight_decay": value} for value in values],
        objective=objective,
        hyperparameters=fixed_space(fixed),
        seed=seed,
    )
    hypermodel = PlaybookHyperModel(
        session,
        train_pipeline,
        validation_pipeline,
        defaults=fixed,
        epochs=epochs,
        weight_decay_mode=weight_decay_mode,
        seed=seed,
    )
    definition = search_definition(
        session,
        values=values,
        epochs=epochs,
        mode=weight_decay_mode,
        objective=[objective.name, objective.direction],
        fixed=fixed,
        seed=seed,
    )
    project_name = project_name or project_name_for(caller, **definition)
    tuner, records, role = run_search(
        session,
        oracle,
        hypermodel,
        directory=default_directory(directory),
        project_name=project_name,
        overwrite=overwrite,
        definition=definition,
        callbacks=callbacks,
        verbose=verbose,
    )
    best, spent, head = summarize(records, objective, role)
    noise = analysis.search_noise(records, objective.name)
    ties = analysis.ties_with_best(records, objective.direction, noise)
    adopted = min(ties, key=lambda record: record["values"]["weight_decay"]) if ties else None
    meaningful = None if best is None or noise is None else len(ties) == 1
    confirmation = None
    simplest = min(analysis.scored(records), key=lambda r: r["values"]["weight_decay"], default=None)
    if confirm_seeds and best is not None and role == "single" and simplest is not best:
        confirmation = _confirm_over_seeds(
            session,
            train_pipeline,
            validation_pipeline,
            best,
            simplest,
            confirm_seeds,
            epochs,
            weight_decay_mode,
            objective,
            fixed,
            directory,
            project_name,
            overwrite,
            callbacks,
            verbose,
        )
        meaningful = bool(confirmation["ok"])
        adopted = best if meaningful else simplest
        spent += confirmation["epochs_spent"]
    advice = []
    if best is not None and role != "worker":
        if meaningful is not False:  # Border advice on a tie would chase noise.
            advice = analysis.border_advice({"weight_decay": values}, best["values"])
        advice += analysis.epoch_advice(records)
    message = head or _weight_decay_message(
        records, best, adopted, ties, noise, objective, weight_decay_mode, advice, confirmation
    )
    return WeightDecayResult(
        **_result_fields(records, best, spent, objective, weight_decay_mode, fixed, advice, tuner, role, message),
        noise=noise,
        meaningful=meaningful,
        adopted={} if adopted is None else dict(adopted["values"]),
        confirmation=confirmation,
    )


def _confirm_over_seeds(
    session,
    train_pipeline,
    validation_pipeline,
    best,
    reference,
    seeds,
    epochs,
    mode,
    objective,
    fixed,
    directory,
    project_name,
    overwrite,
    callbacks,
    verbose,
):
    """The best single run's values against a reference's, over seeds: `compare_seeds`'s result, as a dict.

    Its `ok` is True only when the best wins by more than seed-to-seed
    variation (Tuning Playbook: is the improvement better than chance?).
    """
    from keras_playbook._stages import experiments  # It builds on this module.

    def searched(values):
        return {key: value for key, value in sorted(values.items()) if key not in fixed and key not in (STAGE, EPOCHS)}

    def name(values):
        return ", ".join(f"{key.replace('_', ' ')} {value:g}" for key, value in searched(values).items())

    configs = {name(record["values"]): searched(record["values"]) for record in (best, reference)}
    compared = experiments.seed_comparison(
        session,
        train_pipeline,
        validation_pipeline,
        configs,
        seeds=seeds,
        epochs=epochs,
        weight_decay_mode=mode,
        objective=objective,
        defaults=fixed,
        directory=directory,
        project_name=None if project_name is None else f"{project_name}_confirm",
        overwrite=overwrite,
        callbacks=callbacks,
        verbose=verbose,
    )
    confirmed = compared.ok and compared.best_config == name(best["values"])
    return {**compared.to_dict(), "ok": bool(confirmed), "reference": name(reference["values"])}


def _weight_decay_message(records, best, adopted, ties, noise, objective, mode, advice, confirmation=None):
    chosen = adopted["values"]["weight_decay"]
    without = [r for r in analysis.scored(records) if r["values"].get("weight_decay") == 0]
    comparison = ""
    if without and best["values"]["weight_decay"] != 0:
        comparison = f" ({_format(without[0]['score'])} without weight decay)"
    text = (
        f"Best weight decay {best['values']['weight_decay']:.3g}, {_MODE_WORDS[mode]}: {objective.name} "
        f"{best['score']:.4g} at epoch {best['best_epoch']} of {best['epochs']}{comparison} "
        "(Smith 2018)."
    )
    if confirmation is None:
        text += " " + _noise_sentence(best, adopted, ties, noise, "weight decay", chosen, len(analysis.scored(records)))
    elif confirmation["ok"]:
        text += " " + _confirmation_sentence(confirmation, f"weight decay {_format(chosen)}")
    if mode == "l2":
        text += (
            f" Not settled for fit: add kernel_regularizer=keras.regularizers.L2({chosen:.3g}) "
            "to your layers, or search with weight_decay_mode='decoupled'."
        )
    return " ".join([text, *advice])


def _confirmation_sentence(confirmation, kept):
    """What re-measuring the best single run over seeds showed, and what is kept."""
    seeds = len(confirmation["seeds"])
    if confirmation["ok"]:
        return f"Confirmed over {seeds} seeds against {confirmation['reference']}: {confirmation['message']}"
    return (
        f"Over {seeds} seeds it does not beat {confirmation['reference']} by more than seed-to-seed "
        f"variation, so {kept} is kept (the best of single runs is an optimistic estimate; Tuning "
        f"Playbook): {confirmation['message']}"
    )


def _noise_sentence(best, adopted, ties, noise, what, chosen, count):
    """Whether the best is meaningfully better than the rest, and what is kept (Tuning Playbook)."""
    if noise is None:
        return (
            "The runs are too short to measure their noise: treat the ranking with care, or compare the "
            "close values over seeds (compare_seeds; Tuning Playbook)."
        )
    band = analysis.TIE_SIGMAS * math.sqrt(2) * noise
    if len(ties) == 1:
        return (
            f"It beats every other value by more than the noise allows (noise of one run {noise:.3g}, from the "
            f"curves' epoch-to-epoch spread; a difference under {band:.3g} would be chance). The best of {count} "
            "single runs is still an optimistic estimate: compare_seeds re-measures it over seeds (Tuning Playbook)."
        )
    tied = ", ".join(_format(record["score"]) for record in ties)
    kept = f"the simplest {what} {_format(chosen)}" + (", also the best" if adopted is best else "")
    return (
        f"A tie: {len(ties)} values score within {band:.3g} of the best ({tied}; noise of one run {noise:.3g}, "
        f"from the curves' epoch-to-epoch spread), so none is meaningfully better; keeping {kept} "
        "(Tuning Playbook: is the improvement better than random variation?). To tell them apart, compare "
        "them over seeds (compare_seeds)."
    )


def lr_wd_grid(
    session,
    train_pipeline,
    validation_pipeline,
    *,
    learning_rate,
    learning_rates=None,
    weight_decays=DEFAULT_COARSE_WEIGHT_DECAYS,
    coarse_epochs=3,
    fine_epochs=15,
    max_extensions=2,
    weight_decay_mode="decoupled",
    objective="val_loss",
    defaults=None,
    directory=None,
    project_name=None,
    overwrite=False,
    confirm_seeds=3,
    seed=0,
    callbacks=(),
    verbose=0,
):
    """Coarse grid for a few epochs, then a refined grid trained longer (Johnson, EECS 498 Lecture 11, steps 4-5).

    The coarse grid crosses learning rates around the one that worked so far
    (`learning_rate * (0.1, 0.3, 1, 3)` unless `learning_rates` is given)
    with weight decays (Johnson: 1e-4, 1e-5, 0), `coarse_epochs` each; when
    its best cell sits on a border, the grid grows past it (up to
    `max_extensions` times; Tuning Playbook). The refined grid is centred on the
    best coarse cell (see `CoarseToFineOracle`) and trains `fine_epochs`
    each at a constant learning rate (no decay, as Johnson's step 5 says).

    Args:
        session: The Playbook's `Session`.
        train_pipeline: Training `DataPipeline`.
        validation_pipeline: Validation `DataPipeline` (required).
        learning_rate: The learning rate found so far (`find_lr`); the centre
            of the default coarse learning rates.
        learning_rates: Coarse learning rates, overriding the default.
        weight_decays: Coarse weight decays (>= 0).
        coarse_epochs: Epochs per coarse trial (Johnson: ~1-5).
        fine_epochs: Epochs per refined trial (Johnson: ~10-20).
        max_extensions: Times the coarse grid may grow past a border its
            best cell sits on (0: never).
        weight_decay_mode, objective, defaults, directory, project_name,
        overwrite, confirm_seeds, seed, callbacks, verbose: As for
            `weight_decay_grid`; the confirmation re-measures the best cell
            against the cell with the rate closest to `learning_rate` and the
            least weight decay.

    Returns:
        An `LRWeightDecayResult`; `plot()` draws the two heat maps.

    Raises:
        ValueError: for bad grids, epochs or objective, before any trial.

    Example:

    ```python
    result = lr_wd_grid(session, train, validation, learning_rate=3e-3)
    print(result.best, result.table())
    ```
    """
    caller = "tune_lr_wd"
    check_search_inputs(caller, validation_pipeline, coarse_epochs, weight_decay_mode)
    validation.check_int(fine_epochs, "fine_epochs", caller)
    validation.check_int(max_extensions, "max_extensions", caller, minimum=0)
    if confirm_seeds != 0:
        validation.check_int(confirm_seeds, "confirm_seeds", caller, minimum=2)
    if learning_rates is None:
        validation.check_number(learning_rate, "learning_rate", caller)
        learning_rates = [float(f"{learning_rate * factor:.4g}") for factor in DEFAULT_LR_FACTORS]
    learning_rates = validation.check_numbers(learning_rates, "learning_rates", caller)
    weight_decays = check_weight_decays(weight_decays, caller, "weight_decays")
    objective = make_objective(objective, session, caller)
    fixed = {name: value for name, value in (defaults or {}).items() if name not in ("learning_rate", "weight_decay")}
    oracle = CoarseToFineOracle(
        learning_rates,
        weight_decays,
        coarse_epochs=coarse_epochs,
        fine_epochs=fine_epochs,
        max_extensions=max_extensions,
        objective=objective,
        hyperparameters=fixed_space(fixed),
        seed=seed,
    )
    hypermodel = PlaybookHyperModel(
        session,
        train_pipeline,
        validation_pipeline,
        defaults=fixed,
        epochs=fine_epochs,
        weight_decay_mode=weight_decay_mode,
        seed=seed,
    )
    definition = search_definition(
        session,
        learning_rates=learning_rates,
        weight_decays=weight_decays,
        coarse_epochs=coarse_epochs,
        fine_epochs=fine_epochs,
        max_extensions=max_extensions,
        mode=weight_decay_mode,
        objective=[objective.name, objective.direction],
        fixed=fixed,
        seed=seed,
    )
    project_name = project_name or project_name_for(caller, **definition)
    tuner, records, role = run_search(
        session,
        oracle,
        hypermodel,
        directory=default_directory(directory),
        project_name=project_name,
        overwrite=overwrite,
        definition=definition,
        callbacks=callbacks,
        verbose=verbose,
    )
    fine = [record for record in records if record["values"].get(STAGE) == "fine"]
    coarse = [record for record in records if record["values"].get(STAGE) == "coarse"]
    best, spent, head = summarize(fine or coarse, objective, role)
    spent = int(sum(record["epochs"] for record in records))
    noise = analysis.search_noise(fine or coarse, objective.name)
    ties = analysis.ties_with_best(fine or coarse, objective.direction, noise)
    current = learning_rate if learning_rate is not None else (best["values"]["learning_rate"] if best else None)

    def closest(candidates):  # The rate closest to the one found, then the least weight decay.
        return min(
            candidates,
            key=lambda record: (
                abs(math.log(record["values"]["learning_rate"] / current)),
                record["values"]["weight_decay"],
            ),
            default=None,
        )

    adopted = closest(ties)
    meaningful = None if best is None or noise is None else len(ties) == 1
    confirmation = None
    reference = closest(analysis.scored(fine or coarse))
    if confirm_seeds and best is not None and role == "single" and reference is not best:
        confirmation = _confirm_over_seeds(
            session,
            train_pipeline,
            validation_pipeline,
            best,
            reference,
            confirm_seeds,
            fine_epochs if fine else coarse_epochs,
            weight_decay_mode,
            objective,
            fixed,
            directory,
            project_name,
            overwrite,
            callbacks,
            verbose,
        )
        meaningful = bool(confirmation["ok"])
        adopted = best if meaningful else reference
        spent += confirmation["epochs_spent"]
    advice, grown = [], []
    if best is not None and role != "worker":
        searched_lrs, searched_wds, grown = oracle.coarse_axes()
        coarse_noise = analysis.search_noise(coarse, objective.name)
        coarse_ties = analysis.ties_with_best(coarse, objective.direction, coarse_noise)
        if len(coarse_ties) == 1:  # Border advice on a tie would chase noise.
            advice += analysis.border_advice(
                {"learning_rate": searched_lrs, "weight_decay": searched_wds},
                coarse_ties[0]["values"],
                "coarse grid",
            )
        advice += analysis.epoch_advice(fine)
    if head:
        message = head
    else:
        message = (
            f"Best learning rate {best['values']['learning_rate']:.3g} with weight decay "
            f"{best['values']['weight_decay']:.3g} ({_MODE_WORDS[weight_decay_mode]}): "
            f"{objective.name} {best['score']:.4g} at epoch {best['best_epoch']} of "
            f"{best['epochs']}: {len(coarse)} coarse trials x {coarse_epochs} epochs, "
            f"{len(fine)} refined x {fine_epochs} (Johnson, EECS 498 Lecture 11, steps 4-5)."
        )
        values = adopted["values"]
        cell = f"learning rate {values['learning_rate']:.3g} with weight decay {values['weight_decay']:.3g}"
        if confirmation is None:
            message += " " + _noise_sentence(
                best,
                adopted,
                ties,
                noise,
                "cell (the rate closest to the one found, the least weight decay):",
                cell,
                len(fine or coarse),
            )
        else:
            message += " " + _confirmation_sentence(
                confirmation, cell + " (the rate closest to the one found, the least weight decay)"
            )
        if weight_decay_mode == "l2":
            message += " The learning rate is settled; the L2 weight decay is not (see grid_weight_decay)."
        message = " ".join([message, *grown, *advice])
    return LRWeightDecayResult(
        **_result_fields(records, best, spent, objective, weight_decay_mode, fixed, advice, tuner, role, message),
        coarse_epochs=coarse_epochs,
        fine_epochs=fine_epochs,
        noise=noise,
        meaningful=meaningful,
        adopted={} if adopted is None else dict(adopted["values"]),
        confirmation=confirmation,
    )


# The stages: the grids above with the settled values in force -----------------------

_SEARCH_READS = dict(
    requires=("learning_rate", "momentum", "beta_1"), uses=("weight_decay",), depends_on=("batch_size",)
)


@stage("grid_weight_decay", **_SEARCH_READS, given=lambda arguments: {"weight_decay": SEARCHED})
def grid_weight_decay(
    ctx, *, values, epochs, weight_decay_mode, objective, directory, project_name, overwrite, callbacks, confirm_seeds
):
    """`weight_decay_grid` at the settled learning rate, batch size and momentum (see it for the arguments)."""
    return weight_decay_grid(
        ctx.session,
        ctx.train,
        ctx.validation,
        values=values,
        epochs=epochs,
        weight_decay_mode=weight_decay_mode,
        objective=objective,
        defaults=ctx.values,
        project_name=project_name,
        overwrite=overwrite,
        confirm_seeds=confirm_seeds,
        seed=ctx.seed,
        **ctx.search_options(directory, callbacks),
    )


def _lr_wd_given(arguments):
    searched = {"weight_decay": SEARCHED}
    if arguments["learning_rate"] is not None or arguments["learning_rates"] is not None:
        searched["learning_rate"] = SEARCHED
    return searched


@stage("tune_lr_wd", **_SEARCH_READS, given=_lr_wd_given)
def tune_lr_wd(
    ctx,
    *,
    coarse_epochs,
    fine_epochs,
    learning_rate,
    learning_rates,
    weight_decays,
    max_extensions,
    weight_decay_mode,
    objective,
    directory,
    project_name,
    overwrite,
    confirm_seeds,
    callbacks,
):
    """`lr_wd_grid` around `learning_rate`, by default the settled one (see it for the arguments)."""
    defaults = dict(ctx.values)
    centre = learning_rate if learning_rate is not None else defaults.pop("learning_rate", None)
    if centre is None and learning_rates is None:
        raise ValueError(
            "tune_lr_wd: no learning rate is settled (the optimizer follows a schedule) to centre the "
            "grid on: run pb.find_lr() first, or pass `learning_rate` or `learning_rates`."
        )
    return lr_wd_grid(
        ctx.session,
        ctx.train,
        ctx.validation,
        learning_rate=centre,
        learning_rates=learning_rates,
        weight_decays=weight_decays,
        coarse_epochs=coarse_epochs,
        fine_epochs=fine_epochs,
        max_extensions=max_extensions,
        weight_decay_mode=weight_decay_mode,
        objective=objective,
        defaults=defaults,
        project_name=project_name,
        overwrite=overwrite,
        confirm_seeds=confirm_seeds,
        seed=ctx.seed,
        **ctx.search_options(directory, callbacks),
    )
