"""Fine-tuning a pretrained backbone, head first (Howard & Ruder 2018).

When fine-tuning, start with a lower learning rate than from
scratch; freeze the early layers, or give them a lower learning rate than the
later ones. `fine_tune` runs the two phases the practice implies: the head
alone on the frozen backbone, at the rate a range test finds for it; then
every layer, with discriminative learning rates (each earlier group's step
a fraction of the next one's) at the base rate a fresh range test finds.
`build_model` puts a pooling layer and a classification head on a backbone.

References:
    Howard & Ruder 2018, arXiv:1801.06146.
    Smith 2017, arXiv:1506.01186 (the range test of each phase).
"""

import contextlib
import dataclasses
import os

import keras
from matplotlib.figure import Figure

from keras_playbook import _validation as validation
from keras_playbook._folder import collect_garbage
from keras_playbook._journal import Result
from keras_playbook._loss_key import validation_key
from keras_playbook._runner import stage
from keras_playbook._session import innermost_optimizer
from keras_playbook.callbacks.monitors import leaf_layers
from keras_playbook.finetune._discriminative import DiscriminativeOptimizer, discriminative, geometric_multipliers
from keras_playbook.finetune._groups import (
    freeze_to,
    layer_groups,
    prepare_optimizer,
    restore_trainable,
    trainable_state,
)
from keras_playbook.finetune._unfreezing import GradualUnfreezing


