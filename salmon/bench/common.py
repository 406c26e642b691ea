"""What every benchmark shares: timing by median of repeats, the machine, results and tables.

A benchmark compares two sides (``baseline`` and ``salmon``) measured in the same process, back
to back, and reports each figure with the ratio between them. Absolute times drift on shared
machines; the ratio of two sides measured together drifts much less.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Comparison:
    """One figure measured on both sides. ``better`` says which direction wins: ``higher``
    (throughput) or ``lower`` (time, tokens, memory). ``ratio`` is salmon's advantage: > 1 means
    salmon is better, whatever the direction."""

    metric: str
    unit: str
    baseline: float
    salmon: float
    better: str = "lower"
    goal: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float:
        if self.better == "higher":
            return self.salmon / self.baseline if self.baseline else float("inf")
        return self.baseline / self.salmon if self.salmon else float("inf")

    @property
    def met(self) -> bool | None:
        return None if self.goal is None else self.ratio >= self.goal

    def as_dict(self) -> dict[str, Any]:
        ratio = self.ratio
        return {**asdict(self), "ratio": round(ratio, 4) if math.isfinite(ratio) else None, "met": self.met}


@dataclass
class BenchResult:
    """A benchmark's figures: the comparisons, plus plain measurements and the setup."""

    name: str
    baseline: str
    comparisons: list[Comparison] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)
    setup: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "baseline": self.baseline, "setup": self.setup, "seconds": round(self.seconds, 1),
                "comparisons": [c.as_dict() for c in self.comparisons], "figures": self.figures,
                "notes": self.notes}


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_medians(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median wall time of each function, timed in alternation (a, b, a, b, ...) so that drift in
    the machine's speed reaches both sides alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                            "platform": platform.platform()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def _fmt(x: float) -> str:
    if x == 0 or 0.01 <= abs(x) < 1e5:
        return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"
    return f"{x:.3g}"


def markdown_table(results: list[BenchResult]) -> str:
    """One row per comparison: benchmark, metric, both sides, ratio, goal, met."""
    lines = ["| bench | metric | baseline | salmon | ratio | goal | met |", "|---|---|---|---|---|---|---|"]
    for r in results:
        for c in r.comparisons:
            goal = f"≥ {c.goal:g}×" if c.goal is not None else ""
            met = {True: "yes", False: "**no**", None: ""}[c.met]
            lines.append(f"| {r.name} | {c.metric} ({c.unit}) | {_fmt(c.baseline)} | {_fmt(c.salmon)} | "
                         f"{c.ratio:.2f}× | {goal} | {met} |")
    return "\n".join(lines)
