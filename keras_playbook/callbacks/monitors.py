"""Callbacks that watch training from inside: update ratios and weight decay.

`UpdateRatioMonitor` is CS231n's check of weight update / weight magnitude:
for each layer, the norm of one step's change of its weights over the norm of
the weights should be around 1e-3. Much smaller: the learning rate is too low
or the layer is dead; much larger: training is unstable.

`WeightDecayMonitor` compares, per layer, the pull of the weight decay with
the push of the data loss (Loshchilov & Hutter 2019: when the decay wins, learning stops).
`CurveDiagnosis` and `LossComponents` live in `curves.py`.

References:
    Stanford CS231n, "Neural Networks Part 3: Learning and Evaluation"
    (update/weight ratio ~1e-3).
    Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization",
    arXiv:1711.05101; van Laarhoven 2017, arXiv:1706.05350.
"""

import math

import keras
import numpy as np
import tensorflow as tf

from keras_playbook import _validation as validation
from keras_playbook._diagnosis import Finding
from keras_playbook._loss_key import check_compiled_loss, check_loss_key, find_loss
from keras_playbook._session import innermost_optimizer, leaf_layers, read_value
from keras_playbook.callbacks._config import ConfigurableCallback, arrays_from_config, arrays_to_config


class UpdateRatioMonitor(ConfigurableCallback):
    """Per layer, the size of a step's update against the size of the weights (CS231n: about 1e-3).

    For each layer, ||Δw|| / ||w|| of one training step: the CS231n rule of
    thumb puts it around 1e-3 for SGD. Much smaller, the layer barely moves
    (the learning rate is far too low, or the layer is dead); much larger,
    each step rewrites a good part of the weights (unstable).

    What is measured: a window of `window` consecutive steps, once every
    `frequency` steps, starting after `warmup_steps` steps (the first steps
    are not typical: Adam's first update is the learning rate times the sign
    of the gradient, for every weight). A layer's ratio is the median over
    the window. A layer is flagged once per direction when `patience`
    successive windows fall outside `[target / tolerance, target * tolerance]`;
    "too small" only while the training loss has not yet fallen by half
    from `reference_loss` (a model that has learned and converged moves
    little, and is fine).

    What holds for which optimizer: for adaptive optimizers (Adam, AdamW,
    RMSprop, ...) the update is about the learning rate per weight, so the
    ratio is about lr / rms(w) by construction; SGD's scales with the
    gradient. Measured on healthy runs of an MLP and a BatchNorm CNN on
    digits (SGD with and without momentum, Adam, RMSprop at rates that
    train well), window medians ranged from 2e-3
    to 5e-2 early in training, up to 0.11 for a single layer of a CNN at
    SGD 0.5 in its first epoch, and 2e-3 to 2e-2 later, for every one of
    them; dead networks (a rate that made every ReLU die) fall to 1e-10.
    The default band, 1e-3 x/÷ 100 = [1e-5, 0.1] held over two windows,
    holds for all of them; the 1e-3 x/÷ 10 of the rule of thumb would flag
    most healthy runs.

    At each epoch end the median over layers of the window finished during
    that epoch is logged as `update_ratio` (NaN for an epoch in which no
    window finished: nothing stale is repeated).

    Args:
        frequency: Steps between the starts of two windows (>= 1); None:
            once per epoch when Keras knows the steps per epoch, else 100.
        window: Consecutive steps measured per window (>= 1).
        warmup_steps: Steps of the run skipped before the first window (>= 0).
        target: The reference ratio (CS231n: 1e-3).
        tolerance: Factor around `target` within which a ratio is fine (> 1).
        patience: Successive windows outside the band before a layer is
            flagged (>= 1).
        reference_loss: The loss of the untrained model (e.g. ln C), or
            None: the training loss at the first window.
        verbose: 1 prints each flag when it is raised.
        loss_key: The name the model logs its training loss under, for a
            model whose own `train_step` reports it otherwise (e.g.
            "total_loss", the Keras guide "Customizing what happens in
            fit()"). None: "loss" (for a model that logs no "loss", the one
            logged name ending in "loss"; with none, "too small" is judged
            without the loss). A `loss_key` the logs do not hold raises
            `ValueError` at the first window.

    Attributes:
        history: One dict per window: `step` (0-based step at which it
            started, over the whole run) and `ratios` (layer name -> median
            ratio over the window).
        findings: `Finding`s ("update_too_small", "update_too_large"), one
            per flagged layer and direction; `advice` is the sentence.

    Example:

    ```python
    monitor = UpdateRatioMonitor()
    model.fit(x, y, epochs=5, callbacks=[monitor])
    for finding in monitor.findings:
        print(finding.advice)
    ```

    References:
        Stanford CS231n, "Neural Networks Part 3: Learning and Evaluation"
        (ratio of weight updates to weight magnitudes, ~1e-3).
    """

    def __init__(
        self,
        frequency=None,
        window=5,
        warmup_steps=10,
        target=1e-3,
        tolerance=100.0,
        patience=2,
        reference_loss=None,
        verbose=0,
        loss_key=None,
    ):
        super().__init__()
        check_loss_key(loss_key)
        if frequency is not None:
            validation.check_int(frequency, "frequency", "UpdateRatioMonitor")
        validation.check_int(window, "window", "UpdateRatioMonitor")
        validation.check_int(warmup_steps, "warmup_steps", "UpdateRatioMonitor", minimum=0)
        validation.check_int(patience, "patience", "UpdateRatioMonitor")
        validation.check_number(target, "target", "UpdateRatioMonitor")
        validation.check_number(tolerance, "tolerance", within="> 1")
        self.frequency = frequency
        self.window = window
        self.warmup_steps = warmup_steps
        self.target = float(target)
        self.tolerance = float(tolerance)
        self.patience = patience
        self.reference_loss = None if reference_loss is None else float(reference_loss)
        self.verbose = verbose
        self.loss_key = loss_key
        self.history = []
        self.findings = []
        self._reset()

    resume_state = (
        "history",
        "findings",
        "_flagged",
        "_outside",
        "_step",
        "_before",
        "_window_ratios",
        "_window_start",
        "_next_start",
        "_fresh",
        "_first_loss",
    )

    def _reset(self):
        self._flagged = set()
        self._outside = {}  # (layer, direction) -> successive windows outside the band.
        self._step = 0
        self._epoch = 0
        self._before = None
        self._window_ratios = {}
        self._window_start = None
        self._next_start = self.warmup_steps
        self._fresh = None
        self._first_loss = self.reference_loss

    def _read(self):
        return {
            layer.name: [read_value(v) for v in layer.trainable_weights]
            for layer in leaf_layers(self.model)
            if layer.trainable_weights
        }

    def _interval(self):
        if self.frequency is not None:
            return max(self.frequency, self.window)
        steps = (self.params or {}).get("steps")
        return max(int(steps) if steps else 100, self.window)

    def on_train_begin(self, logs=None):
        self.history, self.findings = [], []
        self._reset()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._fresh = None

    def on_train_batch_begin(self, batch, logs=None):
        if self._step == self._next_start and self._window_start is None:
            self._window_start, self._window_ratios = self._step, {}
        if self._window_start is not None:
            self._before = self._read()

    def on_train_batch_end(self, batch, logs=None):
        if self._before is not None:
            after = self._read()
            for name, before in self._before.items():
                change = np.sqrt(sum(np.sum((a - b).astype("float64") ** 2) for a, b in zip(after[name], before)))
                size = np.sqrt(sum(np.sum(b.astype("float64") ** 2) for b in before))
                ratio = float(change / size) if size > 0 else float("inf")
                self._window_ratios.setdefault(name, []).append(ratio if math.isfinite(ratio) else float("inf"))
            self._before = None
            if self._step - self._window_start + 1 >= self.window:
                ratios = {name: float(np.median(values)) for name, values in self._window_ratios.items()}
                self.history.append({"step": self._window_start, "ratios": ratios})
                self._fresh = ratios
                self._flag(ratios, self._loss(logs))
                self._next_start = self._window_start + self._interval()
                self._window_start = None
        self._step += 1

    def _loss(self, logs):
        """The training loss in `logs`, read at `loss_key`; None when it is not given and none is found."""
        logs = logs or {}
        if self.loss_key is not None and self.loss_key not in logs:
            raise ValueError(
                f"UpdateRatioMonitor: the training logs hold {sorted(logs)}, not loss_key={self.loss_key!r}. Pass "
                "the name the model's train_step logs its loss under as `loss_key`, or None to find it."
            )
        found = find_loss(logs, self.loss_key)  # None: no "loss", no one name ending in "loss".
        return None if found is None else found[1]

    def _learned(self, loss):
        """Whether the training loss has fallen by half since the first window (a converged model moves little)."""
        if loss is None or not math.isfinite(float(loss)):
            return False
        loss = float(loss)
        if self._first_loss is None:
            self._first_loss = loss
        return self._first_loss - loss > 0.5 * abs(self._first_loss)

    def _flag(self, ratios, loss=None):
        low, high = self.target / self.tolerance, self.target * self.tolerance
        learned = self._learned(loss)
        for name, ratio in ratios.items():
            # Tiny updates of a model that has learned are convergence (Adam's second moment still
            # remembers the early, larger gradients), not a dead layer.
            for direction, outside in (("low", ratio < low and not learned), ("high", not ratio <= high)):
                count = self._outside.get((name, direction), 0) + 1 if outside else 0
                self._outside[(name, direction)] = count
                if count < self.patience or (name, direction) in self._flagged:
                    continue
                self._flagged.add((name, direction))
                windows = f"{count} successive windows" if count > 1 else "a window"
                if direction == "low":
                    kind, advice = (
                        "update_too_small",
                        (
                            f"Layer {name!r}: update/weight ratio {ratio:.2g} over {windows} up to step {self._step}, "
                            f"below {low:.2g} ({self.target:g} / {self.tolerance:g}): the layer barely moves; the "
                            "learning rate is far too low for it, or the layer is dead "
                            "(CS231n, learning and evaluation)."
                        ),
                    )
                else:
                    kind, advice = (
                        "update_too_large",
                        (
                            f"Layer {name!r}: update/weight ratio {ratio:.2g} over {windows} up to step {self._step}, "
                            f"above {high:.2g} ({self.target:g} x {self.tolerance:g}): each step rewrites a large part "
                            "of the weights, which makes training unstable; lower the learning rate "
                            "(CS231n, learning and evaluation)."
                        ),
                    )
                evidence = {"layer": name, "ratio": ratio, "step": self._step, "windows": count}
                self.findings.append(Finding(kind, [self._epoch + 1], evidence, advice))
                if self.verbose:
                    print(f"\nUpdateRatioMonitor: {advice}")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            fresh = self._fresh
            logs["update_ratio"] = float(np.median(list(fresh.values()))) if fresh else math.nan

    def get_config(self):
        return {
            "frequency": self.frequency,
            "window": self.window,
            "warmup_steps": self.warmup_steps,
            "target": self.target,
            "tolerance": self.tolerance,
            "patience": self.patience,
            "reference_loss": self.reference_loss,
            "verbose": self.verbose,
            "loss_key": self.loss_key,
        }


