"""Packaged base models (``salmon base prepare``) and the pre-flight checks of model folders."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from salmon.cli import main
from salmon.core.errors import SalmonInputError

REPO = Path(__file__).resolve().parents[1]


def test_packaged_models_file_lists_every_packaged_model_at_its_version() -> None:
    from salmon.base_models import PACKAGED

    lines = [ln.split("#")[0].strip() for ln in (REPO / "packaged-models.txt").read_text().splitlines()]
    pins = dict(ln.split("==") for ln in lines if ln)
    assert pins == {spec.distribution: spec.version for spec in PACKAGED.values()}
    makefile = (REPO / "Makefile").read_text()
    assert "--no-deps -r packaged-models.txt" in makefile


def test_prepared_smollm2_is_a_clean_hf_folder(smollm2_model: str) -> None:
    folder = Path(smollm2_model)
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert (config["num_hidden_layers"], config["num_key_value_heads"], config["tie_word_embeddings"]) == (30, 3, True)
    marker = json.loads((folder / "salmon_base.json").read_text())
    assert marker["parameters"] == 134_515_008 and len(marker["source_sha256"]) == 64
    assert (folder / "SHA256SUMS").is_file() and (folder / "model.safetensors").is_file()
    from salmon.modeling import load_tokenizer

    tok = load_tokenizer(smollm2_model)
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert tok.chat_template and "<|im_start|>" in tok.chat_template


def test_prepare_reuses_its_cache_and_prints_the_folder(smollm2_model: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    t0 = time.monotonic()
    assert main(["base", "prepare", "smollm2"]) == 0
    assert capsys.readouterr().out.strip() == smollm2_model
    assert time.monotonic() - t0 < 10  # a digest check, no conversion


def test_prepare_refuses_an_existing_folder_it_did_not_write(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("keep me")
    assert main(["base", "prepare", "smollm2", "--out", str(taken)]) == 2
    assert "is not a smollm2 folder" in capsys.readouterr().err
    assert (taken / "notes.txt").read_text() == "keep me"


def test_prepare_into_a_folder_copies_of_the_cache(smollm2_model: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """--out writes a folder of its own; the same --out again is reused, not converted twice."""
    out = tmp_path / "smol"
    assert main(["base", "prepare", "smollm2", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert (out / "model.safetensors").read_bytes() == (Path(smollm2_model) / "model.safetensors").read_bytes()
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert main(["base", "prepare", "smollm2", "--out", str(out)]) == 0
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp


def test_a_missing_package_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from salmon import base_models

    spec = base_models.PackagedModel(name="ghost", distribution="salmon-no-such-dist", version="1.0",
                                     suffix=".gguf", description="", license="")
    monkeypatch.setitem(base_models.PACKAGED, "ghost", spec)
    with pytest.raises(SalmonInputError, match="salmon-no-such-dist is not installed.*--no-deps"):
        base_models.prepare("ghost")


def _copy_model(src: str, dest: Path, **config_changes: object) -> Path:
    shutil.copytree(src, dest)
    (dest / "SHA256SUMS").unlink(missing_ok=True)
    config = json.loads((dest / "config.json").read_text())
    config.update(config_changes)
    (dest / "config.json").write_text(json.dumps(config))
    return dest


def test_a_quantized_folder_is_refused_before_any_training(tiny_model: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from salmon.core.io import write_jsonl
    from salmon.core.records import RMInstance, RMPrinciple, SFTExample

    quantized = _copy_model(tiny_model, tmp_path / "gguf", quantization_config={"quant_method": "gguf"})
    write_jsonl(tmp_path / "data.jsonl", [SFTExample(example_id="a", instruction="Hi?", response="Hello.")])
    line = RMPrinciple(principle_id="concise", negated=False, text="Be brief.", score=1.0)
    write_jsonl(tmp_path / "instances.jsonl", [RMInstance(
        instance_id="i", pair_id="p", augmentation_pass=0, instruction="Hi?", output_1="Hello.", output_2="Hi.",
        principles=[line], preference=1, dominant_index=0)])
    for stage, args in (("sft", [f"data={tmp_path / 'data.jsonl'}", f"base_model={quantized}"]),
                        ("train_rm", [f"instances={tmp_path / 'instances.jsonl'}", f"base_model={quantized}"])):
        out = tmp_path / f"out-{stage}"
        code = main([stage, *args, f"output_dir={out}", "device=cpu"])
        err = capsys.readouterr().err
        assert code == 2, err
        assert "quantization_config (quant_method gguf)" in err and "salmon base prepare" in err, err
        assert not (out / "checkpoints").exists()


def test_a_folder_without_a_tokenizer_is_refused(tiny_model: str, tmp_path: Path) -> None:
    from salmon.modeling import preflight

    bare = _copy_model(tiny_model, tmp_path / "bare")
    (bare / "tokenizer.json").unlink()
    with pytest.raises(SalmonInputError, match="has no tokenizer"):
        preflight(str(bare))


def test_preflight_notes_pad_as_eos_and_an_ignored_chat_template(smollm2_model: str, tiny_model: str) -> None:
    from salmon.modeling import preflight

    notes = preflight(smollm2_model, prompt_format="dromedary")
    assert any("pads with its eos '<|im_end|>'" in n for n in notes)
    assert any("prompt_format dromedary ignores" in n for n in notes)
    assert not any("ignores" in n for n in preflight(smollm2_model, prompt_format="chat_template"))
    assert not any("ignores" in n for n in preflight(tiny_model, prompt_format="dromedary"))


def test_the_pipeline_accepts_smollm2_as_base_model(tmp_path: Path, smollm2_model: str) -> None:
    from salmon.tasks.infra import base_model_task
    from salmon.tasks.params import validate_pipeline_params

    validate_pipeline_params({"base_model_uri": "smollm2"})
    info = base_model_task("smollm2", str(tmp_path / "base"))
    assert info["source"] == "smollm2"
    assert (tmp_path / "base" / "model.safetensors").read_bytes() == (
        Path(smollm2_model) / "model.safetensors").read_bytes()


def test_the_pipeline_takes_a_registered_model(tiny_model: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """models:/<name>@<alias>: the Hugging Face folder of a version logged with MLflow's
    transformers flavor (weights in model/, tokenizer in components/tokenizer/) becomes the base
    model folder, and loads to the same logits."""
    import mlflow
    import torch

    from salmon.modeling import load_causal_lm, load_tokenizer
    from salmon.tasks.infra import base_model_task
    from salmon.tasks.params import validate_pipeline_params

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    model = load_causal_lm(tiny_model, device=torch.device("cpu"))
    tok = load_tokenizer(tiny_model)
    experiment = mlflow.create_experiment("bases", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        mlflow.transformers.log_model(transformers_model={"model": model, "tokenizer": tok}, name="base",
                                      task="text-generation", registered_model_name="tiny-base",
                                      pip_requirements=["torch", "transformers"])
    mlflow.MlflowClient().set_registered_model_alias("tiny-base", "prod", "1")
    validate_pipeline_params({"base_model_uri": "models:/tiny-base@prod"})
    out = tmp_path / "base"
    info = base_model_task("models:/tiny-base@prod", str(out))
    assert info["source"] == "models:/tiny-base@prod" and (out / "config.json").is_file()
    ids = torch.tensor([load_tokenizer(str(out))("Add 7 and 5.")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(load_causal_lm(str(out), device=torch.device("cpu"))(ids).logits, model(ids).logits)
    with pytest.raises(SalmonInputError, match="cannot be downloaded"):
        base_model_task("models:/tiny-base@nope", str(tmp_path / "none"))
    with pytest.raises(SalmonInputError, match="not a supported model URI"):
        validate_pipeline_params({"base_model_uri": "models:/tiny-base"})


def test_the_pipeline_takes_a_model_folder_from_s3(tiny_model: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """s3://bucket/prefix/: the base_model task downloads the folder (moto as the endpoint) and the
    stages load it with from_pretrained to the same logits."""
    import boto3
    import torch
    from servers import moto_server

    from salmon.modeling import load_causal_lm, load_tokenizer
    from salmon.tasks.infra import base_model_task

    with moto_server() as url:
        for k, v in {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                     "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(k, v)
        client = boto3.client("s3", endpoint_url=url)
        client.create_bucket(Bucket="models")
        for f in Path(tiny_model).iterdir():
            client.upload_file(str(f), "models", f"tiny/{f.name}")
        out = tmp_path / "base"
        info = base_model_task("s3://models/tiny/", str(out))
    assert info["files"] == len(list(Path(tiny_model).iterdir()))
    ids = torch.tensor([load_tokenizer(str(out))("Add 7 and 5.")["input_ids"]])
    original = load_causal_lm(tiny_model, device=torch.device("cpu"))
    with torch.no_grad():
        assert torch.equal(load_causal_lm(str(out), device=torch.device("cpu"))(ids).logits, original(ids).logits)
