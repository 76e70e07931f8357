"""Where a model reports its loss, read the same way by every stage.

A model compiled with a loss logs it as `"loss"` (and `"val_loss"`). A model
whose own `train_step`/`test_step` compute the loss (the pattern of the Keras
guide "Customizing what happens in fit()": VAEs, GANs, contrastive models)
logs whatever its metrics are named, e.g. `"total_loss"`. `loss_key_in` picks
the logged value that is the loss: the one asked for (`Playbook(loss_key=...)`),
else `"loss"`, else the one key ending in "loss"; every stage reads losses
through `read_loss`, so a loss that cannot be read is refused the same way
everywhere, naming the keys and asking for `loss_key`.

Such a step can also report a loss that never moves: a tracker it never
updates (Keras's `Mean` then reports 0.0 at every step), or a step that
drives an optimizer of its own, so the rate the stages set on
`model.optimizer` changes nothing. `check_tracker_updated` and
`check_optimizer_used` refuse both for a model with its own step.

References:
    Chollet, "Customizing what happens in `fit()`", keras.io guide
    (keras.io/guides/custom_train_step_in_tensorflow/).
"""

import keras

_GUIDE = "keras.io guide 'Customizing what happens in fit()'"


def own_step(model):
    """True when the model's class overrides Keras's `train_step` or `test_step`."""
    return any(getattr(type(model), name) is not getattr(keras.Model, name) for name in ("train_step", "test_step"))


def check_loss_key(loss_key):
    """Raises TypeError unless `loss_key` is None or a non-empty str."""
    if loss_key is not None and (not isinstance(loss_key, str) or not loss_key):
        raise TypeError(
            "Argument `loss_key` must be the name under which the model logs its loss (e.g. 'total_loss'), or "
            f"None to find it. Received: loss_key={loss_key!r}."
        )


def loss_key_in(names, loss_key=None, where="the logs"):
    """The key of the loss among logged `names`.

    Args:
        names: The keys of a `logs` dict (or a History's `history`).
        loss_key: The key asked for, or None: then `"loss"` when logged,
            else the one key whose name ends in "loss" (`val_` keys left out).
        where: What logged `names`, for the message.

    Returns:
        The key.

    Raises:
        ValueError: when `loss_key` is not among `names`, or none or several
            keys could be the loss; the message names the keys and asks for
            `Playbook(loss_key=...)`.
    """
    names = [str(name) for name in names]
    if loss_key is not None:
        if loss_key in names:
            return loss_key
        problem = (
            f"the loss is read under {loss_key!r} (the Playbook's `loss_key`, else the name the model's test_step "
            "logs it under), which is not among them: log the loss under the same name in train_step and test_step"
        )
    else:
        if "loss" in names:
            return "loss"
        candidates = [name for name in names if name.endswith("loss") and not name.startswith("val_")]
        if len(candidates) == 1:
            return candidates[0]
        problem = (
            f"{len(candidates)} of them end in 'loss' ({candidates})"
            if candidates
            else "none of them is 'loss' or ends in 'loss'"
        )
    raise ValueError(
        f"Cannot read the loss from {where}: the model logs {sorted(names)}, and {problem}. Pass "
        "Playbook(loss_key=...) naming the value the model's train_step/test_step return as the loss, or "
        f"return it under 'loss' (the trackers of the {_GUIDE})."
    )


def read_loss(logs, loss_key=None, where="the logs"):
    """The loss in Keras `logs` (see `loss_key_in`), as a float."""
    logs = logs or {}
    return float(logs[loss_key_in(logs, loss_key, where)])


def find_loss(logs, loss_key=None):
    """`(key, value)` of the loss in Keras `logs` (see `loss_key_in`), or None when it cannot be read.

    For what only shows or weighs the loss when there is one (a progress
    bar, a monitor's hint), where `read_loss` would refuse.
    """
    logs = logs or {}
    try:
        key = loss_key_in(logs, loss_key)
    except ValueError:
        return None
    return key, logs[key]


def validation_key(key):
    """The name Keras gives `key` measured on validation data."""
    return f"val_{key}"


def check_tracker_updated(model, first_loss, where):
    """Refuses a model with its own step whose first reported loss is exactly 0.0.

    Keras's `keras.metrics.Mean` reports 0.0 until it is updated, so a step
    that never calls `update_state` on its loss tracker reports 0.0 at every
    step: the stages would read a perfect model. No untrained model has an
    exact zero loss.

    Raises:
        ValueError: naming `where` (e.g. "train_step") and what to do.
    """
    if own_step(model) and first_loss == 0.0:
        raise ValueError(
            f"The model's {where} reported a loss of exactly 0.0 from its first step: it does not update its "
            "loss tracker. Call `self.loss_tracker.update_state(loss)` in the step before returning "
            f"`self.loss_tracker.result()`, and list the tracker in the model's `metrics` property ({_GUIDE}). "
            "If another returned value is the loss, pass Playbook(loss_key=...)."
        )


def one_compiled_loss(model):
    """Whether the model was compiled with one loss (not several, not none)."""
    return model.loss is not None and not isinstance(model.loss, (dict, list, tuple))


