"""The KFP pipeline: golden compile, parameters, plans and caching, and the whole pipeline under
``kfp.local`` against a real MLflow server (sqlite) whose artifacts live in a real S3-compatible
endpoint (moto), both on 127.0.0.1 and stopped by PID.

Regenerate the golden files after an intended change with
``SALMON_UPDATE_GOLDEN=1 pytest tests/test_pipeline.py -k golden``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

pytest.importorskip("kfp")
pytest.importorskip("mlflow")

GOLDEN = Path(__file__).parent / "golden"
REPO = Path(__file__).resolve().parents[1]
DEPLOYED_PIPELINE = REPO / "manifests" / "base" / "pipeline" / "salmon-k8s.yaml"
QUICK_GATES_FAIL = {"min_rm_accuracy": 0.99, "min_rm_flip_rate": 0.99}


def test_compiled_pipeline_matches_the_golden_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.cli import compile_pipeline

    paths = compile_pipeline(tmp_path)
    for path in paths:
        # the Pipeline/PipelineVersion manifest is also part of the deployable kustomize tree
        copies = [GOLDEN / path.name] + ([DEPLOYED_PIPELINE] if path.name == DEPLOYED_PIPELINE.name else [])
        for golden in copies:
            if os.environ.get("SALMON_UPDATE_GOLDEN"):
                golden.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, golden)
            assert path.read_text() == golden.read_text(), (
                f"{path.name} differs from {golden}; if the change is intended, regenerate with "
                "SALMON_UPDATE_GOLDEN=1 pytest tests/test_pipeline.py -k golden")


def test_the_kfp_ui_shows_descriptions_reports_and_retries_launchers() -> None:
    """Every stage component's inputs carry a description; eval_rm and eval_policy publish their
    report as Markdown (which the UI renders); the tasks that launch jobs or the vLLM server
    retry (a retry adopts what the first attempt launched)."""
    from pipelines.platform import LAUNCHERS

    spec = next(yaml.safe_load_all((GOLDEN / "salmon.yaml").read_text()))
    for name, comp in spec["components"].items():
        if name == "comp-plan":  # its parameters are the pipeline's, described there
            continue
        inputs = comp.get("inputDefinitions", {})
        for kind in ("parameters", "artifacts"):
            for arg, d in inputs.get(kind, {}).items():
                assert d.get("description"), f"{name}.{arg} has no description"
    for comp in ("comp-eval-rm", "comp-eval-policy"):
        report = spec["components"][comp]["outputDefinitions"]["artifacts"]["report"]
        assert report["artifactType"]["schemaTitle"] == "system.Markdown"
    tasks = spec["root"]["dag"]["tasks"]
    for name, task in tasks.items():
        retry = task.get("retryPolicy")
        if name.replace("-", "_") in LAUNCHERS:
            assert retry and retry["maxRetryCount"] >= 1, name
        else:
            assert retry is None, name


def test_the_first_task_receives_every_parameter_it_can_check() -> None:
    """Invalid parameter values must fail in ``plan``, before any GPU work: every pipeline
    parameter reaches it, except those with nothing to check before they are used."""
    spec = next(yaml.safe_load_all((GOLDEN / "salmon.yaml").read_text()))
    pipeline_params = set(spec["root"]["inputDefinitions"]["parameters"])
    plan_inputs = spec["root"]["dag"]["tasks"]["plan"]["inputs"]["parameters"]
    wired = {v["componentInputParameter"] for v in plan_inputs.values() if "componentInputParameter" in v}
    unchecked = {"seed"}  # any integer is a seed
    assert pipeline_params - wired == unchecked


def test_compiled_pipeline_structure() -> None:
    """What the golden file must keep saying: every stage, caching, pod settings, no secret values."""
    docs = list(yaml.safe_load_all((GOLDEN / "salmon.yaml").read_text()))
    spec, platform = docs[0], docs[1]
    tasks = spec["root"]["dag"]["tasks"]
    stages = ["plan", "base-model", "prompts", "selfalign", "sft", "serve-sampler", "sample", "label", "aggregate",
              "pmp-data", "train-rm", "eval-rm", "ppo", "eval-policy", "register", "stop-sampler",
              "stop-sampler-after-rollouts"]
    assert sorted(tasks) == sorted(stages)
    for name, task in tasks.items():
        cached = task.get("cachingOptions", {}).get("enableCache", False)
        assert cached == (name not in ("plan", "serve-sampler", "stop-sampler", "stop-sampler-after-rollouts",
                                       "register")), name
    stop = tasks["stop-sampler"]
    assert stop["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED", "runs even when label failed"
    assert set(stop["dependentTasks"]) == {"serve-sampler", "sample", "label"}
    # with rollout_backend=openai the server stays up for ppo and eval_policy, removed after them
    later = tasks["stop-sampler-after-rollouts"]
    assert later["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert set(later["dependentTasks"]) == {"serve-sampler", "ppo", "eval-policy"}
    for task in ("ppo", "eval-policy"):
        assert tasks[task]["inputs"]["parameters"]["sampler"]["taskOutputParameter"]["producerTask"] == "serve-sampler"
    assert tasks["sample"]["inputs"]["parameters"]["sampler"]["taskOutputParameter"]["producerTask"] == "serve-sampler"
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert all(p.get("description") for p in params.values()), "every parameter is documented"
    assert params["base_model_uri"]["defaultValue"] == "nano"
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for stage in ("sft", "train-rm", "ppo", "eval-policy"):
        ex = executors[f"exec-{stage}"]
        assert ex["tolerations"][0]["key"] == "nvidia.com/gpu"
        secrets = {s["secretNameParameter"]["componentInputParameter"] for s in ex["secretAsEnv"]}
        rollouts = {"sampler_api_key_secret"} if stage in ("ppo", "eval-policy") else set()  # rollout_backend openai
        assert secrets == {"mlflow_secret", "s3_secret"} | rollouts, "secret names are pipeline parameters"
        container = spec["deploymentSpec"]["executors"][f"exec-{stage}"]["container"]
        gpus = container["resources"]["accelerator"]["resourceCount"]
        param = "gpus" if stage == "eval-policy" else "training_task_gpus"
        assert gpus == f"{{{{$.inputs.parameters['pipelinechannel--{param}']}}}}"
        assert container["image"].startswith("ghcr.io/salmon-mlops/salmon-runtime:")
    text = (GOLDEN / "salmon.yaml").read_text()
    assert "pip install" not in text, "install_kfp_package=False: the image already has everything"
    assert "AWS_SECRET_ACCESS_KEY: " not in text.replace("AWS_SECRET_ACCESS_KEY: AWS_SECRET_ACCESS_KEY", "")
    k8s = list(yaml.safe_load_all((GOLDEN / "salmon-k8s.yaml").read_text()))
    assert [d["kind"] for d in k8s] == ["Pipeline", "PipelineVersion"]
    assert k8s[1]["spec"]["pipelineName"] == "salmon"


def test_the_kfp_signature_is_the_parameter_model() -> None:
    """pipelines/salmon.py writes the parameters out for KFP; PipelineParams defines them. Names,
    order, defaults and the docstring's Args lines must be the model's fields, defaults and
    descriptions (so the five places that once listed them cannot drift)."""
    import inspect
    import re

    from pipelines.cli import pipeline_parameters
    from pipelines.salmon import salmon_pipeline
    from salmon.tasks.params import PipelineParams

    signature = pipeline_parameters()
    fields = PipelineParams.model_fields
    assert list(signature) == list(fields)
    for name, param in signature.items():
        assert param.default == fields[name].get_default(call_default_factory=True), name
        assert param.annotation is (fields[name].annotation.__origin__ if hasattr(
            fields[name].annotation, "__origin__") else fields[name].annotation), name
    doc = inspect.getdoc(salmon_pipeline.pipeline_func) or ""
    args = dict(re.findall(r"^    (\w+): (.*)$", doc.split("Args:")[1], flags=re.M))
    assert args == {name: f.description for name, f in fields.items()}
    # and the plan component receives every one of them but the seed (see the test above)
    assert PipelineParams().rl_principle_ids == ["concise"] and PipelineParams().stage_overrides == {}


def test_params_are_typed_and_checked() -> None:
    from pipelines.cli import parse_params
    from salmon.core.errors import SalmonInputError

    assert parse_params(["rm_epochs=2", "rl_principle_ids=[detailed]", "stage_overrides={ppo: {kl_coef: 0.02}}",
                         "label_principles=harmless"]) == {
        "rm_epochs": 2.0, "rl_principle_ids": ["detailed"], "stage_overrides": {"ppo": {"kl_coef": 0.02}},
        "label_principles": "harmless"}
    with pytest.raises(SalmonInputError, match="not a pipeline parameter"):
        parse_params(["rm_epoch=2"])
    with pytest.raises(SalmonInputError, match="expected int"):
        parse_params(["nano_prompts=many"])


def test_cli_rejects_bad_parameters_with_exit_2(tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "salmon.cli", "pipeline", "run", "--out", str(out), "seeds=3"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "error: parameter 'seeds'" in r.stderr
    assert not out.exists(), "no partial output"


def test_plan_checks_parameters_before_any_work() -> None:
    from salmon.core.errors import SalmonInputError
    from salmon.tasks.params import validate_pipeline_params

    validate_pipeline_params({"sft_executor": "local", "label_backend": "rules"})
    validate_pipeline_params({"ppo_executor": "trainjob", "sft_executor": "pytorchjob"})
    with pytest.raises(SalmonInputError, match="unknown; use one of local, trainjob, pytorchjob"):
        validate_pipeline_params({"ppo_executor": "slurm"})
    with pytest.raises(SalmonInputError, match="unknown backend"):
        validate_pipeline_params({"label_backend": "gpt"})
    with pytest.raises(SalmonInputError, match="set sampler=deploy"):
        validate_pipeline_params({"label_backend": "openai", "sampler": "none"})
    with pytest.raises(SalmonInputError, match="not an http"):
        validate_pipeline_params({"sample_backend": "openai", "sampler": "endpoint", "sampler_endpoint": "vllm:8000"})
    validate_pipeline_params({"sample_backend": "openai", "sampler": "endpoint",
                              "sampler_endpoint": "http://vllm.kubeflow.svc:8000/v1"})
    with pytest.raises(SalmonInputError, match="sampler='gpu'"):
        validate_pipeline_params({"sampler": "gpu"})
    with pytest.raises(SalmonInputError, match="unknown keys"):
        validate_pipeline_params({"stage_overrides": {"ppo": {"kl_coeff": 1}}})


def test_only_remote_training_stages_carry_the_cluster_settings() -> None:
    from salmon.core.errors import SalmonInputError
    from salmon.tasks.plan import plan_task

    def plans(cluster: dict[str, Any], **executors: str) -> dict[str, dict[str, Any]]:
        out = plan_task(preset="nano", stage_overrides={}, selfalign_rules="", label_principles="",
                        rl_principles="", params=dict(executors), cluster=cluster, register=False)
        return {k: json.loads(v) for k, v in out.items()}

    local = plans({"gpus": 8}, sft_executor="local")
    assert all("cluster" not in p for p in local.values()), "a local stage's cache key ignores job settings"
    remote = plans({"gpus": 8, "nodes": 2}, train_rm_executor="trainjob")
    assert remote["train_rm"]["cluster"] == {"gpus": 8, "nodes": 2}
    assert "cluster" not in remote["sft"] and "cluster" not in remote["ppo"]
    with pytest.raises(SalmonInputError, match="nodes"):
        plans({"nodes": 0}, ppo_executor="pytorchjob")


def _principles_copy(tmp_path: Path, edit: bool) -> Path:
    """The shipped principles; with ``edit`` the nano 'concise' principle is reworded."""
    from salmon.core.principles import principles_dir

    dest = tmp_path / ("edited" if edit else "same")
    shutil.copytree(principles_dir(), dest)
    if edit:
        data = yaml.safe_load((dest / "nano.yaml").read_text())
        for p in data["principles"]:
            if p["id"] == "concise":
                p["definition"] = p["definition"] + " Cut every word that carries nothing."
        (dest / "nano.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return dest


def test_a_principle_change_reaches_exactly_the_stages_that_read_it(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from salmon.tasks.plan import plan_task

    def plans() -> dict[str, str]:
        return plan_task(preset="nano", stage_overrides={}, selfalign_rules="", label_principles="",
                         rl_principles="", params={}, register=False)

    monkeypatch.setenv("SALMON_PRINCIPLES_DIR", str(_principles_copy(tmp_path, edit=False)))
    before = plans()
    assert plans() == before, "plans are deterministic"
    monkeypatch.setenv("SALMON_PRINCIPLES_DIR", str(_principles_copy(tmp_path, edit=True)))
    after = plans()
    changed = sorted(s for s in before if before[s] != after[s])
    assert changed == ["aggregate", "eval_policy", "eval_rm", "label", "ppo"]


@pytest.mark.parametrize("data_file", ["data/identity.yaml", "exemplars/self_align.yaml"])
def test_a_selfalign_data_file_change_reaches_selfalign_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             data_file: str) -> None:
    """The identity conversations and the exemplars are files selfalign reads: editing one
    changes selfalign's plan (its cache key) and no other stage's."""
    from salmon.tasks.plan import check_refs, plan_task

    def plans() -> dict[str, str]:
        return plan_task(preset="nano", stage_overrides={}, selfalign_rules="", label_principles="",
                         rl_principles="", params={}, register=False)

    root = _principles_copy(tmp_path, edit=False)
    monkeypatch.setenv("SALMON_PRINCIPLES_DIR", str(root))
    before = plans()
    with (root / data_file).open("a", encoding="utf-8") as f:
        f.write("\n# edited\n")
    after = plans()
    assert sorted(s for s in before if before[s] != after[s]) == ["selfalign"]
    values, tags = check_refs("selfalign", json.loads(after["selfalign"])["principles"])
    assert tags[f"salmon.principles.{data_file}.digest"].startswith("sha256:")


def test_a_principle_edited_mid_run_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from salmon.core.errors import SalmonInputError
    from salmon.tasks.plan import check_refs, plan_task

    monkeypatch.setenv("SALMON_PRINCIPLES_DIR", str(_principles_copy(tmp_path, edit=False)))
    plan = json.loads(plan_task(preset="nano", stage_overrides={}, selfalign_rules="", label_principles="",
                                rl_principles="", params={}, register=False)["label"])
    values, tags = check_refs("label", plan["principles"])
    assert values == {"principles": "nano"} and tags["salmon.principles.nano.digest"].startswith("sha256:")
    monkeypatch.setenv("SALMON_PRINCIPLES_DIR", str(_principles_copy(tmp_path, edit=True)))
    with pytest.raises(SalmonInputError, match="changed during the run"):
        check_refs("label", plan["principles"])


def test_stage_run_is_reopened_on_retry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    from salmon import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    tracking.setup_tracking(tmp_path, "retry")
    parent = tracking.start_parent_run("p", {})
    try:
        with tracking.stage_run("label", "sha256:abc") as first:
            mlflow.log_metric("x", 1.0)
        with tracking.stage_run("label", "sha256:abc") as retry:
            pass
        with tracking.stage_run("label", "sha256:def") as other:
            pass
    finally:
        monkeypatch.delenv(tracking.PARENT_ENV, raising=False)
    assert retry == first and other != first
    run = mlflow.MlflowClient().get_run(first)
    assert run.data.tags["mlflow.parentRunId"] == parent and run.info.run_name == "label"
    monkeypatch.setenv("MLFLOW_RUN_ID", first)  # an orchestrator-injected run wins
    with tracking.stage_run("sample", "sha256:zzz") as injected:
        pass
    assert injected == first


# ----------------------------------------------------------------------------- whole pipeline


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """moto S3 + an MLflow server storing artifacts in it (proxied), on 127.0.0.1."""
    pytest.importorskip("moto")
    import boto3
    from servers import mlflow_server, moto_server

    work = tmp_path_factory.mktemp("servers")
    with moto_server() as s3:
        aws = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
               "MLFLOW_S3_ENDPOINT_URL": s3}
        boto3.client("s3", endpoint_url=s3, aws_access_key_id="test", aws_secret_access_key="test",
                     region_name="us-east-1").create_bucket(Bucket="mlflow")
        with mlflow_server(work, "s3://mlflow/artifacts", env=aws) as url:
            yield {"mlflow": url, "s3": s3}


def _quick_params(**extra: Any) -> dict[str, Any]:
    from pipelines.cli import QUICK_PARAMS

    return {**QUICK_PARAMS, "min_policy_win_rate": 0.0, "max_policy_kl": 1e6, **extra}


def _summary(out: Path, tracking_uri: str) -> SimpleNamespace:
    """A run's summary.json, plus the registry's aliases and gate tags right after the run."""
    import mlflow

    data = json.loads((out / "summary.json").read_text())
    client = mlflow.MlflowClient(tracking_uri)
    aliases = {name: dict(client.get_registered_model(name).aliases) for name in data["models"]}
    gates = {name: client.get_model_version(name, m["version"]).tags["salmon.gate.passed"]
             for name, m in data["models"].items()}
    return SimpleNamespace(summary=data, cached=data["cached"], parent_run_id=data["parent_run_id"], out=out,
                           aliases=aliases, gates=gates)


@pytest.fixture(scope="module")
def pipeline_runs(servers: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Three runs into one output folder: (1) `salmon demo --quick` with RM gates set too high,
    (2) the same inputs with passable gates, (3) the nano 'concise' principle reworded."""
    from pipelines.local import run_local
    from salmon.cli import main

    out = tmp_path_factory.mktemp("pipeline")
    run = out / "run"
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", servers["mlflow"])
    mp.setenv("SALMON_PRINCIPLES_DIR", str(_principles_copy(out, edit=False)))
    console = io.StringIO()
    try:
        with contextlib.redirect_stderr(console):
            assert main(["demo", "--quick", "--out", str(run),
                         *(f"{k}={v}" for k, v in QUICK_GATES_FAIL.items())]) == 0
        first = _summary(run, servers["mlflow"])
        first.console = console.getvalue()
        run_local(run, _quick_params(min_rm_accuracy=0.0, min_rm_flip_rate=0.0))
        second = _summary(run, servers["mlflow"])
        mp.setenv("SALMON_PRINCIPLES_DIR", str(_principles_copy(out, edit=True)))
        run_local(run, _quick_params(min_rm_accuracy=0.0, min_rm_flip_rate=0.0))
        third = _summary(run, servers["mlflow"])
        yield {"first": first, "second": second, "third": third, "out": out}
    finally:
        mp.undo()


