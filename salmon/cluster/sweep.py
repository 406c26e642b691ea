"""Remove what finished or cancelled pipeline runs left behind: ``python -m salmon.cluster.sweep``.

Why it exists. When a KFP run is cancelled, KFP terminates its Argo Workflow
(``spec.activeDeadlineSeconds: 0``); Argo signals the running steps and schedules nothing more.
A step that is launching a job or a vLLM server cleans up on SIGTERM (``salmon.cluster.launch``,
``salmon.cluster.sampler``). But the vLLM server that ``serve_sampler`` started keeps running
after that task finished, and the ``stop_sampler`` task that would remove it never runs in a
cancelled run; a step killed before its handler ran leaves its job too. Such objects carry an
ownerReference to the run's Workflow, so Kubernetes deletes them with the Workflow, but KFP keeps
a finished Workflow for a day by default (the persistence agent's TTL), GPUs held all along.

What it does. It lists the Deployments, Services, TrainJobs and PyTorchJobs of one namespace
that salmon made (label ``app.kubernetes.io/part-of: salmon``, component ``vllm-server`` or
``training``) and that an Argo Workflow owns, and deletes those whose run is over
(:func:`run_over`): the Workflow is gone or replaced, terminated (``activeDeadlineSeconds: 0``) or
stopped (``spec.shutdown``), or in a final phase (Succeeded, Failed, Error). Objects without a
Workflow owner (made outside KFP) and objects of runs still going are left alone. The CronJob
``salmon-sweeper`` (manifests/base/sweeper.yaml) runs it every few minutes, with a Role that may
only read Workflows and list and delete those four kinds.

Limits: a retried run (KFP "retry" of a failed run) gets a new vLLM server only if its
``serve_sampler`` task runs again; the files a job wrote on the shared volume stay there.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

PART_OF = "app.kubernetes.io/part-of"
COMPONENT = "app.kubernetes.io/component"
COMPONENTS = ("training", "vllm-server")
WORKFLOWS = {"group": "argoproj.io", "version": "v1alpha1", "plural": "workflows"}
FINAL_PHASES = ("Succeeded", "Failed", "Error")
CUSTOM_KINDS = {"trainjobs": ("trainer.kubeflow.org", "v1alpha1"), "pytorchjobs": ("kubeflow.org", "v1")}


@dataclass(frozen=True)
class Leftover:
    """One object whose run is over."""

    resource: str
    name: str
    run: str
    reason: str

    def __str__(self) -> str:
        return f"{self.resource}/{self.name} (Workflow {self.run}: {self.reason})"


def run_over(workflow: Mapping[str, Any] | None, uid: str) -> str:
    """Why the run of the Workflow with ``uid`` is over, or ``''`` while it goes on."""
    if workflow is None:
        return "deleted"
    if (workflow.get("metadata") or {}).get("uid") != uid:
        return "replaced by another Workflow of the same name"
    spec, status = workflow.get("spec") or {}, workflow.get("status") or {}
    if spec.get("activeDeadlineSeconds") == 0:
        return "terminated"
    if spec.get("shutdown"):
        return f"shutdown {spec['shutdown']}"
    if status.get("phase") in FINAL_PHASES:
        return f"phase {status['phase']}"
    return ""


def _workflow_owner(meta: Mapping[str, Any]) -> dict[str, str] | None:
    for ref in meta.get("ownerReferences") or meta.get("owner_references") or []:
        if ref.get("kind") == "Workflow" and str(ref.get("apiVersion") or ref.get("api_version", "")).startswith(
                "argoproj.io/"):
            return {"name": ref["name"], "uid": ref["uid"]}
    return None


class Sweeper:
    """Finds and deletes leftovers in one namespace."""

    def __init__(self, api_client: Any, namespace: str, out: Callable[[str], None] | None = None) -> None:
        from kubernetes import client

        self.namespace = namespace
        self.api_client = api_client
        self.apps = client.AppsV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.out = out or (lambda line: print(line, file=sys.stderr, flush=True))
        self._workflows: dict[str, dict[str, Any] | None] = {}

    def workflow(self, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        if name not in self._workflows:
            try:
                self._workflows[name] = dict(self.custom.get_namespaced_custom_object(
                    name=name, namespace=self.namespace, **WORKFLOWS))
            except ApiException as e:
                if e.status != 404:
                    raise
                self._workflows[name] = None
        return self._workflows[name]

    def _items(self, resource: str) -> list[dict[str, Any]]:
        from kubernetes.client.exceptions import ApiException

        selector = f"{PART_OF}=salmon"
        if resource == "deployments":
            items = self.apps.list_namespaced_deployment(self.namespace, label_selector=selector).items
        elif resource == "services":
            items = self.core.list_namespaced_service(self.namespace, label_selector=selector).items
        else:
            group, version = CUSTOM_KINDS[resource]
            try:
                listed = self.custom.list_namespaced_custom_object(group, version, self.namespace, resource,
                                                                   label_selector=selector)
            except ApiException as e:
                if e.status == 404:  # the CRD is not installed
                    return []
                raise
            return [dict(x) for x in listed.get("items") or []]
        return [self.api_client.sanitize_for_serialization(x) for x in items]

    def leftovers(self) -> list[Leftover]:
        """Objects of runs that are over (see the module docstring)."""
        found = []
        for resource in ("deployments", "services", *CUSTOM_KINDS):
            for item in self._items(resource):
                meta = item.get("metadata") or {}
                labels = meta.get("labels") or {}
                if labels.get(PART_OF) != "salmon" or labels.get(COMPONENT) not in COMPONENTS:
                    continue
                owner = _workflow_owner(meta)
                if owner is None:
                    continue
                reason = run_over(self.workflow(owner["name"]), owner["uid"])
                if reason:
                    found.append(Leftover(resource, meta["name"], owner["name"], reason))
        return found

    def delete(self, leftover: Leftover) -> bool:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        body = client.V1DeleteOptions(propagation_policy="Background")
        try:
            if leftover.resource == "deployments":
                self.apps.delete_namespaced_deployment(leftover.name, self.namespace, body=body)
            elif leftover.resource == "services":
                self.core.delete_namespaced_service(leftover.name, self.namespace, body=body)
            else:
                group, version = CUSTOM_KINDS[leftover.resource]
                self.custom.delete_namespaced_custom_object(group, version, self.namespace, leftover.resource,
                                                            leftover.name, body=body)
            return True
        except ApiException as e:
            if e.status == 404:
                return False
            raise


def sweep(api_client: Any, namespace: str, *, dry_run: bool = False,
          out: Callable[[str], None] | None = None) -> list[str]:
    """Delete (or with ``dry_run`` only list) the leftovers of finished and cancelled runs in
    ``namespace``; returns ``resource/name`` of each."""
    sweeper = Sweeper(api_client, namespace, out)
    removed = []
    for leftover in sweeper.leftovers():
        if dry_run or sweeper.delete(leftover):
            sweeper.out(f"[sweep] {'would delete' if dry_run else 'deleted'} {leftover}")
            removed.append(f"{leftover.resource}/{leftover.name}")
    sweeper.out(f"[sweep] {namespace}: {len(removed)} leftover(s) {'found' if dry_run else 'removed'}")
    return removed


def main(argv: list[str] | None = None) -> int:
    from salmon.cluster.executor import ClusterSettings
    from salmon.cluster.launch import kube_api_client

    parser = argparse.ArgumentParser(prog="python -m salmon.cluster.sweep", description=(
        "Delete the vLLM servers and training jobs of pipeline runs that are over (cancelled, finished or deleted)."))
    parser.add_argument("--namespace", default="", help="namespace to sweep (default: this pod's namespace)")
    parser.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig file outside a cluster")
    args = parser.parse_args(argv)
    namespace = ClusterSettings(namespace=args.namespace).resolved_namespace()
    sweep(kube_api_client(args.kubeconfig), namespace, dry_run=args.dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
