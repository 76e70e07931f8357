"""Short runs from a copy of the model: the measuring stages' common tool.

The learning-rate range test, the LR probes, the momentum sweep and the
batch-size finder all train a separate copy of the model (the user's model is
never touched) for a fixed number of steps and read the loss of each step.

Keras's per-batch `logs["loss"]` is the running mean of the epoch so far, not
the loss of the batch. Short runs therefore use epochs of one step
(`steps_per_epoch=1` on a repeated dataset; Keras keeps the iterator between
epochs when `steps_per_epoch` is set), which resets the mean every step: the
logged value is then the batch's own loss, measured directly, for about 1 ms
of extra overhead per step.
"""

import math

import keras


class StepLosses(keras.callbacks.Callback):
    """Records the training loss of every step of a one-step-per-epoch `fit`.

    Also stops training once a loss is NaN or infinite.
    """

    def __init__(self):
        super().__init__()
        self.losses = []

    def on_train_batch_end(self, batch, logs=None):
        loss = float((logs or {}).get("loss", math.nan))
        self.losses.append(loss)
        if not math.isfinite(loss):
            self.model.stop_training = True


def working_copy(session, *, weights=None, metrics=None, **optimizer_changes):
    """Returns a compiled copy of the session's model, in the strategy's scope.

    Args:
        session: The `Session`.
        weights: Weights to start from; defaults to the model's current ones.
        metrics: Metrics to compile with (none by default: cheaper steps).
        **optimizer_changes: Changes to the optimizer's config, e.g.
            `learning_rate=1e-3, momentum=0.9`. The copy always gets a fresh
            optimizer (no state carried over).
    """
    model = session.trial_model(weights=session.model.get_weights() if weights is None else weights)
    optimizer = session.fresh_optimizer(**optimizer_changes)
    with session.scope():
        model.compile(optimizer=optimizer, loss=session.model.loss, metrics=metrics)
    return model


def train_steps(model, dataset, num_steps, callbacks=()):
    """Trains `model` for `num_steps` steps of `dataset`, each its own epoch.

    Args:
        model: A compiled model.
        dataset: A batched `tf.data.Dataset`; it is repeated.
        num_steps: Steps to run (fewer if a callback stops training).
        callbacks: Extra callbacks; a `StepLosses` is added first.

    Returns:
        The list of per-step training losses (exact, not running means).
    """
    recorder = StepLosses()
    model.fit(
        dataset.repeat(),
        epochs=num_steps,
        steps_per_epoch=1,
        callbacks=[recorder, *callbacks],
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
