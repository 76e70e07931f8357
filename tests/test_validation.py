"""The validation module: one message form for every numeric argument."""

import math

import numpy as np
import pytest

from keras_playbook import _validation as validation
from keras_playbook.callbacks import StepDownLR


@pytest.mark.parametrize(
    "value, within, valid",
    [
        (0.5, "(0, 1)", True),
        (0, "(0, 1)", False),
        (1, "(0, 1)", False),
        (0, "[0, 1)", True),
        (1, "(0, 1]", True),
        (1.0000001, "(0, 1]", False),
        (0, "> 0", False),
        (0, ">= 0", True),
        (1, "> 1", False),
        (-3.5, None, True),
        (np.float32(0.1), "> 0", True),
        (np.int64(3), ">= 1", True),
        (True, "> 0", False),
        (math.inf, ">= 0", False),
        (math.nan, None, False),
        ("0.1", "> 0", False),
    ],
)
def test_check_number_ranges(value, within, valid):
    if valid:
        validation.check_number(value, "x", within=within)
    else:
        with pytest.raises(ValueError, match="Argument `x` must be"):
            validation.check_number(value, "x", within=within)


def test_messages_follow_keras():
    with pytest.raises(ValueError) as error:
        validation.check_number(1.5, "factor", within="(0, 1)")
    assert str(error.value) == "Argument `factor` must be in (0, 1). Received: factor=1.5."
    with pytest.raises(ValueError) as error:
        validation.check_int(0, "epochs", "fit")
    assert str(error.value) == "fit: argument `epochs` must be an int >= 1. Received: epochs=0."
    with pytest.raises(ValueError) as error:
        validation.check_number(-1, "min_lr", within=">= 0", allow_none=True, hint="a floor")
    assert str(error.value) == "Argument `min_lr` must be a finite number >= 0 or None: a floor. Received: min_lr=-1."
    with pytest.raises(ValueError, match=r"must be an int in \[0, 3\]"):
        validation.check_int(4, "k", minimum=0, maximum=3)


def test_ints_refuse_bools_and_floats_and_accept_numpy():
    validation.check_int(np.int32(2), "n")
    validation.check_int(None, "n", allow_none=True)
    for bad in (True, 2.0, "2", None):
        with pytest.raises(ValueError, match="must be an int >= 1"):
            validation.check_int(bad, "n")


def test_check_bool_is_a_type_error():
    validation.check_bool(np.bool_(True), "flag")
    for bad in (0, 1, None, "yes"):
        with pytest.raises(TypeError, match="must be True or False"):
            validation.check_bool(bad, "flag")


def test_check_numbers_names_the_element():
    assert validation.check_numbers(np.array([1e-3, 1e-2]), "rates") == [1e-3, 1e-2]
    with pytest.raises(ValueError, match=r"`rates\[1\]` must be a finite number > 0. Received: rates\[1\]=0"):
        validation.check_numbers([1e-3, 0], "rates")
    with pytest.raises(ValueError, match="non-empty list of numbers: e.g. "):
        validation.check_numbers([], "rates", example=[1e-3])
    with pytest.raises(ValueError, match="without repeated values"):
        validation.check_numbers([0.1, 0.1], "rates", distinct=True)


def test_a_bad_range_is_a_programming_error():
    with pytest.raises(ValueError, match="Not a range"):
        validation.check_number(1, "x", within="between 0 and 1")


def test_callbacks_check_through_it():
    with pytest.raises(ValueError, match=r"Argument `factor` must be in \(0, 1\): the learning rate"):
        StepDownLR(factor=1.5)
    with pytest.raises(ValueError, match="Argument `patience` must be an int >= 1. Received: patience=True."):
        StepDownLR(patience=True)
