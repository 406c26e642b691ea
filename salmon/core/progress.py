"""A dependency-free progress line on stderr: ``label  120/600 pairs  20%  35.2/s  eta 14s``.

On a terminal the line is rewritten in place every ``interval`` seconds. Off a terminal (a pod's
log, CI, a file) every update is a new line, so it prints only every ``log_interval`` seconds
(``$SALMON_LOG_INTERVAL``, default 30) and at the end: a long stage leaves a few dozen lines with
their ETAs, not thousands.
"""

from __future__ import annotations

import os
import sys
import time

LOG_INTERVAL_ENV = "SALMON_LOG_INTERVAL"
DEFAULT_LOG_INTERVAL = 30.0


def log_interval() -> float:
    """Seconds between progress lines off a terminal: ``$SALMON_LOG_INTERVAL`` (a positive number),
    else 30."""
    raw = os.environ.get(LOG_INTERVAL_ENV, "")
    try:
        value = float(raw)
    except ValueError:
        return DEFAULT_LOG_INTERVAL
    return value if value > 0 and value != float("inf") else DEFAULT_LOG_INTERVAL


class Progress:
    """Rewrites one stderr line at most every ``interval`` seconds; silent when disabled."""

    def __init__(self, name: str, total: int, unit: str, enabled: bool = True,
                 interval: float = 0.5, done: int = 0) -> None:
        self.name, self.total, self.unit = name, total, unit
        self.enabled, self.interval = enabled, interval
        self.done = done
        self._start_done = done
        self._t0 = time.monotonic()
        self._tty = sys.stderr.isatty()
        if not self._tty:
            self.interval = max(interval, log_interval())
        self._last = 0.0 if self._tty else self._t0  # off a terminal, the first line after one interval

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self._last >= self.interval or self.done >= self.total):
            self._last = now
            self._print(now)

    def _print(self, now: float) -> None:
        elapsed = max(now - self._t0, 1e-9)
        rate = (self.done - self._start_done) / elapsed
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta_s = f"{eta:.0f}s" if eta != float("inf") else "?"
        line = (f"{self.name}  {self.done}/{self.total} {self.unit}  {pct:3.0f}%  "
                f"{rate:.1f}/s  eta {eta_s}")
        end = "\r" if self._tty and self.done < self.total else "\n"
        print(line, end=end, file=sys.stderr, flush=True)
