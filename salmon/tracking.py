"""MLflow lineage: one parent run per pipeline run, one nested run per stage, datasets,
principle sets in the prompt registry, models in the registry, alias promotion.

Where the tracking server is:

- ``MLFLOW_TRACKING_URI`` when set (a real server; artifacts on S3 use ``MLFLOW_S3_ENDPOINT_URL``
  and the AWS variables through boto3);
- otherwise ``sqlite:///<out>/mlflow.db`` with artifacts in ``<out>/mlartifacts`` (the embedded
  default of ``salmon demo``).

Which run a stage logs into, first match wins:

1. ``MLFLOW_RUN_ID``: a run made for this task by the orchestrator (KFP 2.17's native MLflow
   integration injects one per task);
2. a run under the parent ``SALMON_MLFLOW_PARENT_RUN_ID`` tagged with the same stage and task
   key: a retried task reopens its own run instead of adding a second one;
3. a new run named after the stage, nested under the parent when there is one.

mlflow is imported inside the functions: the package imports without it.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from salmon.core.stages import STAGES

PARENT_ENV = "SALMON_MLFLOW_PARENT_RUN_ID"
KFP_RUN_ENV = "SALMON_KFP_RUN_ID"
DEFAULT_EXPERIMENT = "salmon"
MODEL_NAMES = {name: stage.registered_name for name, stage in STAGES.items() if stage.registered_name}
"""Training stage -> its model's name in the registry (from the catalogue, :mod:`salmon.core.stages`)."""
"""Registered model name of each training stage's output."""

# Pinned requirements of logged models: without an explicit list MLflow infers torchvision
# for torch models, and the PyPI torchvision breaks next to the CPU torch build.
# The rest is what the shipped salmon modules import (pydantic, PyYAML) and what downloads a base
# model from S3 (boto3).
MODEL_REQUIREMENTS = ["torch==2.13.0", "transformers==5.23.0", "peft==0.21.2", "safetensors", "pydantic>=2",
                      "pyyaml", "boto3"]
SIGNATURE_ONLY_ENV = "SALMON_PYFUNC_SIGNATURE_ONLY"
"""Set while a model is logged: MLflow runs the input example through the model to check it
against the signature; with this set the model loads no weights and answers placeholders of the
signature's types, so logging never loads the model (a launcher pod need not hold it)."""
BASE_MODEL_NAME = "salmon-base"
"""Name of the logged model that stands for a pipeline's base model (not registered)."""


def embedded_uri(out_dir: str | Path) -> str:
    return f"sqlite:///{Path(out_dir).resolve() / 'mlflow.db'}"


def setup_tracking(out_dir: str | Path, experiment: str = DEFAULT_EXPERIMENT) -> str:
    """Point MLflow at ``MLFLOW_TRACKING_URI`` or the embedded database under ``out_dir``,
    make sure ``experiment`` exists (artifacts in ``<out>/mlartifacts`` for the embedded store)
    and export both so that child processes (pipeline tasks) log to the same place."""
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI") or embedded_uri(out_dir)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        location = None
        if uri.startswith("sqlite:"):
            location = (Path(out_dir).resolve() / "mlartifacts").as_uri()
        mlflow.create_experiment(experiment, artifact_location=location)
    os.environ["MLFLOW_EXPERIMENT_NAME"] = experiment
    mlflow.set_experiment(experiment)
    return uri


def start_parent_run(name: str, tags: dict[str, str]) -> str:
    """Create the parent run of one pipeline run; returns its id (also exported to children)."""
    import mlflow

    client = mlflow.MlflowClient()
    exp = mlflow.get_experiment_by_name(os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT))
    assert exp is not None, "setup_tracking() first"
    run = client.create_run(exp.experiment_id, run_name=name, tags={"salmon.kind": "pipeline", **tags})
    os.environ[PARENT_ENV] = run.info.run_id
    return str(run.info.run_id)


def end_parent_run(run_id: str, status: str = "FINISHED") -> None:
    import mlflow

    mlflow.MlflowClient().set_terminated(run_id, status=status)


def _find_task_run(client: Any, experiment_id: str, parent: str, stage: str, task_key: str) -> str | None:
    runs = client.search_runs(
        [experiment_id],
        filter_string=(f"tags.mlflow.parentRunId = '{parent}' and tags.`salmon.stage` = '{stage}' "
                       f"and tags.`salmon.task_key` = '{task_key}'"),
        max_results=1)
    return str(runs[0].info.run_id) if runs else None


