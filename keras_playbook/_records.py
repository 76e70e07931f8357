"""Journal records the Playbook writes itself: its set-up and each `fit`."""

import dataclasses

import numpy as np
from matplotlib.figure import Figure

from keras_playbook import _references as references
from keras_playbook._diagnosis import SEVERE, too_short
from keras_playbook._fingerprints import differences as fingerprint_differences
from keras_playbook._journal import Result
from keras_playbook._loss_key import loss_key_in, validation_key


@dataclasses.dataclass
class SetupRecord(Result):
    """How the Playbook runs: strategy, replicas, batch sizes, data, model.

    Attributes:
        strategy: Class name of the `tf.distribute` strategy.
        num_replicas: Replicas in sync.
        per_replica_batch_size: Examples per replica per step.
        global_batch_size: Examples per step over all replicas.
        num_train_examples: Training examples, or None when unknown.
        num_validation_examples: Validation examples, None when unknown or absent.
        model_name: The model's name.
        num_parameters: Parameters of the model.
        loss: Name of the compiled loss.
        optimizer: Optimizer config, as `get_config()` returns it.
        architecture: A digest of the model's layers (class, weight shapes,
            in order): the same model built again has the same one.
        initial_values: The optimizer's learning rate (unless it follows a
            schedule), momentum / beta_1 and weight decay as compiled: what
            holds until a stage settles another value. The journal, not
            the live optimizer (which a schedule moves), is where every
            stage reads them.
        fingerprints: What defines every result of this set-up, one entry
            per component: "data" (by value), "model" (the layers' configs),
            "loss", "optimizer" (class and initial config), "batch_size",
            "seed", "replicas" (see `keras_playbook._fingerprints`). A
            journal carried on by a Playbook whose fingerprints differ gets a
            new set-up record, and what came before is history.
        layers: One `"Class:digest"` per layer, to name the layer that changed.
        initial_weights: `{"digest", "file"}`: the model's initial weights and
            the file beside the journal that holds them (None without a
            directory). A later run of the same set-up starts from them.
        notes: What could not be fingerprinted (a dataset read in a random
            order, a model without `get_config`, data sampled by size).
        steps_per_epoch: Training batches per epoch given to the Playbook
            (as `model.fit` takes it), or None for one pass over the data.
        validation_steps: Validation batches per evaluation, or None.
    """

    kind = "setup"
    strategy: str
    num_replicas: int
    per_replica_batch_size: int
    global_batch_size: int
    num_train_examples: int | None
    num_validation_examples: int | None
    model_name: str
    num_parameters: int
    loss: str
    optimizer: dict
    ok: bool
    message: str

    architecture: str = dataclasses.field(default="", kw_only=True)
    initial_values: dict = dataclasses.field(default_factory=dict, kw_only=True)
    fingerprints: dict = dataclasses.field(default_factory=dict, kw_only=True)
    layers: list = dataclasses.field(default_factory=list, kw_only=True)
    initial_weights: dict = dataclasses.field(default_factory=dict, kw_only=True)
    notes: list = dataclasses.field(default_factory=list, kw_only=True)
    steps_per_epoch: int | None = dataclasses.field(default=None, kw_only=True)
    validation_steps: int | None = dataclasses.field(default=None, kw_only=True)

    def settles(self):
        return {"batch_size": self.per_replica_batch_size, **self.initial_values}

    def differences(self, other):
        """What differs between this set-up and `other`, one line per component ("model: layer 3 ...")."""
        if not self.fingerprints:
            return ["the set-up was recorded by an earlier version of keras-playbook, without its fingerprints"]
        return fingerprint_differences(self.fingerprints, other.fingerprints, self.layers, other.layers)


