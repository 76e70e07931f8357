"""Rounds of experiments (Tuning Playbook) on KerasTuner: `run_round` and its result.

One round with a goal. Scientific hyperparameters are what the round measures; nuisance
hyperparameters are tuned (a KerasTuner oracle, the same budget and the same samples for every
scientific value) so the comparison is fair; fixed ones keep one value. The best of each
scientific value are compared, over seeds when asked (`experiments.seed_comparison`).

References:
    Godbole et al. 2023, "Deep Learning Tuning Playbook" (rounds of
    experiments; scientific, nuisance and fixed hyperparameters; seeds).
"""

import dataclasses
import itertools
import math
import os
import re

import keras_tuner
import numpy as np
from matplotlib.figure import Figure

from keras_playbook import _validation as validation
from keras_playbook._journal import Result
from keras_playbook._runner import SEARCHED, stage
from keras_playbook._stages import search, search_arguments
from keras_playbook._stages.experiments import (
    EXPERIMENT_READS,
    check_alpha,
    check_seeds,
    check_value,
    names_in,
    seed_comparison,
)
from keras_playbook.tuning import analysis
from keras_playbook.tuning.hypermodel import PlaybookHyperModel, check_names
from keras_playbook.tuning.oracles import declare_values

NUISANCE_ORACLES = ("random", "bayesian")
_RANGE_KINDS = ("log", "linear", "int")


@dataclasses.dataclass
class RoundResult(Result):
    """One round of experiments (Tuning Playbook): a goal, and the best of each scientific value.

    Attributes:
        goal: What the round asks.
        objective: The metric compared, at each trial's best epoch.
        direction: "min" or "max".
        scientific: The scientific hyperparameters and their values.
        nuisance: The nuisance search spaces.
        fixed: Values every trial shared.
        weight_decay_mode: "decoupled" or "l2".
        cells: One entry per scientific value: `label`, `values`,
            `best_score`, `best_values` (the nuisance values that achieved
            it), `best_epoch`, `trials`.
        best_label: The scientific value with the best score.
        comparison: The seed comparison of the cells' best configurations
            (`SeedComparisonResult.to_dict()`), or None without `seeds`.
        advice: Border and best-epoch advice.
        epochs_spent: Epochs trained over all trials (and seeds).
        project_dir: Folder of the round's KerasTuner projects.
        role: "single", "chief" or "worker".
    """

    kind = "run_round"
    goal: str
    objective: str
    direction: str
    scientific: dict
    nuisance: dict
    fixed: dict
    weight_decay_mode: str
    cells: list
    best_label: str | None
    comparison: dict | None
    advice: list
    epochs_spent: int
    project_dir: str
    role: str
    ok: bool
    message: str

    def table(self):
        """One row per scientific value: best score, best epoch, nuisance values that achieved it."""
        lines = [f"Round: {self.goal}", f"{'scientific value':>24}  {self.objective:>12}  epoch  nuisance at best"]
        for cell in self.cells:
            score = "-" if cell["best_score"] is None else f"{cell['best_score']:.4g}"
            nuisance = ", ".join(f"{k}={search.format_value(v)}" for k, v in cell["best_values"].items())
            marker = "  <- best" if cell["label"] == self.best_label else ""
            lines.append(f"{cell['label']:>24}  {score:>12}  {cell['best_epoch']:>5}  {nuisance}{marker}")
        return "\n".join(lines)

    def plot(self):
        """Best score per scientific value (mean +- std over seeds when compared)."""
        figure = Figure(figsize=(7, 4))
        axes = figure.add_subplot()
        labels = [cell["label"] for cell in self.cells]
        best = [np.nan if cell["best_score"] is None else cell["best_score"] for cell in self.cells]
        axes.plot(labels, best, "o-", label="best trial")
        if self.comparison:
            means = [self.comparison["means"].get(label, np.nan) for label in labels]
            stds = [self.comparison["stds"].get(label, np.nan) for label in labels]
            axes.errorbar(labels, means, yerr=stds, fmt="s", capsize=4, label="mean +- std over seeds")
        axes.set_xlabel(", ".join(self.scientific))
        axes.set_ylabel(f"{self.objective} at the best epoch")
        axes.set_title(self.goal)
        axes.legend(fontsize="small")
        figure.tight_layout()
        return figure


