"""The benchmark framework: ratios, goals, the table, and the runner's skip/failure handling."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from salmon.bench import BENCHES
from salmon.bench.common import BenchResult, Comparison, interleaved_medians, markdown_table
from salmon.bench.runner import SkipBench, resolve_names, run_benches


def test_ratio_is_salmons_advantage_in_either_direction() -> None:
    tokens = Comparison("prefill tokens", "tokens", baseline=1000, salmon=125, better="lower", goal=5)
    assert tokens.ratio == 8.0 and tokens.met is True
    speed = Comparison("pairs/s", "pairs/s", baseline=10, salmon=12, better="higher", goal=1.3)
    assert speed.ratio == pytest.approx(1.2) and speed.met is False
    memory = Comparison("peak memory", "MiB", baseline=400, salmon=250, better="lower", goal=2.0)
    assert memory.ratio == 1.6 and memory.met is False  # shared must be <= 0.5x separate
    assert Comparison("x", "s", 1, 1).met is None
    d = tokens.as_dict()
    assert d["ratio"] == 8.0 and d["met"] is True and d["baseline"] == 1000


def test_markdown_table_has_a_row_per_comparison() -> None:
    r = BenchResult("label", "padded forwards", comparisons=[
        Comparison("prefill tokens", "tokens", 1000, 125, goal=5),
        Comparison("wall time", "s", 2.0, 1.0, goal=3)])
    lines = markdown_table([r]).splitlines()
    assert len(lines) == 4
    assert lines[2].split("|")[5].strip() == "8.00×" and lines[2].endswith("| yes |")
    assert lines[3].endswith("| **no** |")


def test_interleaved_medians_time_every_side() -> None:
    calls: list[str] = []
    out = interleaved_medians({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3)
    assert set(out) == {"a", "b"} and all(v >= 0 for v in out.values())
    assert calls == ["a", "b"] + ["a", "b"] * 3, "one warmup each, then alternating"


def test_runner_reports_skips_and_failures_and_keeps_going(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    def ok(quick: bool, work: Path) -> BenchResult:
        assert quick and work.is_dir()
        return BenchResult("ok", "base", comparisons=[Comparison("t", "s", 2.0, 1.0, goal=1.5)])

    def skip(quick: bool, work: Path) -> BenchResult:
        raise SkipBench("no vLLM venv")

    def broken(quick: bool, work: Path) -> BenchResult:
        raise RuntimeError("boom")

    for name, fn in (("ok", ok), ("skip", skip), ("broken", broken)):
        mod = types.ModuleType(f"fake_bench_{name}")
        mod.run = fn  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, mod.__name__, mod)
        monkeypatch.setitem(BENCHES, name, (mod.__name__, name))
    out = tmp_path / "bench.json"
    report = run_benches(["ok", "skip", "broken"], quick=True, json_path=str(out), work=str(tmp_path / "w"))
    assert [r["name"] for r in report["results"]] == ["ok"]
    assert report["skipped"] == {"skip": "no vLLM venv"}
    assert report["failed"] == {"broken": "RuntimeError: boom"}
    assert json.loads(out.read_text())["results"][0]["comparisons"][0]["ratio"] == 2.0
    assert "| ok | t (s) | 2 | 1 | 2.00× | ≥ 1.5× | yes |" in capsys.readouterr().out


def test_unknown_benchmark_is_an_input_error() -> None:
    from salmon.cli import main

    assert resolve_names([]) == list(BENCHES) == resolve_names(["all"])
    assert main(["bench", "labell"]) == 2
