"""Logged models reference their base portably (salmon.tracking, salmon.mlflow_model): the base
is logged once and found again by its digest, an S3 base stays on S3, a LoRA reward model loads
from the registry with the training machine's base folder gone, and a changed base is refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("mlflow")
pytest.importorskip("torch")


@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from salmon import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    tracking.setup_tracking(tmp_path / "mlflow", experiment="logged-models")
    return tmp_path


def test_the_base_is_logged_once_per_digest_and_an_s3_base_stays_on_s3(store: Path, tiny_model: str) -> None:
    import mlflow

    from salmon.core.digest import digest_dir
    from salmon.tracking import models as tracking_models

    digest = digest_dir(tiny_model)
    with mlflow.start_run():
        ref, model_id = tracking_models.base_model_reference("nano", tiny_model, digest, "dromedary")
        again = tracking_models.base_model_reference("/elsewhere/same-bytes", tiny_model, digest, "dromedary")
        s3_ref, s3_id = tracking_models.base_model_reference("s3://models/llama", tiny_model, "sha256:" + "0" * 64, "")
    assert ref == f"models:/{model_id}" and again == (ref, model_id), "found again by its digest"
    assert s3_ref == "s3://models/llama" and s3_id and s3_id != model_id
    external = mlflow.MlflowClient().get_logged_model(s3_id)
    assert external.name == "salmon-base" and external.tags["salmon.source"] == "s3://models/llama"
    base = mlflow.MlflowClient().get_logged_model(model_id)
    assert base.tags["salmon.digest"] == digest
    assert tracking_models.logged_model_id(ref) == model_id
    assert tracking_models.logged_model_id("models:/m-0123") is None


def test_dataset_sources_are_mlflows_local_and_s3() -> None:
    from salmon.tracking import _dataset_source

    assert _dataset_source("/data/pairs.jsonl")._get_source_type() == "local"
    assert _dataset_source("file:///data/pairs.jsonl")._get_source_type() == "local"
    assert _dataset_source("s3://bucket/pairs.jsonl")._get_source_type() == "s3"


def _log_lora_rm(tiny_rm_lora: str, base: str, digest: str) -> str:
    import mlflow

    from salmon.tracking import models as tracking_models

    with mlflow.start_run():
        ref, _ = tracking_models.base_model_reference("nano", base, digest, "dromedary")
        return tracking_models.log_model("train_rm", tiny_rm_lora, {}, base_model=ref, base_model_digest=digest)


def test_a_lora_reward_model_loads_from_mlflow_without_its_training_base_folder(
        store: Path, tiny_model: str, tiny_rm_lora: str) -> None:
    import mlflow
    import torch

    from salmon.core.digest import digest_dir
    from salmon.reward.model import RMEncoder, load_reward_model, score_sequences

    base = store / "base"
    shutil.copytree(tiny_model, base)
    rm = shutil.copytree(tiny_rm_lora, store / "rm")
    record = {"prompt": "What is 2 + 3?", "response": "2 + 3 = 5.", "principles": ["Be concise."]}
    model, tok, meta = load_reward_model(str(rm), device=torch.device("cpu"), base_model=str(base))
    local = score_sequences(model, [RMEncoder(tok, meta.limits()).encode_rm(record["response"], record["prompt"],
                                                                            record["principles"])],
                            int(tok.pad_token_id))[0]
    uri = _log_lora_rm(str(rm), str(base), digest_dir(base))
    shutil.rmtree(base)  # rm.json still names the training machine's folder: it must not be needed
    loaded = mlflow.pyfunc.load_model(uri)
    assert loaded.predict([record]) == [pytest.approx(local, abs=1e-5)]
    assert loaded.metadata.signature is not None and loaded.metadata.saved_input_example_info


def test_a_base_whose_bytes_changed_is_refused(store: Path, tiny_model: str, tiny_rm_lora: str) -> None:
    import mlflow

    from salmon.core.errors import SalmonInputError

    uri = _log_lora_rm(tiny_rm_lora, tiny_model, "sha256:" + "0" * 64)
    with pytest.raises(SalmonInputError, match="differs from the sha256:000000000000 the model was trained on"):
        mlflow.pyfunc.load_model(uri)
