"""The Playbook's stage methods: explicit signatures and full docstrings, each one call into the runner.

`Playbook` inherits them. Every default is declared here once; the stage runner (`_runner.py`)
reads it from the signature, hands the stage its pipelines, settled values, progress bar and
seed, refuses stale inputs and records the result with its call.
"""

import keras

from keras_playbook import finetune
from keras_playbook._stages import (  # Importing `_stages` registers them all.
    lr_curves,
    lr_wd_search,
    probes,
    weight_decay_search,
)


class StageMethods:
    """The stages as methods of `Playbook`; `self._call(name, locals())` runs one through the runner."""

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
        rule=lr_curves.DEFAULT_RULE,
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
        values=weight_decay_search.DEFAULT_WEIGHT_DECAYS,
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
        weight_decays=lr_wd_search.DEFAULT_COARSE_WEIGHT_DECAYS,
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

    def fit(
        self,
        epochs,
        callbacks=None,
        verbose="auto",
        schedule=None,
        watch=True,
        restore_best=False,
        class_weight=None,
        **overrides,
    ):
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
                (lowest `val_loss`, else `loss`) at the end (Tuning
                Playbook: keep the best epoch, not the last), through
                `BestWeights`, which does what Keras's
                `EarlyStopping(restore_best_weights=True)` does without
                stopping, and keeps the best epoch and its weights across a
                resume.
            class_weight: None (the Playbook's `class_weight`), or a dict
                class id -> weight, as `model.fit` takes it, that replaces
                the Playbook's for this run (classes left out weigh 1; pass
                all-ones weights for none). Checked as the Playbook checks
                it, before anything changes; recorded with the call.
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
