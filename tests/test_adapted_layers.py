"""Copies compute what the model computes: adapted preprocessing layers (issue 23, item 4).

Keras's `clone_model` + `set_weights` loses the lookup tables of
`TextVectorization`/`IntegerLookup` ("Table not initialized") and leaves a
`Normalization` copy applying its initial mean and variance. Every measuring
stage trains copies, so the copies must carry the state, and a copy that
still differs is refused, naming the layer.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_wine

from keras_playbook import Playbook
from keras_playbook import _short_runs as short_runs
from tests import helpers

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def wine():
    """Wine's 13 features unscaled (means from 0.3 to 750): a Normalization layer matters."""
    x, y = load_wine(return_X_y=True)
    return x.astype("float32"), y.astype("int64")


def normalized_classifier(x, name="normalized"):
    normalization = keras.layers.Normalization(name="normalization")
    normalization.adapt(x)
    model = keras.Sequential(
        [keras.Input((x.shape[1],)), normalization, keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)],
        name=name,
    )
    model.compile(loss=LOSS, optimizer="adam", metrics=["accuracy"])
    return model


def integer_ids(count=256, seed=0):
    """Ids among 40 values, the label their parity: learned only through a lookup that tells them apart."""
    ids = np.random.default_rng(seed).integers(100, 140, (count, 1)).astype("int64")
    return ids, (ids[:, 0] % 2).astype("int64")


def lookup_classifier(ids):
    lookup = keras.layers.IntegerLookup(name="ids")
    lookup.adapt(ids)
    model = keras.Sequential(
        [
            keras.Input((1,), dtype="int64"),
            lookup,
            keras.layers.Embedding(lookup.vocabulary_size(), 8),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    )
    model.compile(loss=LOSS, optimizer="adam", metrics=["accuracy"])
    return model


def text_classifier(sentences):
    vectorize = keras.layers.TextVectorization(max_tokens=30, output_sequence_length=4, name="vectorize")
    vectorize.adapt(sentences)
    text = keras.Input(shape=(), dtype="string")
    hidden = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(30, 8)(vectorize(text)))
    model = keras.Model(text, keras.layers.Dense(2)(hidden))
    model.compile(loss=LOSS, optimizer="adam", metrics=["accuracy"])
    return model


def sentences(count=192, seed=0):
    rng = np.random.default_rng(seed)
    words = ("good great fine happy nice lovely".split(), "bad awful sad poor ugly nasty".split())
    y = rng.integers(0, 2, count)
    return np.array([" ".join(rng.choice(words[label], 4)) for label in y]), y.astype("int64")


def vocabulary(model):
    return next(layer for layer in model.layers if hasattr(layer, "get_vocabulary")).get_vocabulary()