@dataclasses.dataclass
class FitRecord(Result):
    """One real training run of the user's model through `Playbook.fit`.

    Attributes:
        epochs: Epochs run.
        hyperparameters: Settled values and overrides applied to this run.
        history: `History.history`: a list of per-epoch values per metric.
        monitor: Metric used to pick `best_epoch` ("val_loss" or "loss", or
            `val_<loss_key>`/`<loss_key>`; None when no loss could be read).
        best_epoch: 1-based epoch with the lowest `monitor`.
        schedule: The learning-rate schedule callback (`name`, `config`), or
            None for a constant rate.
        findings: What the watchers saw (`diagnose`, the update-ratio and
            weight-decay monitors): dicts with `kind`, `epochs`, `evidence`,
            `advice`.
        initial_loss: The training loss on a sample before the first step
            (None when not measured).
        restored_best: Whether the model was given back the weights of its
            best epoch at the end (`fit(restore_best=True)`).
        weights: The trained weights' file, relative to the journal's
            folder (None without a Playbook directory).
        resumed_from: None for a run from its first epoch; else the 1-based
            epoch an interrupted run was resumed at from its backup (the
            epochs before it were read back: weights, optimizer, the
            callbacks' state and the curves).

    A run is OK when its curves are finite and no finding says it did not
    work (`diagnosis.SEVERE`: diverged, the rate too high or far too low,
    worse after convergence, weight decay winning); the other findings are
    advice on a run that worked. A run too short for the curves' shape
    (under `diagnosis.WINDOW` epochs) is judged only against the untrained
    model's loss, and its message says what needs more epochs.
    """

    kind = "fit"
    epochs: int
    hyperparameters: dict
    history: dict
    monitor: str | None
    best_epoch: int
    ok: bool
    message: str
    schedule: dict | None = None
    findings: list = dataclasses.field(default_factory=list)
    initial_loss: float | None = None
    restored_best: bool = False
    weights: str | None = None
    resumed_from: int | None = None

    @classmethod
    def from_history(
        cls,
        history,
        hyperparameters,
        schedule=None,
        findings=(),
        initial_loss=None,
        restored_best=False,
        weights=None,
        resumed_from=None,
        loss_key=None,
    ):
        """Builds the record of a finished `model.fit` from its History.

        The loss is read at `loss_key` (`_loss_key.loss_key_in`; None finds
        it); a History whose loss cannot be read is still recorded, with
        `ok=False`, `monitor=None` and a message saying what to pass.
        """
        curves = {name: [float(value) for value in values] for name, values in history.history.items()}
        try:
            key = loss_key_in(curves, loss_key, "the History of fit")
        except ValueError as error:
            key, unreadable = None, str(error)
        monitor = None if key is None else validation_key(key) if validation_key(key) in curves else key
        values = np.asarray(curves.get(monitor, []), dtype=float)
        epochs = len(values) if key is not None else max((len(value) for value in curves.values()), default=0)
        finite = key is not None and bool(epochs) and bool(np.all(np.isfinite(values)))
        best_epoch = int(np.nanargmin(values)) + 1 if np.isfinite(values).any() else 0
        findings = [dict(finding) for finding in findings]
        severe = [
            finding
            for finding in findings
            if finding["kind"] in SEVERE and not finding["evidence"].get("recovered", False)
        ]
        if key is None:
            message = f"Trained {epochs} epochs, but no loss could be judged. {unreadable}"
        elif not finite:
            message = (
                f"Training produced a non-finite {monitor}: lower the learning rate "
                f"(a loss that explodes means a rate too high; {references.johnson(2)})."
            )
        else:
            settled = ", ".join(
                f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}"
                for key, value in sorted(hyperparameters.items())
            )
            verdict = "Training did not work:" if severe else "Trained"
            message = (
                f"{verdict} {epochs} epochs ({settled or 'model defaults'}"
                f"{', schedule ' + schedule['name'] if schedule else ''}); final "
                f"{monitor} {values[-1]:.4g}, best {values.min():.4g} at epoch "
                f"{best_epoch}" + (", whose weights the model now holds." if restored_best else ".")
            )
        if resumed_from and int(resumed_from) >= epochs:
            message += (
                f" Resumed from its backup after an interruption with all {epochs} epochs on disk: nothing was "
                "left to train (weights, optimizer, schedule and watchers read back)."
            )
        elif resumed_from:
            message += (
                f" Resumed at epoch {int(resumed_from) + 1} from its backup after an interruption (epochs 1-"
                f"{int(resumed_from)}: weights, optimizer, schedule and watchers read back)."
            )
        for finding in (severe + [f for f in findings if f not in severe])[:3]:
            message += f" {finding['kind']}: {finding['advice']}"
        if len(findings) > 3:
            message += f" (+{len(findings) - 3} more in `findings`)"
        if finite and too_short(epochs):
            message += " " + too_short(epochs, untrained_known=initial_loss is not None)
        return cls(
            epochs=epochs,
            hyperparameters=dict(hyperparameters),
            history=curves,
            monitor=monitor,
            best_epoch=best_epoch,
            ok=finite and not severe,
            message=message,
            schedule=schedule,
            findings=findings,
            initial_loss=None if initial_loss is None else float(initial_loss),
            restored_best=bool(restored_best),
            weights=weights,
            resumed_from=None if not resumed_from else int(resumed_from) + 1,
        )

    def plot(self):
        """Learning curves: one panel per metric, training and validation together."""
        names = [name for name in self.history if not name.startswith("val_")]
        figure = Figure(figsize=(5 * max(len(names), 1), 4))
        for index, name in enumerate(names, start=1):
            axes = figure.add_subplot(1, len(names), index)
            epochs = range(1, len(self.history[name]) + 1)
            axes.plot(epochs, self.history[name], label=f"training {name}")
            if f"val_{name}" in self.history:
                axes.plot(epochs, self.history[f"val_{name}"], label=f"validation {name}")
            axes.set_xlabel("epoch")
            axes.set_title(name)
            axes.legend()
        return figure


