"""The weight-decay grid (Smith 2018) on KerasTuner: `grid_weight_decay` and its result.

With learning rate, batch size and momentum fixed, try weight decays 0, 1e-5, 1e-4, 1e-3 for a
few epochs each and keep the best, scored at each trial's best epoch; a winner within the
seed-to-seed noise is confirmed over more seeds before it is adopted.

References:
    Smith 2018, arXiv:1803.09820 (the weight-decay grid).
    Godbole et al. 2023, "Deep Learning Tuning Playbook" (best epoch, noise between seeds).
"""

import dataclasses

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
    format_value,
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
from keras_playbook.tuning.oracles import GridOracle

DEFAULT_WEIGHT_DECAYS = (0.0, 1e-5, 1e-4, 1e-3)


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
        labels = [format_value(trial["values"].get("weight_decay")) for trial in self.trials]
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


def _plot_curves(axes, trials, objective, label_name):
    for trial in trials:
        values = trial["history"].get(objective)
        if values:
            axes.plot(
                range(1, len(values) + 1),
                values,
                marker=".",
                label=f"{label_name}={format_value(trial['values'].get(label_name))}",
            )
    axes.set_xlabel("epoch")
    axes.set_ylabel(objective)
    axes.legend(fontsize="small")


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
    fingerprints=None,
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
        overwrite: Start the project again instead of resuming (the
            confirmation's project too).
        confirm_seeds: Seeds of the confirmation run (>= 2), or 0 to adopt
            the best single run as it is.
        seed: Seed of the trials (data order, dropout).
        callbacks: Keras callbacks for every trial (deep-copied by KerasTuner;
            a `TensorBoard` callback gets one log folder per trial).
        verbose: KerasTuner's trial display (0: silent).
        fingerprints: The set-up record's fingerprints
            (`SetupRecord.fingerprints`): the data and the loss the trials
            train on are part of what defines the search
            (`search_definition`), so a project of other data or another
            loss is not resumed. None outside a Playbook.

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
    objective = make_objective(objective, session, caller, train_pipeline)
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
        objective,
        fingerprints,
        values=values,
        epochs=epochs,
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
    best, spent, head = summarize(records, objective, role)
    noise = analysis.search_noise(records, objective.name)
    ties = analysis.ties_with_best(records, objective.direction, noise)
    adopted = min(ties, key=lambda record: record["values"]["weight_decay"]) if ties else None
    meaningful = None if best is None or noise is None else len(ties) == 1
    confirmation = None
    simplest = min(analysis.scored(records), key=lambda r: r["values"]["weight_decay"], default=None)
    if confirm_seeds and best is not None and role == "single" and simplest is not best:
        confirmation = confirm_over_seeds(
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
            fingerprints,
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
        **result_fields(records, best, spent, objective, weight_decay_mode, fixed, advice, tuner, role, message),
        noise=noise,
        meaningful=meaningful,
        adopted={} if adopted is None else dict(adopted["values"]),
        confirmation=confirmation,
    )


def _weight_decay_message(records, best, adopted, ties, noise, objective, mode, advice, confirmation=None):
    chosen = adopted["values"]["weight_decay"]
    without = [r for r in analysis.scored(records) if r["values"].get("weight_decay") == 0]
    comparison = ""
    if without and best["values"]["weight_decay"] != 0:
        comparison = f" ({format_value(without[0]['score'])} without weight decay)"
    text = (
        f"Best weight decay {best['values']['weight_decay']:.3g}, {MODE_WORDS[mode]}: {objective.name} "
        f"{best['score']:.4g} at epoch {best['best_epoch']} of {best['epochs']}{comparison} "
        "(Smith 2018)."
    )
    if confirmation is None:
        text += " " + noise_sentence(best, adopted, ties, noise, "weight decay", chosen, len(analysis.scored(records)))
    else:  # Confirmed or not, the message says what the seeds showed and what is kept.
        text += " " + confirmation_sentence(confirmation, f"weight decay {format_value(chosen)}")
    if mode == "l2":
        text += (
            f" Not settled for fit: add kernel_regularizer=keras.regularizers.L2({chosen:.3g}) "
            "to your layers, or search with weight_decay_mode='decoupled'."
        )
    return " ".join([text, *advice])


@stage(
    "grid_weight_decay",
    **SEARCH_READS,
    given=lambda arguments: {"weight_decay": SEARCHED},
    check=search_arguments.check_grid_weight_decay,
)
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
        fingerprints=setup_fingerprints(ctx),
        **ctx.search_options(directory, callbacks),
    )
