"""Least-privilege and secrets-hygiene policy for everything salmon deploys or creates.

``validate`` answers "would an API server accept this?"; this module answers "should we run it?".
Each check is a small function that returns readable problems (an empty list means the object
passes), so that a test can feed it a deliberately bad manifest and see it fail:

- :func:`pod_spec_errors` / :func:`workload_errors`: no privileged containers, no privilege
  escalation, ``runAsNonRoot`` with a numeric non-root UID, the ``RuntimeDefault`` seccomp profile,
  every capability dropped, a read-only root filesystem with a writable ``/tmp`` emptyDir, no
  ``hostPath`` / host namespaces, CPU and memory requests and limits, no service-account token
  unless the pod talks to the API (:data:`API_CLIENT_ACCOUNTS`), pinned images
  (:func:`image_errors`). A ``TrainJob`` is checked as the pod the Trainer makes of it: its
  runtime's pod template with the TrainJob's ``runtimePatches`` and ``trainer`` merged in
  (:func:`effective_trainjob_pod`).
- :func:`secret_literal_errors` and :func:`pipeline_secret_errors`: secrets enter only through
  ``secretKeyRef`` / ``envFrom`` / KFP ``secretAsEnv`` by Secret *name*; never a literal value in
  a manifest, a ConfigMap, a container argument or the compiled pipeline.
- who may do what (RBAC grants, NetworkPolicies, the servers' own guards): :mod:`salmon.cluster.access`.

Pure Python over plain dicts: no kubernetes client.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from salmon.cluster.names import DNS1123_SUBDOMAIN

SECRET_LIKE = re.compile(r"PASSWORD|PASSWD|SECRET|KEY|TOKEN|CREDENTIAL", re.IGNORECASE)
"""Names (env variables, ConfigMap keys, parameters) whose value would be a secret."""

API_CLIENT_ACCOUNTS = {"salmon-sweeper": "the sweeper CronJob lists and deletes leftovers through the API"}
"""Service accounts whose pods may mount a token; every other salmon pod sets
``automountServiceAccountToken: false``. (The pipeline's task pods are made by KFP, not here.)"""

TEXT_SECRET_PATTERNS: dict[str, re.Pattern[str]] = {
    "an AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "a private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "credentials in a URI": re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@'\"<>]+:[^/\s@'\"<>]+@"),
    "an API token": re.compile(r"\b(?:sk-[A-Za-z0-9_-]{20,}|gh[pousr]_[A-Za-z0-9]{30,}|hf_[A-Za-z0-9]{30,}"
                               r"|xox[abpr]-[A-Za-z0-9-]{10,}|glpat-[A-Za-z0-9_-]{20})"),
    "a literal bearer token": re.compile(r"Bearer\s+[A-Za-z0-9._~+/-]{16,}=*"),
    "a quoted secret assignment": re.compile(
        r"""(?i)["']?\w*(?:password|passwd|secret|token|api_?key)\w*["']?\s*[:=]\s*["'][^"'\s{}$()<>]{8,}["']"""),
}
"""What a secret value looks like in free text (compiled pipelines embed component source code)."""

SECRET_ARGS = re.compile(r"^--(?:api-key|password|token|secret|access-key|secret-key)(?:=|$)")
"""Command-line flags that would carry a secret literally."""

