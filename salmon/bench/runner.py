"""Run benchmarks by name, print the table, write JSON and markdown atomically."""

from __future__ import annotations

import importlib
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from salmon.bench import BENCHES
from salmon.bench.common import BenchResult, machine, markdown_table
from salmon.core.errors import SalmonInputError


def resolve_names(names: list[str]) -> list[str]:
    if not names or names == ["all"]:
        return list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        raise SalmonInputError(f"benchmark {', '.join(unknown)}", "unknown",
                               f"use one of {', '.join(BENCHES)} or all")
    return names


def run_benches(names: list[str], *, quick: bool, json_path: str | None = None, markdown_path: str | None = None,
                work: str | None = None) -> dict[str, Any]:
    """Run the benchmarks one after another; a benchmark that cannot run here (a missing optional
    dependency, no vLLM venv) is reported as skipped with the reason, and the others still run."""
    from salmon.core.io import write_json, write_text

    chosen = resolve_names(names)
    results: list[BenchResult] = []
    skipped: dict[str, str] = {}
    failed: dict[str, str] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="salmon-bench-") as tmp:
        root = Path(work or tmp)
        for name in chosen:
            module_name, what = BENCHES[name]
            print(f"[bench] {name}: {what}", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            try:
                module = importlib.import_module(module_name)
                (root / name).mkdir(parents=True, exist_ok=True)
                result: BenchResult = module.run(quick=quick, work=root / name)
            except SkipBench as e:
                skipped[name] = str(e)
                print(f"[bench] {name} skipped: {e}", file=sys.stderr, flush=True)
                continue
            except SalmonInputError:
                raise
            except Exception as e:  # one broken benchmark must not hide the others' figures
                failed[name] = f"{type(e).__name__}: {e}"
                traceback.print_exc()
                continue
            result.seconds = time.monotonic() - t0
            results.append(result)
            print(f"[bench] {name} done in {result.seconds:.0f} s", file=sys.stderr, flush=True)
    table = markdown_table(results)
    report = {"machine": machine(), "quick": quick, "seconds": round(time.monotonic() - started, 1),
              "results": [r.as_dict() for r in results], "skipped": skipped, "failed": failed}
    print(table)
    for r in results:
        if r.figures:
            print(f"\n{r.name}: " + ", ".join(f"{k} {v:.4g}" for k, v in r.figures.items()))
    for name, reason in skipped.items():
        print(f"\n{name}: skipped ({reason})")
    for name, reason in failed.items():
        print(f"\n{name}: FAILED ({reason})")
    if json_path:
        write_json(json_path, report)
    if markdown_path:
        write_text(markdown_path, table + "\n")
    return report


class SkipBench(Exception):
    """Raised by a benchmark that cannot run on this machine; the message says why."""


def dump(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2)
