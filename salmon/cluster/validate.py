"""Offline validation of Kubernetes manifests: what an API server would reject, without one.

``validate_manifest(doc)`` returns a list of readable problems, each prefixed ``Kind/name:``
(an empty list means the object is valid). Four layers of checks:

1. **Built-in kinds** (Deployment, Service, Role, ...): the strict JSON schemas bundled with
   ``kubernetes-validate`` for the chosen Kubernetes minor version. Strict means an unknown
   field is an error, where an API server would silently drop it.
2. **Custom resources salmon creates** (TrainJob, ClusterTrainingRuntime, TrainingRuntime,
   PyTorchJob, the KFP Pipeline and PipelineVersion): the CRD's ``openAPIV3Schema`` shipped in
   ``salmon/cluster/schemas/`` (see its README), made strict the same way: every object schema
   with ``properties`` and without ``x-kubernetes-preserve-unknown-fields`` gets
   ``additionalProperties: false``.
3. **CEL rules** (``x-kubernetes-validations``) of those CRDs that apply on create (rules that
   mention ``oldSelf`` only constrain updates and are skipped), evaluated with ``cel-python``
   against the value at the rule's schema node.
4. **Hand-written checks** for what the schemas leave to controllers or type as free strings:
   PyTorchJob ``cleanPodPolicy``/``restartPolicy`` enums, replica types and the ``pytorch``
   container; custom-resource ``metadata.name``; the structure of a KFP PipelineVersion's
   ``pipelineSpec``.

Any other apiVersion/kind is an error: a manifest that cannot be checked is not passed.
``validate_manifests(docs)`` adds checks across documents (duplicates, PipelineVersion ->
Pipeline). Schemas and compiled rules are loaded once per process.
"""

from __future__ import annotations

import copy
import functools
import gzip
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from importlib import resources
from typing import Any

from salmon.cluster.names import DNS1123_SUBDOMAIN, name_problem
from salmon.core.errors import SalmonInputError

DEFAULT_KUBERNETES_VERSION = "1.33"

CUSTOM_SCHEMAS: dict[tuple[str, str], str] = {
    ("trainer.kubeflow.org/v1alpha1", "TrainJob"): "trainer.kubeflow.org_trainjobs.v1alpha1.json.gz",
    ("trainer.kubeflow.org/v1alpha1", "ClusterTrainingRuntime"):
        "trainer.kubeflow.org_clustertrainingruntimes.v1alpha1.json.gz",
    ("trainer.kubeflow.org/v1alpha1", "TrainingRuntime"): "trainer.kubeflow.org_trainingruntimes.v1alpha1.json.gz",
    ("kubeflow.org/v1", "PyTorchJob"): "kubeflow.org_pytorchjobs.v1.json.gz",
    ("pipelines.kubeflow.org/v2beta1", "Pipeline"): "pipelines.kubeflow.org_pipelines.v2beta1.json.gz",
    ("pipelines.kubeflow.org/v2beta1", "PipelineVersion"): "pipelines.kubeflow.org_pipelineversions.v2beta1.json.gz",
}
"""(apiVersion, kind) -> the vendored schema file in ``salmon/cluster/schemas/``."""

PYTORCHJOB_CLEAN_POD_POLICIES = ("None", "Running", "All")
PYTORCHJOB_RESTART_POLICIES = ("Always", "OnFailure", "Never", "ExitCode")
PYTORCHJOB_REPLICA_TYPES = ("Master", "Worker")



# --------------------------------------------------------------------------------------- input

def load_yaml_documents(text: str) -> list[dict[str, Any]]:
    """Every non-empty document of a multi-document YAML string, each a mapping.

    Raises SalmonInputError when the YAML does not parse or a document is not a mapping.
    """
    import yaml

    from salmon.core.yamlio import safe_load_all

    try:
        raw = safe_load_all(text)
    except yaml.YAMLError as err:
        raise SalmonInputError("manifest YAML", f"does not parse: {err}", "fix the YAML syntax") from err
    docs: list[dict[str, Any]] = []
    for index, doc in enumerate(raw):
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise SalmonInputError(f"manifest YAML document {index + 1}",
                                   f"is a {type(doc).__name__}, not a mapping",
                                   "each document must be one Kubernetes object")
        docs.append(doc)
    return docs


