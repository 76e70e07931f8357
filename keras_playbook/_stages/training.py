"""Training for real, watched: the schedule and the monitors `Playbook.fit` adds.

A schedule by name (Krizhevsky et al. 2012's step-down, Smith & Topin 2019's one cycle, SGDR's
cosine annealing and two-stage schedule) and the watchers of Johnson, EECS 498 Lecture 11, step 6
(learning-curve diagnosis, update ratios) and Loshchilov & Hutter 2019 (weight decay
against the data loss). Their findings go into the run's `FitRecord`.

References:
    Krizhevsky et al. 2012; Smith & Topin 2019, arXiv:1708.07120;
    Loshchilov & Hutter 2017, arXiv:1608.03983 (the schedules).
    Johnson, EECS 498 Lecture 11, step 6; Stanford CS231n (the watchers).
    Loshchilov & Hutter 2019, arXiv:1711.05101 (weight decay).
"""

import contextlib
import csv
import json
import math
import os
import pickle
import warnings

import keras

from keras_playbook import _data as data_module
from keras_playbook import _py_dataset as py_datasets
from keras_playbook import _validation as validation
from keras_playbook._class_weight import check_class_weight
from keras_playbook._diagnosis import diagnose
from keras_playbook._folder import backup_folder
from keras_playbook._loss_key import FirstStepCheck, loss_curves, one_compiled_loss, validation_key
from keras_playbook._records import FitRecord
from keras_playbook._runner import HYPERPARAMETERS, OPTIMIZER_SETTINGS, SEARCHED, loss_on, stage
from keras_playbook._session import innermost_optimizer
from keras_playbook.callbacks import (
    CosineRestarts,
    CurveDiagnosis,
    OneCycle,
    StepDownLR,
    TwoStage,
    UpdateRatioMonitor,
    WeightDecayMonitor,
)
from keras_playbook.callbacks._config import ConfigurableCallback
from keras_playbook.callbacks.monitors import decayed_variables
from keras_playbook.callbacks.one_cycle import momentum_attribute

SCHEDULES = ("step_down", "one_cycle", "cosine", "two_stage")


@contextlib.contextmanager
def restored_on_interruption(callbacks):
    """Calls `restore()` on this library's callbacks that have one when `fit` raises; the exception goes on.

    Keras calls `on_train_end` only when `fit` returns; a callback that
    changed the model or its optimizer for the length of training
    (`OneCycle`'s cycling momentum, `GradualUnfreezing`'s frozen groups)
    would otherwise leave the change behind after a Ctrl-C or an error.
    """
    try:
        yield
    except BaseException:
        for callback in callbacks:
            if isinstance(callback, ConfigurableCallback) and callable(getattr(callback, "restore", None)):
                callback.restore()
        raise


def check_schedule(schedule, stage="fit"):
    """Raises for a `schedule` that is neither None, a known name nor a Keras callback."""
    if schedule is None or isinstance(schedule, keras.callbacks.Callback):
        return
    if schedule not in SCHEDULES:
        raise ValueError(
            f"{stage}: unknown schedule {schedule!r}. Pass one of {list(SCHEDULES)}, a schedule "
            "callback (e.g. OneCycle((1e-3, 1e-2))), or None for a constant learning rate."
        )


def cycles(schedule):
    """Whether `schedule` is one cycle (by name or a `OneCycle`): it sets every step's rate itself."""
    return isinstance(schedule, OneCycle) or (isinstance(schedule, str) and schedule == "one_cycle")


def check_one_cycle_override(schedule, overrides, stage="fit"):
    """Refuses a `learning_rate` override under one cycle: it would be recorded but never trained at.

    One cycle sets every step's rate from its bounds (the range test's for
    `"one_cycle"`, its own `lr_bounds` for a `OneCycle`).
    """
    if not cycles(schedule) or "learning_rate" not in overrides:
        return
    rate = overrides["learning_rate"]
    where = (
        f"its own lr_bounds {tuple(float(f'{bound:.3g}') for bound in schedule.lr_bounds)}"
        if isinstance(schedule, OneCycle)
        else "the range test's bounds"
    )
    shown = "OneCycle(...)" if isinstance(schedule, OneCycle) else "'one_cycle'"
    peak = (
        f"Pass schedule=OneCycle(lr_bounds=({rate / 10:.3g}, {rate:.3g})) to peak at that rate (Smith 2018: "
        "lower = upper / 10)"
        if validation.is_number(rate) and rate > 0
        else "Set the bounds of OneCycle(lr_bounds=(lower, upper))"
    )
    raise ValueError(
        f"{stage}: schedule={shown} sets every step's rate from {where}, so learning_rate={rate!r} would not "
        f"be trained at. {peak}, or leave learning_rate out."
    )


