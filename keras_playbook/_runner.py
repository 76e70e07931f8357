"""The stage runner: the one door every stage goes through.

A stage is a function `stage(ctx, **arguments) -> Result` registered with
`@stage(...)`, declaring the settled values it reads, the settings its own
settled values depend on, and the check of its arguments. The `Runner` checks
the arguments before anything changes, hands the stage a `StageContext`
(pipelines at the settled batch size, the settled values it reads, progress
bars, the seed), refuses stale inputs the same way for every stage, and
records the result in the journal together with its call: the stage's name,
its arguments, the settled values it read, its wall time and training steps.

This is KerasTuner's split applied to stages: the tuner (`base_tuner.py`) runs
a trial and records it; what to run next is decided from the record alone
(`_procedure.py`).

References:
    KerasTuner, `keras_tuner/src/engine/base_tuner.py` and `oracle.py`
    (github.com/keras-team/keras-tuner).
    Godbole et al. 2023, Deep Learning Tuning Playbook: a learning rate tuned
    at one batch size does not hold at another.
"""

import contextlib
import dataclasses
import hashlib
import itertools
import json
import os
import time
import uuid

import keras
import numpy as np

from keras_playbook import _validation as validation
from keras_playbook._fingerprints import weights_fingerprint
from keras_playbook._folder import collect_garbage, remove_backup
from keras_playbook._journal import stale_reason, to_builtin
from keras_playbook._loss_key import check_tracker_updated, logged_loss_key, read_loss
from keras_playbook._session import users_random_state
from keras_playbook.callbacks import StepProgress, restore_momentum

SEARCHED = "<searched>"  # `given` value of a name a stage sets itself (a search's dimension).
OPTIMIZER_SETTINGS = ("momentum", "beta_1", "weight_decay")
HYPERPARAMETERS = ("batch_size", "learning_rate", *OPTIMIZER_SETTINGS)


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """What the runner needs to know about a stage.

    Attributes:
        name: The stage's name (the Playbook method and the result's kind).
        function: `function(ctx, **arguments)`, returning a `Result` (or,
            with `returns_value`, `(result, value_to_return)`).
        requires: Settled values the stage cannot do without a valid one of:
            a stale one is refused, naming the stage to run again.
        uses: Settled values applied when in force; a stale one is replaced by
            the latest one that still holds (the set-up's, at worst).
        depends_on: Settings the stage's own settled values hold for (the
            values in force are recorded with the call).
        given: `given(arguments) -> {name: value or SEARCHED}`: the settled
            values the call's arguments set themselves.
        random_state: Give the user's global random generators back after the
            stage (measurements); False for real training, which draws on.
        returns_value: The function returns `(result, value)`; the Playbook
            method returns `value` (`fit` returns Keras's History).
        trains: The stage changes the user's model (its weights are saved
            beside the journal, and loaded again when a run skips it).
        check: `check(arguments, session)`: raises `ValueError` or
            `TypeError` for arguments the stage refuses, from the arguments
            and the model as compiled alone (no data, no journal, no
            training). `plan_calls` runs it for every call of a plan before
            any stage runs, and the runner before a stage called by hand
            changes anything.
        read_back: `read_back(result, session)`, for a training stage that
            leaves the model more than its weights (layers frozen or
            thawed, an optimizer of its own): gives the model that from the
            recorded `result` when `run` reads the stage back, before the
            weights it saved are loaded (Keras's `load_weights` then puts the
            optimizer's saved state into the optimizer it belongs to).
    """

    name: str
    function: object
    requires: tuple = ()
    uses: tuple = ()
    depends_on: tuple = ()
    given: object = None
    random_state: bool = True
    returns_value: bool = False
    trains: bool = False
    check: object = None
    read_back: object = None

    def given_values(self, arguments):
        return dict(self.given(arguments)) if self.given is not None else {}

    def check_arguments(self, arguments, session):
        """Runs the stage's argument check on complete `arguments` (see `check`).

        The user's global random generators are given back after it (KerasTuner
        draws a seed when it makes an objective's oracle).
        """
        if self.check is not None:
            with users_random_state():
                self.check(arguments, session)