def _check_round_inputs(session, goal, scientific, nuisance, fixed, max_trials, oracle, caller):
    if not isinstance(goal, str) or not goal.strip():
        raise ValueError(
            f"{caller}: a round needs a `goal` (Tuning Playbook: each round of experiments should "
            f"have a clear goal), e.g. goal='does dropout help?'. Received: goal={goal!r}."
        )
    for argument, mapping in (("scientific", scientific), ("nuisance", nuisance), ("fixed", fixed)):
        if not isinstance(mapping, dict):
            raise ValueError(f"{caller}: `{argument}` must be a dict. Received: {argument}={mapping!r}.")
        check_names(mapping, session, caller, argument)
    if not scientific:
        raise ValueError(
            f"{caller}: `scientific` is empty: name the hyperparameter(s) whose effect "
            "the round measures, e.g. scientific={'dropout': [0.0, 0.2, 0.5]}."
        )
    groups = {"scientific": scientific, "nuisance": nuisance, "fixed": fixed}
    for first, second in itertools.combinations(groups, 2):
        both = sorted(set(groups[first]) & set(groups[second]))
        if both:
            raise ValueError(
                f"{caller}: {both} appear in both `{first}` and `{second}`: each "
                "hyperparameter is scientific, nuisance or fixed in a round (Tuning Playbook)."
            )
    for name, values in scientific.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(
                f"{caller}: scientific {name!r} needs a non-empty list of values. Received: {name}={values!r}."
            )
        for value in values:
            check_value(name, value, caller, "scientific")
    if math.prod(len(values) for values in scientific.values()) < 2:
        raise ValueError(
            f"{caller}: the scientific values give a single configuration: a round "
            f"compares at least two. Received: scientific={scientific!r}."
        )
    for name, spec in nuisance.items():
        _check_space(name, spec, caller)
    for name, value in fixed.items():
        check_value(name, value, caller, "fixed")
    validation.check_int(max_trials, "max_trials", caller)
    if oracle not in NUISANCE_ORACLES:
        raise ValueError(
            f"{caller}: `oracle` must be one of {NUISANCE_ORACLES} (KerasTuner's "
            f"RandomSearchOracle, BayesianOptimizationOracle). Received: oracle={oracle!r}."
        )


def _check_space(name, spec, caller):
    if isinstance(spec, list):
        if not spec:
            raise ValueError(f"{caller}: nuisance {name!r} has an empty list of values.")
        for value in spec:
            check_value(name, value, caller, "nuisance")
        return
    valid = (
        isinstance(spec, tuple)
        and len(spec) == 3
        and spec[0] in _RANGE_KINDS
        and all(validation.is_number(bound) for bound in spec[1:])
        and spec[1] < spec[2]
        and (spec[0] != "log" or spec[1] > 0)
    )
    if not valid:
        raise ValueError(
            f"{caller}: nuisance {name!r} must be a list of values or a range "
            "('log', low, high) with 0 < low < high, ('linear', low, high) or "
            f"('int', low, high). Received: {name}={spec!r}."
        )
    if name == "weight_decay" and spec[1] < 0:
        raise ValueError(f"{caller}: weight decay cannot be negative. Received: weight_decay={spec!r}.")


def _declare_nuisance(space, nuisance):
    for name, spec in nuisance.items():
        if isinstance(spec, list):
            declare_values(space, name, spec)
        elif spec[0] == "int":
            space.Int(name, int(spec[1]), int(spec[2]))
        else:
            space.Float(name, float(spec[1]), float(spec[2]), sampling=spec[0])