def check_one_cycle_inputs(schedule, lr_result, overrides, batch_size, stage="fit"):
    """Refuses what `schedule="one_cycle"` cannot honour, before any compute.

    One cycle takes both bounds from the latest range test, so a
    `learning_rate` override would be recorded but never trained at
    (`check_one_cycle_override`); and bounds measured at another batch size
    do not hold at this one (Tuning Playbook), as a settled learning rate
    would not.
    """
    check_one_cycle_override(schedule, overrides, stage)
    if not (isinstance(schedule, str) and schedule == "one_cycle"):
        return
    measured = getattr(lr_result, "batch_size", None)
    if lr_result is not None and lr_result.one_cycle_lr_bounds is not None and measured != batch_size:
        raise ValueError(
            f"{stage}: schedule='one_cycle' takes its bounds from a range test run at batch size {measured} "
            f"(per replica), and this run trains at {batch_size}: learning rates do not carry over between "
            "batch sizes (Tuning Playbook). Run pb.find_lr() again at this batch size, or pass "
            "schedule=OneCycle(lr_bounds=(lower, upper))."
        )


def schedule_callback(schedule, model, lr_result, has_validation, stage="fit", loss_key="loss"):
    """The callback that runs `schedule` (see `Playbook.fit`), or None.

    Args:
        schedule: None, one of `SCHEDULES`, or a callback (returned as is).
        model: The compiled model (its optimizer decides what OneCycle cycles).
        lr_result: The latest `find_lr` result, or None; "one_cycle" takes its
            bounds from it.
        has_validation: Whether `fit` has validation data ("step_down"
            watches `val_loss` then, else `loss`).
        loss_key: The key of the loss in the logs ("step_down" watches
            `val_<loss_key>` or `<loss_key>`).

    Raises:
        ValueError: for "one_cycle" without a usable `find_lr` result.
    """
    check_schedule(schedule, stage)
    if schedule is None or isinstance(schedule, keras.callbacks.Callback):
        return schedule
    if schedule == "step_down":
        return StepDownLR(monitor=validation_key(loss_key) if has_validation else loss_key)
    if schedule == "one_cycle":
        check_range_test_for(schedule, lr_result, stage)
        try:
            momentum_attribute(model.optimizer)
            momentum_bounds = (0.85, 0.95)
        except ValueError:  # SGD without momentum, RMSprop, ...: only the rate cycles.
            momentum_bounds = None
        return OneCycle(lr_result, momentum_bounds=momentum_bounds)
    if schedule == "cosine":
        return CosineRestarts()
    return TwoStage()


def check_range_test_for(schedule, lr_result, stage="fit"):
    """Refuses `schedule="one_cycle"` without a range test that found its bounds."""
    if schedule == "one_cycle" and (lr_result is None or lr_result.one_cycle_lr_bounds is None):
        raise ValueError(
            f"{stage}: schedule='one_cycle' takes its learning-rate bounds from the range test "
            f"({'no usable range was found' if lr_result is not None else 'none has run'}). Run "
            "pb.find_lr() first, or pass schedule=OneCycle(lr_bounds=(lower, upper))."
        )


def has_weight_decay(model):
    """Whether any of the model's weights is under weight decay (decoupled or an L2 penalty)."""
    decoupled, coupled = decayed_variables(model)
    return bool(decoupled or coupled)


def watchers(model, sample, schedule=None, reference_loss=None, loss_key=None):
    """The monitors `Playbook.fit` adds: curve diagnosis, update ratios, and weight decay when there is any.

    `WeightDecayMonitor` is left out where it cannot work: a model whose
    weight penalties (coupled decay) sit under several compiled losses, or
    under none (its own `train_step` computes the loss:
    `_loss_key.check_compiled_loss`).

    Args:
        model: The compiled model.
        sample: A function returning `(x, y)` for the gradients of coupled
            decay (called only when the model has a weight regularizer).
        schedule: The schedule callback of the run, or None.
        reference_loss: The untrained model's loss, for `UpdateRatioMonitor`.
        loss_key: The key the model logs its loss under (`_loss_key.logged_loss_key`),
            where `CurveDiagnosis` and `UpdateRatioMonitor` read it.
    """
    callbacks = [
        CurveDiagnosis(schedule=schedule, verbose=0, loss_key=loss_key),
        UpdateRatioMonitor(reference_loss=reference_loss, loss_key=loss_key),
    ]
    decoupled, coupled = decayed_variables(model)
    if coupled and one_compiled_loss(model):
        callbacks.append(WeightDecayMonitor(sample=sample()))
    elif decoupled and not coupled:
        callbacks.append(WeightDecayMonitor())
    return callbacks


