"""Argument checks shared by the whole package: a clear error before any compute.

Every numeric argument of a stage, callback or schedule is checked here, so
that a bool is never taken for a number, infinities and NaN are refused, and
the message has one form, Keras's: the argument, what is valid, and
`Received: name=value` (prefixed with the caller when a stage checks it):

    Argument `factor` must be in (0, 1). Received: factor=1.5.
    fit: argument `epochs` must be an int >= 1. Received: epochs=0.

Ranges are written as a person reads them: `"> 0"`, `">= 0"`, `"(0, 1)"`,
`"[0, 1)"`, `"(0, 1]"`.
"""

import math
import operator
import re

import numpy as np

_LOWER = {"(": operator.gt, "[": operator.ge}
_UPPER = {")": operator.lt, "]": operator.le}
_ONE_SIDED = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
_INTERVAL = re.compile(r"^([(\[])\s*(\S+),\s*(\S+)\s*([)\]])$")
_BOUND = re.compile(r"^(>=|<=|>|<)\s*(\S+)$")


def is_number(value):
    """True for a finite or infinite real number (Python or NumPy), never a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def is_int(value):
    """True for a Python or NumPy integer, never a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _parse(within):
    if within is None:
        return lambda value: True, "a finite number"
    interval = _INTERVAL.match(within)
    if interval:
        opening, low, high, closing = interval.groups()
        low, high = float(low), float(high)
        return lambda value: _LOWER[opening](value, low) and _UPPER[closing](value, high), f"in {within}"
    bound = _BOUND.match(within)
    if not bound:
        raise ValueError(f"Not a range: {within!r}; write e.g. '> 0', '>= 1' or '(0, 1]'.")
    compare, limit = _ONE_SIDED[bound.group(1)], float(bound.group(2))
    return lambda value: compare(value, limit), f"a finite number {within}"


def _raise(name, caller, what, value, hint, error=ValueError):
    prefix = f"{caller}: argument" if caller else "Argument"
    hint = f": {hint}" if hint else ""
    raise error(f"{prefix} `{name}` must be {what}{hint}. Received: {name}={value!r}.")


def check_number(value, name, caller=None, within="> 0", *, allow_none=False, hint=None):
    """Raises ValueError unless `value` is a finite number in `within`.

    Args:
        value: the argument as the user gave it.
        name: the argument's name, as in the signature.
        caller: the stage or function named at the start of the message,
            or None for Keras's bare `Argument ...` form (constructors).
        within: the valid range: `"> 0"`, `">= 0"`, `"(0, 1)"`, `"[0, 1)"`...,
            or None for any finite number.
        allow_none: whether None is accepted.
        hint: a few words on what the value means, put before `Received`.

    Example:

    ```python
    check_number(factor, "factor", within="(0, 1)")
    # ValueError: Argument `factor` must be in (0, 1). Received: factor=1.5.
    ```
    """
    if value is None and allow_none:
        return
    inside, what = _parse(within)
    if not (is_number(value) and math.isfinite(value) and inside(value)):
        _raise(name, caller, what + (" or None" if allow_none else ""), value, hint)


def check_int(value, name, caller=None, minimum=1, maximum=None, *, allow_none=False, hint=None):
    """Raises ValueError unless `value` is an int >= `minimum` (and <= `maximum`).

    Bools are refused though Python counts them as ints; NumPy integers are
    accepted. See `check_number` for `caller`, `allow_none` and `hint`.
    """
    if value is None and allow_none:
        return
    if not (is_int(value) and value >= minimum and (maximum is None or value <= maximum)):
        what = f"an int >= {minimum}" if maximum is None else f"an int in [{minimum}, {maximum}]"
        _raise(name, caller, what + (" or None" if allow_none else ""), value, hint)


def check_bool(value, name, caller=None):
    """Raises TypeError unless `value` is True or False (not 0, 1 or None)."""
    if not isinstance(value, (bool, np.bool_)):
        _raise(name, caller, "True or False", value, None, error=TypeError)


def check_numbers(values, name, caller=None, within="> 0", *, example=None, distinct=False):
    """Checks a non-empty list of numbers, each as `check_number` does; returns them as floats.

    Args:
        values: a list, tuple or 1-D array of numbers.
        name: the argument's name; an element is named `name[i]`.
        caller: see `check_number`.
        within: the range every element must be in.
        example: a valid list, shown when `values` is not a non-empty list.
        distinct: whether repeated values are refused.
    """
    if isinstance(values, np.ndarray):
        values = values.tolist()
    if not isinstance(values, (list, tuple)) or not values:
        _raise(name, caller, "a non-empty list of numbers", values, f"e.g. {example!r}" if example else None)
    for index, value in enumerate(values):
        check_number(value, f"{name}[{index}]", caller, within)
    if distinct and len(set(values)) != len(values):
        _raise(name, caller, "a list without repeated values", values, None)
    return [float(value) for value in values]
