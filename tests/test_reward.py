"""RM mechanics (method §10 item 6), the encoder, save/load, training resume and `rm score`."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from salmon.core.io import read_jsonl, write_jsonl
from salmon.core.records import ScoredResponse, ScoreRequest

torch = pytest.importorskip("torch")


def test_bradley_terry_loss_hand_computed() -> None:
    from salmon.reward.loss import bradley_terry_loss, pairwise_accuracy

    chosen = torch.tensor([2.0, 0.5, -1.0])
    rejected = torch.tensor([1.0, 0.5, 1.0])
    # -log sigmoid(1) = 0.3132617, -log sigmoid(0) = log 2, -log sigmoid(-2) = 2.1269280
    expected = (0.31326169 + math.log(2) + 2.12692801) / 3
    assert float(bradley_terry_loss(chosen, rejected)) == pytest.approx(expected, abs=1e-6)
    assert pairwise_accuracy(chosen, rejected) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        bradley_terry_loss(chosen[None], rejected[None])


def test_lr_schedule_and_data_order() -> None:
    from salmon.reward.train import data_order, lr_multiplier

    assert lr_multiplier(0, 3, 10, "cosine") == pytest.approx(0.25)
    assert lr_multiplier(3, 3, 10, "cosine") == pytest.approx(1.0)
    assert lr_multiplier(10, 3, 10, "cosine") == pytest.approx(0.0)
    assert lr_multiplier(5, 0, 10, "linear") == pytest.approx(0.5)
    assert lr_multiplier(9, 0, 10, "constant") == 1.0
    batches = data_order(10, 1.5, 4, seed=0)
    assert len(batches) == 4 and all(len(b) == 4 for b in batches)
    assert sorted(i for b in batches[:2] for i in b) == sorted(set(i for b in batches[:2] for i in b))
    assert batches == data_order(10, 1.5, 4, seed=0) != data_order(10, 1.5, 4, seed=1)


@pytest.fixture(scope="module")
def rm(tiny_model: str):  # type: ignore[no-untyped-def]
    from salmon.modeling import load_backbone, load_tokenizer
    from salmon.reward.model import build_reward_model

    model = build_reward_model(load_backbone(tiny_model, device=torch.device("cpu")), seed=0).eval()
    return model, load_tokenizer(tiny_model)


def test_reward_shape_left_padding_and_last_token(rm) -> None:  # type: ignore[no-untyped-def]
    from salmon.reward.model import left_pad

    model, tok = rm
    short = tok("The quality of the output is")["input_ids"]
    long = tok("A much longer input. The quality of the output is")["input_ids"]
    ids, mask = left_pad([short, long], tok.pad_token_id)
    assert mask[0, 0] == 0 and mask[0, -1] == 1  # padding on the left
    with torch.no_grad():
        batched = model(ids, mask)
        alone = model(torch.tensor([short]), torch.ones(1, len(short), dtype=torch.long))
        # the reward is the head applied to the final-layer hidden state of the last token
        hidden = model.backbone(input_ids=torch.tensor([short])).last_hidden_state[:, -1]
        by_hand = model.head(hidden).squeeze(-1)
    assert batched.shape == (2,)
    assert float(batched[0]) == pytest.approx(float(alone[0]), abs=1e-5)  # padding is invisible
    assert float(alone[0]) == pytest.approx(float(by_hand[0]), abs=1e-5)
    changed = list(short[:-1]) + [tok("good")["input_ids"][-1]]
    with torch.no_grad():
        other = model(torch.tensor([changed]), torch.ones(1, len(changed), dtype=torch.long))
    assert float(other[0]) != pytest.approx(float(alone[0]), abs=1e-6)
    right_padded = torch.tensor([short + [tok.pad_token_id]])
    with pytest.raises(ValueError, match="left-padded"):
        model(right_padded, torch.tensor([[1] * len(short) + [0]]))


def test_encoder_truncates_the_response_never_the_stem(rm) -> None:  # type: ignore[no-untyped-def]
    from salmon.core import templates
    from salmon.modeling import encode
    from salmon.reward.model import EncodeLimits, RMEncoder

    _, tok = rm
    enc = RMEncoder(tok, EncodeLimits(model_max_length=120, query_len=8, response_len=400))
    ids = enc.encode_rm("word " * 300, "Please tell me something about rivers and lakes.", ["Be brief."])
    assert len(ids) == 120
    stem = encode(tok, templates.rm_prompt("x", "y", ["Be brief."]).closing)
    assert ids[-len(stem):] == stem
    text = tok.decode(ids)
    assert "rivers" not in text and "lakes." in text  # the instruction keeps its end
    from salmon.core.errors import SalmonInputError

    with pytest.raises(SalmonInputError, match="model_max_length"):
        RMEncoder(tok, EncodeLimits(40, 8, 10)).encode_rm("hi", "q", ["Be brief. " * 30])


def test_rm_prompt_layout() -> None:
    from salmon.core import templates

    p = templates.rm_prompt("RESP", "INSTR", ["Be brief.", "Be kind."], ["No self-praise."])
    text = p.text
    assert text.index("RESP") < text.index("INSTR") < text.index("- No self-praise.\n")
    assert text.index("- No self-praise.\n") < text.index("- Be brief.\n") < text.index("- Be kind.\n")
    assert text.endswith("The quality of the output is")


def _instances(tmp_path: Path, n: int, name: str = "instances.jsonl") -> Path:
    from salmon.core.aggregate import AggregateParams, aggregate, index_judgements
    from salmon.core.io import write_jsonl
    from salmon.core.principles import load_principle_set
    from salmon.judge.rules import judge_pairs_rules
    from salmon.nano.world import make_pairs, make_prompts

    pset = load_principle_set("nano")
    pairs = make_pairs(make_prompts(n, seed=8), seed=9)
    judged = index_judgements(judge_pairs_rules(pairs, pset.ids()))
    inst, _ = aggregate(pairs, judged, pset, AggregateParams(dimensions=tuple(pset.ids()), passes=1))
    path = tmp_path / name
    write_jsonl(path, inst)
    return path


def _train(tmp_path: Path, tiny_model: str, out: Path, **extra: object):  # type: ignore[no-untyped-def]
    from salmon.core.config import TrainRMConfig, build_config
    from salmon.stages.train_rm import run

    values = dict(instances=str(_instances(tmp_path, 24)), base_model=tiny_model,
                  output_dir=str(out), finetune="lora", lora_r=4, batch_size=4,
                  micro_batch_size=2, save_every=2, log_every=1, learning_rate=1e-3,
                  model_max_length=256, query_len=32, response_len=96)
    values.update(extra)
    return run(build_config(TrainRMConfig, stage="train_rm", values=values))


def test_train_resume_matches_an_uninterrupted_run(tmp_path: Path, tiny_model: str) -> None:
    from safetensors.torch import load_file

    full = _train(tmp_path, tiny_model, tmp_path / "full")
    log = [json.loads(line) for line in Path(full.outputs["train_log"]).read_text().splitlines()]
    assert log[-1]["step"] >= 3
    # a killed run: only its earliest kept checkpoint is on disk, no final model
    killed = tmp_path / "killed"
    _train(tmp_path, tiny_model, killed)
    ckpts = sorted((killed / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    assert int(ckpts[0].name.split("-")[1]) < log[-1]["step"]  # steps remain to be trained
    for path in ckpts[1:]:
        shutil.rmtree(path)
    shutil.rmtree(killed / "model")
    resumed = _train(tmp_path, tiny_model, killed)
    resumed_log = [json.loads(x) for x in Path(resumed.outputs["train_log"]).read_text().splitlines()]
    # the log before the checkpoint travels inside it: the resumed log is the whole log
    assert [{k: v for k, v in e.items() if k != "seconds"} for e in resumed_log] == \
        [{k: v for k, v in e.items() if k != "seconds"} for e in log]
    a = load_file(str(Path(full.outputs["model"]) / "reward_head.safetensors"))
    b = load_file(str(Path(resumed.outputs["model"]) / "reward_head.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    # and the resumed run did train: its head moved away from the initial head
    from salmon.reward.module import new_head

    init = new_head(a["weight"].shape[1], seed=42)
    assert not torch.allclose(init.weight, b["weight"], atol=1e-4)


def test_rm_score_cli_and_save_load(tmp_path: Path, tiny_model: str) -> None:
    from salmon.cli import main

    result = _train(tmp_path, tiny_model, tmp_path / "rm", finetune="full", epochs=0.5)
    model_dir = result.outputs["model"]
    assert (Path(model_dir) / "rm.json").is_file() and (Path(model_dir) / "backbone").is_dir()
    requests = [
        ScoreRequest(prompt="Tell me about bees.", response="Bees make honey.", principles=["Be brief."]),
        ScoreRequest(prompt="Tell me about bees.", response="Bees make honey.", principles=[]),
        ScoreRequest(prompt="Add 2 and 3.", response="2 + 3 = 5.", principles=["Be right.", "Be brief."]),
    ]
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(inp, requests)
    assert main(["rm", "score", "--model", model_dir, "--input", str(inp), "--output", str(out)]) == 0
    scored = read_jsonl(out, ScoredResponse)
    assert [s.response for s in scored] == [r.response for r in requests]
    assert len({round(s.reward, 6) for s in scored}) == 3  # principles change the reward
    # scoring again from the saved folder gives the same numbers
    out2 = tmp_path / "out2.jsonl"
    assert main(["rm", "score", "--model", model_dir, "--input", str(inp), "--output", str(out2),
                 "--batch-size", "1"]) == 0
    for a, b in zip(scored, read_jsonl(out2, ScoredResponse), strict=True):
        assert a.reward == pytest.approx(b.reward, abs=1e-5)
    assert main(["rm", "score", "--model", str(tmp_path), "--input", str(inp),
                 "--output", str(tmp_path / "x.jsonl")]) == 2
    assert not (tmp_path / "x.jsonl").exists()


def test_pmp_phase_runs_before_the_principle_phase(tmp_path: Path, tiny_model: str) -> None:
    generic = _instances(tmp_path, 12, "generic.jsonl")
    result = _train(tmp_path, tiny_model, tmp_path / "pmp", pmp_data=str(generic), pmp_epochs=0.5,
                    pmp_learning_rate=1e-3, pmp_model_max_length=256, pmp_query_len=32, pmp_response_len=96)
    log = [json.loads(x) for x in Path(result.outputs["train_log"]).read_text().splitlines()]
    phases = [e["phase"] for e in log]
    assert phases[0] == "pmp" and phases[-1] == "ft"
    assert phases == sorted(phases, key=lambda p: p != "pmp")  # all PMP steps first


def test_pmp_prompt_has_no_principles() -> None:
    from salmon.core import templates

    text = templates.pmp_prompt("RESP", "INSTR").text
    for line in templates.PMP_GUIDE_LINES:
        assert f"- {line}" in text
    assert text.endswith("The quality of the output is")


def test_max_steps_stops_and_a_rerun_finishes_the_same_model(tmp_path: Path, tiny_model: str) -> None:
    from safetensors.torch import load_file

    full = _train(tmp_path, tiny_model, tmp_path / "full")
    steps = [json.loads(line) for line in Path(full.outputs["train_log"]).read_text().splitlines()][-1]["step"]
    out = tmp_path / "stepped"
    first = _train(tmp_path, tiny_model, out, max_steps=2)
    assert first.metrics["finished"] is False and "model" not in first.outputs
    assert not (out / "model").exists() and any((out / "checkpoints").glob("step-*"))
    runs = 1
    while True:
        again = _train(tmp_path, tiny_model, out, max_steps=2)
        runs += 1
        if again.metrics["finished"]:
            break
    assert runs == -(-steps // 2)  # ceil(steps / 2) invocations of two steps each
    a = load_file(str(Path(full.outputs["model"]) / "reward_head.safetensors"))
    b = load_file(str(Path(again.outputs["model"]) / "reward_head.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_lora_layers_adapts_only_the_top_layers_and_saves_a_loadable_rm(tmp_path: Path, tiny_model: str) -> None:
    from salmon.core.errors import SalmonInputError
    from salmon.reward.model import load_reward_model

    result = _train(tmp_path, tiny_model, tmp_path / "top", lora_layers=1, epochs=0.5)
    n_layers = json.loads((Path(tiny_model) / "config.json").read_text())["num_hidden_layers"]
    rm, tok, meta = load_reward_model(result.outputs["model"], device=torch.device("cpu"))
    adapted = {n.split(".layers.")[1].split(".")[0] for n, _ in rm.named_parameters() if "lora_" in n}
    assert adapted == {str(n_layers - 1)}
    # PPO's shared layout loads it as the reward and value adapters of the policy's causal LM
    from salmon.ppo.shared import SharedRoles
    from salmon.reward.model import RMEncoder, score_sequences

    shared = SharedRoles(tiny_model, None, result.outputs["model"], lora_r=4, lora_alpha=8,
                         device=torch.device("cpu"))
    encoder = RMEncoder(tok, meta.limits())
    rows = [encoder.encode_rm(r, "Tell me about bees.", ["Be brief."]) for r in ("Bees.", "Bees make honey.")]
    pad = int(tok.pad_token_id)
    assert shared.score(rows, pad, 2) == pytest.approx(score_sequences(rm, rows, pad, 2), abs=1e-5)
    # fewer trainable parameters than LoRA on every layer
    everywhere = _train(tmp_path, tiny_model, tmp_path / "all", epochs=0.5)
    assert 0 < result.metrics["trainable_parameters"] < everywhere.metrics["trainable_parameters"]
    with pytest.raises(SalmonInputError, match="lora_layers=99"):
        _train(tmp_path, tiny_model, tmp_path / "too_many", lora_layers=99)
    assert not (tmp_path / "too_many").exists()


def test_lora_layers_with_full_fine_tuning_is_refused_before_any_work(tmp_path: Path, tiny_model: str,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from salmon.cli import main

    out = tmp_path / "rm"
    assert main(["train_rm", f"instances={_instances(tmp_path, 4)}", f"base_model={tiny_model}",
                 f"output_dir={out}", "finetune=full", "lora_layers=1"]) == 2
    assert "lora_layers applies to finetune=lora" in capsys.readouterr().err
    assert not out.exists()
