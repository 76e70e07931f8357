"""The Playbook's model, data and settled values as a KerasTuner HyperModel.

`PlaybookHyperModel` lets any KerasTuner oracle and tuner run trials of the
Playbook's model: `build(hp)` makes a new copy of the model (from the builder,
given the trial's hyperparameters, or a clone of the model) starting from the
Playbook's initial weights, and compiles it with the model's loss and metrics
and a fresh optimizer carrying the trial's training hyperparameters
(`learning_rate`, `weight_decay`, `momentum`, any optimizer argument). `fit`
trains it on the Playbook's pipelines at the trial's batch size.

`PlaybookTuner` is KerasTuner's `Tuner` with one addition: it writes each
trial's per-epoch metrics to `history.json` in the trial's folder, so the
learning curves of every trial survive next to KerasTuner's own checkpoint of
its best epoch.

Weight decay comes two ways (an L2 penalty is often called "weight decay"):
`"decoupled"` sets the optimizer's `weight_decay` (each step,
`w -= learning_rate * weight_decay * w`, as AdamW), `"l2"` adds
`weight_decay * sum(w**2)` to the loss for every kernel of the trial's copy
(and turns the optimizer's own decay off). Either way only the trial's copy
changes.
"""

import json
import math
import os

import keras
import keras_tuner
import numpy as np

from keras_playbook import _short_runs as short_runs
from keras_playbook import _validation as validation
from keras_playbook._data import fit_arguments, validation_at

HISTORY_FILENAME = "history.json"
WEIGHT_DECAY_MODES = ("decoupled", "l2")
SEED = "seed"
EPOCHS = "epochs"
_DATA_HYPERPARAMETERS = ("batch_size", SEED)
_KERNEL_NAMES = ("kernel", "depthwise_kernel", "pointwise_kernel")


def optimizer_hyperparameters(session):
    """Names of the training hyperparameters a trial may set on the optimizer.

    `learning_rate`, `weight_decay` and every other argument of the
    config of the optimizer doing the work, as compiled
    (`Session.initial_optimizer_config`: `momentum`, `beta_1`, `epsilon`, ...).
    """
    names = set(session.initial_optimizer_config) - {"name"}
    return sorted(names | {"learning_rate", "weight_decay"})


def known_hyperparameters(session):
    """Every name a search may set: training hyperparameters and the builder's own."""
    return sorted(set(optimizer_hyperparameters(session)) | {"batch_size"} | set(session.declared_hyperparameters()))


def check_names(names, session, caller, argument):
    """Raises ValueError for names no trial can set, before any trial runs."""
    known = known_hyperparameters(session)
    for name in names:
        if name == EPOCHS:
            raise ValueError(
                f"{caller}: `epochs` in `{argument}` is not a hyperparameter to tune "
                "(Tuning Playbook: fix the number of epochs for every trial and read the "
                f"best epoch off each). Pass `epochs=` to {caller} instead."
            )
        if name not in known:
            raise ValueError(
                f"{caller}: unknown hyperparameter {name!r} in `{argument}`. A trial "
                f"can set {known}. Architecture hyperparameters (e.g. dropout) need a "
                "builder that takes `hp` and declares them, as KerasTuner's "
                "`build_model(hp)` does: `Playbook(build_model, ...)`."
            )


def base_values(session, train_pipeline, defaults, names):
    """The value each of `names` has when a trial does not set it.

    From `defaults` (the values in force, which the journal settled), else
    the optimizer's config as compiled (`Session.initial_optimizer_config`,
    never the live optimizer, which a schedule or `fit` moves), else the
    default a builder declares, else the pipeline's batch size. Used to
    complete configurations that set different names. A learning rate that
    follows a `LearningRateSchedule` is left out: the trial keeps the schedule.
    """
    config = session.initial_optimizer_config
    declared = session.declared_hyperparameters()
    values = {}
    for name in names:
        if name in defaults:
            values[name] = defaults[name]
        elif name == "batch_size":
            values[name] = train_pipeline.per_replica_batch_size
        elif name == "weight_decay":
            values[name] = float(config.get("weight_decay") or 0.0)
        elif name == "learning_rate":
            if validation.is_number(config.get("learning_rate")):
                values[name] = float(f"{float(config['learning_rate']):.7g}")  # Without float32's trailing digits.
        elif name in config:
            values[name] = config[name]
        elif name in declared:
            values[name] = declared[name]
    return values


def apply_l2_penalty(model, coefficient):
    """Puts an L2 penalty `coefficient * sum(w**2)` on every kernel of `model`.

    Sets the `regularizer` of the model's kernel variables (Dense, Conv,
    separable and depthwise kernels; biases and normalization scales are
    left alone, as usual for weight decay). Replaces a kernel regularizer
    the model already had. Use it on a copy: it changes `model`.

    Returns:
        The number of kernels penalized.
    """
    regularizer = keras.regularizers.L2(coefficient) if coefficient else None
    count = 0
    for variable in model.trainable_variables:
        if variable.name in _KERNEL_NAMES:
            variable.regularizer = regularizer
            count += 1
    return count