def findings_of(callbacks, history, *, schedule=None, initial_loss=None, weight_decay=None):
    """What a watched run showed, as dicts: the monitors' findings, then `diagnose` of the whole curves.

    `CurveDiagnosis` reports findings as they appear during training (an
    early epoch can look like a plateau); the record keeps the diagnosis of
    the finished curves instead, told which schedule ran, the loss before
    training and whether there was weight decay, plus the monitors' findings
    (a kind a monitor reported with its per-layer evidence is not repeated).
    """
    monitors = [
        finding.to_dict()
        for callback in callbacks
        if not isinstance(callback, CurveDiagnosis)
        for finding in getattr(callback, "findings", [])
    ]
    if not any(isinstance(callback, CurveDiagnosis) for callback in callbacks):
        return monitors
    reported = {finding["kind"] for finding in monitors}
    found = diagnose(history, schedule=schedule, initial_loss=initial_loss, weight_decay=weight_decay)
    return monitors + [finding.to_dict() for finding in found if finding.kind not in reported]


def describe(callback):
    """`{"name", "config"}` of a schedule callback for the journal (config left out when not JSON)."""
    if callback is None:
        return None
    description = {"name": type(callback).__name__}
    try:
        config = callback.get_config()
        json.dumps(config)
        description["config"] = config
    except (AttributeError, NotImplementedError, TypeError, ValueError):
        pass
    return description


# The fit stage ------------------------------------------------------------------------

FIT_OVERRIDES = HYPERPARAMETERS


def _fit_given(arguments):
    """The overrides; under one cycle the schedule sets the rate (the range test's bounds are checked instead)."""
    given = dict(arguments["overrides"])
    if cycles(arguments["schedule"]):
        given.setdefault("learning_rate", SEARCHED)
    return given


def check_fit(arguments, session):
    """Refuses `fit`'s arguments before anything changes: values, names, the schedule, what the optimizer takes.

    Runs without data or training (`StageSpec.check`): for every call of a
    plan before any stage runs, and before a call by hand assigns anything.
    """
    overrides = arguments["overrides"]
    _check_fit_arguments(arguments["epochs"], arguments["callbacks"], arguments["restore_best"], overrides)
    fit_class_weight(session, arguments["class_weight"])
    check_schedule(arguments["schedule"])
    _check_hyperparameters(overrides)
    check_one_cycle_override(arguments["schedule"], overrides)
    check_applicable(session, overrides)


