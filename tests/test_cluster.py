"""salmon.cluster: job and server rendering (validated offline), the launcher against a
Kubernetes emulator (create, wait, adopt on retry, failure reasons from the controller and from
the pods, deadline, SIGTERM), the vLLM server launcher, cancellation (a cancelled run leaves no
job, Deployment or Service behind: SIGTERM, the sweeper, the Workflow ownerReference), the verbs
the code uses against what its Roles grant, and a training stage run end to end through the
TrainJob executor."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("kubernetes")

from salmon.cluster.launch import (  # noqa: E402
    KINDS,
    JobConflict,
    JobFailed,
    JobTimeout,
    Launcher,
    job_state,
    launch_and_wait,
    spec_digest,
    workflow_owner,
)
from salmon.cluster.render import render_job, render_pytorchjob, render_trainjob, render_vllm_server  # noqa: E402
from salmon.cluster.spec import TrainingJobSpec, VLLMServerSpec, Volume, job_name  # noqa: E402

NS = "kubeflow"
TRAINJOBS = {"group": "trainer.kubeflow.org", "version": "v1alpha1", "namespace": NS, "plural": "trainjobs"}


def _spec(**kw: Any) -> TrainingJobSpec:
    values: dict[str, Any] = dict(name="salmon-sft-test", namespace=NS, stage="sft",
                                  stage_args=["--config", "/mnt/models/w/config.yaml"],
                                  volumes=[Volume(name="shared", mount_path="/mnt/models", pvc="cache")])
    values.update(kw)
    return TrainingJobSpec(**values)


# ----------------------------------------------------------------------------- rendering

def test_both_job_kinds_run_the_same_torchrun_command() -> None:
    spec = _spec(nodes=2, procs_per_node=4, gpus=4)
    tj, pj = render_trainjob(spec), render_pytorchjob(spec)
    command = ["torchrun", "--nnodes=2", "--nproc_per_node=4", "-m", "salmon.stages.sft",
               "--config", "/mnt/models/w/config.yaml"]
    assert tj["spec"]["trainer"]["command"] == command
    assert tj["spec"]["trainer"]["numNodes"] == 2 and tj["spec"]["trainer"]["numProcPerNode"] == 4
    master = pj["spec"]["pytorchReplicaSpecs"]["Master"]
    assert master["replicas"] == 1 and pj["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
    container = master["template"]["spec"]["containers"][0]
    assert container["name"] == "pytorch" and container["command"] == command
    assert pj["spec"]["nprocPerNode"] == "4"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert tj["spec"]["trainer"]["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "4"


def test_job_spec_is_checked() -> None:
    with pytest.raises(ValueError, match="procs_per_node"):
        _spec(gpus=8, procs_per_node=2)
    with pytest.raises(ValueError, match="not a valid object name"):
        _spec(name="Salmon_SFT")
    with pytest.raises(ValueError, match="exactly one of pvc or memory"):
        Volume(name="x", mount_path="/x")
    with pytest.raises(ValueError, match="no Kubernetes rendering"):
        render_job(_spec(), "local")


def test_job_names_are_deterministic_and_dns_safe() -> None:
    a = job_name("train_rm", "run-1", "train-rm")
    assert a == job_name("train_rm", "run-1", "train-rm")
    assert a != job_name("train_rm", "run-2", "train-rm")
    assert a.startswith("salmon-train-rm-") and len(a) <= 40
    _spec(name=a, stage="train_rm")  # passes the spec's own name check


def test_rendered_manifests_validate_offline() -> None:
    from salmon.cluster.validate import validate_manifest

    spec = _spec(nodes=2, procs_per_node=2, gpus=2, deadline_seconds=3600, priority_class="high",
                 volumes=[Volume(name="shared", mount_path="/mnt/models", pvc="cache"),
                          Volume(name="dshm", mount_path="/dev/shm", memory="8Gi")])
    server = VLLMServerSpec(name="salmon-vllm-test", model="/mnt/models/base", gpus=2, tensor_parallel_size=2,
                            lora_modules={"sft": "/mnt/models/sft"}, runtime_lora_updates=True, max_model_len=4096)
    for doc in [render_trainjob(spec), render_pytorchjob(spec), *render_vllm_server(server)]:
        assert validate_manifest(doc) == [], doc["kind"]
    broken = render_trainjob(spec)
    broken["spec"]["trainer"]["numProcPerNode"] = 0
    assert validate_manifest(broken), "numProcPerNode >= 1 is a CEL rule of the TrainJob CRD"


def test_vllm_server_renders_what_sampling_needs() -> None:
    server = VLLMServerSpec(name="salmon-vllm-test", model="s3://models/base", model_pvc=None, gpus=1,
                            lora_modules={"sft": "/mnt/models/sft"}, runtime_lora_updates=True)
    deployment, service = render_vllm_server(server)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert "--enable-prefix-caching" in args and args[args.index("--max-logprobs") + 1] == "20"
    assert args[args.index("--lora-modules") + 1] == "sft=/mnt/models/sft"
    assert args[args.index("--load-format") + 1] == "runai_streamer"
    env = {e["name"]: e for e in container["env"]}
    assert env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "salmon-vllm-api-key", "key": "api-key"}
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"]["value"] == "True"
    assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] >= 1800
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):  # no process started per probe
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
        assert "exec" not in container[probe]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        VLLMServerSpec(name="x", model="/m", gpus=1, tensor_parallel_size=2)


def test_job_state_and_workflow_owner() -> None:
    tj, pj = KINDS["trainjob"], KINDS["pytorchjob"]
    assert job_state({}, tj) == ("running", "")
    done = {"status": {"conditions": [{"type": "Created", "status": "True"},
                                      {"type": "Complete", "status": "True", "reason": "JobsCompleted"}]}}
    assert job_state(done, tj)[0] == "succeeded"
    assert job_state(done, pj)[0] == "running", "PyTorchJob says Succeeded, not Complete"
    failed = {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                         "message": "pod OOMKilled"}]}}
    assert job_state(failed, pj) == ("failed", "BackoffLimitExceeded: pod OOMKilled")
    assert job_state({"status": {"conditions": [{"type": "Failed", "status": "False"}]}}, pj)[0] == "running"
    pod = {"metadata": {"ownerReferences": [{"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
                                             "name": "salmon-abc", "uid": "u-1"}]}}
    assert workflow_owner(pod) == {"api_version": "argoproj.io/v1alpha1", "kind": "Workflow",
                                   "name": "salmon-abc", "uid": "u-1"}
    assert workflow_owner({"metadata": {}}) is None


def test_remap_paths_rewrites_paths_and_paths_below_them() -> None:
    from salmon.cluster.executor import remap_paths

    cfg = {"data": "/in/a.jsonl", "model": "/in/model", "adapter": "/in/model/adapter", "other": "/in/modelx",
           "list": ["/in/a.jsonl", 3], "nested": {"out": "/out/sft"}}
    got = remap_paths(cfg, {"/in/a.jsonl": "/pvc/a.jsonl", "/in/model": "/pvc/m", "/out/sft": "/pvc/o"})
    assert got == {"data": "/pvc/a.jsonl", "model": "/pvc/m", "adapter": "/pvc/m/adapter", "other": "/in/modelx",
                   "list": ["/pvc/a.jsonl", 3], "nested": {"out": "/pvc/o"}}


def test_job_render_cli_prints_a_valid_manifest_and_refuses_bad_settings(capsys: pytest.CaptureFixture[str]) -> None:
    from salmon.cli import main

    assert main(["job", "render", "--stage", "ppo", "--executor", "pytorchjob", "nodes=2", "gpus=8"]) == 0
    doc = yaml.safe_load(capsys.readouterr().out)
    assert doc["kind"] == "PyTorchJob" and doc["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
    assert main(["job", "render", "--stage", "ppo", "nodez=2"]) == 2
    err = capsys.readouterr().err
    assert "nodez" in err and "nodes" in err, err
    assert main(["sampler", "render", "model=/mnt/models/base", "gpus=0"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["kind"] for d in docs] == ["Deployment", "Service"]
    cpu_args = docs[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--no-enable-chunked-prefill" in cpu_args, "seeded sampling on the CPU build needs whole prefills"
    assert main(["sampler", "render"]) == 2
    assert "model=" in capsys.readouterr().err
    assert main(["job", "render", "--stage", "sft", "image=ghcr.io/salmon-mlops/salmon-runtime:latest"]) == 2
    assert "deployment policy" in capsys.readouterr().err
    assert main(["sampler", "render", "model=/m", "image=vllm/vllm-openai"]) == 2
    assert "has no tag" in capsys.readouterr().err


def test_dry_runs_print_plain_yaml_and_what_the_pipeline_deploys(capsys: pytest.CaptureFixture[str]) -> None:
    """No YAML anchors or aliases (a reviewer reads every value where it applies), and the
    sampler's dry run tolerates the GPU taint as the pipeline's serve_sampler does."""
    from salmon.cli import main
    from salmon.cluster.spec import gpu_tolerations

    for argv in (["job", "render", "--stage", "ppo", "--executor", "pytorchjob", "nodes=2", "gpus=8"],
                 ["job", "render", "--stage", "sft", "--executor", "trainjob", "gpus=1"],
                 ["sampler", "render", "model=/mnt/models/base", "gpus=1"]):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert not re.search(r"[&*]id\d{3}", out), f"{argv}: anchors or aliases in\n{out}"
    pod = next(yaml.safe_load_all(out))["spec"]["template"]["spec"]
    assert pod["tolerations"] == [t.model_dump(exclude_none=True) for t in gpu_tolerations(1, "nvidia.com/gpu")]
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert main(["sampler", "render", "model=/mnt/models/base", "gpus=0"]) == 0
    assert "tolerations" not in next(yaml.safe_load_all(capsys.readouterr().out))["spec"]["template"]["spec"]


def test_safe_dump_writes_repeated_objects_out() -> None:
    from salmon.core.yamlio import safe_dump, safe_load

    shared = {"a": 1}
    text = safe_dump({"x": shared, "y": shared, "z": [1, 2]})
    assert "&" not in text and "*" not in text
    assert safe_load(text) == {"x": {"a": 1}, "y": {"a": 1}, "z": [1, 2]}
    assert list(safe_load(text)) == ["x", "y", "z"]  # insertion order kept


# ----------------------------------------------------------------------------- the emulator

@pytest.fixture()
def emu():  # type: ignore[no-untyped-def]
    pytest.importorskip("kmock")
    from k8s_emulator import emulator

    with emulator() as e:
        yield e


def _custom(emu: Any) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(emu.api_client())


def _job_api(executor: str) -> dict[str, str]:
    kind = KINDS[executor]
    return {"group": kind.group, "version": kind.version, "namespace": NS, "plural": kind.plural}


def _set_condition(emu: Any, name: str, ctype: str, reason: str = "", message: str = "",
                   executor: str = "trainjob") -> None:
    cond = {"type": ctype, "status": "True", "reason": reason, "message": message}
    _custom(emu).patch_namespaced_custom_object(name=name, body={"status": {"conditions": [cond]}},
                                                **_job_api(executor))


def _when_created(emu: Any, name: str, action: Any, timeout: float = 20.0,
                  executor: str = "trainjob") -> threading.Thread:
    """Play the controller: once the job exists, run ``action()``."""
    def watch() -> None:
        api = _custom(emu)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                api.get_namespaced_custom_object(name=name, **_job_api(executor))
            except Exception:
                time.sleep(0.05)
                continue
            action()
            return

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def _trainjob(name: str = "salmon-sft-emu") -> dict[str, Any]:
    return render_trainjob(_spec(name=name))


def test_launcher_creates_waits_streams_the_master_log_and_succeeds(emu: Any) -> None:
    from kubernetes import client

    name = "salmon-sft-emu"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{name}-node-0-0", "namespace": NS,
           "labels": KINDS["trainjob"].master_labels(name)}, "spec": {"containers": [{"name": "node", "image": "x"}]}}
    client.CoreV1Api(emu.api_client()).create_namespaced_pod(NS, pod)
    emu.serve_log(NS, f"{name}-node-0-0", "[sft] rank 0 of 2\n[sft] step 1 loss 2.3\n")
    lines: list[str] = []
    t = _when_created(emu, name, lambda: (time.sleep(0.3), _set_condition(emu, name, "Complete", "JobsCompleted")))
    job = launch_and_wait(_trainjob(name), "trainjob", api_client=emu.api_client(), poll_seconds=0.1,
                          out=lines.append)
    t.join()
    assert job_state(job, KINDS["trainjob"])[0] == "succeeded"
    assert any("created" in line for line in lines)
    assert f"[{name}-node-0-0] [sft] step 1 loss 2.3" in lines
    assert sum("step 1 loss" in line for line in lines) == 1, "each log line is printed once"
    stored = _custom(emu).get_namespaced_custom_object(name=name, **TRAINJOBS)
    assert stored["metadata"]["annotations"]["salmon.ai/spec-digest"] == spec_digest(_trainjob(name))


def test_a_retry_adopts_the_running_job_and_recreates_a_failed_one(emu: Any) -> None:
    name = "salmon-sft-retry"
    launcher = Launcher("trainjob", NS, api_client=emu.api_client(), poll_seconds=0.1, out=lambda _: None)
    first, how = launcher.create_or_adopt(_trainjob(name))
    assert how == "created"
    uid = first["metadata"].get("uid")
    again, how = launcher.create_or_adopt(_trainjob(name))
    assert how == "adopted" and again["metadata"].get("uid") == uid
    other = _trainjob(name)
    other["spec"]["trainer"]["image"] = "ghcr.io/salmon-mlops/salmon-runtime:other"
    with pytest.raises(JobConflict, match="different spec"):
        launcher.create_or_adopt(other)
    _set_condition(emu, name, "Failed", "PodFailed", "exit code 1")
    fresh, how = launcher.create_or_adopt(_trainjob(name))
    assert how == "recreated"
    assert job_state(fresh, KINDS["trainjob"])[0] == "running", "the recreated job starts without conditions"


def test_a_failed_job_raises_with_the_controllers_reason(emu: Any) -> None:
    name = "salmon-sft-fails"
    t = _when_created(emu, name, lambda: _set_condition(emu, name, "Failed", "BackoffLimitExceeded",
                                                        "node-0 OOMKilled (exit code 137)"))
    with pytest.raises(JobFailed, match="BackoffLimitExceeded: node-0 OOMKilled"):
        launch_and_wait(_trainjob(name), "trainjob", api_client=emu.api_client(), poll_seconds=0.1,
                        out=lambda _: None)
    t.join()


def test_a_job_past_its_deadline_is_deleted(emu: Any) -> None:
    name = "salmon-sft-slow"
    with pytest.raises(JobTimeout, match="deadline"):
        launch_and_wait(_trainjob(name), "trainjob", api_client=emu.api_client(), poll_seconds=0.1,
                        deadline_seconds=0.5, out=lambda _: None)
    launcher = Launcher("trainjob", NS, api_client=emu.api_client())
    assert launcher.get(name) is None


SIGTERM_SCRIPT = """
import sys, yaml
from kubernetes import client
from salmon.cluster.launch import launch_and_wait
cfg = client.Configuration(); cfg.host = sys.argv[1]
launch_and_wait(yaml.safe_load(open(sys.argv[2])), sys.argv[3], api_client=client.ApiClient(cfg), poll_seconds=0.1)
"""


def _sigterm_once(proc: subprocess.Popen[str], created: Callable[[], bool], what: str) -> str:
    """Wait until the step process has created ``what``, SIGTERM it; it must exit 143. Returns
    its output."""
    end = time.monotonic() + 60
    while not created():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < end, f"{what} was never created"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 143, out
    return out


@pytest.mark.parametrize("executor", ["trainjob", "pytorchjob"])
def test_sigterm_deletes_the_job_before_the_step_exits(emu: Any, tmp_path: Path, executor: str) -> None:
    name = f"salmon-sft-cancel-{executor}"
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(render_job(_spec(name=name), executor)))
    proc = subprocess.Popen([sys.executable, "-c", SIGTERM_SCRIPT, emu.url, str(manifest), executor],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    launcher = Launcher(executor, NS, api_client=emu.api_client())
    out = _sigterm_once(proc, lambda: launcher.get(name) is not None, "the job")
    assert "SIGTERM: deleting" in out
    assert launcher.get(name) is None, "a cancelled step leaves no job behind"


def test_the_vllm_server_launcher_waits_for_ready_and_cleans_up_only_its_run(emu: Any) -> None:
    from kubernetes import client

    from salmon.cluster.sampler import RUN_LABEL, delete_servers, deploy_server, run_label

    apps = client.AppsV1Api(emu.api_client())
    spec = VLLMServerSpec(name="salmon-vllm-emu", namespace=NS, model="/mnt/models/base", gpus=0)

    def become_ready() -> None:
        end = time.monotonic() + 20
        while time.monotonic() < end:
            try:
                apps.read_namespaced_deployment(spec.name, NS)
                apps.patch_namespaced_deployment(spec.name, NS, {"status": {"readyReplicas": 1}})
                return
            except Exception:
                time.sleep(0.05)

    t = threading.Thread(target=become_ready, daemon=True)
    t.start()
    url = deploy_server(spec, api_client=emu.api_client(), run_id="run-a", poll_seconds=0.1, timeout_seconds=30,
                        out=lambda _: None)
    t.join()
    assert url == "http://salmon-vllm-emu.kubeflow.svc:8000/v1"
    dep = apps.read_namespaced_deployment(spec.name, NS)
    assert dep.metadata.labels[RUN_LABEL] == run_label("run-a")
    other = render_vllm_server(VLLMServerSpec(name="salmon-vllm-other", namespace=NS, model="/m", gpus=0,
                                              labels={RUN_LABEL: run_label("run-b")}))[0]
    apps.create_namespaced_deployment(NS, other)
    removed = delete_servers(api_client=emu.api_client(), namespace=NS, run_id="run-a", out=lambda _: None)
    assert sorted(removed) == ["deployments/salmon-vllm-emu", "services/salmon-vllm-emu"]
    names = [d.metadata.name for d in apps.list_namespaced_deployment(NS).items]
    assert names == ["salmon-vllm-other"], "another run's server is left alone"


def test_a_training_stage_runs_end_to_end_through_the_trainjob_executor(
        emu: Any, tmp_path: Path, tiny_model: str) -> None:
    """The launcher side for real: inputs copied to the shared volume, the resolved config written
    there, the TrainJob created; a stand-in controller runs the job's command (torchrun, one
    process) and marks it Complete; outputs come back to the step's artifact paths."""
    pytest.importorskip("torch")
    from salmon.cluster.executor import ClusterSettings, run_stage_remote
    from salmon.core.config import SFTConfig, build_config
    from salmon.core.io import write_jsonl
    from salmon.core.records import SFTExample
    from salmon.nano.world import make_prompts

    step = tmp_path / "step"
    data = step / "sft_data"
    write_jsonl(data, [SFTExample(example_id=p.prompt_id, instruction=p.instruction, prompt_type=p.prompt_type,
                                  response="A short answer.\n\n### User\n", source="nano")
                       for p in make_prompts(8, seed=1)])
    out_dir = step / "sft"
    cfg = build_config(SFTConfig, stage="sft", preset="nano", values={
        "data": str(data), "base_model": tiny_model, "output_dir": str(out_dir), "max_steps": 2, "batch_size": 4,
        "micro_batch_size": 4, "lora_r": 2})
    shared = tmp_path / "pvc"
    settings = ClusterSettings(namespace=NS, mount_path=str(shared), gpus=0, poll_seconds=0.1)

    def controller() -> None:
        api = _custom(emu)
        end = time.monotonic() + 60
        while time.monotonic() < end:
            jobs = api.list_namespaced_custom_object(**TRAINJOBS)["items"]
            if jobs:
                job = jobs[0]
                command = job["spec"]["trainer"]["command"]
                env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
                env.update({e["name"]: e["value"] for e in job["spec"]["trainer"]["env"] if "value" in e})
                env["HOME"] = str(tmp_path)
                rc = subprocess.run([sys.executable, "-m", "torch.distributed.run", *command[1:]], env=env,
                                    capture_output=True, text=True).returncode
                kind = "Complete" if rc == 0 else "Failed"
                _set_condition(emu, job["metadata"]["name"], kind, f"exit {rc}")
                return
            time.sleep(0.1)

    t = threading.Thread(target=controller, daemon=True)
    t.start()
    manifest = step / "job.yaml"
    result = run_stage_remote("sft", cfg, "trainjob", settings, run_id="task-key", task="sft",
                              inputs={"sft_data": str(data), "base_model": tiny_model},
                              outputs={"sft": str(out_dir)}, manifest_out=str(manifest),
                              api_client=emu.api_client(), out=lambda _: None)
    t.join()
    name = job_name("sft", "task-key", "sft")
    work = shared / "salmon-jobs" / name
    resolved = yaml.safe_load((work / "config.yaml").read_text())
    assert resolved["data"] == str(work / "in" / "sft_data" / "sft_data")
    assert resolved["base_model"] == str(work / "in" / "base_model" / Path(tiny_model).name)
    assert resolved["output_dir"] == str(work / "out" / "sft" / "sft")
    assert (out_dir / "adapter" / "adapter_config.json").is_file(), "the adapter came back to the step"
    assert result["metrics"]["steps"] == 2
    assert result["outputs"]["adapter"].startswith(str(out_dir))
    assert yaml.safe_load(manifest.read_text())["metadata"]["name"] == name
    assert json.loads((work / "result.json").read_text())["metrics"]["steps"] == 2


