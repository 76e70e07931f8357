"""The Playbook: a user's model and data, and the tuning procedure as methods.

The Playbook validates everything up front, places the model in the
strategy's scope, turns the data into one pipeline and starts (or carries on)
the journal. Each stage method is one call into the stage runner
(`_runner.py`), which hands the stage what it needs, refuses stale inputs and
records the result with its call; `run()` chains the stages (`_procedure.py`).
Only `fit` and `fine_tune` change the user's model.
"""

import inspect
import os

import keras
import numpy as np
import tensorflow as tf

from keras_playbook import _data as data_module
from keras_playbook import _losses as losses
from keras_playbook import _procedure, finetune
from keras_playbook import _validation as validation
from keras_playbook._journal import JOURNAL_FILENAME, Journal
from keras_playbook._records import SetupRecord
from keras_playbook._runner import Runner
from keras_playbook._session import Session, architecture_digest, innermost_optimizer, read_value, resolve_strategy
from keras_playbook._stages import lr_range, probes, search  # Importing `_stages` registers them all.


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


def _check_belongs(journal, setup):
    """Refuses a journal written for another set-up, naming what differs."""
    differences = journal[0].differences(setup)
    if differences:
        raise ValueError(
            f"The journal in {os.path.dirname(journal.path)} belongs to another set-up ("
            + "; ".join(differences)
            + "): what it settled would not hold here. Pass another `directory`, or overwrite=True to start a "
            "new journal there."
        )


