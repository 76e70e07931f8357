"""Gradual unfreezing (Howard & Ruder 2018, ULMFiT): thaw one layer group at a time from the top."""

from keras_playbook import _validation as validation
from keras_playbook.callbacks._config import ConfigurableCallback
from keras_playbook.callbacks.monitors import leaf_layers
from keras_playbook.finetune._groups import freeze_to, layer_groups, restore_trainable, trainable_state

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

    resume_state = ("thawed", "_trainable_from", "_best", "_wait", "_since")

    def set_state(self, state):
        """Puts back the groups thawed so far (and the plateau count) of a resumed `fit`."""
        super().set_state(state)
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
