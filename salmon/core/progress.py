"""A dependency-free progress line on stderr: ``label  120/600 pairs  20%  35.2/s  eta 14s``."""

from __future__ import annotations

import sys
import time


class Progress:
    """Rewrites one stderr line at most every ``interval`` seconds; silent when disabled."""

    def __init__(self, name: str, total: int, unit: str, enabled: bool = True,
                 interval: float = 0.5, done: int = 0) -> None:
        self.name, self.total, self.unit = name, total, unit
        self.enabled, self.interval = enabled, interval
        self.done = done
        self._start_done = done
        self._t0 = time.monotonic()
        self._last = 0.0
        self._tty = sys.stderr.isatty()

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
        if not self._tty and self.done < self.total and now - self._t0 < 2:
            return
        print(line, end=end, file=sys.stderr, flush=True)
