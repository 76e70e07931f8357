"""Fine-tuning pretrained backbones: layer groups, freezing, discriminative learning rates (Howard & Ruder 2018).

When fine-tuning, start with a lower learning rate than from
scratch, since the model has been trained once and needs small changes; and
change the deeper layers more than the first ones: freeze the early layers,
or give them a lower learning rate than the later ones.

- `layer_groups(model, n)`: the model's weighted layers in groups, earliest
  first, the head last (by depth, by name prefixes, or explicit lists).
- `freeze`, `unfreeze`, `freeze_to`: trainability by group, nested models
  included; frozen BatchNormalization layers run in inference mode (Keras's
  convention for `trainable = False`) and stay so while other groups thaw.
- `discriminative(optimizer, groups, multipliers)`: one optimizer whose step
  for each group's weights is scaled by that group's multiplier, with one
  base `learning_rate` that schedules and callbacks read and set.
- `GradualUnfreezing`: thaws one group at a time from the top (ULMFiT).

These work on any Keras model, without a Playbook.

References:
    Howard & Ruder 2018, "Universal Language Model Fine-tuning for Text
    Classification", arXiv:1801.06146 (discriminative rates, factor 2.6,
    gradual unfreezing).
"""

import warnings

import keras
import numpy as np

from keras_playbook import validation
from keras_playbook.callbacks._config import ConfigurableCallback
from keras_playbook.callbacks.monitors import leaf_layers
from keras_playbook.session import innermost_optimizer, optimizer_scope, read_value

ULMFIT_FACTOR = 2.6  # Each earlier group's rate is the next one's divided by this (ULMFiT).


# Layer groups ---------------------------------------------------------------


def weighted_layers(model):
    """The model's layers that hold weights, in order, with nested models opened up."""
    return [layer for layer in leaf_layers(model) if layer.weights]


def _trainable_candidates(layer):
    """The variables of `layer` that train when it is trainable (not BatchNorm's moving statistics)."""
    return list(getattr(layer, "_trainable_variables", layer.trainable_weights))


def _by_name(model):
    names = {}
    for layer in [*model.layers, *leaf_layers(model)]:
        names.setdefault(layer.name, layer)
    pending = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    while pending:
        nested = pending.pop()
        for layer in nested.layers:
            names.setdefault(layer.name, layer)
            if isinstance(layer, keras.Model):
                pending.append(layer)
    return names


def _resolve(model, items, what):
    """Layers (or layer names) -> the weighted leaf layers they hold, in model order."""
    names = _by_name(model)
    leaves = []
    for item in items:
        if isinstance(item, str):
            if item not in names:
                raise ValueError(
                    f"{what}: no layer named {item!r} in model {model.name!r}. Layer names: "
                    f"{sorted(names)[:20]}{' ...' if len(names) > 20 else ''}."
                )
            item = names[item]
        if not isinstance(item, keras.layers.Layer):
            raise ValueError(f"{what}: expected layers or layer names. Received: {item!r}.")
        leaves += [item] if not isinstance(item, keras.Model) else weighted_layers(item)
    known = {id(layer) for layer in weighted_layers(model)}
    outside = [layer.name for layer in leaves if layer.weights and id(layer) not in known]
    if outside:
        raise ValueError(f"{what}: layers {outside} are not in model {model.name!r}.")
    order = {id(layer): index for index, layer in enumerate(weighted_layers(model))}
    unique = {id(layer): layer for layer in leaves if id(layer) in order}
    return sorted(unique.values(), key=lambda layer: order[id(layer)])


def _default_head(model):
    """The layers after the last nested model (the backbone), else the last weighted layer."""
    top = list(model.layers)
    nested = [index for index, layer in enumerate(top) if isinstance(layer, keras.Model)]
    if nested:
        after = [layer for layer in top[nested[-1] + 1 :] if layer.weights or isinstance(layer, keras.Model)]
        head = _resolve(model, after, "layer_groups") if after else []
        if head:
            return head
    return weighted_layers(model)[-1:]