class PlaybookHyperModel(keras_tuner.HyperModel):
    """A Playbook's model and data as a `keras_tuner.HyperModel`.

    Values of a trial come from its `hp.values`, then from `defaults` (the
    hyperparameters settled by earlier stages). A trial with a `seed` value
    starts from a fresh initialization drawn with that seed and reads the
    data in that seed's order; without one, it starts from the Playbook's
    initial weights (every trial from the same point, the fairest comparison)
    and the Playbook's data order. `build` seeds Keras, NumPy and Python
    (`keras.utils.set_random_seed`) so a trial is reproducible.

    Args:
        session: The Playbook's `Session`.
        train_pipeline: Training `DataPipeline`.
        validation_pipeline: Validation `DataPipeline` (trials are scored on it).
        defaults: Hyperparameter values used when a trial does not set them,
            e.g. `{"learning_rate": 3e-3, "batch_size": 64}`.
        epochs: Epochs per trial unless a trial sets `epochs`.
        weight_decay_mode: `"decoupled"` or `"l2"` (see the module docstring).
        seed: Seed of the trials without their own.

    Example:

    ```python
    hypermodel = PlaybookHyperModel(pb.session, pb.train_data, pb.validation_data,
                                    defaults={"learning_rate": 1e-3}, epochs=5)
    tuner = keras_tuner.RandomSearch(hypermodel, objective="val_accuracy",
                                     max_trials=10, directory="runs/search")
    tuner.search()
    ```
    """

    def __init__(
        self,
        session,
        train_pipeline,
        validation_pipeline,
        *,
        defaults=None,
        epochs=10,
        weight_decay_mode="decoupled",
        seed=0,
    ):
        super().__init__(name="playbook")
        if weight_decay_mode not in WEIGHT_DECAY_MODES:
            raise ValueError(
                f"Argument `weight_decay_mode` must be one of {WEIGHT_DECAY_MODES}. "
                f"Received: weight_decay_mode={weight_decay_mode!r}."
            )
        self.session = session
        self.train_pipeline = train_pipeline
        self.validation_pipeline = validation_pipeline
        self.defaults = dict(defaults or {})
        self.epochs = epochs
        self.weight_decay_mode = weight_decay_mode
        self.seed = seed
        self._optimizer_names = set(optimizer_hyperparameters(session))

    def values(self, hp):
        """The trial's values: `hp.values` over the defaults."""
        return {**self.defaults, **hp.values}

    def build(self, hp):
        values = self.values(hp)
        seed = values.get(SEED)
        keras.utils.set_random_seed(int(self.seed if seed is None else seed))
        changes = {name: _plain(value) for name, value in values.items() if name in self._optimizer_names}
        penalty = None
        if self.weight_decay_mode == "l2":
            penalty, changes["weight_decay"] = changes.get("weight_decay"), None
        model = short_runs.working_copy(
            self.session,
            weights=short_runs.INITIAL if seed is None else short_runs.FRESH,
            hyperparameters=hp,
            metrics=short_runs.COMPILED,
            **changes,
        )
        if self.weight_decay_mode == "l2":
            apply_l2_penalty(model, penalty)
        return model

    def fit(self, hp, model, *args, callbacks=None, **kwargs):
        values = self.values(hp)
        batch_size = int(values.get("batch_size", self.train_pipeline.per_replica_batch_size))
        seed = values.get(SEED)
        train = self.train_pipeline.with_batch_size(batch_size, seed=seed)
        validation = validation_at(self.validation_pipeline, batch_size)
        return model.fit(
            **fit_arguments(train, validation),  # A PyDataset through Keras's adapter; the Playbook's steps.
            epochs=int(values.get(EPOCHS, self.epochs)),
            callbacks=list(callbacks or []),
            verbose=0,
        )


class PlaybookTuner(keras_tuner.Tuner):
    """KerasTuner's `Tuner`, keeping every trial's per-epoch metrics.

    Runs trials exactly as `keras_tuner.Tuner` does (checkpoint of the best
    epoch, TensorBoard logs and hparams for a `TensorBoard` callback, chief /
    worker distribution through `KERASTUNER_*` variables) and also writes the
    trial's `History.history` to `history.json` in its folder. The trials this
    process ran are listed in `ran_trial_ids`.

    Args:
        oracle: A `keras_tuner.Oracle`.
        hypermodel: A `PlaybookHyperModel` (or any HyperModel).
        **kwargs: Arguments of `keras_tuner.Tuner` (`directory`,
            `project_name`, `overwrite`, `distribution_strategy`, ...).
    """

    def __init__(self, oracle, hypermodel, **kwargs):
        super().__init__(oracle, hypermodel, **kwargs)
        self.ran_trial_ids = []

    def run_trial(self, trial, *args, **kwargs):
        histories = super().run_trial(trial, *args, **kwargs)
        curves = {name: [float(value) for value in values] for name, values in histories[-1].history.items()}
        path = os.path.join(self.get_trial_dir(trial.trial_id), HISTORY_FILENAME)
        with open(path, "w") as file:
            json.dump(curves, file)
        self.ran_trial_ids.append(trial.trial_id)
        return histories

    def read_history(self, trial_id):
        """The per-epoch metrics of a trial, or None when none were written."""
        path = os.path.join(self.get_trial_dir(trial_id), HISTORY_FILENAME)
        if not os.path.exists(path):
            return None
        with open(path) as file:
            return json.load(file)


def best_epoch(history, objective):
    """Returns `(best value, 0-based epoch)` of `objective` in a history, or `(nan, -1)`."""
    values = np.asarray(history.get(objective.name, []), dtype=float)
    finite = np.isfinite(values)
    if not finite.any():
        return math.nan, -1
    masked = np.where(finite, values, -np.inf if objective.direction == "max" else np.inf)
    index = int(np.argmax(masked) if objective.direction == "max" else np.argmin(masked))
    return float(values[index]), index


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value
