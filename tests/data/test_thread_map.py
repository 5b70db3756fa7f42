"""ordered_map(threads=True), what `lqs tokenize` uses with the gigatoken backend: input order, bounded
read-ahead, the first failure in input order, and work really spread over the threads."""

import threading

import pytest

from lqs_megatron.data.preprocess.pool import ordered_map
from lqs_megatron.errors import LQSError
from tests.data.test_parallel import _fail_on, _slow_square


@pytest.mark.parametrize("workers", [1, 3])
def test_results_come_in_input_order(workers):
    assert list(ordered_map(_slow_square, range(60), workers, threads=True)) == [x * x for x in range(60)]


def test_read_ahead_is_bounded_and_threads_share_the_work():
    consumed, names = [], set()

    def tasks():
        for i in range(60):
            consumed.append(i)
            yield i

    def work(x):
        names.add(threading.current_thread().name)
        return _slow_square(x)

    for k, _ in enumerate(ordered_map(work, tasks(), workers=3, max_in_flight=4, threads=True)):
        assert len(consumed) <= k + 1 + 4
    assert len(names) > 1 and all(n.startswith("lqs-worker") for n in names)


def test_first_failure_in_input_order_is_raised():
    got = []
    with pytest.raises(LQSError, match="bad task 7"):
        for x in ordered_map(_fail_on, range(20), 3, threads=True):
            got.append(x)
    assert got == list(range(7))
