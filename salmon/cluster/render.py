"""Render the typed specs of ``salmon.cluster.spec`` to Kubernetes manifests (plain dicts).

- :func:`render_trainjob`: Kubeflow Trainer v2 ``TrainJob`` (``trainer.kubeflow.org/v1alpha1``)
  against a torch ClusterTrainingRuntime; pod-level settings go into ``runtimePatches``.
- :func:`render_pytorchjob`: training-operator v1 ``PyTorchJob`` (``kubeflow.org/v1``), Master plus
  ``nodes - 1`` Workers, container ``pytorch``.
- :func:`render_vllm_server`: a Deployment and a ClusterIP Service for a vLLM OpenAI server.

Every pod runs as non-root, without privilege escalation, with all capabilities dropped, a
read-only root filesystem (writable ``emptyDir`` folders for ``/tmp`` and ``$HOME``) and no
service-account token. Secrets enter only through ``secretKeyRef``. ``salmon.cluster.policy``
checks all of this on every rendered object (tests/test_manifests.py).
"""

from __future__ import annotations

from typing import Any

from salmon.cluster.spec import OwnerRef, SecretEnv, Toleration, TrainingJobSpec, VLLMServerSpec, Volume

MANAGER = "salmon.ai/launcher"
"""The runtimePatches manager key of the patches salmon writes."""
RUN_AS_USER = 1000
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_STAGE = "salmon.ai/stage"
TRAINJOB_CONTAINER = "node"
"""The trainer container in the torch runtimes (and in salmon-torch-distributed)."""
PYTORCHJOB_CONTAINER = "pytorch"
SCRATCH = {"tmp": "/tmp", "home": "/home/salmon"}
"""Writable emptyDir folders of a PyTorchJob's pods (the root filesystem is read-only): the runtime
image's HOME and its caches live under /home/salmon. salmon-torch-distributed mounts the same."""
SCRATCH_SIZE = "20Gi"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


def _metadata(name: str, namespace: str, labels: dict[str, str], annotations: dict[str, str] | None = None,
              owner: OwnerRef | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(sorted(labels.items()))}
    if annotations:
        meta["annotations"] = dict(sorted(annotations.items()))
    if owner is not None:
        meta["ownerReferences"] = [{"apiVersion": owner.api_version, "kind": owner.kind, "name": owner.name,
                                    "uid": owner.uid, "controller": False, "blockOwnerDeletion": False}]
    return meta


def _env(plain: dict[str, str], secrets: list[SecretEnv]) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(plain.items())]
    env += [{"name": s.env, "valueFrom": {"secretKeyRef": {"name": s.secret, "key": s.key, "optional": s.optional}}}
            for s in secrets]
    return env


