"""Layer state outside `get_weights()`: carried to a copy, and every copy checked against the model.

Keras's `clone_model` builds each layer again from its config, and
`set_weights` assigns variables. Adapted preprocessing layers keep more than
that: the lookup tables of `StringLookup`, `IntegerLookup` and
`TextVectorization` are no variables at all (a copy raises "Table not
initialized"), and `Normalization` and `Discretization` compute the
constants they apply from their variables only when adapted or loaded (a
copy given the variables still applies its initial ones: it does not
normalize). `model.save` carries both through each layer's own saving hooks
(`save_own_variables`/`load_own_variables` and `save_assets`/`load_assets`);
`carry_state` runs the same hooks from layer to layer, for the layers that
learn state with `adapt`.

What a copy still computes differently is caught by `check_copy`: the copy
and the model run on one small batch in inference mode, and a copy whose
outputs differ is refused, naming the layers whose state differs.

References:
    Keras, "Working with preprocessing layers" (keras.io/guides/preprocessing_layers):
    adapted state, and `set_vocabulary`/`mean=` to pass it without adapting.
"""

import tempfile

import keras
import numpy as np

PROBE_SIZE = 8  # Examples in the batch a copy is checked on.
_RTOL, _ATOL = 1e-4, 1e-5


def adapted_layers(model):
    """The layers of `model` that learn state with `adapt`, in order, nested models and layers opened up.

    A layer that adapts is not opened further: `TextVectorization` carries
    its inner lookup layer's state itself.
    """
    found = []

    def visit(layer):
        for inner in layer._flatten_layers(include_self=False, recursive=False):
            if hasattr(inner, "adapt"):
                found.append(inner)
            else:
                visit(inner)

    visit(model)
    return found


def _adapted_pairs(source, target):
    """Pairs of corresponding adapted layers (empty when the two models' adapted layers do not correspond)."""
    sources, targets = adapted_layers(source), adapted_layers(target)
    if [type(layer) for layer in sources] != [type(layer) for layer in targets]:
        return []
    return list(zip(sources, targets))


def carry_state(source, target):
    """Gives `target`'s adapted layers the state of `source`'s that `set_weights` does not carry.

    For each layer that learns state with `adapt` (`adapted_layers`), as
    `model.save` and `keras.models.load_model` carry it: the source layer's
    variables (`save_own_variables`: statistics of the data, which training
    leaves alone, so a copy with fresh weights gets them too) are loaded by
    the copy's layer (`load_own_variables`; `Normalization` and
    `Discretization` then compute the constants they apply), and its assets
    (a lookup layer's vocabulary: `save_assets`) are read by the copy's
    (`load_assets`, which calls `set_vocabulary`) through a temporary folder.

    Args:
        source: The model whose layers hold the state.
        target: A copy of it (same layers in the same order).
    """
    for original, copy in _adapted_pairs(source, target):
        store = {}
        original.save_own_variables(store)
        copy.load_own_variables({key: keras.ops.convert_to_numpy(value) for key, value in store.items()})
        if hasattr(original, "save_assets") and hasattr(copy, "load_assets") and not _vocabulary_empty(original):
            with tempfile.TemporaryDirectory() as folder:
                original.save_assets(folder)
                copy.load_assets(folder)


def _vocabulary_empty(layer):
    """True for a lookup layer never adapted nor given a vocabulary (nothing to carry)."""
    try:
        return hasattr(layer, "get_vocabulary") and not layer.get_vocabulary(include_special_tokens=False)
    except Exception:  # An uninitialized table: nothing to carry.
        return True


def _never_adapted(layer):
    """True for a layer that learns its state with `adapt` and holds none: neither adapted nor given it."""
    if hasattr(layer, "get_vocabulary"):  # StringLookup, IntegerLookup, TextVectorization.
        return _vocabulary_empty(layer)
    if isinstance(layer, keras.layers.Discretization):
        return layer.bin_boundaries is None
    if isinstance(layer, keras.layers.Normalization) and layer.input_mean is None:
        if not layer.built:
            return True  # `adapt` builds it.
        mean, variance = (keras.ops.convert_to_numpy(v) for v in (layer.adapt_mean, layer.adapt_variance))
        return bool(np.all(mean == 0) and np.all(variance == 1))  # Its initial state: the identity.
    return False