def check_compiled_loss(model, where):
    """Refuses a model without one compiled loss, for what recomputes the data loss from it.

    `LossComponents` and `WeightDecayMonitor`'s coupled decay call
    `model.loss` on predictions; a model whose own `train_step` computes
    its loss (compiled with only an optimizer) has none to call, and one
    with a loss per output has several.

    Raises:
        ValueError: naming `where` and what to do.
    """
    if isinstance(model.loss, (dict, list, tuple)):
        raise ValueError(
            f"{where} handles one compiled loss; this model has several ({model.loss!r}). Watch each output's "
            "loss in the logs instead."
        )
    if model.loss is None:
        raise ValueError(
            f"{where} recomputes the data loss with the model's compiled loss, and this model has no compiled "
            "loss: its own train_step computes the loss. Watch the values the step logs instead, or compile the "
            f"model with its loss and compute it with `self.compute_loss` in the step ({_GUIDE})."
        )


def optimizer_steps(model):
    """The step count of `model.optimizer` (read under any strategy)."""
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


def check_optimizer_used(model, steps_before, num_steps, where):
    """Refuses a model with its own step that trained `num_steps` without stepping `model.optimizer`.

    Every learning rate, momentum and weight decay the stages settle is set
    on `model.optimizer`; a `train_step` that applies its gradients with an
    optimizer of its own ignores them all, and the stages would measure
    nothing (a range test then finds the loss falling at every rate).

    Raises:
        ValueError: naming `where` and what to do.
    """
    if own_step(model) and num_steps > 0 and optimizer_steps(model) == steps_before:
        raise ValueError(
            f"{where}: the model's train_step ran {num_steps} step(s) and `model.optimizer` "
            f"({type(model.optimizer).__name__}) took none: the step applies its gradients with an optimizer of its "
            "own, so the learning rate, momentum and weight decay set on model.optimizer change nothing. Apply "
            f"them with `self.optimizer.apply(gradients, self.trainable_variables)` in train_step ({_GUIDE})."
        )


def logged_loss_key(session, pipeline):
    """The key the session's model logs its loss under, the same in every stage.

    The `loss_key` given to the Playbook (`session.loss_key`) when there is
    one; `"loss"` for a model with Keras's own steps (a compiled loss is
    always logged so); else the key `loss_key_in` finds in the logs of the
    model's `test_step` on one batch of `pipeline`, found once per session.
    That batch's loss also shows a `test_step` that never updates its
    tracker (`check_tracker_updated`).

    Raises:
        ValueError: as `loss_key_in` and `check_tracker_updated`.
    """
    if session.loss_key is not None:
        return session.loss_key
    model = session.model
    if not own_step(model):
        return "loss"
    if session.logged_loss_key is None:
        x, y, *weights = pipeline.sample(1, seed=0)
        logs = model.evaluate(
            x,
            y,
            sample_weight=weights[0] if weights else None,
            batch_size=pipeline.global_batch_size,
            verbose=0,
            return_dict=True,
        )
        key = loss_key_in(logs, None, "the model's test_step")
        check_tracker_updated(model, float(logs[key]), "test_step")
        session.logged_loss_key = key
    return session.logged_loss_key


def loss_curves(history, loss_key):
    """A History's curves with the loss also under "loss" (and "val_loss"), as `diagnose` reads them.

    Returns:
        A new dict (the History is left as it is), or None when no loss can
        be read from it.
    """
    curves = dict(getattr(history, "history", history))
    try:
        key = loss_key_in(curves, loss_key, "the History of fit")
    except ValueError:
        return None
    curves["loss"] = curves[key]
    if validation_key(key) in curves:
        curves["val_loss"] = curves[validation_key(key)]
    return curves


class FirstStepCheck(keras.callbacks.Callback):
    """Refuses, after the first step of a `fit`, a model with its own step that measures nothing.

    After the first training step: a loss of exactly 0.0 (a tracker never
    updated, `check_tracker_updated`), or `model.optimizer` not stepped (an
    optimizer of its own, `check_optimizer_used`). The `ValueError` stops
    training there; with a `session`, the session's model and its optimizer
    are first given back the state they had before the `fit`
    (`Session.snapshot`). Does nothing for a model with Keras's own steps.

    Args:
        loss_key: The key of the loss in the logs.
        where: What trains, for the message (e.g. "fit").
        session: The `Session` whose model trains (the user's), or None for a
            working copy, which is thrown away.
    """

    def __init__(self, loss_key, where, session=None):
        super().__init__()
        self.loss_key = loss_key
        self.where = where
        self.session = session
        self._checking = False
        self._state = None
        self._steps_before = None

    def on_train_begin(self, logs=None):
        self._checking = own_step(self.model)
        if self._checking and self.session is not None:
            self._state = self.session.snapshot()

    def on_train_batch_begin(self, batch, logs=None):
        if self._checking and self._steps_before is None:
            self._steps_before = optimizer_steps(self.model)

    def on_train_batch_end(self, batch, logs=None):
        if not self._checking:
            return
        self._checking = False
        try:
            check_tracker_updated(self.model, read_loss(logs, self.loss_key, "the model's train_step"), "train_step")
            check_optimizer_used(self.model, self._steps_before, 1, self.where)
        except ValueError:
            if self._state is not None:
                self.session.restore(self._state)
            raise
        finally:
            self._state = None
