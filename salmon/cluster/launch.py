"""Launch a rendered training job (TrainJob or PyTorchJob) and wait for it, from a pipeline step.

What :func:`launch_and_wait` guarantees:

- the job name is deterministic per pipeline task (``spec.job_name``), so a KFP retry **adopts**
  the job it created before instead of failing on AlreadyExists; a job left Failed by the earlier
  attempt is deleted and created again (that is what a retry asks for); a job of the same name
  with a different spec (``salmon.ai/spec-digest``) is refused;
- the master pod's log is streamed into the step's log while the job runs;
- a Failed condition becomes :class:`JobFailed` with the controller's reason and message, and the
  command exits non-zero;
- past ``deadline_seconds`` the job is deleted and :class:`JobTimeout` raised;
- SIGTERM (the pipeline run was cancelled) deletes the job before the step exits, so no GPU job
  outlives its run; an ownerReference to the run's Argo Workflow (``workflow_owner``) covers a
  deleted run too.

Works with any Kubernetes API the official client can reach (a cluster, or an emulator in tests).
"""

from __future__ import annotations

import hashlib
import json
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

SPEC_DIGEST = "salmon.ai/spec-digest"


@dataclass(frozen=True)
class JobKind:
    """How one training CRD is addressed and how it reports the end of a run."""

    executor: str
    group: str
    version: str
    plural: str
    succeeded: str
    failed: str
    master_labels: Callable[[str], dict[str, str]]


KINDS = {
    "trainjob": JobKind("trainjob", "trainer.kubeflow.org", "v1alpha1", "trainjobs", "Complete", "Failed",
                        # JobSet labels of the first pod of the trainer's replicated job
                        lambda name: {"jobset.sigs.k8s.io/jobset-name": name,
                                      "jobset.sigs.k8s.io/replicatedjob-name": "node",
                                      "batch.kubernetes.io/job-completion-index": "0"}),
    "pytorchjob": JobKind("pytorchjob", "kubeflow.org", "v1", "pytorchjobs", "Succeeded", "Failed",
                          lambda name: {"training.kubeflow.org/job-name": name,
                                        "training.kubeflow.org/replica-type": "master"}),
}


class JobFailed(RuntimeError):
    """The job ended in a Failed condition (the message carries the controller's reason)."""


class JobTimeout(RuntimeError):
    """The job ran past its deadline and was deleted."""


class JobConflict(RuntimeError):
    """A job of the same name but a different spec exists."""


def spec_digest(manifest: Mapping[str, Any]) -> str:
    """Digest of what the job runs (its spec), stored as an annotation for adopt-on-retry."""
    return hashlib.sha256(json.dumps(manifest.get("spec", {}), sort_keys=True).encode()).hexdigest()[:16]


