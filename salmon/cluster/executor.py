"""Run a training stage as a Kubernetes job from a pipeline step (executors ``trainjob`` and
``pytorchjob``).

The step (the launcher pod, no GPU) and the job's pods share one PVC mounted at the same path.
:func:`run_stage_remote`:

1. copies the step's input artifacts into ``<shared_root>/<job>/in/`` on the PVC;
2. writes the stage's fully resolved config there, with every input and output path rewritten to
   the PVC (``config.yaml``), so the job runs exactly the config the step resolved;
3. renders the job (``torchrun ... -m salmon.stages.<stage> --config config.yaml --result
   result.json``), records the manifest, launches it and waits (``salmon.cluster.launch``);
4. copies the outputs back into the step's output artifacts and returns the stage's result.

A retry of the step gets the same job name and work folder, so it adopts a running job or picks
up a finished one.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from salmon.cluster.names import name_validator
from salmon.cluster.spec import (
    OwnerRef,
    SecretEnv,
    TrainingJobSpec,
    Volume,
    gpu_tolerations,
    job_name,
    runtime_image,
)

NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$")


def _number_as_text(value: Any) -> Any:
    """``cpu=2`` on a command line parses as a number; a quantity is text."""
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def _quantity(value: str) -> str:
    """A Kubernetes resource quantity (8, 500m, 64Gi), or '' for the default."""
    if value and not QUANTITY.match(value):
        raise ValueError(f"'{value}' is not a Kubernetes quantity: give e.g. 8, 500m or 64Gi ('' for the default)")
    return value


Quantity = Annotated[str, BeforeValidator(_number_as_text), AfterValidator(_quantity)]

DEFAULT_CPU = "8"
DEFAULT_MEMORY = "64Gi"
"""A training pod's size when none is given, except on a CPU TrainJob (which takes its runtime's)."""


class ClusterSettings(BaseModel):
    """Where and how training jobs run; built by the pipeline's ``plan`` task from its parameters."""

    model_config = ConfigDict(extra="forbid")

    namespace: Annotated[str, AfterValidator(name_validator("namespace", optional=True))] = Field(
        default="", description="Namespace of the jobs ('' = the step's own namespace).")
    image: str = Field(default_factory=runtime_image, description="Runtime image of the training pods.")
    pvc: str = Field(default="salmon-model-cache", description="PVC shared by the step and the job's pods.")
    mount_path: str = Field(default="/mnt/models", description="Where that PVC is mounted in both.")
    nodes: int = Field(default=1, ge=1, description="Pods per job.")
    procs_per_node: int = Field(default=0, ge=0, description="Processes per pod (0: one per GPU, or 1 on CPU).")
    gpus: int = Field(default=1, ge=0, description="GPUs per pod.")
    gpu_resource: str = Field(default="nvidia.com/gpu", description="Extended resource name of the GPUs.")
    cpu: Quantity = Field(default="", description=(
        f"CPU per pod; '': the training runtime's on a TrainJob without GPUs, else {DEFAULT_CPU}."))
    memory: Quantity = Field(default="", description=(
        f"Memory per pod; '': the training runtime's on a TrainJob without GPUs, else {DEFAULT_MEMORY}."))
    priority_class: Annotated[str, AfterValidator(name_validator("priority class", optional=True))] = Field(
        default="", description="Priority class of the jobs ('' for the cluster's default).")
    queue: Annotated[str, AfterValidator(name_validator("queue", optional=True))] = Field(
        default="", description="Kueue LocalQueue the jobs are submitted to ('' for none).")
    shm: str = Field(default="16Gi", description="/dev/shm size of PyTorchJob pods (TrainJob: the runtime.s).")
    deadline_seconds: int = Field(default=86400, ge=60, description="Deadline of each job.")
    mlflow_secret: Annotated[str, AfterValidator(name_validator("secret"))] = Field(
        default="salmon-mlflow", description="Secret with the MLflow variables.")
    s3_secret: Annotated[str, AfterValidator(name_validator("secret"))] = Field(
        default="salmon-s3", description="Secret with the S3 variables.")
    sampler_api_key_secret: Annotated[str | None, AfterValidator(name_validator("secret", optional=True))] = Field(
        default=None, description="Secret (key 'api-key') with the vLLM server's API key, for ppo's openai "
                                  "rollouts (SALMON_SAMPLER_API_KEY in the job's pods).")
    service_account: Annotated[str | None, AfterValidator(name_validator("service account"))] = Field(
        default=None, description="Service account of the training pods.")
    poll_seconds: float = Field(default=10.0, gt=0, description="How often the launcher polls the job.")

    def resolved_namespace(self) -> str:
        if self.namespace:
            return self.namespace
        if NAMESPACE_FILE.is_file():
            return NAMESPACE_FILE.read_text().strip()
        return "default"


def remap_paths(value: Any, mapping: Mapping[str, str]) -> Any:
    """``value`` (a JSON-like config) with every string that is, or lies under, a key of
    ``mapping`` rewritten to the mapped path."""
    if isinstance(value, str):
        for src, dst in mapping.items():
            if value == src:
                return dst
            if value.startswith(src.rstrip("/") + "/"):
                return dst + value[len(src.rstrip("/")):]
        return value
    if isinstance(value, list):
        return [remap_paths(v, mapping) for v in value]
    if isinstance(value, dict):
        return {k: remap_paths(v, mapping) for k, v in value.items()}
    return value


