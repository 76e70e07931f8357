"""Welch's t-test against SciPy's (installed with scikit-learn for the tests)."""

import math

import numpy as np
import pytest
from scipy import special, stats

from keras_playbook import _significance as significance


@pytest.mark.parametrize(
    "first, second",
    [
        ([0.91, 0.92, 0.90], [0.88, 0.89, 0.87]),
        ([0.91, 0.95, 0.87, 0.93], [0.90, 0.92]),
        ([1.0, 2.0, 3.0, 4.0, 5.0], [1.5, 2.5, 2.0]),
        ([0.5, 0.51], [0.2, 0.9, 0.4, 0.7, 0.1]),
    ],
)
def test_matches_scipy_welch(first, second):
    ours = significance.welch_t_test(first, second)
    theirs = stats.ttest_ind(first, second, equal_var=False)
    assert ours.t == pytest.approx(theirs.statistic, rel=1e-10)
    assert ours.p_value == pytest.approx(theirs.pvalue, rel=1e-8, abs=1e-12)
    assert ours.difference == pytest.approx(np.mean(first) - np.mean(second))


def test_incomplete_beta_matches_scipy():
    for a, b, x in [(0.5, 0.5, 0.3), (2.0, 0.5, 0.9), (10.0, 0.5, 0.01), (3.3, 7.1, 0.6)]:
        assert significance.regularized_incomplete_beta(a, b, x) == pytest.approx(special.betainc(a, b, x), rel=1e-10)


def test_identical_samples_and_no_variation():
    assert significance.welch_t_test([1.0, 1.0], [1.0, 1.0]).p_value == 1.0
    certain = significance.welch_t_test([2.0, 2.0], [1.0, 1.0])
    assert certain.p_value == 0.0 and math.isinf(certain.t)


@pytest.mark.parametrize("bad", [[0.9], [], [0.9, float("nan")]])
def test_needs_two_finite_scores(bad):
    with pytest.raises(ValueError, match="at least 2 finite scores"):
        significance.welch_t_test(bad, [0.8, 0.9])