def decayed_variables(model):
    """The weights under weight decay, per leaf layer: `(decoupled, coupled)`.

    Decoupled: those the optimizer's `weight_decay` shrinks (Keras's own
    exclusion rules applied); coupled: those with a `regularizer`.
    """
    optimizer = innermost_optimizer(model.optimizer)
    decay = getattr(optimizer, "weight_decay", None)
    decoupled, coupled = {}, {}
    for layer in leaf_layers(model):
        for variable in layer.trainable_weights:
            if decay and optimizer._use_weight_decay(variable):
                decoupled.setdefault(layer.name, []).append(variable)
            if variable.regularizer is not None:
                coupled.setdefault(layer.name, []).append(variable)
    return decoupled, coupled


def _squared_norm(arrays):
    return float(sum(np.sum(np.square(np.asarray(a, dtype="float64"))) for a in arrays))


class WeightDecayMonitor(ConfigurableCallback):
    """Per layer, the pull of the weight decay against the push of the data loss (Loshchilov & Hutter 2019).

    Loshchilov & Hutter 2019: weight decay shrinks every weight in proportion to itself;
    the gradient of the data loss only counts while it is larger than that
    pull. When the decay wins, learning stops (the loss settles early, or
    gets worse after convergence). Every `frequency` steps, per layer:
    - decoupled decay (the optimizer's `weight_decay`, as in AdamW): one
      real step is measured. Keras first shrinks each decayed weight by
      `lr * wd * w`, then applies the update, so the pull is
      `||lr * wd * w||` and the push is what the step did besides,
      `||Δw + lr * wd * w||`: both in the units of a step, exact for any
      optimizer (the push includes the momentum, Adam's scaling, ...);
    - coupled decay (an L2 penalty in the loss, a `kernel_regularizer`): on
      `sample`, the gradient of the penalty against the gradient of the data
      loss (inference mode), the two parts of the gradient the optimizer
      receives.
    The ratio pull / push above `threshold` is flagged once per layer and
    kind of decay. At every epoch end the largest ratio over layers of the
    last measurement is written to the logs as `weight_decay_ratio`, which
    `diagnose` reads.

    Args:
        sample: `(x, y)` arrays (a few batches) for the gradients of coupled
            decay; not needed when the decay is only decoupled.
        frequency: Measure once every `frequency` steps (>= 1).
        threshold: Pull / push ratio above which the decay wins (> 0).
        verbose: 1 prints each finding when it appears.

    Attributes:
        history: One dict per measurement: `step`, `mode` ("decoupled" or
            "coupled") and `ratios` (layer name -> pull / push).
        findings: `Finding`s of kind "weight_decay_dominating".

    Raises:
        ValueError: when training starts, for a model with no weight decay
            (no optimizer `weight_decay`, no regularizer on its weights), or
            with a regularizer but no `sample`, or with a regularizer but
            not one compiled loss (several, or none: a model whose own
            `train_step` computes its loss).

    Example:

    ```python
    monitor = WeightDecayMonitor(sample=(x_val[:256], y_val[:256]))
    model.fit(x, y, epochs=20, callbacks=[monitor])
    for finding in monitor.findings:
        print(finding.advice)
    ```
    """

    resume_state = ("history", "findings", "_flagged", "_step", "_before")

    def __init__(self, sample=None, frequency=100, threshold=1.0, verbose=0):
        super().__init__()
        if sample is not None and (not isinstance(sample, (tuple, list)) or len(sample) != 2):
            raise ValueError(f"Argument `sample` must be `(x, y)` arrays or None. Received: {type(sample).__name__}.")
        validation.check_int(frequency, "frequency")
        validation.check_number(threshold, "threshold")
        self.sample = None if sample is None else tuple(sample)
        self.frequency = frequency
        self.threshold = float(threshold)
        self.verbose = verbose
        self.history = []
        self.findings = []
        self._decoupled = {}  # layer name -> decayed variables
        self._coupled = {}  # layer name -> regularized variables
        self._flagged = set()
        self._step = 0
        self._epoch = 0
        self._before = None

    def on_train_begin(self, logs=None):
        optimizer = innermost_optimizer(self.model.optimizer)
        self._decoupled, self._coupled = decayed_variables(self.model)
        if not self._decoupled and not self._coupled:
            raise ValueError(
                "WeightDecayMonitor: this model has no weight decay to watch: its "
                f"{type(optimizer).__name__} has no `weight_decay` and no weight has a regularizer."
            )
        if self._coupled and self.sample is None:
            raise ValueError(
                f"WeightDecayMonitor: layers {sorted(self._coupled)} have a weight regularizer (coupled decay), "
                "whose pull is compared with the data-loss gradient on a sample: pass sample=(x, y)."
            )
        if self._coupled:
            check_compiled_loss(self.model, "WeightDecayMonitor (coupled decay)")
        self._step, self._before = 0, None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self._decoupled and self._step % self.frequency == 0:
            self._before = {name: [read_value(v) for v in variables] for name, variables in self._decoupled.items()}

    def _learning_rate(self):
        """The rate of the step just taken (read after it)."""
        optimizer = self.model.optimizer
        schedule = getattr(optimizer, "_learning_rate", None)
        if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            return float(read_value(schedule(read_value(optimizer.iterations) - 1)))
        return float(read_value(optimizer.learning_rate))

    def _measure_decoupled(self):
        optimizer = innermost_optimizer(self.model.optimizer)
        shrink = self._learning_rate() * float(optimizer.weight_decay)
        ratios, parts = {}, {}
        afters = {name: [read_value(v) for v in variables] for name, variables in self._decoupled.items()}
        before_all, self._before = self._before, None
        if all(np.array_equal(a, b) for name in afters for a, b in zip(afters[name], before_all[name])):
            # No step was applied: a LossScaleOptimizer skips a step whose gradients overflowed (mixed
            # precision), and a rate of 0 (a warm-up's first step) moves nothing. Nothing to compare.
            return {}, {}
        for name, after in afters.items():
            before = before_all[name]
            pull = math.sqrt(_squared_norm([shrink * b for b in before]))
            push = math.sqrt(_squared_norm([a - b + shrink * b for a, b in zip(after, before)]))
            if pull == 0:
                ratio = 0.0  # No decay acted on this step.
            else:
                ratio = pull / push if push > 0 else float("inf")
            ratios[name], parts[name] = ratio, (pull, push)
        return ratios, parts

    def _measure_coupled(self):
        x, y = self.sample
        variables = [v for group in self._coupled.values() for v in group]
        loss = keras.losses.get(self.model.loss)
        with tf.GradientTape(persistent=True) as tape:
            data = keras.ops.mean(loss(y, self.model(x, training=False)))
            penalty = sum(v.regularizer(v) for v in variables)
        data_gradients = tape.gradient(data, variables, unconnected_gradients="zero")
        penalty_gradients = tape.gradient(penalty, variables, unconnected_gradients="zero")
        del tape
        ratios, parts, index = {}, {}, 0
        for name, group in self._coupled.items():
            span = slice(index, index + len(group))
            index += len(group)
            pull = math.sqrt(_squared_norm([read_value(g) for g in penalty_gradients[span]]))
            push = math.sqrt(_squared_norm([read_value(g) for g in data_gradients[span]]))
            ratios[name], parts[name] = (pull / push if push > 0 else float("inf")), (pull, push)
        return ratios, parts

    def on_train_batch_end(self, batch, logs=None):
        measured = []
        if self._before is not None:
            measured.append(("decoupled", *self._measure_decoupled()))
        if self._coupled and self._step % self.frequency == 0:
            measured.append(("coupled", *self._measure_coupled()))
        for mode, ratios, parts in measured:
            if not ratios:
                continue
            self.history.append({"step": self._step, "mode": mode, "ratios": ratios})
            self._flag(mode, ratios, parts)
        self._step += 1

    def _flag(self, mode, ratios, parts):
        for name, ratio in ratios.items():
            if ratio <= self.threshold or (name, mode) in self._flagged:
                continue
            self._flagged.add((name, mode))
            what = "the decoupled decay step lr*wd*w" if mode == "decoupled" else "the gradient of its L2 penalty"
            against = "the rest of the step" if mode == "decoupled" else "the data-loss gradient"
            advice = (
                f"Layer {name!r}: {what} is {ratio:.2g}x {against} at step {self._step}: the weight decay "
                "wins, and learning stops from here on (Loshchilov & Hutter 2019). Reduce the weight decay, or "
                "raise the initial learning rate and train longer at it."
            )
            pull, push = parts[name]
            evidence = {"layer": name, "mode": mode, "ratio": ratio, "pull": pull, "push": push, "step": self._step}
            self.findings.append(Finding("weight_decay_dominating", [self._epoch + 1], evidence, advice))
            if self.verbose:
                print(f"\nWeightDecayMonitor: {advice}")

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not self.history:
            return
        last = [entry for entry in self.history if entry["step"] == self.history[-1]["step"]]
        logs["weight_decay_ratio"] = max(ratio for entry in last for ratio in entry["ratios"].values())

    def get_config(self):
        return {
            "sample": arrays_to_config(self.sample),
            "frequency": self.frequency,
            "threshold": self.threshold,
            "verbose": self.verbose,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**{**config, "sample": arrays_from_config(config.get("sample"))})