def layer_groups(model, n=3, *, prefixes=None, groups=None, head=None):
    """Splits a model's weighted layers into groups, earliest first, the head last.

    Three ways to say where the groups are:
    - `n`: the head, then the rest (the backbone) split by depth into `n - 1`
      groups holding as equal a number of weighted layers as can be (nested
      models are opened up);
    - `prefixes`: one entry per backbone group, a name prefix or a list of
      them (the block naming of `keras.applications` models, e.g.
      `[["conv1", "conv2"], ["conv3", "conv4"], "conv5"]` for ResNet50); a
      layer matching no prefix joins the group of the layer before it;
    - `groups`: explicit lists of layers or layer names, used as given.
    The head is the layers after the last nested model (a backbone inside a
    functional or sequential model), else the last weighted layer; pass
    `head=` (layers or names) to say otherwise. It is always the last group
    (appended to explicit `groups` unless one of them holds it).

    Args:
        model: A built Keras model.
        n: Number of groups, head included (>= 2), when neither `prefixes`
            nor `groups` is given.
        prefixes: Name prefixes per backbone group.
        groups: Explicit groups.
        head: The head's layers or names.

    Returns:
        A list of groups, each a list of layers that hold weights.

    Raises:
        ValueError: for an unbuilt model, `n` < 2 or more groups than layers,
            a prefix matching no layer, a name not in the model, or more than
            one of `prefixes`/`groups`.

    Example:

    ```python
    groups = layer_groups(model, n=3)
    freeze(model, groups[:2])
    ```
    """
    if not model.built or not model.weights:
        raise ValueError(f"layer_groups: model {model.name!r} is not built; call it on data or build it first.")
    if prefixes is not None and groups is not None:
        raise ValueError("layer_groups: pass `prefixes` or `groups`, not both.")
    head_layers = _resolve(model, head, "layer_groups(head=...)") if head is not None else _default_head(model)
    head_ids = {id(layer) for layer in head_layers}
    body = [layer for layer in weighted_layers(model) if id(layer) not in head_ids]
    if groups is not None:
        if not isinstance(groups, (list, tuple)) or not groups:
            raise ValueError(f"layer_groups: `groups` must be a non-empty list of lists. Received: {groups!r}.")
        resolved = []
        for index, group in enumerate(groups):
            items = group if isinstance(group, (list, tuple)) else [group]
            layers = _resolve(model, items, f"layer_groups(groups[{index}])")
            if not layers:
                raise ValueError(f"layer_groups: group {index} ({group!r}) holds no layer with weights.")
            resolved.append(layers)
        if not any(head_ids <= {id(layer) for layer in group} for group in resolved):
            resolved.append(head_layers)
        return resolved
    if prefixes is not None:
        return _split_by_prefixes(body, prefixes) + [head_layers]
    validation.check_int(n, "n", "layer_groups", minimum=2, hint="the head and at least one more group")
    if n - 1 > len(body):
        raise ValueError(
            f"layer_groups: n={n} groups need at least {n - 1} weighted layers besides the head; "
            f"model {model.name!r} has {len(body)}."
        )
    return [list(chunk) for chunk in np.array_split(np.array(body, dtype=object), n - 1)] + [head_layers]


def _split_by_prefixes(body, prefixes):
    if not isinstance(prefixes, (list, tuple)) or not prefixes:
        raise ValueError(f"layer_groups: `prefixes` must be a non-empty list. Received: {prefixes!r}.")
    entries = [tuple(entry) if isinstance(entry, (list, tuple)) else (entry,) for entry in prefixes]
    for entry in entries:
        for prefix in entry:
            if not isinstance(prefix, str) or not any(layer.name.startswith(prefix) for layer in body):
                raise ValueError(
                    f"layer_groups: no layer's name starts with {prefix!r}. Names begin: "
                    f"{sorted({layer.name.split('_')[0] for layer in body})[:20]}."
                )
    groups = [[] for _ in entries]
    current = 0
    for layer in body:
        matched = [index for index, entry in enumerate(entries) if layer.name.startswith(entry)]
        if matched:
            current = matched[0]
        groups[current].append(layer)
    return groups


# Freezing -------------------------------------------------------------------


def _layers_in(groups):
    """A group, a list of groups, or a layer -> the layers, flat."""
    if isinstance(groups, keras.layers.Layer):
        return [groups]
    layers = []
    for item in groups:
        layers += _layers_in(item) if not isinstance(item, keras.layers.Layer) else [item]
    return layers


def _optimizer_of(model):
    return getattr(model, "optimizer", None) if getattr(model, "compiled", False) else None


