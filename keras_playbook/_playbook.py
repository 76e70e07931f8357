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
from keras_playbook import _inputs as inputs
from keras_playbook import _losses as losses
from keras_playbook import _validation as validation
from keras_playbook._class_weight import check_class_weight, num_classes_of
from keras_playbook._class_weight import describe as describe_class_weight
from keras_playbook._compat import string_batches
from keras_playbook._fingerprints import setup_fingerprints, weights_fingerprint
from keras_playbook._journal import JOURNAL_FILENAME, Journal
from keras_playbook._layer_state import check_adapted
from keras_playbook._loss_key import check_loss_key
from keras_playbook._records import SetupRecord
from keras_playbook._runner import Runner
from keras_playbook._session import (
    Session,
    architecture_digest,
    check_single_learning_rate,
    innermost_optimizer,
    read_value,
    resolve_strategy,
)
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
            Python lists are read as `model.fit` users type them: a list of
            numbers (also NumPy scalars, `list(y)`) or of equal-shaped rows
            (`list(x)`, for a model of one input) is one array; a list of
            arrays, one per input, stays the model's inputs. Arrays are
            checked whole for NaN and inf.
        validation_data: Same forms as `train_data`, or None.
        loss: Loss for `compile`; required when the model is not compiled.
        optimizer: Optimizer for `compile`; defaults to the model's own, or
            Adam for an uncompiled model (Wilson et al. 2017: Adam for initial testing).
        metrics: Metrics for `compile`; defaults to the model's own.
        batch_size: Examples per replica (the global batch is this times the
            number of replicas). Defaults to 32, or to the data's own batch
            size for batched data. A `keras.utils.PyDataset` makes its own
            batches (read through Keras's own data adapter, with its workers
            and a new batch order every epoch, as `model.fit` reads it): its
            batch size is the one, and no stage changes it. A global batch
            larger than the training data warns, naming both.
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
        steps_per_epoch: Training batches per epoch, as `model.fit` takes
            it: required for infinite training data (a `.repeat()`ed
            dataset, a PyDataset whose `num_batches` is None), which is
            refused without it. Every stage's epoch is this long (`fit`,
            the searches' trials, the range test's `allow_repeat=False`
            check). Part of the set-up's identity.
        validation_steps: Validation batches per evaluation, as `model.fit`
            takes it; required for infinite validation data. Part of the
            set-up's identity.
        loss_key: The name the model logs its loss under, for a model whose
            own `train_step`/`test_step` report it (compiled with only an
            optimizer, as in the Keras guide "Customizing what happens in
            fit()"). None finds it: "loss" when logged, else the one logged
            name ending in "loss"; otherwise every stage that reads a loss
            refuses, naming the logged names. Every stage reads the loss
            (and `val_<loss_key>`, searches' default objective) there. Part
            of the set-up's identity when given.
        class_weight: None, or a dict class id -> weight, as `model.fit`
            takes it (e.g. `{0: 1.0, 1: 5.0}`; classes left out weigh 1):
            every stage that trains weighs each training example by the
            weight of its class (a sparse label, the argmax of a one-hot
            label, or a binary 0/1 label), times its own `sample_weight`
            where the data has one (Keras refuses the two together; here
            they multiply). Validation data is not weighted, as in Keras.
            Models with a single output only, as in Keras. Keys are checked
            against the classes the model's output holds before any
            compute. `fit(class_weight=...)` replaces it for one run. Part of
            the set-up's identity.
        validation_split: A float in (0, 1), as `model.fit` takes it: the
            last fraction of the training arrays (before any shuffling)
            becomes the validation data. Arrays only; not with
            `validation_data`.

    Raises:
        TypeError: for a model, data, strategy or batch size of the wrong type.
        ValueError: for a model without loss, empty data, NaN or inf (in
            any row of arrays; in the first 3 batches of a stream, which the
            set-up's message says), lists that are neither one array of rows
            nor the model's inputs, a bad `class_weight` or
            `validation_split`, labels that do not fit the model's output,
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
        loss_key=None,
        steps_per_epoch=None,
        validation_steps=None,
        class_weight=None,
        validation_split=None,
    ):
        validation.check_bool(overwrite, "overwrite")
        check_loss_key(loss_key)
        check_class_weight(class_weight)  # Its keys against the model's classes once the model is placed.
        if validation_split is not None:
            inputs.check_validation_split(train_data, validation_data, validation_split)
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
        inputs.check_length(train_data, steps_per_epoch, "training data", "steps_per_epoch")
        if validation_data is not None:
            inputs.check_length(validation_data, validation_steps, "validation data", "validation_steps")
        self._lease = _lock.Lease(directory)  # Refuses a folder another live process holds.
        found = None if directory is None or overwrite else _journal_in(directory)
        self.seed = seed
        self.verbose = verbose
        self.data_version = data_version
        self.directory = None if directory is None else os.fspath(directory)
        self.session = Session(model, strategy=strategy)  # Places; changes nothing.
        self.session.loss_key = loss_key
        self.session.check_loss(loss)
        check_single_learning_rate(optimizer, "`optimizer` argument")
        if optimizer is None and self.session.source_model.compiled:
            check_single_learning_rate(self.session.source_model.optimizer, "model's optimizer")
        check_adapted(self.session.source_model, self.session.builder)  # Before the model is first called.
        input_rank = _input_rank(self.session.model)
        input_dtypes = _input_dtypes(self.session.model)
        replicas = self.session.num_replicas
        if validation_split is not None:  # The last fraction, before shuffling, as model.fit takes it.
            train_data, validation_data = inputs.split_validation(train_data, None, validation_split, input_dtypes)
        self.train_data = data_module.make_pipeline(
            train_data,
            batch_size=batch_size,
            num_replicas=replicas,
            shuffle=True,
            seed=seed,
            input_rank=input_rank,
            input_dtypes=input_dtypes,
            name="training data",
            steps=steps_per_epoch,
        )
        self.validation_data = None
        if validation_data is not None:
            self.validation_data = data_module.make_pipeline(
                validation_data,
                # A PyDataset keeps its own batches (the validation batch size changes no loss).
                batch_size=None
                if isinstance(validation_data, keras.utils.PyDataset)
                else self.train_data.per_replica_batch_size,
                num_replicas=replicas,
                shuffle=False,
                seed=seed,
                input_rank=input_rank,
                input_dtypes=input_dtypes,
                name="validation data",
                steps=validation_steps,
            )
            inputs.check_same_structure(self.train_data, self.validation_data)
        inputs.check_finite(self.train_data, name="training data")
        if self.validation_data is not None:
            inputs.check_finite(self.validation_data, name="validation data")
        if replicas > 1 and _holds_strings(self.train_data):
            string_batches.install()  # Keras's own `fit` fails on strings over several replicas: see the module.
        self._check_labels(loss)
        self.class_weight = class_weight
        completed = self._check_class_weight(class_weight, loss)
        if completed is not None:
            self.train_data = self.train_data.with_class_weight(completed)
        _warn_batch_over_data(self.train_data)
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
            validation_data = data_module.validation_at(validation_data, batch_size)
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

    def _check_class_weight(self, class_weight, loss):
        """Completes `class_weight`; keeps the classes the output holds on the session, for `fit`'s own check."""
        output_shape = None
        if not isinstance(loss if loss is not None else self.model.loss, (dict, list, tuple)):
            output_shape = _output_shape(self.session.model, self.train_data.first_batches(1)[0][0], self.session)
        self.session.output_classes = num_classes_of(output_shape)
        self.session.several_outputs = output_shape is None or tf.nest.is_nested(
            self.train_data.examples.element_spec[1]
        )
        return check_class_weight(
            class_weight, num_classes=self.session.output_classes, several_outputs=self.session.several_outputs
        )

    def _setup_record(self):
        session, train = self.session, self.train_data
        validation_count = None if self.validation_data is None else self.validation_data.num_examples
        loss = self.model.loss
        loss_name = loss if isinstance(loss, str) else getattr(loss, "name", getattr(loss, "__name__", str(loss)))
        fingerprints, layers, notes = setup_fingerprints(
            session, train, self.validation_data, seed=self.seed, data_version=self.data_version
        )
        if session.loss_key is not None:  # What every stage measures.
            fingerprints["loss_key"] = session.loss_key
        if self.class_weight is not None:  # What every stage trains on.
            fingerprints["class_weight"] = describe_class_weight(self.class_weight)
        finite_note = inputs.finite_check_note(train, "training data")
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
            steps_per_epoch=train.steps,
            validation_steps=None if self.validation_data is None else self.validation_data.steps,
            ok=True,
            message=(
                f"Training on {session.num_replicas} replica(s) with "
                f"{strategy_name}: batch {train.per_replica_batch_size} per "
                f"replica = {train.global_batch_size} global"
                + ("" if train.steps is None else f", {train.steps} steps per epoch")
                + "."
                + ("" if self.class_weight is None else f" Class weights {describe_class_weight(self.class_weight)}.")
                + ("" if finite_note is None else f" {finite_note[0].upper()}{finite_note[1:]}.")
                + "".join(f" Note: {note}." for note in notes)
            ),
        )

    # The procedure ------------------------------------------------------------

    def run(
        self, epochs, plan=None, search="weight_decay", schedule="step_down", stop_on_failure=True, rerun_from=None
    ):
        """Runs the whole procedure, each decision feeding the next; running it again resumes.

        The default plan: `check_initial_loss` -> `overfit_small_sample` ->
        `find_batch_size` (left out for a `PyDataset`, which makes its own
        batches; the message says so) -> `find_lr` -> `probe_lrs` -> `sweep_momentum`
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


def _warn_batch_over_data(pipeline):
    """Warns when one global batch is larger than the training data (every step then reads all of it)."""
    if pipeline.num_examples is not None and pipeline.global_batch_size > pipeline.num_examples:
        warnings.warn(
            f"The global batch size {pipeline.global_batch_size} ({pipeline.per_replica_batch_size} per replica x "
            f"{pipeline.num_replicas} replica(s)) is larger than the {pipeline.num_examples} training examples: "
            "every step reads all of them. Pass a smaller `batch_size`.",
            stacklevel=3,
        )


def _input_rank(model):
    inputs = getattr(model, "inputs", None)
    if model.built and inputs and len(inputs) == 1:
        return len(inputs[0].shape)
    return None


def _holds_strings(pipeline):
    """True when the pipeline's examples hold a `tf.string` component."""
    return any(spec.dtype == tf.string for spec in tf.nest.flatten(pipeline.examples.element_spec))


def _input_dtypes(model):
    """The model's input dtypes in the structure of its inputs (`model.input`), or None when not known yet."""
    inputs = getattr(model, "inputs", None) if model.built else None
    if not inputs:
        return None
    if len(inputs) == 1:
        return str(inputs[0].dtype)
    try:
        structure = model.input  # A Sequential model never called has `inputs` but no `input`.
    except (AttributeError, ValueError):
        structure = inputs
    return tf.nest.map_structure(lambda tensor: str(tensor.dtype), structure)


def _output_shape(model, x_batch, session):
    """The model's output shape with a batch axis, or None for several outputs."""
    outputs = getattr(model, "outputs", None) if model.built else None
    if outputs:
        return tuple(outputs[0].shape) if len(outputs) == 1 else None
    one = data_module.as_model_input(tf.nest.map_structure(lambda array: array[:1], x_batch))
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
