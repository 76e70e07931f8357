"""Callbacks that watch the curves: diagnosis after every epoch, and each loss on its own.

`CurveDiagnosis` runs `keras_playbook.diagnose` after every epoch and warns once per finding.
`LossComponents` logs each loss of a model with several on its own (charting each loss
on its own; Wen et al. 2016).

References:
    Wen et al. 2016, "A Discriminative Feature Learning Approach for Deep
    Face Recognition", ECCV (the center loss, an extra loss to chart).
    Johnson, EECS 498 Lecture 11, step 6 (learning curves).
"""

import math

import keras
import numpy as np
import tensorflow as tf

from keras_playbook._diagnosis import diagnose, schedule_name
from keras_playbook._loss_key import check_compiled_loss, check_loss_key, loss_curves
from keras_playbook._session import leaf_layers, read_value
from keras_playbook.callbacks._config import ConfigurableCallback, arrays_from_config, arrays_to_config


class CurveDiagnosis(ConfigurableCallback):
    """Runs `keras_playbook._diagnosis.diagnose` on the curves after every epoch (Johnson, step 6).

    Keeps every finding that appears (once per kind), prints it when
    `verbose`, and stops training when the loss diverges if
    `stop_on_divergence`. An early epoch can look like a plateau; the
    diagnosis of the finished curves (`diagnose(history)`) is the verdict.

    Args:
        stop_on_divergence: Stop training on a NaN or infinite loss.
        schedule: The learning-rate schedule training runs with (a callback
            or its class name): its planned or earned decays are not
            mistakes (see `diagnose`).
        verbose: 1 prints each new finding.
        initial_loss: The loss before training (e.g. `model.evaluate` on a
            training sample before `fit`), or None. With it, a run worse
            than the untrained model is told from the first epoch on (see
            `diagnose`); without it, only a NaN or infinite loss is judged
            before the third epoch.
        loss_key: The name the model logs its loss under, for a model whose
            own `train_step` reports it otherwise (e.g. "total_loss", the
            Keras guide "Customizing what happens in fit()"); its
            validation curve is `val_<loss_key>`. None: "loss" (for a
            model that logs no "loss", the one logged name ending in
            "loss"). The curves are diagnosed only while the loss can be
            read (`_loss_key.loss_curves`).

    Attributes:
        findings: The `Finding`s seen so far, in the order they appeared.

    Example:

    ```python
    diagnosis = CurveDiagnosis()
    model.fit(x, y, validation_data=(x_val, y_val), epochs=30, callbacks=[diagnosis])
    for finding in diagnosis.findings:
        print(finding.kind, finding.advice)
    ```
    """

    def __init__(self, stop_on_divergence=True, schedule=None, verbose=1, initial_loss=None, loss_key=None):
        super().__init__()
        check_loss_key(loss_key)
        self.stop_on_divergence = bool(stop_on_divergence)
        self.schedule = schedule_name(schedule)
        self.verbose = verbose
        self.initial_loss = None if initial_loss is None else float(initial_loss)
        self.loss_key = loss_key
        self.findings = []
        self._curves = {}

    resume_state = ("findings", "_curves")

    def on_train_begin(self, logs=None):
        self.findings, self._curves = [], {}

    def on_epoch_end(self, epoch, logs=None):
        for name, value in (logs or {}).items():
            if isinstance(value, (int, float, np.floating, np.integer)):
                self._curves.setdefault(name, []).append(float(value))
        curves = loss_curves(self._curves, self.loss_key)  # The loss under "loss", as `diagnose` reads it.
        if curves is None:
            return
        known = {finding.kind for finding in self.findings}
        for finding in diagnose(curves, schedule=self.schedule, initial_loss=self.initial_loss):
            if finding.kind in known:
                continue
            self.findings.append(finding)
            if self.verbose:
                print(f"\nCurveDiagnosis (epoch {epoch + 1}): {finding.kind}: {finding.advice}")
            if finding.kind == "diverged" and self.stop_on_divergence:
                self.model.stop_training = True

    def get_config(self):
        return {
            "stop_on_divergence": self.stop_on_divergence,
            "schedule": self.schedule,
            "verbose": self.verbose,
            "initial_loss": self.initial_loss,
            "loss_key": self.loss_key,
        }