def _label(values):
    return ", ".join(f"{name}={search.format_value(value)}" for name, value in values.items())


def _slug(text):
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")[:60] or "round"


def experiment_round(
    session,
    train_pipeline,
    validation_pipeline,
    *,
    goal,
    scientific,
    nuisance=None,
    fixed=None,
    max_trials=12,
    epochs=10,
    seeds=None,
    alpha=0.05,
    oracle="random",
    weight_decay_mode="decoupled",
    objective="val_loss",
    defaults=None,
    directory=None,
    project_name=None,
    overwrite=False,
    seed=0,
    callbacks=(),
    verbose=0,
    fingerprints=None,
):
    """One round of experiments: scientific, nuisance and fixed hyperparameters (Tuning Playbook).

    For each scientific value (each combination, with several scientific
    hyperparameters), a KerasTuner oracle tunes the nuisance hyperparameters
    with the same budget (`max_trials` split evenly) and the same oracle seed,
    so every scientific value meets the same nuisance samples. Then the best
    trial of each scientific value is compared; with `seeds`, each value's
    best configuration is re-run over seeds and tested against
    seed-to-seed variation (`compare_seeds`).

    Args:
        session, train_pipeline, validation_pipeline: As for the searches.
        goal: What the round asks (Tuning Playbook: each round has a clear goal).
        scientific: Dict mapping names to lists of values to compare.
        nuisance: Dict mapping names to search spaces: a list of values, or
            `("log", low, high)`, `("linear", low, high)`, `("int", low, high)`.
        fixed: Dict mapping names to one value for every trial.
        max_trials: Trials in all, split evenly over the scientific values.
        epochs: Epochs per trial (not tuned; each trial is scored at its best epoch).
        seeds: None, or seeds (an int >= 2 or a list) to re-run each
            scientific value's best configuration with.
        alpha: Significance level when `seeds` is given.
        oracle: "random" (`RandomSearchOracle`) or "bayesian"
            (`BayesianOptimizationOracle`, needs SciPy) for the nuisance search.
        weight_decay_mode, objective, defaults, directory, overwrite,
        callbacks, verbose, fingerprints: As for
            `weight_decay_search.weight_decay_grid`.
        project_name: Folder of the round's projects under `directory`;
            defaults to a slug of the goal and a digest of the round's
            spaces, budget and settings (`project_name_for`).
        seed: Seed of the nuisance oracle and of the trials.

    Returns:
        A `RoundResult`.

    Raises:
        ValueError: for a missing goal, empty or unknown names, a name in two
            of scientific / nuisance / fixed, bad ranges, `seeds` < 2, fewer
            trials than scientific values; before any trial.

    Example:

    ```python
    result = experiment_round(session, train, validation, goal="does dropout help?",
                       scientific={"dropout": [0.0, 0.2, 0.5]},
                       nuisance={"learning_rate": ("log", 1e-3, 1e-1)},
                       fixed={"batch_size": 64}, max_trials=24, epochs=10)
    print(result.table())
    ```
    """
    caller = "run_round"
    nuisance = {} if nuisance is None else nuisance
    fixed = {} if fixed is None else fixed
    search.check_search_inputs(caller, validation_pipeline, epochs, weight_decay_mode)
    _check_round_inputs(session, goal, scientific, nuisance, fixed, max_trials, oracle, caller)
    seed_list = None if seeds is None else check_seeds(seeds, caller)
    check_alpha(alpha, caller)
    combinations = [dict(zip(scientific, values)) for values in itertools.product(*scientific.values())]
    per_cell = max_trials // len(combinations)
    if per_cell < 1:
        raise ValueError(
            f"{caller}: max_trials={max_trials} is fewer than the {len(combinations)} "
            "scientific values: each needs at least one trial. Raise `max_trials`."
        )
    objective = search.make_objective(objective, session, caller, train_pipeline)
    shared = {
        name: value
        for name, value in {**(defaults or {}), **fixed}.items()
        if name not in scientific and name not in nuisance
    }
    definition = search.search_definition(
        session,
        objective,
        fingerprints,
        scientific=scientific,
        nuisance=nuisance,
        shared=shared,
        max_trials=max_trials,
        epochs=epochs,
        seeds=seed_list,
        oracle=oracle,
        mode=weight_decay_mode,
    )
    root = os.path.join(
        search.default_directory(directory), project_name or search.project_name_for(_slug(goal), **definition)
    )
    cells, all_records, role, epochs_spent = [], [], "single", 0
    for values in combinations:
        space = search.fixed_space({**shared, **values})
        _declare_nuisance(space, nuisance)
        oracle_class = (
            keras_tuner.oracles.RandomSearchOracle
            if oracle == "random"
            else keras_tuner.oracles.BayesianOptimizationOracle
        )
        cell_oracle = oracle_class(
            # KerasTuner draws a random oracle seed for seed=0: shift by one.
            objective=objective,
            max_trials=per_cell,
            hyperparameters=space,
            seed=seed + 1,
            tune_new_entries=False,
        )
        hypermodel = PlaybookHyperModel(
            session,
            train_pipeline,
            validation_pipeline,
            defaults=shared,
            epochs=epochs,
            weight_decay_mode=weight_decay_mode,
            seed=seed,
        )
        _, records, role = search.run_search(
            session,
            cell_oracle,
            hypermodel,
            directory=root,
            project_name=_slug(_label(values)),
            overwrite=overwrite,
            definition=definition,
            callbacks=callbacks,
            verbose=verbose,
        )
        best = analysis.best_record(records, objective.direction)
        cells.append(
            {
                "label": _label(values),
                "values": values,
                "best_score": None if best is None else best["score"],
                "best_values": {}
                if best is None
                else {name: best["values"][name] for name in nuisance if name in best["values"]},
                "best_epoch": 0 if best is None else best["best_epoch"],
                "trials": records,
            }
        )
        all_records += records
    epochs_spent = int(sum(record["epochs"] for record in all_records))
    finished = [cell for cell in cells if cell["best_score"] is not None]
    if role == "worker" or len(finished) < 2:
        message = (
            f"This worker ran {len(all_records)} trial(s); the chief's result holds the round."
            if role == "worker"
            else "Fewer than two scientific values have a finished trial: see KerasTuner's trial messages."
        )
        return RoundResult(
            goal=goal,
            objective=objective.name,
            direction=objective.direction,
            scientific=_jsonable(scientific),
            nuisance=_jsonable(nuisance),
            fixed=dict(shared),
            weight_decay_mode=weight_decay_mode,
            cells=cells,
            best_label=None,
            comparison=None,
            advice=[],
            epochs_spent=epochs_spent,
            project_dir=root,
            role=role,
            ok=False,
            message=message,
        )
    pick = max if objective.direction == "max" else min
    best_cell = pick(finished, key=lambda cell: cell["best_score"])
    advice = analysis.border_advice(
        {name: list(values) for name, values in scientific.items()}, best_cell["values"], "scientific values"
    )
    advice += analysis.border_advice(
        {name: spec for name, spec in nuisance.items()}, best_cell["best_values"], "nuisance search"
    )
    advice += analysis.epoch_advice(all_records)
    comparison = None
    if seed_list is not None:
        configs = {cell["label"]: {**cell["values"], **cell["best_values"]} for cell in finished}
        compared = seed_comparison(
            session,
            train_pipeline,
            validation_pipeline,
            configs,
            seeds=seed_list,
            epochs=epochs,
            alpha=alpha,
            weight_decay_mode=weight_decay_mode,
            objective=objective,
            defaults=shared,
            directory=root,
            project_name="seeds",
            overwrite=overwrite,
            callbacks=callbacks,
            verbose=verbose,
            fingerprints=fingerprints,
        )
        comparison = compared.to_dict()
        epochs_spent += compared.epochs_spent
    message, ok = _round_message(
        goal, best_cell, finished, objective, comparison, analysis.search_noise(all_records, objective.name)
    )
    unused = max_trials - per_cell * len(combinations)
    if unused:
        message += (
            f" max_trials={max_trials} does not split evenly over the {len(combinations)} scientific values: "
            f"each got {per_cell} trials and {unused} went unused (give a multiple of {len(combinations)})."
        )
    return RoundResult(
        goal=goal,
        objective=objective.name,
        direction=objective.direction,
        scientific=_jsonable(scientific),
        nuisance=_jsonable(nuisance),
        fixed=dict(shared),
        weight_decay_mode=weight_decay_mode,
        cells=cells,
        best_label=best_cell["label"],
        comparison=comparison,
        advice=advice,
        epochs_spent=epochs_spent,
        project_dir=root,
        role=role,
        ok=ok and not advice,
        message=" ".join([message, *advice]),
    )