_IMAGE = re.compile(r"^(?P<repo>[a-z0-9]+(?:[._/:-][a-z0-9]+)*?)(?::(?P<tag>[\w][\w.-]{0,127}))?"
                    r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?$")
_ENV_VALUE = re.compile(r"\.env\[\d+\]\.value$")


def label(doc: Mapping[str, Any]) -> str:
    meta = doc.get("metadata") or {}
    return f"{doc.get('kind', '?')}/{meta.get('name', '?')}"


# ------------------------------------------------------------------------------------ images

def image_errors(image: Any, where: str = "image") -> list[str]:
    """An image must name an explicit tag other than ``latest``, or a ``sha256`` digest."""
    if not isinstance(image, str) or not image:
        return [f"{where}: no image"]
    m = _IMAGE.match(image)
    if m is None:
        return [f"{where}: '{image}' is not an image reference"]
    tag, digest = m.group("tag"), m.group("digest")
    if digest:
        return []
    if tag is None:
        return [f"{where}: '{image}' has no tag (means latest); pin a version tag or a digest"]
    if tag == "latest":
        return [f"{where}: '{image}' uses the tag latest; pin a version tag or a digest"]
    return []


# --------------------------------------------------------------------------------- pod specs

def pod_specs(doc: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod spec (a mapping with a ``containers`` list) inside an object, with its path. A
    KFP ``pipelineSpec`` is skipped: its containers are not pod specs."""
    if isinstance(doc, dict):
        if isinstance(doc.get("containers"), list):
            yield path, doc
        for key, value in doc.items():
            if key not in ("pipelineSpec", "platformSpec"):
                yield from pod_specs(value, f"{path}.{key}")
    elif isinstance(doc, list):
        for i, item in enumerate(doc):
            yield from pod_specs(item, f"{path}[{i}]")


def container_errors(container: Mapping[str, Any], where: str, *, emptydirs: set[str]) -> list[str]:
    """One container: security context, writable /tmp, resources, pinned image."""
    errors = []
    at = f"{where} container {container.get('name', '?')}"
    sc = container.get("securityContext") or {}
    if sc.get("privileged") is True:
        errors.append(f"{at}: privileged")
    if sc.get("allowPrivilegeEscalation") is not False:
        errors.append(f"{at}: allowPrivilegeEscalation must be false")
    caps = sc.get("capabilities") or {}
    if caps.get("drop") != ["ALL"]:
        errors.append(f"{at}: capabilities.drop must be [ALL]")
    if caps.get("add"):
        errors.append(f"{at}: adds capabilities {caps['add']}")
    if sc.get("runAsNonRoot") is False or sc.get("runAsUser") == 0:
        errors.append(f"{at}: runs as root")
    if sc.get("readOnlyRootFilesystem") is not True:
        errors.append(f"{at}: readOnlyRootFilesystem must be true")
    mounts = {m.get("mountPath") for m in container.get("volumeMounts") or [] if m.get("name") in emptydirs}
    if "/tmp" not in mounts:
        errors.append(f"{at}: no writable /tmp (an emptyDir mounted there)")
    resources = container.get("resources") or {}
    for kind in ("requests", "limits"):
        missing = {"cpu", "memory"} - set(resources.get(kind) or {})
        if missing:
            errors.append(f"{at}: no {kind} for {', '.join(sorted(missing))}")
    errors += image_errors(container.get("image"), f"{at} image")
    errors += _env_errors(container.get("env") or [], at)
    errors += secret_arg_errors([*(container.get("command") or []), *(container.get("args") or [])], at)
    return errors


def pod_spec_errors(spec: Mapping[str, Any], where: str) -> list[str]:
    """A pod spec and all its containers (see the module docstring)."""
    errors = []
    pod = spec.get("securityContext") or {}
    if pod.get("runAsNonRoot") is not True:
        errors.append(f"{where}: runAsNonRoot must be true")
    uid = pod.get("runAsUser")
    if not isinstance(uid, int) or isinstance(uid, bool) or uid <= 0:
        errors.append(f"{where}: runAsUser must be a numeric non-root UID")
    if pod.get("seccompProfile") != {"type": "RuntimeDefault"}:
        errors.append(f"{where}: seccompProfile must be RuntimeDefault")
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(host):
            errors.append(f"{where}: {host}")
    for vol in spec.get("volumes") or []:
        if "hostPath" in vol:
            errors.append(f"{where}: hostPath volume {vol.get('name')}")
    account = spec.get("serviceAccountName")
    if spec.get("automountServiceAccountToken") is not False and account not in API_CLIENT_ACCOUNTS:
        errors.append(f"{where}: automountServiceAccountToken must be false (no API access needed)")
    emptydirs = {vol["name"] for vol in spec.get("volumes") or [] if "emptyDir" in vol}
    containers = list(spec.get("containers") or []) + list(spec.get("initContainers") or [])
    if not containers:
        errors.append(f"{where}: no containers")
    for container in containers:
        errors += container_errors(container, where, emptydirs=emptydirs)
    return errors


def _merge(base: Any, patch: Any) -> Any:
    """A strategic-merge approximation: maps merge key by key, lists of named items merge by
    name, anything else is replaced by the patch."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if (isinstance(base, list) and isinstance(patch, list) and all(isinstance(x, dict) and "name" in x
                                                                   for x in [*base, *patch])):
        merged = {x["name"]: x for x in base}
        for item in patch:
            merged[item["name"]] = _merge(merged[item["name"]], item) if item["name"] in merged else item
        return list(merged.values())
    return copy.deepcopy(patch)


