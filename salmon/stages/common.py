"""What every stage recipe shares: the result type, logging and the ``python -m`` entry point."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel

from salmon.core.config import build_config
from salmon.core.errors import GateFailed, SalmonInputError, ServiceUnavailable, report, report_unexpected

C = TypeVar("C", bound=BaseModel)


@dataclass
class StageResult:
    """What a stage produced: output paths by name, and metrics by name."""

    stage: str
    outputs: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Outputs and metrics as JSON values: a metric that is NaN or infinite (a diverged loss)
        becomes null, since neither is JSON."""
        from salmon.core.io import finite_or_none

        return {"outputs": self.outputs, "metrics": finite_or_none(self.metrics)}


@contextmanager
def results_only_on_stdout() -> Iterator[None]:
    """Send what is printed to stdout meanwhile to stderr: a command's stdout carries its result
    alone, although libraries it loads log there (DeepSpeed's accelerator notice, for one)."""
    with redirect_stdout(sys.stderr):
        yield


def log(stage: str, message: str) -> None:
    """One progress message on stderr, prefixed with the stage name."""
    print(f"[{stage}] {message}", file=sys.stderr, flush=True)


def config_help(cls: type[BaseModel]) -> str:
    """The config keys with type, default and description, for ``--help``."""
    lines = ["config keys (set with key=value):"]
    for name, f in cls.model_fields.items():
        default = "required" if f.is_required() else f"default {f.get_default(call_default_factory=True)!r}"
        lines.append(f"  {name:<22} {f.description or ''} [{default}]")
    return "\n".join(lines)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", help="named preset, e.g. 'nano' (salmon/configs/<preset>/<stage>.yaml)")
    parser.add_argument("--config", help="YAML file with config keys")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")


def preflight_model(stage: str, path: str, *, prompt_format: str | None = None,
                    say: Callable[[str, str], None] = log) -> None:
    """Check a base-model folder before any work (:func:`salmon.modeling.preflight`) and log its
    notes (``say`` is the stage's logger: rank 0 only under torchrun)."""
    from salmon.modeling import preflight

    for note in preflight(path, prompt_format=prompt_format):
        say(stage, f"note: {note}")


def resolve(cls: type[C], stage: str, args: argparse.Namespace) -> C:
    from salmon.core.paths import check_config_paths

    cfg = build_config(cls, stage=stage, preset=args.preset, config_file=args.config, overrides=args.overrides)
    check_config_paths(cfg, stage)  # before any work, and before a packaged model is prepared
    return resolve_model_names(cfg, stage)


def resolve_model_names(cfg: C, stage: str) -> C:
    """Replace a packaged model name (``smollm2``) in any base-model key by its prepared folder,
    preparing it on first use."""
    from salmon.base_models import is_packaged, resolve_model_ref
    from salmon.core.config import model_ref_fields

    for owner, name in model_ref_fields(cfg):
        value = getattr(owner, name)
        if isinstance(value, str) and is_packaged(value):
            setattr(owner, name, resolve_model_ref(value, log=lambda m: log(stage, m)))
    return cfg


def fixed_threading() -> None:
    """Ask the math libraries for the thread count they are given, not fewer when the machine is
    busy, so that a run (and a resumed run) computes the same floats however loaded the machine
    is. Called by the entry points before torch loads; an explicit setting in the environment wins."""
    os.environ.setdefault("MKL_DYNAMIC", "FALSE")
    os.environ.setdefault("OMP_DYNAMIC", "FALSE")


def stage_main(stage: str, cls: type[C], run: Callable[[C], StageResult],
               argv: Sequence[str] | None = None, description: str = "") -> int:
    """Entry point of ``python -m salmon.stages.<stage>``: parse, run, print the result as JSON."""
    import json

    fixed_threading()

    parser = argparse.ArgumentParser(
        prog=f"python -m salmon.stages.{stage}", description=description,
        epilog=config_help(cls), formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--result", metavar="FILE", help=(
        "also write the result JSON to FILE (atomically; under torchrun only rank 0 writes): how a "
        "launcher that started this stage in a Kubernetes job reads the outcome"))
    args = parser.parse_args(argv)
    try:
        with results_only_on_stdout():
            result = run(resolve(cls, stage, args))
    except (SalmonInputError, GateFailed, ServiceUnavailable) as e:
        return report(e)
    except Exception as e:  # a connection error, a refused path, or a bug: one line either way
        return report_unexpected(e, debug=bool(os.environ.get("SALMON_DEBUG")))
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 alone prints the result
        print(json.dumps(result.as_dict(), indent=2))
    if args.result and os.environ.get("RANK", "0") == "0":
        from salmon.core.io import write_json

        write_json(args.result, result.as_dict())
    return 0
