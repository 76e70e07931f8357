"""The strategy, the model placed in its scope, and snapshots of its state.

A `Session` owns what every stage needs to train under `tf.distribute`: the
strategy, the user's model living in that strategy's scope (rebuilt there with
the same weights when it was built outside), the model's initial weights, and
the means to measure without leaving a trace: `preserved()` snapshots weights
and optimizer state and restores them in a `finally`, and `trial_model()`
makes a separate copy that starts from the initial weights.
"""

import contextlib
import copy
import dataclasses
import hashlib
import inspect
import json
import random
import warnings

import keras
import keras_tuner
import numpy as np
import tensorflow as tf

from keras_playbook import _layer_state
from keras_playbook._data import as_model_input
from keras_playbook._loss_key import own_step

_auto_mirrored_strategy = None


def resolve_strategy(strategy=None):
    """Returns the strategy to train under.

    Args:
        strategy: A `tf.distribute.Strategy`, or None to pick one: the
            strategy whose scope is active, else a `MirroredStrategy` when two
            or more GPUs are visible (created once per process and reused:
            TensorFlow does not support two in one process), else the default
            strategy.

    Raises:
        TypeError: if `strategy` is not a `tf.distribute.Strategy`.
    """
    global _auto_mirrored_strategy
    if strategy is not None:
        if not isinstance(strategy, tf.distribute.Strategy):
            raise TypeError(
                "Argument `strategy` must be a `tf.distribute.Strategy` (e.g. "
                "`tf.distribute.MirroredStrategy()`) or None to choose "
                f"automatically. Received: strategy={strategy!r} (of type "
                f"{type(strategy).__name__})."
            )
        return strategy
    if tf.distribute.has_strategy():
        return tf.distribute.get_strategy()
    if len(tf.config.list_logical_devices("GPU")) >= 2:
        if _auto_mirrored_strategy is None:
            _auto_mirrored_strategy = tf.distribute.MirroredStrategy()
        return _auto_mirrored_strategy
    return tf.distribute.get_strategy()


@contextlib.contextmanager
def users_random_state():
    """Gives the user's global random state back after the block, however it ends.

    Each KerasTuner trial seeds every global generator for reproducibility
    (`keras.utils.set_random_seed`: Python's `random`, NumPy's, TensorFlow's
    global seed and Keras's global `SeedGenerator`); without this, the
    user's own draws after a search would repeat the trials' sequence. The
    generators continue from where the user's had got to.
    """
    from keras.src.backend.common import global_state  # Where Keras keeps its global seed.
    from keras.src.random import seed_generator
    from tensorflow.python.eager import context

    python_state, numpy_state = random.getstate(), np.random.get_state()
    keras_seed = global_state.get_global_attribute("global_random_seed")
    keras_generator = global_state.get_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR)
    eager = context.context()
    tf_seed = eager._seed
    tf_rng = getattr(eager, "_rng", None)
    tf_rng_state = tf_rng.getstate() if tf_rng is not None else None
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        global_state.set_global_attribute("global_random_seed", keras_seed)
        global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, keras_generator)
        tf.random.set_seed(tf_seed)
        if tf_rng_state is not None and getattr(eager, "_rng", None) is not None:
            eager._rng.setstate(tf_rng_state)  # Op seeds go on where the user's had got to.


def leaf_layers(model):
    """The model's layers in order, with nested models opened up."""
    leaves, pending = [], list(model.layers)
    while pending:
        layer = pending.pop(0)
        if isinstance(layer, keras.Model):
            pending = list(layer.layers) + pending
        else:
            leaves.append(layer)
    return leaves


def architecture_digest(model):
    """A digest of the model's layers, in order: class and weight shapes (not names, which Keras numbers).

    The same model built again has the same digest; the journal's set-up and
    each search's definition carry it, so results of one model are never
    read back for another.
    """
    layers = [[type(layer).__name__, [list(weight.shape) for weight in layer.weights]] for layer in leaf_layers(model)]
    return hashlib.sha256(json.dumps(layers).encode()).hexdigest()[:16]


