"""Argument checks shared by the stages: a clear error before any compute.

Messages follow Keras: the caller, the argument, what is valid, and
`Received: name=value`.
"""

import math

import numpy as np


def check_int(value, name, caller, minimum=1):
    """Raises ValueError unless `value` is an int >= `minimum` (bools rejected)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{caller}: argument `{name}` must be an int >= {minimum}. Received: {name}={value!r}.")


def check_number(value, name, caller, allow_zero=False):
    """Raises ValueError unless `value` is a finite number > 0 (>= 0 with `allow_zero`)."""
    valid = (
        not isinstance(value, bool)
        and isinstance(value, (int, float, np.integer, np.floating))
        and math.isfinite(value)
        and (value >= 0 if allow_zero else value > 0)
    )
    if not valid:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{caller}: argument `{name}` must be a finite number {bound}. Received: {name}={value!r}.")
