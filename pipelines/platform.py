"""Every Kubernetes pod setting of the pipeline, in one place.

``local`` runs ignore all of it (``kfp.local`` drops kfp-kubernetes settings and warns about
resources); the compiled YAML carries it to the cluster.

- GPU stages (``sft``, ``train_rm``, ``ppo`` and ``eval_policy``) tolerate the NVIDIA taint and
  request ``accelerator_type``: ``eval_policy`` ``gpus`` of them, the training tasks
  ``training_task_gpus``. A training task that launches a TrainJob / PyTorchJob (executor
  ``trainjob`` / ``pytorchjob``) only waits on it, so it should ask for none
  (``training_task_gpus=0``); the job's pods get ``gpus`` each.
- ``sample`` and ``label`` read the sampler server's API key from the Secret named by
  ``sampler_api_key_secret`` (key ``api-key``) as ``SALMON_SAMPLER_API_KEY``.
- Every task gets the MLflow and S3 credentials from Secrets whose *names* are pipeline
  parameters (never literal values), and mounts the model-cache PVC (also a parameter).
- ``/dev/shm`` is a memory-backed emptyDir for the PyTorch data loaders and NCCL.
"""

from kfp import dsl, kubernetes

from components.image import IMAGE_ENV
from salmon.core.stages import GPU_STAGES, TRAINING_STAGES

NVIDIA_TAINT = "nvidia.com/gpu"
MODEL_CACHE_MOUNT = "/mnt/models"
CPU_REQUEST = "2"
MEMORY_REQUEST = "8Gi"
GPU_MEMORY_LIMIT = "64Gi"



LAUNCHERS = (*TRAINING_STAGES, "serve_sampler", "stop_sampler", "stop_sampler_after_rollouts")
"""Tasks that launch (or remove) pods of their own: training jobs, the vLLM server."""
LAUNCH_RETRIES = 2
"""Retries of a launcher task after a failure (a lost pod, an API hiccup), 60 s apart, doubling."""

SAMPLER_CLIENTS = ("sample", "label", "ppo", "eval_policy")
SAMPLER_KEY_ENV = "SALMON_SAMPLER_API_KEY"
"""Where the openai backend of sample and label reads the sampler server's API key."""


def apply(task: dsl.PipelineTask, stage: str, *, accelerator_type, gpus, training_task_gpus, mlflow_secret,
          s3_secret, model_cache_pvc, sampler_api_key_secret) -> dsl.PipelineTask:  # type: ignore[no-untyped-def]
    """Pod settings of one task. Channel arguments (pipeline parameters) are allowed."""
    task.set_cpu_request(CPU_REQUEST).set_memory_request(MEMORY_REQUEST)
    if stage in LAUNCHERS:  # what they launch runs the images the tasks were compiled with
        for name, value in IMAGE_ENV.items():
            task.set_env_variable(name, value)
        # a retried launcher adopts the job or server its first attempt created (salmon.cluster)
        task.set_retry(num_retries=LAUNCH_RETRIES, backoff_duration="60s", backoff_factor=2.0)
    if stage in GPU_STAGES:
        count = training_task_gpus if stage in TRAINING_STAGES else gpus
        task.set_accelerator_type(accelerator_type).set_accelerator_limit(count)
        task.set_memory_limit(GPU_MEMORY_LIMIT)
        kubernetes.add_toleration(task, key=NVIDIA_TAINT, operator="Exists", effect="NoSchedule")
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory")
    kubernetes.use_secret_as_env(task, secret_name=mlflow_secret, optional=True, secret_key_to_env={
        "MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI",
        "MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD"})
    kubernetes.use_secret_as_env(task, secret_name=s3_secret, optional=True, secret_key_to_env={
        "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
        "AWS_ENDPOINT_URL_S3": "AWS_ENDPOINT_URL_S3",
        "MLFLOW_S3_ENDPOINT_URL": "MLFLOW_S3_ENDPOINT_URL"})
    if stage in SAMPLER_CLIENTS:
        kubernetes.use_secret_as_env(task, secret_name=sampler_api_key_secret, optional=True,
                                     secret_key_to_env={"api-key": SAMPLER_KEY_ENV})
    kubernetes.mount_pvc(task, pvc_name=model_cache_pvc, mount_path=MODEL_CACHE_MOUNT)
    return task
