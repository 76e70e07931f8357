"""Test set-up: two logical CPU devices, one MirroredStrategy per process.

The logical devices must be configured before TensorFlow initializes its
devices, so this runs at import time, before any test module touches
TensorFlow. TensorFlow 2.21 on logical CPUs fails ("Shape mismatch in the
collective instance") when a second MirroredStrategy trains in the same
process, so every test shares the session-scoped one.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)

import keras  # noqa: E402
import pytest  # noqa: E402

from tests import helpers  # noqa: E402

_MIRRORED = []


@pytest.fixture(scope="session")
def mirrored_strategy():
    if not _MIRRORED:
        _MIRRORED.append(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    return _MIRRORED[0]


@pytest.fixture(params=["default", "mirrored"])
def strategy(request, mirrored_strategy):
    """Each test using it runs on the default strategy and on two replicas."""
    if request.param == "default":
        return tf.distribute.get_strategy()
    return mirrored_strategy


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


@pytest.fixture(scope="session")
def digits():
    return helpers.digits_data()