@dataclasses.dataclass
class RunResult(Result):
    """What `Playbook.run` did and decided.

    Attributes:
        plan: The calls planned, in order: `{"stage", "arguments"}`.
        steps: One dict per stage reached: `stage`, `ok`, `skipped` (read
            back from the journal instead of run again), `seconds`, `steps`
            (training steps), `summary` (its message).
        settled: The values the run's final training (`fit`, or `fine_tune`'s
            last `fit`) trained at, read back or run, each with the stage
            that settled it, or the training stage it was given to:
            `{name: {"value", "stage"}}` (a rate a one-cycle schedule
            drove has `"schedule"` too, and its bounds as the value).
            Without a training stage: the values the journal settled.
        final: The final training's metrics at its best epoch (empty when no
            training ran).
        best_epoch: That epoch (0 without training).
        findings: The final training's findings (`FitRecord.findings`).
        stopped: The sanity stage whose failed verdict stopped the run, or None.
        notes: What the run says before its decisions: the set-up that
            changed since the journal's last run (its earlier results are
            history), initial weights loaded from the journal's folder,
            callbacks left out of what identifies a call.
    """

    kind = "run"
    plan: list
    steps: list
    settled: dict
    final: dict
    best_epoch: int
    findings: list
    stopped: str | None
    ok: bool
    message: str
    notes: list = dataclasses.field(default_factory=list, kw_only=True)

    @classmethod
    def from_journal(cls, journal, steps, stopped=None, plan=(), notes=(), trained=None):
        """Builds the result of a run from its steps and what the journal now holds.

        Args:
            trained: The result of the run's last training stage (run or
                read back), or None: what `settled`, `final` and the
                message describe. The journal's latest values may have been
                settled since, by a stage called by hand.
        """
        fit = _final_fit(journal, trained)
        settled = _trained_at(journal, fit) if fit is not None else {}
        if fit is None:
            for name, value in journal.settled().items():
                settled[name] = {"value": value, "stage": _source_name(journal.source(name))}
        final, best_epoch, findings = {}, 0, []
        if fit is not None and fit.best_epoch:
            final = {
                name: values[fit.best_epoch - 1]
                for name, values in fit.history.items()
                if len(values) >= fit.best_epoch
            }
            best_epoch, findings = fit.best_epoch, list(fit.findings)
        failed = [step for step in steps if not step["ok"]]
        skipped = sum(step["skipped"] for step in steps)
        done = f"Ran {len(steps) - skipped} stage(s)" + (f", read {skipped} back from the journal" if skipped else "")
        if stopped is not None:
            summary = next(step["summary"] for step in steps if step["stage"] == stopped)
            message = (
                f"Stopped at {stopped}: {summary} The stages after it would build on this; fix it and run "
                "again (finished stages are read back), or run(stop_on_failure=False) to go on."
            )
        else:
            decisions = "; ".join(_decision(name, entry) for name, entry in settled.items())
            message = f"{done}. Decisions: {decisions}."
            if fit is not None:
                validated = any(name.startswith("val_") for name in final)  # Then only those: val_<loss key>, ...
                metrics = ", ".join(
                    f"{name} {_shown(value)}"
                    for name, value in final.items()
                    if name.startswith("val_") or not validated
                )
                message += f" Final training: {fit.epochs} epochs, best epoch {best_epoch} ({metrics})" + (
                    "; the model holds its weights." if fit.restored_best else "."
                )
            for finding in findings[:3]:
                message += f" {finding['kind']}: {finding['advice']}"
            if failed:
                message += " Check: " + ", ".join(step["stage"] for step in failed) + " (see their messages)."
        message = " ".join([*notes, message])
        return cls(
            plan=list(plan),
            steps=list(steps),
            settled=settled,
            final=final,
            best_epoch=best_epoch,
            findings=findings,
            stopped=stopped,
            ok=stopped is None and (fit is None or fit.ok),
            message=message,
            notes=list(notes),
        )

    def table(self):
        """Returns the stages as text: verdict, read back or run, seconds, training steps."""
        lines = ["stage                  verdict  how        seconds   steps"]
        for step in self.steps:
            how = "journal" if step["skipped"] else "ran"
            lines.append(
                f"{step['stage']:<22} {'OK' if step['ok'] else 'CHECK':<8} {how:<10} "
                f"{step['seconds']:7.1f} {step['steps']:7d}"
            )
        return "\n".join(lines)