def prepare_optimizer(model):
    """Builds the model's optimizer over every weight that can train, frozen or not.

    A Keras optimizer can only update the variables it was built with. Built
    over all of them first, it keeps its state (momenta, Adam's moments)
    while groups are frozen and thawed. When it was already built over fewer
    (trained while some layers were frozen), it is replaced by a fresh copy
    with the same settings (its state is lost: Keras optimizers cannot grow).

    Returns:
        The optimizer now in `model.optimizer`, or None for an uncompiled model.
    """
    optimizer = _optimizer_of(model)
    if optimizer is None:
        return None
    candidates = [v for layer in weighted_layers(model) for v in _trainable_candidates(layer)]
    inner = innermost_optimizer(optimizer)
    if inner.built:
        known = getattr(inner, "_trainable_variables_indices", None)
        if known is None or all(inner._var_key(v) in known for v in candidates):
            return optimizer
        with optimizer_scope(optimizer):
            optimizer = type(optimizer).from_config(optimizer.get_config())
        model.optimizer = optimizer
    with optimizer_scope(optimizer):
        optimizer.build(candidates)
    return optimizer


def _set_trainable(model, frozen=(), thawed=()):
    """Freezes the `frozen` layers, thaws the `thawed` ones, keeps every other leaf as it was."""
    state = {id(layer): layer.trainable for layer in leaf_layers(model)}
    for layers, trainable in ((frozen, False), (thawed, True)):
        for layer in layers:
            for leaf in leaf_layers(layer) if isinstance(layer, keras.Model) else [layer]:
                state[id(leaf)] = trainable
    # A container's `trainable` setter overwrites its sublayers: open them all, then set each leaf.
    model.trainable = True
    for leaf in leaf_layers(model):
        leaf.trainable = state[id(leaf)]
    if not any(state[id(leaf)] for leaf in weighted_layers(model)):
        warnings.warn(
            f"Every layer of model {model.name!r} is frozen now: training will not change it. "
            "Unfreeze a group (e.g. the head) before training.",
            stacklevel=3,
        )
    prepare_optimizer(model)
    if _optimizer_of(model) is not None:
        model.make_train_function(force=True)  # Keras: retrace after changing `trainable`.


def trainable_state(model):
    """Each leaf layer's `trainable` flag, to give back later with `restore_trainable`."""
    return [(leaf, leaf.trainable) for leaf in leaf_layers(model)]


def restore_trainable(model, state):
    """Gives every leaf layer back the `trainable` flag `trainable_state` read (and retraces)."""
    model.trainable = True  # A container's setter overwrites its sublayers: open them all, then set each.
    for leaf, trainable in state:
        leaf.trainable = trainable
    if _optimizer_of(model) is not None:
        model.make_train_function(force=True)


def freeze(model, groups=None):
    """Makes the layers of `groups` (default: all) non-trainable.

    Frozen BatchNormalization layers run in inference mode, as Keras does for
    `trainable = False`. The model's optimizer is built over every weight
    that can train (see `prepare_optimizer`) and the training function is
    retraced, so the change holds in the next `fit`, or in the current one
    when called from a callback.

    Args:
        model: The model.
        groups: A group (list of layers), a list of groups, or None for every
            layer.

    Example:

    ```python
    freeze(model, layer_groups(model, n=3)[:2])
    ```
    """
    _set_trainable(model, frozen=weighted_layers(model) if groups is None else _layers_in(groups))


def unfreeze(model, groups=None):
    """Makes the layers of `groups` (default: all) trainable; other layers keep their state.

    Args:
        model: The model.
        groups: A group, a list of groups, or None for every layer.
    """
    _set_trainable(model, thawed=weighted_layers(model) if groups is None else _layers_in(groups))


def freeze_to(model, groups, k, keep_frozen=()):
    """Freezes `groups[:k]` and thaws `groups[k:]`, except the layers in `keep_frozen`.

    Args:
        model: The model.
        groups: The groups, earliest first (`layer_groups`).
        k: How many groups from the start to freeze, 0 <= k <= len(groups).
        keep_frozen: Layers that stay frozen whichever group thaws (layers
            the user froze, BatchNormalization kept in inference mode).
    """
    validation.check_int(k, "k", "freeze_to", minimum=0, maximum=len(groups))
    kept = {id(layer) for layer in keep_frozen}
    thawed = [layer for layer in _layers_in(groups[k:]) if id(layer) not in kept]
    _set_trainable(model, frozen=list(_layers_in(groups[:k])) + list(keep_frozen), thawed=thawed)