@pytest.mark.usefixtures("servers")
def test_the_demo_console_names_every_task_and_leaves_kfp_output_to_the_log(pipeline_runs: dict[str, Any]) -> None:
    """The first 60 lines of `salmon demo --quick` hold no executor JSON and name every task;
    kfp.local's own output is in OUT/pipeline.log."""
    from pipelines.local import TASKS

    first = pipeline_runs["first"]
    head = first.console.splitlines()[:60]
    assert not any("executor_input" in line or "\x1b[" in line for line in head), head
    for task in (*TASKS, "serve-sampler", "stop-sampler", "stop-sampler-after-rollouts"):
        if task in first.cached:
            continue
        assert any(f" {task} started" in line for line in head), (task, head)
        assert any(f" {task} done in " in line for line in head), (task, head)
    assert "SALMON pipeline finished" in first.console
    log = (first.out / "pipeline.log").read_text()
    assert "Got executor_input" in log and "Executing task" in log
    for task in ("eval-rm", "eval-policy"):  # the Markdown report the KFP UI renders
        reports = list((first.out / "pipeline_root").glob(f"salmon-*/{task}/report"))
        assert reports and reports[0].read_text().startswith("#"), task


@pytest.mark.usefixtures("servers")
def test_the_whole_pipeline_runs_under_kfp_local(pipeline_runs: dict[str, Any]) -> None:
    first = pipeline_runs["first"]
    stages = first.summary["stages"]
    assert list(stages) == ["prompts", "selfalign", "sft", "sample", "label", "aggregate", "train_rm", "eval_rm",
                            "ppo", "eval_policy"]
    assert first.cached == []
    assert stages["prompts"]["metrics"]["prompts"] == 160
    assert stages["ppo"]["metrics"]["steps_done"] == 2 and stages["ppo"]["metrics"]["finished"]
    assert 0.0 <= stages["eval_rm"]["metrics"]["accuracy"] <= 1.0
    assert stages["eval_rm"]["metrics"]["self_praise"]["interventions"] == ["no_self_praise"]
    assert stages["label"]["metrics"]["judgements"] == stages["sample"]["metrics"]["pairs"] * 6
    assert first.summary["headline"]["ppo_words"] > 0
    assert first.summary["tracking_uri"].startswith("http://127.0.0.1:")


