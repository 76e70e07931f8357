"""Layer groups and freezing by group (Howard & Ruder 2018): the parts of fine-tuning that touch trainability."""

import warnings

import keras
import numpy as np

from keras_playbook import _validation as validation
from keras_playbook._session import innermost_optimizer, optimizer_scope
from keras_playbook.callbacks.monitors import leaf_layers

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
