"""Launch a rendered training job (TrainJob or PyTorchJob) and wait for it, from a pipeline step.

What :func:`launch_and_wait` guarantees:

- the job name is deterministic per pipeline task (``spec.job_name``), so a KFP retry **adopts**
  the job it created before instead of failing on AlreadyExists; a job left Failed by the earlier
  attempt is deleted and created again (that is what a retry asks for); a job of the same name
  with a different spec (``salmon.ai/spec-digest``) is refused;
- the master pod's log is streamed into the step's log while the job runs, and so is every pod
  problem as it appears (:func:`pod_problems`: ImagePullBackOff, CrashLoopBackOff, OOMKilled, a
  non-zero exit, Unschedulable, Evicted, each with the kubelet's or scheduler's message);
- a Failed condition becomes :class:`JobFailed` with the controller's reason and message *and*
  the pods' problems (the controllers' conditions rarely name them; a PyTorchJob may have
  deleted its pods by then, so problems seen earlier are kept), and the command exits non-zero;
- past ``deadline_seconds`` the job is deleted and :class:`JobTimeout` raised, with the problems;
- SIGTERM (the pipeline run was cancelled: KFP terminates the Argo Workflow and Argo signals the
  step) deletes the job before the step exits, so no GPU job outlives its run. Backstops for a
  step that dies without running its handler: the ownerReference to the run's Argo Workflow
  (``workflow_owner``; Kubernetes deletes the job with the Workflow) and the sweeper
  (``salmon.cluster.sweep``: it deletes the job as soon as the Workflow is finished or terminated).

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
    pod_labels: Callable[[str], dict[str, str]]
    """Labels every pod of the job carries (set by the controller)."""


KINDS = {
    "trainjob": JobKind("trainjob", "trainer.kubeflow.org", "v1alpha1", "trainjobs", "Complete", "Failed",
                        # JobSet labels of the first pod of the trainer's replicated job
                        lambda name: {"jobset.sigs.k8s.io/jobset-name": name,
                                      "jobset.sigs.k8s.io/replicatedjob-name": "node",
                                      "batch.kubernetes.io/job-completion-index": "0"},
                        lambda name: {"jobset.sigs.k8s.io/jobset-name": name}),
    "pytorchjob": JobKind("pytorchjob", "kubeflow.org", "v1", "pytorchjobs", "Succeeded", "Failed",
                          lambda name: {"training.kubeflow.org/job-name": name,
                                        "training.kubeflow.org/replica-type": "master"},
                          lambda name: {"training.kubeflow.org/job-name": name}),
}
QUIET_WAITING = ("ContainerCreating", "PodInitializing")
"""Waiting reasons that are progress, not problems."""


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


def _short(text: Any, limit: int = 300) -> str:
    flat = " ".join(str(text or "").split())
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."


def pod_problems(pod: Mapping[str, Any]) -> list[str]:
    """Why a pod is not running (well), from its status, one line each with the reason and the
    kubelet's or scheduler's message: the pod's own reason (Evicted, DeadlineExceeded), an
    unschedulable pod (Insufficient nvidia.com/gpu, untolerated taint), a waiting container
    (ImagePullBackOff, CrashLoopBackOff, CreateContainerConfigError for a missing Secret) and a
    container that ended or last ended with a non-zero exit (OOMKilled, Error)."""
    status = pod.get("status") or {}
    found = []
    if status.get("reason"):
        found.append(f"{status['reason']}: {_short(status.get('message'))}".rstrip(": "))
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and str(cond.get("status")) == "False" and cond.get("reason"):
            found.append(f"{cond['reason']}: {_short(cond.get('message'))}".rstrip(": "))
    for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        state, last = cs.get("state") or {}, cs.get("lastState") or cs.get("last_state") or {}
        waiting = state.get("waiting") or {}
        if waiting.get("reason") and waiting["reason"] not in QUIET_WAITING:
            found.append(f"container {cs.get('name')} {waiting['reason']}: {_short(waiting.get('message'))}"
                         .rstrip(": "))
        for ended in (state.get("terminated"), last.get("terminated")):
            code = (ended or {}).get("exitCode", (ended or {}).get("exit_code"))
            if ended and code:
                message = f": {_short(ended['message'])}" if ended.get("message") else ""
                found.append(f"container {cs.get('name')} {ended.get('reason') or 'Error'} (exit code {code}){message}")
    name = (pod.get("metadata") or {}).get("name", "?")
    return [f"pod {name}: {line}" for line in dict.fromkeys(found)]


def pods_with_labels(core: Any, namespace: str, wanted: Mapping[str, str]) -> list[dict[str, Any]]:
    """Pods carrying all of ``wanted`` as plain dicts (the label filter is applied again here, for
    APIs that ignore the selector)."""
    selector = ",".join(f"{k}={v}" for k, v in wanted.items())
    pods = core.list_namespaced_pod(namespace, label_selector=selector)
    out = []
    for pod in pods.items:
        doc = core.api_client.sanitize_for_serialization(pod)
        labels = (doc.get("metadata") or {}).get("labels") or {}
        if all(labels.get(k) == v for k, v in wanted.items()):
            out.append(doc)
    return out


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
        self.problems: dict[str, None] = {}
        """Every pod problem seen so far (ordered, each once)."""

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

    def pods(self, name: str) -> list[dict[str, Any]]:
        """The job's pods (as dicts)."""
        return pods_with_labels(self.core, self.namespace, self.kind.pod_labels(name))

    def master_pod(self, name: str, pods: list[dict[str, Any]] | None = None) -> str | None:
        """Name of the job's first (rank-0) pod, if it exists yet."""
        wanted = self.kind.master_labels(name)
        for pod in self.pods(name) if pods is None else pods:
            labels = pod["metadata"].get("labels") or {}
            if all(labels.get(k) == v for k, v in wanted.items()):
                return str(pod["metadata"]["name"])
        return None

    def watch_pods(self, name: str, pods: list[dict[str, Any]] | None = None) -> list[str]:
        """Print the pod problems not printed yet; returns the problems of the pods now."""
        now = [p for pod in (self.pods(name) if pods is None else pods) for p in pod_problems(pod)]
        for problem in now:
            if problem not in self.problems:
                self.problems[problem] = None
                self.out(f"[launcher] {problem}")
        return now

    def _with_problems(self, message: str) -> str:
        if not self.problems:
            return message
        return f"{message}; pods: " + "; ".join(self.problems)

    def stream_logs(self, name: str, pods: list[dict[str, Any]] | None = None) -> None:
        """Print the master pod's log lines not printed yet."""
        from kubernetes.client.exceptions import ApiException

        pod = self.master_pod(name, pods)
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
                raise JobFailed(self._with_problems(
                    f"{self.kind.plural}/{name} disappeared (deleted by someone else?)"))
            pods = self.pods(name)
            self.stream_logs(name, pods)
            self.watch_pods(name, pods)
            state, reason = job_state(job, self.kind)
            if state != last_state:
                self.out(f"[launcher] {self.kind.plural}/{name}: {state}")
                last_state = state
            if state == "succeeded":
                return job
            if state == "failed":
                raise JobFailed(self._with_problems(f"{self.kind.plural}/{name} failed: {reason}"))
            if deadline_seconds is not None and time.monotonic() - start > deadline_seconds:
                self.delete(name)
                raise JobTimeout(self._with_problems(
                    f"{self.kind.plural}/{name} ran past its {deadline_seconds:.0f} s deadline; deleted"))
            time.sleep(self.poll_seconds)

    @contextmanager
    def deleted_on_sigterm(self, name: str) -> Iterator[None]:
        """While inside, SIGTERM deletes the job and exits with 143 (128 + SIGTERM)."""
        def cleanup() -> None:
            self.out(f"[launcher] SIGTERM: deleting {self.kind.plural}/{name}")
            self.delete(name)

        with on_sigterm(cleanup):
            yield


@contextmanager
def on_sigterm(cleanup: Callable[[], Any]) -> Iterator[None]:
    """While inside, SIGTERM runs ``cleanup()`` and exits with 143 (128 + SIGTERM). Outside the
    main thread (where Python cannot install signal handlers) this does nothing."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        try:
            cleanup()
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
