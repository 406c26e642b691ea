"""What the pipeline tasks share: the stage tables, the artifacts' shape and digests, the source revision.

Artifacts arrive duck-typed (anything with ``.path`` and a ``.metadata`` dict), so no task module
imports kfp.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from salmon.base_models import PACKAGED
from salmon.core.config import load_yaml_mapping, preset_path
from salmon.core.digest import digest_dir, digest_file
from salmon.core.errors import SalmonInputError
from salmon.core.stages import STAGES

BASE_NAMES = ", ".join(f"'{n}'" for n in PACKAGED)
"""The packaged base models a pipeline accepts by name, for error messages."""


class ArtifactLike(Protocol):
    path: str
    metadata: dict[str, Any]


class StagePlan(BaseModel):
    """What the ``plan`` task gives one stage (a JSON text between the tasks). It changes only when
    something the stage reads changes, which keeps the pipeline's caching exact."""

    model_config = ConfigDict(extra="forbid")

    preset: str = Field(default="", description="Config preset applied first ('' for the method's defaults).")
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="Config values: stage_overrides, then the pipeline parameters that set "
                                          "this stage's keys (rl_principle_ids, ppo_steps, rm_epochs, eval_limit).")
    principles: dict[str, Any] = Field(
        default_factory=dict, description="Principle field -> {value, sets: {name: {digest, version, uri}}}.")
    cluster: dict[str, Any] | None = Field(
        default=None, description="The training jobs' cluster settings (remote training stages only).")

    def to_json(self) -> str:
        return json.dumps(self.model_dump(exclude_none=True), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> StagePlan:
        return cls.model_validate_json(text) if text else cls()


CONFIGS: dict[str, type[Any]] = {name: stage.config for name, stage in STAGES.items()}
"""Stage name -> config class (from the catalogue, :mod:`salmon.core.stages`)."""
EXECUTORS = ("local", "trainjob", "pytorchjob")
MODEL_LINEAGE = {name: stage.lineage for name, stage in STAGES.items() if stage.trains_model}
"""Training stage -> the stages whose outputs its model descends from."""
MODEL_SUBDIR = {name: stage.model_subdir for name, stage in STAGES.items() if stage.model_subdir}
"""The folder inside a training stage's output that is the model (the rest is checkpoints)."""
PRINCIPLE_FIELDS = {name: stage.principle_fields for name, stage in STAGES.items() if stage.principle_fields}
"""Stage -> config fields naming principle sets (or, for selfalign, the exemplar and identity files)."""


FILE_FIELDS = {"exemplars": "exemplar file", "identity_file": "identity file"}
"""Fields of PRINCIPLE_FIELDS that name a data file (digested as a file) rather than a principle set."""


REMOTE_EXECUTORS = ("trainjob", "pytorchjob")
"""Executors that run the stage as a Kubernetes job (``salmon.cluster``) instead of in the task."""


def check_executor(stage: str, executor: str) -> None:
    if executor not in EXECUTORS:
        raise SalmonInputError(f"{stage} executor '{executor}'", f"unknown; use one of {', '.join(EXECUTORS)}")

SAMPLER_MODES = ("none", "endpoint", "deploy")
"""The pipeline's ``sampler`` parameter: no server, an external endpoint, or a vLLM server deployed for the run."""

EVALUATED_INPUT = {name: stage.evaluates for name, stage in STAGES.items() if stage.evaluates}
"""The input holding the model an evaluation stage measures: its metrics go to that logged model."""


def stage_value(stage: str, preset: str | None, overrides: dict[str, Any], field: str) -> Any:
    """A config field's value before paths are known: override, else preset, else default."""
    if field in overrides:
        return overrides[field]
    if preset and preset_path(preset, stage).is_file():
        data = load_yaml_mapping(preset_path(preset, stage))
        if field in data:
            return data[field]
    return CONFIGS[stage].model_fields[field].get_default(call_default_factory=True)


def publish_report(evaluation: str | Path, report: str | Path) -> None:
    """Copy an evaluation folder's ``report.md`` to the task's Markdown output (which the KFP UI
    renders); a missing report is an empty page that says so."""
    from salmon.core.io import write_text

    src = Path(evaluation) / "report.md"
    text = src.read_text(encoding="utf-8") if src.is_file() else f"No report.md in {evaluation}.\n"
    write_text(report, text)


def git_sha() -> str:
    """The source revision: ``$SALMON_GIT_SHA`` (set in images), else git, else 'unknown'."""
    if sha := os.environ.get("SALMON_GIT_SHA"):
        return sha
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def artifact_digest(path: str | Path) -> str:
    p = Path(path)
    return digest_dir(p) if p.is_dir() else digest_file(p)


def checked_input_digest(name: str, art: ArtifactLike) -> str:
    """The content digest of an input artifact, which must equal the digest its producer stamped
    on it (a truncated upload, a damaged volume or a hand edit is refused before any work)."""
    actual = artifact_digest(art.path)
    recorded = art.metadata.get("digest")
    if recorded and recorded != actual:
        raise SalmonInputError(
            f"input artifact {name} ({art.path})",
            f"its content digest {actual[:19]} differs from the {recorded[:19]} its producer recorded: it was "
            "truncated or changed after it was written",
            "rerun the task that produced it (with caching off for that task)")
    return actual


def count_lines(path: Path) -> int | None:
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        return sum(1 for _ in f)