@dataclasses.dataclass
class FineTuneResult(Result):
    """The two phases of `Playbook.fine_tune`.

    Attributes:
        groups: Layer names per group, earliest first; the head last.
        multipliers: Learning-rate multiplier per group in phase 2.
        head_learning_rate: Rate of phase 1 (head only).
        learning_rate: Base rate of phase 2 (the head's; earlier groups get
            it times their multiplier).
        head_epochs, epochs: Epochs of each phase.
        gradual: Whether phase 2 thawed the groups one at a time.
        head_history, history: Per-epoch curves of each phase.
        monitor: The curve the phases are compared on: the validation
            loss, else the training loss, where the model logs it
            (`val_loss`, or e.g. `val_total_loss` for a model whose own
            `train_step` reports `total_loss`; `Playbook(loss_key=...)`).
        head_best, best: Best `monitor` value of each phase.
        trainable: What the model ends with, besides its weights: each leaf
            layer's path ("backbone/block1_bn") and `trainable` flag, in
            order (None in journals written before it was recorded).
        optimizer: The model's optimizer at the end: `kind`
            ("discriminative", or the class of a plain optimizer) and
            `config`, its Keras serialization
            (`keras.saving.serialize_keras_object`; for a
            `DiscriminativeOptimizer` it holds the inner optimizer's config
            and the multipliers by variable). Its state (step count,
            moments) is in the weights file saved with the stage.

    `ok` says whether phase 2's best beat phase 1's (else the model keeps
    phase 1's best weights, with phase 2's optimizer and trainability).
    Reading the stage back (`Playbook.run`) gives the model all of what it
    ended with: trainability, optimizer and its state, weights.
    """

    kind = "fine_tune"
    groups: list
    multipliers: list
    head_learning_rate: float
    learning_rate: float
    head_epochs: int
    epochs: int
    gradual: bool
    head_history: dict
    history: dict
    monitor: str
    head_best: float
    best: float
    ok: bool
    message: str
    trainable: list = None
    optimizer: dict = None

    def plot(self):
        """Both phases on one time line: training and validation curves, the phase boundary marked."""
        figure = Figure(figsize=(7, 4))
        axes = figure.add_subplot()
        loss_key = self.monitor.removeprefix("val_")  # "loss", or where the model logs its loss.
        first = len(self.head_history.get(loss_key, []))
        for name, style in ((loss_key, "-"), (validation_key(loss_key), "--")):
            values = list(self.head_history.get(name, [])) + list(self.history.get(name, []))
            if values:
                axes.plot(range(1, len(values) + 1), values, style, marker=".", label=name)
        axes.axvline(first + 0.5, color="grey", linestyle=":", label="phase 1 | phase 2")
        axes.annotate(
            f"head only, {self.head_learning_rate:.2g}",
            (0.5 + 0.0, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(2, -12),
            textcoords="offset points",
            fontsize="small",
        )
        axes.annotate(
            f"all groups, base {self.learning_rate:.2g}",
            (first + 0.5, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(4, -12),
            textcoords="offset points",
            fontsize="small",
        )
        axes.set_xlabel("epoch (both phases)")
        axes.set_ylabel(loss_key)
        axes.set_title("Fine-tuning: " + ("phase 2 improved" if self.ok else "phase 2 did not improve"))
        axes.legend(fontsize="small")
        return figure


def build_model(backbone, num_classes, pooling="avg", dropout=0.0, name=None):
    """Backbone -> global pooling -> (dropout) -> `Dense(num_classes)` logits named "head".

    Args:
        backbone: A built Keras model without its classifier (e.g. a
            `keras.applications` model with `include_top=False`).
        num_classes: Classes of the new task (>= 2).
        pooling: "avg" or "max" over the spatial axes of a feature map
            (rank 3 or 4 outputs); a flat output is used as is.
        dropout: Dropout rate before the head.
        name: The model's name.

    Returns:
        An uncompiled functional model whose nested backbone and head
        `layer_groups` find by default.
    """
    validation.check_int(num_classes, "num_classes", "for_fine_tuning", minimum=2)
    if pooling not in ("avg", "max"):
        raise ValueError(f"Argument `pooling` must be 'avg' or 'max'. Received: pooling={pooling!r}.")
    validation.check_number(dropout, "dropout", "for_fine_tuning", within="[0, 1)")
    if not isinstance(backbone, keras.Model) or not backbone.built:
        raise ValueError(f"The backbone must be a built keras.Model. Received: {backbone!r}.")
    inputs = keras.Input(backbone.input_shape[1:], name="image")
    features = backbone(inputs)
    rank = len(features.shape)
    if rank in (3, 4):
        pool = {
            (3, "avg"): keras.layers.GlobalAveragePooling1D,
            (3, "max"): keras.layers.GlobalMaxPooling1D,
            (4, "avg"): keras.layers.GlobalAveragePooling2D,
            (4, "max"): keras.layers.GlobalMaxPooling2D,
        }[(rank, pooling)]
        features = pool(name="pool")(features)
    elif rank != 2:
        raise ValueError(f"The backbone's output has rank {rank}; expected a feature map (3, 4) or features (2).")
    if dropout:
        features = keras.layers.Dropout(dropout, name="head_dropout")(features)
    outputs = keras.layers.Dense(num_classes, name="head")(features)
    return keras.Model(inputs, outputs, name=name or f"{backbone.name}_fine_tuning")


def load_backbone(backbone, weights=None):
    """The backbone: a model, or a `.keras` file; with `weights` from a `.weights.h5` or `.keras` file.

    Users often fine-tune their own checkpoints, and there may be no network
    for `weights="imagenet"`: local files are read here.
    """
    if isinstance(backbone, (str, os.PathLike)):
        path = os.fspath(backbone)
        if not path.endswith(".keras") or not os.path.exists(path):
            raise ValueError(f"for_fine_tuning: backbone {path!r} is not an existing .keras file.")
        backbone = keras.models.load_model(path, compile=False)
    if weights is None:
        return backbone
    if not isinstance(weights, (str, os.PathLike)) or not os.path.exists(os.fspath(weights)):
        raise ValueError(f"for_fine_tuning: weights file {weights!r} does not exist.")
    path = os.fspath(weights)
    if path.endswith(".weights.h5"):
        backbone.load_weights(path)
    elif path.endswith(".keras"):
        saved = keras.models.load_model(path, compile=False)
        if len(saved.weights) != len(backbone.weights) or any(
            tuple(a.shape) != tuple(b.shape) for a, b in zip(saved.weights, backbone.weights)
        ):
            raise ValueError(
                f"for_fine_tuning: the model in {path!r} does not have the backbone's weights "
                f"({len(saved.weights)} vs {len(backbone.weights)} variables, or other shapes)."
            )
        backbone.set_weights(saved.get_weights())
    else:
        raise ValueError(f"for_fine_tuning: weights must be a .weights.h5 or .keras file. Received: {path!r}.")
    return backbone


def kept_frozen(model, train_batch_norm=False):
    """The layers fine-tuning leaves frozen in both phases.

    The layers frozen now (the user's choice, which fine-tuning must not
    undo) and, unless `train_batch_norm`, every BatchNormalization layer:
    frozen, it runs in inference mode with the statistics it was pretrained
    with, as Keras's transfer-learning guide keeps it while the rest of the
    network is fine-tuned.
    """
    return [
        leaf
        for leaf in leaf_layers(model)
        if not leaf.trainable or (not train_batch_norm and isinstance(leaf, keras.layers.BatchNormalization))
    ]


def resolve_groups(model, groups):
    """`groups` as `layer_groups` returns them: an int (by depth) or explicit lists."""
    if validation.is_int(groups):
        return layer_groups(model, n=groups)
    return layer_groups(model, groups=groups)


def check_multipliers(multipliers, num_groups, factor):
    if multipliers is None:
        return geometric_multipliers(num_groups, factor)
    if not isinstance(multipliers, (list, tuple)) or len(multipliers) != num_groups:
        raise ValueError(
            f"fine_tune: one multiplier per group: {num_groups} groups, "
            f"{len(multipliers) if isinstance(multipliers, (list, tuple)) else multipliers!r} multipliers."
        )
    for value in multipliers:
        validation.check_number(value, "multipliers", "fine_tune")
    return [float(value) for value in multipliers]


def summarize(
    groups,
    multipliers,
    head_rate,
    rate,
    head_epochs,
    epochs,
    gradual,
    head_history,
    history,
    kept_frozen=(),
    loss_key="loss",
):
    """The `FineTuneResult` of two finished phases; it is OK when phase 2 beat phase 1.

    The phases are compared on the validation loss, else the training loss,
    read at `loss_key` (the key the model logs its loss under,
    `_loss_key.logged_loss_key`).
    """
    monitor = validation_key(loss_key) if validation_key(loss_key) in history else loss_key
    head_best = min(head_history.get(monitor, [float("nan")]))
    best = min(history.get(monitor, [float("nan")]))
    names = [[layer.name for layer in group] for group in groups]
    finite = best == best and head_best == head_best  # Not NaN.
    improved = finite and best < head_best
    head = f"{len(names[-1])} layer{'s' if len(names[-1]) != 1 else ''}"
    message = (
        f"Phase 1 trained the head alone ({head}) for {head_epochs} epochs at "
        f"{head_rate:.3g}: best {monitor} {head_best:.4g}. Phase 2 trained all {len(names)} groups for "
        f"{epochs} epochs at base rate {rate:.3g} with multipliers "
        f"{', '.join(f'{m:.3g}' for m in multipliers)} (earliest first; early layers change "
        f"less, Howard & Ruder 2018){', thawing one group at a time' if gradual else ''}: best {monitor} {best:.4g}."
    )
    batch_norms = [layer.name for layer in kept_frozen if isinstance(layer, keras.layers.BatchNormalization)]
    others = [layer.name for layer in kept_frozen if not isinstance(layer, keras.layers.BatchNormalization)]
    if others:
        message += f" Left frozen as you had them: {', '.join(others)}."
    if batch_norms:
        message += (
            f" {len(batch_norms)} BatchNormalization layer{'s' if len(batch_norms) != 1 else ''} stayed in inference "
            "mode with the pretrained statistics (Keras's transfer-learning guide); on data far from the "
            "pretraining data, train_batch_norm=True lets them adapt."
        )
    if improved:
        message += " The model holds phase 2's best epoch."
    else:
        message += (
            f" Phase 2 made {monitor} worse than the head alone ({head_best:.4g} -> {best:.4g}): the model "
            "keeps phase 1's best weights. Fine-tune with a lower base rate (learning_rate=), fewer thawed "
            "groups, or gradual=True (Howard & Ruder 2018)."
        )
    result = FineTuneResult(
        groups=names,
        multipliers=list(multipliers),
        head_learning_rate=float(head_rate),
        learning_rate=float(rate),
        head_epochs=head_epochs,
        epochs=epochs,
        gradual=bool(gradual),
        head_history=head_history,
        history=history,
        monitor=monitor,
        head_best=float(head_best),
        best=float(best),
        ok=bool(improved),
        message=message,
    )
    return result


def _check_fine_tune_arguments(arguments, session):
    """`fine_tune`'s argument check, before anything runs (`StageSpec.check`): values, groups, multipliers."""
    validation.check_int(arguments["head_epochs"], "head_epochs", "fine_tune")
    validation.check_int(arguments["epochs"], "epochs", "fine_tune")
    validation.check_int(arguments["find_lr_steps"], "find_lr_steps", "fine_tune", minimum=10)
    for name in ("head_learning_rate", "learning_rate"):
        validation.check_number(arguments[name], name, "fine_tune", allow_none=True)
    callbacks = arguments["callbacks"]
    if callbacks is not None and not isinstance(callbacks, (list, tuple)):
        raise TypeError(f"fine_tune: `callbacks` must be a list of callbacks. Received: {callbacks!r}.")
    validation.check_bool(arguments["gradual"], "gradual", "fine_tune")
    validation.check_bool(arguments["train_batch_norm"], "train_batch_norm", "fine_tune")
    groups = resolve_groups(session.model, arguments["groups"])
    check_multipliers(arguments["multipliers"], len(groups), arguments["factor"])


def _leaf_paths(model, prefix=""):
    """Each leaf layer's name after the names of the nested models it is in, in `leaf_layers` order."""
    paths = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            paths += _leaf_paths(layer, f"{prefix}{layer.name}/")
        else:
            paths.append(f"{prefix}{layer.name}")
    return paths


def _discriminative_in(optimizer):
    """The `DiscriminativeOptimizer` among `optimizer` and its wrapped ones (`LossScaleOptimizer`), or None."""
    while not isinstance(optimizer, DiscriminativeOptimizer) and hasattr(optimizer, "inner_optimizer"):
        optimizer = optimizer.inner_optimizer
    return optimizer if isinstance(optimizer, DiscriminativeOptimizer) else None


def ending_state(model):
    """What `fine_tune` leaves the model besides its weights, as JSON: `(trainable, optimizer)`.

    `trainable` is `[[layer path, flag], ...]` per leaf layer in order;
    `optimizer` is `{"kind", "config"}`, the config by
    `keras.saving.serialize_keras_object` (wrappers included).
    """
    trainable = [[path, bool(leaf.trainable)] for path, leaf in zip(_leaf_paths(model), leaf_layers(model))]
    optimizer = model.optimizer
    kind = "discriminative" if _discriminative_in(optimizer) else type(innermost_optimizer(optimizer)).__name__
    return trainable, {"kind": kind, "config": keras.saving.serialize_keras_object(optimizer)}


def restore_ending_state(result, session):
    """Gives the model the trainability and the optimizer a recorded `fine_tune` left it (its `read_back`).

    `Playbook.run` calls it when it reads the stage back, before it loads the
    weights the stage saved. Each leaf layer gets its recorded `trainable`
    flag back (by position: the set-up's architecture digest makes the
    leaf layers the recorded ones, in order, whatever numbers Keras gave
    unnamed layers); BatchNormalization kept frozen runs in inference mode
    again. The model is compiled (its own loss and metrics,
    `Session.compile_like`) with a new optimizer from the recorded config
    (`keras.saving.deserialize_keras_object`: a `DiscriminativeOptimizer`
    with its multipliers around its inner optimizer), built over every
    weight that can train as `fine_tune` built it (`prepare_optimizer`), so
    that Keras's `load_weights` puts the saved step count and moments into
    the same variables. A result recorded before these fields existed gives
    nothing back.

    Raises:
        ValueError: when the model's layers are not the recorded ones, or
            the recorded multipliers name variables the model does not
            have (layers named otherwise now).
    """
    model = session.model
    if result.trainable is not None:
        leaves = leaf_layers(model)
        if len(leaves) != len(result.trainable):
            raise ValueError(
                f"run: fine_tune is read back, and it recorded {len(result.trainable)} layers where the model has "
                f"{len(leaves)}. Run it again (rerun_from='fine_tune')."
            )
        restore_trainable(model, [(leaf, bool(flag)) for leaf, (_, flag) in zip(leaves, result.trainable)])
    if result.optimizer is not None:
        compiled = type(innermost_optimizer(model.optimizer))  # fine_tune's inner optimizer is of this class,
        with session.scope():  # registered for serialization or not.
            optimizer = keras.saving.deserialize_keras_object(
                result.optimizer["config"], custom_objects={compiled.__name__: compiled}
            )
        _check_multiplier_names(model, optimizer)
        session.compile_like(model, optimizer)
        prepare_optimizer(model)


def _check_multiplier_names(model, optimizer):
    """Refuses a `DiscriminativeOptimizer` whose multipliers name variables the model does not have."""
    optimizer = _discriminative_in(optimizer)
    if optimizer is None:
        return
    paths = [variable.path for variable in model.weights]
    missing = [key for key in optimizer.multipliers if not any(p == key or p.endswith("/" + key) for p in paths)]
    if missing:
        raise ValueError(
            f"run: fine_tune is read back, and its learning-rate multipliers name variables the model does not "
            f"have ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}): its layers are named "
            "otherwise now. Give the layers fixed names, or run it again (rerun_from='fine_tune')."
        )


@stage("fine_tune", random_state=False, trains=True, check=_check_fine_tune_arguments, read_back=restore_ending_state)
def fine_tune(
    ctx,
    *,
    head_epochs,
    epochs,
    groups,
    multipliers,
    factor,
    head_learning_rate,
    learning_rate,
    gradual,
    find_lr_steps,
    train_batch_norm,
    callbacks,
    verbose,
):
    """The two phases of fine-tuning as one composite stage (see `Playbook.fine_tune` for the arguments).

    Its range tests and fits go to the journal through the runner, as parts
    of this stage; on any error all of it is taken back (`_all_or_nothing`).
    """
    model, session = ctx.model, ctx.session
    layer_groups = resolve_groups(model, groups)
    multipliers = check_multipliers(multipliers, len(layer_groups), factor)
    callbacks = list(callbacks or [])
    keep_frozen = kept_frozen(model, train_batch_norm)

    with _all_or_nothing(ctx):
        freeze_to(model, layer_groups, len(layer_groups) - 1, keep_frozen=keep_frozen)
        head_rate = head_learning_rate or _found_rate(ctx, find_lr_steps)
        ctx.run(
            "fit", epochs=head_epochs, callbacks=callbacks, verbose=verbose, learning_rate=head_rate, restore_best=True
        )
        head_record = ctx.journal.latest("fit")
        head_weights = model.get_weights()  # Phase 1's best epoch.

        freeze_to(model, layer_groups, 0, keep_frozen=keep_frozen)
        # The optimizer as compiled, not as phase 1 left it: phase 2's fit applies the values in force.
        fresh = session.fresh_inner_optimizer()
        with session.scope():
            optimizer = discriminative(fresh, layer_groups, multipliers)
        session.compile_like(model, optimizer)  # The model's loss and metrics, this optimizer.
        prepare_optimizer(model)
        rate = learning_rate or _found_rate(ctx, find_lr_steps)
        extra = [GradualUnfreezing(layer_groups, every_epochs=1, keep_frozen=keep_frozen)] if gradual else []
        ctx.run(
            "fit", epochs=epochs, callbacks=callbacks + extra, verbose=verbose, learning_rate=rate, restore_best=True
        )
        result = summarize(
            layer_groups,
            multipliers,
            head_rate,
            rate,
            head_epochs,
            epochs,
            gradual,
            head_record.history,
            ctx.journal.latest("fit").history,
            keep_frozen,
            loss_key=ctx.loss_key(),
        )
        if not result.ok:  # Phase 2 did not improve on phase 1.
            model.set_weights(head_weights)
        result.trainable, result.optimizer = ending_state(model)  # What the model holds now, as saved with it.
    return result


@contextlib.contextmanager
def _all_or_nothing(ctx):
    """A composite stage finishes, or leaves the model as it found it.

    On any exception (Ctrl-C included) the layers' trainability, the
    model's optimizer (object and state), its weights and the journal (what
    the stage had appended is taken back) are restored, and the backups and
    weights files of its trainings are removed, before the exception goes on.
    """
    model, session = ctx.model, ctx.session
    trainability = trainable_state(model)
    optimizer = model.optimizer
    state = session.snapshot()
    length = len(ctx.journal)
    try:
        yield
    except BaseException:
        if model.optimizer is not optimizer:
            session.compile_like(model, optimizer)
        restore_trainable(model, trainability)
        session.restore(state)
        ctx.journal.truncate(length)
        if ctx.directory is not None:  # Taken back: no backup of its parts to resume, no weights of them kept.
            collect_garbage(ctx.directory, ctx.journal)
        raise


def _found_rate(ctx, num_steps):
    """A range test's suggestion for the model as it is now (frozen groups stay frozen in the copy)."""
    found = ctx.run("find_lr", num_steps=num_steps)
    if found.suggested_lr is None:
        raise ValueError(
            f"fine_tune: the range test found no learning rate ({found.message}). "
            "Pass `head_learning_rate` / `learning_rate`."
        )
    return found.suggested_lr
