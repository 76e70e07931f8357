"""Short runs from a copy of the model: the one toolkit of every measuring stage.

`overfit_small_sample`, `find_batch_size`, `find_lr`, `probe_lrs`,
`sweep_momentum` and KerasTuner's `PlaybookHyperModel` all train a separate
copy of the model, so "your model is never touched" has one implementation:

- `working_copy` makes the copy (start weights, regularization on or off, a
  fresh optimizer with changes), built on `Session.trial_model` (Keras's
  `clone_model` or the user's builder) and `Optimizer.from_config`;
- `weight_decay_off` is the one rule for "no weight decay";
- `train_steps` runs a copy for a number of steps and reads each step's loss;
- `fixed_order` and `fixed_sample` give the same data to runs that are
  compared.

Keras's per-batch `logs["loss"]` is the running mean of the epoch so far, not
the loss of the batch. Short runs therefore use epochs of one step
(`steps_per_epoch=1` on a repeated dataset; Keras keeps the iterator between
epochs when `steps_per_epoch` is set), which resets the mean every step: the
logged value is then the batch's own loss, measured directly, for about 1 ms
of extra overhead per step.
"""

import math

import keras
import tensorflow as tf

from keras_playbook._data import as_model_input
from keras_playbook._loss_key import FirstStepCheck, read_loss

CURRENT = "current"  # Start from the user's model's weights as they are now.
INITIAL = "initial"  # Start from the weights the Playbook was created with.
FRESH = "fresh"  # Keep the copy's own initialization (a new random draw).
COMPILED = "compiled"  # Compile with the user's loss, metrics and other compile arguments.


class StepLosses(keras.callbacks.Callback):
    """Records the training loss of every step of a one-step-per-epoch `fit`.

    Also stops training once a loss is NaN or infinite.

    Args:
        loss_key: The key of the loss in the logs (`_loss_key.loss_key_in`;
            None: "loss", else the one key ending in "loss").
    """

    def __init__(self, loss_key=None):
        super().__init__()
        self.losses = []
        self.loss_key = loss_key

    def on_train_batch_end(self, batch, logs=None):
        loss = read_loss(logs, self.loss_key, "the model's train_step")
        self.losses.append(loss)
        if not math.isfinite(loss):
            self.model.stop_training = True


# Regularization -------------------------------------------------------------

_DROPOUT_LAYERS = (
    keras.layers.Dropout,
    keras.layers.GaussianDropout,
    keras.layers.AlphaDropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D,
)


def _is_augmentation(layer):
    """Random data augmentation: Keras's image preprocessing layers that draw at random when training."""
    names = ("AugMix", "CutMix", "MixUp", "RandAugment", "Solarization")
    name = type(layer).__name__
    return (
        isinstance(layer, keras.layers.Layer)
        and (name.startswith("Random") or name in names)
        and (type(layer).__module__.startswith("keras"))
    )


def _inference_call(layer):
    """Makes `layer` always run as at inference (an augmentation layer then passes its input through)."""
    original = layer.call

    def call(*args, **kwargs):
        kwargs["training"] = False
        return original(*args, **kwargs)

    layer.call = call


def _zero(owner, attribute):
    return lambda: setattr(owner, attribute, 0.0)


def _regularization(model):
    """(description, turn_off) for each piece of regularization in `model`."""
    found = []
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if isinstance(layer, _DROPOUT_LAYERS) and layer.rate:
            found.append((f"dropout: {layer.name} (rate {layer.rate})", _zero(layer, "rate")))
        if isinstance(layer, keras.layers.GaussianNoise) and layer.stddev:
            found.append((f"noise: {layer.name} (stddev {layer.stddev})", _zero(layer, "stddev")))
        if _is_augmentation(layer):
            found.append(
                (f"augmentation: {layer.name} ({type(layer).__name__})", lambda layer=layer: _inference_call(layer))
            )
        for attribute in ("dropout", "recurrent_dropout"):
            value = layer.__dict__.get(attribute)
            if isinstance(value, float) and value > 0:
                found.append((f"{attribute}: {layer.name} ({value})", _zero(layer, attribute)))
        if getattr(layer, "activity_regularizer", None) is not None:
            found.append(
                (
                    f"activity_regularizer: {layer.name}",
                    lambda layer=layer: setattr(layer, "activity_regularizer", None),
                )
            )
    for variable in model.weights:
        if getattr(variable, "regularizer", None) is not None:
            found.append((f"regularizer: {variable.path}", lambda v=variable: setattr(v, "regularizer", None)))
    return found


def disable_regularization(model):
    """Turns off dropout, noise, augmentation and weight/activity regularizers, in place.

    Meant for a working copy of a model (never the user's): sets dropout rates
    and Gaussian noise to zero (including RNN cells' `dropout` and
    `recurrent_dropout`), runs random augmentation layers (`RandomFlip`,
    `RandomTranslation`, ..., `MixUp`) as at inference, and removes
    kernel/bias/... regularizers from the variables and activity
    regularizers from the layers. Losses a model adds itself in `call()`
    (`add_loss`) cannot be told apart and stay on (`losses_left_on` names
    them).

    Args:
        model: A `keras.Model` that has not been traced yet.

    Returns:
        A sorted list of what was turned off, e.g.
        `["dropout: dropout (rate 0.5)", "kernel_regularizer: dense/kernel"]`.
    """
    found = _regularization(model)
    for _, turn_off in found:
        turn_off()
    return sorted({description for description, _ in found})


def regularization_in(session):
    """What `working_copy(..., regularization=False)` turns off, read from the user's model (left as it is)."""
    found = sorted({description for description, _ in _regularization(session.model)})
    if session.initial_optimizer_config.get("weight_decay"):
        found.append("optimizer weight_decay")
    return found


