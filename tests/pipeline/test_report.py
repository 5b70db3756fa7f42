import numpy as np
import pytest

from lqs_megatron.utils.correlation import auc


def _auc_pairs(scores, pos):
    """The definition: P(score of a positive > score of a negative), ties 1/2."""
    p, n = scores[pos], scores[~pos]
    wins = (p[:, None] > n[None, :]).sum() + 0.5 * (p[:, None] == n[None, :]).sum()
    return wins / (len(p) * len(n))


@pytest.mark.parametrize("n", [2, 17, 300])
def test_auc_equals_pairwise_definition_with_ties(n):
    rng = np.random.default_rng(n)
    scores = rng.integers(0, 5, n).astype(float)  # many ties
    pos = rng.random(n) < 0.4
    pos[0], pos[-1] = True, False
    assert auc(scores, pos) == pytest.approx(_auc_pairs(scores, pos), abs=1e-12)
    assert auc(-scores, pos) == pytest.approx(1 - _auc_pairs(scores, pos), abs=1e-12)


def test_auc_extremes():
    s = np.arange(10.0)
    assert auc(s, s >= 5) == 1.0 and auc(s, s < 5) == 0.0
    assert np.isnan(auc(s, np.ones(10, bool)))