@stage(
    "fit",
    requires=("learning_rate", *OPTIMIZER_SETTINGS),
    given=_fit_given,
    random_state=False,
    returns_value=True,
    trains=True,
    check=check_fit,
)
def fit(ctx, *, epochs, callbacks, verbose, schedule, watch, restore_best, class_weight, overrides):
    """Trains the user's model for real at the values in force, watched (see `Playbook.fit` for the arguments).

    With a Playbook directory the run is resumable: `TrainingBackup`
    (Keras's `BackupAndRestore` and the callbacks' state) keeps the last
    finished epoch in `<directory>/backup/<call key>`, and the same call at
    the same point of the journal continues from it after a crash or
    Ctrl-C as the same training (the data order, the schedule's step, the
    watchers and the best epoch as an uninterrupted run would have them);
    the runner then saves the trained weights in `<directory>/weights`,
    the `FitRecord` pointing to them, and removes the backup.

    Returns:
        `(FitRecord, History)`; the History holds every epoch, also those run
        before a resume.
    """
    model, hyperparameters = ctx.model, dict(ctx.values)
    _check_hyperparameters(hyperparameters)
    batch_size = ctx.train.per_replica_batch_size
    found = ctx.journal.latest("find_lr")
    check_one_cycle_inputs(schedule, found, overrides, batch_size)
    check_range_test_for(schedule, found)
    if cycles(schedule):  # The schedule sets every step's rate: the record says so.
        hyperparameters.pop("learning_rate", None)
    train_data, validation_data = ctx.train, ctx.validation
    if class_weight is not None:  # This run's, in place of the Playbook's.
        train_data = train_data.with_class_weight(fit_class_weight(ctx.session, class_weight))
    loss_key = ctx.loss_key()  # Refuses a loss that cannot be read before anything changes.
    apply_to_optimizer(ctx.session, hyperparameters)  # Checks every value before it assigns any.
    # After the values in force are applied: one cycle cycles the momentum they set.
    scheduler = schedule_callback(schedule, model, found, ctx.validation is not None, loss_key=loss_key)
    watching, initial_loss, untrained = [], None, None
    if watch:
        source = validation_data if validation_data is not None else train_data
        sample = train_data.sample(4, seed=ctx.seed)
        initial_loss = loss_on(model, sample, train_data.global_batch_size, loss_key)
        untrained = ctx.untrained_loss(sample, train_data.global_batch_size)
        watching = watchers(
            model, lambda: source.sample(2, seed=ctx.seed)[:2], scheduler, reference_loss=untrained, loss_key=loss_key
        )
    keep_best = []
    if restore_best:
        keep_best = [BestWeights(monitor=validation_key(loss_key) if validation_data is not None else loss_key)]
    every = ([scheduler] if scheduler is not None else []) + list(callbacks or []) + watching + keep_best
    backup = None
    if ctx.directory is not None:
        backup = TrainingBackup(backup_folder(ctx.directory, ctx.call_key), every)
    ordering = [FirstStepCheck(loss_key, "fit", ctx.session)]  # First: its snapshot is the state before this fit.
    ordering += [callback for callback in [train_data.epoch_callback()] if callback is not None]
    try:
        with restored_on_interruption(every):
            history = model.fit(
                # Arrays reshuffle themselves; a PyDataset goes through Keras's adapter (workers, batch order).
                **data_module.fit_arguments(train_data, validation_data),
                epochs=int(epochs),
                callbacks=ctx.callbacks(ordering + every + (backup.callbacks() if backup else [])),
                verbose=verbose,
            )
    finally:
        model._initial_epoch = None  # Keras's BackupAndRestore leaves it set: a later fit would start there.
        for callback in ordering:  # Also when fit raises: the user's Python `random` given back (BatchOrder).
            if isinstance(callback, py_datasets.BatchOrder):
                callback.on_train_end()
    resumed_at = 0
    if backup is not None:
        resumed_at = backup.resumed_at
        backup.complete(history)
    curves = loss_curves(history, loss_key)  # None when the History holds no loss: recorded all the same.
    record = FitRecord.from_history(
        history,
        hyperparameters,
        schedule=describe(scheduler),
        findings=[]
        if curves is None
        else findings_of(
            watching,
            curves,
            schedule=scheduler,
            initial_loss=None if initial_loss is None else max(initial_loss, untrained),
            weight_decay=has_weight_decay(model),
        ),
        initial_loss=initial_loss,
        restored_best=bool(restore_best),
        resumed_from=resumed_at or None,
        loss_key=loss_key,
    )
    return record, history


class BestWeights(ConfigurableCallback):
    """Gives the model the weights of its best epoch when training ends, also after a resume.

    Keras's `EarlyStopping(restore_best_weights=True)` does this for one
    uninterrupted `fit` (without stopping early here); its best value and
    weights live in memory only, so a `fit` resumed from a backup would pick
    the best of the epochs after the resume. This one keeps them as
    resumable state (`resume_state`); `TrainingBackup` writes the weights
    beside its backup. The best epoch is the first with the lowest (or, for
    `mode="max"`, the highest) `monitor`, as `FitRecord.best_epoch` counts it.

    Args:
        monitor: The logged value to judge epochs on, e.g. "val_loss".
        mode: "min" or "max".

    Example:

    ```python
    model.fit(x, y, validation_split=0.2, epochs=20, callbacks=[BestWeights("val_loss")])
    ```
    """

    resume_state = ("best", "best_epoch", "best_weights")

    def __init__(self, monitor="val_loss", mode="min"):
        super().__init__()
        if mode not in ("min", "max"):
            raise ValueError(f"BestWeights: argument `mode` must be 'min' or 'max'. Received: mode={mode!r}.")
        self.monitor = monitor
        self.mode = mode
        self.best = None
        self.best_epoch = None
        self.best_weights = None

    def on_train_begin(self, logs=None):
        self.best, self.best_epoch, self.best_weights = None, None, None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        value = float(value)
        if self.best is None or (value < self.best if self.mode == "min" else value > self.best):
            self.best, self.best_epoch, self.best_weights = value, epoch + 1, self.model.get_weights()

    def on_train_end(self, logs=None):
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)

    def get_config(self):
        return {"monitor": self.monitor, "mode": self.mode}