def _volumes(volumes: list[Volume]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    pod, mounts = [], []
    for v in volumes:
        if v.pvc is not None:
            pod.append({"name": v.name, "persistentVolumeClaim": {"claimName": v.pvc, "readOnly": v.read_only}})
        else:
            pod.append({"name": v.name, "emptyDir": {"medium": "Memory", "sizeLimit": v.memory}})
        mounts.append({"name": v.name, "mountPath": v.mount_path, "readOnly": v.read_only})
    return pod, mounts


def _tolerations(items: list[Toleration]) -> list[dict[str, Any]]:
    return [t.model_dump(exclude_none=True) for t in items]


def pod_security_context() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": RUN_AS_USER, "runAsGroup": RUN_AS_USER, "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"}}


def container_security_context() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "privileged": False, "runAsNonRoot": True,
            "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}


def _resources(spec: TrainingJobSpec | VLLMServerSpec) -> dict[str, Any]:
    """Requests equal to limits; CPU or memory left unset (a TrainJob's) come from the runtime."""
    amounts: dict[str, Any] = {k: v for k, v in (("cpu", spec.cpu), ("memory", spec.memory)) if v}
    if spec.gpus:
        amounts[spec.gpu_resource] = str(spec.gpus)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _pod_placement(spec: TrainingJobSpec, pod_volumes: list[dict[str, Any]]) -> dict[str, Any]:
    """The pod-spec fields both job kinds set the same way: volumes, tolerations, node selector,
    service account (only those that are set)."""
    extra: dict[str, Any] = {}
    if pod_volumes:
        extra["volumes"] = pod_volumes
    if spec.tolerations:
        extra["tolerations"] = _tolerations(spec.tolerations)
    if spec.node_selector:
        extra["nodeSelector"] = dict(sorted(spec.node_selector.items()))
    if spec.service_account:
        extra["serviceAccountName"] = spec.service_account
    return extra


def _job_labels(spec: TrainingJobSpec) -> dict[str, str]:
    labels = {LABEL_PART_OF: "salmon", LABEL_COMPONENT: "training", LABEL_STAGE: spec.stage.replace("_", "-"),
              **spec.labels}
    if spec.queue:
        labels[KUEUE_QUEUE_LABEL] = spec.queue
    return labels


def _job_env(spec: TrainingJobSpec) -> dict[str, str]:
    # DeepSpeed picks its accelerator from the device; on CPU jobs say so explicitly.
    base = {"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    if not spec.gpus:
        base["DS_ACCELERATOR"] = "cpu"
    return {**base, **spec.env}


def render_trainjob(spec: TrainingJobSpec) -> dict[str, Any]:
    """A ``TrainJob`` running ``spec.command()`` on ``spec.nodes`` pods of the torch runtime."""
    pod_volumes, mounts = _volumes(spec.volumes)
    labels = _job_labels(spec)
    if spec.priority_class:
        labels["kueue.x-k8s.io/priority-class"] = spec.priority_class
    pod_spec: dict[str, Any] = {
        "securityContext": pod_security_context(),
        "containers": [{"name": TRAINJOB_CONTAINER, "volumeMounts": mounts,
                        "securityContext": container_security_context()}],
    }
    # /tmp, $HOME and automountServiceAccountToken: false come from the runtime (a runtime patch
    # cannot set the last one)
    pod_spec.update(_pod_placement(spec, pod_volumes))
    job: dict[str, Any] = {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": _metadata(spec.name, spec.namespace, labels, spec.annotations, spec.owner),
        "spec": {
            "runtimeRef": {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
                           "name": spec.runtime},
            "trainer": {
                "image": spec.image,
                "command": spec.command(),
                "env": _env(_job_env(spec), spec.secret_env),
                "numNodes": spec.nodes,
                "numProcPerNode": spec.procs_per_node,
            },
            "runtimePatches": [{
                "manager": MANAGER,
                "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [{
                    "name": TRAINJOB_CONTAINER,
                    "template": {"spec": {"template": {"metadata": {"labels": labels}, "spec": pod_spec}}},
                }]}}},
            }],
        },
    }
    resources = _resources(spec)
    if resources["requests"]:  # else every size comes from the training runtime
        job["spec"]["trainer"]["resourcesPerNode"] = resources
    if spec.deadline_seconds:
        job["spec"]["activeDeadlineSeconds"] = spec.deadline_seconds
    return job


def render_pytorchjob(spec: TrainingJobSpec) -> dict[str, Any]:
    """A ``PyTorchJob`` with one Master and ``nodes - 1`` Workers running ``spec.command()``."""
    pod_volumes, mounts = _volumes(spec.volumes)
    pod_volumes += [{"name": name, "emptyDir": {"sizeLimit": SCRATCH_SIZE}} for name in SCRATCH]
    mounts += [{"name": name, "mountPath": path} for name, path in SCRATCH.items()]
    labels = _job_labels(spec)
    container = {
        "name": PYTORCHJOB_CONTAINER, "image": spec.image, "imagePullPolicy": "IfNotPresent",
        "command": spec.command(), "env": _env(_job_env(spec), spec.secret_env),
        "resources": _resources(spec), "volumeMounts": mounts,
        "securityContext": container_security_context(),
    }
    pod_spec: dict[str, Any] = {"securityContext": pod_security_context(), "automountServiceAccountToken": False,
                                "containers": [container]}
    pod_spec.update(_pod_placement(spec, pod_volumes))

    def replica(count: int) -> dict[str, Any]:
        return {"replicas": count, "restartPolicy": "OnFailure" if spec.backoff_limit else "Never",
                "template": {"metadata": {"labels": labels}, "spec": pod_spec}}

    replicas = {"Master": replica(1)}
    if spec.nodes > 1:
        replicas["Worker"] = replica(spec.nodes - 1)
    run_policy: dict[str, Any] = {"cleanPodPolicy": "All", "backoffLimit": spec.backoff_limit}
    if spec.deadline_seconds:
        run_policy["activeDeadlineSeconds"] = spec.deadline_seconds
    if spec.priority_class:
        run_policy["schedulingPolicy"] = {"priorityClass": spec.priority_class}
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": _metadata(spec.name, spec.namespace, labels, spec.annotations, spec.owner),
        "spec": {"nprocPerNode": str(spec.procs_per_node), "runPolicy": run_policy,
                 "pytorchReplicaSpecs": replicas},
    }


