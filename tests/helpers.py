"""Tiny models and shipped data for the tests (nothing is downloaded)."""

import keras
import numpy as np
from sklearn.datasets import load_digits

from keras_playbook._session import innermost_optimizer


def digits_data(num_train=512, num_val=128):
    """Digits as 64 features in [0, 1]: a small train and validation split."""
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int64")
    return {
        "x_train": x[:num_train],
        "y_train": y[:num_train],
        "x_val": x[num_train : num_train + num_val],
        "y_val": y[num_train : num_train + num_val],
    }


def mlp(num_classes=10, input_dim=64, hidden=32, dropout=0.0, l2=None, activation=None, name="mlp"):
    """A one-hidden-layer MLP; `activation` is the output's (None: logits)."""
    regularizer = None if l2 is None else keras.regularizers.L2(l2)
    layers = [
        keras.Input((input_dim,)),
        keras.layers.Dense(hidden, activation="relu", kernel_regularizer=regularizer),
    ]
    if dropout:
        layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(num_classes, activation=activation))
    return keras.Sequential(layers, name=name)


LOGITS_LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def variables_of(model):
    """Values of all model variables, all optimizer variables and the optimizer's momentum / beta_1 / weight decay.

    An optimizer that is not built yet already has its step count and its
    learning rate (Keras 3 makes `iteration` and `learning_rate` at
    construction): "nothing changed" sees them too. Its momentum, `beta_1`
    and weight decay are Python attributes, not variables: they come last
    (NaN when the optimizer has none).
    """
    values = [keras.ops.convert_to_numpy(v) for v in model.variables]
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None:
        values += [keras.ops.convert_to_numpy(v) for v in optimizer.variables]
        inner = innermost_optimizer(optimizer)
        settings = [getattr(inner, name, None) for name in ("momentum", "beta_1", "weight_decay")]
        values.append(
            np.array([np.nan if value is None else float(keras.ops.convert_to_numpy(value)) for value in settings])
        )
    return values


def assert_same_values(before, after):
    assert len(before) == len(after)
    for first, second in zip(before, after):
        np.testing.assert_array_equal(first, second)
