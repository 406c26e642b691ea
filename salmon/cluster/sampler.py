"""Start, wait for and remove the vLLM server that ``sample`` and ``label`` use with the
``openai`` backend.

The server's name derives from what it serves (the digests of the base model and the adapter), so
its in-cluster URL is the same in every run that serves the same model and the sample/label
tasks stay cacheable. Objects carry the label ``salmon.ai/kfp-run`` of the run that created them.
Who removes them:

- the pipeline's ``stop_sampler`` task (:func:`delete_servers`), once ``label`` is done, whether
  ``sample`` and ``label`` succeeded or failed (with ``rollout_backend=openai``,
  ``stop_sampler_after_rollouts`` once ``ppo`` and ``eval_policy`` are done);
- :func:`deploy_server` itself on SIGTERM while it waits for the server (the run was cancelled
  during ``serve_sampler``);
- when the run is cancelled after ``serve_sampler`` finished, no task of the run is left to do it
  (KFP terminates the Workflow and schedules nothing more): the sweeper
  (``salmon.cluster.sweep``, a CronJob) deletes the server once the Workflow that owns it
  (ownerReference) is terminated or finished, and Kubernetes' garbage collector deletes it with
  the Workflow.
"""

from __future__ import annotations

import hashlib
import itertools
import sys
import time
from collections.abc import Callable
from typing import Any

from salmon.cluster.render import render_vllm_server, service_url
from salmon.cluster.spec import VLLMServerSpec

RUN_LABEL = "salmon.ai/kfp-run"


def server_name(*digests: str) -> str:
    """``salmon-vllm-<10 hex>`` from the digests of what the server serves."""
    return "salmon-vllm-" + hashlib.sha256("\x00".join(digests).encode()).hexdigest()[:10]


def run_label(run_id: str) -> str:
    """A label value for a KFP run id (label values are limited to 63 characters)."""
    return hashlib.sha256(run_id.encode()).hexdigest()[:16]


def _create_or_keep(create: Callable[[], Any]) -> str:
    from kubernetes.client.exceptions import ApiException

    try:
        create()
        return "created"
    except ApiException as e:
        if e.status != 409:
            raise
        return "adopted"


def deploy_server(spec: VLLMServerSpec, *, api_client: Any, run_id: str, timeout_seconds: float = 3600,
                  poll_seconds: float = 10, out: Callable[[str], None] | None = None) -> str:
    """Create (or adopt) the server's Deployment and Service and wait until the Deployment has a
    ready replica (its readiness probe lists the model with the API key). Returns the base URL.

    While waiting, the server pods' problems (ImagePullBackOff, CrashLoopBackOff, OOMKilled,
    Unschedulable, ...) are printed as they appear and named in the timeout's message. SIGTERM
    (the run was cancelled) removes this run's servers (:func:`delete_servers`) and exits 143."""
    from kubernetes import client

    from salmon.cluster.launch import on_sigterm, pod_problems, pods_with_labels

    say = out or (lambda line: print(line, file=sys.stderr, flush=True))
    spec = spec.model_copy(update={"labels": {**spec.labels, RUN_LABEL: run_label(run_id)}})
    deployment, service = render_vllm_server(spec)
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)

    def cleanup() -> None:
        say("[sampler] SIGTERM: removing the servers of this run")
        delete_servers(api_client=api_client, namespace=spec.namespace, run_id=run_id, out=say)

    seen: dict[str, None] = {}
    with on_sigterm(cleanup):
        how = _create_or_keep(lambda: apps.create_namespaced_deployment(spec.namespace, deployment))
        _create_or_keep(lambda: core.create_namespaced_service(spec.namespace, service))
        say(f"[sampler] deployments/{spec.name} {how}; waiting for a ready replica")
        end = time.monotonic() + timeout_seconds
        for attempt in itertools.count():
            dep = apps.read_namespaced_deployment(spec.name, spec.namespace)
            ready = (dep.status.ready_replicas or 0) if dep.status else 0
            if ready >= 1:
                url = service_url(spec)
                say(f"[sampler] {spec.name} ready at {url}")
                return url
            for pod in pods_with_labels(core, spec.namespace, deployment["spec"]["selector"]["matchLabels"]):
                for problem in pod_problems(pod):
                    if problem not in seen:
                        seen[problem] = None
                        say(f"[sampler] {problem}")
            if time.monotonic() > end:
                problems = f"; pods: {'; '.join(seen)}" if seen else ""
                raise TimeoutError(f"vLLM server {spec.name} not ready after {timeout_seconds:.0f} s{problems}; "
                                   f"see `kubectl -n {spec.namespace} describe deployment {spec.name}`")
            time.sleep(min(poll_seconds, 0.25 * 2 ** min(attempt, 16)))  # quick first looks, then every poll_seconds
    raise AssertionError("unreachable")


def delete_servers(*, api_client: Any, namespace: str, run_id: str,
                   out: Callable[[str], None] | None = None) -> list[str]:
    """Delete the Deployments and Services this run created; returns their names."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    say = out or (lambda line: print(line, file=sys.stderr, flush=True))
    value = run_label(run_id)
    selector = f"{RUN_LABEL}={value}"
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    removed = []
    for kind, lister, deleter in (
            ("deployments", apps.list_namespaced_deployment, apps.delete_namespaced_deployment),
            ("services", core.list_namespaced_service, core.delete_namespaced_service)):
        for item in lister(namespace, label_selector=selector).items:
            if (item.metadata.labels or {}).get(RUN_LABEL) != value:
                continue  # the API filters by label; check again for APIs that do not
            try:
                deleter(item.metadata.name, namespace)
                removed.append(f"{kind}/{item.metadata.name}")
            except ApiException as e:
                if e.status != 404:
                    raise
    say(f"[sampler] removed {', '.join(removed) or 'nothing'}")
    return removed
