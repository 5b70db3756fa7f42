import numpy as np
import pytest

from lqs_megatron import _C
from lqs_megatron.data.datasets.sample_index import (
    build_sample_index,
    build_sample_index_py,
    gather_sample,
    samples_available,
)
from lqs_megatron.errors import LQSError


@pytest.mark.parametrize("seq_length", [1, 7, 64])
def test_native_equals_reference_and_slices_the_stream(seq_length):
    rng = np.random.default_rng(seq_length)
    lengths = rng.integers(1, 50, size=300)
    docs = [rng.integers(0, 1000, n) for n in lengths]
    flat = np.concatenate(docs)
    n = samples_available(len(flat), seq_length)
    idx = build_sample_index(lengths, seq_length, n)
    assert hasattr(_C, "build_sample_index")
    np.testing.assert_array_equal(idx, build_sample_index_py(lengths, seq_length, n))

    def read(d, o, ln):
        return docs[d][o:] if ln is None else docs[d][o : o + ln]

    for k in range(0, n, max(n // 40, 1)):
        sample = gather_sample(read, idx, np.arange(len(docs)), k, seq_length)
        np.testing.assert_array_equal(sample, flat[k * seq_length : (k + 1) * seq_length + 1])


def test_too_many_samples_is_a_clear_error():
    with pytest.raises(LQSError, match="need"):
        build_sample_index_py(np.array([3, 3]), 4, 2)
    with pytest.raises(LQSError, match="need"):
        build_sample_index(np.array([3, 3]), 4, 2)
