"""The procedure: which stages run, in which order, and what a run again may skip.

`plan_calls` turns a plan (stage names, or `(name, arguments)` pairs) into
complete calls and refuses, before any compute, a plan that cannot work: an
unknown stage or argument, a stage that needs validation data without any, a
stage that needs a learning rate before anything settles one. `run` executes
the calls through the stage runner, reading back from the journal every
leading call it has already recorded (the same stage with the same arguments,
in order): resume is running the same script again, as with KerasTuner, whose
oracle proposes the next trial from the recorded ones alone.

References:
    Johnson, EECS 498 Lecture 11, steps 1-6; Smith 2018, arXiv:1803.09820;
    Godbole et al. 2023, Deep Learning Tuning Playbook; Krizhevsky et al. 2012
    (the order of the default plan and its step-down final training).
    KerasTuner, `keras_tuner/src/engine/oracle.py` and `base_tuner.py`.
"""

import os
import time

from keras_playbook import _validation as validation
from keras_playbook._records import RunResult
from keras_playbook._runner import STAGES, call_arguments
from keras_playbook._session import innermost_optimizer
from keras_playbook._stages.training import FIT_OVERRIDES, check_schedule

SEARCHES = ("weight_decay", "lr_wd", None)
# A failed verdict of these stops a run (`stop_on_failure`): what comes after would build on sand.
SANITY = ("check_initial_loss", "overfit_small_sample", "find_lr")
# Stages that judge on validation data and refuse to run without it.
NEEDS_VALIDATION = ("sweep_momentum", "grid_weight_decay", "tune_lr_wd", "compare_seeds", "run_round")
SETTLES_LEARNING_RATE = ("find_lr", "tune_lr_wd")


def default_plan(playbook, epochs, search="weight_decay", schedule="step_down"):
    """The procedure's stages in order, as `(name, arguments)` pairs.

    Sanity first (Johnson's steps 1-2), then the batch size (the Tuning
    Playbook sets it first: the other values depend on it), the learning
    rate (Smith's range test, cross-checked by Johnson's probes), momentum
    (Smith 2018; only for an optimizer that has one), weight decay (Smith's
    grid, or Johnson's LR x WD grid with `search="lr_wd"`; both judge on
    validation data), and the final training with the schedule (by default
    Krizhevsky et al.'s step-down: hold the rate until the validation loss
    stops improving), keeping its best epoch.
    """
    has_validation = playbook.validation_data is not None
    plan = ["check_initial_loss", "overfit_small_sample", "find_batch_size", "find_lr", "probe_lrs"]
    optimizer = innermost_optimizer(playbook.model.optimizer)
    if has_validation and any(isinstance(getattr(optimizer, name, None), float) for name in ("momentum", "beta_1")):
        plan.append("sweep_momentum")
    if has_validation and search is not None:
        plan.append("grid_weight_decay" if search == "weight_decay" else "tune_lr_wd")
    plan.append(("fit", {"epochs": epochs, "schedule": schedule, "restore_best": True, "verbose": 0}))
    return plan


def plan_calls(playbook, plan):
    """Complete, checked calls of `plan`: a list of `(name, arguments)`, before any compute.

    Raises:
        TypeError: for a plan that is not a list of names or pairs.
        ValueError: for an unknown stage or argument, a stage needing
            validation data without any, or a stage needing a learning rate
            before the plan or the journal settles one.
    """
    if not isinstance(plan, (list, tuple)) or not plan:
        raise TypeError(
            f"run: `plan` must be a non-empty list of stage names or (name, arguments) pairs. Received: plan={plan!r}."
        )
    runnable = sorted(STAGES)
    calls = []
    for step in plan:
        if isinstance(step, str):
            name, arguments = step, {}
        elif isinstance(step, (list, tuple)) and len(step) == 2:
            name, arguments = step
        else:
            name, arguments = None, None
        if not isinstance(name, str) or not isinstance(arguments, dict):
            raise TypeError(
                f"run: each step of `plan` is a stage name or a (name, arguments) pair, e.g. "
                f"('fit', {{'epochs': 10}}). Received: {step!r}."
            )
        if name not in STAGES:
            raise ValueError(f"run: unknown stage {name!r} in `plan`. Stages: {runnable}.")
        arguments = playbook._runner.complete(name, arguments)
        if name == "fit":
            unknown = sorted(set(arguments["overrides"]) - set(FIT_OVERRIDES))
            if unknown:
                raise ValueError(
                    f"run: fit does not take {unknown}. Its arguments: "
                    f"{list(playbook._runner.signature('fit').parameters)[1:-1]} and the "
                    f"hyperparameters {list(FIT_OVERRIDES)}."
                )
            validation.check_int(arguments["epochs"], "epochs", "run")
        calls.append((name, arguments))
    _check_order(playbook, calls)
    return calls


