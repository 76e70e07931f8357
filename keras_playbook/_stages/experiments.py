"""Rounds of experiments and seed-to-seed significance (Tuning Playbook), on KerasTuner.

- `compare_seeds`: re-run configurations over several seeds (initialization
  and data order) and ask whether their difference is larger than the
  variation between seeds (Welch's t-test, `keras_playbook._significance`).
- `run_round`: one round with a goal. Scientific hyperparameters are what
  the round measures; nuisance hyperparameters are tuned (a KerasTuner oracle,
  the same budget and the same samples for every scientific value) so the
  comparison is fair; fixed ones keep one value. The best of each scientific
  value are compared, over seeds when asked.

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
from keras_playbook._significance import welch_t_test
from keras_playbook._stages import search
from keras_playbook.tuning import analysis
from keras_playbook.tuning.hypermodel import SEED, PlaybookHyperModel, base_values, check_names
from keras_playbook.tuning.oracles import GridOracle, declare_values

CONFIG = "config"
NUISANCE_ORACLES = ("random", "bayesian")
_RANGE_KINDS = ("log", "linear", "int")


# Checks ---------------------------------------------------------------------------


def check_seeds(seeds, caller):
    """Returns the list of seeds: an int n >= 2 gives 0..n-1; a list needs >= 2 distinct ints."""
    if not validation.is_int(seeds) and not isinstance(seeds, (list, tuple)):
        raise ValueError(
            f"{caller}: `seeds` must be an int >= 2 or a list of at least 2 distinct "
            f"int seeds. Received: seeds={seeds!r}."
        )
    if validation.is_int(seeds):
        if seeds < 2:
            raise ValueError(
                f"{caller}: a significance test needs at least 2 seeds per "
                f"configuration (seed-to-seed variation cannot be measured from one). "
                f"Received: seeds={seeds!r}. Use seeds=5 or more."
            )
        return list(range(int(seeds)))
    if len(set(seeds)) < 2 or not all(validation.is_int(s) for s in seeds):
        raise ValueError(f"{caller}: `seeds` must hold at least 2 distinct int seeds. Received: seeds={seeds!r}.")
    return list(dict.fromkeys(seeds))


def check_alpha(alpha, caller):
    validation.check_number(alpha, "alpha", caller, within="(0, 1)", hint="e.g. 0.05")


def _check_value(name, value, caller, argument):
    if isinstance(value, np.generic):
        value = value.item()
    if not isinstance(value, (int, float, str, bool)):
        raise ValueError(
            f"{caller}: the value of {name!r} in `{argument}` must be a number, a "
            f"string or a bool. Received: {name}={value!r}."
        )
    if name == "weight_decay":
        validation.check_number(value, "weight_decay", caller, within=">= 0")
    if name in ("learning_rate", "batch_size") and not isinstance(value, str):
        validation.check_number(value, name, caller)
    return value


# compare_seeds ----------------------------------------------------------------------


@dataclasses.dataclass
class SeedComparisonResult(Result):
    """Configurations re-run over seeds, against seed-to-seed variation (Tuning Playbook).

    Attributes:
        objective: The metric compared, at each run's best epoch.
        direction: "min" or "max".
        configs: The configurations, by name.
        seeds: The seeds each configuration ran with.
        scores: Per configuration, one score per seed.
        means: Mean score per configuration.
        stds: Standard deviation over seeds per configuration.
        best_config: The configuration with the best mean.
        tests: Welch's t-test of the best against each other configuration:
            `first`, `second`, `difference`, `t`, `degrees_of_freedom`,
            `p_value`, `significant`.
        alpha: Significance level.
        weight_decay_mode: "decoupled" or "l2": how `weight_decay` values
            in the configurations were applied.
        trials: The runs (see `SearchResult.trials`).
        epochs_spent: Epochs trained over all runs.
        project_dir: KerasTuner's project directory.
        role: "single", "chief" or "worker".
    """

    kind = "compare_seeds"
    objective: str
    direction: str
    configs: dict
    seeds: list
    scores: dict
    means: dict
    stds: dict
    best_config: str | None
    tests: list
    alpha: float
    weight_decay_mode: str
    trials: list
    epochs_spent: int
    project_dir: str
    role: str
    ok: bool
    message: str

    def plot(self):
        """Every seed's score per configuration, with mean +- std."""
        figure = Figure(figsize=(7, 4))
        axes = figure.add_subplot()
        for position, name in enumerate(self.scores):
            values = self.scores[name]
            jitter = np.linspace(-0.08, 0.08, len(values)) if len(values) > 1 else [0.0]
            axes.scatter(position + np.asarray(jitter), values, alpha=0.7)
            axes.errorbar(position + 0.25, self.means[name], yerr=self.stds[name], fmt="o", color="k", capsize=4)
        axes.set_xticks(range(len(self.scores)), list(self.scores))
        axes.set_ylabel(f"{self.objective} at the best epoch")
        axes.set_title(f"{len(self.seeds)} seeds per configuration (Tuning Playbook)")
        figure.tight_layout()
        return figure