def test_alias_promotion_is_refused_when_a_gate_fails(pipeline_runs: dict[str, Any], servers: dict[str, str]) -> None:
    import mlflow

    first, second, third = (pipeline_runs[k] for k in ("first", "second", "third"))
    for name in ("salmon-sft", "salmon-reward", "salmon-policy"):
        m = first.summary["models"][name]
        assert m["champion"] is False
        assert any("accuracy" in r and "< 0.99" in r for r in m["reasons"])
        assert first.aliases[name] == {"candidate": m["version"]}, "candidate only: champion refused"
        assert first.gates[name] == "false"
    for name in ("salmon-sft", "salmon-reward", "salmon-policy"):
        m = second.summary["models"][name]
        assert m["champion"] is True and second.gates[name] == "true"
        assert m["version"] == first.summary["models"][name]["version"], "same logged model, same version"
        assert second.aliases[name] == {"candidate": m["version"], "champion": m["version"]}
    t = third.summary["models"]
    assert t["salmon-sft"]["version"] == first.summary["models"]["salmon-sft"]["version"], "sft did not rerun"
    assert int(t["salmon-reward"]["version"]) > int(first.summary["models"]["salmon-reward"]["version"])
    assert third.aliases["salmon-policy"]["champion"] == t["salmon-policy"]["version"]
    client = mlflow.MlflowClient(servers["mlflow"])
    v = client.get_model_version("salmon-policy", t["salmon-policy"]["version"])
    assert v.tags["salmon.champion.by"] == "register" and v.tags["salmon.champion.kfp_run_id"]


