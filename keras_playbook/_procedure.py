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
from keras_playbook._fingerprints import weights_fingerprint
from keras_playbook._records import RunResult
from keras_playbook._runner import STAGES, call_arguments, call_identity
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
    stops improving), keeping its best epoch. For training data that is a
    `keras.utils.PyDataset`, which makes its own batches, or infinite (its
    size unknown, its epochs `steps_per_epoch` long), `find_batch_size` is
    left out (`left_out_note` says so in `run()`'s message).
    """
    has_validation = playbook.validation_data is not None
    plan = ["check_initial_loss", "overfit_small_sample", "find_batch_size", "find_lr", "probe_lrs"]
    if left_out_note(playbook):  # A PyDataset makes its own batches; infinite data has no size to cap one.
        plan.remove("find_batch_size")
    optimizer = innermost_optimizer(playbook.model.optimizer)
    if has_validation and any(isinstance(getattr(optimizer, name, None), float) for name in ("momentum", "beta_1")):
        plan.append("sweep_momentum")
    if has_validation and search is not None:
        plan.append("grid_weight_decay" if search == "weight_decay" else "tune_lr_wd")
    plan.append(("fit", {"epochs": epochs, "schedule": schedule, "restore_best": True, "verbose": 0}))
    return plan


def left_out_note(playbook):
    """What the default plan leaves out for this Playbook's data, as a sentence for `run()`'s message, or None."""
    train = playbook.train_data
    if train.py_dataset is not None:
        return (
            "find_batch_size was left out of the plan: the training data is a keras.utils.PyDataset, which makes "
            f"its own batches ({train.global_batch_size} examples), so no other batch size can be tried."
        )
    if train.infinite:
        return (
            "find_batch_size was left out of the plan: the training data is infinite (repeated), so its size, "
            f"which caps a batch, is unknown, and an epoch is {train.steps} steps, which a larger batch would make "
            "longer in examples. The batch size is the one you passed."
        )
    return None


def plan_calls(playbook, plan):
    """Complete, checked calls of `plan`: a list of `(name, arguments)`, before any compute.

    Every call's arguments go through its stage's check (`StageSpec.check`),
    so a value a stage refuses (`grid_weight_decay(values=[-1])`, a
    learning rate under one cycle) is refused before the first stage runs.

    Raises:
        TypeError: for a plan that is not a list of names or pairs, or an
            argument of the wrong type.
        ValueError: for an unknown stage or argument, a value a stage
            refuses, a stage needing validation data without any, or a
            stage needing a learning rate before the plan or the journal
            settles one.
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
        STAGES[name].check_arguments(arguments, playbook.session)
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


def _recorded(journal, name, arguments, start, starts_from=None):
    """The index of the recorded call of `name` with `arguments` at or after `start` to read back, or None.

    A top-level call of `name` counts when its arguments are the same (by
    `call_identity`: display settings left out) and it started from the
    model state this call would start from (`starts_from`, a
    `weights_fingerprint`; None checks nothing): the latest such call, so a
    plan changed and changed back reads back what it ran before instead of
    training again. Calls recorded before their starting state was (no
    `started_from`) keep the first rule: only the first call of `name` from
    `start` counts.
    """
    wanted, _ = call_identity(call_arguments(arguments))
    found = None
    for index in range(start, len(journal)):
        call = journal[index].call or {}
        if call.get("stage") != name or call.get("parent") is not None:
            continue
        same = call_identity(call.get("arguments", {}))[0] == wanted
        if "started_from" not in call:
            if found is None:
                return index if same else None
            break
        if same and (starts_from is None or call["started_from"] == starts_from):
            found = index
    return found


def _check_rerun_from(rerun_from, calls):
    if rerun_from is not None and rerun_from not in [name for name, _ in calls]:
        raise ValueError(
            "run: argument `rerun_from` must be None or the name of a stage in the plan, which then runs again "
            f"with every stage after it. Received: rerun_from={rerun_from!r}; the plan: "
            f"{[name for name, _ in calls]}."
        )


def run(
    playbook, epochs, plan=None, search="weight_decay", schedule="step_down", stop_on_failure=True, rerun_from=None
):
    """Runs the plan (by default `default_plan`), reading back the leading calls the journal already holds.

    Every argument and the whole plan are checked before any compute. Only
    results of the current set-up are read back (`Journal.start`); a sanity
    stage whose recorded verdict failed is run again (a fix may be
    invisible to the set-up's fingerprint), and so are `rerun_from` and
    every stage after it.

    Returns:
        A `RunResult`, also appended to the journal.
    """
    playbook._lease.check("run")  # Refused once another Playbook (or process) took the folder over.
    validation.check_int(epochs, "epochs", "run")
    if search not in SEARCHES:
        raise ValueError(f"run: argument `search` must be one of {SEARCHES}. Received: search={search!r}.")
    validation.check_bool(stop_on_failure, "stop_on_failure", "run")
    check_schedule(schedule, "run")
    calls = plan_calls(playbook, default_plan(playbook, epochs, search, schedule) if plan is None else plan)
    _check_rerun_from(rerun_from, calls)
    _check_saved_weights(playbook, calls, rerun_from)
    _check_model_unchanged(playbook, calls, rerun_from)
    runner, journal = playbook._runner, playbook.journal
    started = time.perf_counter()
    position, resuming, steps, stopped = journal.start + 1, True, [], None
    trained = reset = False  # A training stage was read back; the model was given its starting state.
    starts_from = weights_fingerprint(playbook.session.initial_weights)  # Where the next stage would start.
    final_training = None  # The run's last training stage, read back or run: what its result reports.
    for name, arguments in calls:
        resuming = resuming and name != rerun_from
        index = _recorded(journal, name, arguments, position, starts_from) if resuming else None
        failed_before = index is not None and name in SANITY and not journal[index].ok
        reached = {}
        if index is not None and not failed_before:
            result, position = journal[index], index + 1
            _load_weights(playbook, result)
            if STAGES[name].trains:  # Loaded by the library: not the user's training.
                runner.keep_left_weights()
                starts_from = (result.call or {}).get("weights_digest")
            trained = trained or STAGES[name].trains
        else:
            if not (trained or failed_before or reset):
                # The first stage that runs starts where a new process would: from the weights of the last
                # training stage read back (loaded from its file), else from the state the Playbook started
                # with, not from what was trained by hand or by an earlier run in this process.
                playbook.session.restore_initial_state()
                runner.keep_left_weights()
                reset = True
            if resuming and steps:  # The first stage run after reading back: how long getting here took.
                reached = {"reached_after": round(time.perf_counter() - started, 3)}
            runner.call(name, arguments)
            result = journal[len(journal) - 1]
            # A failed sanity check runs again (after a fix the fingerprint may not see); when it settles
            # nothing, what came after it in the journal still holds and is read back.
            resuming = failed_before and not result.settles()
            position = index + 1 if resuming else len(journal)
        call = result.call or {}
        final_training = result if STAGES[name].trains else final_training
        steps.append(
            {
                "stage": name,
                "ok": bool(result.ok),
                "skipped": index is not None and not failed_before,
                "seconds": float(call.get("seconds", 0.0)),
                "steps": int(call.get("steps", 0)),
                "summary": result.message,
                **reached,
            }
        )
        if stop_on_failure and name in SANITY and not result.ok:
            stopped = name
            break
    ignored = sorted({callback for _, arguments in calls for callback in call_identity(call_arguments(arguments))[1]})
    notes = list(playbook.setup_changes)
    if plan is None and left_out_note(playbook):
        notes.append(left_out_note(playbook))
    playbook.setup_changes = []  # Said once, by the first run after the Playbook was made.
    if ignored:
        notes.append(
            f"Callbacks without a readable get_config() ({', '.join(ignored)}) were left out in deciding what to "
            "read back from the journal."
        )
    run_result = RunResult.from_journal(
        journal,
        steps,
        stopped=stopped,
        plan=[{"stage": name, "arguments": call_arguments(arguments)} for name, arguments in calls],
        notes=notes,
        trained=final_training,
    )
    run_result.call = {
        "stage": "run",
        "arguments": {"stop_on_failure": stop_on_failure, "rerun_from": rerun_from},
        "parent": None,
        "seconds": round(time.perf_counter() - started, 3),
        "steps": sum(step["steps"] for step in steps if not step["skipped"]),
    }
    journal.append(run_result)
    return run_result


def _check_model_unchanged(playbook, calls, rerun_from=None):
    """Refuses, before anything is loaded or restored, a run that would overwrite weights changed outside the journal.

    `run` gives the model the weights of the last training stage it reads
    back, or the Playbook's initial state before the first stage it runs.
    That replaces the model's weights; it is refused when they are none of
    those the library knows: those the journal's last training stage
    saved (`call["weights_digest"]`), the initial ones, and those the
    library last left the model with in this process (after a stage, also
    an interrupted one, or a run). Weights changed after a failed sanity
    check that runs again first are measured as a fix, not replaced.

    Raises:
        ValueError: naming that the model changed outside the journal, what
            `run` would do, and what to do instead.
    """
    replacing = _what_run_replaces_weights_with(playbook, calls, rerun_from)
    if replacing is None:
        return
    journal, session = playbook.journal, playbook.session
    known = {playbook._runner.left_weights, weights_fingerprint(session.initial_weights)}
    last = next((result for result in reversed(journal.current()) if _trains(result)), None)
    if last is not None:
        known.add(last.call.get("weights_digest"))
    if weights_fingerprint(playbook.model.get_weights()) in known:
        return
    where = "" if playbook.directory is None else f" in {playbook.directory}"
    raise ValueError(
        "run: the model's weights changed outside the journal: they are neither those the Playbook last left "
        "the model with nor those its last training stage saved (the model was trained by hand, e.g. with "
        f"pb.model.fit, or weights were loaded or set). run() would {replacing}, and that training would be "
        "lost; nothing was loaded. To keep it, record the training through pb.fit (or pb.fine_tune), which the "
        "journal then holds; or save your weights first (pb.model.save_weights(...)); or start a journal from "
        f"them: a new Playbook with overwrite=True or another directory than the journal's{where}."
    )


def _what_run_replaces_weights_with(playbook, calls, rerun_from=None):
    """What `run` would give the model first (in words), following the calls it reads back; None if nothing."""
    journal = playbook.journal
    for name, index in _leading_read_back(journal, calls, playbook.session.initial_weights, rerun_from):
        if index is None:
            return f"give it the state the Playbook started with before running {name}"
        if name in SANITY and not journal[index].ok:  # Runs again on the model as it is: a fix is measured.
            return None
        if STAGES[name].trains and playbook.directory is None:  # Nothing to load: the later stages build on it.
            return f"take it as what {name} (result {index} of the journal) trained and build on it"
        if STAGES[name].trains:
            return f"give it the weights {name} trained (result {index} of the journal)"
    return None


def _leading_read_back(journal, calls, initial_weights, rerun_from=None):
    """`(name, index)` of the leading calls `run` reads back, in order, then `(name, None)` of the first it runs.

    A sanity stage whose recorded verdict failed is yielded with its index
    and ends the walk (it runs again); `rerun_from` runs.
    """
    position = journal.start + 1
    starts_from = weights_fingerprint(initial_weights)
    for name, arguments in calls:
        index = None if name == rerun_from else _recorded(journal, name, arguments, position, starts_from)
        yield name, index
        if index is None or (name in SANITY and not journal[index].ok):
            return
        position = index + 1
        if STAGES[name].trains:
            starts_from = (journal[index].call or {}).get("weights_digest")


def _trains(result):
    call = result.call or {}
    return call.get("stage") in STAGES and STAGES[call["stage"]].trains


def _check_saved_weights(playbook, calls, rerun_from=None):
    """Refuses, before any compute, a run that would read back a training stage whose saved weights are missing.

    Follows the leading calls `run` reads back (the same ones, in order, up
    to `rerun_from`); the later stages would otherwise start from another
    model than the one the journal says they start from.

    Raises:
        ValueError: naming the stage, its place in the journal and the file.
    """
    journal = playbook.journal
    for name, index in _leading_read_back(journal, calls, playbook.session.initial_weights, rerun_from):
        if index is None or (name in SANITY and not journal[index].ok):  # Runs again from here.
            return
        _saved_weights(playbook, journal[index], index)


def _saved_weights(playbook, result, index):
    """The path of the weights a recorded training stage saved, or None; refused when the file is missing."""
    weights = (result.call or {}).get("weights")
    if not weights or playbook.directory is None:
        return None
    path = os.path.join(playbook.directory, weights)
    if not os.path.exists(path):
        raise ValueError(
            f"run: {result.kind} (result {index} of the journal) is read back, and the weights it trained are "
            f"missing: {path}. The stages after it would start from another model. Put the file back, run it "
            f"again (rerun_from={result.kind!r}), or pass overwrite=True to the Playbook to start a new journal."
        )
    return path


def _load_weights(playbook, result):
    """Gives the model what a skipped training stage left: its weights (saved beside the journal) and the rest.

    A stage that leaves more than weights (`fine_tune`: layers kept frozen,
    its own optimizer) declares a `read_back` (`StageSpec`), which gives the
    model that first; the weights file (Keras's `save_weights`, which holds
    the optimizer's variables too) is then loaded into that optimizer.
    """
    index = next(position for position, recorded in enumerate(playbook.journal) if recorded is result)
    path = _saved_weights(playbook, result, index)
    if path is not None:
        model = playbook.model
        spec = STAGES.get((result.call or {}).get("stage"))
        if spec is not None and spec.read_back is not None:
            spec.read_back(result, playbook.session)
        if model.optimizer is not None and not model.optimizer.built:  # Its state was saved too (as Keras's
            with playbook.session.scope():  # BackupAndRestore does it).
                model.optimizer.build(model.trainable_variables)
        model.load_weights(path)