def start_stage_run(stage: str, task_key: str, tags: dict[str, str] | None = None) -> str:
    """Start (or reopen) the MLflow run of one stage task as the active run and return its id;
    the caller ends it with ``mlflow.end_run(status)``. See the module docstring for which run.

    ``task_key`` identifies the task's work (a digest of its config and inputs): a retry with
    the same key reopens the same run."""
    import mlflow

    experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT)
    if mlflow.get_experiment_by_name(experiment) is None and not os.environ.get("MLFLOW_EXPERIMENT_ID"):
        mlflow.create_experiment(experiment)
    exp = mlflow.set_experiment(experiment_name=None if os.environ.get("MLFLOW_EXPERIMENT_ID") else experiment,
                                experiment_id=os.environ.get("MLFLOW_EXPERIMENT_ID"))
    client = mlflow.MlflowClient()
    parent = os.environ.get(PARENT_ENV)
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id and parent:
        run_id = _find_task_run(client, exp.experiment_id, parent, stage, task_key)
    all_tags = {"salmon.stage": stage, "salmon.task_key": task_key, **(tags or {})}
    if kfp_run := os.environ.get(KFP_RUN_ENV):
        all_tags["kfp.run_id"] = kfp_run
    if run_id:
        active = mlflow.start_run(run_id=run_id)
        mlflow.set_tags(all_tags)
    elif parent:
        active = mlflow.start_run(run_name=stage, parent_run_id=parent, nested=True, tags=all_tags)
    else:
        active = mlflow.start_run(run_name=stage, tags=all_tags)
    return str(active.info.run_id)


@contextmanager
def stage_run(stage: str, task_key: str, tags: dict[str, str] | None = None) -> Iterator[str]:
    """The MLflow run of one stage task as a context (``start_stage_run``); yields its id and
    ends the run FINISHED, or FAILED when the block raises."""
    import mlflow

    run_id = start_stage_run(stage, task_key, tags)
    try:
        yield run_id
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")


def tracking_problem(timeout_s: float = 5.0, attempts: int = 3, pause_s: float = 2.0) -> str | None:
    """Why the tracking server cannot be reached, or ``None`` when it can (or the store is a
    local database or folder). Any HTTP answer from ``<uri>/health`` counts as reachable; a
    refused connection, a DNS failure or a timeout, ``attempts`` times in a row, does not."""
    import time
    import urllib.error
    import urllib.request

    import mlflow

    uri = str(mlflow.get_tracking_uri())  # what MLflow will use: set_tracking_uri(), else the env
    if not uri.startswith(("http://", "https://")):
        return None
    reason = ""
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):  # noqa: S310 (http(s) only)
                return None
        except urllib.error.HTTPError:
            return None  # the server answered
        except (urllib.error.URLError, OSError) as e:
            reason = str(getattr(e, "reason", e))
        if attempt + 1 < attempts:
            time.sleep(pause_s)
    return f"{uri} unreachable ({reason})"


def wait_for_tracking(timeout_s: float, poll_s: float = 5.0) -> str | None:
    """Wait up to ``timeout_s`` for the tracking server; returns the last problem, or ``None``."""
    import time

    deadline = time.monotonic() + timeout_s
    while (problem := tracking_problem(attempts=1)) is not None and time.monotonic() < deadline:
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
    return problem


def flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A config as MLflow params: nested keys joined with '.', values as JSON text."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat_params(value, name + "."))
        else:
            out[name] = value if isinstance(value, str) else json.dumps(value)
    return out


def numeric_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers among (nested) metrics, with '/'-joined names; booleans become 0/1."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(numeric_metrics(value, name + "/"))
        elif isinstance(value, bool):
            out[name] = float(value)
        elif isinstance(value, int | float) and math.isfinite(value):  # drop NaN and infinities
            out[name] = float(value)
    return out


def log_stage_config(config: dict[str, Any]) -> None:
    import mlflow

    mlflow.log_params(flat_params(config))


def log_metrics(metrics: dict[str, Any], step: int | None = None, model_id: str | None = None) -> None:
    """Numeric ``metrics`` on the active run; with ``model_id`` also on that logged model."""
    import mlflow

    values = numeric_metrics(metrics)
    if values:
        mlflow.log_metrics(values, step=step, model_id=model_id)


def log_train_log(path: str | Path) -> int:
    """Per-step metrics from a stage's ``train_log.jsonl`` (one JSON object per step)."""
    import mlflow

    p = Path(path)
    if not p.is_file():
        return 0
    from mlflow.entities import Metric

    rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    import time

    now = int(time.time() * 1000)
    batch = [Metric(f"train/{k}", v, now, int(row["step"]))
             for row in rows for k, v in numeric_metrics({x: y for x, y in row.items() if x != "step"}).items()]
    client = mlflow.MlflowClient()
    run = mlflow.active_run()
    assert run is not None
    for start in range(0, len(batch), 900):
        client.log_batch(run.info.run_id, metrics=batch[start:start + 900])
    return len(rows)