def outputs(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def test_a_normalization_copy_normalizes_and_its_stages_measure_the_model(strategy):
    x, y = wine()
    pb = Playbook(normalized_classifier(x), (x, y), batch_size=16, strategy=strategy, verbose=0)
    for weights in (short_runs.CURRENT, short_runs.INITIAL, short_runs.FRESH):
        copy = short_runs.working_copy(pb.session, weights=weights)
        normalized = keras.ops.convert_to_numpy(copy.get_layer("normalization")(x))
        np.testing.assert_allclose(normalized.std(axis=0), 1.0, atol=1e-3)  # Not 4.93: the copy normalizes.
    copy = short_runs.working_copy(pb.session)
    np.testing.assert_allclose(outputs(copy, x[:32]), outputs(pb.model, x[:32]), rtol=1e-4, atol=1e-5)
    result = pb.overfit_small_sample()
    assert result.ok, result.message


@pytest.mark.parametrize("kind", ["IntegerLookup", "TextVectorization"])
def test_copies_of_lookup_layers_carry_the_vocabulary(strategy, kind):
    x, y = integer_ids() if kind == "IntegerLookup" else sentences()
    model = lookup_classifier(x) if kind == "IntegerLookup" else text_classifier(x)
    pb = Playbook(model, (x, y), batch_size=16, strategy=strategy, verbose=0)
    for weights in (short_runs.CURRENT, short_runs.FRESH):
        copy = short_runs.working_copy(pb.session, weights=weights)  # "Table not initialized" before.
        assert vocabulary(copy) == vocabulary(model)
    feed = tf.constant(x[:16])
    np.testing.assert_allclose(
        outputs(short_runs.working_copy(pb.session), feed), outputs(model, feed), rtol=1e-4, atol=1e-5
    )
    result = pb.overfit_small_sample()
    assert result.ok, result.message
    history = pb.fit(epochs=2)
    assert np.isfinite(history.history["loss"]).all()


def test_a_builder_whose_layer_is_not_adapted_is_refused_naming_the_layer():
    x, y = wine()

    def build_model():
        model = keras.Sequential(
            [
                keras.Input((13,)),
                keras.layers.Normalization(name="scaler"),  # Never adapted: it would pass the inputs through.
                keras.layers.Dense(16, activation="relu"),
                keras.layers.Dense(3),
            ]
        )
        model.compile(loss=LOSS, optimizer="adam")
        return model

    with pytest.raises(ValueError, match=r"'build_model' builds.*'scaler' \(Normalization\).*inside the builder"):
        Playbook(build_model, (x, y), batch_size=16, verbose=0)


@pytest.mark.parametrize("layer", ["string_lookup", "discretization"])
def test_a_model_with_a_layer_never_adapted_is_refused_before_it_is_called(layer):
    x, y = wine()
    if layer == "string_lookup":
        inputs = keras.Input((), dtype="string")
        hidden = keras.layers.Embedding(8, 4)(keras.layers.StringLookup(name="words")(inputs))
        data = (np.array(["a", "b", "c"])[y], y)
    else:
        inputs = keras.Input((13,))
        hidden = keras.layers.Discretization(num_bins=4, name="words", output_mode="one_hot")(inputs)
        data = (x, y)
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(hidden)))
    model.compile(loss=LOSS, optimizer="adam")
    with pytest.raises(ValueError, match=r"model .* never adapted: 'words'.*before passing the model"):
        Playbook(model, data, batch_size=16, verbose=0)


def test_a_builder_whose_copies_adapt_otherwise_is_refused_naming_the_layer(strategy):
    """A builder adapting on a random subset each call: its copies normalize otherwise than the Playbook's model."""
    x, y = wine()

    def build_model():
        scaler = keras.layers.Normalization(name="scaler")
        scaler.adapt(x[np.random.default_rng().choice(len(x), 20, replace=False)])  # Unseeded on purpose.
        model = keras.Sequential(
            [keras.Input((13,)), scaler, keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)]
        )
        model.compile(loss=LOSS, optimizer="adam")
        return model

    pb = Playbook(build_model, (x, y), batch_size=16, strategy=strategy, verbose=0)
    before = helpers.variables_of(pb.model)
    with pytest.raises(ValueError, match=r"'scaler' \(Normalization\).*adapt it inside the builder, or pass the vocab"):
        pb.overfit_small_sample()
    helpers.assert_same_values(before, helpers.variables_of(pb.model))
    short_runs.working_copy(pb.session, weights=short_runs.FRESH)  # Fresh weights: not compared.


class Shift(keras.layers.Layer):
    """Adds an offset held as a plain attribute: neither a weight nor in the config, so a clone loses it."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.offset = 0.0

    def call(self, inputs):
        return inputs + self.offset


def test_a_copy_that_still_differs_is_refused_before_any_training():
    x, y = wine()
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    shift = Shift(name="shift")
    model = keras.Sequential([keras.Input((13,)), shift, keras.layers.Dense(3)])
    shift.offset = 3.0
    model.compile(loss=LOSS, optimizer="adam")
    pb = Playbook(model, (x, y), batch_size=16, verbose=0)
    before = helpers.variables_of(pb.model)
    with pytest.raises(ValueError, match="does not compute what the model computes.*custom layer"):
        pb.find_lr()
    helpers.assert_same_values(before, helpers.variables_of(pb.model))