class TrainingBackup(keras.callbacks.BackupAndRestore):
    """Keras's `BackupAndRestore`, plus what else makes a resumed `fit` the same training.

    After every epoch, before Keras writes the weights and the optimizer,
    the state of the callbacks that build one up (`ConfigurableCallback.
    get_state`: a schedule's best value and patience, the watchers'
    windows and findings, the best epoch's weights) is written as
    `state-<epochs done>.pkl` in the same folder, so whichever epoch the
    backup holds, the state of that epoch is there; the two latest are
    kept. A resumed `fit` puts it back after Keras has restored the weights.
    The backup is not deleted at the end of training (`delete_checkpoint=
    False`): the runner removes it once the journal holds the record, so a
    kill after the last epoch (or before the record is written) resumes
    with nothing left to train. A `CSVLogger` beside it keeps every epoch's
    logs for the record (`complete`).

    Args:
        folder: The backup folder (`backup_folder`).
        callbacks: The fit's other callbacks; those with `get_state` have
            their state saved and put back.
    """

    def __init__(self, folder, callbacks):
        super().__init__(folder, double_checkpoint=True, delete_checkpoint=False)
        self.curves = folder + ".csv"
        self.stateful = [callback for callback in callbacks if isinstance(callback, ConfigurableCallback)]
        self.resumed_at = 0

    def callbacks(self):
        # The curves are written before the backup: a kill between the two repeats an epoch, never loses one.
        os.makedirs(self.backup_dir, exist_ok=True)
        return [keras.callbacks.CSVLogger(self.curves, append=True), self]

    def _state_path(self, epochs_done):
        return os.path.join(self.backup_dir, f"state-{epochs_done}.pkl")

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)  # Weights, optimizer and the epoch to start from (model._initial_epoch).
        self.resumed_at = int(self.model._initial_epoch or 0)
        if not self.resumed_at:
            return
        path = self._state_path(self.resumed_at)
        if not os.path.exists(path):
            warnings.warn(
                f"fit: resuming at epoch {self.resumed_at + 1} from {self.backup_dir} without the callbacks' state "
                "(written by another version of keras-playbook?): schedules and watchers start afresh.",
                stacklevel=2,
            )
            return
        with open(path, "rb") as file:
            states = pickle.load(file)  # Written by `_save_model` below, in this folder only.
        for callback, state in zip(self.stateful, states):
            callback.set_state(state)

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        path = self._state_path(self._current_epoch)
        temporary = path + ".partial"
        with open(temporary, "wb") as file:
            pickle.dump([callback.get_state() for callback in self.stateful], file)
        os.replace(temporary, path)
        super()._save_model()
        for name in os.listdir(self.backup_dir):
            if name.startswith("state-") and name.endswith(".pkl"):
                if int(name[len("state-") : -len(".pkl")]) < self._current_epoch - 1:
                    os.remove(os.path.join(self.backup_dir, name))

    def complete(self, history):
        """Gives `history` the epochs run before a resume (from the curves file); the file stays until recorded."""
        if not self.resumed_at or not os.path.exists(self.curves):
            return
        with open(self.curves, newline="") as file:
            rows = {int(row.pop("epoch")): row for row in csv.DictReader(file)}
        earlier = [rows[epoch] for epoch in sorted(rows) if epoch < self.resumed_at]
        names = list(history.history) or [name for name in (earlier[0] if earlier else {})]
        history.history = {
            name: [float(row[name]) for row in earlier if row.get(name) not in (None, "")]
            + list(history.history.get(name, []))
            for name in names
        }
        history.epoch = list(range(len(next(iter(history.history.values()), []))))


def fit_class_weight(session, class_weight):
    """`fit`'s `class_weight` checked as the Playbook checks its own (`check_class_weight`), completed."""
    return check_class_weight(
        class_weight,
        num_classes=getattr(session, "output_classes", None),
        several_outputs=getattr(session, "several_outputs", False),
        caller="fit",
    )