def seed_comparison(
    session,
    train_pipeline,
    validation_pipeline,
    configs,
    *,
    seeds=5,
    epochs=10,
    alpha=0.05,
    weight_decay_mode="decoupled",
    objective="val_loss",
    defaults=None,
    directory=None,
    project_name=None,
    overwrite=False,
    callbacks=(),
    verbose=0,
):
    """Is a difference between configurations larger than seed-to-seed variation? (Tuning Playbook)

    Every configuration runs once per seed; a seed sets the initial weights
    (a fresh initialization drawn with it) and the order of the training
    data, the same for every configuration (a paired design). Each run is
    scored at its best epoch. The best configuration by mean is tested
    against each other one with Welch's t-test.

    Args:
        session, train_pipeline, validation_pipeline: As for the searches.
        configs: Dict mapping a name to hyperparameter values, e.g.
            `{"wd=1e-4": {"weight_decay": 1e-4}, "wd=0": {"weight_decay": 0}}`
            (at least two). Names a configuration leaves out keep their
            settled (or the model's) value.
        seeds: Seeds per configuration: an int n >= 2 (seeds 0..n-1) or a list.
        epochs: Epochs per run.
        alpha: Significance level of the test.
        weight_decay_mode, objective, defaults, directory, project_name,
        overwrite, callbacks, verbose: As for `search.weight_decay_grid`.

    Returns:
        A `SeedComparisonResult`.

    Raises:
        ValueError: for fewer than 2 configurations or seeds, unknown names,
            a negative weight decay, bad epochs / alpha / objective; before
            any run.

    Example:

    ```python
    result = seed_comparison(session, train, validation,
                           {"wd=1e-4": {"weight_decay": 1e-4}, "wd=0": {"weight_decay": 0}},
                           seeds=5, epochs=10)
    print(result.message)
    ```
    """
    caller = "compare_seeds"
    search.check_search_inputs(caller, validation_pipeline, epochs, weight_decay_mode)
    seed_list = check_seeds(seeds, caller)
    check_alpha(alpha, caller)
    if not isinstance(configs, dict) or len(configs) < 2:
        raise ValueError(
            f"{caller}: `configs` must be a dict of at least 2 named configurations, "
            "e.g. {'wd=1e-4': {'weight_decay': 1e-4}, 'wd=0': {'weight_decay': 0}}. "
            f"Received: configs={configs!r}."
        )
    for name, config in configs.items():
        if not isinstance(name, str) or not isinstance(config, dict):
            raise ValueError(
                f"{caller}: each configuration needs a str name and a dict of values. Received: {name!r}: {config!r}."
            )
        check_names(config, session, caller, "configs")
        for key, value in config.items():
            _check_value(key, value, caller, "configs")
    objective = search.make_objective(objective, session, caller)
    defaults = dict(defaults or {})
    names = sorted({key for config in configs.values() for key in config})
    base = base_values(session, train_pipeline, defaults, names)
    fixed = {name: value for name, value in defaults.items() if name not in names}
    cells = [{CONFIG: name, SEED: seed, **base, **config} for name, config in configs.items() for seed in seed_list]
    oracle = GridOracle(cells, objective=objective, hyperparameters=search.fixed_space(fixed), seed=seed_list[0])
    hypermodel = PlaybookHyperModel(
        session,
        train_pipeline,
        validation_pipeline,
        defaults=fixed,
        epochs=epochs,
        weight_decay_mode=weight_decay_mode,
    )
    definition = search.search_definition(
        session,
        configs=configs,
        seeds=seed_list,
        epochs=epochs,
        mode=weight_decay_mode,
        objective=[objective.name, objective.direction],
        fixed=fixed,
        base=base,
    )
    project_name = project_name or search.project_name_for(caller, **definition)
    tuner, records, role = search.run_search(
        session,
        oracle,
        hypermodel,
        directory=search.default_directory(directory),
        project_name=project_name,
        overwrite=overwrite,
        definition=definition,
        callbacks=callbacks,
        verbose=verbose,
    )
    return _comparison_result(records, objective, configs, seed_list, alpha, weight_decay_mode, tuner.project_dir, role)