def test_cache_hit_on_rerun_and_invalidation_on_a_principle_change(pipeline_runs: dict[str, Any]) -> None:
    second, third = pipeline_runs["second"], pipeline_runs["third"]
    every = ["base-model", "prompts", "selfalign", "sft", "sample", "label", "aggregate", "pmp-data", "train-rm",
             "eval-rm", "ppo", "eval-policy"]
    assert sorted(second.cached) == sorted(every), "nothing changed: every stage is served from the cache"
    assert sorted(third.cached) == sorted(["base-model", "prompts", "selfalign", "sft", "sample", "pmp-data"]), (
        "a reworded nano principle reruns label and everything downstream of it, nothing else")
    s1 = pipeline_runs["first"].summary["stages"]
    s3 = third.summary["stages"]
    assert s3["sft"]["mlflow_run_id"] == s1["sft"]["mlflow_run_id"]
    assert s3["label"]["mlflow_run_id"] != s1["label"]["mlflow_run_id"]


def test_lineage_from_every_model_version_to_principles_datasets_and_run(
        pipeline_runs: dict[str, Any], servers: dict[str, str]) -> None:
    import boto3
    import mlflow

    from salmon.core.principles import load_principle_set

    client = mlflow.MlflowClient(servers["mlflow"])
    third = pipeline_runs["third"]
    digest = load_principle_set(pipeline_runs["out"] / "edited" / "nano.yaml").digest()
    for name, m in third.summary["models"].items():
        v = client.get_model_version(name, m["version"])
        assert v.tags["salmon.git_sha"] and v.tags["kfp.run_id"]
        assert v.tags["kfp.run_id"] == client.get_run(third.parent_run_id).data.tags["kfp.run_id"], "one run id"
        assert v.tags["salmon.base_model"] == "nano" and v.tags["salmon.base_model_digest"].startswith("sha256:")
        source = client.get_run(v.tags["salmon.source_run"])
        assert source.data.tags["salmon.stage"] == v.tags["salmon.stage"]
        assert source.data.params, "the resolved stage config is logged as params"
        inputs = {d.dataset.name: d.dataset.digest for d in source.inputs.dataset_inputs}
        assert inputs, f"{name}: datasets recorded on the source run"
        if name == "salmon-sft":  # reads no nano principle: the digest of the self-align rules instead
            assert any(k.startswith("salmon.principles.self_align") for k in v.tags)
        else:
            assert v.tags["salmon.principles.nano.digest"] == digest
            uri = v.tags["salmon.principles.nano.uri"]
            prompt = mlflow.genai.load_prompt(uri)
            assert prompt.tags["salmon.digest"] == digest
    # MLflow 3 lineage: models are model inputs, evaluations are metrics of the model, the
    # version's description is its model card
    stages = third.summary["stages"]
    model_id = {name: client.get_model_version(name, m["version"]).source.removeprefix("models:/")
                for name, m in third.summary["models"].items()}
    for name, m in third.summary["models"].items():
        v = client.get_model_version(name, m["version"])
        source = client.get_run(v.tags["salmon.source_run"])
        used = {i.model_id for i in source.inputs.model_inputs}
        base = [client.get_logged_model(i) for i in used if client.get_logged_model(i).name == "salmon-base"]
        assert len(base) == 1 and base[0].tags["salmon.digest"] == v.tags["salmon.base_model_digest"]
        assert all(d.dataset.source_type == "local" for d in source.inputs.dataset_inputs)
        assert not [d for d in source.inputs.dataset_inputs if d.dataset.name == "base_model"], "a model, not data"
        card = v.description
        for heading in ("## Base model", "## Principles", "## Data", "## Evaluation gates", "## Use"):
            assert heading in card, f"{name}: {heading} missing from the model card"
        assert v.tags["salmon.base_model_digest"] in card
        accuracy = stages["eval_rm"]["metrics"]["accuracy"]
        assert f"| eval_rm accuracy | {accuracy:.4g} | ≥ 0 | pass |" in card
        if name != "salmon-sft":
            assert v.tags["salmon.principles.nano.digest"][:19] in card
        assert client.get_registered_model(name).description.startswith("salmon: the ")
    ppo_run = client.get_run(stages["ppo"]["mlflow_run_id"])
    assert {model_id["salmon-sft"], model_id["salmon-reward"]} <= {i.model_id for i in ppo_run.inputs.model_inputs}
    rm_metrics = {m.key: m.value for m in client.get_logged_model(model_id["salmon-reward"]).metrics}
    assert rm_metrics["accuracy"] == pytest.approx(stages["eval_rm"]["metrics"]["accuracy"])
    policy_metrics = {m.key for m in client.get_logged_model(model_id["salmon-policy"]).metrics}
    assert "kl_to_baseline" in policy_metrics, "eval_policy's figures are the policy's metrics"
    # the RM's data chain: instances <- aggregate(pairs, judgements) <- label(pairs) <- sample(prompts)
    agg = client.get_run(stages["aggregate"]["mlflow_run_id"])
    assert {d.dataset.name for d in agg.inputs.dataset_inputs} >= {"pairs", "judgements", "instances"}
    assert client.get_run(stages["label"]["mlflow_run_id"]).data.tags["mlflow.parentRunId"] == third.parent_run_id
    s3 = boto3.client("s3", endpoint_url=servers["s3"], aws_access_key_id="test", aws_secret_access_key="test",
                      region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="mlflow").get("Contents", [])]
    assert any(k.endswith("adapter_model.safetensors") for k in keys), "model weights are stored in S3"


