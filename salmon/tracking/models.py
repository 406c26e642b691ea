"""MLflow's logged models and model registry: the models salmon logs (SFT adapter, reward model,
policy, and the base they were trained on), their registered versions, aliases and descriptions,
and the model folder behind a ``models:/`` URI.

mlflow is imported inside the functions: the package imports without it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from salmon.core.stages import STAGES
from salmon.tracking import DEFAULT_EXPERIMENT

MODEL_NAMES = {name: stage.registered_name for name, stage in STAGES.items() if stage.registered_name}
"""Training stage -> its model's name in the registry (from the catalogue, :mod:`salmon.core.stages`)."""

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


def _code_package(dest: Path) -> Path:
    """A copy of the ``salmon`` package's modules (``*.py`` only) under ``dest/salmon``: what a
    logged model ships in its ``code/`` folder so that it loads where salmon is not installed."""
    import shutil

    src = Path(__file__).resolve().parents[1]  # the salmon package
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
    code = Path(__file__).resolve().parents[1] / ("pyfunc_reward.py" if reward else "pyfunc_policy.py")
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
