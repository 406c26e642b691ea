"""Extract the validation schemas of the CRDs salmon renders into ``salmon/cluster/schemas/``.

Usage::

    python scripts/vendor_crd_schemas.py SRC_DIR [SRC_DIR ...] [--out salmon/cluster/schemas]

Every ``*.yaml`` file under the given folders is read; each ``CustomResourceDefinition`` whose
``<plural>.<group>`` is listed in ``WANTED`` is reduced to what the offline validator needs:
group, version, kind, scope and the version's ``openAPIV3Schema`` with its
``x-kubernetes-validations`` (CEL) rules, minus the human-readable ``description`` texts. The
result is written as ``<group>_<plural>.<version>.json.gz`` (deterministic bytes: sorted keys,
gzip mtime 0), so a regeneration from the same sources gives an empty ``git diff``.

``ADDITIONS`` lists fields the vendored copy of a CRD lacks but the pinned SDK emits (see
``salmon/cluster/schemas/README.md``); they are merged into the schema with a note.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path
from typing import Any

import yaml

_TRAINER = "kubeflow/trainer manifests/base/crds, main branch at the v2.3 release (Apache-2.0)"

# CRD name (plural.group) -> the version to vendor and where that copy comes from.
WANTED: dict[str, dict[str, str]] = {
    "trainjobs.trainer.kubeflow.org": {
        "version": "v1alpha1", "source": _TRAINER},
    "clustertrainingruntimes.trainer.kubeflow.org": {
        "version": "v1alpha1", "source": _TRAINER},
    "trainingruntimes.trainer.kubeflow.org": {
        "version": "v1alpha1", "source": _TRAINER},
    "pytorchjobs.kubeflow.org": {
        "version": "v1", "source": "kubeflow/training-operator release-1.9 manifests/base/crds (Apache-2.0)"},
    "pipelines.pipelines.kubeflow.org": {
        "version": "v2beta1", "source": "kubeflow/pipelines manifests/kustomize/base/crds @71faf5ee (Apache-2.0)"},
    "pipelineversions.pipelines.kubeflow.org": {
        "version": "v2beta1", "source": "kubeflow/pipelines manifests/kustomize/base/crds @657c9894 (Apache-2.0)"},
}

# Fields missing from a vendored CRD copy that the pinned tooling writes. Keyed by CRD name, then
# the dotted path of the object schema that gets the extra properties.
ADDITIONS: dict[str, dict[str, dict[str, Any]]] = {
    # kfp 2.17's compiler writes spec.displayName into the Pipeline manifest; the CRD copy above
    # predates it (an API server with that copy prunes the field).
    "pipelines.pipelines.kubeflow.org": {
        "spec": {"displayName": {"type": "string"}},
    },
    # Fields of PipelineVersionSpec in kubeflow/pipelines backend/src/crd/kubernetes/v2beta1/
    # pipelineversion_types.go @daac0995 that the CRD copy above does not list yet.
    "pipelineversions.pipelines.kubeflow.org": {
        "spec": {
            "versionName": {"type": "string", "maxLength": 253,
                            "pattern": "^[a-z0-9]([a-z0-9\\.\\-]*[a-z0-9])?$"},
            "tags": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
}

_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf")


def strip_descriptions(node: Any) -> Any:
    """Drop ``description`` from every schema node (not from ``properties`` named description)."""
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "description":
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: strip_descriptions(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = strip_descriptions(value)
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [strip_descriptions(sub) for sub in value]
        else:
            out[key] = value
    return out


def _apply_additions(name: str, schema: dict[str, Any]) -> None:
    for dotted, extra in ADDITIONS.get(name, {}).items():
        node = schema
        for part in dotted.split("."):
            node = node["properties"][part]
        props = node.setdefault("properties", {})
        for field, sub in extra.items():
            props.setdefault(field, sub)


def extract(crd: dict[str, Any]) -> dict[str, Any] | None:
    """The vendored form of one CRD, or None when it is not one salmon validates."""
    name = crd.get("metadata", {}).get("name", "")
    if name not in WANTED:
        return None
    want = WANTED[name]
    spec = crd["spec"]
    for version in spec["versions"]:
        if version["name"] == want["version"]:
            schema = strip_descriptions(version["schema"]["openAPIV3Schema"])
            _apply_additions(name, schema)
            return {
                "group": spec["group"],
                "version": version["name"],
                "kind": spec["names"]["kind"],
                "plural": spec["names"]["plural"],
                "scope": spec["scope"],
                "source": want["source"],
                "additions": sorted(f"{path}.{field}" for path, extra in ADDITIONS.get(name, {}).items()
                                    for field in extra),
                "openAPIV3Schema": schema,
            }
    raise SystemExit(f"{name}: version {want['version']} not found in the CRD")


def write(entry: dict[str, Any], out_dir: Path) -> Path:
    path = out_dir / f"{entry['group']}_{entry['plural']}.{entry['version']}.json.gz"
    data = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        gz.write(data)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", nargs="+", type=Path, help="folders holding CRD YAML files")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "salmon/cluster/schemas")
    args = parser.parse_args(argv)
    found: set[str] = set()
    for src in args.src:
        for path in sorted(src.glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                    continue
                entry = extract(doc)
                if entry is not None:
                    out = write(entry, args.out)
                    found.add(doc["metadata"]["name"])
                    print(f"{path.name} -> {out.name} ({out.stat().st_size} bytes)")
    missing = sorted(set(WANTED) - found)
    if missing:
        print("not found: " + ", ".join(missing), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
