"""PPO at the method's scale: the RM scores the whole rollout at RL time, every pass is
micro-batched (results equal to the unchunked computation, memory that grows with the
micro-batch and not with the rollout batch)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    from salmon.core.io import write_jsonl
    from salmon.nano.world import make_prompts

    path = tmp_path_factory.mktemp("ppo_scale") / "prompts.jsonl"
    write_jsonl(path, make_prompts(64, seed=21))
    return str(path)


def _values(prompts: str, model: str, rm: str, out: Path, **extra: Any) -> dict[str, Any]:
    values: dict[str, Any] = dict(
        prompts=prompts, policy_model=model, reward_model=rm, output_dir=str(out), role_layout="separate",
        rl_principles="nano", interventions="interventions", principles_per_rollout=2, system_prompt="### User",
        rollout_batch_size=8, step_batch_size=8, forward_batch_size=8, micro_batch_size=8, total_epochs=1.0,
        query_len=48, response_len=12, rm_max_length=384, learning_rate=5e-3, warmup_steps=1, lora_r=4,
        save_every=1, seed=3)
    values.update(extra)
    return values


def _cfg(*args: Any, **extra: Any) -> Any:
    from salmon.core.config import PPOConfig, build_config

    return build_config(PPOConfig, stage="ppo", values=_values(*args, **extra))


# ---------------------------------------------------------------------------- item 1: RM inputs


def test_the_rm_scores_self_praise_after_response_token_800(prompts_file: str, tiny_model: str, tiny_rm: str,
                                                             tmp_path: Path) -> None:
    """The method's RL sizes (1664 / 256 / 1024): a sentence after response token 800 reaches the
    RM and changes the reward, although the RM was trained with 384 / 48 / 64 tokens."""
    from salmon.modeling import encode, load_tokenizer
    from salmon.reward.model import RMEncoder, load_reward_model, read_rm_meta, score_sequences
    from salmon.stages.ppo import reward_limits

    cfg = _cfg(prompts_file, tiny_model, tiny_rm, tmp_path / "x", query_len=256, response_len=1024,
               rm_max_length=1664)
    assert read_rm_meta(tiny_rm).response_len == 64  # trained on much shorter responses
    tok = load_tokenizer(tiny_rm)
    body = " ".join(["the bee visits the flower"] * 70)
    praise = " This answer is excellent, thorough and perfect."
    assert 800 < len(encode(tok, body)) < 1000 - len(encode(tok, praise))
    encoder = RMEncoder(tok, reward_limits(cfg))
    plain = encoder.encode_rm(body, "Tell me about bees.", ["Be brief."])
    praised = encoder.encode_rm(body + praise, "Tell me about bees.", ["Be brief."])
    assert len(praised) > len(plain) > 800
    rm, _, _ = load_reward_model(tiny_rm, device=torch.device("cpu"))
    a, b = score_sequences(rm, [plain, praised], int(tok.pad_token_id))
    assert a != pytest.approx(b, abs=1e-6)
    # the limits the RM was trained with would have cut both to the same 64 response tokens
    trained = RMEncoder(tok, read_rm_meta(tiny_rm).limits())
    assert trained.encode_rm(body, "Tell me about bees.", ["Be brief."]) == trained.encode_rm(
        body + praise, "Tell me about bees.", ["Be brief."])


def test_ppo_and_eval_policy_share_the_rl_time_rm_limits(prompts_file: str, tiny_model: str, tiny_rm: str,
                                                         tmp_path: Path) -> None:
    from salmon.core.config import EvalPolicyConfig, build_config
    from salmon.stages.ppo import reward_limits

    cfg = _cfg(prompts_file, tiny_model, tiny_rm, tmp_path / "x", query_len=200, response_len=900,
               rm_max_length=1500)
    limits = reward_limits(cfg)
    assert (limits.model_max_length, limits.query_len, limits.response_len) == (1500, 200, 900)
    ev = build_config(EvalPolicyConfig, stage="eval_policy", values={
        "prompts": prompts_file, "base_model": tiny_model, "output_dir": str(tmp_path / "e")})
    assert (ev.rm_max_length, ev.rm_query_len) == (1664, 256)  # the method's, as ppo's defaults


# ---------------------------------------------------------------------------- item 2: micro-batches


def _rollouts(n: int, seed: int) -> tuple[list[list[int]], list[list[int]]]:
    g = torch.Generator().manual_seed(seed)
    q = [torch.randint(5, 500, (int(torch.randint(3, 12, (1,), generator=g)),), generator=g).tolist()
         for _ in range(n)]
    r = [torch.randint(5, 500, (int(torch.randint(1, 10, (1,), generator=g)),), generator=g).tolist()
         for _ in range(n)]
    return q, r


@pytest.mark.parametrize("layout", ["separate", "shared"])
def test_micro_batched_passes_and_updates_equal_the_unchunked_computation(
        prompts_file: str, tiny_model: str, tiny_rm_lora: str, tmp_path: Path, layout: str) -> None:
    from salmon.ppo import math as ppo_math
    from salmon.stages import ppo

    cpu = torch.device("cpu")
    q, r = _rollouts(8, seed=1)
    whole = _cfg(prompts_file, tiny_model, tiny_rm_lora, tmp_path / "a", role_layout=layout)
    chunked = _cfg(prompts_file, tiny_model, tiny_rm_lora, tmp_path / "b", role_layout=layout,
                   forward_batch_size=3, micro_batch_size=3)
    roles = ppo.build_roles(whole, cpu)
    with torch.no_grad():  # a policy that differs from the reference, and values that are not all 0
        for name, p in roles.trainable().items():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    pad = int(roles.tokenizer.pad_token_id)
    old_whole = ppo.rollout_stats(roles, q, r, pad, whole, True, cpu)
    old_chunked = ppo.rollout_stats(roles, q, r, pad, chunked, True, cpu)
    for a, b in [(old_whole.logp, old_chunked.logp), (old_whole.logp_ref, old_chunked.logp_ref),
                 (old_whole.values, old_chunked.values)]:
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
    assert float(old_whole.values.abs().sum()) > 0
    assert not torch.allclose(old_whole.logp, old_whole.logp_ref)

    mask = (old_whole.logp != 0).float()
    adv = ppo_math.whiten(torch.randn(mask.shape, generator=torch.Generator().manual_seed(2)) * mask, mask)
    returns = torch.randn(mask.shape, generator=torch.Generator().manual_seed(3)) * mask
    # the stored log-probs are perturbed so that some ratios clip
    old_whole.logp = old_whole.logp + 0.3 * torch.randn(mask.shape, generator=torch.Generator().manual_seed(4)) * mask

    def grads(micro: int) -> tuple[tuple[float, float, float], dict[str, Any]]:
        twin = copy.deepcopy(roles)
        params = twin.trainable()
        for p in params.values():
            p.grad = None
        losses = ppo.update_minibatch(twin, [7, 0, 3, 5, 1, 6, 2, 4], q, r, pad, old_whole, adv, returns, whole,
                                      True, micro, lambda loss: loss.backward(), cpu)
        return losses, {n: p.grad.clone() for n, p in params.items() if p.grad is not None}

    (pl1, cf1, vl1), g1 = grads(8)
    (pl3, cf3, vl3), g3 = grads(3)
    assert pl1 == pytest.approx(pl3, abs=1e-5) and vl1 == pytest.approx(vl3, abs=1e-5)
    assert cf1 == pytest.approx(cf3, abs=1e-6) and 0 < cf1 < 1
    assert g1.keys() == g3.keys() and len(g1) > 2
    for n in g1:
        assert torch.allclose(g1[n], g3[n], atol=1e-6, rtol=1e-4), n


def test_a_run_with_micro_batches_ends_where_the_unchunked_run_ends(prompts_file: str, tiny_model: str,
                                                                    tiny_rm_lora: str, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from salmon.stages import ppo

    common = dict(role_layout="shared", total_steps=1)
    a = ppo.run(_cfg(prompts_file, tiny_model, tiny_rm_lora, tmp_path / "a", **common))
    # the same generation batches (forward_batch_size also sets those), updates in micro-batches of 3
    b = ppo.run(_cfg(prompts_file, tiny_model, tiny_rm_lora, tmp_path / "b", micro_batch_size=3, **common))
    wa = load_file(str(Path(a.outputs["policy"]) / "adapter_model.safetensors"))
    wb = load_file(str(Path(b.outputs["policy"]) / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5, rtol=1e-3), k
    la = [json.loads(x) for x in Path(a.outputs["train_log"]).read_text().splitlines()]
    lb = [json.loads(x) for x in Path(b.outputs["train_log"]).read_text().splitlines()]
    for x, y in zip(la, lb, strict=True):
        assert x["rm_score"] == pytest.approx(y["rm_score"], abs=1e-3)
        assert x["policy_loss"] == pytest.approx(y["policy_loss"], abs=1e-3)


def _peak(prompts: str, model: str, rm: str, out: Path, **extra: Any) -> float:
    """One PPO step in a fresh process; its peak memory above the step's start (MiB)."""
    config = out.parent / f"{out.name}.json"
    config.write_text(json.dumps(_values(prompts, model, rm, out, max_steps=1, **extra)))
    proc = subprocess.run([sys.executable, "-m", "salmon.stages.ppo", "--config", str(config)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(x) for x in (out / "resources.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["peak_memory_mib"] is not None
    return float(rows[0]["peak_memory_mib"])


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's resident-set peak")
def test_step_memory_grows_with_the_micro_batch_not_the_rollout_batch(prompts_file: str, tiny_model: str,
                                                                      tiny_rm: str, tmp_path: Path) -> None:
    sizes = dict(response_len=24, total_epochs=2.0)
    small = _peak(prompts_file, tiny_model, tiny_rm, tmp_path / "b16", rollout_batch_size=16, step_batch_size=16,
                  forward_batch_size=4, micro_batch_size=4, **sizes)
    large = _peak(prompts_file, tiny_model, tiny_rm, tmp_path / "b64", rollout_batch_size=64, step_batch_size=64,
                  forward_batch_size=4, micro_batch_size=4, **sizes)
    whole = _peak(prompts_file, tiny_model, tiny_rm, tmp_path / "w64", rollout_batch_size=64, step_batch_size=64,
                  forward_batch_size=64, micro_batch_size=64, **sizes)
    print(f"peak MiB: 16 rollouts {small}, 64 rollouts {large}, 64 rollouts in one piece {whole}")
    assert large <= 1.3 * max(small, 1.0)
    assert whole > 1.3 * large  # what the measure tells apart: the passes over the whole batch at once
