"""Import guard: keras-playbook runs on Keras 3 with the TensorFlow backend.

Imported first by `keras_playbook/__init__.py`, before Keras itself, so that a
wrong `KERAS_BACKEND` or a missing TensorFlow fails with a message that says
what to do instead of a traceback from deep inside Keras.
"""

import os

SUPPORTED_BACKEND = "tensorflow"


def check_backend():
    """Raises if TensorFlow is missing or Keras is set to another backend.

    Raises:
        ValueError: if `KERAS_BACKEND` (or `~/.keras/keras.json`) names a
            backend other than TensorFlow.
        ImportError: if TensorFlow is not installed.
    """
    requested = os.environ.get("KERAS_BACKEND")
    if requested is not None and requested != SUPPORTED_BACKEND:
        raise ValueError(
            "keras-playbook runs on the TensorFlow backend of Keras (it uses "
            "tf.distribute strategies). Received: "
            f"KERAS_BACKEND={requested!r}. Unset KERAS_BACKEND or set "
            f"KERAS_BACKEND={SUPPORTED_BACKEND}."
        )
    try:
        import tensorflow  # noqa: F401
    except ImportError as error:
        raise ImportError(
            "keras-playbook needs TensorFlow, which is not installed. Install "
            "it with one of the extras: `pip install keras-playbook[cpu]` "
            "(tensorflow-cpu) or `pip install keras-playbook[gpu]` "
            "(tensorflow[and-cuda])."
        ) from error
    import keras

    backend = keras.backend.backend()
    if backend != SUPPORTED_BACKEND:
        raise ValueError(
            "keras-playbook runs on the TensorFlow backend of Keras. Keras is "
            f"configured with backend={backend!r} (from ~/.keras/keras.json). "
            f"Set KERAS_BACKEND={SUPPORTED_BACKEND} or edit that file."
        )