def _comparison_result(records, objective, configs, seed_list, alpha, mode, project_dir, role):
    grouped = analysis.scores_by(records, lambda record: record["values"].get(CONFIG))
    scores = {name: grouped.get(name, np.array([])).tolist() for name in configs}
    means = {name: float(np.mean(values)) if values else math.nan for name, values in scores.items()}
    stds = {name: float(np.std(values, ddof=1)) if len(values) > 1 else math.nan for name, values in scores.items()}
    spent = int(sum(record["epochs"] for record in records))
    fields = dict(
        objective=objective.name,
        direction=objective.direction,
        configs=configs,
        seeds=seed_list,
        scores=scores,
        means=means,
        stds=stds,
        alpha=alpha,
        weight_decay_mode=mode,
        trials=records,
        epochs_spent=spent,
        project_dir=project_dir,
        role=role,
    )
    complete = {name: values for name, values in scores.items() if len(values) >= 2}
    if role == "worker" or len(complete) < 2:
        message = (
            f"This worker ran {len(records)} run(s); the chief's result holds the comparison."
            if role == "worker"
            else f"Too few finished runs to compare (runs per configuration: "
            f"{ {name: len(values) for name, values in scores.items()} }): see KerasTuner's trial messages."
        )
        return SeedComparisonResult(**fields, best_config=None, tests=[], ok=False, message=message)
    pick = max if objective.direction == "max" else min
    best = pick(complete, key=lambda name: means[name])
    tests = []
    for other in complete:
        if other == best:
            continue
        test = welch_t_test(complete[best], complete[other])
        tests.append(
            {
                "first": best,
                "second": other,
                "difference": test.difference,
                "t": test.t,
                "degrees_of_freedom": test.degrees_of_freedom,
                "p_value": test.p_value,
                "significant": bool(test.p_value < alpha),
            }
        )
    return SeedComparisonResult(
        **fields,
        best_config=best,
        tests=tests,
        ok=all(test["significant"] for test in tests),
        message=_comparison_message(best, tests, means, stds, objective, len(seed_list), alpha),
    )


def _comparison_message(best, tests, means, stds, objective, num_seeds, alpha):
    parts = []
    for test in tests:
        other = test["second"]
        verdict = "larger than seed-to-seed variation" if test["significant"] else "within seed-to-seed variation"
        parts.append(
            f"{best!r} vs {other!r}: {objective.name} {means[best]:.4g} +- {stds[best]:.2g} vs "
            f"{means[other]:.4g} +- {stds[other]:.2g} over {num_seeds} seeds, difference "
            f"{test['difference']:+.3g}, p = {test['p_value']:.3g}: {verdict}."
        )
    if all(test["significant"] for test in tests):
        verdict = (
            f"{best!r} is better by more than seed-to-seed variation (Welch's t-test, p < {alpha}; Tuning Playbook)."
        )
    else:
        verdict = (
            f"Not every difference is larger than seed-to-seed variation (Welch's t-test at "
            f"alpha {alpha}; Tuning Playbook): do not adopt a change on these runs alone; prefer the "
            "simpler configuration or run more seeds."
        )
    return " ".join([verdict, *parts])


# run_round ----------------------------------------------------------------------------


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
            nuisance = ", ".join(f"{k}={search._format(v)}" for k, v in cell["best_values"].items())
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
            _check_value(name, value, caller, "scientific")
    if math.prod(len(values) for values in scientific.values()) < 2:
        raise ValueError(
            f"{caller}: the scientific values give a single configuration: a round "
            f"compares at least two. Received: scientific={scientific!r}."
        )
    for name, spec in nuisance.items():
        _check_space(name, spec, caller)
    for name, value in fixed.items():
        _check_value(name, value, caller, "fixed")
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
            _check_value(name, value, caller, "nuisance")
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
    return ", ".join(f"{name}={search._format(value)}" for name, value in values.items())


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
        callbacks, verbose: As for `search.weight_decay_grid`.
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
    objective = search.make_objective(objective, session, caller)
    shared = {
        name: value
        for name, value in {**(defaults or {}), **fixed}.items()
        if name not in scientific and name not in nuisance
    }
    definition = search.search_definition(
        session,
        scientific=scientific,
        nuisance=nuisance,
        shared=shared,
        max_trials=max_trials,
        epochs=epochs,
        seeds=seed_list,
        oracle=oracle,
        mode=weight_decay_mode,
        objective=[objective.name, objective.direction],
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


# The stages: the experiments above with the settled values in force ------------------

_READS = dict(requires=("learning_rate", "momentum", "beta_1"), uses=("weight_decay",), depends_on=("batch_size",))


def _names_in(mappings):
    """The keys of the dicts among `mappings` (other values are checked by the stage)."""
    return {name for mapping in mappings if isinstance(mapping, dict) for name in mapping}


@stage(
    "compare_seeds",
    **_READS,
    given=lambda arguments: dict.fromkeys(
        _names_in(arguments["configs"].values() if isinstance(arguments["configs"], dict) else []), SEARCHED
    ),
)
def compare_seeds(
    ctx, *, configs, seeds, epochs, alpha, weight_decay_mode, objective, directory, project_name, overwrite, callbacks
):
    """`seed_comparison` with the settled values for what a configuration leaves out (see it for the arguments)."""
    return seed_comparison(
        ctx.session,
        ctx.train,
        ctx.validation,
        configs,
        seeds=seeds,
        epochs=epochs,
        alpha=alpha,
        weight_decay_mode=weight_decay_mode,
        objective=objective,
        defaults=ctx.values,
        project_name=project_name,
        overwrite=overwrite,
        **ctx.search_options(directory, callbacks),
    )


def _round_given(arguments):
    given = dict.fromkeys(_names_in([arguments["scientific"], arguments["nuisance"]]), SEARCHED)
    if isinstance(arguments["fixed"], dict):
        given.update(arguments["fixed"])
    return given


@stage("run_round", **_READS, given=_round_given)
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
        **ctx.search_options(directory, callbacks),
    )