def _dataset_source(uri: str) -> Any:
    """MLflow's own dataset source for ``uri``: ``s3`` for ``s3://``, ``local`` for a path or
    ``file://`` URI (``http`` only for http(s) URLs)."""
    from mlflow.data.dataset_source_registry import _dataset_source_registry

    kind = "s3" if uri.startswith("s3://") else "http" if uri.startswith(("http://", "https://")) else "local"
    cls = next(c for c in _dataset_source_registry.sources if c._get_source_type() == kind)
    return cls(uri)


def log_dataset(name: str, uri: str, digest: str, context: str, rows: int | None = None) -> None:
    """Record a dataset the stage read (``context`` input) or wrote (``output``) with its digest."""
    import mlflow
    from mlflow.data.meta_dataset import MetaDataset

    # MLflow keeps at most 36 characters of a dataset digest; the full one goes in a tag.
    ds = MetaDataset(source=_dataset_source(uri), name=name, digest=digest.removeprefix("sha256:")[:32])
    tags = {"salmon.digest": digest}
    if rows is not None:
        tags["salmon.rows"] = str(rows)
    mlflow.log_input(ds, context=context, tags=tags)


def log_model_input(model_id: str) -> None:
    """Record a logged model the active run read (MLflow 3 model inputs; the client call, as the
    fluent ``mlflow.log_inputs(models=...)`` is refused outside Databricks)."""
    import mlflow
    from mlflow.entities import LoggedModelInput

    run = mlflow.active_run()
    assert run is not None, "log_model_input needs an active run"
    mlflow.MlflowClient().log_inputs(run.info.run_id, models=[LoggedModelInput(model_id)])


def logged_model_id(uri: str) -> str | None:
    """The id of the logged model ``uri`` names (``models:/m-...``, or a registered
    ``models:/<name>/<version>`` / ``@<alias>`` made from one) in this tracking store; ``None``
    when there is none."""
    import mlflow

    client = mlflow.MlflowClient()
    try:
        if m := LOGGED_MODEL_URI.match(uri):
            return str(client.get_logged_model(m.group(1)).model_id)
        if m := REGISTRY_URI.match(uri):
            name, version, alias = m.groups()
            mv = (client.get_model_version(name, version) if version
                  else client.get_model_version_by_alias(name, alias))
            # a version made from a logged model names it in model_id (or, over REST, only in source)
            if mv.model_id:
                return str(mv.model_id)
            if m := LOGGED_MODEL_URI.match(str(mv.source or "")):
                return str(client.get_logged_model(m.group(1)).model_id)
    except mlflow.exceptions.MlflowException:
        return None
    return None


def pinned_registry_uri(uri: str) -> str:
    """``models:/<name>@<alias>`` as the version the alias points at now (an alias moves; a
    reference recorded in a model must not); other URIs unchanged."""
    import mlflow

    m = REGISTRY_URI.match(uri)
    if not m or not m.group(3):
        return uri
    mv = mlflow.MlflowClient().get_model_version_by_alias(m.group(1), m.group(3))
    return f"models:/{m.group(1)}/{mv.version}"


def base_model_reference(source: str, folder: str | Path, digest: str, prompt_format: str) -> tuple[str, str | None]:
    """The portable reference of a pipeline's base model and the id of the logged model that
    stands for it: ``(reference, model_id)``.

    - ``s3://`` source: the reference is the prefix; an external logged model (no artifacts)
      named ``salmon-base`` records it for lineage;
    - ``models:/`` source: the registered version (an alias pinned to its version now) and the
      logged model it was made from, if any;
    - anything else (``nano``, a packaged model, a local folder): the folder is logged once as
      the ``salmon-base`` pyfunc model (found again by its digest) and referenced as
      ``models:/m-<id>``.
    """
    import mlflow

    if source.startswith("models:/"):
        pinned = pinned_registry_uri(source)
        return pinned, logged_model_id(pinned)
    experiment = mlflow.get_experiment_by_name(os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT))
    found = mlflow.search_logged_models(
        experiment_ids=[experiment.experiment_id] if experiment else None,
        filter_string=f"name = '{BASE_MODEL_NAME}' AND tags.`salmon.digest` = '{digest}'",
        output_format="list", max_results=1) if experiment else []
    tags = {"salmon.digest": digest, "salmon.source": source or str(folder), "salmon.stage": "base_model"}
    if source.startswith("s3://"):
        model = found[0] if found else mlflow.create_external_model(name=BASE_MODEL_NAME, tags=tags)
        return source, str(model.model_id)
    if found:
        return f"models:/{found[0].model_id}", str(found[0].model_id)
    uri = log_model("base", folder, tags, prompt_format=prompt_format)
    return uri, uri.removeprefix("models:/")