def test_registered_models_load_and_serve_where_salmon_is_not_installed(
        pipeline_runs: dict[str, Any], servers: dict[str, str], tmp_path: Path) -> None:
    """The policy, SFT and reward models load from the registry in a virtualenv without salmon
    (the training machine's base-model folder moved away), answer, carry a signature and an input
    example, and `mlflow models serve` answers one request for the policy."""
    from servers import free_port, load_in_venv, stop, venv_without_salmon, wait_http

    python = venv_without_salmon(tmp_path / "venv")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("SALMON_", "PYTHON"))},
           "MLFLOW_TRACKING_URI": servers["mlflow"], "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "PATH": f"{python.parent}:/usr/bin:/bin"}
    # no path of the training machine may be needed: every base-model folder is moved away
    bases = sorted((pipeline_runs["out"] / "run").rglob("base-model/model"))
    assert bases
    for b in bases:
        b.rename(b.with_name("model.moved"))
    try:
        loaded = load_in_venv(python, [f"models:/{n}@champion" for n in ("salmon-policy", "salmon-sft",
                                                                         "salmon-reward")], env, tmp_path)
        loaded = {uri.split("/")[1].split("@")[0]: m for uri, m in loaded.items()}
        port = free_port()
        log = tmp_path / "serve.log"
        with open(log, "wb") as f:
            proc = subprocess.Popen([str(python), "-m", "mlflow", "models", "serve", "-m",
                                     "models:/salmon-policy@champion", "--env-manager", "local", "-h", "127.0.0.1",
                                     "-p", str(port)], stdout=f, stderr=subprocess.STDOUT, cwd=tmp_path, env=env)
        try:
            wait_http(f"http://127.0.0.1:{port}/health", proc, 300, log)
            import urllib.request

            req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", method="POST",
                                         data=json.dumps({"inputs": ["What is 2 + 3?"]}).encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=120) as resp:
                served = json.loads(resp.read())
        finally:
            stop(proc)
    finally:
        for b in bases:
            b.with_name("model.moved").rename(b)
    for name in ("salmon-policy", "salmon-sft"):
        m = loaded[name]
        assert len(m["answer"]) == 2 and all(isinstance(a, str) and "###" not in a for a in m["answer"])
        assert m["settings"]["base_model"].startswith("models:/m-"), "the base is referenced through MLflow"
        assert m["settings"]["base_model_digest"].startswith("sha256:")
    assert isinstance(loaded["salmon-reward"]["answer"][0], float)
    for name, m in loaded.items():
        assert m["code"], f"{name} ships salmon's modules"
        assert m["signature"] and m["example"], f"{name} has a signature and an input example"
        assert not [w for w in m["warnings"] if "type hint" in w.lower()], m["warnings"]
    assert served["predictions"] == [loaded["salmon-policy"]["answer"][0]], "served as loaded: greedy, same answer"


