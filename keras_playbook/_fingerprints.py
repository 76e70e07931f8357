"""What defines a result: the set-up's fingerprint, one digest per component.

A journal carried on by a later run holds only if that run trains the same
thing: the same data (by value), the same model (every layer's config, not
the initial weights an unseeded builder draws anew), the same loss, optimizer,
batch size, seed and replicas. `setup_fingerprints` digests each component
apart, so a changed component can be named ("the training labels", "layer 3
(Dense)", "the optimizer: Adam -> SGD") rather than only detected.

It builds on Keras's own serialization (`keras.saving.serialize_keras_object`,
`Layer.get_config`) for the model, the loss and the optimizer, and on
`tf.data`'s element spec and cardinality for datasets.

References:
    Godbole et al. 2023, Deep Learning Tuning Playbook (google-research/
    tuning_playbook): what was measured under one configuration does not
    carry over to another.
"""

import hashlib
import json

import keras
import numpy as np
import tensorflow as tf

from keras_playbook._session import architecture_digest, leaf_layers

# In-memory data up to this size is hashed by value; above it, a strided sample of rows.
MAX_HASHED_BYTES = 256 * 2**20
_SAMPLED_BYTES = 32 * 2**20
# Examples read (twice) from the start of a dataset to fingerprint its content.
DATASET_EXAMPLES = 64
_PARTS = ("x", "y", "sample_weight")
_PART_WORDS = {"x": "inputs", "y": "labels", "sample_weight": "sample weights"}