def _round_message(goal, best_cell, finished, objective, comparison, noise):
    others = [cell for cell in finished if cell is not best_cell]
    runner = min(others, key=lambda cell: abs(cell["best_score"] - best_cell["best_score"]))
    nuisance = _label(best_cell["best_values"]) or "no nuisance hyperparameters"
    head = (
        f"{goal} Best: {best_cell['label']} with {objective.name} {best_cell['best_score']:.4g} "
        f"(nuisance tuned: {nuisance}); next: {runner['label']} at {runner['best_score']:.4g}."
    )
    if comparison is None:
        gap = abs(best_cell["best_score"] - runner["best_score"])
        if noise is not None and gap <= analysis.TIE_SIGMAS * math.sqrt(2) * noise:
            verdict = (
                f" A tie: the gap {gap:.3g} is within the noise of single runs (noise of one run "
                f"{noise:.3g}, from the curves' epoch-to-epoch spread): no value is meaningfully better."
            )
        elif noise is not None:
            verdict = (
                f" The gap {gap:.3g} is more than the noise of single runs allows (noise of one run "
                f"{noise:.3g}), but the best of several tuned values is an optimistic estimate."
            )
        else:
            verdict = ""
        return head + verdict + (
            " Single runs per value: re-run with `seeds=5` to tell the difference from "
            "seed-to-seed variation before adopting it (Tuning Playbook)."
        ), False
    return f"{head} Over seeds: {comparison['message']}", bool(comparison["ok"])


