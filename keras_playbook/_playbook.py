"""The Playbook: a user's model and data, and the tuning procedure as methods.

The Playbook validates everything up front, places the model in the
strategy's scope, turns the data into one pipeline and starts (or carries on)
the journal. Each stage method (inherited from `_stage_methods.py`) is one call into
the stage runner (`_runner.py`), which hands the stage what it needs, refuses stale inputs and
records the result with its call; `run()` chains the stages (`_procedure.py`).
Only `fit` and `fine_tune` change the user's model.
"""

import inspect
import os
import uuid
import warnings

import keras
import numpy as np
import tensorflow as tf

from keras_playbook import _data as data_module
from keras_playbook import _folder, _lock, _procedure
from keras_playbook import _losses as losses
from keras_playbook import _validation as validation
from keras_playbook._fingerprints import setup_fingerprints, weights_fingerprint
from keras_playbook._journal import JOURNAL_FILENAME, Journal
from keras_playbook._records import SetupRecord
from keras_playbook._runner import Runner
from keras_playbook._session import Session, architecture_digest, innermost_optimizer, read_value, resolve_strategy
from keras_playbook._stage_methods import StageMethods


def _journal_in(directory):
    """The journal a directory holds, or None; a file that is not one is refused, never overwritten."""
    path = os.path.join(os.fspath(directory), JOURNAL_FILENAME)
    if not os.path.exists(path):
        return None
    try:
        journal = Journal.load(path)
    except (ValueError, KeyError, TypeError) as error:  # json.JSONDecodeError is a ValueError.
        raise ValueError(
            f"{path} is not a journal this library can read ({type(error).__name__}: {error}). It was left as it "
            "is: move it away, pass another `directory`, or overwrite=True to start a new journal there."
        ) from None
    if not journal or journal[0].kind != "setup":
        raise ValueError(
            f"{path} does not start with a set-up record. Pass another `directory`, or "
            "overwrite=True to start a new journal there."
        )
    return journal


def _initial_weights_file(directory, index):
    """Where the initial weights of the set-up recorded at journal position `index` are kept, relative."""
    return None if directory is None else os.path.join("weights", f"initial-{index:03d}-{uuid.uuid4().hex[:8]}.npz")