def copy_trainability(source, target):
    """Gives each layer of `target` the `trainable` flag of the layer in the same place in `source`.

    A copy built by a builder (or a fresh clone) trains every layer; a copy
    of a model with frozen layers must not (frozen BatchNormalization also
    stays in inference mode, Keras's convention for `trainable = False`).

    Raises:
        ValueError: when the two models' layers do not correspond.
    """
    sources, targets = leaf_layers(source), leaf_layers(target)
    if [type(layer) for layer in sources] != [type(layer) for layer in targets]:
        raise ValueError(
            f"The copy of {source.name!r} does not have the same layers ({len(targets)} against "
            f"{len(sources)}), so the frozen layers cannot be carried over. Make the builder build the "
            "model the Playbook holds."
        )
    for original, counterpart in zip(sources, targets):
        counterpart.trainable = original.trainable


def innermost_optimizer(optimizer):
    """The optimizer doing the work inside wrappers (`LossScaleOptimizer`, `DiscriminativeOptimizer`)."""
    while hasattr(optimizer, "inner_optimizer"):
        optimizer = optimizer.inner_optimizer
    return optimizer


def check_single_learning_rate(optimizer, argument="optimizer"):
    """Raises for an optimizer with no single `learning_rate` (Keras's `MultiOptimizer`), inside wrappers too.

    Every stage reads and sets one learning rate (range tests, probes,
    schedules, `ReduceLROnPlateau`); a `MultiOptimizer` hides its
    sub-optimizers' rates (reading `learning_rate` raises). Per-group rates
    with one base rate that callbacks drive are what
    `keras_playbook.finetune.discriminative` gives (Howard & Ruder 2018).

    Args:
        optimizer: A Keras optimizer, a name, or None (nothing to check).
        argument: How the message names where it came from.

    Raises:
        ValueError: for a `MultiOptimizer`, naming the alternative.
    """
    multi = getattr(keras.optimizers, "MultiOptimizer", None)
    current = optimizer
    while current is not None:
        if multi is not None and isinstance(current, multi):
            raise ValueError(
                f"The {argument} is a keras.optimizers.MultiOptimizer, which has no single learning rate for "
                "the range test, the probes and the schedules to read and set. Compile with one optimizer, "
                "or give each layer group its own rate with one base rate: "
                "`keras_playbook.finetune.discriminative(optimizer, finetune.layer_groups(model, n), multipliers)` "
                f"(Howard & Ruder 2018). Received: {argument}={optimizer!r}."
            )
        current = getattr(current, "inner_optimizer", None)


def optimizer_scope(optimizer):
    """The scope of the strategy the optimizer's variables live in (none for the default strategy).

    Callbacks run outside `fit`'s strategy scope; variables they create for
    the optimizer must be placed like its own (mirrored under a MirroredStrategy).
    """
    strategy = getattr(optimizer.iterations.value, "distribute_strategy", None)
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def read_value(variable):
    """Reads a (possibly mirrored) variable as NumPy; `float()` fails on those."""
    return keras.ops.convert_to_numpy(variable)


@dataclasses.dataclass
class ModelState:
    """Values of every model variable and optimizer variable, as NumPy."""

    model: list
    optimizer: list


