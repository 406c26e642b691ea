"""Peak memory of a span of work, as training stages log it per step.

On CUDA it is the allocator's peak above what was allocated at the start
(``torch.cuda.max_memory_allocated``). On CPU it is the process's resident-set high-water mark
above its resident set at the start: Linux resets the mark when ``5`` is written to
``/proc/self/clear_refs``. Elsewhere (another OS, or a kernel that refuses the reset) the peak
is unknown and reads ``None``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def status_kib(key: str) -> int | None:
    """A ``/proc/self/status`` figure in KiB (``VmRSS``, ``VmHWM``), or None where there is none."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """``start()`` marks the beginning of a span; ``peak_mib()`` is the most memory above that
    start used since (MiB), or ``None`` where it cannot be measured."""

    def __init__(self, device: Any) -> None:
        self.cuda = getattr(device, "type", str(device)) == "cuda"
        self.device = device
        self.base: int | None = None

    def start(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = int(torch.cuda.memory_allocated(self.device))
            return
        try:
            _CLEAR_REFS.write_text("5")
        except OSError:
            self.base = None
            return
        rss = status_kib("VmRSS")
        self.base = None if rss is None else rss * 1024

    def peak_mib(self) -> float | None:
        if self.base is None:
            return None
        if self.cuda:
            import torch

            peak = int(torch.cuda.max_memory_allocated(self.device))
        else:
            hwm = status_kib("VmHWM")
            if hwm is None:
                return None
            peak = hwm * 1024
        return round(max(0, peak - self.base) / 2**20, 1)
