"""Validation metrics against scipy (a test-only dependency)."""

from __future__ import annotations

import numpy as np
import scipy.stats

from lqs_megatron.scorer.metrics import regression_metrics
from lqs_megatron.utils.correlation import pearson, rankdata, spearman


def test_rankdata_with_ties_matches_scipy():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 7, size=200).astype(np.float64)  # many ties
    np.testing.assert_array_equal(rankdata(x), scipy.stats.rankdata(x, method="average"))
    y = rng.standard_normal(101)
    np.testing.assert_array_equal(rankdata(y), scipy.stats.rankdata(y))


def test_correlations_match_scipy():
    rng = np.random.default_rng(1)
    a = rng.standard_normal(300)
    b = 0.6 * a + rng.standard_normal(300)
    b[::7] = np.round(b[::7])  # some ties
    assert abs(pearson(a, b) - scipy.stats.pearsonr(a, b)[0]) < 1e-12
    assert abs(spearman(a, b) - scipy.stats.spearmanr(a, b)[0]) < 1e-12
    m = regression_metrics(a, b)
    assert abs(m["mse"] - np.mean((a - b) ** 2)) < 1e-12


def test_constant_prediction_has_zero_correlation():
    assert pearson(np.ones(10), np.arange(10.0)) == 0.0
    assert spearman(np.ones(10), np.arange(10.0)) == 0.0
