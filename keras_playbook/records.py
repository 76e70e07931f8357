"""Journal records the Playbook writes itself: its set-up and each `fit`."""

import dataclasses

import numpy as np
from matplotlib.figure import Figure

from keras_playbook import references
from keras_playbook.diagnosis import SEVERE
from keras_playbook.journal import Result


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

    # What must match for a journal to belong to a Playbook (`differences`).
    IDENTITY = ("architecture", "num_parameters", "num_train_examples", "num_validation_examples", "loss",
                "num_replicas")

    def settles(self):
        return {"batch_size": self.per_replica_batch_size}

    def differences(self, other):
        """What differs between this set-up and `other` among `IDENTITY`, as "name: this -> other" lines."""
        return [
            f"{name.replace('_', ' ')}: {getattr(self, name)!r} -> {getattr(other, name)!r}"
            for name in self.IDENTITY
            if getattr(self, name) != getattr(other, name) and (name != "architecture" or self.architecture)
        ]


@dataclasses.dataclass
class FitRecord(Result):
    """One real training run of the user's model through `Playbook.fit`.

    Attributes:
        epochs: Epochs run.
        hyperparameters: Settled values and overrides applied to this run.
        history: `History.history`: a list of per-epoch values per metric.
        monitor: Metric used to pick `best_epoch` ("val_loss" or "loss").
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

    A run is OK when its curves are finite and no finding says it did not
    work (`diagnosis.SEVERE`: diverged, the rate too high or far too low,
    worse after convergence, weight decay winning); the other findings are
    advice on a run that worked.
    """

    kind = "fit"
    epochs: int
    hyperparameters: dict
    history: dict
    monitor: str
    best_epoch: int
    ok: bool
    message: str
    schedule: dict | None = None
    findings: list = dataclasses.field(default_factory=list)
    initial_loss: float | None = None
    restored_best: bool = False

    @classmethod
    def from_history(cls, history, hyperparameters, schedule=None, findings=(), initial_loss=None,
                     restored_best=False):
        """Builds the record of a finished `model.fit` from its History."""
        curves = {name: [float(value) for value in values] for name, values in history.history.items()}
        monitor = "val_loss" if "val_loss" in curves else "loss"
        values = np.asarray(curves.get(monitor, []), dtype=float)
        epochs = len(values)
        finite = bool(epochs) and bool(np.all(np.isfinite(values)))
        best_epoch = int(np.nanargmin(values)) + 1 if np.isfinite(values).any() else 0
        findings = [dict(finding) for finding in findings]
        severe = [finding for finding in findings
                  if finding["kind"] in SEVERE and not finding["evidence"].get("recovered", False)]
        if not finite:
            message = (
                f"Training produced a non-finite {monitor}: lower the learning rate "
                f"(a loss that explodes means a rate too high; {references.johnson(2)})."
            )
        else:
            settled = ", ".join(f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}"
                                for key, value in sorted(hyperparameters.items()))
            verdict = "Training did not work:" if severe else "Trained"
            message = (
                f"{verdict} {epochs} epochs ({settled or 'model defaults'}"
                f"{', schedule ' + schedule['name'] if schedule else ''}); final "
                f"{monitor} {values[-1]:.4g}, best {values.min():.4g} at epoch "
                f"{best_epoch}" + (", whose weights the model now holds." if restored_best else ".")
            )
        for finding in (severe + [f for f in findings if f not in severe])[:3]:
            message += f" {finding['kind']}: {finding['advice']}"
        if len(findings) > 3:
            message += f" (+{len(findings) - 3} more in `findings`)"
        return cls(
            epochs=epochs, hyperparameters=dict(hyperparameters), history=curves,
            monitor=monitor, best_epoch=best_epoch, ok=finite and not severe, message=message,
            schedule=schedule, findings=findings,
            initial_loss=None if initial_loss is None else float(initial_loss),
            restored_best=bool(restored_best),
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


