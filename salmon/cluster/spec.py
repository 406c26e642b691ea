"""Typed specs of what salmon runs on a cluster: a distributed training job and a vLLM server.

One :class:`TrainingJobSpec` renders to a Kubeflow Trainer v2 ``TrainJob`` or a training-operator
v1 ``PyTorchJob`` (``salmon.cluster.render``); both run the same command,
``torchrun --nnodes N --nproc_per_node P -m salmon.stages.<stage> --config ... --result ...``, and
torchrun takes the node rank and the master address from the ``PET_*`` variables that either
controller injects. One :class:`VLLMServerSpec` renders to a Deployment + Service.

Pure pydantic: no kubernetes client, no torch.
"""

from __future__ import annotations

import hashlib
import os
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from salmon.cluster.names import name_validator

RUNTIME_IMAGE = "ghcr.io/salmon-mlops/salmon-runtime:0.1.0"
"""The runtime image built from images/runtime for this version (``$SALMON_RUNTIME_IMAGE`` wins)."""
VLLM_IMAGE = "ghcr.io/salmon-mlops/salmon-vllm:0.1.0"
"""The vLLM server image: images/vllm, the pinned upstream vllm/vllm-openai plus the salmon client,
running as a non-root user (``$SALMON_VLLM_IMAGE`` wins)."""
RUNTIME_IMAGE_ENV = "SALMON_RUNTIME_IMAGE"
VLLM_IMAGE_ENV = "SALMON_VLLM_IMAGE"


def runtime_image() -> str:
    """The image training jobs run: ``$SALMON_RUNTIME_IMAGE``, else :data:`RUNTIME_IMAGE`. The
    compiled pipeline sets the variable in the tasks that launch jobs to the image the tasks
    themselves run (the one given when compiling), so jobs and tasks use the same image."""
    return os.environ.get(RUNTIME_IMAGE_ENV) or RUNTIME_IMAGE