class Session:
    """A model placed in a strategy's scope, with its initial weights.

    Args:
        model: A `keras.Model` (compiled or not), a builder (a callable
            returning one), or a `keras_tuner.HyperModel`. A builder takes no
            argument, or one `keras_tuner.HyperParameters` as KerasTuner's
            model-building functions do (the Playbook's own model is then
            built with the hyperparameters' defaults, trial models with the
            trial's values). Builders are called inside the strategy's scope,
            and again for every trial model.
        strategy: A `tf.distribute.Strategy` or None (see `resolve_strategy`).

    Raises:
        TypeError: for a model that is neither a `keras.Model` nor a callable
            returning one, or for a `strategy` that is not a Strategy.

    Example:

    ```python
    session = Session(build_model, strategy=tf.distribute.MirroredStrategy())
    session.compile(loss="sparse_categorical_crossentropy")
    ```
    """

    def __init__(self, model, *, strategy=None):
        self.strategy = resolve_strategy(strategy)
        self.builder = None
        self.builder_takes_hyperparameters = False
        self._declared = None
        if isinstance(model, keras_tuner.HyperModel):
            model = model.build
        if not isinstance(model, keras.Model):
            if not callable(model):
                raise TypeError(
                    "Argument `model` must be a `keras.Model` or a callable "
                    f"returning one. Received: model={model!r} (of type "
                    f"{type(model).__name__})."
                )
            self.builder = model
            self.builder_takes_hyperparameters = _takes_one_argument(model)
            model = self._call_builder()
        self.source_model = model
        self.model = self._placed(model)
        self.initial_weights = None
        self.initial_optimizer_config = None
        self._initial_optimizer_class = None
        self._build_input = None
        self._probe = None  # The small batch every copy is checked on (`check_copy`).
        self._references = []  # (weights, the model's outputs on the probe at them), the latest first.
        self.loss_key = None  # The key of the loss in the logs, when given (`Playbook(loss_key=...)`).
        self.logged_loss_key = None  # The key found in the logs (`_loss_key.logged_loss_key`).

    @property
    def num_replicas(self):
        return self.strategy.num_replicas_in_sync

    def scope(self):
        return self.strategy.scope()

    # Construction ---------------------------------------------------------

    def _call_builder(self, hyperparameters=None):
        with self.scope():
            if self.builder_takes_hyperparameters:
                if hyperparameters is None:
                    hyperparameters = keras_tuner.HyperParameters()
                model = self.builder(hyperparameters)
            else:
                model = self.builder()
        if not isinstance(model, keras.Model):
            raise TypeError(
                "The model builder must return a `keras.Model`. Received: "
                f"{model!r} (of type {type(model).__name__}) from "
                f"{getattr(self.builder, '__name__', self.builder)!r}."
            )
        return model

    def _in_scope(self, variables):
        return all(self.strategy.extended.variable_created_in_scope(getattr(v, "value", v)) for v in variables)

    def _placed(self, model):
        """Returns `model` if its variables live in the scope, else a copy that does."""
        if self._in_scope(model.variables):
            return model
        with self.scope():
            clone = _clone(model)
            clone.set_weights(model.get_weights())
            _layer_state.carry_state(model, clone)  # Checked against `model` in `ensure_built`.
        return clone

    def check_loss(self, loss):
        """Raises ValueError unless `loss` is given, the model is compiled with one, or its own step computes it.

        A model whose class overrides `train_step`/`test_step` (the Keras
        guide's "Customizing what happens in fit()") reports its own loss in
        its logs: compiled with only an optimizer, it is accepted.
        """
        source = self.source_model
        compiled = self.model if self.model.compiled else source  # The placed copy, once compiled, has it.
        has_loss = loss is not None or (compiled.compiled and compiled.loss is not None)
        if not has_loss and not own_step(source):
            raise ValueError(
                f"The model {source.name!r} has no loss: it is not compiled with "
                "one and no `loss=` was given. Pass e.g. "
                "loss='sparse_categorical_crossentropy', or compile the model."
            )
        if not has_loss and type(source).test_step is keras.Model.test_step:
            raise ValueError(
                f"The model {source.name!r} ({type(source).__name__}) has a `train_step` of its own but Keras's "
                "`test_step`, which computes the compiled loss, and none is compiled: every stage evaluates the "
                "model (initial losses, validation), which then fails. Add a `test_step` that reports the loss as "
                'your `train_step` does (Keras guide "Customizing what happens in fit()"), or compile the model '
                "with the loss."
            )

    def compile(self, *, loss=None, optimizer=None, metrics=None):
        """Compiles the placed model in the strategy's scope.

        Keeps the model's own compile arguments (and, when the model was not
        rebuilt, its optimizer object and state) unless overridden. A rebuilt
        model gets a copy of the optimizer with its state.

        The first call keeps the config of the optimizer doing the work (inside
        wrappers) as compiled, `initial_optimizer_config`: every fresh
        optimizer starts from it (`fresh_optimizer`), never from the live
        optimizer, which a schedule or `fit` moves.

        Raises:
            ValueError: when no loss is known (not compiled with one, no `loss`).
        """
        self.check_loss(loss)
        model, source = self.model, self.source_model
        rebuilt = model is not source
        overridden = loss is not None or optimizer is not None or metrics is not None
        if source.compiled and not rebuilt and not overridden:
            if not self._in_scope(model.optimizer.variables):
                overridden = True
            else:
                self._keep_initial_optimizer()
                return
        arguments = {}
        # A placed copy compiled before (with the Playbook's loss and metrics) is compiled again like itself.
        base = model if model.compiled else source
        if base.compiled:
            with self.scope():
                arguments = keras.saving.deserialize_keras_object(base.get_compile_config())
        if source.compiled:
            if not rebuilt and self._in_scope(source.optimizer.variables):
                arguments["optimizer"] = source.optimizer
        if optimizer is not None:
            arguments["optimizer"] = optimizer
        arguments.setdefault("optimizer", "adam")
        if loss is not None:
            arguments["loss"] = loss
        if metrics is not None:
            arguments["metrics"] = metrics
        with self.scope():
            candidate = arguments["optimizer"]
            if isinstance(candidate, keras.optimizers.Optimizer) and not self._in_scope(candidate.variables):
                arguments["optimizer"] = _copy_optimizer(candidate)
            model.compile(**arguments)
        carried_over = optimizer is None and source.compiled and source.optimizer.built
        if carried_over and model.optimizer is not source.optimizer:
            self._copy_optimizer_state(source.optimizer, model)
        self._keep_initial_optimizer()

    def _keep_initial_optimizer(self):
        if self.initial_optimizer_config is None:
            inner = innermost_optimizer(self.model.optimizer)
            self.initial_optimizer_config = copy.deepcopy(inner.get_config())
            self._initial_optimizer_class = type(inner)

    def _copy_optimizer_state(self, source_optimizer, model):
        with self.scope():
            model.optimizer.build(model.trainable_variables)
        values = [read_value(v) for v in source_optimizer.variables]
        # Same class and same model structure give the same variables in order.
        if len(values) != len(model.optimizer.variables):
            warnings.warn(
                f"The state of the model's {type(source_optimizer).__name__} ({len(values)} variables) does not "
                f"fit the optimizer it is compiled with now ({len(model.optimizer.variables)} variables), so "
                "it was not carried over: training restarts its moments and step count.",
                stacklevel=3,
            )
            return
        for variable, value in zip(model.optimizer.variables, values):
            variable.assign(value)

    def ensure_built(self, x_batch):
        """Builds the model on a batch of inputs if needed and takes the initial snapshot.

        Keeps the first examples of `x_batch` (`_layer_state.PROBE_SIZE`) to
        check copies on, and checks the copy placed in the strategy's scope
        against the user's model (see `check_copy`).

        Raises:
            ValueError: when the placed copy does not compute what the user's
                model computes, naming the layers whose state differs.
        """
        x_batch = as_model_input(x_batch)
        self._build_input = tf.nest.map_structure(lambda array: array[:1], x_batch)
        self._probe = tf.nest.map_structure(lambda array: array[: _layer_state.PROBE_SIZE], x_batch)
        if not self.model.built or not self.model.weights:
            with self.scope():
                self.model(self._build_input)
        if self.initial_weights is None:
            self.initial_weights = self.model.get_weights()
        if self.model is not self.source_model and self.source_model.built:
            expected = _layer_state.outputs_of(self.source_model, self._probe, contextlib.nullcontext())
            self._compare(self.model, expected, self.source_model)

    def _reference(self, weights):
        """The model's outputs on the probe at `weights` (kept for the two latest), or None when not repeatable.

        Computed at the model's own weights when they are `weights`, else with
        `weights` assigned for the one call and the model's own put back in a
        `finally`. A model whose inference draws at random (Monte Carlo
        dropout) gives None: there is nothing to compare with.
        """
        for kept, outputs in self._references:
            if kept is weights or weights_equal(kept, weights):
                return outputs
        current = self.model.get_weights()
        assigned = not weights_equal(current, weights)
        try:
            if assigned:
                with self.scope():
                    self.model.set_weights(weights)
            first, second = (_layer_state.outputs_of(self.model, self._probe, self.scope()) for _ in range(2))
        finally:
            if assigned:
                with self.scope():
                    self.model.set_weights(current)
        outputs = first if _layer_state.same_outputs(first, second) else None
        self._references = [(weights, outputs)] + self._references[:1]
        return outputs

    def check_copy(self, copy, weights):
        """Raises unless `copy`, at `weights`, computes what the model computes at `weights` on one batch.

        Both run on the probe (the first examples of the training data) in
        inference mode; outputs must agree within `_layer_state.same_outputs`'s
        tolerance. Nothing is checked before `ensure_built` (no probe yet).

        Raises:
            ValueError: naming the layers whose state differs and what to do
                (for a builder: adapt the layer inside it, or pass the
                vocabulary).
        """
        if self._probe is None:
            return
        expected = self._reference(weights)
        if expected is not None:
            self._compare(copy, expected, self.model)

    def _compare(self, copy, expected, source):
        found = _layer_state.outputs_of(copy, self._probe, self.scope())
        if not _layer_state.same_outputs(expected, found):
            difference = _layer_state.largest_difference(expected, found)
            raise ValueError(_layer_state.mismatch_message(source, copy, difference, builder=self.builder))

    # State ------------------------------------------------------------------

    def _ensure_optimizer_built(self):
        optimizer = self.model.optimizer
        if not optimizer.built:
            with self.scope():
                optimizer.build(self.model.trainable_variables)

    def snapshot(self):
        """Returns the values of all model and optimizer variables."""
        self._ensure_optimizer_built()
        return ModelState(
            model=[read_value(v) for v in self.model.variables],
            optimizer=[read_value(v) for v in self.model.optimizer.variables],
        )

    def restore(self, state):
        """Assigns back the values taken by `snapshot`.

        Raises:
            RuntimeError: when the model or its optimizer no longer has the
                variables the snapshot holds (nothing is assigned then).
        """
        for what, variables, values in (
            ("model", self.model.variables, state.model),
            ("optimizer", self.model.optimizer.variables, state.optimizer),
        ):
            if len(variables) != len(values):
                raise RuntimeError(
                    f"Cannot restore the {what}: it has {len(variables)} variables now and the snapshot "
                    f"{len(values)}. Something changed its structure during the stage."
                )
        for variable, value in zip(self.model.variables, state.model):
            variable.assign(value)
        for variable, value in zip(self.model.optimizer.variables, state.optimizer):
            variable.assign(value)

    def keep_initial_state(self):
        """Takes the model's and optimizer's state as the Playbook starts, for `restore_initial_state`.

        An optimizer not built yet is left unbuilt (its state is then its
        initial one: no step taken).
        """
        optimizer = self.model.optimizer
        self._initial_state = ModelState(
            model=[read_value(v) for v in self.model.variables],
            optimizer=[read_value(v) for v in optimizer.variables] if optimizer.built else None,
        )

    def restore_initial_state(self):
        """Gives the model and its optimizer back the state they had when the Playbook started.

        An optimizer that was unbuilt then and has taken steps since, or was
        replaced since (`fine_tune` compiles its own), is replaced by a fresh
        one from the compiled config (`fresh_optimizer`).
        """
        state, optimizer = self._initial_state, self.model.optimizer
        for variable, value in zip(self.model.variables, state.model):
            variable.assign(value)
        if state.optimizer is not None and len(state.optimizer) == len(optimizer.variables):
            for variable, value in zip(optimizer.variables, state.optimizer):
                variable.assign(value)
        elif optimizer.built and int(read_value(optimizer.iterations)) > 0:
            self.compile(optimizer=self.fresh_optimizer())

    @contextlib.contextmanager
    def preserved(self):
        """Context in which the model may change; its state is restored on exit.

        Restores weights and optimizer state element for element, also when the
        block raises or is interrupted (KeyboardInterrupt).

        Example:

        ```python
        with session.preserved():
            session.model.fit(sample, epochs=3)   # measured, then undone
        ```
        """
        state = self.snapshot()
        try:
            yield self.model
        finally:
            self.restore(state)

    # Trial models ---------------------------------------------------------

    def new_model(self, hyperparameters=None):
        """Returns a freshly initialized, uncompiled copy of the model, built.

        Args:
            hyperparameters: A `keras_tuner.HyperParameters` for a builder that
                takes one (ignored otherwise).

        Raises:
            TypeError: if the model cannot be copied (a subclassed model
                without `get_config`); pass a builder instead.
        """
        with self.scope():
            if self.builder is not None:
                model = self._call_builder(hyperparameters)
            else:
                model = _clone(self.model)
            if (not model.built or not model.weights) and self._build_input is not None:
                model(self._build_input)
            if self.builder is None:  # A builder's layers get their state from the builder (`check_copy` checks).
                _layer_state.carry_state(self.model, model)
        return model

    def trial_model(self, weights=None, hyperparameters=None):
        """Returns an uncompiled copy of the model in the strategy's scope, its frozen layers frozen.

        Use `short_runs.working_copy` for a compiled copy: it builds on this.

        Args:
            weights: Weights to start from (a `get_weights()` list); None for
                the initial weights the session was created with; `"fresh"`
                to keep the copy's own random initialization.
            hyperparameters: For a builder that takes hyperparameters. When
                they change the weights' shapes, the copy keeps its own
                initialization and its own trainability.

        A copy that starts from given weights, built as the model was (a
        clone, or the builder with the model's hyperparameters), is checked
        against the model at those weights (`check_copy`); one with fresh
        weights is not.

        Raises:
            TypeError: if the model cannot be copied (a subclassed model
                without `get_config`); pass a builder instead.
            ValueError: when the copy does not compute what the model
                computes (`check_copy`), naming the layers at fault.
        """
        model = self.new_model(hyperparameters)
        weights = self.initial_weights if weights is None else weights
        same = _same_shapes(model.get_weights(), self.model.get_weights())
        if hyperparameters is not None and not same:
            return model
        fresh = isinstance(weights, str) and weights == "fresh"
        if not fresh:
            with self.scope():
                model.set_weights(weights)
            if self._builds_the_model(hyperparameters):
                self.check_copy(model, weights)
        if any(not layer.trainable for layer in leaf_layers(self.model)):
            copy_trainability(self.model, model)  # Frozen layers stay frozen in the copy.
        return model

    def _builds_the_model(self, hyperparameters):
        """True unless a builder is given hyperparameters other than those the model was built with (its defaults)."""
        if hyperparameters is None or not self.builder_takes_hyperparameters:
            return True
        declared = self.declared_hyperparameters()
        return all(hyperparameters.values.get(name, default) == default for name, default in declared.items())

    def declared_hyperparameters(self):
        """The hyperparameters a builder declares, with their defaults (empty without one).

        The builder is called once with empty `keras_tuner.HyperParameters`,
        as KerasTuner does to learn a search space.

        Returns:
            A dict mapping each declared name to its default value.
        """
        if self._declared is None:
            self._declared = {}
            if self.builder_takes_hyperparameters:
                hyperparameters = keras_tuner.HyperParameters()
                self._call_builder(hyperparameters)
                self._declared = dict(hyperparameters.values)
        return dict(self._declared)

    def compile_like(self, model, optimizer):
        """Compiles `model` with the session model's loss and metrics and `optimizer`."""
        with self.scope():
            arguments = keras.saving.deserialize_keras_object(self.model.get_compile_config())
            arguments["optimizer"] = optimizer
            model.compile(**arguments)
        return model

    def fresh_inner_optimizer(self, **changes):
        """Returns a new optimizer of the kind compiled first, from its config as compiled, with `changes`.

        The optimizer doing the work, without wrappers: its every value not
        in `changes` is the one it was compiled with when the Playbook was
        made (`initial_optimizer_config`), not where a schedule or `fit` has
        moved the live one since. The values in force (the journal's) are
        passed as `changes`.

        Raises:
            ValueError: for a change the optimizer does not take, naming
                what it takes.
        """
        if self.initial_optimizer_config is None:
            raise ValueError(
                "The session's model is not compiled yet: compile it (`Session.compile`) before asking for a "
                "fresh optimizer."
            )
        config = copy.deepcopy(self.initial_optimizer_config)
        unknown = sorted(set(changes) - set(config))
        if unknown:
            raise ValueError(
                f"The optimizer {self._initial_optimizer_class.__name__} has no argument(s) {unknown}. "
                f"It takes {sorted(set(config) - {'name'})}."
            )
        config.update(changes)
        with self.scope():
            return self._initial_optimizer_class.from_config(config)

    def fresh_optimizer(self, **changes):
        """Returns a new optimizer like the model's: its config as compiled, with `changes`, in the model's wrappers.

        The optimizer doing the work is `fresh_inner_optimizer(**changes)`;
        the wrappers the model's optimizer has now (`LossScaleOptimizer`, a
        `DiscriminativeOptimizer` and its multipliers) are put around it
        again, without their state.

        Example: `session.fresh_optimizer(weight_decay=None, learning_rate=0.1)`.
        """
        optimizer = self.fresh_inner_optimizer(**changes)
        with self.scope():
            for wrapper in reversed(_wrappers(self.model.optimizer)):
                optimizer = _rewrapped(wrapper, optimizer)
        return optimizer