def test_manual_promotion_leaves_an_audit_trail(pipeline_runs: dict[str, Any], servers: dict[str, str]) -> None:
    import mlflow

    first = pipeline_runs["first"].summary["models"]["salmon-policy"]["version"]
    env = {**os.environ, "USER": "reviewer"}
    r = subprocess.run([sys.executable, "-m", "salmon.cli", "registry", "promote", "salmon-policy", first,
                        "--reason", "rollback after review", "--tracking-uri", servers["mlflow"]],
                       capture_output=True, text=True, cwd=REPO, env=env)
    assert r.returncode == 0, r.stderr
    client = mlflow.MlflowClient(servers["mlflow"])
    v = client.get_model_version_by_alias("salmon-policy", "champion")
    assert v.version == first
    assert v.tags["salmon.champion.by"] == "manual:reviewer"
    assert v.tags["salmon.champion.reason"] == "rollback after review"
    bad = subprocess.run([sys.executable, "-m", "salmon.cli", "registry", "promote", "salmon-policy", "999",
                          "--reason", "x", "--tracking-uri", servers["mlflow"]],
                         capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "not in the registry" in bad.stderr


def test_submit_uploads_a_version_and_starts_a_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kfp.Client calls of `salmon pipeline submit`, recorded by a stand-in client: a new
    pipeline is uploaded once; later submissions of the same spec reuse the version named after
    its digest (no duplicate-name refusal), a given version that exists is refused, and every run
    gets its own timestamped name (or --run-name)."""
    import re

    import kfp

    from pipelines import kfp_server as cli
    from salmon.core.errors import SalmonInputError

    calls: list[tuple[str, Any]] = []
    known: dict[str, str] = {}
    versions: dict[str, str] = {}

    class RecordingClient:
        def __init__(self, host: str, existing_token: str | None = None, namespace: str | None = None) -> None:
            calls.append(("init", host))

        def get_pipeline_id(self, name: str) -> str | None:
            return known.get(name)

        def upload_pipeline(self, path: str, pipeline_name: str) -> SimpleNamespace:
            assert yaml.safe_load(Path(path).read_text().split("\n---")[0])["pipelineInfo"]["name"] == "salmon"
            calls.append(("upload_pipeline", pipeline_name))
            known[pipeline_name] = "p-1"
            versions[pipeline_name] = "v-1"  # KFP names the first version after the pipeline
            return SimpleNamespace(pipeline_id="p-1")

        def list_pipeline_versions(self, pipeline_id: str, page_token: str = "", page_size: int = 10
                                   ) -> SimpleNamespace:
            items = [SimpleNamespace(display_name=n, pipeline_version_id=i) for n, i in versions.items()]
            start = int(page_token or 0)
            page = items[start:start + min(page_size, 1)]  # one per page: the paging is exercised
            more = start + 1 < len(items)
            return SimpleNamespace(pipeline_versions=page, next_page_token=str(start + 1) if more else "")

        def upload_pipeline_version(self, path: str, pipeline_version_name: str, pipeline_id: str) -> SimpleNamespace:
            calls.append(("upload_pipeline_version", pipeline_version_name))
            versions[pipeline_version_name] = f"v-{len(versions) + 1}"
            return SimpleNamespace(pipeline_version_id=versions[pipeline_version_name])

        def create_experiment(self, name: str, namespace: str | None = None) -> SimpleNamespace:
            return SimpleNamespace(experiment_id="e-1")

        def run_pipeline(self, experiment_id: str, job_name: str, params: dict[str, Any], pipeline_id: str,
                         version_id: str, enable_caching: bool, service_account: str | None) -> SimpleNamespace:
            calls.append(("run", (pipeline_id, version_id, params, enable_caching, job_name)))
            assert service_account == kw.get("service_account")
            return SimpleNamespace(run_id="r-1")

    monkeypatch.setattr(kfp, "Client", RecordingClient)
    kw: dict[str, Any] = {"experiment": "salmon", "token": None, "namespace": None, "enable_caching": True,
                          "say": lambda _: None}
    assert cli.submit("http://kfp", {"rm_epochs": 2.0}, version=None, **kw) == "r-1"
    assert cli.submit("http://kfp", {}, version=None, **kw) == "r-1"  # the same spec: its version, uploaded once
    assert cli.submit("http://kfp", {}, version=None, name="my-run", **kw) == "r-1"  # and reused
    kinds = [c[0] for c in calls]
    assert kinds == ["init", "upload_pipeline", "run", "init", "upload_pipeline_version", "run", "init", "run"]
    digest_version = calls[4][1]
    assert re.fullmatch(r"salmon-v-[0-9a-f]{12}", digest_version)
    assert calls[2][1][:4] == ("p-1", "v-1", {"rm_epochs": 2.0}, True)
    assert calls[5][1][1] == calls[7][1][1] == versions[digest_version]
    assert re.fullmatch(r"salmon-\d{8}-\d{6}", calls[2][1][4]) and calls[7][1][4] == "my-run"
    with pytest.raises(SalmonInputError, match="exists already"):
        cli.submit("http://kfp", {}, version=digest_version.removeprefix("salmon-"), **kw)
    kw["service_account"] = "salmon-pipeline-runner"
    assert cli.submit("http://kfp", {}, version="v3", **kw) == "r-1"
    assert calls[-2] == ("upload_pipeline_version", "salmon-v3")


def test_submit_to_an_unreachable_server_exits_3_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    from salmon.cli import main

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = main(["pipeline", "submit", "--host", f"http://127.0.0.1:{port}"])
    err = capsys.readouterr().err
    assert code == 3, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "could not be reached" in lines[0] and f"127.0.0.1:{port}" in lines[0], err


def test_wait_follows_the_run_to_its_end(monkeypatch: pytest.MonkeyPatch) -> None:
    import kfp

    from pipelines import kfp_server as cli

    states = iter(["SUCCEEDED", "FAILED"])

    class WaitingClient:
        def __init__(self, **_: Any) -> None:
            pass

        def wait_for_run_completion(self, run_id: str, timeout: float) -> SimpleNamespace:
            return SimpleNamespace(state=next(states))

    monkeypatch.setattr(kfp, "Client", WaitingClient)
    said: list[str] = []
    assert cli.wait_for_run("http://kfp", "r-1", token=None, namespace=None, timeout_s=5, say=said.append) == 0
    assert cli.wait_for_run("http://kfp", "r-1", token=None, namespace=None, timeout_s=5, say=said.append) == 1
    assert said == ["run r-1 ended: SUCCEEDED", "run r-1 ended: FAILED"]
    assert cli.run_link("http://kfp/", "r-1") == "http://kfp/#/runs/details/r-1"


def test_a_principle_set_is_registered_once_per_digest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    from salmon import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking.setup_tracking(tmp_path, "prompts")
    first = tracking.register_principle_set("nano", "sha256:aaa", "Be brief.", "1")
    assert tracking.register_principle_set("nano", "sha256:aaa", "Be brief.", "1") == first
    second = tracking.register_principle_set("nano", "sha256:bbb", "Be briefer.", "2")
    assert first == "prompts:/salmon-principles-nano/1" and second == "prompts:/salmon-principles-nano/2"
    assert mlflow.genai.load_prompt(second).tags["salmon.digest"] == "sha256:bbb"


def test_stage_knobs_reach_their_stage_through_the_plan() -> None:
    """rl_principle_ids, ppo_steps, rm_epochs and eval_limit arrive in the stages' plans (winning over
    stage_overrides), so a change to one of them changes only that stage's plan."""
    from salmon.tasks.common import StagePlan
    from salmon.tasks.plan import plan_task

    def plans(**params: object) -> dict[str, StagePlan]:
        out = plan_task(preset="nano", stage_overrides={"ppo": {"total_steps": 2}, "train_rm": {"epochs": 9.0}},
                        selfalign_rules="", label_principles="", rl_principles="", params=dict(params),
                        register=False)
        return {stage: StagePlan.from_json(text) for stage, text in out.items()}

    given = plans(rl_principle_ids=["detailed"], ppo_steps=5, rm_epochs=0.5, eval_limit=7)
    assert given["ppo"].overrides["rl_principle_ids"] == ["detailed"] and given["ppo"].overrides["total_steps"] == 5
    assert given["train_rm"].overrides["epochs"] == 0.5 and given["eval_policy"].overrides["limit"] == 7
    zero = plans(ppo_steps=0, eval_limit=0, rl_principle_ids=[])  # 0 and [] keep the stage's own values
    assert zero["ppo"].overrides == {"total_steps": 2} and "limit" not in zero["eval_policy"].overrides
    other = plans(rl_principle_ids=["detailed"], ppo_steps=5, rm_epochs=0.5, eval_limit=8)
    changed = {s for s in given if given[s].to_json() != other[s].to_json()}
    assert changed == {"eval_policy"}


def test_stage_values_wire_artifacts_to_config_fields() -> None:
    """One table maps artifacts to config values: the model subfolders and the seed offsets."""
    from salmon.tasks.wiring import stage_values

    art = {name: f"/a/{name}" for name in ("prompts", "base_model", "sft", "reward_model", "policy", "evaluation",
                                           "pairs", "judgements", "instances", "sft_data")}
    assert stage_values("ppo", art) == {"prompts": "/a/prompts", "policy_model": "/a/base_model",
                                        "policy_adapter": "/a/sft/adapter", "reward_model": "/a/reward_model/model",
                                        "output_dir": "/a/policy"}
    assert stage_values("eval_policy", art)["policy_adapter"] == "/a/policy/policy"
    assert stage_values("sample", art, seed=10, backend="hf")["seeds"] == [11, 12]
    assert stage_values("selfalign", art, seed=10)["seed"] == 15
    assert stage_values("aggregate", art, seed=10)["seed"] == 52
    assert "pmp_data" not in stage_values("train_rm", art)
    assert stage_values("train_rm", {**art, "pmp_data": "/a/pmp"})["pmp_data"] == "/a/pmp"