# Discriminative learning rates ----------------------------------------------


@keras.saving.register_keras_serializable(package="keras_playbook")
class DiscriminativeOptimizer(keras.optimizers.Optimizer):
    """An optimizer whose step for each weight is scaled by its group's multiplier.

    Wraps another optimizer (`inner_optimizer`) and passes it, for each
    variable, the base learning rate times that variable's multiplier: the
    *step* scales, not the gradient, so the scaling is exact for SGD, Adam,
    RMSprop and the rest (for Adam, scaling the gradient would cancel out).
    There is one base `learning_rate`, the inner optimizer's, which
    schedules and callbacks (`OneCycle`, `StepDownLR`, `ReduceLROnPlateau`)
    read and set as usual. Variables without a multiplier get 1.
    Decoupled weight decay stays at the base rate. Saved and loaded with the
    model (`model.save`, `keras.models.load_model`).

    Multipliers are keyed by the end of the variable's path, layer name and
    variable name ("block1_conv/kernel"), with more of the path only where
    that is ambiguous: a variable's path depends on the name scope it was
    built in (a loaded model's paths lack the outer model's name), its
    layer's name does not.

    Args:
        inner_optimizer: The optimizer doing the work.
        multipliers: Dict of path ending (e.g. "dense/kernel") -> multiplier.
        name: Optional name.
        **kwargs: Arguments of the inner optimizer to change (a copy of it
            is made), e.g. `learning_rate=0.1`.

    Example:

    ```python
    optimizer = discriminative(keras.optimizers.Adam(1e-3), groups, multipliers=[0.01, 0.1, 1.0])
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    ```
    """

    def __init__(self, inner_optimizer, multipliers, name=None, **kwargs):
        if kwargs:  # The inner optimizer's arguments (a config updated as for any optimizer).
            config = inner_optimizer.get_config()
            unknown = sorted(set(kwargs) - set(config))
            if unknown:
                raise ValueError(
                    f"DiscriminativeOptimizer: {type(inner_optimizer).__name__} has no argument(s) {unknown}."
                )
            if any(config[key] != value for key, value in kwargs.items()):
                config.update(kwargs)
                inner_optimizer = type(inner_optimizer).from_config(config)
        for path, value in multipliers.items():
            validation.check_number(value, f"multipliers[{path!r}]")
        super().__init__(learning_rate=0.0, name=name)
        self.inner_optimizer = inner_optimizer
        self.multipliers = {str(path): float(value) for path, value in multipliers.items()}
        self._scales = []
        step = inner_optimizer.update_step

        def scaled_update_step(gradient, variable, learning_rate):
            return step(gradient, variable, learning_rate * self._scale_of(variable))

        # The inner optimizer calls `self.update_step(gradient, variable, learning_rate)` per variable.
        object.__setattr__(inner_optimizer, "update_step", scaled_update_step)

    def _scale_of(self, variable):
        return self._scales[self.inner_optimizer._get_variable_index(variable)]

    def build(self, var_list):
        self.inner_optimizer.build(var_list)
        self._scales = [self.multiplier_of(v) for v in self.inner_optimizer._trainable_variables]
        self.built = True

    @property
    def variables(self):
        return self.inner_optimizer.variables

    def apply(self, grads, trainable_variables=None):
        if not self.built:
            self.build(trainable_variables)
        return self.inner_optimizer.apply(grads, trainable_variables)

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    def multiplier_of(self, variable):
        """The multiplier of `variable`: that of the longest key its path ends with (1 when none)."""
        path = variable.path
        matches = [key for key in self.multipliers if path == key or path.endswith("/" + key)]
        return self.multipliers[max(matches, key=len)] if matches else 1.0

    def get_config(self):
        """The inner optimizer's arguments, plus the inner optimizer itself and the multipliers.

        The arguments are repeated at the top so that code reading an
        optimizer's config (`config["weight_decay"]`) or making a changed copy
        (`type(opt).from_config({**config, "learning_rate": 0.1})`) works.
        """
        arguments = self.inner_optimizer.get_config()
        arguments.pop("name", None)
        return {
            **arguments,
            "name": self.name,
            "inner_optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
            "multipliers": dict(self.multipliers),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner = keras.saving.deserialize_keras_object(config.pop("inner_optimizer"), custom_objects=custom_objects)
        multipliers = config.pop("multipliers")
        return cls(inner, multipliers, **config)


def geometric_multipliers(num_groups, factor=ULMFIT_FACTOR):
    """`[factor**-(n-1), ..., 1/factor, 1]`: each earlier group's rate is the next one's over `factor` (ULMFiT)."""
    validation.check_number(factor, "factor", within=">= 1")
    return [float(factor) ** -(num_groups - 1 - index) for index in range(num_groups)]


def discriminative(optimizer, groups, multipliers=None, factor=ULMFIT_FACTOR):
    """Wraps `optimizer` so each group's step is scaled by its multiplier (Howard & Ruder 2018, ULMFiT).

    Args:
        optimizer: A Keras optimizer (its learning rate is the base rate:
            the last group's, with the default multipliers).
        groups: Layer groups, earliest first (`layer_groups`).
        multipliers: One number > 0 per group; default: geometric, each
            earlier group's rate the next one's divided by `factor`.
        factor: The geometric factor (2.6, as in ULMFiT).

    Returns:
        A `DiscriminativeOptimizer`; compile the model with it.

    Raises:
        ValueError: for multipliers whose number differs from the number of
            groups, or that are not all > 0.

    Example:

    ```python
    groups = layer_groups(model, n=3)
    model.compile(optimizer=discriminative(keras.optimizers.Adam(1e-4), groups),
                  loss="sparse_categorical_crossentropy")
    ```
    """
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise ValueError(f"discriminative: expected a Keras optimizer. Received: {optimizer!r}.")
    if not isinstance(groups, (list, tuple)) or not groups:
        raise ValueError("discriminative: `groups` must be a non-empty list of layer groups (see layer_groups).")
    if multipliers is None:
        multipliers = geometric_multipliers(len(groups), factor)
    if not isinstance(multipliers, (list, tuple)) or len(multipliers) != len(groups):
        raise ValueError(
            f"discriminative: one multiplier per group: {len(groups)} groups, "
            f"{len(multipliers) if isinstance(multipliers, (list, tuple)) else multipliers!r} multipliers."
        )
    for index, value in enumerate(multipliers):
        validation.check_number(value, f"multipliers[{index}]", "discriminative")
    assigned = [
        (variable, float(multiplier))
        for group, multiplier in zip(groups, multipliers)
        for layer in _layers_in(group)
        for variable in _trainable_candidates(layer)
    ]
    return DiscriminativeOptimizer(
        optimizer, dict(zip(_path_endings([v for v, _ in assigned]), [m for _, m in assigned]))
    )


def _path_endings(variables):
    """The shortest path endings (at least layer/variable) that tell `variables` apart."""
    parts = [variable.path.split("/") for variable in variables]
    endings = []
    for index, part in enumerate(parts):
        length = min(2, len(part))
        while length < len(part) and any(
            other[-length:] == part[-length:] for j, other in enumerate(parts) if j != index
        ):
            length += 1
        endings.append("/".join(part[-length:]))
    return endings


# Gradual unfreezing ---------------------------------------------------------


class GradualUnfreezing(ConfigurableCallback):
    """Thaws one layer group at a time from the top (ULMFiT's gradual unfreezing).

    When training starts only the last group (the head) is trainable; then
    the next group down is thawed every `every_epochs` epochs or, with
    `monitor`, when the monitored value has not improved for `patience`
    epochs. The training function is retraced at each change, so it takes
    effect from the next epoch of the same `fit`. Each thaw is logged in
    `thawed` and the number of trainable groups in the logs as
    `trainable_groups`.

    Args:
        groups: Layer groups, earliest first (`layer_groups`): lists of
            layers, or of layer names (resolved when training starts, as
            `from_config` gives them).
        every_epochs: Thaw the next group after this many epochs.
        monitor: Thaw on a plateau of this value instead (e.g. "val_loss").
        patience: Epochs without improvement before thawing (with `monitor`).
        min_delta: Relative improvement that counts (with `monitor`).
        keep_frozen: Layers (or layer names) that stay frozen whichever
            group thaws: layers frozen on purpose, BatchNormalization kept in
            inference mode.

    Attributes:
        thawed: One dict per thaw: `epoch` (1-based, after which) and `group`
            (its index).

    Example:

    ```python
    groups = layer_groups(model, n=4)
    model.fit(x, y, epochs=8, callbacks=[GradualUnfreezing(groups, every_epochs=1)])
    ```
    """

    def __init__(self, groups, every_epochs=1, monitor=None, patience=1, min_delta=1e-3, keep_frozen=()):
        super().__init__()
        if not isinstance(groups, (list, tuple)) or len(groups) < 2:
            raise ValueError("GradualUnfreezing: `groups` must list at least 2 layer groups (see layer_groups).")
        validation.check_int(every_epochs, "every_epochs")
        validation.check_int(patience, "patience")
        if monitor is not None and (not isinstance(monitor, str) or not monitor):
            raise ValueError(f"Argument `monitor` must be a metric name or None. Received: monitor={monitor!r}.")
        self.groups = [list(group) if isinstance(group, (list, tuple)) else [group] for group in groups]
        self.every_epochs = every_epochs
        self.monitor = monitor
        self.patience = patience
        self.min_delta = float(min_delta)
        self.keep_frozen = list(keep_frozen)
        self.thawed = []
        self._before = None  # Each layer's trainability before training, while `fit` runs.
        self._trainable_from = len(self.groups) - 1
        self._best = None
        self._wait = 0
        self._since = 0

    def on_train_begin(self, logs=None):
        if any(isinstance(layer, str) for group in self.groups for layer in group):
            self.groups = layer_groups(self.model, groups=self.groups, head=self.groups[-1])
        if any(isinstance(layer, str) for layer in self.keep_frozen):
            by_name = {leaf.name: leaf for leaf in leaf_layers(self.model)}
            self.keep_frozen = [by_name[layer] if isinstance(layer, str) else layer for layer in self.keep_frozen]
        self._before = trainable_state(self.model)
        self.thawed, self._best, self._wait, self._since = [], None, 0, 0
        self._trainable_from = len(self.groups) - 1
        freeze_to(self.model, self.groups, self._trainable_from, self.keep_frozen)

    def _plateau(self, logs):
        if self.monitor not in logs:
            raise ValueError(f"GradualUnfreezing: the logs have no {self.monitor!r}. Available: {sorted(logs)}.")
        value = float(logs[self.monitor])
        if self._best is None or value < self._best - self.min_delta * abs(self._best):
            self._best, self._wait = value, 0
            return False
        self._wait += 1
        return self._wait >= self.patience

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        self._since += 1
        due = self._plateau(logs) if self.monitor else self._since >= self.every_epochs
        if due and self._trainable_from > 0:
            self._trainable_from -= 1
            freeze_to(self.model, self.groups, self._trainable_from, self.keep_frozen)
            self.thawed.append({"epoch": epoch + 1, "group": self._trainable_from})
            self._since, self._wait, self._best = 0, 0, None
        logs["trainable_groups"] = len(self.groups) - self._trainable_from

    def restore(self):
        """Gives every layer back the trainability it had when training started.

        At the end of a finished `fit` the groups thawed so far stay thawed
        (what the schedule reached). Keras does not call `on_train_end` when
        `fit` raises; after an interrupted `fit` call this to undo the
        freezing (the Playbook does). Safe to call more than once.
        """
        if self._before is not None:
            restore_trainable(self.model, self._before)
            self._before = None

    def on_train_end(self, logs=None):
        self._before = None

    def get_config(self):
        return {
            "groups": [[layer if isinstance(layer, str) else layer.name for layer in group] for group in self.groups],
            "every_epochs": self.every_epochs,
            "monitor": self.monitor,
            "patience": self.patience,
            "min_delta": self.min_delta,
            "keep_frozen": [layer if isinstance(layer, str) else layer.name for layer in self.keep_frozen],
        }


def trainable_multipliers(model):
    """Per trainable variable path, the multiplier its step gets (1 without a DiscriminativeOptimizer)."""
    optimizer = _optimizer_of(model)
    scale = optimizer.multiplier_of if isinstance(optimizer, DiscriminativeOptimizer) else (lambda variable: 1.0)
    return {variable.path: scale(variable) for variable in model.trainable_variables}


def learning_rates(model):
    """Per trainable variable path, the learning rate it trains at now: base rate x multiplier."""
    optimizer = _optimizer_of(model)
    base = float(read_value(optimizer.learning_rate))
    return {path: base * multiplier for path, multiplier in trainable_multipliers(model).items()}