def runtime_pod_template(runtime: Mapping[str, Any], job: str = "node") -> dict[str, Any]:
    """The pod spec of the replicated job ``job`` of a (Cluster)TrainingRuntime."""
    for rjob in runtime["spec"]["template"]["spec"]["replicatedJobs"]:
        if rjob["name"] == job:
            return copy.deepcopy(rjob["template"]["spec"]["template"]["spec"])
    raise KeyError(f"{label(runtime)} has no replicated job '{job}'")


def effective_trainjob_pod(trainjob: Mapping[str, Any], runtime: Mapping[str, Any],
                           container: str = "node") -> dict[str, Any]:
    """The pod the Trainer makes for a TrainJob's nodes, approximately: the runtime's pod template,
    the TrainJob's ``runtimePatches`` for that replicated job merged in (:func:`_merge`), and the
    ``trainer`` fields on the trainer container (image, command, args and env merged;
    ``resourcesPerNode`` replacing the runtime's resources, the stricter reading for the check)."""
    pod = runtime_pod_template(runtime, container)
    spec = trainjob.get("spec") or {}
    for patch in spec.get("runtimePatches") or []:
        tmpl = ((patch.get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec") or {}
        for rjob in tmpl.get("replicatedJobs") or []:
            if rjob.get("name") == container:
                pod_patch = (((rjob.get("template") or {}).get("spec") or {}).get("template") or {}).get("spec")
                if pod_patch:
                    pod = _merge(pod, pod_patch)
    trainer = spec.get("trainer") or {}
    fields: dict[str, Any] = {"name": container}
    for key, field in (("image", "image"), ("command", "command"), ("args", "args"), ("env", "env")):
        if key in trainer:
            fields[field] = trainer[key]
    pod = dict(_merge(pod, {"containers": [fields]}))
    if "resourcesPerNode" in trainer:  # replaces the runtime's resources as a whole
        node = next(c for c in pod["containers"] if c["name"] == container)
        node["resources"] = copy.deepcopy(trainer["resourcesPerNode"])
    return pod


def workload_errors(doc: Mapping[str, Any], runtimes: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    """Every pod an object makes, checked with :func:`pod_spec_errors`. A TrainJob is checked as
    :func:`effective_trainjob_pod` over its runtime (``runtimes``: name -> runtime object); a
    TrainJob whose runtime is not given is an error (it cannot be checked)."""
    name = label(doc)
    if doc.get("kind") == "TrainJob":
        ref = (doc.get("spec") or {}).get("runtimeRef") or {}
        runtime = (runtimes or {}).get(ref.get("name", ""))
        if runtime is None:
            return [f"{name}: runtime '{ref.get('name')}' not given; cannot check the pods it makes"]
        return pod_spec_errors(effective_trainjob_pod(doc, runtime), f"{name} (pods over {label(runtime)})")
    errors = []
    for where, spec in pod_specs(doc):
        errors += pod_spec_errors(spec, f"{name}{where}")
    return errors


# ------------------------------------------------------------------------------------ secrets

def _env_errors(env: Iterable[Mapping[str, Any]], where: str) -> list[str]:
    errors = []
    for item in env:
        name = str(item.get("name", ""))
        if "value" not in item:
            continue
        value = str(item["value"])
        if SECRET_LIKE.search(name) and value:
            errors.append(f"{where}: env {name} has a literal value (use valueFrom.secretKeyRef)")
        errors += [f"{where}: env {name} holds {what}" for what, rx in TEXT_SECRET_PATTERNS.items()
                   if rx.search(value)]
    return errors


def secret_arg_errors(argv: Iterable[Any], where: str) -> list[str]:
    """A problem for every command-line argument that would carry a secret literally."""
    return [f"{where}: argument {str(arg).split('=')[0]} passes a secret on the command line"
            for arg in argv if SECRET_ARGS.match(str(arg))]


def _walk(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk(v, f"{path}[{i}]")


def text_secret_errors(text: str, where: str) -> list[str]:
    """Secret-looking values in free text (:data:`TEXT_SECRET_PATTERNS`)."""
    return [f"{where}: contains {what} ({m.group(0)[:12]}...)" for what, rx in TEXT_SECRET_PATTERNS.items()
            for m in rx.finditer(text)]


def secret_literal_errors(doc: Mapping[str, Any]) -> list[str]:
    """Literal secrets in one manifest: a Secret with data, an ``env`` entry (anywhere: pods,
    TrainJob ``trainer.env``) with a secret-like name and a ``value``, a ConfigMap key with a
    secret-like name, a secret passed as a command-line flag, or a string that looks like a
    secret (:data:`TEXT_SECRET_PATTERNS`)."""
    name = label(doc)
    errors = []
    if doc.get("kind") == "Secret" and (doc.get("data") or doc.get("stringData")):
        errors.append(f"{name}: a Secret with literal data (create Secrets out of band)")
    if doc.get("kind") == "ConfigMap":
        for key in [*(doc.get("data") or {}), *(doc.get("binaryData") or {})]:
            if SECRET_LIKE.search(key):
                errors.append(f"{name}: ConfigMap key {key} looks like a secret (use a Secret)")
    for path, value in _walk(doc):
        if isinstance(value, dict) and isinstance(value.get("env"), list):
            errors += _env_errors([e for e in value["env"] if isinstance(e, dict)], f"{name}{path}")
        if isinstance(value, dict):
            for key in ("command", "args"):
                if isinstance(value.get(key), list):
                    errors += secret_arg_errors(value[key], f"{name}{path}")
        if isinstance(value, str) and not _ENV_VALUE.search(path):  # env values are reported above
            errors += text_secret_errors(value, f"{name}{path}")
    return sorted(set(errors))


def pipeline_secret_errors(docs: Iterable[Mapping[str, Any]], text: str = "", where: str = "pipeline") -> list[str]:
    """Literal secrets in a compiled KFP pipeline (the IR documents, or Pipeline/PipelineVersion
    manifests): a parameter with a secret-like name must be a Secret *name* (``..._secret``, a
    DNS name as default) or have no default; executor containers carry no secret-like literal
    env; Secrets reach tasks only as ``secretAsEnv`` / ``secretAsVolume`` by name; and the text
    (``text``, e.g. the YAML file, which embeds component source) holds nothing that looks like a
    secret."""
    errors = text_secret_errors(text, where) if text else []
    for doc in docs:
        for path, value in _walk(doc):
            if not isinstance(value, dict):
                continue
            params = (value.get("inputDefinitions") or {}).get("parameters") if "inputDefinitions" in value else None
            for pname, pdef in (params or {}).items():
                if not SECRET_LIKE.search(pname) or not isinstance(pdef, dict) or "defaultValue" not in pdef:
                    continue
                default = pdef["defaultValue"]
                if not (pname.endswith("_secret") and isinstance(default, str) and DNS1123_SUBDOMAIN.match(default)):
                    errors.append(f"{where}{path}: parameter {pname} has a default that is not a Secret name")
            container = value.get("container")
            if isinstance(container, dict):
                errors += _env_errors(container.get("env") or [], f"{where}{path}")
                errors += secret_arg_errors([*(container.get("command") or []), *(container.get("args") or [])],
                                      f"{where}{path}")
            for how in ("secretAsEnv", "secretAsVolume"):
                for ref in value.get(how) or []:
                    if not (ref.get("secretNameParameter") or ref.get("secretName")):
                        errors.append(f"{where}{path}: {how} without a Secret name")
    return sorted(set(errors))


