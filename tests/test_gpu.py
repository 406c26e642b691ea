"""The `gpu` tier: what only a CUDA device can run. Every test skips without one; on a GPU
machine `scripts/gpu-check.sh` runs them (`pytest -m gpu`) and the real world at a larger size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from salmon.cli import main

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _needs_cuda() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")


def _sft_data(tmp_path: Path) -> Path:
    from salmon.core.io import write_jsonl
    from salmon.core.records import SFTExample

    rows = [SFTExample(example_id=f"g{i}", instruction=f"What is {i} + {i + 1}?", input="", prompt_type="reasoning",
                       response=f"{i} + {i + 1} = {2 * i + 1}.", source="selfalign") for i in range(16)]
    path = tmp_path / "sft.jsonl"
    write_jsonl(path, rows)
    return path


@pytest.mark.parametrize("extra", [["dtype=bfloat16"], ["quantize=4bit"]], ids=["bf16", "qlora"])
def test_sft_on_smollm2_trains_on_cuda(tmp_path: Path, smollm2_model: str, extra: list[str],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """SFT of a LoRA adapter on SmolLM2 on the GPU, in bf16 and as QLoRA (NF4): the loss falls
    and the adapter is written."""
    out = tmp_path / "sft"
    assert main(["sft", "--preset", "small", f"data={_sft_data(tmp_path)}", "base_model=smollm2",
                 f"output_dir={out}", "epochs=4", "batch_size=4", "micro_batch_size=4", "log_every=1",
                 "device=cuda", *extra]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    assert metrics["finished"] and (out / "adapter" / "adapter_model.safetensors").is_file()
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < log[0]["loss"], log