def check_adapted(model, builder=None):
    """Raises for a preprocessing layer that learns its state with `adapt` and was never adapted.

    An unadapted lookup layer raises "Table not initialized" at its first
    call, an unadapted `Discretization` has no bins, and an unadapted
    `Normalization` silently passes its inputs through (mean 0, variance 1):
    the model measured would not be the one meant.

    Args:
        model: The Playbook's model (built by `builder`, when one is given).
        builder: The builder, or None for a model passed as an instance.

    Raises:
        ValueError: naming the layers, and what to do.
    """
    unadapted = [layer for layer in adapted_layers(model) if _never_adapted(layer)]
    if not unadapted:
        return
    names = ", ".join(f"{layer.name!r} ({type(layer).__name__})" for layer in unadapted)
    where = (
        f"the builder {getattr(builder, '__name__', repr(builder))!r} builds"
        if builder is not None
        else f"the model {model.name!r} holds"
    )
    raise ValueError(
        f"{where[0].upper()}{where[1:]} preprocessing layer(s) never adapted: {names}. Adapt each on the "
        "training data "
        + ("inside the builder" if builder is not None else "before passing the model")
        + " (`layer.adapt(x_train)`), or pass its state: `vocabulary=...` for lookups and TextVectorization, "
        "`mean=..., variance=...` for Normalization, `bin_boundaries=...` for Discretization (Keras, "
        '"Working with preprocessing layers").'
    )


def outputs_of(model, x, scope):
    """The model's outputs on `x` in inference mode, flattened, as NumPy (an exception's text if it raises)."""
    try:
        with scope:
            prediction = model(x, training=False)
    except Exception as error:  # A copy that cannot run at all (an uninitialized lookup table) is a mismatch.
        return f"{type(error).__name__}: {str(error).strip().splitlines()[-1][:200]}"
    return [np.asarray(keras.ops.convert_to_numpy(output)) for output in keras.tree.flatten(prediction)]


def same_outputs(first, second):
    """True when two `outputs_of` results agree within tolerance (`rtol=1e-4`, `atol=1e-5`)."""
    if isinstance(first, str) or isinstance(second, str) or len(first) != len(second):
        return False
    return all(
        a.shape == b.shape and np.allclose(a.astype("float64"), b.astype("float64"), rtol=_RTOL, atol=_ATOL)
        for a, b in zip(first, second)
    )


def _state_of(layer):
    """What an adapted layer applies beyond its weights: vocabulary, mean and variance, bin boundaries."""
    state = []
    if hasattr(layer, "get_vocabulary"):
        try:
            state.append(list(layer.get_vocabulary()))
        except Exception as error:
            state.append(type(error).__name__)
    for name in ("mean", "variance", "bin_boundaries"):
        value = getattr(layer, name, None)
        if value is not None:
            state.append(np.asarray(keras.ops.convert_to_numpy(value), dtype="float64").round(6).tolist())
    return state


def differing_layers(source, target):
    """Names (and classes) of the adapted layers whose state differs between `source` and `target`."""
    return [
        f"{original.name!r} ({type(original).__name__})"
        for original, copy in _adapted_pairs(source, target)
        if _state_of(original) != _state_of(copy)
    ]


def mismatch_message(source, target, difference, *, builder=None):
    """The refusal for a copy that does not compute what `source` computes, naming the layers at fault."""
    layers = differing_layers(source, target) or [
        f"{layer.name!r} ({type(layer).__name__})" for layer in adapted_layers(source)
    ]
    where = (
        f"layer(s) {', '.join(layers)} hold other state in the copy"
        if layers
        else "no adapted preprocessing layer explains it (a custom layer keeping state outside its weights?)"
    )
    seen = difference if isinstance(difference, str) else f"outputs differ by up to {difference:.3g}"
    if builder is not None:
        name = getattr(builder, "__name__", repr(builder))
        fix = (
            f"The builder {name!r} builds the layer without the state the Playbook's model has: adapt it inside "
            "the builder, or pass the vocabulary (`TextVectorization(vocabulary=...)`, "
            "`IntegerLookup(vocabulary=...)`, `Normalization(mean=..., variance=...)`)."
        )
    else:
        fix = (
            "Pass a builder instead (a function returning the model) that adapts the layer inside it, or build "
            "the layer with its state as arguments (`vocabulary=...`, `mean=..., variance=...`)."
        )
    return (
        f"A copy of the model {source.name!r} does not compute what the model computes at the same weights "
        f"(one batch, inference mode: {seen}): {where}. Every measuring stage trains such copies, so it would "
        f"measure another model. {fix}"
    )


def largest_difference(first, second):
    """The largest absolute difference between two `outputs_of` results (or the error text of one that raised)."""
    for result in (first, second):
        if isinstance(result, str):
            return result
    if len(first) != len(second) or any(a.shape != b.shape for a, b in zip(first, second)):
        return "outputs of other shapes"
    return max(
        float(np.max(np.abs(a.astype("float64") - b.astype("float64")), initial=0.0)) for a, b in zip(first, second)
    )
