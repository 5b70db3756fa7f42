"""Throughput progress for the data tools: a tqdm bar with docs/s and tokens/s on a terminal,
a log line every ``log_every_s`` seconds otherwise."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("lqs_megatron.data")


class Progress:
    """Counts documents and tokens; shows docs/s (tqdm's rate) and tokens/s (postfix)."""

    def __init__(self, desc: str, enabled: bool = True, log_every_s: float = 30.0):
        self.desc = desc
        self.docs = self.tokens = 0
        self.start = time.perf_counter()
        self._last_log = self.start
        self.log_every_s = log_every_s
        self.enabled = enabled
        self._bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(
                desc=desc, unit="doc", unit_scale=True, file=sys.stderr, dynamic_ncols=True, mininterval=0.5
            )

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def rates(self) -> tuple[float, float]:
        t = max(self.elapsed, 1e-9)
        return self.docs / t, self.tokens / t

    def update(self, docs: int, tokens: int) -> None:
        self.docs += docs
        self.tokens += tokens
        if self._bar is not None:
            self._bar.update(docs)
            self._bar.set_postfix_str(f"{self.rates()[1]:,.0f} tok/s", refresh=False)
        elif self.enabled and time.perf_counter() - self._last_log >= self.log_every_s:
            self._last_log = time.perf_counter()
            dps, tps = self.rates()
            log.info("%s: %d docs, %d tokens (%.0f docs/s, %.0f tokens/s)", self.desc, self.docs, self.tokens, dps, tps)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
