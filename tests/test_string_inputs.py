"""Models that take strings (issue 23, item 3).

A model whose input is `keras.Input(shape=(), dtype="string")` followed by
`TextVectorization`: NumPy arrays of strings are taken for it (and refused,
as before, for a model whose input takes numbers), a `tf.data.Dataset` of
strings goes through every stage (the library feeds strings to the model as
`tf.string` tensors), and the whole default `run()` completes, on one device
and on two replicas.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_playbook import Playbook
from tests import helpers

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
WORDS = ("good great fine happy nice lovely warm bright".split(), "bad awful sad poor ugly nasty cold dark".split())


def sentences(count, seed):
    """Made-up sentences of four words, each drawn from its class's word list."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, count)
    text = [" ".join(rng.choice(WORDS[label], 4)) for label in labels]
    return np.array(text), labels.astype("int64")


def text_classifier(train_sentences, optimizer="adam"):
    vectorize = keras.layers.TextVectorization(max_tokens=32, output_sequence_length=4, name="vectorize")
    vectorize.adapt(train_sentences)
    text = keras.Input(shape=(), dtype="string", name="text")
    hidden = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(32, 8)(vectorize(text)))
    model = keras.Model(text, keras.layers.Dense(2)(hidden), name="text_classifier")
    model.compile(loss=LOSS, optimizer=optimizer, metrics=["accuracy"])
    return model


def test_numpy_strings_are_taken_for_a_string_input(strategy):
    x, y = sentences(192, seed=0)
    x_val, y_val = sentences(64, seed=1)
    model = text_classifier(x)
    pb = Playbook(model, (x, y), validation_data=(x_val, y_val), batch_size=16, strategy=strategy, verbose=0)
    assert pb.check_initial_loss().ok
    history = pb.fit(epochs=3)
    assert history.history["val_accuracy"][-1] > 0.8  # It learned from the words.


def test_strings_are_refused_where_the_input_takes_numbers():
    x, y = sentences(64, seed=0)
    with pytest.raises(ValueError, match=r"`x` of the training data holds strings.*input there takes numbers"):
        Playbook(helpers.mlp(num_classes=2, input_dim=4), (x, y), loss=LOSS, verbose=0)


def test_a_dataset_of_strings_goes_through_the_stages(strategy):
    x, y = sentences(192, seed=0)
    x_val, y_val = sentences(64, seed=1)
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    validation = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(16)
    pb = Playbook(text_classifier(x), train, validation_data=validation, strategy=strategy, verbose=0)
    result = pb.check_initial_loss()  # "Invalid dtype: object" before.
    assert result.ok, result.message
    assert pb.overfit_small_sample().ok
    history = pb.fit(epochs=2)  # Its watchers read a sample of strings.
    assert np.isfinite(history.history["loss"]).all()


@pytest.mark.slow
def test_the_default_run_completes_on_a_text_classifier(strategy):
    x, y = sentences(256, seed=0)
    x_val, y_val = sentences(64, seed=1)
    pb = Playbook(
        text_classifier(x), (x, y), validation_data=(x_val, y_val), batch_size=16, strategy=strategy, verbose=0
    )
    result = pb.run(epochs=3)
    stages = [step["stage"] for step in result.steps]
    assert result.stopped is None, result.message
    for stage in ("check_initial_loss", "overfit_small_sample", "find_batch_size", "find_lr", "probe_lrs", "fit"):
        assert stage in stages, (stage, stages)
    assert np.isfinite(result.final["val_loss"]), result.message


def test_keras_alone_cannot_fit_strings_over_two_replicas_without_the_fix(mirrored_strategy):
    """The bug `_compat/string_batches.py` works around, shown with Keras's own method.

    When this test fails, Keras builds string batches over several replicas
    itself: remove the fix and this test.
    """
    from keras.src.backend.tensorflow import trainer as tensorflow_trainer

    from keras_playbook._compat import string_batches

    x, y = sentences(32, seed=3)
    with mirrored_strategy.scope():
        model = text_classifier(x)
    trainer = tensorflow_trainer.TensorFlowTrainer
    patched = trainer._maybe_symbolic_build
    trainer._maybe_symbolic_build = getattr(patched, "__wrapped__", patched)  # Keras's own, unpatched.
    try:
        with pytest.raises(Exception, match="string"):
            model.fit(tf.constant(x), y, batch_size=8, epochs=1, verbose=0)
    finally:
        trainer._maybe_symbolic_build = patched
    string_batches.install()
    with mirrored_strategy.scope():
        model = text_classifier(x)
    history = model.fit(tf.constant(x), y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_a_table_with_a_string_column_trains_in_every_short_run_and_splits(strategy):
    """A dict of a float array and a NumPy `<U` string column: fed to the model as tensors alike, split as arrays."""
    rng = np.random.default_rng(5)
    colors = np.array(["red", "green", "blue"])[rng.integers(0, 3, 96)]  # dtype <U5
    numbers = rng.normal(size=(96, 3)).astype("float32")
    y = (colors == "red").astype("int64")
    with strategy.scope():
        lookup = keras.layers.StringLookup(vocabulary=["red", "green", "blue"], output_mode="one_hot")
        inputs = {"num": keras.Input((3,), name="num"), "color": keras.Input((), dtype="string", name="color")}
        joined = keras.layers.Concatenate()([inputs["num"], lookup(inputs["color"])])
        model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Dense(8, activation="relu")(joined)))
        model.compile(optimizer="adam", loss=LOSS, metrics=["accuracy"])
    pb = Playbook(model, ({"num": numbers, "color": colors}, y), validation_split=0.25, strategy=strategy, verbose=0)
    np.testing.assert_array_equal(pb.validation_data.arrays[0]["color"].astype(str), colors[72:])
    assert pb.overfit_small_sample(num_batches=1, max_steps=60).verdict in ("memorized", "too_slow")
    assert np.isfinite(pb.check_initial_loss().loss)