def copy_replacing(src: Path, dst: Path) -> None:
    """Copy a file or folder to ``dst``, replacing what was there (via a temporary name)."""
    tmp = dst.with_name(dst.name + ".copying")
    if tmp.exists():
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, tmp)
    else:
        shutil.copy2(src, tmp)
    if dst.exists():
        shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
    tmp.rename(dst)


def job_spec(stage: str, settings: ClusterSettings, *, name: str, work: Path, executor: str) -> TrainingJobSpec:
    """The training job of ``stage`` reading ``work/config.yaml`` and writing ``work/result.json``.
    A PyTorchJob gets its own memory-backed /dev/shm; a TrainJob's comes from the runtime
    (salmon-torch-distributed mounts one)."""
    procs = settings.procs_per_node or max(1, settings.gpus)
    # a CPU TrainJob without sizes takes its runtime's (the overlay's); a TrainJob's GPU count
    # replaces the runtime's resources as a whole, so a GPU job states CPU and memory too
    from_runtime = executor == "trainjob" and not settings.gpus
    tolerations = gpu_tolerations(settings.gpus, settings.gpu_resource)
    secrets = [SecretEnv(env=k, secret=settings.mlflow_secret, key=k)
               for k in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")]
    secrets += [SecretEnv(env=k, secret=settings.s3_secret, key=k)
                for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3")]
    if stage == "ppo" and settings.sampler_api_key_secret:  # rollout_backend=openai asks the run's server
        secrets.append(SecretEnv(env="SALMON_SAMPLER_API_KEY", secret=settings.sampler_api_key_secret, key="api-key"))
    return TrainingJobSpec(
        name=name, namespace=settings.resolved_namespace(), stage=stage,  # type: ignore[arg-type]
        stage_args=["--config", str(work / "config.yaml"), "--result", str(work / "result.json")],
        image=settings.image, nodes=settings.nodes, procs_per_node=procs, gpus=settings.gpus,
        gpu_resource=settings.gpu_resource,
        cpu=settings.cpu or (None if from_runtime else DEFAULT_CPU),
        memory=settings.memory or (None if from_runtime else DEFAULT_MEMORY),
        priority_class=settings.priority_class or None, queue=settings.queue or None,
        env={"HOME": "/tmp", "HF_HOME": f"{settings.mount_path}/.hf"}, secret_env=secrets,
        volumes=[Volume(name="shared", mount_path=settings.mount_path, pvc=settings.pvc)]
        + ([Volume(name="dshm", mount_path="/dev/shm", memory=settings.shm)] if executor == "pytorchjob" else []),
        tolerations=tolerations, service_account=settings.service_account,
        deadline_seconds=settings.deadline_seconds)


def run_stage_remote(
    stage: str,
    config: BaseModel,
    executor: str,
    settings: ClusterSettings,
    *,
    run_id: str,
    task: str,
    inputs: Mapping[str, str],
    outputs: Mapping[str, str],
    manifest_out: str | None = None,
    api_client: Any = None,
    out: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run ``stage`` with ``config`` as a ``trainjob`` / ``pytorchjob`` (see the module docstring).
    ``inputs`` and ``outputs`` map names to the step's local artifact paths. Returns the stage's
    result (``{"outputs": ..., "metrics": ...}``) with paths mapped back to the step's."""
    from salmon.cluster.launch import kube_api_client, launch_and_wait, own_pod_owner
    from salmon.cluster.render import render_job
    from salmon.core.io import write_text
    from salmon.core.yamlio import safe_dump

    name = job_name(stage, run_id, task)
    work = Path(settings.mount_path) / "salmon-jobs" / name
    mapping: dict[str, str] = {}
    for key, src in inputs.items():
        dst = work / "in" / key / Path(src).name
        copy_replacing(Path(src), dst)
        mapping[src] = str(dst)
    back: dict[str, str] = {}
    for key, local in outputs.items():
        remote = work / "out" / key / Path(local).name
        mapping[local] = str(remote)
        back[str(remote)] = local
    resolved = remap_paths(config.model_dump(mode="json"), mapping)
    write_text(work / "config.yaml", safe_dump(resolved))

    spec = job_spec(stage, settings, name=name, work=work, executor=executor)
    api = api_client or kube_api_client()
    import os

    owner = own_pod_owner(api, spec.namespace, os.environ.get("KFP_POD_NAME"))
    if owner:
        spec = spec.model_copy(update={"owner": OwnerRef(**owner)})
    manifest = render_job(spec, executor)
    if manifest_out:
        write_text(manifest_out, safe_dump(manifest))
    launch_and_wait(manifest, executor, api_client=api, deadline_seconds=settings.deadline_seconds,
                    poll_seconds=settings.poll_seconds, out=out)
    result_file = work / "result.json"
    if not result_file.is_file():
        raise RuntimeError(f"job {name} succeeded but wrote no {result_file}")
    result = json.loads(result_file.read_text())
    for remote, local in back.items():
        if Path(remote).exists():
            copy_replacing(Path(remote), Path(local))
    result["outputs"] = remap_paths(result.get("outputs", {}), back)
    return dict(result)