class LossComponents(ConfigurableCallback):
    """Logs every loss separately at each epoch end, on a fixed sample (charting each loss on its own; Wen et al. 2016).

    With extra losses besides the cross-entropy and the L2 penalty
    (a center loss, an embedding regularizer), draw a chart for each loss and
    watch it; the L2 loss is usually the precursor of the others. At the end
    of every epoch the model runs on `sample` (inference mode) and the
    callback writes to the logs, under `<prefix><component>`:
    - `data`: the compiled loss of the predictions;
    - `regularization/<layer>`: the weight penalties of a layer's variables;
    - `extra/<layer>`: what a layer adds itself with `add_loss`.
    Together they make the model's total loss on the sample
    (`model.compute_loss`). `plot()` draws one chart per component.

    Args:
        sample: `(x, y)` NumPy arrays: a fixed sample, e.g. a few validation
            batches.
        prefix: Prefix of the log keys.

    Attributes:
        history: Per component, one value per epoch.

    Raises:
        ValueError: for a sample that is not `(x, y)`; at the start of
            training, for a model with several compiled losses or none (a
            model whose own `train_step` computes its loss).

    Example:

    ```python
    components = LossComponents((x_val[:256], y_val[:256]))
    model.fit(x, y, epochs=20, callbacks=[components])
    components.plot().savefig("losses.png")
    ```
    """

    resume_state = ("history",)

    def __init__(self, sample, prefix="loss/"):
        super().__init__()
        if not isinstance(sample, (tuple, list)) or len(sample) != 2:
            raise ValueError(
                "Argument `sample` must be `(x, y)` arrays, e.g. (x_val[:256], y_val[:256]). "
                f"Received: {type(sample).__name__} of length {len(sample) if hasattr(sample, '__len__') else '?'}."
            )
        self.sample = tuple(sample)
        self.prefix = prefix
        self.history = {}
        self._extra_layers = None

    def on_train_begin(self, logs=None):
        check_compiled_loss(self.model, "LossComponents")
        self.history = {}
        self._extra_layers = None
        # The model's call, traced once, outside any replica context: one prediction per example on
        # every strategy (Keras's `predict_on_batch` under a MirroredStrategy returns one per replica).
        self._predict = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)

    def components(self):
        """The loss components on the sample now, as floats.

        The first call runs the model eagerly to see which layers add losses
        of their own; when none does, later calls go through the model's
        call traced once as a `tf.function`, which is much cheaper.
        """
        x, y = self.sample
        eager = self._extra_layers is None or self._extra_layers
        prediction = self.model(x, training=False) if eager else self._predict(x)
        data = keras.losses.get(self.model.loss)(y, prediction)
        values = {"data": float(read_value(keras.ops.mean(data)))}
        extra_layers = []
        for layer in leaf_layers(self.model):
            penalties = [v.regularizer(v) for v in layer.trainable_weights if v.regularizer is not None]
            weight = float(sum(float(read_value(p)) for p in penalties))
            if penalties:
                values[f"regularization/{layer.name}"] = weight
            if eager and layer.losses:
                extra = float(sum(float(read_value(term)) for term in layer.losses)) - weight
                if extra != 0:
                    values[f"extra/{layer.name}"] = extra
                    extra_layers.append(layer.name)
        if self._extra_layers is None:
            self._extra_layers = extra_layers
        return values

    def on_epoch_end(self, epoch, logs=None):
        for name, value in self.components().items():
            self.history.setdefault(name, []).append(value)
            if logs is not None:
                logs[self.prefix + name] = value

    def plot(self):
        """One chart per loss component against the epoch."""
        from matplotlib.figure import Figure

        names = list(self.history) or ["data"]
        figure = Figure(figsize=(4 * min(len(names), 3), 3 * math.ceil(len(names) / 3)))
        for index, name in enumerate(names, start=1):
            axes = figure.add_subplot(math.ceil(len(names) / 3), min(len(names), 3), index)
            values = self.history.get(name, [])
            axes.plot(range(1, len(values) + 1), values, marker=".")
            axes.set_title(name, fontsize="small")
            axes.set_xlabel("epoch")
        figure.suptitle("Each loss on its own chart ")
        figure.tight_layout()
        return figure

    def get_config(self):
        return {"sample": arrays_to_config(self.sample), "prefix": self.prefix}

    @classmethod
    def from_config(cls, config):
        return cls(**{**config, "sample": arrays_from_config(config["sample"])})