def _check_fit_arguments(epochs, callbacks, restore_best, overrides):
    validation.check_int(epochs, "epochs", "fit")
    unknown = sorted(set(overrides) - set(FIT_OVERRIDES))
    if unknown:
        raise TypeError(
            f"fit: unknown hyperparameter(s) {unknown}. Overridable: {list(FIT_OVERRIDES)}; pass other "
            "`model.fit` options by calling `pb.model.fit` directly."
        )
    if callbacks is not None and not isinstance(callbacks, (list, tuple)):
        raise TypeError(f"fit: `callbacks` must be a list of callbacks. Received: {callbacks!r}.")
    validation.check_bool(restore_best, "restore_best", "fit")


def _check_hyperparameters(hyperparameters):
    if hyperparameters.get("learning_rate") is not None:
        validation.check_number(hyperparameters["learning_rate"], "learning_rate", "fit")
    if hyperparameters.get("weight_decay") is not None:
        validation.check_number(hyperparameters["weight_decay"], "weight_decay", "fit", within=">= 0")
    if "batch_size" in hyperparameters:
        data_module.validate_batch_size(hyperparameters["batch_size"])
    for name in ("momentum", "beta_1"):
        validation.check_number(hyperparameters.get(name), name, "fit", within="[0, 1)", allow_none=True)


def check_applicable(session, hyperparameters):
    """Raises unless every value of `hyperparameters` can be set on the model's optimizer; sets nothing.

    Raises:
        ValueError: for a learning rate on an optimizer that follows a
            `LearningRateSchedule`, or a setting the optimizer does not have.
    """
    optimizer = innermost_optimizer(session.model.optimizer)  # Inside LossScaleOptimizer, DiscriminativeOptimizer.
    if "learning_rate" in hyperparameters and isinstance(
        optimizer._learning_rate, keras.optimizers.schedules.LearningRateSchedule
    ):
        raise ValueError(
            f"fit: cannot apply learning_rate={hyperparameters['learning_rate']!r}: the model's "
            f"{type(optimizer).__name__} follows a LearningRateSchedule. Compile the model with a float "
            "learning rate and drive the schedule with a callback, or pass the optimizer you want as "
            "`Playbook(optimizer=...)`."
        )
    for name in ("momentum", "beta_1"):
        if name in hyperparameters and not hasattr(optimizer, name):
            raise ValueError(
                f"fit: the model's optimizer {type(optimizer).__name__} has no `{name}`. "
                f"Received: {name}={hyperparameters[name]!r}."
            )


def apply_to_optimizer(session, hyperparameters):
    """Gives the model's optimizer the learning rate, momentum / beta_1 and weight decay in force.

    Each setting the optimizer has takes its value in `hyperparameters` (the
    journal's, overrides applied), else the one it was compiled with
    (`Session.initial_optimizer_config`): nothing an earlier run set stays
    behind unrecorded. A learning rate left out (one cycle sets it, or the
    optimizer follows a `LearningRateSchedule`) is left alone. Every value
    is checked (`check_applicable`) before any is set: a refused call leaves
    the optimizer as it was.

    Raises:
        ValueError: for a learning rate on an optimizer that follows a
            `LearningRateSchedule`, or a setting the optimizer does not have.
    """
    check_applicable(session, hyperparameters)
    model = session.model
    optimizer = innermost_optimizer(model.optimizer)
    compiled = session.initial_optimizer_config
    wanted = {
        name: hyperparameters[name] if name in hyperparameters else compiled[name]
        for name in OPTIMIZER_SETTINGS
        if name in hyperparameters or (name in compiled and hasattr(optimizer, name))
    }
    changes = {name: value for name, value in wanted.items() if getattr(optimizer, name) != value}
    if getattr(optimizer, "momentum", None) == 0 and changes.get("momentum") and optimizer.built:
        # SGD built without momentum has no buffers for it: a new optimizer, the one compiled at the
        # values in force (SGD without momentum holds no state but its step count).
        rate = {"learning_rate": hyperparameters["learning_rate"]} if "learning_rate" in hyperparameters else {}
        session.compile(optimizer=session.fresh_optimizer(**rate, **wanted))
        return
    if "learning_rate" in hyperparameters:
        optimizer.learning_rate = hyperparameters["learning_rate"]
    if not changes:
        return
    for name, value in changes.items():
        setattr(optimizer, name, value)
    model.make_train_function(force=True)