def _takes_one_argument(builder):
    """True when `builder` needs one positional argument (KerasTuner's `build(hp)`)."""
    try:
        parameters = inspect.signature(builder).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p for p in parameters if p.kind in positional and p.default is p.empty]
    return len(required) == 1


def _clone(model):
    try:
        return keras.models.clone_model(model)
    except (TypeError, ValueError, NotImplementedError) as error:
        raise TypeError(
            f"Cannot copy the model {model.name!r} ({type(model).__name__}): "
            f"{error} Pass a builder instead, a function that returns a new "
            "model (`Playbook(build_model, ...)`), or implement `get_config`."
        ) from error


def _copy_optimizer(optimizer):
    return type(optimizer).from_config(optimizer.get_config())


def _wrappers(optimizer):
    """The wrappers around the optimizer doing the work, outermost first."""
    wrappers = []
    while hasattr(optimizer, "inner_optimizer"):
        wrappers.append(optimizer)
        optimizer = optimizer.inner_optimizer
    return wrappers


def _rewrapped(wrapper, inner):
    """A wrapper like `wrapper` (its own arguments: loss scale, multipliers) around `inner`.

    A wrapper's config may repeat its inner optimizer's arguments
    (`DiscriminativeOptimizer` does); those are left out, so `inner` keeps its own.
    """
    config = wrapper.get_config()
    config.pop("inner_optimizer", None)
    repeated = set(wrapper.inner_optimizer.get_config()) - {"name"}
    return type(wrapper)(inner, **{key: value for key, value in config.items() if key not in repeated})


def weights_equal(first, second):
    """True when two `get_weights()`-style lists are equal element for element."""
    return len(first) == len(second) and all(np.array_equal(a, b) for a, b in zip(first, second))


def _same_shapes(first, second):
    """True when two `get_weights()`-style lists hold arrays of the same shapes."""
    return len(first) == len(second) and all(a.shape == b.shape for a, b in zip(first, second))
