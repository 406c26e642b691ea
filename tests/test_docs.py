"""The docs name tests that exist: a renamed or deleted test must not leave a claim behind."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _test_names() -> set[str]:
    names: set[str] = set()
    for path in (REPO / "tests").glob("test_*.py"):
        names.update(re.findall(r"^def (test_\w+)", path.read_text(encoding="utf-8"), re.M))
    return names


def test_every_test_named_in_the_reliability_doc_exists() -> None:
    doc = (REPO / "docs" / "reliability.md").read_text(encoding="utf-8")
    named = set(re.findall(r"\b(test_[a-z0-9_]+)\b", doc))
    named -= {"test_bad_inputs", "test_faults", "test_io", "test_tracking_faults", "test_cluster",
              "test_manifests", "test_no_code_eval", "test_distributed", "test_exit_codes"}  # file names
    assert len(named) > 30
    missing = sorted(named - _test_names())
    assert not missing, f"docs/reliability.md names tests that do not exist: {missing}"


def test_the_check_finds_a_missing_name() -> None:
    assert "test_this_does_not_exist" not in _test_names()
    assert "test_every_test_named_in_the_reliability_doc_exists" in _test_names()
