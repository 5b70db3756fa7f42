"""The pretraining sample stream: stored order, epochs, shuffle, blends, token-id checks."""

import numpy as np
import pytest

from lqs_megatron.errors import LQSError
from lqs_megatron.parallel.dims import ParallelDims
from lqs_megatron.training.data import PackedSamples, SampleStream, blend_indices, check_token_ids
from tests.training.conftest import write_tokens


def _docs(rng, n, lo=3, hi=40, vocab=500):
    return [rng.integers(0, vocab, rng.integers(lo, hi)) for _ in range(n)]


def test_stored_order_and_epochs(tmp_path):
    rng = np.random.default_rng(0)
    docs = _docs(rng, 17)
    prefix = write_tokens(tmp_path / "d", docs)
    flat = np.concatenate(docs)
    L = 13
    per_epoch = (len(flat) - 1) // L
    n = 3 * per_epoch + 2  # needs more than three passes over the data
    s = PackedSamples(prefix, L, n)
    assert s.epochs == min(e for e in range(1, 9) if (e * len(flat) - 1) // L >= n) >= 3
    stream = np.concatenate([flat] * 4)
    for k in [0, 1, per_epoch - 1, per_epoch, per_epoch + 1, n - 1]:
        assert np.array_equal(s[k], stream[k * L : k * L + L + 1]), k  # consecutive samples share one token


def test_shuffle_is_a_seeded_permutation(tmp_path):
    prefix = write_tokens(tmp_path / "d", _docs(np.random.default_rng(1), 30))
    plain = PackedSamples(prefix, 8, 40)
    a, b, c = (PackedSamples(prefix, 8, 40, shuffle=True, seed=s) for s in (3, 3, 4))
    rows = {tuple(plain[k]) for k in range(40)}
    assert {tuple(a[k]) for k in range(40)} == rows  # same samples, other order
    assert all(np.array_equal(a[k], b[k]) for k in range(40))
    assert any(not np.array_equal(a[k], plain[k]) for k in range(40))
    assert any(not np.array_equal(a[k], c[k]) for k in range(40))


def test_blend_follows_the_weights(tmp_path):
    w = [0.5, 0.3, 0.2]
    which, k = blend_indices(w, 1000)
    for n in (10, 137, 1000):
        counts = np.bincount(which[:n], minlength=3)
        assert np.all(np.abs(counts - np.asarray(w) * n) <= 1), (n, counts)
    for d in range(3):  # each dataset's samples are taken in its own order
        assert np.array_equal(k[which == d], np.arange((which == d).sum()))
    rng = np.random.default_rng(2)
    p1 = write_tokens(tmp_path / "a", _docs(rng, 10))
    p2 = write_tokens(tmp_path / "b", _docs(rng, 10, vocab=3))
    s = SampleStream([p1, p2], 6, 50, weights=[3, 1])
    from_b = [g for g in range(50) if s[g].max() < 3]
    assert 10 <= len(from_b) <= 15  # a quarter, within the chance of all-small ids in dataset a
    with pytest.raises(LQSError, match="--data-weights has 1 values for 2"):
        SampleStream([p1, p2], 6, 50, weights=[1.0])


def test_token_ids_beyond_vocab_name_the_dataset(tmp_path):
    good = write_tokens(tmp_path / "good", [[1, 2, 3], [4, 5]])
    bad = write_tokens(tmp_path / "bad", [[1, 2, 3], [4, 700, 5]])
    check_token_ids([good], 6, ParallelDims())
    with pytest.raises(LQSError, match=r"dataset '.*bad' holds token id 700, but the model's vocabulary has 512"):
        check_token_ids([good, bad], 512, ParallelDims(), chunk=2)
    with pytest.raises(LQSError, match="missing"):
        check_token_ids([str(tmp_path / "nope")], 512, ParallelDims())
