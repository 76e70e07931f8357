"""What every search on KerasTuner shares: its definition, its run, its result and its noise check.

The search stages (`grid_weight_decay` in `weight_decay_search.py`, `tune_lr_wd` in
`lr_wd_search.py`, `run_round` in `rounds.py`, `compare_seeds` in `experiments.py`) build on it.
Every trial is a KerasTuner trial (`PlaybookTuner` + the Playbook's oracles),
so results live in KerasTuner's project directory: an interrupted search
resumes where it stopped (once `check_definition` finds it defined the same way),
`tuner.results_summary()` and TensorBoard work, and KerasTuner's chief/worker mode
spreads trials over processes. Each trial is scored at its best epoch (Tuning Playbook);
a winner within the seed-to-seed noise is confirmed over more seeds before it is adopted.

References:
    Godbole et al. 2023, "Deep Learning Tuning Playbook" (best epoch,
    search-space borders, noise between seeds).
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

from keras_playbook import _validation as validation
from keras_playbook._journal import Result, to_builtin
from keras_playbook._lock import tuning_worker
from keras_playbook._loss_key import logged_loss_key, own_step, validation_key
from keras_playbook._session import architecture_digest, innermost_optimizer
from keras_playbook.tuning import analysis
from keras_playbook.tuning.hypermodel import EPOCHS, WEIGHT_DECAY_MODES, PlaybookTuner
from keras_playbook.tuning.oracles import STAGE

MODE_WORDS = {
    "decoupled": "decoupled (the optimizer's weight_decay: w -= lr * wd * w each step)",
    "l2": "L2 penalty on kernels (wd * sum(w**2) added to the loss; what many call 'weight decay')",
}


# Running a search ----------------------------------------------------------


def tuning_role():
    """ "chief", "worker" or "single", from KerasTuner's `KERASTUNER_*` variables."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return "single"
    return "worker" if tuning_worker() else "chief"


def make_objective(objective, session, caller, pipeline=None):
    """Returns a `keras_tuner.Objective`, checked against the model's metrics.

    "loss" and "val_loss" name the loss where the model logs it: for a model
    whose own step logs it as `total_loss`, "val_loss" becomes
    "val_total_loss" (`_loss_key.logged_loss_key`, found on `pipeline`; the
    key given or found so far without it).

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
    if objective in ("loss", validation_key("loss")):
        if pipeline is not None:
            key = logged_loss_key(session, pipeline)
        else:
            key = session.loss_key or session.logged_loss_key or "loss"
        objective = key if objective == "loss" else validation_key(key)
        if key != "loss":  # KerasTuner infers a direction only for names it knows.
            return keras_tuner.Objective(objective, direction="min")
    available = None if own_step(session.model) else _metric_names(session)  # Its own step names its logs.
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

    Two searches that differ in anything that defines them
    (`search_definition`: model, data, loss, optimizer, objective, grid,
    epochs, weight-decay mode, fixed values, seeds) get different projects
    and never collide; the same search gets the same project and
    resumes.

    Example: `project_name_for("grid_weight_decay", values=[0, 1e-4], epochs=10)`
    is `"grid_weight_decay_"` followed by 8 hexadecimal digits.
    """
    text = json.dumps(to_builtin(defining), sort_keys=True, default=repr)
    return f"{stage}_{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def setup_fingerprints(ctx):
    """The current set-up's fingerprints (`SetupRecord.fingerprints`: data, loss, ...), for a search's definition."""
    return dict(getattr(ctx.journal.setup, "fingerprints", None) or {})


def search_definition(session, objective, fingerprints=None, **defining):
    """What defines a search, for its project's name and for the check when it resumes.

    The model (its architecture and size, and the set-up's fingerprint of
    its layers' configs), the data and the loss the trials train on
    (`fingerprints`, the set-up's: a digest of the training and validation
    data, the loss's configuration), the replicas (the global batch is the
    per-replica one times them), the optimizer's class, the
    objective, the metric it reads (only when it reads one: a search scored
    on the loss is the same search whatever metrics ride along), and
    `defining`.

    Args:
        session: The Playbook's `Session`.
        objective: The `keras_tuner.Objective` trials are scored on.
        fingerprints: The set-up record's fingerprints (`"model"`, `"data"`,
            `"loss"`, `"replicas"`), or None when there is no set-up record.
        **defining: What else defines the search (grid, epochs, mode, ...).
    """
    model = session.model
    fingerprints = fingerprints or {}
    definition = {
        "model": {
            "architecture": architecture_digest(model),
            "parameters": int(model.count_params()),
            "config": fingerprints.get("model"),
        },
        "data": fingerprints.get("data"),
        "loss": fingerprints.get("loss"),
        "replicas": fingerprints.get("replicas", session.num_replicas),
        "optimizer": type(innermost_optimizer(model.optimizer)).__name__,
        "objective": [objective.name, objective.direction],
    }
    metric = _objective_metric(model, objective.name)
    if metric is not None:
        definition["metric"] = metric
    return {**to_builtin(definition), **to_builtin(defining)}


def _objective_metric(model, name):
    """The compiled metric(s) an objective reads, or None when it reads the loss (or no metric is compiled)."""
    base = name[len("val_") :] if name.startswith("val_") else name
    if base == "loss":
        return None
    config = model.get_compile_config() or {}
    compiled = [config.get("metrics"), config.get("weighted_metrics")]
    if not any(compiled):
        return None
    flat = [metric for metrics in compiled if isinstance(metrics, (list, tuple)) for metric in metrics]
    named = [
        metric
        for metric in flat
        if metric == base or (isinstance(metric, dict) and metric.get("config", {}).get("name") == base)
    ]
    # A name found in no flat list (several outputs, a dict of metrics): all of them, to be safe.
    return named or [metrics for metrics in compiled if metrics]