def register_principle_set(name: str, digest: str, text: str, version: str) -> str:
    """The prompt-registry URI of a principle set: an existing version with the same digest, or a
    new version of ``salmon-principles-<name>`` holding the set's text."""
    import mlflow

    prompt_name = f"salmon-principles-{name}".replace("_", "-")
    client = mlflow.MlflowClient()
    try:
        found = client.search_prompt_versions(prompt_name)
    except mlflow.exceptions.MlflowException:  # the prompt does not exist yet
        found = []
    versions = list(getattr(found, "prompt_versions", found))
    for v in versions:
        if (v.tags or {}).get("salmon.digest") == digest:
            return f"prompts:/{prompt_name}/{v.version}"
    pv = mlflow.genai.register_prompt(
        name=prompt_name, template=text,
        commit_message=f"principle set {name} v{version} ({digest[:19]})",
        tags={"salmon.digest": digest, "salmon.set": name, "salmon.set_version": version})
    return f"prompts:/{prompt_name}/{pv.version}"


def _code_package(dest: Path) -> Path:
    """A copy of the ``salmon`` package's modules (``*.py`` only) under ``dest/salmon``: what a
    logged model ships in its ``code/`` folder so that it loads where salmon is not installed."""
    import shutil

    src = Path(__file__).parent
    out = dest / "salmon"
    shutil.copytree(src, out, ignore=lambda d, names: [n for n in names if not (n.endswith(".py") or
                                                                            (Path(d) / n).is_dir())
                                                       or n == "__pycache__"])
    return out


def log_model(stage: str, model_dir: str | Path, tags: dict[str, str], *, base_model: str = "",
              base_model_digest: str = "", prompt_format: str = "") -> str:
    """Log a model folder as a pyfunc model (:mod:`salmon.mlflow_model`: loaded from code,
    nothing pickled) and return its ``models:/m-...`` URI.

    ``stage`` is ``sft``, ``ppo``, ``train_rm`` or ``base``; ``base_model`` is the portable
    reference of the base the folder's adapter sits on (:func:`base_model_reference`) and
    ``base_model_digest`` its content digest, checked when the model loads. The model ships
    salmon's modules, lists its requirements, and has a signature and an input example."""
    import tempfile

    import mlflow

    if stage != "base" and not base_model:
        raise ValueError(f"a {stage} model needs the portable reference of its base model")
    reward = stage == "train_rm"
    code = Path(__file__).with_name("pyfunc_reward.py" if reward else "pyfunc_policy.py")
    example: list[Any] = ([{"prompt": "What is 2 + 3?", "response": "2 + 3 = 5.", "principles": ["Be concise."]}]
                          if reward else ["What is 2 + 3?"])
    settings: dict[str, Any] = {"kind": stage, "base_model": base_model, "base_model_digest": base_model_digest}
    if prompt_format:
        settings["prompt_format"] = prompt_format
    with tempfile.TemporaryDirectory(prefix="salmon-code-") as tmp:
        (Path(tmp) / "salmon_model.json").write_text(json.dumps(settings, indent=1), encoding="utf-8")
        previous = os.environ.get(SIGNATURE_ONLY_ENV)
        os.environ[SIGNATURE_ONLY_ENV] = "1"
        try:
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAMES.get(stage, BASE_MODEL_NAME), python_model=str(code),
                artifacts={"model": str(model_dir), "salmon_model": str(Path(tmp) / "salmon_model.json")},
                code_paths=[str(_code_package(Path(tmp)))], pip_requirements=MODEL_REQUIREMENTS, tags=tags,
                input_example=example)
        finally:
            if previous is None:
                os.environ.pop(SIGNATURE_ONLY_ENV, None)
            else:
                os.environ[SIGNATURE_ONLY_ENV] = previous
    return str(info.model_uri)


def register_model(model_uri: str, name: str, tags: dict[str, str]) -> str:
    """Register ``model_uri`` as a version of ``name`` (reusing a version of the same logged
    model, so a retried register step adds nothing); returns the version."""
    import mlflow

    client = mlflow.MlflowClient()
    try:
        existing = client.search_model_versions(f"name = '{name}'")
    except mlflow.exceptions.MlflowException:  # the registered model does not exist yet
        existing = []
    for v in existing:
        if (v.tags or {}).get("salmon.model_uri") == model_uri:
            for k, val in tags.items():
                client.set_model_version_tag(name, v.version, k, val)
            return str(v.version)
    mv = mlflow.register_model(model_uri, name, tags={**tags, "salmon.model_uri": model_uri})
    return str(mv.version)


