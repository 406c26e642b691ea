"""Who may do what in the cluster salmon deploys: the exact RBAC grants of salmon's Roles, the
NetworkPolicies that admit traffic to its servers, and the servers' own guards (MLflow's allowed
hosts, vLLM's API key). Pure functions over parsed manifests, as :mod:`salmon.cluster.policy`:

- :func:`rbac_errors`: Roles grant exactly the verbs the code uses (:data:`ROLE_RULES`), no
  wildcard, no access to Secrets or RBAC; ClusterRoles, ClusterRoleBindings and other
  cluster-scoped objects only from a documented allow-list.
- :func:`ingress_errors`: a pod is fenced by NetworkPolicies that admit only the pipeline's
  namespace, on the serving port only.
- :func:`mlflow_allowed_hosts_errors` and :func:`vllm_api_key_errors`: the MLflow server checks
  Host headers against a fixed list; the vLLM server requires an API key read from a Secret.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from salmon.cluster.policy import label, secret_arg_errors

ROLE_RULES: dict[str, dict[tuple[str, str], frozenset[str]]] = {
    # The launchers (salmon.cluster.launch / sampler / executor), as recorded against the
    # emulator in tests/test_cluster.py: create, read and delete their jobs, read the job's pods
    # and the master's log (and their own pod, for the Workflow ownerReference), create, read,
    # list and delete the vLLM server's Deployment and Service.
    "salmon-pipeline-runner": {
        ("trainer.kubeflow.org", "trainjobs"): frozenset({"create", "get", "delete"}),
        ("kubeflow.org", "pytorchjobs"): frozenset({"create", "get", "delete"}),
        ("apps", "deployments"): frozenset({"create", "get", "list", "delete"}),
        ("", "services"): frozenset({"create", "list", "delete"}),
        ("", "pods"): frozenset({"get", "list"}),
        ("", "pods/log"): frozenset({"get"}),
    },
    # The sweeper (salmon.cluster.sweep): read the owning Workflow, list and delete what a
    # finished or cancelled run left behind. It creates nothing.
    "salmon-sweeper": {
        ("argoproj.io", "workflows"): frozenset({"get"}),
        ("trainer.kubeflow.org", "trainjobs"): frozenset({"list", "delete"}),
        ("kubeflow.org", "pytorchjobs"): frozenset({"list", "delete"}),
        ("apps", "deployments"): frozenset({"list", "delete"}),
        ("", "services"): frozenset({"list", "delete"}),
    },
}
"""Role name -> (apiGroup, resource) -> the verbs granted, exactly."""

CLUSTER_RBAC_ALLOWED: dict[tuple[str, str], str] = {}
"""(kind, name) -> why a ClusterRole / ClusterRoleBinding is needed. Empty: everything salmon
creates at run time (jobs, vLLM servers) is namespaced, so namespaced Roles suffice."""

CLUSTER_SCOPED_ALLOWED: dict[tuple[str, str], str] = {
    ("ClusterTrainingRuntime", "salmon-torch-distributed"):
        "TrainJobs reference a runtime by name; a cluster admin applies it once (manifests/base/cluster)",
}
"""(kind, name) -> why this cluster-scoped object (not RBAC) is deployed."""

FORBIDDEN_RESOURCES = frozenset({"secrets", "pods/exec", "pods/attach", "pods/portforward", "serviceaccounts/token",
                                 "roles", "rolebindings", "clusterroles", "clusterrolebindings", "nodes",
                                 "namespaces", "persistentvolumes"})
FORBIDDEN_VERBS = frozenset({"*", "escalate", "bind", "impersonate"})


# --------------------------------------------------------------------------------------- RBAC

def role_grants(role: Mapping[str, Any]) -> dict[tuple[str, str], set[str]]:
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role.get("rules") or []:
        for group in rule.get("apiGroups") or []:
            for resource in rule.get("resources") or []:
                granted.setdefault((group, resource), set()).update(rule.get("verbs") or [])
    return granted


def rbac_errors(docs: Iterable[Mapping[str, Any]],
                expected: Mapping[str, Mapping[tuple[str, str], Iterable[str]]] | None = None,
                cluster_rbac_allowed: Mapping[tuple[str, str], str] | None = None,
                cluster_scoped_allowed: Mapping[tuple[str, str], str] | None = None) -> list[str]:
    """Roles grant exactly ``expected`` (default :data:`ROLE_RULES`), with no wildcard, no
    escalate/bind/impersonate and nothing on Secrets, RBAC or pod exec; RoleBindings bind Roles,
    not ClusterRoles; ClusterRoles / ClusterRoleBindings and other objects without a namespace
    appear only in their allow-lists."""
    expected = ROLE_RULES if expected is None else expected
    cluster_rbac = CLUSTER_RBAC_ALLOWED if cluster_rbac_allowed is None else cluster_rbac_allowed
    cluster_scoped = CLUSTER_SCOPED_ALLOWED if cluster_scoped_allowed is None else cluster_scoped_allowed
    errors = []
    for doc in docs:
        kind, name = doc.get("kind", ""), (doc.get("metadata") or {}).get("name", "")
        if kind in ("ClusterRole", "ClusterRoleBinding"):
            if (kind, name) not in cluster_rbac:
                errors.append(f"{kind}/{name}: cluster-wide RBAC is not in the allow-list")
            continue
        if kind == "Role":
            for rule in doc.get("rules") or []:
                for field in ("apiGroups", "resources", "verbs"):
                    if "*" in (rule.get(field) or []):
                        errors.append(f"Role/{name}: wildcard in {field}")
                for verb in set(rule.get("verbs") or []) & FORBIDDEN_VERBS - {"*"}:
                    errors.append(f"Role/{name}: verb {verb}")
                for resource in set(rule.get("resources") or []) & FORBIDDEN_RESOURCES:
                    errors.append(f"Role/{name}: grants access to {resource}")
                if rule.get("nonResourceURLs"):
                    errors.append(f"Role/{name}: grants nonResourceURLs")
            want = {k: set(v) for k, v in (expected.get(name) or {}).items()}
            got = role_grants(doc)
            if name not in expected:
                errors.append(f"Role/{name}: not an expected Role")
            elif got != want:
                extra = {k: sorted(v - want.get(k, set())) for k, v in got.items() if v - want.get(k, set())}
                missing = {k: sorted(v - got.get(k, set())) for k, v in want.items() if v - got.get(k, set())}
                errors.append(f"Role/{name}: grants differ from what the code uses: extra {extra}, missing {missing}")
        elif kind == "RoleBinding":
            ref = doc.get("roleRef") or {}
            if ref.get("kind") != "Role":
                errors.append(f"RoleBinding/{name}: binds {ref.get('kind')}/{ref.get('name')}, not a Role")
        elif "namespace" not in (doc.get("metadata") or {}) and (kind, name) not in cluster_scoped:
            errors.append(f"{kind}/{name}: cluster-scoped object not in the allow-list")
    return errors


# ---------------------------------------------------------------------------- network policies

def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Whether a label selector matches ``labels`` (matchLabels and matchExpressions)."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        present = key in labels
        if ((op == "In" and labels.get(key) not in values) or (op == "NotIn" and present and labels[key] in values)
                or (op == "Exists" and not present) or (op == "DoesNotExist" and present)):
            return False
    return True


def ingress_errors(policies: Iterable[Mapping[str, Any]], pod_labels: Mapping[str, str], port: int,
                   namespace: str, where: str) -> list[str]:
    """A pod with ``pod_labels`` in ``namespace`` that serves on ``port`` is fenced: at least one
    Ingress NetworkPolicy of that namespace selects it (so all else is denied), and every rule that
    admits traffic to it admits only pods of ``namespace`` (a bare ``podSelector``, or a
    ``namespaceSelector`` on ``kubernetes.io/metadata.name: <namespace>``) on ``port`` only."""
    errors = []
    selecting = [p for p in policies if p.get("kind") == "NetworkPolicy"
                 and (p.get("metadata") or {}).get("namespace", namespace) == namespace
                 and selects((p.get("spec") or {}).get("podSelector"), pod_labels)
                 and "Ingress" in ((p.get("spec") or {}).get("policyTypes") or ["Ingress"])]
    if not selecting:
        return [f"{where}: no NetworkPolicy selects it, so anything may connect"]
    own_ns = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    for policy in selecting:
        pname = label(policy)
        for i, rule in enumerate((policy.get("spec") or {}).get("ingress") or []):
            at = f"{where}: {pname} ingress[{i}]"
            peers = rule.get("from") or []
            if not peers:
                errors.append(f"{at}: admits every source (no 'from')")
            for peer in peers:
                if "ipBlock" in peer:
                    errors.append(f"{at}: admits an ipBlock {peer['ipBlock']}")
                if "namespaceSelector" in peer and peer["namespaceSelector"] != own_ns:
                    errors.append(f"{at}: admits other namespaces ({peer['namespaceSelector']})")
            ports = rule.get("ports") or []
            if not ports:
                errors.append(f"{at}: admits every port")
            for p in ports:
                if p.get("port") != port or p.get("protocol", "TCP") != "TCP" or "endPort" in p:
                    errors.append(f"{at}: admits port {p.get('port')}/{p.get('protocol', 'TCP')}, not {port}/TCP")
    return errors


# ------------------------------------------------------------------------- servers' own guards

def _container_env(deployment: Mapping[str, Any], container: str) -> tuple[dict[str, Any], dict[str, Any]]:
    for c in deployment["spec"]["template"]["spec"]["containers"]:
        if c["name"] == container:
            return c, {e["name"]: e for e in c.get("env") or []}
    raise KeyError(f"{label(deployment)} has no container {container}")


def mlflow_allowed_hosts_errors(deployment: Mapping[str, Any], service: str = "salmon-mlflow") -> list[str]:
    """The MLflow server checks Host headers against a list (``MLFLOW_SERVER_ALLOWED_HOSTS``) of
    its Service's in-cluster names and localhost only; no wildcard host, no ``--allowed-hosts``
    override on the command line."""
    container, env = _container_env(deployment, "mlflow")
    where = label(deployment)
    errors = []
    if any(str(a).startswith("--allowed-hosts") for a in container.get("args") or []):
        errors.append(f"{where}: --allowed-hosts on the command line overrides the checked list")
    hosts = env.get("MLFLOW_SERVER_ALLOWED_HOSTS", {}).get("value")
    if not hosts:
        return [*errors, f"{where}: MLFLOW_SERVER_ALLOWED_HOSTS is not set (any Host header is accepted)"]
    names = {service, f"{service}.$(POD_NAMESPACE)", f"{service}.$(POD_NAMESPACE).svc",
             f"{service}.$(POD_NAMESPACE).svc.cluster.local", "localhost", "127.0.0.1"}
    for entry in hosts.split(","):
        host, _, port = entry.partition(":")
        if host not in names or (port and port != "*" and not port.isdigit()):
            errors.append(f"{where}: allowed host '{entry}' is not the service's in-cluster name or localhost")
    return errors


def vllm_api_key_errors(deployment: Mapping[str, Any]) -> list[str]:
    """The vLLM server requires an API key (``VLLM_API_KEY``) read from a Secret, never given as a
    literal or on the command line."""
    container, env = _container_env(deployment, "vllm")
    where = label(deployment)
    errors = secret_arg_errors([*(container.get("command") or []), *(container.get("args") or [])], where)
    key = env.get("VLLM_API_KEY")
    if key is None:
        errors.append(f"{where}: VLLM_API_KEY is not set, so the server answers without a key")
    elif not ((key.get("valueFrom") or {}).get("secretKeyRef") or {}).get("name"):
        errors.append(f"{where}: VLLM_API_KEY does not come from a Secret (valueFrom.secretKeyRef)")
    elif key["valueFrom"]["secretKeyRef"].get("optional"):
        errors.append(f"{where}: VLLM_API_KEY is optional, so a missing Secret starts the server without a key")
    return errors