def losses_left_on(model, x_batch):
    """The layers whose own `add_loss` terms stay on in a copy (run once on a batch to see them)."""
    model(as_model_input(x_batch), training=True)
    return sorted(
        {
            f"add_loss: {layer.name}"
            for layer in model._flatten_layers(include_self=False, recursive=True)
            if layer.losses and not any(v.regularizer is not None for v in layer.weights)
        }
    )


def weight_decay_off(session):
    """The optimizer's "no weight decay": None, or 0.0 for an optimizer that needs a float (AdamW).

    Both leave the weights alone; Keras's `AdamW` refuses None. Read from the
    optimizer as compiled (`Session.initial_optimizer_config`).
    """
    return None if session.initial_optimizer_config.get("weight_decay") is None else 0.0


# The copy -------------------------------------------------------------------


def working_copy(
    session,
    *,
    weights=CURRENT,
    hyperparameters=None,
    regularization=True,
    metrics=None,
    **optimizer_changes,
):
    """Returns a compiled copy of the session's model, in the strategy's scope, with a fresh optimizer.

    The user's model, its optimizer and its regularization are left as they
    are. The copy keeps the model's frozen layers frozen.

    Args:
        session: The `Session`.
        weights: Where the copy starts: `CURRENT` (the model's weights now),
            `INITIAL` (those the Playbook was created with), `FRESH` (the
            copy's own random initialization) or a `get_weights()` list.
            With `hyperparameters` that change the shapes, the copy keeps its
            own initialization.
        hyperparameters: A `keras_tuner.HyperParameters` for a builder that
            takes one.
        regularization: False turns off dropout, noise, augmentation,
            weight and activity regularizers (`disable_regularization`) and
            the optimizer's weight decay.
        metrics: Metrics to compile with: None (the loss alone: cheaper
            steps), a list, or `COMPILED` for everything the user compiled
            with (metrics, loss weights, ...).
        **optimizer_changes: Changes to the optimizer's config as compiled
            (`Session.fresh_optimizer`: never the live optimizer's values),
            e.g. the values in force from the journal, `learning_rate=1e-3,
            momentum=0.9`. A weight decay of None or 0 becomes
            `weight_decay_off`. The optimizer is always new: no state is
            carried over.

    Returns:
        The compiled copy.

    Example:

    ```python
    model = working_copy(session, weights=INITIAL, regularization=False, learning_rate=1e-2)
    losses = train_steps(model, fixed_order(pipeline, seed=0), num_steps=50)
    ```
    """
    if isinstance(weights, str) and weights not in (CURRENT, INITIAL, FRESH):
        raise ValueError(f"working_copy: `weights` must be {CURRENT!r}, {INITIAL!r}, {FRESH!r} or a list of arrays.")
    if weights == CURRENT:
        weights = session.model.get_weights()
    model = session.trial_model(weights=None if weights == INITIAL else weights, hyperparameters=hyperparameters)
    if not regularization:
        disable_regularization(model)
        optimizer_changes["weight_decay"] = None
    if "weight_decay" in optimizer_changes and not optimizer_changes["weight_decay"]:
        optimizer_changes["weight_decay"] = weight_decay_off(session)
    optimizer = session.fresh_optimizer(**optimizer_changes)
    if metrics == COMPILED:
        return session.compile_like(model, optimizer)
    with session.scope():
        model.compile(optimizer=optimizer, loss=session.model.loss, metrics=metrics)
    return model


# Running it -----------------------------------------------------------------


def train_steps(model, dataset, num_steps, callbacks=(), loss_key=None):
    """Trains `model` for `num_steps` steps of `dataset`, each its own epoch.

    Args:
        model: A compiled model.
        dataset: A batched `tf.data.Dataset`; it is repeated.
        num_steps: Steps to run (fewer if a callback stops training).
        callbacks: Extra callbacks; a `StepLosses` is added first.
        loss_key: The key of the loss in the logs (see `StepLosses`).

    Returns:
        The list of per-step training losses (exact, not running means).

    Raises:
        ValueError: after the first step, for a model with its own
            `train_step` that does not update its loss tracker or does not
            step `model.optimizer` (`_loss_key.FirstStepCheck`).
    """
    recorder = StepLosses(loss_key)
    model.fit(
        dataset.repeat(),
        epochs=num_steps,
        steps_per_epoch=1,
        callbacks=[FirstStepCheck(loss_key, "A short run"), recorder, *callbacks],
        shuffle=False,
        verbose=0,
    )
    return recorder.losses


def fixed_order(pipeline, seed):
    """A fresh copy of the pipeline's dataset: the same data order on every call with the same seed.

    A pipeline's own dataset reshuffles on every pass, so two short runs
    read from it see different orders; runs that are compared (probes at
    several rates) or repeated (a range test run again) each take this copy.
    """
    return pipeline.with_batch_size(pipeline.per_replica_batch_size, seed=seed).dataset


def batched(sample, batch_size, shuffle_seed=None):
    """`sample` (arrays, as `DataPipeline.sample` returns) as a batched dataset.

    Without `shuffle_seed` the batches are cached and come in the same order
    on every pass (a fixed yardstick); with it they reshuffle every pass.
    """
    dataset = tf.data.Dataset.from_tensor_slices(sample)
    if shuffle_seed is not None:
        count = len(tf.nest.flatten(sample[0])[0])
        return dataset.shuffle(count, seed=shuffle_seed).batch(batch_size)
    return dataset.batch(batch_size).cache()


def fixed_sample(pipeline, num_batches, seed):
    """The same `num_batches` global batches of the pipeline's data for every call with the same seed."""
    return batched(pipeline.sample(num_batches, seed=seed), pipeline.global_batch_size)