class Playbook:
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
            already there is kept and carried on when it belongs to this
            set-up (the same architecture and parameter count, data sizes,
            loss and replicas): what earlier runs settled holds. One of
            another set-up is refused, naming what differs.
        overwrite: Start a new journal in `directory` even if one is there.
        seed: Seed of shuffling and of the samples stages draw.
        verbose: 1 shows progress bars for stages that train, 0 is silent.

    Raises:
        TypeError: for a model, data, strategy or batch size of the wrong type.
        ValueError: for a model without loss, empty data, NaN or inf in the
            first batches, labels that do not fit the model's output,
            validation data whose structure differs from the training data,
            or a journal in `directory` that is not valid or belongs to
            another set-up. All are raised before any training, and the
            journal on disk is left as it was.

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
        resolve_strategy(strategy)  # TypeError before a builder is called.
        found = None if directory is None or overwrite else _journal_in(directory)
        self.seed = seed
        self.verbose = verbose
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
        if found is not None:
            _check_belongs(found, setup)
            self.journal = found  # Carried on: what earlier runs settled holds.
        else:
            path = None if directory is None else os.path.join(os.fspath(directory), JOURNAL_FILENAME)
            self.journal = Journal(path)
            self.journal.append(setup)
        self._runner = Runner(
            self.session,
            self.journal,
            self._pipelines,
            lambda name: inspect.signature(getattr(Playbook, name)),
            seed=seed,
            verbose=verbose,
            directory=self.directory,
        )

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
            ok=True,
            message=(
                f"Training on {session.num_replicas} replica(s) with "
                f"{strategy_name}: batch {train.per_replica_batch_size} per "
                f"replica = {train.global_batch_size} global."
            ),
        )

    # Stages -----------------------------------------------------------------

    def check_initial_loss(self, num_batches=10, tolerance=0.5):
        """Checks the untrained model's loss against ln C (Johnson, EECS 498 Lecture 11, step 1).

        See `keras_playbook._stages.check_initial_loss` for the arguments.

        Returns:
            An `InitialLossResult`, also appended to the journal.
        """
        return self._call("check_initial_loss", locals())

    def overfit_small_sample(self, num_batches=5, max_steps=500, learning_rate=None, target_loss=None):
        """Memorizes a few batches with regularization off (Johnson, EECS 498 Lecture 11, step 2).

        Trains a copy; the model and its regularization are unchanged. The
        rate is `learning_rate`, else the settled one (`find_lr`'s), else
        what a short range test on the sample suggests. See
        `keras_playbook._stages.overfit_small_sample` for the arguments.

        Returns:
            An `OverfitResult`, also appended to the journal.
        """
        return self._call("overfit_small_sample", locals())

    def find_lr(
        self,
        min_lr=1e-7,
        max_lr=10.0,
        num_steps=100,
        mode="exponential",
        on="train",
        stop_factor=4.0,
        smoothing=0.9,
        rule=lr_range.DEFAULT_RULE,
        num_validation_batches=4,
        allow_repeat=True,
        repeats=3,
    ):
        """Runs the learning-rate range test (Smith 2017; Smith 2018).

        A copy of the model trains while the learning rate rises from
        `min_lr` to `max_lr`; the loss of each step gives the suggested
        learning rate and the bounds for cyclic schedules. The model and its
        optimizer are untouched; the suggestion is settled in the journal, so
        `fit` and later stages use it unless told otherwise. It holds for the
        batch size it was measured at. See `keras_playbook._stages.find_lr`
        for the arguments.

        Returns:
            An `LRRangeResult`, also appended to the journal.

        Example:

        ```python
        result = pb.find_lr()
        print(result.suggested_lr, result.lr_bounds)
        pb.fit(epochs=10)   # trains at result.suggested_lr
        ```
        """
        return self._call("find_lr", locals())

    def probe_lrs(self, learning_rates=probes.DEFAULT_PROBE_LRS, num_steps=100, min_drop=0.1):
        """Short runs at a few learning rates: which one makes the loss go down? (Johnson, EECS 498 Lecture 11, step 3)

        Each rate trains its own copy from the same weights on the full
        training data; the result names the largest rate whose loss drops
        significantly without diverging, and compares it with `find_lr`'s
        suggestion when there is one. It settles nothing. See
        `keras_playbook._stages.probe_lrs` for the arguments.

        Returns:
            A `ProbeResult`, also appended to the journal.
        """
        return self._call("probe_lrs", locals())

    def find_batch_size(
        self,
        mode="power",
        criterion="throughput",
        initial_batch_size=8,
        max_batch_size=None,
        steps_per_size=5,
        max_trials=25,
        memory_limit=None,
        min_gain=0.1,
        min_steps_per_epoch=50,
    ):
        """Finds the batch size that trains fastest: doubling while the throughput still rises materially.

        The chosen per-replica size is settled in the journal: `fit` and the
        later stages use it, and a learning rate found at another batch size
        becomes stale (`fit` refuses it until `find_lr` runs again). See
        `keras_playbook._stages.find_batch_size` for the arguments.

        Returns:
            A `BatchSizeResult`, also appended to the journal.

        Example:

        ```python
        result = pb.find_batch_size(mode="binsearch")
        print(result.table())
        pb.find_lr()    # the learning rate must be found again at the new size
        ```
        """
        return self._call("find_batch_size", locals())

    def sweep_momentum(self, values=probes.DEFAULT_MOMENTUMS, num_steps=200, learning_rate=None):
        """Short runs at momentum 0.99, 0.97, 0.95, 0.9: the best by validation loss (Smith 2018).

        Sweeps `momentum` for SGD and RMSprop, `beta_1` for the Adam family,
        at the settled learning rate (found by `find_lr`) unless
        `learning_rate` is given. The best value is settled for `fit`. See
        `keras_playbook._stages.sweep_momentum` for the arguments.

        Returns:
            A `MomentumResult`, also appended to the journal.
        """
        return self._call("sweep_momentum", locals())

    # Searches (KerasTuner) -------------------------------------------------

    def grid_weight_decay(
        self,
        values=search.DEFAULT_WEIGHT_DECAYS,
        epochs=10,
        weight_decay_mode="decoupled",
        objective="val_loss",
        directory=None,
        project_name=None,
        overwrite=False,
        callbacks=None,
        confirm_seeds=3,
    ):
        """Grid search of the weight decay, everything else fixed (Smith 2018).

        Runs on KerasTuner: one trial per value from the model's initial
        weights, at the settled learning rate, batch size and momentum,
        each scored at its best epoch. Results live in KerasTuner's project
        folder (`directory`, by default `<Playbook directory>/tuning`, else a
        temporary folder): running it again resumes. When the best single
        run is not the smallest weight decay, both run again over
        `confirm_seeds` seeds and the best is kept only if it wins by more
        than seed-to-seed variation. In decoupled mode the adopted value is
        settled for `fit`. See
        `keras_playbook._stages.grid_weight_decay` for the arguments.

        Returns:
            A `WeightDecayResult`, also appended to the journal: `best`,
            `table()`, `plot()`.

        Example:

        ```python
        result = pb.grid_weight_decay(epochs=10)
        print(result.table())
        pb.fit(epochs=30)    # with result.best["weight_decay"]
        ```
        """
        return self._call("grid_weight_decay", locals())

    def tune_lr_wd(
        self,
        coarse_epochs=3,
        fine_epochs=15,
        learning_rate=None,
        learning_rates=None,
        weight_decays=search.DEFAULT_COARSE_WEIGHT_DECAYS,
        max_extensions=2,
        weight_decay_mode="decoupled",
        objective="val_loss",
        directory=None,
        project_name=None,
        overwrite=False,
        confirm_seeds=3,
        callbacks=None,
    ):
        """Coarse LR x weight-decay grid, then a refined one trained longer (Johnson, EECS 498 Lecture 11, steps 4-5).

        The coarse learning rates surround `learning_rate`, by default the one
        `find_lr` settled (else the optimizer's). The best refined cell is
        re-measured over `confirm_seeds` seeds against the cell closest to
        that rate with the least weight decay, and kept only if it wins by
        more than seed-to-seed variation (the best of many single runs is an
        optimistic estimate; Tuning Playbook). The kept cell's learning rate
        and (decoupled) weight decay are settled for `fit`. See
        `keras_playbook._stages.tune_lr_wd` for the arguments.

        Returns:
            An `LRWeightDecayResult`, also appended to the journal; `plot()`
            is an LR x WD heat map.

        Example:

        ```python
        pb.find_lr()
        result = pb.tune_lr_wd(coarse_epochs=3, fine_epochs=15)
        print(result.best)
        ```
        """
        return self._call("tune_lr_wd", locals())

    def compare_seeds(
        self,
        configs,
        seeds=5,
        epochs=10,
        alpha=0.05,
        weight_decay_mode="decoupled",
        objective="val_loss",
        directory=None,
        project_name=None,
        overwrite=False,
        callbacks=None,
    ):
        """Re-runs configurations over seeds: is the difference more than seed-to-seed variation? (Tuning Playbook)

        See `keras_playbook._stages.compare_seeds` for the arguments. Values a
        configuration leaves out are the settled ones.

        Returns:
            A `SeedComparisonResult` (means, stds, Welch's t-tests, verdict),
            also appended to the journal.

        Example:

        ```python
        result = pb.compare_seeds({"wd=1e-4": {"weight_decay": 1e-4},
                                   "wd=0": {"weight_decay": 0}}, seeds=5)
        print(result.message)
        ```
        """
        return self._call("compare_seeds", locals())

    def run_round(
        self,
        goal,
        scientific,
        nuisance=None,
        fixed=None,
        max_trials=12,
        epochs=10,
        seeds=None,
        alpha=0.05,
        oracle="random",
        weight_decay_mode="decoupled",
        objective="val_loss",
        directory=None,
        project_name=None,
        overwrite=False,
        callbacks=None,
    ):
        """One round of experiments with a goal: scientific, nuisance, fixed (Tuning Playbook).

        Architecture hyperparameters (e.g. dropout) need a builder that takes
        KerasTuner's `hp` and declares them. See
        `keras_playbook._stages.run_round` for the arguments.

        Returns:
            A `RoundResult` (table, plot, verdict, nuisance values at the
            best), also appended to the journal.

        Example:

        ```python
        pb = Playbook(build_model, data, validation_data=val, loss=...)  # build_model(hp)
        result = pb.run_round(goal="does dropout help?",
                              scientific={"dropout": [0.0, 0.2, 0.5]},
                              nuisance={"learning_rate": ("log", 1e-3, 1e-1)},
                              max_trials=24, seeds=5)
        print(result.table())
        ```
        """
        return self._call("run_round", locals())

    # Training ---------------------------------------------------------------

    def fit(self, epochs, callbacks=None, verbose="auto", schedule=None, watch=True, restore_best=False, **overrides):
        """Trains the model for real with the hyperparameters settled so far, watched.

        Values settled by earlier stages (the journal's `settled()`: a found
        learning rate, a weight decay, ...) are applied to the optimizer
        first, then `overrides`, which win. A `schedule` then drives the
        learning rate from there, and the watchers report what they see.

        Args:
            epochs: Epochs to train.
            callbacks: Keras callbacks for `model.fit`.
            verbose: Passed to `model.fit`.
            schedule: The learning-rate schedule: None (constant), or
                - "step_down": `StepDownLR` on `val_loss` (Krizhevsky et al. 2012);
                - "one_cycle": `OneCycle` with the bounds of the latest
                  `find_lr` (Smith & Topin 2019), cycling the momentum (or `beta_1`)
                  when the optimizer has one;
                - "cosine": `CosineRestarts`, one cosine annealing from the
                  settled rate (Loshchilov & Hutter 2017);
                - "two_stage": `TwoStage`, the settled rate then a tenth of
                  it (He et al. 2016);
                - any Keras callback, e.g. `CosineRestarts(cycle_epochs=5)`.
            watch: Add `CurveDiagnosis`, `UpdateRatioMonitor` and (when the
                model has weight decay) `WeightDecayMonitor`; their findings
                go into the journal's `FitRecord`. A diverged run is stopped.
            restore_best: Give the model the weights of its best epoch
                (lowest `val_loss`, else `loss`) at the end, through Keras's
                `EarlyStopping(restore_best_weights=True)` with a patience
                that never stops the run (Tuning Playbook: keep the best
                epoch, not the last).
            **overrides: Any of `learning_rate`, `weight_decay`, `batch_size`
                (per replica), `momentum`, `beta_1`.

        Returns:
            The Keras `History`. The learning curves (with the learning rate
            each epoch when a schedule ran), the schedule and the findings are
            also recorded in the journal as a `FitRecord`.

        Example:

        ```python
        pb.find_lr()
        history = pb.fit(epochs=10, schedule="one_cycle")
        print(pb.journal.latest("fit").findings)
        ```
        """
        return self._call("fit", locals())

    @classmethod
    def for_fine_tuning(
        cls,
        backbone,
        num_classes,
        train_data,
        validation_data=None,
        *,
        weights=None,
        pooling="avg",
        dropout=0.0,
        loss=None,
        metrics=("accuracy",),
        **kwargs,
    ):
        """A Playbook for fine-tuning `backbone` on a new classification task (Howard & Ruder 2018).

        Builds backbone -> global pooling -> (dropout) -> `Dense(num_classes)`
        logits named "head", compiled with sparse categorical cross-entropy
        on logits unless `loss` says otherwise. The nested backbone and the
        head are what `finetune.layer_groups` and `fine_tune` split on.

        Args:
            backbone: A built `keras.Model` without its classifier (e.g.
                `keras.applications.MobileNetV3Small(include_top=False,
                weights=...)`, a KerasHub backbone, your own model), or the
                path of a `.keras` file holding one.
            num_classes: Classes of the new task (>= 2).
            train_data, validation_data: As for `Playbook`.
            weights: A `.weights.h5` or `.keras` file to load into the
                backbone first (a checkpoint of your own; nothing is
                downloaded).
            pooling: "avg" or "max".
            dropout: Dropout rate before the head.
            loss, metrics: For `compile`.
            **kwargs: Other `Playbook` arguments (`optimizer`, `batch_size`,
                `strategy`, `directory`, ...).

        Returns:
            A `Playbook` around the new model.

        Example:

        ```python
        backbone = keras.applications.MobileNetV3Small(include_top=False, weights="imagenet",
                                                       input_shape=(96, 96, 3))
        pb = Playbook.for_fine_tuning(backbone, num_classes=5, train_data=(x, y),
                                      validation_data=(x_val, y_val))
        pb.fine_tune(head_epochs=3, epochs=10)
        ```
        """
        backbone = finetune.load_backbone(backbone, weights)
        model = finetune.build_model(backbone, num_classes, pooling=pooling, dropout=dropout)
        if loss is None:
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        return cls(
            model,
            train_data,
            validation_data,
            loss=loss,
            metrics=list(metrics) if metrics is not None else None,
            **kwargs,
        )

    def fine_tune(
        self,
        head_epochs=3,
        epochs=10,
        groups=3,
        multipliers=None,
        factor=finetune.ULMFIT_FACTOR,
        head_learning_rate=None,
        learning_rate=None,
        gradual=False,
        find_lr_steps=100,
        train_batch_norm=False,
        callbacks=None,
        verbose="auto",
    ):
        """Fine-tunes in two phases: the head alone, then every layer with discriminative rates (Howard & Ruder 2018).

        1. Every group but the head is frozen; a range test on the head finds
           its rate (unless `head_learning_rate`); the head trains
           `head_epochs`.
        2. The groups are thawed (or, with `gradual`, thawed one group per
           epoch from the top, ULMFiT); the optimizer becomes a fresh one of
           the same kind wrapped in a `DiscriminativeOptimizer` (each group's
           step times its multiplier); a fresh range test finds the base rate
           (unless `learning_rate`); all groups train `epochs`.
        Layers you froze yourself stay frozen in both phases, and so do
        BatchNormalization layers unless `train_batch_norm`: a frozen
        BatchNormalization runs in inference mode, keeping the statistics
        it was pretrained with (Keras's transfer-learning guide). Both range
        tests, both runs and a `FineTuneResult` go to the journal.

        Args:
            head_epochs: Epochs of phase 1 (>= 1).
            epochs: Epochs of phase 2 (>= 1).
            groups: Number of groups by depth (head included), or explicit
                lists of layers or names (see `finetune.layer_groups`).
            multipliers: One per group, earliest first; default geometric:
                each earlier group's rate the next one's divided by `factor`.
            factor: The geometric factor (2.6, as in ULMFiT).
            head_learning_rate, learning_rate: Skip a range test and use this.
            gradual: Thaw one group per epoch in phase 2.
            find_lr_steps: Steps of each range test.
            train_batch_norm: Let BatchNormalization layers train in phase 2
                (their statistics then move to the new data).
            callbacks: Keras callbacks for both phases.
            verbose: Passed to `model.fit`.

        Returns:
            A `FineTuneResult`, also appended to the journal. Each phase
            keeps the weights of its best epoch; when phase 2's best is no
            better than phase 1's, the model keeps phase 1's and the result
            is not OK.

        Raises:
            ValueError: before any training, for bad epochs, groups,
                `find_lr_steps` < 10, or multipliers whose number differs
                from the groups'; during it, when a range test finds no
                rate. On any error (Ctrl-C included) the model's weights,
                optimizer, trainability and the journal are restored first.
        """
        return self._call("fine_tune", locals())

    # The procedure ------------------------------------------------------------

    def run(self, epochs, plan=None, search="weight_decay", schedule="step_down", stop_on_failure=True):
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

        Returns:
            A `RunResult`, also appended to the journal: each settled value
            with the stage that settled it, each stage's time and training
            steps, the final metrics at the best epoch, the findings, and a
            message.

        Raises:
            ValueError: before any compute, for `epochs` <= 0, an unknown
                stage or argument in `plan`, a stage that needs validation
                data without any, or one that needs a learning rate before
                anything settles one.

        Example:

        ```python
        pb = Playbook(build_model, train, validation_data=val, directory="runs/exp1")
        result = pb.run(epochs=30)
        print(result.message)
        print(result.table())
        ```
        """
        return _procedure.run(self, epochs, plan, search, schedule, stop_on_failure)

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