def _check_order(playbook, calls):
    settled = "learning_rate" in playbook.journal.settled()
    ran_find_lr = playbook.journal.latest("find_lr") is not None
    for name, arguments in calls:
        if name in NEEDS_VALIDATION and playbook.validation_data is None:
            raise ValueError(
                f"run: {name} judges on validation data and the Playbook has none. Pass "
                f"`validation_data=` to the Playbook, or leave {name} out of the plan."
            )
        given = STAGES[name].given_values(arguments)
        if "learning_rate" in STAGES[name].requires and "learning_rate" not in given and not settled:
            raise ValueError(
                f"run: {name} needs a learning rate, and nothing before it settles one (the optimizer follows a "
                f"schedule). Put find_lr before {name} in the plan, or pass learning_rate to {name}."
            )
        if name == "fit" and arguments["schedule"] == "one_cycle" and not ran_find_lr:
            raise ValueError(
                "run: fit(schedule='one_cycle') takes its bounds from a range test, and none comes "
                "before it. Put find_lr before fit in the plan."
            )
        settled = settled or name in SETTLES_LEARNING_RATE
        ran_find_lr = ran_find_lr or name == "find_lr"


def _recorded(journal, name, arguments, start):
    """The index of the recorded call of `name` with `arguments` at or after `start`, or None.

    Only the first top-level call of `name` from `start` counts: if its
    arguments differ, the plan changed there and everything from it runs.
    """
    wanted = call_arguments(arguments)
    for index in range(start, len(journal)):
        call = journal[index].call or {}
        if call.get("stage") == name and call.get("parent") is None:
            return index if call.get("arguments") == wanted else None
    return None


def run(playbook, epochs, plan=None, search="weight_decay", schedule="step_down", stop_on_failure=True):
    """Runs the plan (by default `default_plan`), reading back the leading calls the journal already holds.

    Every argument and the whole plan are checked before any compute.

    Returns:
        A `RunResult`, also appended to the journal.
    """
    validation.check_int(epochs, "epochs", "run")
    if search not in SEARCHES:
        raise ValueError(f"run: argument `search` must be one of {SEARCHES}. Received: search={search!r}.")
    validation.check_bool(stop_on_failure, "stop_on_failure", "run")
    check_schedule(schedule, "run")
    calls = plan_calls(playbook, default_plan(playbook, epochs, search, schedule) if plan is None else plan)
    runner, journal = playbook._runner, playbook.journal
    started = time.perf_counter()
    position, resuming, steps, stopped = 1, True, [], None
    for name, arguments in calls:
        index = _recorded(journal, name, arguments, position) if resuming else None
        reached = {}
        if index is not None:
            result, position = journal[index], index + 1
            _load_weights(playbook, result)
        else:
            if resuming and steps:  # The first stage run after reading back: how long getting here took.
                reached = {"reached_after": round(time.perf_counter() - started, 3)}
            resuming = False
            runner.call(name, arguments)
            result, position = journal[len(journal) - 1], len(journal)
        call = result.call or {}
        steps.append(
            {
                "stage": name,
                "ok": bool(result.ok),
                "skipped": index is not None,
                "seconds": float(call.get("seconds", 0.0)),
                "steps": int(call.get("steps", 0)),
                "summary": result.message,
                **reached,
            }
        )
        if stop_on_failure and name in SANITY and not result.ok:
            stopped = name
            break
    run_result = RunResult.from_journal(
        journal,
        steps,
        stopped=stopped,
        plan=[{"stage": name, "arguments": call_arguments(arguments)} for name, arguments in calls],
    )
    run_result.call = {
        "stage": "run",
        "arguments": {"stop_on_failure": stop_on_failure},
        "parent": None,
        "seconds": round(time.perf_counter() - started, 3),
        "steps": sum(step["steps"] for step in steps if not step["skipped"]),
    }
    journal.append(run_result)
    return run_result


def _load_weights(playbook, result):
    """Gives the model the weights a skipped training stage left (saved beside the journal)."""
    weights = (result.call or {}).get("weights")
    if weights and playbook.directory is not None:
        model = playbook.model
        if model.optimizer is not None and not model.optimizer.built:  # Its state was saved too (as Keras's
            with playbook.session.scope():  # BackupAndRestore does it).
                model.optimizer.build(model.trainable_variables)
        model.load_weights(os.path.join(playbook.directory, weights))
