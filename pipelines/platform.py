"""Every Kubernetes pod setting of the pipeline, in one place.

``local`` runs ignore all of it (``kfp.local`` drops kfp-kubernetes settings and warns about
resources); the compiled YAML carries it to the cluster.

- GPU stages (``sft``, ``train_rm``, ``ppo`` with the ``local`` executor, and ``eval_policy``)
  request ``accelerator_type`` x ``gpus`` and tolerate the NVIDIA taint. With the ``trainjob`` /
  ``pytorchjob`` executors the launcher pod needs no GPU; the job it creates does.
- Every task gets the MLflow and S3 credentials from Secrets whose *names* are pipeline
  parameters (never literal values), and mounts the model-cache PVC (also a parameter).
- ``/dev/shm`` is a memory-backed emptyDir for the PyTorch data loaders and NCCL.
"""

from kfp import dsl, kubernetes

GPU_STAGES = ("sft", "train_rm", "ppo", "eval_policy")
NVIDIA_TAINT = "nvidia.com/gpu"
MODEL_CACHE_MOUNT = "/mnt/models"
CPU_REQUEST = "2"
MEMORY_REQUEST = "8Gi"
GPU_MEMORY_LIMIT = "64Gi"


def apply(task: dsl.PipelineTask, stage: str, *, accelerator_type, gpus, mlflow_secret, s3_secret,
          model_cache_pvc) -> dsl.PipelineTask:  # type: ignore[no-untyped-def]
    """Pod settings of one task. Channel arguments (pipeline parameters) are allowed."""
    task.set_cpu_request(CPU_REQUEST).set_memory_request(MEMORY_REQUEST)
    if stage in GPU_STAGES:
        task.set_accelerator_type(accelerator_type).set_accelerator_limit(gpus)
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
    kubernetes.mount_pvc(task, pvc_name=model_cache_pvc, mount_path=MODEL_CACHE_MOUNT)
    return task
