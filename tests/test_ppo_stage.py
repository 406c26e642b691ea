"""The ``ppo`` stage on a tiny model and a tiny RM: initial state, reward assembly from the logged
rollouts, resume after an interruption, critic-free variants (method §10 items 7 and 8)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def setup(tiny_model: str, tiny_rm: str, tiny_rm_lora: str, tmp_path_factory: pytest.TempPathFactory
          ) -> dict[str, str]:
    from salmon.core.io import write_jsonl
    from salmon.nano.world import make_prompts

    root = tmp_path_factory.mktemp("ppo")
    write_jsonl(root / "prompts.jsonl", make_prompts(16, seed=11))
    return {"prompts": str(root / "prompts.jsonl"), "model": tiny_model,
            "rm_full": tiny_rm, "rm_lora": tiny_rm_lora}


def _cfg(setup: dict[str, str], out: Path, **extra: Any):  # type: ignore[no-untyped-def]
    from salmon.core.config import PPOConfig, build_config

    values: dict[str, Any] = dict(
        prompts=setup["prompts"], policy_model=setup["model"], reward_model=setup["rm_full"],
        output_dir=str(out), role_layout="separate", rl_principles="nano", interventions="interventions",
        principles_per_rollout=2, system_prompt="### User", rollout_batch_size=4, step_batch_size=2,
        forward_batch_size=4, total_epochs=0.75, query_len=48, response_len=12, rm_max_length=384,
        learning_rate=5e-3, warmup_steps=1, lora_r=4, save_every=1, seed=3)
    values.update(extra)
    return build_config(PPOConfig, stage="ppo", values=values)


def _log(result: Any) -> list[dict[str, Any]]:
    return [json.loads(x) for x in Path(result.outputs["train_log"]).read_text().splitlines()]


def _rollouts(out: Path, step: int) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (out / "rollouts" / f"step_{step:05d}.jsonl").read_text().splitlines()]


def test_initial_state_and_frozen_roles(setup: dict[str, str], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """§10.7: KL exactly 0 at step 0, value = RM body with a zero head; reference and RM untouched."""
    from salmon.stages import ppo

    captured: dict[str, Any] = {}
    real_build = ppo.build_roles

    def build_and_snapshot(cfg, device):  # type: ignore[no-untyped-def]
        roles = real_build(cfg, device)
        captured["roles"] = roles
        captured["ref"] = {k: v.clone() for k, v in roles.reference.state_dict().items()}
        captured["rm"] = {k: v.clone() for k, v in roles.reward.state_dict().items()}
        captured["value_matches_rm"] = all(
            torch.equal(v, roles.reward.backbone.state_dict()[k]) for k, v in roles.value_body.state_dict().items())
        captured["head_zero"] = bool((roles.value_head.weight == 0).all() and (roles.value_head.bias == 0).all())
        return roles

    monkeypatch.setattr(ppo, "build_roles", build_and_snapshot)
    result = ppo.run(_cfg(setup, tmp_path / "run", reward_model=setup["rm_lora"]))
    assert captured["value_matches_rm"] and captured["head_zero"]
    first = _rollouts(tmp_path / "run", 1)
    assert all(r["logp"] == r["logp_ref"] for r in first)  # bit-identical policy and reference
    assert all(v == 0.0 for r in first for v in r["values"])
    assert _log(result)[0]["kl"] == 0.0
    roles = captured["roles"]
    for k, v in roles.reference.state_dict().items():
        assert torch.equal(v, captured["ref"][k]), k
    for k, v in roles.reward.state_dict().items():
        assert torch.equal(v, captured["rm"][k]), k
    # only the value model's LoRA weights train when the RM is an adapter; the policy did move
    trainable = [n for n, p in roles.value_body.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert _log(result)[-1]["kl"] > 0.0
    assert (Path(result.outputs["policy"]) / "adapter_config.json").is_file()
    meta = json.loads((Path(result.outputs["policy"]) / "salmon_policy.json").read_text())
    assert meta["rl_principles"] == "nano" and meta["rl_principles_digest"].startswith("sha256:")


def test_reward_assembly_recomputed_from_the_logged_rollout(setup: dict[str, str], tmp_path: Path) -> None:
    """§10.8: score + no-stop penalty + length bonus and the per-token KL give the logged rewards;
    with gamma = lambda = 1 each raw advantage is the reward-to-go minus the value."""
    from salmon.stages import ppo

    cfg = _cfg(setup, tmp_path / "run", total_epochs=0.5)
    ppo.run(cfg)
    rows = _rollouts(tmp_path / "run", 2)
    assert len(rows) == 4
    for r in rows:
        n = r["length"]
        assert n == len(r["shaped_rewards"]) >= 1
        assert len(r["interventions"]) == 3 and len(r["principles"]) == 2
        expected = [-0.01 * max(a - b, 0.0) for a, b in zip(r["logp"], r["logp_ref"], strict=True)]
        expected[-1] += (r["rm_score"] + (0.0 if r["has_stop"] else -6.0)
                         + 5.0 * min(r["length_multiplier"] * n / cfg.response_len, 0.8))
        assert r["shaped_rewards"] == pytest.approx([10.0 * e for e in expected], rel=1e-5, abs=1e-5)
        to_go = [sum(r["shaped_rewards"][t:]) for t in range(n)]
        assert r["advantages"] == pytest.approx([g - v for g, v in zip(to_go, r["values"], strict=True)],
                                                rel=1e-4, abs=1e-4)
    assert any(r["length_multiplier"] != 1.0 for r in rows) or len({r["prompt_type"] for r in rows}) == 1


@pytest.mark.parametrize("layout", ["separate", "shared"])
def test_interrupted_run_resumes_to_the_same_result(setup: dict[str, str], tmp_path: Path, layout: str) -> None:
    from safetensors.torch import load_file

    from salmon.stages import ppo

    extra: dict[str, Any] = {"role_layout": layout, "reward_model": setup["rm_lora"]}
    full = ppo.run(_cfg(setup, tmp_path / "full", **extra))
    assert full.metrics["steps"] == 3 and full.metrics["finished"]
    part = ppo.run(_cfg(setup, tmp_path / "killed", max_steps=1, **extra))
    assert not part.metrics["finished"] and "policy" not in part.outputs
    assert not (tmp_path / "killed" / "policy").exists()
    resumed = ppo.run(_cfg(setup, tmp_path / "killed", **extra))
    assert _log(resumed) == _log(full)
    assert resumed.metrics == full.metrics
    a = load_file(str(Path(full.outputs["policy"]) / "adapter_model.safetensors"))
    b = load_file(str(Path(resumed.outputs["policy"]) / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _rollouts(tmp_path / "full", 3) == _rollouts(tmp_path / "killed", 3)


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_critic_free_variants_sample_groups(setup: dict[str, str], tmp_path: Path, algorithm: str) -> None:
    from salmon.stages import ppo

    result = ppo.run(_cfg(setup, tmp_path / algorithm, algorithm=algorithm, group_size=2, total_epochs=0.125))
    log = _log(result)
    assert len(log) == 1 and "value_loss" not in log[0]  # 2 prompts x 2 samples: one step
    rows = _rollouts(tmp_path / algorithm, 1)
    ids = [r["prompt_id"] for r in rows]
    assert len(rows) == 4 and ids[0] == ids[1] and ids[2] == ids[3]
    assert all(v == 0.0 for r in rows for v in r["values"])
    # group baselines: the raw advantages of a group sum to 0 across its members (rloo and grpo)
    for g in (rows[:2], rows[2:]):
        assert g[0]["advantages"][0] + g[1]["advantages"][0] == pytest.approx(0.0, abs=1e-4)


def test_rl_principle_ids_pick_a_subset_and_unknown_ids_exit_2(setup: dict[str, str], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from salmon.cli import main
    from salmon.stages import ppo

    ppo.run(_cfg(setup, tmp_path / "concise", rl_principle_ids=["concise"], interventions=None,
                 principles_per_rollout=1, total_epochs=0.25))
    rows = _rollouts(tmp_path / "concise", 1)
    assert all(r["interventions"] == [] and len(r["principles"]) == 1 for r in rows)
    assert {r["principles"][0] for r in rows} == {"The AI should answer in as few words as the task allows."}
    code = main(["ppo", f"prompts={setup['prompts']}", f"policy_model={setup['model']}",
                 f"reward_model={setup['rm_full']}", f"output_dir={tmp_path / 'bad'}", "rl_principles=nano",
                 "rl_principle_ids=[consise]"])
    err = capsys.readouterr().err
    assert code == 2 and "consise" in err and "known ids" in err
    assert not (tmp_path / "bad").exists()


def test_shared_roles_match_the_separate_modules(setup: dict[str, str]) -> None:
    """One base with four adapters computes what the four separate modules compute."""
    from salmon.core.io import read_jsonl
    from salmon.core.records import PromptRecord
    from salmon.modeling import encode
    from salmon.ppo.rollout import make_batch
    from salmon.ppo.shared import SharedRoles
    from salmon.reward.model import RMEncoder, load_reward_model, score_sequences

    cpu = torch.device("cpu")
    torch.manual_seed(0)
    shared = SharedRoles(setup["model"], None, setup["rm_lora"], lora_r=4, lora_alpha=8, device=cpu)
    rm, rm_tok, meta = load_reward_model(setup["rm_lora"], device=cpu)
    encoder = RMEncoder(rm_tok, meta.limits())
    prompts = read_jsonl(setup["prompts"], PromptRecord)[:3]
    rows = [encoder.encode_rm(f"Answer number {i}.", p.instruction, ["Be brief."]) for i, p in enumerate(prompts)]
    assert shared.score(rows, int(rm_tok.pad_token_id), 2) == pytest.approx(
        score_sequences(rm, rows, int(rm_tok.pad_token_id), 2), abs=1e-5)
    tok = shared.tokenizer
    batch = make_batch([encode(tok, p.instruction) for p in prompts], [encode(tok, "Bees.")] * 3, int(tok.pad_token_id))
    with torch.no_grad():
        assert torch.equal(shared.policy_logprobs(batch, 0.7), shared.reference_logprobs(batch, 0.7))
        assert torch.count_nonzero(shared.values(batch)) == 0
    names = set(shared.trainable())
    assert names and all(".policy." in n or ".value." in n or n.startswith("value_head.") for n in names)
    assert any(".value." in n for n in names) and any(".policy." in n for n in names)


def test_shared_layout_needs_a_lora_rm_on_the_policy_base(setup: dict[str, str], tmp_path: Path) -> None:
    from salmon.core.errors import SalmonInputError
    from salmon.stages import ppo

    with pytest.raises(SalmonInputError, match="role_layout"):
        ppo.run(_cfg(setup, tmp_path / "x", role_layout="shared"))  # rm_full is fully fine-tuned


def test_shared_run_trains_policy_and_value_only_and_saves_a_loadable_policy(
        setup: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from peft import PeftModel

    from salmon.modeling import load_causal_lm
    from salmon.stages import ppo

    captured: dict[str, Any] = {}
    real_build = ppo.build_roles

    def build_and_snapshot(cfg, device):  # type: ignore[no-untyped-def]
        roles = real_build(cfg, device)
        captured["roles"] = roles
        captured["before"] = {n: p.detach().clone() for n, p in roles.model.named_parameters()}
        return roles

    monkeypatch.setattr(ppo, "build_roles", build_and_snapshot)
    result = ppo.run(_cfg(setup, tmp_path / "run", role_layout="shared", reward_model=setup["rm_lora"]))
    after = dict(captured["roles"].model.named_parameters())
    changed = {n for n, p in after.items() if not torch.equal(p, captured["before"][n])}
    assert any(".policy." in n for n in changed) and any(".value." in n for n in changed)
    assert all(".policy." in n or ".value." in n for n in changed)  # base, reward adapter: untouched
    policy = PeftModel.from_pretrained(load_causal_lm(setup["model"], device=torch.device("cpu")),
                                       result.outputs["policy"])
    saved = {n: p for n, p in policy.named_parameters() if "lora_" in n}
    trained = {n.replace(".policy.", ".default."): p for n, p in after.items() if ".policy." in n}
    assert saved.keys() == trained.keys() and all(torch.equal(saved[k], trained[k]) for k in saved)


def test_a_killed_process_resumes_to_the_same_result(setup: dict[str, str], tmp_path: Path) -> None:
    """SIGKILL the stage process once its first checkpoint exists; the rerun ends where an
    uninterrupted run with the same seed ends."""
    from killing import kill_at_first_checkpoint

    from salmon.stages import ppo

    cfg = _cfg(setup, tmp_path / "killed", total_epochs=1.0)  # 4 steps
    kill_at_first_checkpoint("ppo", cfg, tmp_path / "ppo.json",
                             tmp_path / "killed" / "checkpoints" / "step-00000001" / "state.json", timeout=120)
    assert not (tmp_path / "killed" / "policy").exists()
    resumed = ppo.run(cfg)
    full = ppo.run(_cfg(setup, tmp_path / "full", total_epochs=1.0))
    assert resumed.metrics == full.metrics and _log(resumed) == _log(full)