def _jsonable(mapping):
    return {name: list(value) if isinstance(value, tuple) else value for name, value in mapping.items()}


def _round_given(arguments):
    given = dict.fromkeys(names_in([arguments["scientific"], arguments["nuisance"]]), SEARCHED)
    if isinstance(arguments["fixed"], dict):
        given.update(arguments["fixed"])
    return given


@stage("run_round", **EXPERIMENT_READS, given=_round_given, check=search_arguments.check_run_round)
def run_round(
    ctx,
    *,
    goal,
    scientific,
    nuisance,
    fixed,
    max_trials,
    epochs,
    seeds,
    alpha,
    oracle,
    weight_decay_mode,
    objective,
    directory,
    project_name,
    overwrite,
    callbacks,
):
    """`experiment_round` with the settled values for the rest (see it for the arguments)."""
    defaults = {name: value for name, value in ctx.values.items() if not isinstance(fixed, dict) or name not in fixed}
    return experiment_round(
        ctx.session,
        ctx.train,
        ctx.validation,
        goal=goal,
        scientific=scientific,
        nuisance=nuisance,
        fixed=fixed,
        max_trials=max_trials,
        epochs=epochs,
        seeds=seeds,
        alpha=alpha,
        oracle=oracle,
        weight_decay_mode=weight_decay_mode,
        objective=objective,
        defaults=defaults,
        project_name=project_name,
        overwrite=overwrite,
        seed=ctx.seed,
        fingerprints=search.setup_fingerprints(ctx),
        **ctx.search_options(directory, callbacks),
    )
