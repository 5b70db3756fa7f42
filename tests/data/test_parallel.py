"""ordered_map: input order whatever the workers, bounded read-ahead, errors in order, dead workers."""

import os
import random
import time

import pytest

from lqs_megatron.data.preprocess.pool import ordered_map
from lqs_megatron.errors import LQSError


def _slow_square(x):
    time.sleep(random.random() * 0.01)
    return x * x


def _fail_on(x):
    if x in (7, 12):
        raise LQSError(f"bad task {x}")
    return x


def _die_on_5(x):
    if x == 5:
        os._exit(3)
    return x


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_results_come_in_input_order(workers):
    assert list(ordered_map(_slow_square, range(40), workers)) == [x * x for x in range(40)]


def test_read_ahead_is_bounded():
    consumed = []

    def tasks():
        for i in range(60):
            consumed.append(i)
            yield i

    for k, _ in enumerate(ordered_map(_slow_square, tasks(), workers=2, max_in_flight=4)):
        assert len(consumed) <= k + 1 + 4  # never more than max_in_flight tasks ahead of the consumer


@pytest.mark.parametrize("workers", [0, 2])
def test_first_failure_in_input_order_is_raised(workers):
    got = []
    with pytest.raises(LQSError, match="bad task 7"):
        for x in ordered_map(_fail_on, range(20), workers):
            got.append(x)
    assert got == list(range(7))


def test_a_dead_worker_is_an_error_not_a_hang():
    with pytest.raises(LQSError, match="died"):
        list(ordered_map(_die_on_5, range(10), workers=2))