def vllm_image() -> str:
    """The vLLM server image: ``$SALMON_VLLM_IMAGE``, else :data:`VLLM_IMAGE` (set in the
    compiled pipeline like :func:`runtime_image`)."""
    return os.environ.get(VLLM_IMAGE_ENV) or VLLM_IMAGE


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Toleration(_Spec):
    """A pod toleration (core/v1 Toleration)."""

    key: str = Field(description="Taint key, e.g. 'nvidia.com/gpu'.")
    operator: Literal["Exists", "Equal"] = Field(default="Exists", description="'Exists' or 'Equal'.")
    value: str | None = Field(default=None, description="Taint value (operator Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default="NoSchedule", description="Taint effect to tolerate; None tolerates all.")


def gpu_tolerations(gpus: int, gpu_resource: str) -> list[Toleration]:
    """What every GPU pod salmon runs tolerates: the taint named after the GPU resource (GPU node
    pools are tainted so that only GPU work lands there); nothing for a CPU pod."""
    return [Toleration(key=gpu_resource)] if gpus else []


class SecretEnv(_Spec):
    """An environment variable read from a Secret key (never a literal value)."""

    env: str = Field(description="Variable name in the container.")
    secret: str = Field(description="Secret name.")
    key: str = Field(description="Key inside the Secret.")
    optional: bool = Field(default=True, description="Start the pod even if the Secret or key is missing.")


class Volume(_Spec):
    """A volume mounted into every training container."""

    name: str = Field(description="Volume name (DNS label).")
    mount_path: str = Field(description="Where it is mounted.")
    pvc: str | None = Field(default=None, description="PersistentVolumeClaim name.")
    memory: str | None = Field(default=None, description="Memory-backed emptyDir of this size limit (e.g. /dev/shm).")
    read_only: bool = Field(default=False, description="Mount read-only.")

    @model_validator(mode="after")
    def _one_source(self) -> Volume:
        if (self.pvc is None) == (self.memory is None):
            raise ValueError(f"volume {self.name}: set exactly one of pvc or memory")
        return self


class OwnerRef(_Spec):
    """The object that owns a launched job: deleting it (e.g. the pipeline run's Argo Workflow)
    garbage-collects the job."""

    api_version: str = Field(description="Owner apiVersion, e.g. 'argoproj.io/v1alpha1'.")
    kind: str = Field(description="Owner kind, e.g. 'Workflow'.")
    name: str = Field(description="Owner name.")
    uid: str = Field(description="Owner UID.")


class TrainingJobSpec(_Spec):
    """One distributed training run of a salmon stage on Kubernetes."""

    name: Annotated[str, AfterValidator(name_validator("object"))] = Field(
        description="Job name; see job_name() for the deterministic one launchers use.")
    namespace: Annotated[str, AfterValidator(name_validator("namespace"))] = Field(
        default="kubeflow", description="Namespace of the job.")
    stage: Literal["sft", "train_rm", "ppo"] = Field(description="The training stage to run.")
    stage_args: list[str] = Field(default_factory=list, description=(
        "Arguments after `-m salmon.stages.<stage>`: e.g. ['--config', 'cfg.yaml', 'deepspeed=zero2']."))
    image: str = Field(default_factory=runtime_image, description="Container image with salmon installed.")
    nodes: int = Field(default=1, ge=1, le=256, description="Pods (nodes) in the job.")
    procs_per_node: int = Field(default=1, ge=1, le=64, description="torchrun processes per pod (GPUs per pod on GPU).")
    cpu: str | None = Field(default="4", description=(
        "CPU request and limit per pod; None on a TrainJob: the training runtime's."))
    memory: str | None = Field(default="32Gi", description=(
        "Memory request and limit per pod; None on a TrainJob: the training runtime's."))
    gpus: int = Field(default=0, ge=0, le=64, description="GPUs per pod (0 for CPU jobs).")
    gpu_resource: str = Field(default="nvidia.com/gpu", description="Extended resource name of the GPUs.")
    env: dict[str, str] = Field(default_factory=dict, description="Plain environment variables (no secrets).")
    secret_env: list[SecretEnv] = Field(default_factory=list, description="Variables read from Secrets.")
    volumes: list[Volume] = Field(default_factory=list, description="Volumes mounted into the training container.")
    tolerations: list[Toleration] = Field(default_factory=list, description="Pod tolerations.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Pod node selector.")
    priority_class: str | None = Field(default=None, description=(
        "Priority class: PyTorchJob schedulingPolicy.priorityClass; on a TrainJob the Kueue label "
        "kueue.x-k8s.io/priority-class."))
    queue: str | None = Field(default=None, description=(
        "Kueue LocalQueue: the label kueue.x-k8s.io/queue-name on the job (Kueue then admits it)."))
    service_account: Annotated[str | None, AfterValidator(name_validator("service account"))] = Field(
        default=None, description="Service account of the training pods.")
    deadline_seconds: int | None = Field(default=None, ge=60, description="Active deadline of the whole job.")
    backoff_limit: int = Field(default=0, ge=0, le=10, description=(
        "Pod restarts before the job fails (PyTorchJob runPolicy.backoffLimit; on a TrainJob the "
        "runtime's JobSet failure policy decides)."))
    runtime: str = Field(default="salmon-torch-distributed", description="TrainJob ClusterTrainingRuntime name.")
    labels: dict[str, str] = Field(default_factory=dict, description="Extra labels on the job.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Extra annotations on the job.")
    owner: OwnerRef | None = Field(default=None, description="Owner for garbage collection.")

    @model_validator(mode="after")
    def _gpus_match(self) -> TrainingJobSpec:
        if self.gpus and self.procs_per_node != self.gpus:
            raise ValueError(f"procs_per_node ({self.procs_per_node}) must equal gpus ({self.gpus}) "
                             "on GPU jobs: one process per GPU")
        return self

    def command(self) -> list[str]:
        """The container command: torchrun over the stage module."""
        return ["torchrun", f"--nnodes={self.nodes}", f"--nproc_per_node={self.procs_per_node}",
                "-m", f"salmon.stages.{self.stage}", *self.stage_args]


class VLLMServerSpec(_Spec):
    """A vLLM OpenAI-compatible server serving one model (and optional LoRA adapters)."""

    name: Annotated[str, AfterValidator(name_validator("object"))] = Field(description="Deployment and Service name.")
    namespace: Annotated[str, AfterValidator(name_validator("namespace"))] = Field(
        default="kubeflow", description="Namespace.")
    image: str = Field(default_factory=vllm_image, description="Pinned vLLM OpenAI server image.")
    model: str = Field(description="Model folder on the mounted PVC (e.g. /mnt/models/base) or s3://bucket/prefix.")
    served_model_name: str = Field(default="policy", description="Model name clients send.")
    model_pvc: str | None = Field(default="salmon-model-cache", description="PVC with the model (None for s3://).")
    model_mount: str = Field(default="/mnt/models", description="Where the PVC is mounted.")
    port: int = Field(default=8000, ge=1, le=65535, description="HTTP port.")
    gpus: int = Field(default=1, ge=0, le=64, description="GPUs (0 runs a CPU build of vLLM).")
    gpu_resource: str = Field(default="nvidia.com/gpu", description="Extended resource name of the GPUs.")
    tensor_parallel_size: int = Field(default=1, ge=1, le=64, description="Tensor-parallel degree.")
    dtype: str = Field(default="auto", description="Weights dtype: auto, bfloat16, float16, float32.")
    max_model_len: int | None = Field(default=None, ge=16, description="Context length (None: the model's).")
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1, description="Fraction of GPU memory vLLM may use.")
    prefix_caching: bool = Field(default=True, description=(
        "Reuse KV cache across requests: judge prompts share long principle preambles."))
    max_logprobs: int = Field(default=20, ge=1, le=1000, description="Largest logprobs a request may ask for.")
    lora_modules: dict[str, str] = Field(default_factory=dict, description="LoRA adapters served at start.")
    enable_lora: bool = Field(default=False, description="Serve LoRA adapters (implied by lora_modules).")
    runtime_lora_updates: bool = Field(default=False, description=(
        "Allow /v1/load_lora_adapter at run time (refresh a PPO policy adapter without a restart)."))
    max_loras: int = Field(default=2, ge=1, le=64, description="LoRA adapters resident at once.")
    max_lora_rank: int = Field(default=64, ge=1, le=512, description="Largest LoRA rank served.")
    api_key_secret: str = Field(default="salmon-vllm-api-key", description="Secret holding the API key.")
    api_key_key: str = Field(default="api-key", description="Key inside that Secret.")
    s3_secret: str | None = Field(default="salmon-s3", description="Secret with AWS_* keys for s3:// models.")
    shm_size: str = Field(default="8Gi", description="Size of the memory-backed /dev/shm.")
    cpu: str = Field(default="8", description="CPU request and limit.")
    memory: str = Field(default="64Gi", description="Memory request and limit.")
    startup_budget_seconds: int = Field(default=1800, ge=60, description=(
        "How long the startup probe waits for the model to load before the pod is restarted."))
    tolerations: list[Toleration] = Field(default_factory=list, description="Pod tolerations.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Pod node selector.")
    extra_args: list[str] = Field(default_factory=list, description="More `vllm serve` arguments.")
    labels: dict[str, str] = Field(default_factory=dict, description="Extra labels.")
    owner: OwnerRef | None = Field(default=None, description="Owner for garbage collection.")

    @model_validator(mode="after")
    def _tp_fits(self) -> VLLMServerSpec:
        if self.gpus and self.tensor_parallel_size > self.gpus:
            raise ValueError(f"tensor_parallel_size ({self.tensor_parallel_size}) exceeds gpus ({self.gpus})")
        return self

    def server_args(self) -> list[str]:
        """Arguments of the OpenAI server entry point."""
        args = ["--model", self.model, "--served-model-name", self.served_model_name,
                "--host", "0.0.0.0", "--port", str(self.port),
                "--tensor-parallel-size", str(self.tensor_parallel_size), "--dtype", self.dtype,
                "--max-logprobs", str(self.max_logprobs)]
        if self.gpus:
            args += ["--gpu-memory-utilization", str(self.gpu_memory_utilization)]
        else:
            # The CPU build of vLLM fails seeded requests whose prefill is split across steps
            # (sample sends a seed per response), so CPU servers prefill each prompt whole.
            args.append("--no-enable-chunked-prefill")
        if self.max_model_len:
            args += ["--max-model-len", str(self.max_model_len)]
        args.append("--enable-prefix-caching" if self.prefix_caching else "--no-enable-prefix-caching")
        if self.model.startswith("s3://"):
            args += ["--load-format", "runai_streamer"]
        if self.enable_lora or self.lora_modules or self.runtime_lora_updates:
            args += ["--enable-lora", "--max-loras", str(self.max_loras), "--max-lora-rank", str(self.max_lora_rank)]
            if self.lora_modules:
                args += ["--lora-modules", *(f"{k}={v}" for k, v in sorted(self.lora_modules.items()))]
        return args + list(self.extra_args)


def job_name(stage: str, run_id: str, task: str = "") -> str:
    """A deterministic, DNS-safe job name for one pipeline task: a retry of the same task gets the
    same name (and adopts the job), another run or task gets another one. The shape is
    ``salmon-<stage>-<10 hex digits>``, at most 29 characters."""
    digest = hashlib.sha256(f"{run_id}\x00{task}\x00{stage}".encode()).hexdigest()[:10]
    return f"salmon-{stage.replace('_', '-')}-{digest}"