# ------------------------------------------------------------------------------------ helpers

def _label(doc: Mapping[str, Any]) -> str:
    kind = doc.get("kind") if isinstance(doc.get("kind"), str) else "<no kind>"
    meta = doc.get("metadata")
    name = None
    if isinstance(meta, Mapping):
        name = meta.get("name") or meta.get("generateName")
    return f"{kind}/{name if isinstance(name, str) and name else '<no name>'}"


def _path(parts: Iterable[Any]) -> str:
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _at(path: str, message: str) -> str:
    """``path: message``, or the message alone for the object itself (empty path)."""
    return f"{path.lstrip('.')}: {message}" if path else message


def _plain(value: Any) -> Any:
    """A JSON-shaped deep copy (tuples -> lists, mappings -> dicts)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _drop_nulls(value: Any) -> Any:
    """Remove null-valued fields, as the API server prunes them from custom resources."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


# -------------------------------------------------------------------------------- built-in kinds

class _NoSchema(Exception):
    """No bundled schema for this kind/apiVersion (or none for this Kubernetes version)."""


def _builtin_errors(doc: dict[str, Any], version: str) -> list[str]:
    try:
        validator = _builtin_validator(str(doc["kind"]), str(doc["apiVersion"]), version)
    except ImportError:
        return ["cannot validate built-in kinds: kubernetes-validate is not installed "
                "(install the dev extra: pip install -e '.[dev]')"]
    except _NoSchema as err:
        return [str(err)]
    errors = sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path])
    return [_at(_path(e.absolute_path), e.message) for e in errors]


@functools.lru_cache(maxsize=128)
def _builtin_validator(kind: str, api_version: str, version: str) -> Any:
    """A strict Draft 2020-12 validator for one built-in kind, from kubernetes-validate's bundle.

    Same schema lookup as ``kubernetes_validate.validate(doc, version, strict=True)`` (the newest
    bundled Kubernetes version not newer than ``version``), but the validator is kept, so that
    every error can be listed and repeated calls are cheap.
    """
    import kubernetes_validate  # noqa: F401 - ImportError here means "install the dev extra"
    from jsonschema import Draft202012Validator
    from kubernetes_validate import utils as kv
    from packaging.version import Version
    from referencing import Registry, Resource

    wanted = Version(kv.major_minor(version.lstrip("v")))
    bundled = [v for v in kv.all_versions() if Version(kv.major_minor(v)) <= wanted]
    if not bundled:
        raise _NoSchema(f"Kubernetes {version} is older than every schema bundled with kubernetes-validate")
    schema_dir = f"kubernetes-json-schema/v{bundled[-1]}-local-strict"
    # apps/v1 -> apps-v1, rbac.authorization.k8s.io/v1 -> rbac-v1, v1 -> v1
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    try:
        schema = kv.schema_contents(f"{schema_dir}/{kind.lower()}-{group_version}.json", version)
    except FileNotFoundError:
        raise _NoSchema(f"unknown kind {kind} with apiVersion {api_version} (no Kubernetes "
                        f"{kv.major_minor(bundled[-1])} schema and no vendored CRD schema)") from None
    definitions = kv.schema_contents(f"{schema_dir}/_definitions.json", version)
    registry: Registry[Any] = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return Draft202012Validator(schema, registry=registry)


# ------------------------------------------------------------------------------ custom resources

