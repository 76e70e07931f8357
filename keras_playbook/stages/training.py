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
import json

import keras

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
from keras_playbook.callbacks.schedules import momentum_attribute
from keras_playbook.diagnosis import diagnose

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


def check_one_cycle_inputs(schedule, lr_result, overrides, batch_size, stage="fit"):
    """Refuses what `schedule="one_cycle"` cannot honour, before any compute.

    One cycle takes both bounds from the latest range test, so a
    `learning_rate` override would be recorded but never trained at; and
    bounds measured at another batch size do not hold at this one (Tuning
    Playbook), as a settled learning rate would not.
    """
    if schedule != "one_cycle":
        return
    if "learning_rate" in overrides:
        rate = overrides["learning_rate"]
        raise ValueError(
            f"{stage}: schedule='one_cycle' sets every step's rate from the range test's bounds, so "
            f"learning_rate={rate!r} would not be trained at. Pass schedule=OneCycle(lr_bounds=({rate / 10:.3g}, "
            f"{rate:.3g})) to peak at that rate (Smith 2018: lower = upper / 10), or leave learning_rate out."
        )
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
        if lr_result is None or lr_result.one_cycle_lr_bounds is None:
            raise ValueError(
                f"{stage}: schedule='one_cycle' takes its learning-rate bounds from the range test "
                f"({'no usable range was found' if lr_result is not None else 'none has run'}). Run "
                "pb.find_lr() first, or pass schedule=OneCycle(lr_bounds=(lower, upper))."
            )
        try:
            momentum_attribute(model.optimizer)
            momentum_bounds = (0.85, 0.95)
        except ValueError:  # SGD without momentum, RMSprop, ...: only the rate cycles.
            momentum_bounds = None
        return OneCycle(lr_result, momentum_bounds=momentum_bounds)
    if schedule == "cosine":
        return CosineRestarts()
    return TwoStage()


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
    monitors = [finding.to_dict() for callback in callbacks if not isinstance(callback, CurveDiagnosis)
                for finding in getattr(callback, "findings", [])]
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