STAGES = {}


def stage(name, **declarations):
    """Registers a stage function under `name` (see `StageSpec` for `declarations`)."""

    def register(function):
        STAGES[name] = StageSpec(name=name, function=function, **declarations)
        return function

    return register


_STEPS = {}  # Training steps per running stage, by key (a key survives KerasTuner's deepcopy of callbacks).
_keys = itertools.count()


class StepCounter(keras.callbacks.Callback):
    """Counts training steps into a shared tally (copies of it count into the same one)."""

    def __init__(self, key):
        super().__init__()
        self.key = key

    def on_train_batch_end(self, batch, logs=None):
        _STEPS[self.key] = _STEPS.get(self.key, 0) + 1


class StageContext:
    """What a stage gets from the runner.

    Attributes:
        session: The `Session` (strategy, model, snapshots, trial copies).
        journal: The `Journal` (read it; the runner records).
        train, validation: Pipelines at the batch size in force.
        values: The settled values the stage reads, arguments applied.
        seed: The Playbook's seed; verbose: 0 or 1; directory: its folder.
    """

    def __init__(self, runner, spec, values, key):
        self._runner = runner
        self.spec = spec
        self.session = runner.session
        self.journal = runner.journal
        self.seed = runner.seed
        self.verbose = runner.verbose
        self.directory = runner.directory
        self.values = values
        self.call_key = None  # Set by the runner: the same call at the same point of the journal has the same key.
        self._key = key
        self._pipelines = None

    def _pipeline_pair(self):
        if self._pipelines is None:  # Built on first use: the stage checks its arguments first.
            self._pipelines = self._runner.pipelines(self.values.get("batch_size"))
        return self._pipelines

    @property
    def train(self):
        """The training pipeline at the batch size in force."""
        return self._pipeline_pair()[0]

    @property
    def validation(self):
        """The validation pipeline at the batch size in force, or None."""
        return self._pipeline_pair()[1]

    @property
    def model(self):
        return self.session.model

    def callbacks(self, extra=()):
        """`extra` and the runner's step counter: callbacks for any `fit` the stage runs."""
        return [*extra, StepCounter(self._key)]

    def progress(self, total_steps, title):
        """A progress bar over `total_steps` (when verbose) and the step counter."""
        valid = validation.is_int(total_steps) and total_steps > 0
        bar = [StepProgress(int(total_steps), title)] if self.verbose and valid else []
        return self.callbacks(bar)

    def search_options(self, directory, callbacks):
        """KerasTuner's folder (by default `<Playbook directory>/tuning`), callbacks and display for a search."""
        if callbacks is not None and not isinstance(callbacks, (list, tuple)):
            raise TypeError(f"{self.spec.name}: `callbacks` must be a list of callbacks. Received: {callbacks!r}.")
        if directory is None and self._runner.folder is not None:
            directory = os.path.join(self._runner.folder, "tuning")
        return {"directory": directory, "callbacks": self.callbacks(callbacks or []), "verbose": self.verbose}

    def optimizer_changes(self):
        """The settled momentum / beta_1 / weight decay in force, for a trial copy's fresh optimizer."""
        return {name: self.values[name] for name in OPTIMIZER_SETTINGS if name in self.values}

    def measured(self, name):
        """The value of `name` a stage measured (not the set-up's), when it is the one in force; else None."""
        source = self.journal.source(name, self._runner.in_force())
        if source is None or source.kind == "setup" or name not in self.values:
            return None
        return self.values[name]

    def run(self, name, **arguments):
        """Runs another stage as a part of this one, through the same door (recorded with this stage as parent)."""
        return self._runner.call(name, self._runner.complete(name, arguments), parent=self.spec.name)

    def untrained_loss(self, sample, batch_size):
        return self._runner.untrained_loss(sample, batch_size, self.loss_key())

    def loss_key(self):
        """The key of the loss in the model's logs, the same for every stage (`_loss_key.logged_loss_key`)."""
        return logged_loss_key(self.session, self.train)


