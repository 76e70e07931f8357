"""Seed-to-seed significance (Tuning Playbook) on KerasTuner: `compare_seeds` and its result.

`compare_seeds` re-runs configurations over several seeds (initialization and data order) and
asks whether their difference is larger than the variation between seeds (Welch's t-test,
`keras_playbook._significance`). `run_round` (`rounds.py`) compares the best of each scientific
value this way, and shares the checks written here.

References:
    Godbole et al. 2023, "Deep Learning Tuning Playbook" (rounds of
    experiments; seeds).
"""

import dataclasses
import math

import numpy as np
from matplotlib.figure import Figure

from keras_playbook import _validation as validation
from keras_playbook._journal import Result
from keras_playbook._runner import stage
from keras_playbook._significance import welch_t_test
from keras_playbook._stages import search, search_arguments
from keras_playbook.tuning import analysis
from keras_playbook.tuning.hypermodel import SEED, PlaybookHyperModel, base_values, check_names
from keras_playbook.tuning.oracles import GridOracle

CONFIG = "config"


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


def check_value(name, value, caller, argument):
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


def check_configs(configs, session, caller="compare_seeds"):
    """Raises unless `configs` is a dict of at least 2 named configurations of values the model takes."""
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
            check_value(key, value, caller, "configs")


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
    fingerprints=None,
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
        overwrite, callbacks, verbose, fingerprints: As for
            `weight_decay_search.weight_decay_grid`.

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
    check_configs(configs, session, caller)
    objective = search.make_objective(objective, session, caller, train_pipeline)
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
        objective,
        fingerprints,
        configs=configs,
        seeds=seed_list,
        epochs=epochs,
        mode=weight_decay_mode,
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


# The stages: the experiments above with the settled values in force ------------------

EXPERIMENT_READS = dict(
    requires=("learning_rate", "momentum", "beta_1"), uses=("weight_decay",), depends_on=("batch_size",)
)


def names_in(mappings):
    """The keys of the dicts among `mappings` (other values are checked by the stage)."""
    return {name for mapping in mappings if isinstance(mapping, dict) for name in mapping}


@stage(
    "compare_seeds",
    **EXPERIMENT_READS,
    given=search_arguments.compare_seeds_given,
    check=search_arguments.check_compare_seeds,
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
        fingerprints=search.setup_fingerprints(ctx),
        **ctx.search_options(directory, callbacks),
    )