def _save_initial_weights(directory, relative, weights):
    """Saves a `get_weights()` list as `<directory>/<relative>` (NumPy's .npz), atomically."""
    path = os.path.join(directory, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = path + ".partial.npz"
    np.savez(temporary, *weights)
    os.replace(temporary, path)


def _load_initial_weights(directory, relative):
    with np.load(os.path.join(directory, relative)) as arrays:
        return [arrays[f"arr_{index}"] for index in range(len(arrays.files))]


class Playbook(StageMethods):
    """Runs the disciplined tuning procedure on a Keras model.

    Args:
        model: A `keras.Model` (compiled or not), or a builder: a function
            taking no argument and returning a new model. With a builder,
            trial models are built by calling it; with a model, by cloning.
        train_data: `(x, y)` or `(x, y, sample_weight)` NumPy arrays, a
            `tf.data.Dataset` (batched or not) or a `keras.utils.PyDataset`.
        validation_data: Same forms as `train_data`, or None.
        loss: Loss for `compile`; required when the model is not compiled.
        optimizer: Optimizer for `compile`; defaults to the model's own, or
            Adam for an uncompiled model (Wilson et al. 2017: Adam for initial testing).
        metrics: Metrics for `compile`; defaults to the model's own.
        batch_size: Examples per replica (the global batch is this times the
            number of replicas). Defaults to 32, or to the data's own batch
            size for batched data.
        strategy: A `tf.distribute.Strategy`; None picks `MirroredStrategy`
            when two or more GPUs are visible, else the default strategy.
        directory: Folder for the journal (`journal.json`, rewritten after
            every stage). None keeps the journal in memory only. A journal
            already there is carried on. When it belongs to this set-up (the
            same data by value, layer configs, loss, optimizer and its
            initial config, batch size, seed and replicas: see
            `SetupRecord.fingerprints`), what earlier runs settled holds and
            `run()` reads their stages back; the model starts from the
            initial weights saved with the journal (an unseeded builder
            draws new ones on every run; a warning says when they differ
            from yours; after a failed sanity check, weights that differ
            are taken as a fix and start a new set-up). When a component differs, a new set-up record is
            appended: the earlier results stay as history, nothing measured
            under them is read back or settled, and a warning (and `run()`'s
            message) names what changed. One process writes a directory
            at a time (`<directory>/.lock`): a directory another live
            process uses is refused, naming it; in this process, a new
            Playbook on the directory takes it over and the earlier one
            refuses further stages. A worker of a distributed KerasTuner
            search (`KERASTUNER_ORACLE_IP` set, `KERASTUNER_TUNER_ID` other than the chief) reads the
            journal and never writes it.
        overwrite: Start a new journal in `directory` even if one is there;
            the old journal and the files it owned (`weights/`, `backup/`,
            `tuning/`) are removed once every argument has been checked.
        seed: Seed of shuffling and of the samples stages draw.
        data_version: Your name for the data (e.g. "v2" or a commit id),
            part of the set-up's identity. Arrays are fingerprinted by their
            values without it; a dataset that reads in a random order (an
            unseeded `shuffle()`, random augmentation) cannot be, and a
            change to it is seen only through `data_version`.
        verbose: 1 shows progress bars for stages that train, 0 is silent.

    Raises:
        TypeError: for a model, data, strategy or batch size of the wrong type.
        ValueError: for a model without loss, empty data, NaN or inf in the
            first batches, labels that do not fit the model's output,
            validation data whose structure differs from the training data,
            a file in `directory` that is not a journal, or a `directory`
            another live process writes (naming it). All are raised
            before any training, and the journal on disk is left as it was.

    Example:

    ```python
    pb = Playbook(model, (x_train, y_train), validation_data=(x_val, y_val),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  batch_size=64, directory="runs/exp1")
    print(pb.check_initial_loss().message)
    print(pb.overfit_small_sample().message)
    history = pb.fit(epochs=20)
    print(pb.journal)
    ```
    """

    def __init__(
        self,
        model,
        train_data,
        validation_data=None,
        *,
        loss=None,
        optimizer=None,
        metrics=None,
        batch_size=None,
        strategy=None,
        directory=None,
        overwrite=False,
        seed=0,
        verbose=1,
        data_version=None,
    ):
        validation.check_bool(overwrite, "overwrite")
        if batch_size is not None:
            data_module.validate_batch_size(batch_size)
        if directory is not None and not isinstance(directory, (str, os.PathLike)):
            raise TypeError(
                f"Argument `directory` must be a path (str or os.PathLike) or None. Received: directory={directory!r}."
            )
        if verbose not in (0, 1):
            raise ValueError(f"Argument `verbose` must be 0 or 1. Received: verbose={verbose!r}.")
        if data_version is not None and not isinstance(data_version, (str, int)):
            raise TypeError(
                "Argument `data_version` must be a str or an int naming the data, or None. "
                f"Received: data_version={data_version!r} (of type {type(data_version).__name__})."
            )
        resolve_strategy(strategy)  # TypeError before a builder is called.
        self._lease = _lock.Lease(directory)  # Refuses a folder another live process holds.
        found = None if directory is None or overwrite else _journal_in(directory)
        self.seed = seed
        self.verbose = verbose
        self.data_version = data_version
        self.directory = None if directory is None else os.fspath(directory)
        self.session = Session(model, strategy=strategy)  # Places; changes nothing.
        self.session.check_loss(loss)
        input_rank = _input_rank(self.session.model)
        replicas = self.session.num_replicas
        self.train_data = data_module.make_pipeline(
            train_data,
            batch_size=batch_size,
            num_replicas=replicas,
            shuffle=True,
            seed=seed,
            input_rank=input_rank,
            name="training data",
        )
        self.validation_data = None
        if validation_data is not None:
            self.validation_data = data_module.make_pipeline(
                validation_data,
                batch_size=self.train_data.per_replica_batch_size,
                num_replicas=replicas,
                shuffle=False,
                seed=seed,
                input_rank=input_rank,
                name="validation data",
            )
            data_module.check_same_structure(self.train_data, self.validation_data)
        data_module.check_finite(self.train_data, name="training data")
        if self.validation_data is not None:
            data_module.check_finite(self.validation_data, name="validation data")
        self._check_labels(loss)
        self.session.compile(loss=loss, optimizer=optimizer, metrics=metrics)
        self.session.ensure_built(self.train_data.first_batches(1)[0][0])
        setup = self._setup_record()
        # What a run says about the set-up before its own message: what changed since the journal's last
        # set-up, or that the model starts from the initial weights saved with it.
        self.setup_changes = []
        if self.directory is not None:
            for note in setup.notes:  # What a rerun cannot see change.
                warnings.warn(f"Note: {note}.", stacklevel=2)
        self._lease.take(self)  # Before any write: this Playbook alone writes the folder (an earlier one stops).
        if found is not None and not self._lease.writes:
            found.path = None  # A KerasTuner worker reads the chief's journal and never writes it.
        if found is not None:
            self.journal = found  # Carried on: as history, or as this set-up's record.
            self._carry_on(setup)
        else:
            path = os.path.join(self.directory, JOURNAL_FILENAME) if self._lease.writes else None
            if overwrite and self._lease.writes:  # Everything the old journal owned goes with it.
                _folder.remove_owned(self.directory, JOURNAL_FILENAME)
            self.journal = Journal(path)
            self._start_setup(setup)
        self.session.keep_initial_state()  # What a run starts from when no training stage is read back.
        self._runner = Runner(
            self.session,
            self.journal,
            self._pipelines,
            lambda name: inspect.signature(getattr(Playbook, name)),
            seed=seed,
            verbose=verbose,
            directory=self.directory,
            lease=self._lease,
        )

    def _start_setup(self, setup):
        """Appends `setup` to the journal, its initial weights saved beside it."""
        relative = _initial_weights_file(self.directory if self._lease.writes else None, len(self.journal))
        if relative is not None:
            _save_initial_weights(self.directory, relative, self.session.initial_weights)
        setup.initial_weights = {"digest": setup.initial_weights["digest"], "file": relative}
        self.journal.append(setup)

    def _carry_on(self, setup):
        """Carries on a journal: this set-up's record when it is the same set-up, else a new set-up after it."""
        previous = self.journal.setup
        changed = previous.differences(setup)
        if changed:
            self.setup_changes = [
                "The set-up changed since the journal's last run ("
                + "; ".join(changed)
                + "): its earlier results are kept as history, and nothing measured under them is read back "
                "or used."
            ]
            warnings.warn(
                f"{self.journal.path}: {self.setup_changes[0]} Pass overwrite=True to start a new journal instead.",
                stacklevel=3,
            )
            self._start_setup(setup)
            return
        saved = previous.initial_weights or {}
        if saved.get("digest") in (None, setup.initial_weights["digest"]):
            return
        failed = [
            result.kind for result in self.journal.current() if result.kind in _procedure.SANITY and not result.ok
        ]
        if failed:  # Weights changed by hand after a failed sanity check are a fix: they are not replaced.
            self.setup_changes = [
                f"The model's initial weights differ from those of the journal's set-up, whose {failed[-1]} "
                "failed: they are taken as a fix, and a new set-up starts from them (the earlier results are "
                "kept as history)."
            ]
            warnings.warn(self.setup_changes[0], stacklevel=3)
            self._start_setup(setup)
            return
        path = os.path.join(self.directory, saved["file"]) if saved.get("file") else None
        if path is None or not os.path.exists(path):
            note = (
                f"The initial weights of this set-up were saved in {path}, which is missing: the model starts from "
                "yours, so results read back from the journal were measured from other initial weights. Pass "
                "overwrite=True to start afresh."
            )
        else:
            weights = _load_initial_weights(self.directory, saved["file"])
            with self.session.scope():
                self.model.set_weights(weights)
            self.session.initial_weights = self.model.get_weights()
            note = (
                f"The model's initial weights differ from those this set-up started from (an unseeded builder "
                f"draws new ones on every run): the model starts from the ones saved in {path}, so that what the "
                "journal measured holds. If you changed them on purpose (other pretrained weights, a fix), pass "
                "overwrite=True to start from yours."
            )
        self.setup_changes = [note]
        warnings.warn(note, stacklevel=3)

    def _call(self, name, arguments):
        """Runs stage `name` through the runner with a method's arguments (its `locals()`)."""
        return self._runner.call(name, {key: value for key, value in arguments.items() if key != "self"})

    def _pipelines(self, batch_size=None):
        """Training and validation pipelines at `batch_size` per replica (None: the Playbook's)."""
        train, validation_data = self.train_data, self.validation_data
        if batch_size is not None and batch_size != train.per_replica_batch_size:
            train = train.with_batch_size(batch_size)
            if validation_data is not None:
                validation_data = validation_data.with_batch_size(batch_size)
        return train, validation_data

    # Properties -------------------------------------------------------------

    @property
    def model(self):
        """The model being trained: the user's, or its copy in the strategy's scope."""
        return self.session.model

    @property
    def strategy(self):
        return self.session.strategy

    # Validation -----------------------------------------------------------

    def _check_labels(self, loss):
        model = self.session.model
        loss = loss if loss is not None else model.loss
        if isinstance(loss, (dict, list, tuple)):
            return
        first_x = self.train_data.first_batches(1)[0][0]
        output_shape = _output_shape(model, first_x, self.session)
        if output_shape is None:
            return
        info = losses.describe_loss(loss)
        losses.check_labels_fit(info, data_module.labels_of(self.train_data), output_shape, "training data")
        if self.validation_data is not None:
            losses.check_labels_fit(info, data_module.labels_of(self.validation_data), output_shape, "validation data")

    def _setup_record(self):
        session, train = self.session, self.train_data
        validation_count = None if self.validation_data is None else self.validation_data.num_examples
        loss = self.model.loss
        loss_name = loss if isinstance(loss, str) else getattr(loss, "name", getattr(loss, "__name__", str(loss)))
        fingerprints, layers, notes = setup_fingerprints(
            session, train, self.validation_data, seed=self.seed, data_version=self.data_version
        )
        strategy_name = (
            type(session.strategy).__name__.lstrip("_").replace("DefaultDistributionStrategy", "DefaultStrategy")
        )
        return SetupRecord(
            strategy=strategy_name,
            num_replicas=session.num_replicas,
            per_replica_batch_size=train.per_replica_batch_size,
            global_batch_size=train.global_batch_size,
            num_train_examples=train.num_examples,
            num_validation_examples=validation_count,
            model_name=self.model.name,
            num_parameters=int(self.model.count_params()),
            loss=str(loss_name),
            optimizer=_jsonable(self.model.optimizer.get_config()),
            architecture=architecture_digest(self.model),
            initial_values=_optimizer_values(self.model.optimizer),
            fingerprints=fingerprints,
            layers=layers,
            initial_weights={"digest": weights_fingerprint(session.initial_weights), "file": None},
            notes=notes,
            ok=True,
            message=(
                f"Training on {session.num_replicas} replica(s) with "
                f"{strategy_name}: batch {train.per_replica_batch_size} per "
                f"replica = {train.global_batch_size} global." + "".join(f" Note: {note}." for note in notes)
            ),
        )

    # The procedure ------------------------------------------------------------

    def run(
        self, epochs, plan=None, search="weight_decay", schedule="step_down", stop_on_failure=True, rerun_from=None
    ):
        """Runs the whole procedure, each decision feeding the next; running it again resumes.

        The default plan: `check_initial_loss` -> `overfit_small_sample` ->
        `find_batch_size` -> `find_lr` -> `probe_lrs` -> `sweep_momentum`
        (when the optimizer has a momentum or `beta_1`) -> `grid_weight_decay`
        (or `tune_lr_wd`) -> `fit(epochs, schedule, restore_best=True)`, with
        the stages that judge on validation data left out without it
        (Johnson, EECS 498 Lecture 11, steps 1-6; Smith 2018; Tuning
        Playbook; Krizhevsky et al. 2012). A failed sanity verdict (initial
        loss off, cannot overfit, no learning rate found) stops the run.

        With a `directory`, running the same script again reads back every
        finished stage whose call is unchanged instead of running it, reruns
        from the first stage whose call changed, and continues an interrupted
        final `fit` from its last finished epoch (Keras's `BackupAndRestore`).
        Only results of this set-up are read back (the same data, model,
        loss, optimizer, batch size and seed: see `directory`); a sanity
        stage whose verdict failed always runs again, so "fix it and run
        again" works. `verbose` and display callbacks (`TensorBoard`,
        `CSVLogger`, ...) are not part of a call: changing them reruns
        nothing. The first stage that runs starts where a new process would:
        from the weights of the last training stage read back, else from the
        state the Playbook started with.

        Args:
            epochs: Epochs of the final training (>= 1).
            plan: None for the default plan, or a list of stage names and
                `(name, arguments)` pairs, e.g. `["check_initial_loss",
                "find_lr", ("fit", {"epochs": 30, "schedule": "one_cycle"})]`.
            search: The weight-decay stage of the default plan:
                "weight_decay" (`grid_weight_decay`), "lr_wd" (`tune_lr_wd`) or
                None (none).
            schedule: The final training's schedule (see `fit`).
            stop_on_failure: Stop at a failed sanity verdict (False goes on).
            rerun_from: None, or the name of a stage in the plan: it and every
                stage after it run again, what comes before is read back. For
                a change the set-up's fingerprint cannot see (a custom
                layer's code, data read in a random order without
                `data_version`), short of `overwrite=True`.

        Returns:
            A `RunResult`, also appended to the journal: each value the
            final training trained at with the stage that settled it, each
            stage's time and training steps, the final metrics at the best
            epoch, the findings, and a message.

        Raises:
            ValueError: before any compute, for `epochs` <= 0, an unknown
                stage or argument in `plan`, a stage that needs validation
                data without any, one that needs a learning rate before
                anything settles one, or a `rerun_from` not in the plan; and
                before anything is loaded or restored, when the model's
                weights changed outside the journal (trained by hand with
                `pb.model.fit`, or loaded) and the run would replace them.
            RuntimeError: before anything, when this Playbook no longer
                holds its `directory`: a newer Playbook of this process on
                it took it over (use that one), or another process did.

        Example:

        ```python
        pb = Playbook(build_model, train, validation_data=val, directory="runs/exp1")
        result = pb.run(epochs=30)
        print(result.message)
        print(result.table())
        ```
        """
        return _procedure.run(self, epochs, plan, search, schedule, stop_on_failure, rerun_from)

    def __repr__(self):
        return (
            f"<Playbook model={self.model.name!r} strategy="
            f"{type(self.strategy).__name__} replicas={self.session.num_replicas} "
            f"batch={self.train_data.global_batch_size} results={len(self.journal)}>"
        )


def _optimizer_values(optimizer):
    """The optimizer's initial learning rate (unless it follows a schedule), momentum / beta_1 and weight decay."""
    optimizer = innermost_optimizer(optimizer)
    values = {}
    rate = getattr(optimizer, "_learning_rate", None)
    if not isinstance(rate, keras.optimizers.schedules.LearningRateSchedule) and not callable(rate):
        values["learning_rate"] = float(f"{float(read_value(optimizer.learning_rate)):.7g}")  # float32 digits dropped.
    for name in ("momentum", "beta_1"):
        value = getattr(optimizer, name, None)
        if validation.is_number(value):
            values[name] = float(value)
    if getattr(optimizer, "weight_decay", None) is not None:
        values["weight_decay"] = float(optimizer.weight_decay)
    return values


def _input_rank(model):
    inputs = getattr(model, "inputs", None)
    if model.built and inputs and len(inputs) == 1:
        return len(inputs[0].shape)
    return None


def _output_shape(model, x_batch, session):
    """The model's output shape with a batch axis, or None for several outputs."""
    outputs = getattr(model, "outputs", None) if model.built else None
    if outputs:
        return tuple(outputs[0].shape) if len(outputs) == 1 else None
    one = tf.nest.map_structure(lambda array: array[:1], x_batch)
    with session.scope():
        prediction = model(one, training=False)
    if isinstance(prediction, (list, tuple, dict)):
        return None
    return (None,) + tuple(prediction.shape[1:])


def _jsonable(config):
    def convert(value):
        if isinstance(value, dict):
            return {key: convert(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [convert(item) for item in value]
        if isinstance(value, (np.generic,)):
            return value.item()
        if value is None or isinstance(value, (str, int, float, bool)):
            return value
        return str(value)

    return convert(config)