def strictify(schema: Any) -> Any:
    """A copy of an OpenAPI v3 schema where unknown fields are errors.

    Every object node with ``properties`` and without ``x-kubernetes-preserve-unknown-fields``
    (and without its own ``additionalProperties``) gets ``additionalProperties: false``; a node
    marked ``nullable`` also accepts null.
    """
    if isinstance(schema, list):
        return [strictify(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: strictify(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = strictify(value)
        elif key in ("allOf", "anyOf", "oneOf") and isinstance(value, list):
            out[key] = [strictify(s) for s in value]
        else:
            out[key] = value
    if ("properties" in out and not out.get("x-kubernetes-preserve-unknown-fields")
            and "additionalProperties" not in out):
        out["additionalProperties"] = False
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


@functools.cache
def load_crd_schema(filename: str) -> dict[str, Any]:
    """One vendored CRD entry (group, version, kind, scope, source, openAPIV3Schema)."""
    data = resources.files("salmon.cluster").joinpath("schemas", filename).read_bytes()
    entry: dict[str, Any] = json.loads(gzip.decompress(data))
    return entry


@functools.cache
def _crd_validator(filename: str) -> Any:
    import jsonschema

    schema = strictify(load_crd_schema(filename)["openAPIV3Schema"])
    return jsonschema.Draft202012Validator(schema)


def _crd_schema_errors(filename: str, doc: dict[str, Any]) -> list[str]:
    try:
        validator = _crd_validator(filename)
    except ImportError:
        return ["cannot validate custom resources: jsonschema is not installed (install the cluster extra)"]
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    out = []
    for err in errors:
        message = err.message
        if err.validator in ("anyOf", "oneOf") and err.context:
            message += " (" + "; ".join(sorted({c.message for c in err.context})) + ")"
        out.append(_at(_path(err.absolute_path), message))
    return out


# ---------------------------------------------------------------------------------- CEL rules

def _cel_errors(filename: str, doc: dict[str, Any]) -> list[str]:
    """The CRD's CEL rules that ``doc`` breaks (:mod:`salmon.cluster.cel`), each at its path."""
    from salmon.cluster.cel import cel_problems

    return [_at(_path(path) + field_path, message)
            for path, field_path, message in cel_problems(load_crd_schema(filename)["openAPIV3Schema"], doc)]


# ---------------------------------------------------------------------------- hand-written checks

def _custom_metadata_errors(doc: dict[str, Any], scope: str) -> list[str]:
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        return ["metadata: is required and must be a mapping"]
    out = []
    name = meta.get("name")
    if not name and not meta.get("generateName"):
        out.append("metadata.name: is required")
    elif name is not None and (not isinstance(name, str) or len(name) > 253 or not DNS1123_SUBDOMAIN.match(name)):
        out.append(f"metadata.name: {name!r} is not a DNS subdomain (lowercase alphanumerics, '-', '.'; "
                   "at most 253 characters)")
    namespace = meta.get("namespace")
    if namespace is not None:
        if scope == "Cluster":
            out.append("metadata.namespace: must not be set on a cluster-scoped resource")
        elif name_problem(namespace, "namespace"):
            out.append(f"metadata.namespace: {namespace!r} is not a DNS label")
    for key in ("labels", "annotations"):
        value = meta.get(key)
        if value is not None and (not isinstance(value, dict)
                                  or not all(isinstance(v, str) for v in value.values())):
            out.append(f"metadata.{key}: must map strings to strings")
    return out


def _pytorchjob_errors(doc: dict[str, Any]) -> list[str]:
    """Rules the training-operator enforces in code while the CRD types the fields as strings."""
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return []
    out = []
    run_policy = spec.get("runPolicy")
    if isinstance(run_policy, dict) and "cleanPodPolicy" in run_policy:
        policy = run_policy["cleanPodPolicy"]
        if policy not in PYTORCHJOB_CLEAN_POD_POLICIES:
            out.append(f"spec.runPolicy.cleanPodPolicy: {policy!r} is not one of {list(PYTORCHJOB_CLEAN_POD_POLICIES)}")
    replicas = spec.get("pytorchReplicaSpecs")
    if not isinstance(replicas, dict) or not replicas:
        out.append("spec.pytorchReplicaSpecs: at least one replica type (Master or Worker) is required")
        return out
    for rtype, rspec in replicas.items():
        where = f"spec.pytorchReplicaSpecs.{rtype}"
        if rtype not in PYTORCHJOB_REPLICA_TYPES:
            out.append(f"{where}: replica type {rtype!r} is not one of {list(PYTORCHJOB_REPLICA_TYPES)}")
        if not isinstance(rspec, dict):
            continue
        restart = rspec.get("restartPolicy")
        if restart is not None and restart not in PYTORCHJOB_RESTART_POLICIES:
            out.append(f"{where}.restartPolicy: {restart!r} is not one of {list(PYTORCHJOB_RESTART_POLICIES)}")
        if rtype == "Master" and isinstance(rspec.get("replicas"), int) and rspec["replicas"] != 1:
            out.append(f"{where}.replicas: the Master replica count must be 1, got {rspec['replicas']}")
        containers = (((rspec.get("template") or {}).get("spec") or {}).get("containers")) or []
        names = [c.get("name") for c in containers if isinstance(c, dict)]
        if "pytorch" not in names:
            out.append(f"{where}.template.spec.containers: needs a container named 'pytorch' "
                       f"(the operator injects the rendezvous env into it), got {names}")
    return out


def _pipelineversion_errors(doc: dict[str, Any]) -> list[str]:
    """The structure KFP's API server expects in a PipelineVersion (its CRD leaves pipelineSpec open)."""
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return ["spec: is required"]
    out = []
    if not isinstance(spec.get("pipelineName"), str) or not spec.get("pipelineName"):
        out.append("spec.pipelineName: is required (the name of the Pipeline this version belongs to)")
    ir = spec.get("pipelineSpec")
    if not isinstance(ir, dict):
        return [*out, "spec.pipelineSpec: must be the pipeline's IR (a mapping)"]
    for key in ("pipelineInfo", "root", "schemaVersion", "components", "deploymentSpec"):
        if key not in ir:
            out.append(f"spec.pipelineSpec.{key}: is required")
    info = ir.get("pipelineInfo")
    if isinstance(info, dict) and not info.get("name"):
        out.append("spec.pipelineSpec.pipelineInfo.name: is required")
    components: dict[str, Any] = ir["components"] if isinstance(ir.get("components"), dict) else {}
    deployment = ir["deploymentSpec"] if isinstance(ir.get("deploymentSpec"), dict) else {}
    executors: dict[str, Any] = deployment["executors"] if isinstance(deployment.get("executors"), dict) else {}
    for cname, comp in components.items():
        label = comp.get("executorLabel") if isinstance(comp, dict) else None
        if label is not None and label not in executors:
            out.append(f"spec.pipelineSpec.components.{cname}.executorLabel: {label!r} has no executor in "
                       "deploymentSpec.executors")
    for where, dag in _dags(ir):
        for tname, task in (dag.get("tasks") or {}).items():
            ref = ((task or {}).get("componentRef") or {}).get("name")
            if ref is not None and ref not in components:
                out.append(f"{where}.tasks.{tname}.componentRef.name: {ref!r} is not a component of the pipeline")
    platform = spec.get("platformSpec")
    if platform is not None and (not isinstance(platform, dict) or "platforms" not in platform):
        out.append("spec.platformSpec: must be a mapping with 'platforms'")
    return out


def _dags(ir: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    root = ir.get("root")
    if isinstance(root, dict) and isinstance(root.get("dag"), dict):
        yield "spec.pipelineSpec.root.dag", root["dag"]
    for cname, comp in (ir.get("components") or {}).items():
        if isinstance(comp, dict) and isinstance(comp.get("dag"), dict):
            yield f"spec.pipelineSpec.components.{cname}.dag", comp["dag"]


# ------------------------------------------------------------------------------------ public API

def validate_manifest(doc: Mapping[str, Any], *, kubernetes_version: str = DEFAULT_KUBERNETES_VERSION) -> list[str]:
    """Everything wrong with one Kubernetes object, each line prefixed ``Kind/name:``.

    An empty list means valid. Built-in kinds are checked against the strict schemas of
    ``kubernetes_version`` (``major.minor``); the custom resources salmon uses against their
    vendored CRD schemas, CEL rules and hand-written checks; anything else is an error.
    """
    label = _label(doc)
    if not isinstance(doc, Mapping):
        return [f"{label}: a manifest must be a mapping, got {type(doc).__name__}"]
    plain = _plain(doc)
    api_version, kind = plain.get("apiVersion"), plain.get("kind")
    if not isinstance(api_version, str) or not api_version:
        return [f"{label}: apiVersion is required"]
    if not isinstance(kind, str) or not kind:
        return [f"{label}: kind is required"]
    filename = CUSTOM_SCHEMAS.get((api_version, kind))
    if filename is None:
        if _looks_custom(api_version):
            return [f"{label}: unknown kind {kind} with apiVersion {api_version}: no Kubernetes schema and no "
                    f"vendored CRD schema (known custom resources: "
                    f"{', '.join(f'{k} ({v})' for v, k in sorted(CUSTOM_SCHEMAS))})"]
        problems = _builtin_errors(plain, kubernetes_version)
    else:
        cleaned = _drop_nulls(copy.deepcopy(plain))
        scope = load_crd_schema(filename)["scope"]
        problems = _custom_metadata_errors(cleaned, scope)
        problems += _crd_schema_errors(filename, cleaned)
        problems += _cel_errors(filename, cleaned)
        if kind == "PyTorchJob":
            problems += _pytorchjob_errors(cleaned)
        elif kind == "PipelineVersion":
            problems += _pipelineversion_errors(cleaned)
    return [f"{label}: {p}" for p in problems]


def _looks_custom(api_version: str) -> bool:
    """True for groups that are not Kubernetes' own (which have no dot or end in .k8s.io)."""
    group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""
    return "." in group and not group.endswith(".k8s.io")


def validate_manifests(docs: Iterable[Mapping[str, Any]], *,
                       kubernetes_version: str = DEFAULT_KUBERNETES_VERSION) -> list[str]:
    """``validate_manifest`` on each document, plus checks across them.

    Across documents: no two objects share apiVersion group, kind, namespace and name; a
    PipelineVersion names a Pipeline of the set when the set contains Pipelines.
    """
    docs = list(docs)
    problems: list[str] = []
    seen: dict[tuple[str, str, str, str], int] = {}
    pipelines: dict[str | None, set[str]] = {}
    versions: list[tuple[str, str | None, str]] = []
    for index, doc in enumerate(docs):
        problems += validate_manifest(doc, kubernetes_version=kubernetes_version)
        if not isinstance(doc, Mapping):
            continue
        meta: Mapping[str, Any] = doc["metadata"] if isinstance(doc.get("metadata"), Mapping) else {}
        name, namespace = meta.get("name"), meta.get("namespace")
        group = str(doc.get("apiVersion", "")).rsplit("/", 1)[0] if "/" in str(doc.get("apiVersion", "")) else ""
        if isinstance(name, str) and name:
            key = (group, str(doc.get("kind")), str(namespace or ""), name)
            if key in seen:
                problems.append(f"{_label(doc)}: duplicate of document {seen[key] + 1} "
                                f"(same kind, namespace and name)")
            else:
                seen[key] = index
        if doc.get("apiVersion") == "pipelines.kubeflow.org/v2beta1":
            if doc.get("kind") == "Pipeline" and isinstance(name, str):
                pipelines.setdefault(namespace, set()).add(name)
            elif doc.get("kind") == "PipelineVersion":
                spec: Mapping[str, Any] = doc["spec"] if isinstance(doc.get("spec"), Mapping) else {}
                versions.append((_label(doc), namespace, str(spec.get("pipelineName"))))
    if pipelines:
        for label, namespace, pipeline in versions:
            if pipeline not in pipelines.get(namespace, set()):
                problems.append(f"{label}: spec.pipelineName {pipeline!r} matches no Pipeline in namespace "
                                f"{namespace or '<unset>'} of this manifest set")
    return problems
