"""The MLflow side of a stage task, written so that a tracking outage costs no work
(docs/reliability.md): what each stage does when the server is down, and the run it opens."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from salmon.core.errors import SalmonInputError
from salmon.core.stages import STAGES, TRAINING_STAGES
from salmon.stages.common import log
from salmon.tasks.common import ArtifactLike, count_lines

TRACKING_POLICY: dict[str, str] = {name: stage.tracking for name, stage in STAGES.items()}
"""What a task does when MLflow cannot be reached as it starts (docs/reliability.md): ``defer``
(the stage runs a model, i.e. GPU time: it runs, says so, and writes its tracking at the end,
waiting up to SALMON_TRACKING_WAIT_S for the server) or ``require`` (bookkeeping that is cheap to
repeat: it fails at once, before any work)."""
ARTIFACT_STORE_REQUIRED = TRAINING_STAGES
"""Stages whose result is a model logged to MLflow's artifact store: when the store refuses the
run's first artifact (the resolved config), they fail before training."""


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        return float(raw) if raw else default
    except ValueError:
        raise SalmonInputError(f"environment variable {name}={raw!r}", "not a number of seconds") from None


def require_tracking(step: str) -> None:
    """Fail now (``ServiceUnavailable``, exit 3) when the tracking server cannot be reached."""
    from salmon import tracking
    from salmon.core.errors import ServiceUnavailable

    problem = tracking.tracking_problem(timeout_s=_env_seconds("SALMON_TRACKING_CHECK_S", 5.0))
    if problem is not None:
        raise ServiceUnavailable("MLflow tracking server", f"{problem}; {step} needs it and stopped before doing "
                                 "any work", "check the server and MLFLOW_TRACKING_URI, then retry the run")


class TrackedRun:
    """The MLflow side of one stage task, written so that an outage costs no work.

    ``begin`` checks the tracking server: reachable, the run opens now with the config (also
    uploaded as ``config.json``, which proves the artifact store works) and the input datasets;
    unreachable, a ``require`` stage stops here and a ``defer`` stage goes on without MLflow.
    ``ensure_open`` (after the stage) waits for the server if needed and opens the run and
    writes what ``begin`` could not; ``finish`` / ``fail`` end it.

    Inputs are recorded as what they are: the base model and the models of upstream stages as
    model inputs (MLflow 3 logged models; the base is logged once as ``salmon-base``, see
    :func:`salmon.tracking.models.base_model_reference`), everything else as datasets."""

    def __init__(self, stage: str, task_key: str, tags: dict[str, str], *, base_source: str = "",
                 prompt_format: str = "") -> None:
        self.stage, self.task_key, self.tags = stage, task_key, tags
        self.base_source, self.prompt_format = base_source, prompt_format
        self.run_id: str | None = None
        self.base_reference = ""
        """The portable reference of the base model input (set when the run opens)."""
        self.model_ids: dict[str, str] = {}
        """Input name -> id of the logged model it is."""

    def begin(self, config: dict[str, Any], inputs: dict[str, ArtifactLike], digests: dict[str, str]) -> None:
        from salmon import tracking

        if TRACKING_POLICY.get(self.stage, "require") == "require":
            require_tracking(self.stage)  # fails here when the server is down
            problem = None
        else:
            problem = tracking.tracking_problem(timeout_s=_env_seconds("SALMON_TRACKING_CHECK_S", 5.0))
        if problem is not None:
            log(self.stage, f"MLflow {problem}: {self.stage} runs anyway; its tracking is written when it ends "
                            f"(waiting up to {_env_seconds('SALMON_TRACKING_WAIT_S', 600.0):.0f} s for the server)")
            return
        self._open(config, inputs, digests)

    def _open(self, config: dict[str, Any], inputs: dict[str, ArtifactLike], digests: dict[str, str]) -> None:
        import mlflow

        from salmon import tracking
        from salmon.core.errors import ServiceUnavailable
        from salmon.tracking import models as tracking_models

        self.run_id = tracking.start_stage_run(self.stage, self.task_key, self.tags)
        tracking.log_stage_config(config)
        try:
            mlflow.log_dict(config, "config.json")
        except Exception as e:  # any failure of the artifact store (S3 errors, HTTP 5xx from the proxy)
            if self.stage in ARTIFACT_STORE_REQUIRED:
                self.fail()
                raise ServiceUnavailable(
                    f"MLflow artifact store of run {self.run_id}",
                    f"refused the run's first artifact ({type(e).__name__}: {str(e)[:200]}); {self.stage} "
                    "logs its model there and stopped before training",
                    "check the artifact store (S3 endpoint, bucket, credentials), then retry") from None
            log(self.stage, f"MLflow artifact store refused config.json ({type(e).__name__}); continuing")
        for name, art in inputs.items():
            p = Path(art.path)
            model_id = None
            if name == "base_model":
                self.base_reference, model_id = tracking_models.base_model_reference(
                    self.base_source or str(p), p, digests[name], self.prompt_format)
            elif uri := art.metadata.get("model_uri"):
                model_id = tracking_models.logged_model_id(str(uri))
            if model_id:
                self.model_ids[name] = model_id
                tracking.log_model_input(model_id)
            else:
                tracking.log_dataset(name, p.as_uri() if p.is_absolute() else str(p), digests[name], "input",
                                     count_lines(p))

    def ensure_open(self, config: dict[str, Any], inputs: dict[str, ArtifactLike], digests: dict[str, str]) -> str:
        from salmon import tracking
        from salmon.core.errors import ServiceUnavailable

        wait_s = _env_seconds("SALMON_TRACKING_WAIT_S", 600.0)
        problem = tracking.tracking_problem(attempts=1)
        if problem is not None:
            log(self.stage, f"MLflow {problem}: waiting up to {wait_s:.0f} s to write this stage's tracking")
            problem = tracking.wait_for_tracking(wait_s)
        if problem is not None:
            raise ServiceUnavailable(
                f"MLflow tracking server {os.environ.get('MLFLOW_TRACKING_URI', '')}",
                f"{problem} for {wait_s:.0f} s after {self.stage} finished; its outputs are complete on disk but "
                "not tracked", "retry the task once the server is back (training stages resume from their "
                "last checkpoint), or raise SALMON_TRACKING_WAIT_S")
        if self.run_id is None:
            self._open(config, inputs, digests)
        assert self.run_id is not None
        return self.run_id

    def finish(self) -> None:
        import mlflow

        mlflow.end_run("FINISHED")

    def fail(self) -> None:
        """End the run FAILED when it was opened; never hides the stage's own error."""
        if self.run_id is None:
            return
        import mlflow

        try:
            mlflow.end_run("FAILED")
        except Exception as e:
            log(self.stage, f"could not mark MLflow run {self.run_id} FAILED ({type(e).__name__})")