_WORDS = {"batch_size": "batch size", "learning_rate": "learning rate", "weight_decay": "weight decay"}


def _source_name(source):
    return "the model as compiled" if source.kind == "setup" else source.kind


def _final_fit(journal, trained):
    """The `FitRecord` of the training `trained` is (a `fit`) or ends with (`fine_tune`'s last `fit`), or None."""
    if trained is None or isinstance(trained, FitRecord):
        return trained
    index = next(position for position, result in enumerate(journal) if result is trained)
    return next((result for result in reversed(journal[journal.start : index]) if result.kind == "fit"), None)


def _trained_at(journal, fit):
    """The values `fit` trained at, `{name: {"value", "stage"}}`, from its call (what it read, overrides included).

    A value given to the training (an override of `fit`, `fine_tune`'s
    rate) is named by that stage; a settled one by the latest stage before
    the training that settled that value.
    """
    call = fit.call or {}
    index = next(position for position, result in enumerate(journal) if result is fit)
    earlier = journal[journal.start : index]
    given = dict(call.get("arguments", {}).get("overrides", {}))
    stage = call.get("parent") or "fit"
    settled = {}
    for name, value in dict(call.get("read", fit.hyperparameters)).items():
        source = next((result for result in reversed(earlier) if result.settles().get(name, object()) == value), None)
        settled[name] = {"value": value, "stage": stage if name in given or source is None else _source_name(source)}
    bounds = ((fit.schedule or {}).get("config") or {}).get("lr_bounds")
    if "learning_rate" not in settled and bounds is not None:  # One cycle: the schedule set every step's rate.
        source = next((result for result in reversed(earlier) if "learning_rate" in result.settles()), None)
        settled["learning_rate"] = {
            "value": [float(bound) for bound in bounds],
            "stage": stage if source is None else _source_name(source),
            "schedule": fit.schedule["name"],
        }
    return settled


def _decision(name, entry):
    if "schedule" in entry:
        lower, upper = entry["value"]
        return f"{_WORDS.get(name, name)} {entry['schedule']} {lower:.3g} to {upper:.3g} ({entry['stage']})"
    return f"{_WORDS.get(name, name)} {_shown(entry['value'])} ({entry['stage']})"


def _shown(value):
    return f"{value:.3g}" if isinstance(value, float) else repr(value)