def test_serve_and_stop_sampler_tasks_in_deploy_mode(emu: Any, tmp_path: Path) -> None:
    """What the pipeline's serve_sampler / stop_sampler tasks do with sampler=deploy: copy the base
    model and the SFT adapter to the shared volume, serve them (adapter as LoRA 'sft') under a
    content-derived name, hand sample/label the endpoint, and remove the server at the end."""
    from kubernetes import client

    from salmon.tasks.infra import serve_sampler_task, stop_sampler_task

    base, adapter = tmp_path / "base", tmp_path / "sft" / "adapter"
    base.mkdir()
    (base / "config.json").write_text("{}")
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    apps = client.AppsV1Api(emu.api_client())
    cluster = {"namespace": NS, "mount_path": str(tmp_path / "pvc"), "gpus": 0}
    assert serve_sampler_task("none", endpoint="", base_model=str(base), adapter=str(adapter), run_id="r",
                              cluster=cluster, api_key_secret="k") == "{}"

    def become_ready() -> None:
        end = time.monotonic() + 30
        while time.monotonic() < end:
            items = apps.list_namespaced_deployment(NS).items
            if items:
                apps.patch_namespaced_deployment(items[0].metadata.name, NS, {"status": {"readyReplicas": 1}})
                return
            time.sleep(0.05)

    t = threading.Thread(target=become_ready, daemon=True)
    t.start()
    info = json.loads(serve_sampler_task("deploy", endpoint="", base_model=str(base), adapter=str(adapter),
                                         run_id="run-x", cluster=cluster, api_key_secret="my-key",
                                         api_client=emu.api_client()))
    t.join()
    [dep] = apps.list_namespaced_deployment(NS).items
    name = dep.metadata.name
    assert info == {"endpoint": f"http://{name}.{NS}.svc:8000/v1", "served_model": "sft",
                    "adapter_dir": str(tmp_path / "pvc" / "salmon-serve" / name / "served")}
    env = {e.name: e.value for e in dep.spec.template.spec.containers[0].env}
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True", "ppo can load its adapter at run time"
    args = dep.spec.template.spec.containers[0].args
    assert args[args.index("--lora-modules") + 1] == f"sft={tmp_path / 'pvc' / 'salmon-serve' / name / 'sft'}"
    assert (tmp_path / "pvc" / "salmon-serve" / name / "base" / "config.json").is_file()
    assert stop_sampler_task("endpoint", run_id="run-x") == []
    # rollout_backend=openai: the task after label leaves the server up for ppo and eval_policy
    assert stop_sampler_task("deploy", run_id="run-x", namespace=NS, api_client=emu.api_client(), keep=True) == []
    assert len(apps.list_namespaced_deployment(NS).items) == 1
    assert stop_sampler_task("deploy", run_id="run-x", namespace=NS, api_client=emu.api_client()) == [
        f"deployments/{name}", f"services/{name}"]
    assert apps.list_namespaced_deployment(NS).items == []


