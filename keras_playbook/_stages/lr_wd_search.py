"""The coarse-to-fine learning-rate x weight-decay grid on KerasTuner: `tune_lr_wd` and its result.

Johnson's steps 4-5: a coarse grid of learning rates around the one found so far by weight
decays, for a few epochs; then a refined grid centred on the best coarse cell, trained longer at
a constant learning rate (`CoarseToFineOracle`). The result reads the best-epoch advice and the
borders of the ranges off the trials.

References:
    Johnson, EECS 498 Lecture 11, steps 4-5 (coarse and refined grids).
    Godbole et al. 2023, "Deep Learning Tuning Playbook" (best epoch, search-space borders).
"""

import dataclasses
import math

import numpy as np
from matplotlib.figure import Figure

from keras_playbook import _validation as validation
from keras_playbook._runner import SEARCHED, stage
from keras_playbook._stages import search_arguments
from keras_playbook._stages.search import (
    MODE_WORDS,
    SEARCH_READS,
    SearchResult,
    check_search_inputs,
    check_weight_decays,
    confirm_over_seeds,
    confirmation_sentence,
    default_directory,
    fixed_space,
    make_objective,
    noise_sentence,
    project_name_for,
    result_fields,
    run_search,
    search_definition,
    setup_fingerprints,
    summarize,
)
from keras_playbook.tuning import analysis
from keras_playbook.tuning.hypermodel import PlaybookHyperModel
from keras_playbook.tuning.oracles import STAGE, CoarseToFineOracle

DEFAULT_COARSE_WEIGHT_DECAYS = (0.0, 1e-5, 1e-4)


DEFAULT_LR_FACTORS = (0.1, 0.3, 1.0, 3.0)


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
    fingerprints=None,
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
        overwrite, confirm_seeds, seed, callbacks, verbose, fingerprints: As for
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
    objective = make_objective(objective, session, caller, train_pipeline)
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
        objective,
        fingerprints,
        learning_rates=learning_rates,
        weight_decays=weight_decays,
        coarse_epochs=coarse_epochs,
        fine_epochs=fine_epochs,
        max_extensions=max_extensions,
        mode=weight_decay_mode,
        fixed=fixed,
        seed=seed,
    )
    project_name = project_name or project_name_for(caller, **definition)
    directory = default_directory(directory)  # The confirmation's project goes beside the search's.
    tuner, records, role = run_search(
        session,
        oracle,
        hypermodel,
        directory=directory,
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
        confirmation = confirm_over_seeds(
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
            fingerprints,
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
            f"{best['values']['weight_decay']:.3g} ({MODE_WORDS[weight_decay_mode]}): "
            f"{objective.name} {best['score']:.4g} at epoch {best['best_epoch']} of "
            f"{best['epochs']}: {len(coarse)} coarse trials x {coarse_epochs} epochs, "
            f"{len(fine)} refined x {fine_epochs} (Johnson, EECS 498 Lecture 11, steps 4-5)."
        )
        values = adopted["values"]
        cell = f"learning rate {values['learning_rate']:.3g} with weight decay {values['weight_decay']:.3g}"
        if confirmation is None:
            message += " " + noise_sentence(
                best,
                adopted,
                ties,
                noise,
                "cell (the rate closest to the one found, the least weight decay):",
                cell,
                len(fine or coarse),
            )
        else:
            message += " " + confirmation_sentence(
                confirmation, cell + " (the rate closest to the one found, the least weight decay)"
            )
        if weight_decay_mode == "l2":
            message += " The learning rate is settled; the L2 weight decay is not (see grid_weight_decay)."
        message = " ".join([message, *grown, *advice])
    return LRWeightDecayResult(
        **result_fields(records, best, spent, objective, weight_decay_mode, fixed, advice, tuner, role, message),
        coarse_epochs=coarse_epochs,
        fine_epochs=fine_epochs,
        noise=noise,
        meaningful=meaningful,
        adopted={} if adopted is None else dict(adopted["values"]),
        confirmation=confirmation,
    )


def _lr_wd_given(arguments):
    searched = {"weight_decay": SEARCHED}
    if arguments["learning_rate"] is not None or arguments["learning_rates"] is not None:
        searched["learning_rate"] = SEARCHED
    return searched


@stage("tune_lr_wd", **SEARCH_READS, given=_lr_wd_given, check=search_arguments.check_tune_lr_wd)
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
        fingerprints=setup_fingerprints(ctx),
        **ctx.search_options(directory, callbacks),
    )