def set_alias(name: str, alias: str, version: str, audit: dict[str, str]) -> None:
    """Point ``name@alias`` at ``version`` and leave an audit trail on the version."""
    import mlflow

    client = mlflow.MlflowClient()
    client.set_registered_model_alias(name, alias, version)
    for k, v in audit.items():
        client.set_model_version_tag(name, version, f"salmon.{alias}.{k}", v)


def run_datasets(run_id: str, context: str = "output") -> list[tuple[str, str, str]]:
    """``(name, digest, rows)`` of the datasets run ``run_id`` logged with ``context``."""
    import mlflow

    out = []
    for d in mlflow.MlflowClient().get_run(run_id).inputs.dataset_inputs:
        tags = {t.key: t.value for t in d.tags}
        if tags.get("mlflow.data.context") == context:
            out.append((d.dataset.name, tags.get("salmon.digest", d.dataset.digest), tags.get("salmon.rows", "")))
    return out


def describe(name: str, version: str | None, description: str) -> None:
    """Set the description of registered model ``name`` (``version`` None) or of one version."""
    import mlflow

    client = mlflow.MlflowClient()
    if version is None:
        client.update_registered_model(name, description=description)
    else:
        client.update_model_version(name, version, description=description)


def tag_version(name: str, version: str, tags: dict[str, str]) -> None:
    import mlflow

    client = mlflow.MlflowClient()
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)


REGISTRY_URI = re.compile(r"^models:/([^/@]+)(?:/(\d+)|@([A-Za-z0-9_-]+))$")
"""``models:/<name>/<version>`` or ``models:/<name>@<alias>``."""
LOGGED_MODEL_URI = re.compile(r"^models:/(m-[0-9a-f]+)$")
"""``models:/m-<id>``: a logged model (MLflow 3), registered or not."""


def download_model_folder(uri: str, dest: str | Path) -> int:
    """Copy the Hugging Face model folder of a registered model version into ``dest``; returns
    the number of files.

    The version's artifacts are downloaded and the folder is found in them: the shallowest one
    with ``config.json`` and weights (a model logged with the ``transformers`` flavor keeps it in
    ``model/``, one logged as a pyfunc artifact wherever it was put). When that folder has no
    tokenizer, the tokenizer files of the artifacts (the ``transformers`` flavor's
    ``components/tokenizer/``) are copied in beside the weights.

    Raises:
        SalmonInputError: a malformed URI, an unknown model or version, or artifacts without a
            model folder.
    """
    import shutil
    import tempfile

    import mlflow

    from salmon.core.errors import SalmonInputError
    from salmon.core.io import TOKENIZER_FILES

    if not (REGISTRY_URI.match(uri) or LOGGED_MODEL_URI.match(uri)):
        raise SalmonInputError(f"model {uri}", "not a registered model URI",
                               "write models:/<name>/<version>, models:/<name>@<alias> or models:/m-<id>")
    with tempfile.TemporaryDirectory(prefix="salmon-registry-") as tmp:
        try:
            root = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        except mlflow.exceptions.MlflowException as e:
            raise SalmonInputError(f"model {uri}", f"cannot be downloaded ({e.message})".replace("\n", " "),
                                   f"check the name, version or alias in the registry at "
                                   f"{mlflow.get_tracking_uri()}") from None
        weights = ("*.safetensors", "pytorch_model*.bin")
        folders = sorted((p.parent for p in root.rglob("config.json")
                          if any(any(p.parent.glob(w)) for w in weights)), key=lambda p: len(p.parts))
        if not folders:
            raise SalmonInputError(f"model {uri}", "its artifacts hold no Hugging Face model folder (config.json "
                                   "and weights)", "register a version whose artifacts include the "
                                   "save_pretrained folder (e.g. logged with the transformers flavor)")
        model = folders[0]
        shutil.copytree(model, dest, dirs_exist_ok=True)
        if not any((model / f).is_file() for f in TOKENIZER_FILES):
            tokenizers = sorted((p.parent for name in TOKENIZER_FILES for p in root.rglob(name)),
                                key=lambda p: len(p.parts))
            if tokenizers:
                for f in tokenizers[0].iterdir():
                    if f.is_file() and not (Path(dest) / f.name).exists():
                        shutil.copy2(f, Path(dest) / f.name)
    return sum(1 for p in Path(dest).rglob("*") if p.is_file())