# ------------------------------------------------------------------- pod reasons on failure

def _pod(name: str, labels: dict[str, str], status: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS, "labels": labels},
            "spec": {"containers": [{"name": "node", "image": "x"}]}, "status": status}


OOM_KILLED = {"phase": "Running", "containerStatuses": [{
    "name": "pytorch", "ready": False, "restartCount": 1, "image": "x", "imageID": "", "state": {"waiting": {
        "reason": "CrashLoopBackOff", "message": "back-off 10s restarting failed container"}},
    "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]}


@pytest.mark.parametrize("executor", ["trainjob", "pytorchjob"])
def test_a_failed_job_names_the_pods_reason_not_just_the_controllers(emu: Any, executor: str) -> None:
    """The controllers' Failed conditions rarely say why (JobSet: 'jobset failed'; PyTorchJob: '1
    Master replica(s) failed'); the launcher adds what the pods said, even when the controller
    deleted the pods before marking the job Failed (PyTorchJob cleanPodPolicy: All)."""
    from kubernetes import client

    name = f"salmon-sft-oom-{executor}"
    core = client.CoreV1Api(emu.api_client())
    pod = f"{name}-master-0"
    message = {"trainjob": ("JobSetFailed", "jobset failed"),
               "pytorchjob": ("PyTorchJobFailed", f"PyTorchJob {name} is failed because 1 Master replica(s) failed.")}

    def controller() -> None:
        core.create_namespaced_pod(NS, _pod(pod, KINDS[executor].master_labels(name), OOM_KILLED))
        time.sleep(0.4)  # the launcher polls every 0.1 s
        if executor == "pytorchjob":
            core.delete_namespaced_pod(pod, NS)
        _set_condition(emu, name, "Failed", *message[executor], executor=executor)

    lines: list[str] = []
    t = _when_created(emu, name, controller, executor=executor)
    with pytest.raises(JobFailed) as failed:
        launch_and_wait(render_job(_spec(name=name), executor), executor, api_client=emu.api_client(),
                        poll_seconds=0.1, out=lines.append)
    t.join()
    text = str(failed.value)
    assert message[executor][1] in text, text
    assert f"pod {pod}: container pytorch OOMKilled (exit code 137)" in text, text
    assert f"pod {pod}: container pytorch CrashLoopBackOff: back-off 10s restarting failed container" in text
    assert sum("OOMKilled" in line for line in lines if line.startswith("[launcher]")) == 1, lines


def test_a_pod_stuck_pulling_its_image_is_reported_and_named_at_the_deadline(emu: Any) -> None:
    from kubernetes import client

    name = "salmon-sft-pull"
    core = client.CoreV1Api(emu.api_client())
    pulling = {"phase": "Pending", "containerStatuses": [{
        "name": "node", "ready": False, "restartCount": 0, "image": "x", "imageID": "", "state": {"waiting": {
            "reason": "ImagePullBackOff",
            "message": 'Back-off pulling image "ghcr.io/salmon-mlops/salmon-runtime:0.1.0"'}}}]}
    unschedulable = {"phase": "Pending", "conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]}
    core.create_namespaced_pod(NS, _pod(f"{name}-node-0-0", KINDS["trainjob"].master_labels(name), pulling))
    core.create_namespaced_pod(NS, _pod(f"{name}-node-0-1", {"jobset.sigs.k8s.io/jobset-name": name}, unschedulable))
    core.create_namespaced_pod(NS, _pod("someone-else", {"jobset.sigs.k8s.io/jobset-name": "other"}, unschedulable))
    lines: list[str] = []
    with pytest.raises(JobTimeout) as timeout:
        launch_and_wait(_trainjob(name), "trainjob", api_client=emu.api_client(), poll_seconds=0.1,
                        deadline_seconds=0.5, out=lines.append)
    text = str(timeout.value)
    assert f'pod {name}-node-0-0: container node ImagePullBackOff: Back-off pulling image "ghcr.io/' in text
    assert f"pod {name}-node-0-1: Unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu." in text
    assert "someone-else" not in text, "only the job's own pods"
    assert any("ImagePullBackOff" in line for line in lines), "reported while waiting, not only at the end"


def test_pod_problems_reads_every_kind_of_status() -> None:
    from salmon.cluster.launch import pod_problems

    def pod(status: dict[str, Any]) -> dict[str, Any]:
        return {"metadata": {"name": "p"}, "status": status}

    assert pod_problems(pod({"phase": "Running", "containerStatuses": [
        {"name": "c", "state": {"running": {}}}]})) == []
    assert pod_problems(pod({"phase": "Pending", "containerStatuses": [
        {"name": "c", "state": {"waiting": {"reason": "ContainerCreating"}}}]})) == []
    assert pod_problems(pod({"phase": "Failed", "reason": "Evicted",
                             "message": "The node was low on resource: memory."})) == [
        "pod p: Evicted: The node was low on resource: memory."]
    assert pod_problems(pod({"containerStatuses": [{"name": "c", "state": {"waiting": {
        "reason": "CreateContainerConfigError", "message": 'secret "salmon-s3" not found'}}}]})) == [
        'pod p: container c CreateContainerConfigError: secret "salmon-s3" not found']
    assert pod_problems(pod({"containerStatuses": [{"name": "c", "state": {"terminated": {
        "reason": "Error", "exitCode": 1, "message": "Traceback ...\nValueError: bad"}}}]})) == [
        "pod p: container c Error (exit code 1): Traceback ... ValueError: bad"]
    assert pod_problems(pod({"containerStatuses": [{"name": "c", "state": {"terminated": {
        "reason": "Completed", "exitCode": 0}}}]})) == []


# ---------------------------------------------------------------------- cancellation, cleanup

RUN = "salmon-pipeline-abc12"
RUN_UID = "3f6a1c2e-run-uid"


def _start_run(emu: Any, name: str = RUN, uid: str = RUN_UID) -> dict[str, str]:
    """A KFP run as Kubernetes sees it: the Argo Workflow (Running) and one step pod it owns.
    Returns the step's environment (KFP_POD_NAME, as KFP sets it)."""
    from kubernetes import client

    _custom(emu).create_namespaced_custom_object(
        "argoproj.io", "v1alpha1", NS, "workflows",
        {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
         "metadata": {"name": name, "namespace": NS, "uid": uid}, "spec": {}, "status": {"phase": "Running"}})
    step = {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": f"{name}-system-container-impl-1", "namespace": NS,
        "ownerReferences": [{"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "name": name, "uid": uid,
                             "controller": True, "blockOwnerDeletion": True}]},
        "spec": {"containers": [{"name": "main", "image": "x"}]}}
    client.CoreV1Api(emu.api_client()).create_namespaced_pod(NS, step)
    return {"KFP_POD_NAME": step["metadata"]["name"]}


def _cancel_run(emu: Any, name: str = RUN) -> None:
    """What KFP does to cancel a run: terminate its Workflow (activeDeadlineSeconds: 0); Argo then
    fails it (and signals the running steps, which the tests do themselves)."""
    _custom(emu).patch_namespaced_custom_object("argoproj.io", "v1alpha1", NS, "workflows", name,
                                                {"spec": {"activeDeadlineSeconds": 0}, "status": {"phase": "Failed"}})


def _owned_by(emu: Any, uid: str = RUN_UID) -> list[str]:
    """Every Deployment, Service, TrainJob and PyTorchJob the Workflow ``uid`` owns."""
    from kubernetes import client

    api = emu.api_client()
    apps, core, custom = client.AppsV1Api(api), client.CoreV1Api(api), client.CustomObjectsApi(api)
    found = []
    for kind, items in (("deployments", apps.list_namespaced_deployment(NS).items),
                        ("services", core.list_namespaced_service(NS).items)):
        found += [f"{kind}/{x.metadata.name}" for x in items
                  if any(r.uid == uid for r in x.metadata.owner_references or [])]
    for executor in KINDS:
        a = _job_api(executor)
        for x in custom.list_namespaced_custom_object(a["group"], a["version"], NS, a["plural"])["items"]:
            if any(r["uid"] == uid for r in x["metadata"].get("ownerReferences") or []):
                found.append(f"{a['plural']}/{x['metadata']['name']}")
    return found


def _serve(emu: Any, name: str, run_id: str, owner: dict[str, str] | None) -> None:
    """What serve_sampler does on a cluster: deploy the server (owned by the run's Workflow) and
    return once it is ready; the test plays the Deployment controller."""
    from kubernetes import client

    from salmon.cluster.sampler import deploy_server
    from salmon.cluster.spec import OwnerRef

    apps = client.AppsV1Api(emu.api_client())

    def become_ready() -> None:
        end = time.monotonic() + 20
        while time.monotonic() < end:
            try:
                apps.patch_namespaced_deployment(name, NS, {"status": {"readyReplicas": 1}})
                return
            except Exception:
                time.sleep(0.05)

    t = threading.Thread(target=become_ready, daemon=True)
    t.start()
    spec = VLLMServerSpec(name=name, namespace=NS, model="/mnt/models/base", gpus=0,
                          owner=OwnerRef(**owner) if owner else None)
    deploy_server(spec, api_client=emu.api_client("launcher"), run_id=run_id, poll_seconds=0.1,
                  timeout_seconds=20, out=lambda _: None)
    t.join()


CANCEL_SCRIPT = """
import os, sys, yaml
from kubernetes import client
from salmon.cluster.launch import launch_and_wait, own_pod_owner
from salmon.cluster.render import render_job
from salmon.cluster.spec import OwnerRef, TrainingJobSpec
cfg = client.Configuration(); cfg.host = sys.argv[1]
api = client.ApiClient(cfg)
owner = own_pod_owner(api, "kubeflow", os.environ["KFP_POD_NAME"])
spec = TrainingJobSpec(name=sys.argv[2], namespace="kubeflow", stage="sft", owner=OwnerRef(**owner))
launch_and_wait(render_job(spec, sys.argv[3]), sys.argv[3], api_client=api, poll_seconds=0.1)
"""


def _launch_in_a_step(emu: Any, env: dict[str, str], name: str, executor: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", CANCEL_SCRIPT, emu.url, name, executor],
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    launcher = Launcher(executor, NS, api_client=emu.api_client())
    end = time.monotonic() + 60
    while launcher.get(name) is None:
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < end, "the job was never created"
        time.sleep(0.1)
    return proc


@pytest.mark.parametrize("what", ["trainjob", "pytorchjob", "vllm"])
def test_a_cancelled_run_leaves_nothing_behind(emu: Any, what: str) -> None:
    """Cancel a run while its TrainJob / PyTorchJob runs (the launching step is alive: Argo's
    SIGTERM makes it delete the job), or after serve_sampler has returned with the vLLM server
    up (no step of ours is alive: the sweeper removes the Deployment and Service because their
    Workflow is terminated). Another run's server and an unowned one are left alone."""
    from salmon.cluster.sweep import sweep

    env = _start_run(emu)
    if what == "vllm":
        from salmon.cluster.launch import own_pod_owner

        owner = own_pod_owner(emu.api_client(), NS, env["KFP_POD_NAME"])
        _serve(emu, "salmon-vllm-cancelled", "run-a", owner)
        other = _start_run(emu, "salmon-pipeline-other", "other-uid")
        _serve(emu, "salmon-vllm-other-run", "run-b", own_pod_owner(emu.api_client(), NS, other["KFP_POD_NAME"]))
        _serve(emu, "salmon-vllm-unowned", "run-c", None)
        assert sorted(_owned_by(emu)) == ["deployments/salmon-vllm-cancelled", "services/salmon-vllm-cancelled"]
        assert sweep(emu.api_client(), NS, out=lambda _: None) == [], "nothing is swept while the run goes on"
        _cancel_run(emu)  # sample or label is running; serve_sampler is long gone
    else:
        name = f"salmon-sft-{what}-cancelled"
        proc = _launch_in_a_step(emu, env, name, what)
        assert _owned_by(emu) == [f"{what}s/{name}"], "the job is owned by the run's Workflow"
        _cancel_run(emu)
        proc.send_signal(signal.SIGTERM)  # Argo signals the running step
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 143 and "SIGTERM: deleting" in out, out
    removed = sweep(emu.api_client(), NS, out=lambda _: None)  # the CronJob's next round
    assert _owned_by(emu) == [], "a cancelled run leaves nothing behind"
    if what == "vllm":
        assert sorted(removed) == ["deployments/salmon-vllm-cancelled", "services/salmon-vllm-cancelled"]
        from kubernetes import client

        left = sorted(d.metadata.name for d in client.AppsV1Api(emu.api_client()).list_namespaced_deployment(NS).items)
        assert left == ["salmon-vllm-other-run", "salmon-vllm-unowned"]
    else:
        assert removed == [], "the step had already deleted its job"


def test_a_step_killed_before_its_handler_ran_is_backed_up_by_the_sweeper(emu: Any) -> None:
    """SIGKILL (grace period over, node lost): the job outlives its step. The sweeper leaves it
    while the run goes on (a retry of the step adopts it) and deletes it once the run is over."""
    from salmon.cluster.sweep import sweep

    env = _start_run(emu)
    name = "salmon-sft-killed"
    proc = _launch_in_a_step(emu, env, name, "trainjob")
    proc.kill()
    proc.communicate(timeout=30)
    assert _owned_by(emu) == [f"trainjobs/{name}"]
    assert sweep(emu.api_client(), NS, out=lambda _: None) == []
    again, how = Launcher("trainjob", NS, api_client=emu.api_client()).create_or_adopt(
        _custom(emu).get_namespaced_custom_object(name=name, **TRAINJOBS))
    assert how == "adopted", "a retry of the step adopts the job"
    _cancel_run(emu)
    lines: list[str] = []
    assert sweep(emu.api_client(), NS, out=lines.append) == [f"trainjobs/{name}"]
    assert f"deleted trainjobs/{name} (Workflow {RUN}: terminated)" in "\n".join(lines)
    assert _owned_by(emu) == []


def test_sigterm_while_the_vllm_server_starts_removes_it(emu: Any, tmp_path: Path) -> None:
    """Cancelled during serve_sampler (the server is loading its model): the step removes it."""
    from kubernetes import client

    script = """
import sys
from kubernetes import client
from salmon.cluster.sampler import deploy_server
from salmon.cluster.spec import VLLMServerSpec
cfg = client.Configuration(); cfg.host = sys.argv[1]
deploy_server(VLLMServerSpec(name="salmon-vllm-starting", namespace="kubeflow", model="/m", gpus=0),
              api_client=client.ApiClient(cfg), run_id="run-s", poll_seconds=0.1)
"""
    proc = subprocess.Popen([sys.executable, "-c", script, emu.url], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    apps, core = client.AppsV1Api(emu.api_client()), client.CoreV1Api(emu.api_client())
    out = _sigterm_once(proc, lambda: bool(core.list_namespaced_service(NS).items), "the server")
    assert "removed deployments/salmon-vllm-starting, services/salmon-vllm-starting" in out
    assert apps.list_namespaced_deployment(NS).items == [] and core.list_namespaced_service(NS).items == []


def test_the_vllm_launcher_adopts_its_server_on_retry_and_names_pod_problems(emu: Any) -> None:
    from kubernetes import client

    from salmon.cluster.sampler import deploy_server

    _serve(emu, "salmon-vllm-retry", "run-r", None)
    lines: list[str] = []
    assert deploy_server(VLLMServerSpec(name="salmon-vllm-retry", namespace=NS, model="/mnt/models/base", gpus=0),
                         api_client=emu.api_client(), run_id="run-r", poll_seconds=0.1, out=lines.append)
    assert "[sampler] deployments/salmon-vllm-retry adopted; waiting for a ready replica" in lines
    assert len(client.AppsV1Api(emu.api_client()).list_namespaced_deployment(NS).items) == 1

    spec = VLLMServerSpec(name="salmon-vllm-crashing", namespace=NS, model="/mnt/models/base", gpus=0)
    labels = render_vllm_server(spec)[0]["spec"]["selector"]["matchLabels"]
    crash = {"phase": "Running", "containerStatuses": [{
        "name": "vllm", "ready": False, "restartCount": 3, "image": "x", "imageID": "",
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
        "lastState": {"terminated": {"reason": "Error", "exitCode": 1,
                                     "message": "ValueError: head_size 32 is not supported"}}}]}
    client.CoreV1Api(emu.api_client()).create_namespaced_pod(NS, _pod("salmon-vllm-crashing-5d8-x", labels, crash))
    with pytest.raises(TimeoutError, match="container vllm Error \\(exit code 1\\): ValueError: head_size 32"):
        deploy_server(spec, api_client=emu.api_client(), run_id="run-r", poll_seconds=0.1, timeout_seconds=0.5,
                      out=lambda _: None)


def test_deleting_the_runs_workflow_garbage_collects_what_it_owns(emu: Any) -> None:
    """The last line of defence, Kubernetes' own: every job and server carries an ownerReference
    to the run's Workflow, so deleting the run (or KFP's TTL) removes them. The emulator plays the
    garbage collector; what is tested is that the references point at the Workflow's uid."""
    from salmon.cluster.launch import own_pod_owner
    from salmon.cluster.spec import OwnerRef

    env = _start_run(emu)
    owner = own_pod_owner(emu.api_client(), NS, env["KFP_POD_NAME"])
    assert owner == {"api_version": "argoproj.io/v1alpha1", "kind": "Workflow", "name": RUN, "uid": RUN_UID}
    for executor in KINDS:
        Launcher(executor, NS, api_client=emu.api_client()).create_or_adopt(
            render_job(_spec(name=f"salmon-sft-gc-{executor}", owner=OwnerRef(**owner)), executor))
    _serve(emu, "salmon-vllm-gc", "run-gc", owner)
    _serve(emu, "salmon-vllm-unowned", "run-x", None)
    assert len(_owned_by(emu)) == 4
    assert emu.collect_garbage() == [], "nothing is collected while the Workflow exists"
    _custom(emu).delete_namespaced_custom_object("argoproj.io", "v1alpha1", NS, "workflows", RUN)
    collected = emu.collect_garbage()
    assert _owned_by(emu) == [] and len(collected) == 5, collected  # 2 jobs, Deployment, Service, the step pod
    assert Launcher("trainjob", NS, api_client=emu.api_client()).get("salmon-sft-gc-trainjob") is None


def test_run_over_reads_the_workflow() -> None:
    from salmon.cluster.sweep import run_over

    def wf(spec: dict[str, Any] | None = None, phase: str = "Running", uid: str = "u") -> dict[str, Any]:
        return {"metadata": {"uid": uid}, "spec": spec or {}, "status": {"phase": phase}}

    assert run_over(wf(), "u") == ""
    assert run_over(wf(phase="Pending"), "u") == ""
    assert run_over(wf({"activeDeadlineSeconds": 3600}), "u") == "", "a deadline is not a cancel"
    assert run_over(None, "u") == "deleted"
    assert run_over(wf(uid="v"), "u").startswith("replaced")
    assert run_over(wf({"activeDeadlineSeconds": 0}), "u") == "terminated"
    assert run_over(wf({"shutdown": "Terminate"}), "u") == "shutdown Terminate"
    for phase in ("Succeeded", "Failed", "Error"):
        assert run_over(wf(phase=phase), "u") == f"phase {phase}"


# ------------------------------------------------------------- verbs used vs verbs granted

def _role_rules(path: str, role: str) -> set[tuple[str, str, str]]:
    docs = yaml.safe_load_all((Path(__file__).resolve().parents[1] / path).read_text())
    rules = next(d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == role)["rules"]
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def test_the_launchers_and_the_sweeper_use_exactly_the_verbs_their_roles_grant(emu: Any) -> None:
    """Run every launcher path (create, log streaming, pod problems, adopt, recreate a failed job,
    deadline, SIGTERM cleanup, own pod lookup, vLLM deploy and removal) and every sweeper path
    against the emulator, record the requests, and compare with the Roles in manifests/base and
    salmon.cluster.access.ROLE_RULES: nothing used is missing, nothing granted is unused."""
    from kubernetes import client

    from salmon.cluster.access import ROLE_RULES
    from salmon.cluster.launch import own_pod_owner
    from salmon.cluster.sampler import delete_servers
    from salmon.cluster.sweep import sweep

    api = emu.api_client("launcher")
    env = _start_run(emu)
    own_pod_owner(api, NS, env["KFP_POD_NAME"])
    for executor in KINDS:
        name = f"salmon-sft-verbs-{executor}"
        client.CoreV1Api(emu.api_client()).create_namespaced_pod(
            NS, _pod(f"{name}-0", KINDS[executor].master_labels(name), {"phase": "Running"}))
        emu.serve_log(NS, f"{name}-0", "[sft] step 1\n")
        t = _when_created(emu, name, lambda n=name, e=executor: (time.sleep(0.3), _set_condition(
            emu, n, "Failed", "Failed", executor=e)), executor=executor)
        with pytest.raises(JobFailed):
            launch_and_wait(render_job(_spec(name=name), executor), executor, api_client=api, poll_seconds=0.1,
                            out=lambda _: None)
        t.join()
        launcher = Launcher(executor, NS, api_client=api, poll_seconds=0.1, out=lambda _: None)
        assert launcher.create_or_adopt(render_job(_spec(name=name), executor))[1] == "recreated"
        assert launcher.create_or_adopt(render_job(_spec(name=name), executor))[1] == "adopted"
        with pytest.raises(JobTimeout):
            launcher.wait(name, deadline_seconds=0.2)
    _serve(emu, "salmon-vllm-verbs", "run-v", None)
    delete_servers(api_client=api, namespace=NS, run_id="run-v", out=lambda _: None)
    used = emu.verbs("launcher")
    assert used == _role_rules("manifests/base/rbac.yaml", "salmon-pipeline-runner")
    assert used == {(g, r, v) for (g, r), verbs in ROLE_RULES["salmon-pipeline-runner"].items() for v in verbs}

    owner = own_pod_owner(emu.api_client(), NS, env["KFP_POD_NAME"])
    from salmon.cluster.spec import OwnerRef

    for executor in KINDS:
        Launcher(executor, NS, api_client=emu.api_client()).create_or_adopt(
            render_job(_spec(name=f"salmon-sft-swept-{executor}", owner=OwnerRef(**owner)), executor))
    _serve(emu, "salmon-vllm-swept", "run-w", owner)
    _cancel_run(emu)
    assert len(sweep(emu.api_client("sweeper"), NS, out=lambda _: None)) == 4
    swept = emu.verbs("sweeper")
    assert swept == _role_rules("manifests/base/sweeper.yaml", "salmon-sweeper")
    assert swept == {(g, r, v) for (g, r), verbs in ROLE_RULES["salmon-sweeper"].items() for v in verbs}


def test_jobs_and_servers_run_the_image_the_pipeline_was_compiled_with(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """SALMON_RUNTIME_IMAGE / SALMON_VLLM_IMAGE at compile time reach every task's image and, as
    environment variables of the tasks that launch pods, the TrainJobs, PyTorchJobs and vLLM
    servers those tasks render; `job render` and `sampler render` read them too."""
    from salmon.cli import main
    from salmon.cluster.executor import ClusterSettings, job_spec
    from salmon.cluster.render import render_job, render_vllm_server
    from salmon.cluster.spec import VLLMServerSpec

    runtime, vllm = "registry.example.com/team/salmon-runtime:1.2.3", "registry.example.com/team/salmon-vllm:1.2.3"
    env = {**os.environ, "SALMON_RUNTIME_IMAGE": runtime, "SALMON_VLLM_IMAGE": vllm}
    code = ("import sys; from pipelines.cli import compile_pipeline; "
            f"compile_pipeline({str(tmp_path)!r})")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=Path(__file__).resolve().parents[1])
    spec = next(yaml.safe_load_all((tmp_path / "salmon.yaml").read_text()))
    executors = spec["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {runtime}
    launching = {k for k, e in executors.items() if any(v["name"] == "SALMON_RUNTIME_IMAGE"
                                                         for v in e["container"].get("env", []))}
    assert {"exec-sft", "exec-train-rm", "exec-ppo", "exec-serve-sampler"} <= launching
    for k in launching:
        values = {v["name"]: v["value"] for v in executors[k]["container"]["env"]}
        assert values["SALMON_RUNTIME_IMAGE"] == runtime and values["SALMON_VLLM_IMAGE"] == vllm

    # inside such a task: what it renders
    monkeypatch.setenv("SALMON_RUNTIME_IMAGE", runtime)
    monkeypatch.setenv("SALMON_VLLM_IMAGE", vllm)
    settings = ClusterSettings()
    for executor in ("trainjob", "pytorchjob"):
        job = render_job(job_spec("ppo", settings, name="salmon-ppo-x", work=Path("/mnt/models/w"),
                                  executor=executor), executor)
        assert set(re.findall(r'"image": "([^"]+)"', json.dumps(job))) == {runtime}, executor
    deployment, _ = render_vllm_server(VLLMServerSpec(name="salmon-vllm-x", model="/mnt/models/base"))
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == vllm
    assert main(["job", "render", "--stage", "sft"]) == 0
    assert runtime in capsys.readouterr().out
    monkeypatch.delenv("SALMON_RUNTIME_IMAGE")
    assert ClusterSettings().image == "ghcr.io/salmon-mlops/salmon-runtime:0.1.0"


def test_job_sizes_priority_and_queue_come_from_the_settings(capsys: pytest.CaptureFixture[str]) -> None:
    """A TrainJob leaves CPU and memory to its runtime unless sizes are given (so the local-cpu
    overlay's small runtime decides); a PyTorchJob falls back to 8 / 64Gi; priority class and the
    Kueue queue reach both kinds; bad quantities and names are refused. `job render` takes the
    same keys as the pipeline's train_cpu, train_memory, train_priority_class and train_queue."""
    from pydantic import ValidationError

    from salmon.cli import main
    from salmon.cluster.executor import ClusterSettings, job_spec

    def job(executor: str, gpus: int = 0, **settings: Any) -> dict[str, Any]:
        spec = job_spec("sft", ClusterSettings(gpus=gpus, **settings), name="salmon-sft-x",
                        work=Path("/mnt/models/w"), executor=executor)
        return render_job(spec, executor)

    assert "resourcesPerNode" not in job("trainjob")["spec"]["trainer"]
    # with GPUs the TrainJob's resources replace the runtime's: CPU and memory are stated too
    assert job("trainjob", gpus=2)["spec"]["trainer"]["resourcesPerNode"]["limits"] == {
        "cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "2"}
    sized = job("trainjob", cpu="2", memory="6Gi", priority_class="batch-low", queue="team-a")
    assert sized["spec"]["trainer"]["resourcesPerNode"]["requests"] == {"cpu": "2", "memory": "6Gi"}
    assert sized["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert sized["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "batch-low"
    container = job("pytorchjob")["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"] == {"cpu": "8", "memory": "64Gi"}
    pt = job("pytorchjob", cpu="500m", memory="2Gi", priority_class="batch-low", queue="team-a")
    assert pt["spec"]["runPolicy"]["schedulingPolicy"] == {"priorityClass": "batch-low"}
    assert pt["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert pt["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["resources"][
        "limits"] == {"cpu": "500m", "memory": "2Gi"}
    for bad in ({"cpu": "eight"}, {"memory": "64 GB"}, {"queue": "Team_A"}, {"priority_class": "Low!"}):
        with pytest.raises(ValidationError):
            ClusterSettings(**bad)
    assert main(["job", "render", "--stage", "sft", "--executor", "trainjob", "gpus=0", "cpu=2", "memory=6Gi",
                 "queue=team-a"]) == 0
    rendered = yaml.safe_load(capsys.readouterr().out)
    assert rendered["spec"]["trainer"]["resourcesPerNode"]["requests"] == {"cpu": "2", "memory": "6Gi"}


def test_the_pipeline_checks_job_sizes_in_plan() -> None:
    from salmon.core.errors import SalmonInputError
    from salmon.tasks.plan import plan_task

    cluster = {"nodes": 1, "procs_per_node": 0, "gpus": 0, "gpu_resource": "nvidia.com/gpu",
               "pvc": "salmon-model-cache", "mlflow_secret": "salmon-mlflow", "s3_secret": "salmon-s3",
               "cpu": "lots", "memory": "", "priority_class": "", "queue": ""}
    with pytest.raises(SalmonInputError, match="cpu"):
        plan_task(preset="nano", stage_overrides={}, selfalign_rules="", label_principles="", rl_principles="",
                  params={"sft_executor": "trainjob"}, cluster=cluster, register=False)


def test_a_ppo_job_gets_the_sampler_key_for_server_rollouts() -> None:
    """With the sampler's API key Secret set, a ppo job's pods read it as SALMON_SAMPLER_API_KEY
    (rollout_backend=openai asks the run's vLLM server); other stages' jobs do not get it."""
    from salmon.cluster.executor import ClusterSettings, job_spec

    def secrets(stage: str, **settings: Any) -> dict[str, tuple[str, str]]:
        spec = job_spec(stage, ClusterSettings(**settings), name=f"salmon-{stage}-x", work=Path("/mnt/models/w"),
                        executor="pytorchjob")
        return {s.env: (s.secret, s.key) for s in spec.secret_env}

    assert secrets("ppo", sampler_api_key_secret="vllm-key")["SALMON_SAMPLER_API_KEY"] == ("vllm-key", "api-key")
    assert "SALMON_SAMPLER_API_KEY" not in secrets("ppo")
    assert "SALMON_SAMPLER_API_KEY" not in secrets("sft", sampler_api_key_secret="vllm-key")
    rendered = json.dumps(render_job(job_spec("ppo", ClusterSettings(sampler_api_key_secret="vllm-key"),
                                              name="salmon-ppo-x", work=Path("/mnt/models/w"), executor="trainjob"),
                                     "trainjob"))
    assert '"name": "vllm-key"' in rendered and "api-key" in rendered