DEFINITION_FILENAME = "playbook_search.json"


def check_definition(directory, project_name, definition, overwrite):
    """Refuses to resume a KerasTuner project that another search wrote.

    KerasTuner resumes any project of the same name and returns its trials,
    whatever model, data, loss, optimizer, epochs, weight-decay mode, space
    or objective they were run with. A project this library started keeps
    its definition beside the trials (`playbook_search.json`, written by
    `run_search`); one that differs is refused, naming what differs.

    Returns:
        The definition as JSON holds it (what `run_search` records).

    Raises:
        ValueError: when the project holds another search and `overwrite` is False.
    """
    path = os.path.join(directory, project_name, DEFINITION_FILENAME)
    definition = json.loads(json.dumps(definition, sort_keys=True, default=repr))
    if not overwrite and os.path.exists(path):
        with open(path) as file:
            recorded = json.load(file)
        differences = [
            f"{name}: " + ", ".join(_changes(recorded.get(name), definition.get(name)))
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
    return definition


def _changes(old, new, keys=()):
    """What differs between two JSON values: "old -> new", or per differing key of two dicts ("y 'a1' -> 'b2'")."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            change
            for key in sorted(set(old) | set(new))
            if old.get(key) != new.get(key)
            for change in _changes(old.get(key), new.get(key), (*keys, key))
        ]
    where = "/".join(keys) + " " if keys else ""
    return [f"{where}{old!r} -> {new!r}"]


def record_definition(project_dir, definition):
    """Writes a search's definition into its project folder (atomically: a kill leaves the old file or the new)."""
    os.makedirs(project_dir, exist_ok=True)
    path = os.path.join(project_dir, DEFINITION_FILENAME)
    with tempfile.NamedTemporaryFile("w", dir=project_dir, suffix=".tmp", delete=False) as file:
        json.dump(definition, file, indent=2, sort_keys=True)
    os.replace(file.name, path)


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
    `definition` (`check_definition`); the definition is written into the
    project once KerasTuner has made (or, with `overwrite=True`, cleared)
    its folder.

    Returns:
        `(tuner, records, role)`: the `PlaybookTuner`, one record per trial
        (see `analysis.trial_records`; on a worker, only the trials it ran),
        and the process's role ("single", "chief" or "worker").
    """
    definition = check_definition(directory, project_name, definition, overwrite)
    tuner = PlaybookTuner(
        oracle,
        hypermodel,
        directory=directory,
        project_name=project_name,
        overwrite=overwrite,
        distribution_strategy=session.strategy,
    )
    if tuning_role() != "worker":
        # After the tuner: with `overwrite=True` it has just removed the project folder.
        record_definition(tuner.project_dir, definition)
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
            cells = [format_value(trial["values"].get(name)) for name in names]
            cells.append(format_value(trial["score"]))
            marker = "  <- best" if trial["values"] == self.best else ""
            if self.adopted and self.adopted != self.best and trial["values"] == self.adopted:
                marker = "  <- adopted (tied with the best)"
            lines.append(
                "  ".join(f"{cell:>14}" for cell in cells) + f"   {trial['best_epoch']:>4} / {trial['epochs']}{marker}"
            )
        return "\n".join(lines)


def format_value(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


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


def result_fields(records, best, spent, objective, mode, fixed, advice, tuner, role, message):
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


def confirm_over_seeds(
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
    fingerprints=None,
):
    """The best single run's values against a reference's, over seeds: `compare_seeds`'s result, as a dict.

    It runs in its own project, `<project_name>_confirm` in the search's
    `directory` (started again with `overwrite`, like the search's).

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
        fingerprints=fingerprints,
    )
    confirmed = compared.ok and compared.best_config == name(best["values"])
    return {**compared.to_dict(), "ok": bool(confirmed), "reference": name(reference["values"])}


def confirmation_sentence(confirmation, kept):
    """What re-measuring the best single run over seeds showed, and what is kept."""
    seeds = len(confirmation["seeds"])
    if confirmation["ok"]:
        return f"Confirmed over {seeds} seeds against {confirmation['reference']}: {confirmation['message']}"
    return (
        f"Over {seeds} seeds it does not beat {confirmation['reference']} by more than seed-to-seed "
        f"variation, so {kept} is kept (the best of single runs is an optimistic estimate; Tuning "
        f"Playbook): {confirmation['message']}"
    )


def noise_sentence(best, adopted, ties, noise, what, chosen, count):
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
    tied = ", ".join(format_value(record["score"]) for record in ties)
    kept = f"the simplest {what} {format_value(chosen)}" + (", also the best" if adopted is best else "")
    return (
        f"A tie: {len(ties)} values score within {band:.3g} of the best ({tied}; noise of one run {noise:.3g}, "
        f"from the curves' epoch-to-epoch spread), so none is meaningfully better; keeping {kept} "
        "(Tuning Playbook: is the improvement better than random variation?). To tell them apart, compare "
        "them over seeds (compare_seeds)."
    )


# The stages: the grids above with the settled values in force -----------------------

SEARCH_READS = dict(
    requires=("learning_rate", "momentum", "beta_1"), uses=("weight_decay",), depends_on=("batch_size",)
)