def digest(value):
    """A short digest of a JSON-ready value (keys sorted; objects by their repr)."""
    text = json.dumps(value, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _array_digest(array, hasher):
    array = np.asarray(array)
    hasher.update(f"{array.dtype.str}{array.shape}".encode())
    if array.dtype.kind == "O":  # Strings from tf.data come as objects: hash their values, not pointers.
        hasher.update(repr(array.tolist()).encode())
    else:
        hasher.update(np.ascontiguousarray(array).tobytes())


def _leaves(structure, prefix):
    if isinstance(structure, dict):
        for key in sorted(structure):
            yield from _leaves(structure[key], f"{prefix}[{key!r}]")
    elif isinstance(structure, (list, tuple)):
        for index, value in enumerate(structure):
            yield from _leaves(value, f"{prefix}[{index}]")
    else:
        yield prefix, structure


def _parts_digest(parts):
    """`{"x": digest, "y": digest[, "sample_weight": digest]}` of a tuple of structures of arrays."""
    digests = {}
    for name, component in zip(_PARTS, parts):
        hasher = hashlib.sha256()
        for path, leaf in _leaves(component, name):
            hasher.update(path.encode())
            _array_digest(leaf, hasher)
        digests[name] = hasher.hexdigest()[:16]
    return digests


def data_fingerprint(pipeline, name):
    """The fingerprint of one pipeline's data, and a note when its content could not be (fully) hashed.

    Args:
        pipeline: A `DataPipeline` (see `_data.make_pipeline`).
        name: How messages call it ("training data").

    Returns:
        `(fingerprint, note)`: a dict with `how` ("values", "sampled",
        "first examples" or "spec only") and one digest per part (`x`, `y`,
        `sample_weight`), and a sentence or None.

        - Arrays are hashed by value up to 256 MB; above, every k-th row
          (about 32 MB) with every array's shape and dtype.
        - A `tf.data.Dataset` or `PyDataset` by its element spec, its
          cardinality and its first examples, read twice: when the two reads
          differ (an unseeded `shuffle()`, random augmentation) the content is
          not fingerprinted.
    """
    if pipeline.arrays is not None:
        leaves = [leaf for _, leaf in _leaves(pipeline.arrays, "")]
        total = sum(np.asarray(leaf).nbytes for leaf in leaves)
        if total <= MAX_HASHED_BYTES:
            return {"how": "values", **_parts_digest(pipeline.arrays)}, None
        step = int(np.ceil(total / _SAMPLED_BYTES))
        shapes = [[list(np.shape(leaf)), str(np.asarray(leaf).dtype)] for leaf in leaves]
        sampled = tf.nest.map_structure(lambda array: np.asarray(array)[::step], pipeline.arrays)
        note = (
            f"the {name} ({total / 2**20:.0f} MB) is fingerprinted by every {step}th example with its shapes and "
            "dtypes, not by all its values"
        )
        return {"how": "sampled", "shapes": digest(shapes), **_parts_digest(sampled)}, note
    examples = pipeline.examples
    spec = {"spec": str(examples.element_spec), "cardinality": int(examples.cardinality())}
    reads = [list(examples.take(DATASET_EXAMPLES).batch(DATASET_EXAMPLES).as_numpy_iterator()) for _ in range(2)]
    first, second = (_parts_digest(read[0]) if read else {} for read in reads)
    if first == second:
        return {"how": "first examples", "spec": digest(spec), **first}, None
    note = (
        f"the {name}'s content is not fingerprinted: two reads of its first {DATASET_EXAMPLES} examples differ (a "
        "shuffle() that reshuffles each iteration, or random augmentation), so only its element spec and length "
        "are; name the data with "
        "Playbook(data_version=...) so that a change to it is seen"
    )
    return {"how": "spec only", "spec": digest(spec)}, note


def _all_layers(model):
    """Every layer and nested model, depth first (InputLayers included)."""
    found, pending = [], list(getattr(model, "layers", []))
    while pending:
        layer = pending.pop(0)
        found.append(layer)
        if isinstance(layer, keras.Model):
            pending = list(layer.layers) + pending
    return found


def _collect_names(value, names):
    """Adds the name of every serialized layer in `value` (InputLayers too), in order, to `names`."""
    if isinstance(value, dict):
        config = value.get("config")
        if "class_name" in value and isinstance(config, dict) and isinstance(config.get("name"), str):
            names.setdefault(config["name"], f"{value['class_name']}#{len(names)}")
        for item in value.values():
            _collect_names(item, names)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _collect_names(item, names)
    return names


def _canonical(value, names):
    """`value` with every auto-numbered layer name replaced by its place, `compile_config` left out."""
    if isinstance(value, dict):
        return {key: _canonical(item, names) for key, item in value.items() if key != "compile_config"}
    if isinstance(value, (list, tuple)):
        return [_canonical(item, names) for item in value]
    if isinstance(value, str) and value in names:
        return names[value]
    return value


def _is_graph_model(model):
    return isinstance(model, keras.Sequential) or type(model).__name__ == "Functional"


def model_fingerprint(model, initial_weights):
    """The model's fingerprint: its layers' configs without Keras's auto-numbered names.

    Initializers, activations, regularizers, dropout rates, dtypes and
    `trainable` flags are part of it, and so are the values of the
    non-trainable weights (what a `Normalization` layer adapted, a frozen
    pretrained body, BatchNormalization's statistics); the drawn initial
    values of the trainable weights are not (an unseeded builder draws new
    ones on every run). A subclassed model whose
    `get_config` Keras cannot give (its constructor takes arguments it does
    not serialize) falls back to the layers' classes and weight shapes plus
    the initial weights.

    Args:
        model: A built `keras.Model`.
        initial_weights: Its `get_weights()` list.

    Returns:
        `(fingerprint, layers, note)`: a digest, one `"Class:digest"` per
        leaf layer (so a message can name the layer that changed), and a
        sentence or None.
    """
    names = {model.name: "model"}
    for index, layer in enumerate(_all_layers(model)):
        names.setdefault(layer.name, f"{type(layer).__name__}#{index}")
    note = None
    try:
        if _is_graph_model(model):
            whole = keras.saving.serialize_keras_object(model)
        else:
            whole = {"class": type(model).__qualname__, "config": model.get_config()}
        _collect_names(whole, names)
    except (NotImplementedError, TypeError):
        weights_digest = weights_fingerprint(initial_weights)
        whole = {"architecture": architecture_digest(model), "initial weights": weights_digest}
        note = (
            f"the model {model.name!r} ({type(model).__name__}) has no get_config, so it is fingerprinted by its "
            "layers' classes and weight shapes and its initial weights; a change to its code is not seen (run "
            "again with rerun_from=, or overwrite=True)"
        )
    layers = []
    for layer in leaf_layers(model):
        try:
            config = layer.get_config()
        except (NotImplementedError, TypeError):
            config = {"weights": [list(weight.shape) for weight in layer.weights]}
        layers.append(f"{type(layer).__name__}:{digest(_canonical(config, names))}")
    fixed = weights_fingerprint([keras.ops.convert_to_numpy(weight) for weight in model.non_trainable_weights])
    return digest([_canonical(whole, names), layers, fixed]), layers, note


def weights_fingerprint(weights):
    """A digest of a `get_weights()` list, value by value."""
    hasher = hashlib.sha256()
    for array in weights:
        _array_digest(array, hasher)
    return hasher.hexdigest()[:16]


def optimizer_description(optimizer):
    """The optimizer's class and config, JSON-ready (its `name`, which Keras may number, left out)."""
    config = {key: value for key, value in optimizer.get_config().items() if key != "name"}
    return {"class": type(optimizer).__name__, "config": json.loads(json.dumps(config, default=repr))}


def loss_description(loss):
    """The loss as Keras serializes it (a name, or a class and its config)."""
    if isinstance(loss, str) or loss is None:
        return loss
    return json.loads(json.dumps(keras.saving.serialize_keras_object(loss), default=repr))


def setup_fingerprints(session, train, validation, *, seed, data_version=None):
    """The fingerprint of every component of a set-up.

    Args:
        session: The `Session` (its model built, its initial weights taken).
        train, validation: The `DataPipeline`s (validation may be None).
        seed: The Playbook's seed.
        data_version: The user's name for the data, or None.

    Returns:
        `(fingerprints, layers, notes)`: `fingerprints` maps "data",
        "model", "loss", "optimizer", "batch_size", "seed" and "replicas"
        (and "steps_per_epoch" / "validation_steps" when the pipelines
        have them) to what identifies each (see `differences` for how they are
        compared), `layers` the per-layer digests, `notes` the sentences
        saying what could not be fingerprinted.
    """
    notes = []
    data = {}
    for part, pipeline in (("training data", train), ("validation data", validation)):
        if pipeline is None:
            data[part] = None
            continue
        fingerprint, note = data_fingerprint(pipeline, part)
        data[part] = fingerprint
        if note and data_version is None:
            notes.append(note)
    if data_version is not None:
        data["version"] = str(data_version)
    model = session.model
    model_digest, layers, note = model_fingerprint(model, session.initial_weights)
    if note:
        notes.append(note)
    fingerprints = {
        "data": data,
        "model": model_digest,
        "loss": loss_description(model.loss),
        "optimizer": optimizer_description(model.optimizer),
        "batch_size": train.per_replica_batch_size,
        "seed": seed,
        "replicas": session.num_replicas,
    }
    for name, pipeline in (("steps_per_epoch", train), ("validation_steps", validation)):
        if pipeline is not None and pipeline.steps is not None:  # What an epoch trains or measures.
            fingerprints[name] = pipeline.steps
    return json.loads(json.dumps(fingerprints, default=repr)), layers, notes


def differences(before, after, layers_before=(), layers_after=()):
    """What differs between two set-ups' fingerprints, as short lines naming the component and the change."""
    lines = []
    names = [name for name in _ORDER if name in before or name in after]
    names += sorted((set(before) | set(after)) - set(_ORDER))
    for name in names:
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        if name == "data":
            lines.append("data: " + _data_change(old or {}, new or {}))
        elif name == "model":
            lines.append("model: " + _layers_change(list(layers_before), list(layers_after)))
        elif name == "optimizer":
            lines.append("optimizer: " + _optimizer_change(old or {}, new or {}))
        elif name == "loss":
            lines.append("loss: " + _loss_change(old, new))
        else:
            lines.append(f"{name.replace('_', ' ')}: {old!r} -> {new!r}")
    return lines


_ORDER = ("data", "model", "loss", "optimizer", "batch_size", "steps_per_epoch", "validation_steps", "seed", "replicas")


def _data_change(old, new):
    changed = []
    for part in ("training data", "validation data"):
        first, second = old.get(part), new.get(part)
        if first == second:
            continue
        if first is None or second is None:
            changed.append(f"the {part} {'added' if first is None else 'removed'}")
            continue
        parts = [
            _PART_WORDS[key] for key in _PARTS if first.get(key) != second.get(key) and (key in first or key in second)
        ]
        if first.get("spec") != second.get("spec") or first.get("how") != second.get("how"):
            parts.insert(0, "element spec or length")
        changed.append(f"the {part}'s {', '.join(parts) or 'content'}")
    if old.get("version") != new.get("version"):
        changed.append(f"data_version {old.get('version')!r} -> {new.get('version')!r}")
    return "; ".join(changed) + " changed"


def _layers_change(old, new):
    if len(old) != len(new):
        return f"{len(old)} layers -> {len(new)} layers"
    for index, (first, second) in enumerate(zip(old, new), start=1):
        if first != second:
            class_before, class_after = first.split(":")[0], second.split(":")[0]
            if class_before != class_after:
                return f"layer {index} is a {class_after}, was a {class_before}"
            return (
                f"the config of layer {index} ({class_after}) changed (initializer, activation, regularizer, rate, ...)"
            )
    return (
        "the layers' connections, the model's config or its non-trainable weights (an adapted preprocessing "
        "layer, a frozen pretrained layer) changed"
    )


def _optimizer_change(old, new):
    if old.get("class") != new.get("class"):
        return f"{old.get('class')} -> {new.get('class')}"
    first, second = old.get("config", {}), new.get("config", {})
    changed = [
        f"{key} {_short(first.get(key))} -> {_short(second.get(key))}"
        for key in sorted(set(first) | set(second))
        if first.get(key) != second.get(key)
    ]
    return f"{new.get('class')}: " + ", ".join(changed)


def _loss_change(old, new):
    same_class = isinstance(old, dict) and isinstance(new, dict) and old.get("class_name") == new.get("class_name")
    if not same_class:
        return f"{_short(old)} -> {_short(new)}"
    first, second = old.get("config") or {}, new.get("config") or {}
    changed = [
        f"{key} {_short(first.get(key))} -> {_short(second.get(key))}"
        for key in sorted(set(first) | set(second))
        if first.get(key) != second.get(key)
    ]
    return f"{new['class_name']}: " + ", ".join(changed)


def _short(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return str(value.get("class_name", value.get("class", value)))
    return repr(value)