def render_job(spec: TrainingJobSpec, executor: str) -> dict[str, Any]:
    """The manifest for ``executor`` ('trainjob' or 'pytorchjob')."""
    if executor == "trainjob":
        return render_trainjob(spec)
    if executor == "pytorchjob":
        return render_pytorchjob(spec)
    raise ValueError(f"no Kubernetes rendering for executor '{executor}'; use trainjob or pytorchjob")


def vllm_labels(spec: VLLMServerSpec) -> dict[str, str]:
    return {LABEL_PART_OF: "salmon", LABEL_COMPONENT: "vllm-server", "app.kubernetes.io/name": spec.name,
            **spec.labels}


def render_vllm_server(spec: VLLMServerSpec) -> list[dict[str, Any]]:
    """A Deployment (one replica) and a ClusterIP Service for a vLLM OpenAI server."""
    labels = vllm_labels(spec)
    selector = {"app.kubernetes.io/name": spec.name, LABEL_COMPONENT: "vllm-server"}
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": "/tmp/home"},
        {"name": "HF_HOME", "value": "/tmp/hf"},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": spec.api_key_secret,
                                                                "key": spec.api_key_key}}},
    ]
    if spec.runtime_lora_updates:
        env.append({"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"})
    if spec.model.startswith("s3://") and spec.s3_secret:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
            env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": spec.s3_secret, "key": key,
                                                                    "optional": key == "AWS_ENDPOINT_URL"}}})
        env.append({"name": "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING", "value": "0"})
    volumes: list[dict[str, Any]] = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.shm_size}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [{"name": "dshm", "mountPath": "/dev/shm"}, {"name": "tmp", "mountPath": "/tmp"}]
    if spec.model_pvc:
        volumes.append({"name": "models", "persistentVolumeClaim": {"claimName": spec.model_pvc, "readOnly": True}})
        mounts.append({"name": "models", "mountPath": spec.model_mount, "readOnly": True})
    period = 10
    # vLLM's OpenAI server binds its port only once the model is loaded, and /health (outside the
    # /v1 routes that VLLM_API_KEY guards) answers 200 while the engine is up: an httpGet on it
    # tells startup, readiness and liveness apart by their timings alone, with no process per probe.
    health = {"httpGet": {"path": "/health", "port": "http"}, "timeoutSeconds": 5}
    container = {
        "name": "vllm",
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
        "args": spec.server_args(),
        "env": env,
        "ports": [{"name": "http", "containerPort": spec.port, "protocol": "TCP"}],
        "resources": _resources(spec),
        "volumeMounts": mounts,
        "securityContext": container_security_context(),
        "startupProbe": {**health, "periodSeconds": period,
                         "failureThreshold": max(1, spec.startup_budget_seconds // period)},
        "readinessProbe": {**health, "periodSeconds": period, "failureThreshold": 3},
        "livenessProbe": {**health, "periodSeconds": 30, "failureThreshold": 3},
    }
    pod_spec: dict[str, Any] = {"securityContext": pod_security_context(), "containers": [container],
                                "volumes": volumes, "automountServiceAccountToken": False}
    if spec.tolerations:
        pod_spec["tolerations"] = _tolerations(spec.tolerations)
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(sorted(spec.node_selector.items()))
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(spec.name, spec.namespace, labels, owner=spec.owner),
        "spec": {"replicas": 1, "selector": {"matchLabels": selector}, "strategy": {"type": "Recreate"},
                 "template": {"metadata": {"labels": labels}, "spec": pod_spec}},
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(spec.name, spec.namespace, labels, owner=spec.owner),
        "spec": {"type": "ClusterIP", "selector": selector,
                 "ports": [{"name": "http", "port": spec.port, "targetPort": "http", "protocol": "TCP"}]},
    }
    return [deployment, service]


def service_url(spec: VLLMServerSpec) -> str:
    """The in-cluster base URL of the server's OpenAI API."""
    return f"http://{spec.name}.{spec.namespace}.svc:{spec.port}/v1"
