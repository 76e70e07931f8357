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
import os

import keras

from keras_playbook import _data as data_module
from keras_playbook import _validation as validation
from keras_playbook._diagnosis import diagnose
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


def schedule_callback(schedule, model, lr_result, has_validation, stage="fit"):
    """The callback that runs `schedule` (see `Playbook.fit`), or None.

    Args:
        schedule: None, one of `SCHEDULES`, or a callback (returned as is).
        model: The compiled model (its optimizer decides what OneCycle cycles).
        lr_result: The latest `find_lr` result, or None; "one_cycle" takes its
            bounds from it.
        has_validation: Whether `fit` has validation data ("step_down"
            watches `val_loss` then, else `loss`).

    Raises:
        ValueError: for "one_cycle" without a usable `find_lr` result.
    """
    check_schedule(schedule, stage)
    if schedule is None or isinstance(schedule, keras.callbacks.Callback):
        return schedule
    if schedule == "step_down":
        return StepDownLR(monitor="val_loss" if has_validation else "loss")
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


def watchers(model, sample, schedule=None, reference_loss=None):
    """The monitors `Playbook.fit` adds: curve diagnosis, update ratios, and weight decay when there is any.

    `WeightDecayMonitor` is left out where it cannot work: a model whose
    weight penalties (coupled decay) sit under several compiled losses.

    Args:
        model: The compiled model.
        sample: A function returning `(x, y)` for the gradients of coupled
            decay (called only when the model has a weight regularizer).
        schedule: The schedule callback of the run, or None.
        reference_loss: The untrained model's loss, for `UpdateRatioMonitor`.
    """
    callbacks = [CurveDiagnosis(schedule=schedule, verbose=0), UpdateRatioMonitor(reference_loss=reference_loss)]
    decoupled, coupled = decayed_variables(model)
    if coupled and not isinstance(model.loss, (dict, list, tuple)):
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
def fit(ctx, *, epochs, callbacks, verbose, schedule, watch, restore_best, overrides):
    """Trains the user's model for real at the values in force, watched (see `Playbook.fit` for the arguments).

    With a Playbook directory the run is resumable: Keras's `BackupAndRestore`
    keeps the last finished epoch in `<directory>/backup/<call>` (the same
    call at the same point of the journal continues from it after a crash
    or Ctrl-C); the runner then saves the trained weights in
    `<directory>/weights`, the `FitRecord` pointing to them.

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
    apply_to_optimizer(ctx.session, hyperparameters)  # Checks every value before it assigns any.
    # After the values in force are applied: one cycle cycles the momentum they set.
    scheduler = schedule_callback(schedule, model, found, ctx.validation is not None)
    watching, initial_loss, untrained = [], None, None
    if watch:
        source = validation_data if validation_data is not None else train_data
        sample = train_data.sample(4, seed=ctx.seed)
        initial_loss = loss_on(model, sample, train_data.global_batch_size)
        untrained = ctx.untrained_loss(sample, train_data.global_batch_size)
        watching = watchers(model, lambda: source.sample(2, seed=ctx.seed)[:2], scheduler, reference_loss=untrained)
    keep_best = []
    if restore_best:
        keep_best = [
            keras.callbacks.EarlyStopping(
                monitor="val_loss" if validation_data is not None else "loss",
                mode="min",
                patience=int(epochs) + 1,
                restore_best_weights=True,
            )
        ]
    backup = _Backup(ctx) if ctx.directory is not None else None
    every = ([scheduler] if scheduler is not None else []) + list(callbacks or []) + watching + keep_best
    with restored_on_interruption(every):
        history = model.fit(
            train_data.dataset,
            validation_data=None if validation_data is None else validation_data.dataset,
            epochs=int(epochs),
            callbacks=ctx.callbacks(every + (backup.callbacks() if backup else [])),
            shuffle=False,  # The pipeline reshuffles arrays itself.
            verbose=verbose,
        )
    if backup is not None:
        backup.complete(history)
    record = FitRecord.from_history(
        history,
        hyperparameters,
        schedule=describe(scheduler),
        findings=findings_of(
            watching,
            history,
            schedule=scheduler,
            initial_loss=None if initial_loss is None else max(initial_loss, untrained),
            weight_decay=has_weight_decay(model),
        ),
        initial_loss=initial_loss,
        restored_best=bool(restore_best),
    )
    return record, history


class _Backup:
    """Keras's `BackupAndRestore` for one fit call, and a `CSVLogger` so a resumed run's record has every epoch."""

    def __init__(self, ctx):
        folder = os.path.join(ctx.directory, "backup")
        os.makedirs(folder, exist_ok=True)
        self.directory = os.path.join(folder, ctx.call_key)
        self.curves = os.path.join(folder, f"{ctx.call_key}.csv")
        metadata = os.path.join(self.directory, "training_metadata.json")
        self.resumed_at = 0
        if os.path.exists(metadata):
            with open(metadata) as file:
                self.resumed_at = int(json.load(file).get("epoch", 0))

    def callbacks(self):
        # The curves are written before the backup: a kill between the two repeats an epoch, never loses one.
        return [
            keras.callbacks.CSVLogger(self.curves, append=True),
            keras.callbacks.BackupAndRestore(self.directory, double_checkpoint=True),
        ]

    def complete(self, history):
        """Gives `history` the epochs run before a resume (from the curves file), then removes the file."""
        if self.resumed_at and os.path.exists(self.curves):
            with open(self.curves, newline="") as file:
                rows = {int(row.pop("epoch")): row for row in csv.DictReader(file)}
            earlier = [rows[epoch] for epoch in sorted(rows) if epoch < self.resumed_at]
            history.history = {
                name: [float(row[name]) for row in earlier if row.get(name) not in (None, "")] + list(values)
                for name, values in history.history.items()
            }
            history.epoch = list(range(len(next(iter(history.history.values()), []))))
        if os.path.exists(self.curves):
            os.remove(self.curves)


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