class Runner:
    """Runs stages on a Playbook's session, data and journal, and records them.

    Args:
        session, journal: The Playbook's.
        pipelines: A function `pipelines(batch_size) -> (train, validation)`.
        signature: A function `signature(name) -> inspect.Signature` of the
            stage's public method, where its arguments' defaults are declared.
        seed, verbose, directory: The Playbook's.
        lease: The Playbook's `_lock.Lease`, checked at the start of every
            call; None checks nothing. For a KerasTuner worker (whose lease
            does not write) the runner writes nothing of its own in
            `directory` (weights, backups); its searches still share
            `<directory>/tuning`.

    Attributes:
        left_weights: A digest (`weights_fingerprint`) of the weights the
            library last left the model with in this process: as the
            Playbook started, after each stage call (also an interrupted
            one) and after `run()` loaded or restored weights. `run()`
            refuses to overwrite weights that are neither these nor those
            the journal's last training stage saved.
    """

    def __init__(self, session, journal, pipelines, signature, *, seed, verbose, directory, lease=None):
        self.session = session
        self.signature = signature
        self.journal = journal
        self.pipelines = pipelines
        self.seed = seed
        self.verbose = verbose
        self.lease = lease
        self.directory = directory if lease is None or lease.writes else None
        self.folder = directory  # The Playbook's, for the searches' default folder.
        self._untrained_losses = {}
        self.left_weights = None
        self.keep_left_weights()

    def keep_left_weights(self):
        """Takes the model's weights as they are now as what the library left (see `left_weights`)."""
        self.left_weights = weights_fingerprint(self.session.model.get_weights())
        return self.left_weights

    def complete(self, name, arguments):
        """`arguments` of stage `name` with the defaults of the rest.

        Raises:
            ValueError: for an unknown stage or an argument it does not take,
                naming what is valid.
        """
        if name not in STAGES:
            raise ValueError(f"Unknown stage {name!r}. Stages: {sorted(STAGES)}.")
        signature = self.signature(name)
        try:
            bound = signature.bind(None, **arguments)
        except TypeError as error:
            raise ValueError(f"{name}: {error}. Its arguments: {list(signature.parameters)[1:]}.") from None
        bound.apply_defaults()
        completed = dict(bound.arguments)
        completed.pop(next(iter(signature.parameters)))  # `self`.
        return completed

    def in_force(self, given=None):
        """The settings in force: everything settled, then the given values (searched names left out)."""
        given = {name: value for name, value in (given or {}).items() if value is not SEARCHED}
        return {**self.journal.settled(), **given}

    def read(self, spec, arguments):
        """The settled values `spec`'s stage reads for a call with `arguments`, refusing stale required ones.

        Returns:
            `(values, in_force)`: the values the stage reads (given ones
            included, searched ones left out), and every setting in force.

        Raises:
            ValueError: naming each stale required value, the stage that
                settled it and how to get a valid one.
        """
        given = spec.given_values(arguments)
        current = self.in_force(given)
        values, stale = {}, {}
        for name in ("batch_size", *spec.requires, *spec.uses):
            if name in given or name in values:
                continue
            source = self.journal.source(name)
            if source is None:
                continue
            reason = stale_reason(source, name, current)
            if reason is None:
                values[name] = source.settles()[name]
            elif name in spec.requires:
                stale[name] = (source, reason)
            else:
                fallback = self.journal.source(name, current)
                if fallback is not None:
                    values[name] = fallback.settles()[name]
        if stale:
            raise ValueError(self._stale_advice(spec.name, stale))
        values.update({name: value for name, value in given.items() if value is not SEARCHED})
        return values, current

    def _stale_advice(self, name, stale):
        """The refusal of stale values: why, the stages to run again in the procedure's order, what may be passed."""
        reasons = "; ".join(reason for _, reason in stale.values())
        kinds = sorted({result.kind for result, _ in stale.values()}, key=_procedure_position)
        advice = f"Run {', then '.join(f'pb.{kind}()' for kind in kinds)} again"
        parameters = self.signature(name).parameters.values()
        takes_any = any(parameter.kind is parameter.VAR_KEYWORD for parameter in parameters)
        accepted = [key for key in stale if takes_any or key in {parameter.name for parameter in parameters}]
        if accepted and len(accepted) == len(stale):
            advice += f", or pass {', '.join(f'{key}=...' for key in accepted)} to {name}"
        elif accepted:
            advice += f" ({name} also takes {', '.join(f'{key}=...' for key in accepted)})"
        return (
            f"{name}: {reasons}. Hyperparameters tuned at one batch size do not carry over to another (Tuning "
            f"Playbook). {advice}."
        )

    def call(self, name, arguments, parent=None):
        """Runs stage `name` with `arguments` and records its result with the call.

        Returns:
            The stage's result (or, for a stage with `returns_value`, the value
            it returns, e.g. `fit`'s History).
        """
        if self.lease is not None:  # Refused once another Playbook (or process) took the folder over.
            self.lease.check(name)
        spec = STAGES[name]
        spec.check_arguments(arguments, self.session)  # Before anything changes.
        given_batch = spec.given_values(arguments).get("batch_size")
        if isinstance(given_batch, int):  # Data that cannot take it (a PyDataset) says so before any staleness.
            self.pipelines(given_batch)
        restore_momentum(self.session.model)  # Healed if an interrupted bare OneCycle left it cycling.
        values, current = self.read(spec, arguments)
        key = next(_keys)
        context = StageContext(self, spec, values, key)
        if spec.trains:  # Only a training stage checkpoints under it.
            context.call_key = self._call_key(name, arguments, values)
        # Where a call at the top level starts: `run()` reads back only a call that started where it would.
        started = {} if parent is not None else {"started_from": weights_fingerprint(self.session.model.get_weights())}
        train = self.pipelines(None)[0]
        if train.epoch_counter is not None:  # Data orders drawn from (seed, pass within this call): the same
            train.epoch_counter.assign(0)  # call draws the same ones, whatever this process ran before.
        start = time.perf_counter()
        try:
            with users_random_state() if spec.random_state else contextlib.nullcontext():
                if spec.random_state:  # The same call gives the same answer: copies (a Dropout's seed
                    keras.utils.set_random_seed(self.seed)  # generator) draw from the stage's seed, not the user's.
                output = spec.function(context, **arguments)
        finally:
            steps = _STEPS.pop(key, 0)
            self.keep_left_weights()  # Also after Ctrl-C: what the library left is not the user's training.
        result, returned = output if spec.returns_value else (output, output)
        weights = None
        if spec.trains and self.directory is not None:
            weights = save_weights(self.session.model, self.directory, f"{name}-{len(self.journal):03d}")
            if hasattr(result, "weights"):
                result.weights = weights
        result.call = {
            "stage": name,
            "arguments": call_arguments(arguments),
            "read": to_builtin(values),
            "depends_on": {setting: current[setting] for setting in spec.depends_on if setting in current},
            "seconds": round(time.perf_counter() - start, 3),
            "steps": steps,
            "parent": parent,
            "weights": weights,
            **({"weights_digest": self.left_weights} if spec.trains else {}),  # What `run()` compares with.
            **started,
        }
        self.journal.append(result)
        if self.directory is not None:
            if context.call_key is not None:  # Recorded: its backup has nothing left to resume.
                remove_backup(self.directory, context.call_key)
            if parent is None:  # No training in progress: files no record refers to go.
                collect_garbage(self.directory, self.journal)
        return returned

    def _call_key(self, name, arguments, values):
        """A digest of a call, of its journal (`Journal.id`) and of its point in it: the same call there, the same key.

        The key names the call's backup (`<directory>/backup/<key>`): only
        the same call at the same point of the same journal resumes it.
        """
        identity, _ = call_identity(call_arguments(arguments))
        text = json.dumps([self.journal.id, name, identity, to_builtin(values), len(self.journal)], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def untrained_loss(self, sample, batch_size, loss_key=None):
        """The model's loss at its initial weights on `sample` (measured once per batch size, then kept)."""
        if batch_size not in self._untrained_losses:
            model = self.session.model
            with self.session.preserved():
                model.set_weights(self.session.initial_weights)
                self._untrained_losses[batch_size] = loss_on(model, sample, batch_size, loss_key)
        return self._untrained_losses[batch_size]


# The order in which the procedure settles values: stale ones are measured again in this order.
_SETTLING_ORDER = ("find_batch_size", "find_lr", "tune_lr_wd", "sweep_momentum", "grid_weight_decay", "run_round")


def _procedure_position(kind):
    return _SETTLING_ORDER.index(kind) if kind in _SETTLING_ORDER else len(_SETTLING_ORDER)


def save_weights(model, directory, name):
    """Saves the weights as `<directory>/weights/<name>-<token>.weights.h5`, atomically; returns the relative path.

    The random token keeps two saves from ever writing one file (another
    Playbook, a rerun at the same point of the journal).
    """
    relative = os.path.join("weights", f"{name}-{uuid.uuid4().hex[:8]}.weights.h5")
    path = os.path.join(directory, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = os.path.join(os.path.dirname(path), f".{name}.partial.weights.h5")
    model.save_weights(temporary)
    os.replace(temporary, path)
    return relative


def loss_on(model, sample, batch_size, loss_key=None):
    """The model's loss on `sample` as it is now, read at `loss_key` (`_loss_key.read_loss`)."""
    x, y = sample[:2]
    weights = sample[2] if len(sample) > 2 else None
    logs = model.evaluate(x, y, sample_weight=weights, batch_size=batch_size, verbose=0, return_dict=True)
    loss = read_loss(logs, loss_key, "the model's test_step")
    check_tracker_updated(model, loss, "test_step")
    return loss


# Callbacks that only show or log what happens: never part of what defines a result.
DISPLAY_CALLBACKS = ("TensorBoard", "CSVLogger", "ProgbarLogger", "RemoteMonitor", "StepProgress")


def call_identity(arguments):
    """What of a call's recorded arguments (`call_arguments`) defines its result, and the callbacks left out.

    `verbose` and display callbacks (`DISPLAY_CALLBACKS`) never count; any
    other callback counts through its `get_config()`, and one without a
    readable config is left out (and named, so `run()` can say so).

    Returns:
        `(identity, ignored)`: the arguments without what does not count, and
        the class names of the callbacks left out for want of a config.
    """
    ignored = []

    def kept(value, key=None):
        if isinstance(value, dict):
            return {name: kept(item, name) for name, item in value.items() if name != "verbose"}
        if isinstance(value, list) and key == "callbacks":
            remaining = []
            for callback in value:
                name = callback.get("class") if isinstance(callback, dict) else str(callback).strip("<>")
                if name in DISPLAY_CALLBACKS:
                    continue
                if not isinstance(callback, dict):
                    ignored.append(name)
                    continue
                remaining.append(kept(callback))
            return remaining
        if isinstance(value, list):
            return [kept(item) for item in value]
        return value

    return kept(arguments), ignored


def call_arguments(arguments):
    """A stage call's arguments as JSON: objects (callbacks, rules, schedules) by their class or function name."""

    def convert(value):
        if isinstance(value, dict):
            return {str(key): convert(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [convert(item) for item in value]
        if isinstance(value, np.generic):
            return value.item()
        if value is None or isinstance(value, (str, int, float, bool)):
            return value
        if callable(value) and hasattr(value, "__qualname__"):
            return f"<{value.__module__}.{value.__qualname__}>"
        config = getattr(value, "get_config", None)
        if callable(config):
            try:
                return {"class": type(value).__name__, "config": convert(config())}
            except (NotImplementedError, TypeError):
                pass
        return f"<{type(value).__name__}>"

    return convert(dict(arguments))
