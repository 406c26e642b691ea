"""The progress line: in place on a terminal, a line every ``$SALMON_LOG_INTERVAL`` seconds (30 by
default) off one, so that pod logs hold a few lines per stage, each with its ETA."""

from __future__ import annotations

import pytest

from salmon.core import progress


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], seconds_per_item: float,
         items: int) -> list[str]:
    clock = _Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    bar = progress.Progress("sample", items, "responses")
    for _ in range(items):
        clock.now += seconds_per_item
        bar.update()
    return capsys.readouterr().err.splitlines()


def test_off_a_terminal_a_line_every_30_seconds_and_at_the_end(monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(progress.LOG_INTERVAL_ENV, raising=False)
    lines = _run(monkeypatch, capsys, 0.6, 500)  # 300 s of work
    assert 9 <= len(lines) <= 11, lines  # every 30 s, and the final line
    assert lines[-1].startswith("sample  500/500 responses  100%")
    assert "eta 270s" in lines[0] or "eta 269s" in lines[0], lines[0]
    assert all("\r" not in line for line in lines)


def test_the_interval_is_configurable_and_bad_values_fall_back(monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(progress.LOG_INTERVAL_ENV, "60")
    assert len(_run(monkeypatch, capsys, 0.6, 500)) in (5, 6)
    for bad in ("soon", "-1", "0", "inf"):
        monkeypatch.setenv(progress.LOG_INTERVAL_ENV, bad)
        assert progress.log_interval() == 30.0


def test_a_short_task_prints_only_its_final_line(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(progress.LOG_INTERVAL_ENV, raising=False)
    lines = _run(monkeypatch, capsys, 0.1, 50)
    assert lines == [lines[-1]] and "50/50" in lines[0]
