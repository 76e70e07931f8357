"""Is a difference larger than seed-to-seed variation? Welch's t-test in NumPy.

Tuning Playbook: before believing that one configuration beats another, compare the
difference with the variation between runs that differ only in their seed
(initialization and data order). Welch's t-test does not assume the two
configurations vary equally.

References:
    Welch, "The generalization of Student's problem when several different
    population variances are involved", Biometrika, 1947.
    Press et al., Numerical Recipes, 3rd ed., §6.4 (incomplete beta function).
"""

import dataclasses
import math

import numpy as np


@dataclasses.dataclass
class WelchTest:
    """Welch's two-sample t-test.

    Attributes:
        difference: mean(first) - mean(second).
        t: The t statistic.
        degrees_of_freedom: Welch-Satterthwaite degrees of freedom.
        p_value: Two-sided p-value.
    """

    difference: float
    t: float
    degrees_of_freedom: float
    p_value: float


def _continued_fraction(a, b, x, iterations=300, epsilon=1e-15):
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, iterations + 1):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= d * c
        if abs(d * c - 1.0) < epsilon:
            break
    return fraction


def regularized_incomplete_beta(a, b, x):
    """I_x(a, b), the regularized incomplete beta function, for a, b > 0 and x in [0, 1]."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _continued_fraction(b, a, 1.0 - x) / b


def student_t_two_sided_p(t, degrees_of_freedom):
    """P(|T| >= |t|) for Student's t with the given degrees of freedom."""
    if not math.isfinite(t):
        return 0.0
    return regularized_incomplete_beta(degrees_of_freedom / 2.0, 0.5, degrees_of_freedom / (degrees_of_freedom + t * t))


def welch_t_test(first, second):
    """Welch's t-test of the difference between two samples' means.

    Args:
        first: Scores of one configuration over seeds (at least 2).
        second: Scores of the other (at least 2).

    Returns:
        A `WelchTest`.

    Raises:
        ValueError: for fewer than 2 finite values in a sample.

    Example:

    ```python
    test = welch_t_test([0.91, 0.92, 0.90], [0.88, 0.89, 0.87])
    test.p_value < 0.05   # True: larger than seed-to-seed variation
    ```
    """
    first = np.asarray(first, dtype=np.float64)
    second = np.asarray(second, dtype=np.float64)
    for name, sample in (("first", first), ("second", second)):
        if sample.ndim != 1 or len(sample) < 2 or not np.isfinite(sample).all():
            raise ValueError(
                f"welch_t_test: `{name}` must hold at least 2 finite scores (one per "
                f"seed; run with seeds >= 2). Received: {name}={sample.tolist()!r}."
            )
    difference = float(first.mean() - second.mean())
    variance_first = first.var(ddof=1) / len(first)
    variance_second = second.var(ddof=1) / len(second)
    standard_error = math.sqrt(variance_first + variance_second)
    if standard_error == 0.0:
        # No variation at all: any difference is certain, none is none.
        t = math.copysign(math.inf, difference) if difference else 0.0
        p_value = 0.0 if difference else 1.0
        return WelchTest(difference, t, float(len(first) + len(second) - 2), p_value)
    t = difference / standard_error
    degrees_of_freedom = (variance_first + variance_second) ** 2 / (
        variance_first**2 / (len(first) - 1) + variance_second**2 / (len(second) - 1)
    )
    return WelchTest(difference, float(t), float(degrees_of_freedom), student_t_two_sided_p(t, degrees_of_freedom))