def with_digest(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``manifest`` annotated with its spec digest."""
    out = json.loads(json.dumps(manifest))
    out["metadata"].setdefault("annotations", {})[SPEC_DIGEST] = spec_digest(manifest)
    return out


def job_state(obj: Mapping[str, Any], kind: JobKind) -> tuple[str, str]:
    """``('succeeded' | 'failed' | 'running', reason)`` from a job's status conditions."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if str(cond.get("status")) != "True":
            continue
        reason = ": ".join(x for x in (cond.get("reason"), cond.get("message")) if x)
        if cond.get("type") == kind.failed:
            return "failed", reason or "no reason given"
        if cond.get("type") == kind.succeeded:
            return "succeeded", reason
    return "running", ""


def workflow_owner(pod: Mapping[str, Any]) -> dict[str, str] | None:
    """The Argo Workflow that owns a pipeline step's pod (``metadata.ownerReferences``), if any."""
    for ref in (pod.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == "Workflow":
            return {"api_version": ref["apiVersion"], "kind": "Workflow", "name": ref["name"], "uid": ref["uid"]}
    return None


class Launcher:
    """Creates, watches and deletes training jobs in one namespace."""

    def __init__(self, kind: str, namespace: str, *, api_client: Any = None, poll_seconds: float = 5.0,
                 out: Callable[[str], None] | None = None) -> None:
        from kubernetes import client

        if kind not in KINDS:
            raise ValueError(f"unknown job kind '{kind}'; use one of {', '.join(KINDS)}")
        self.kind = KINDS[kind]
        self.namespace = namespace
        self.api_client = api_client or client.ApiClient()
        self.custom = client.CustomObjectsApi(self.api_client)
        self.core = client.CoreV1Api(self.api_client)
        self.poll_seconds = poll_seconds
        self.out = out or (lambda line: print(line, file=sys.stderr, flush=True))
        self._log_seen: dict[str, int] = {}

    # --- single API calls --------------------------------------------------------------

    def _api_args(self) -> dict[str, str]:
        k = self.kind
        return {"group": k.group, "version": k.version, "namespace": self.namespace, "plural": k.plural}

    def get(self, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return dict(self.custom.get_namespaced_custom_object(name=name, **self._api_args()))
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def delete(self, name: str) -> bool:
        """Delete the job and its pods (background propagation); False if it was not there."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        try:
            self.custom.delete_namespaced_custom_object(
                name=name, body=client.V1DeleteOptions(propagation_policy="Background"), **self._api_args())
            return True
        except ApiException as e:
            if e.status == 404:
                return False
            raise

    def _wait_gone(self, name: str, timeout: float = 120.0) -> None:
        end = time.monotonic() + timeout
        while self.get(name) is not None:
            if time.monotonic() > end:
                raise JobConflict(f"{self.kind.plural}/{name} is still being deleted after {timeout:.0f} s")
            time.sleep(min(self.poll_seconds, 2.0))

    def create_or_adopt(self, manifest: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
        """Create the job, or adopt the one a previous attempt created. Returns ``(job, how)``
        with ``how`` in ``created``, ``adopted``, ``recreated``."""
        from kubernetes.client.exceptions import ApiException

        body = with_digest(manifest)
        name = body["metadata"]["name"]
        try:
            return dict(self.custom.create_namespaced_custom_object(body=body, **self._api_args())), "created"
        except ApiException as e:
            if e.status != 409:
                raise
        existing = self.get(name)
        if existing is None:  # deleted in between: create again
            return dict(self.custom.create_namespaced_custom_object(body=body, **self._api_args())), "created"
        theirs = ((existing.get("metadata") or {}).get("annotations") or {}).get(SPEC_DIGEST)
        if theirs != body["metadata"]["annotations"][SPEC_DIGEST]:
            raise JobConflict(f"{self.kind.plural}/{name} exists with a different spec (digest {theirs}); "
                              f"delete it or change the task")
        state, _ = job_state(existing, self.kind)
        if state == "failed":
            self.out(f"[launcher] {self.kind.plural}/{name} failed in an earlier attempt; deleting and recreating")
            self.delete(name)
            self._wait_gone(name)
            return dict(self.custom.create_namespaced_custom_object(body=body, **self._api_args())), "recreated"
        return existing, "adopted"

    def master_pod(self, name: str) -> str | None:
        """Name of the job's first (rank-0) pod, if it exists yet."""
        wanted = self.kind.master_labels(name)
        selector = ",".join(f"{k}={v}" for k, v in wanted.items())
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=selector)
        for pod in pods.items:
            labels = pod.metadata.labels or {}
            if all(labels.get(k) == v for k, v in wanted.items()):
                return str(pod.metadata.name)
        return None

    def stream_logs(self, name: str) -> None:
        """Print the master pod's log lines not printed yet."""
        from kubernetes.client.exceptions import ApiException

        pod = self.master_pod(name)
        if pod is None:
            return
        try:
            text = self.core.read_namespaced_pod_log(pod, self.namespace)
        except ApiException:
            return  # container not started yet
        seen = self._log_seen.get(pod, 0)
        new = str(text)[seen:]
        if new:
            self._log_seen[pod] = seen + len(new)
            for line in new.rstrip("\n").split("\n"):
                self.out(f"[{pod}] {line}")

    def wait(self, name: str, *, deadline_seconds: float | None = None) -> dict[str, Any]:
        """Poll until the job succeeds (returned) or fails (:class:`JobFailed`); past the deadline
        delete it (:class:`JobTimeout`)."""
        start = time.monotonic()
        last_state = ""
        while True:
            job = self.get(name)
            if job is None:
                raise JobFailed(f"{self.kind.plural}/{name} disappeared (deleted by someone else?)")
            self.stream_logs(name)
            state, reason = job_state(job, self.kind)
            if state != last_state:
                self.out(f"[launcher] {self.kind.plural}/{name}: {state}")
                last_state = state
            if state == "succeeded":
                return job
            if state == "failed":
                raise JobFailed(f"{self.kind.plural}/{name} failed: {reason}")
            if deadline_seconds is not None and time.monotonic() - start > deadline_seconds:
                self.delete(name)
                raise JobTimeout(f"{self.kind.plural}/{name} ran past its {deadline_seconds:.0f} s deadline; deleted")
            time.sleep(self.poll_seconds)

    @contextmanager
    def deleted_on_sigterm(self, name: str) -> Iterator[None]:
        """While inside, SIGTERM deletes the job and exits with 143 (128 + SIGTERM)."""
        def handler(signum: int, frame: Any) -> None:
            self.out(f"[launcher] SIGTERM: deleting {self.kind.plural}/{name}")
            try:
                self.delete(name)
            finally:
                raise SystemExit(128 + signum)

        previous = signal.signal(signal.SIGTERM, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)


def launch_and_wait(manifest: Mapping[str, Any], kind: str, *, api_client: Any = None,
                    deadline_seconds: float | None = None, poll_seconds: float = 5.0,
                    out: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Create (or adopt) the job, stream its log, wait for the end; delete it on SIGTERM or past
    the deadline. Returns the finished job; raises :class:`JobFailed` / :class:`JobTimeout`."""
    meta = manifest["metadata"]
    launcher = Launcher(kind, meta["namespace"], api_client=api_client, poll_seconds=poll_seconds, out=out)
    with launcher.deleted_on_sigterm(meta["name"]):
        job, how = launcher.create_or_adopt(manifest)
        launcher.out(f"[launcher] {launcher.kind.plural}/{meta['name']} {how}")
        return launcher.wait(meta["name"], deadline_seconds=deadline_seconds)


def kube_api_client(config_file: str | None = None) -> Any:
    """An API client: in-cluster credentials when running in a pod, else the kubeconfig."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config(config_file=config_file)
    return client.ApiClient()


def own_pod_owner(api_client: Any, namespace: str, pod_name: str | None) -> dict[str, str] | None:
    """The Workflow owning this step's pod (KFP sets ``KFP_POD_NAME``), or None outside a cluster."""
    if not pod_name:
        return None
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        pod = client.CoreV1Api(api_client).read_namespaced_pod(pod_name, namespace)
    except ApiException:
        return None
    return workflow_owner(api_client.sanitize_for_serialization(pod))
