"""Dry runs: render a training job or a vLLM server from ``key=value`` overrides, validate the
manifests offline (``salmon.cluster.validate``) and against the deployment policy
(``salmon.cluster.policy``: pinned images, locked-down pods, no literal secrets), and return them
as YAML. What ``salmon job
render`` and ``salmon sampler render`` print; nothing is sent to a cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from salmon.cluster.names import check_name
from salmon.core.config import parse_overrides
from salmon.core.errors import SalmonInputError


def _build(cls: type[BaseModel], what: str, values: dict[str, Any]) -> Any:
    try:
        return cls(**values)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or what
        command = "salmon job render --help" if what == "job setting" else "salmon sampler render --help"
        fix = (f"the keys are: {', '.join(cls.model_fields)}" if err["type"] == "extra_forbidden"
               else f"see `{command}` for the settings")
        raise SalmonInputError(f"{what} {where}", err["msg"].removeprefix("Value error, "), fix) from None


def _as_yaml(docs: list[dict[str, Any]]) -> str:
    from salmon.core.yamlio import safe_dump

    return "---\n".join(safe_dump(d) for d in docs)


def _policy_errors(doc: dict[str, Any]) -> list[str]:
    """``salmon.cluster.policy`` checks that need no other object (a TrainJob's pods are checked
    in full only against its runtime, in tests/test_manifests.py; here its image)."""
    from salmon.cluster import policy

    errors = policy.secret_literal_errors(doc)
    if doc["kind"] == "TrainJob":
        return errors + policy.image_errors(doc["spec"]["trainer"].get("image"), f"{policy.label(doc)} image")
    return errors + policy.workload_errors(doc)


def _validated(docs: list[dict[str, Any]], what: str, validate: bool) -> str:
    if validate:
        from salmon.cluster.validate import validate_manifests

        errors = validate_manifests(docs)
        if errors:
            raise SalmonInputError(what, "the rendered manifest does not validate: " + "; ".join(errors[:5]),
                                   "fix the overrides (or report a bug if they are valid)")
        errors = [e for doc in docs for e in _policy_errors(doc)]
        if errors:
            raise SalmonInputError(what, "the rendered manifest breaks the deployment policy: " + "; ".join(errors[:5]),
                                   "pin the image to a version tag or digest (docs/deploy.md)")
    return _as_yaml(docs)


def render_job_yaml(stage: str, executor: str, overrides: list[str], *, name: str | None = None,
                    validate: bool = True) -> str:
    """The TrainJob / PyTorchJob that the pipeline's ``stage`` task would launch with these job
    settings (``ClusterSettings`` keys: nodes, gpus, image, pvc, ...)."""
    from salmon.cluster.executor import ClusterSettings, job_spec
    from salmon.cluster.render import render_job
    from salmon.cluster.spec import job_name
    from salmon.core.stages import TRAINING_STAGES

    if stage not in TRAINING_STAGES:
        raise SalmonInputError(f"--stage {stage}", "not a training stage", f"use one of {', '.join(TRAINING_STAGES)}")
    if executor not in ("trainjob", "pytorchjob"):
        raise SalmonInputError(f"--executor {executor}", "unknown", "use trainjob or pytorchjob")
    values = {"namespace": "kubeflow", **parse_overrides(overrides)}
    settings = _build(ClusterSettings, "job setting", values)
    job = check_name(name, "object", "--name") if name else job_name(stage, "dry-run", stage)
    spec = job_spec(stage, settings, name=job, work=Path(settings.mount_path) / "salmon-jobs" / job,
                    executor=executor)
    return _validated([render_job(spec, executor)], f"{executor} for {stage}", validate)


def render_sampler_yaml(overrides: list[str], *, validate: bool = True) -> str:
    """The vLLM Deployment + Service for these ``VLLMServerSpec`` keys (model=... is required)."""
    from salmon.cluster.render import render_vllm_server
    from salmon.cluster.spec import VLLMServerSpec, gpu_tolerations

    values = {"name": "salmon-vllm", "namespace": "kubeflow", **parse_overrides(overrides)}
    if "model" not in values:
        raise SalmonInputError("sampler render", "no model given",
                               "add model=/mnt/models/<folder> (on the PVC) or model=s3://bucket/prefix")
    spec = _build(VLLMServerSpec, "sampler setting", values)
    if "tolerations" not in values:  # as the pipeline's serve_sampler deploys it
        spec = spec.model_copy(update={"tolerations": gpu_tolerations(spec.gpus, spec.gpu_resource)})
    return _validated(render_vllm_server(spec), "vLLM server", validate)
