"""The PPO roles' memory/speed switches: the merged generation copy (``merge_for_generation``),
activation checkpointing in the learning passes (``gradient_checkpointing``), and rollouts to the
token limit (``stop_rollouts: false``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> str:
    from salmon.core.io import write_jsonl
    from salmon.nano.world import make_prompts

    path = tmp_path_factory.mktemp("ppo-gen") / "prompts.jsonl"
    write_jsonl(path, make_prompts(16, seed=11))
    return str(path)


def _cfg(tiny_model: str, rm: str, prompts: str, out: Path, **extra: Any):  # type: ignore[no-untyped-def]
    from salmon.core.config import PPOConfig, build_config

    values: dict[str, Any] = dict(
        prompts=prompts, policy_model=tiny_model, reward_model=rm, output_dir=str(out), rl_principles="nano",
        interventions="interventions", principles_per_rollout=2, system_prompt="### User", rollout_batch_size=4,
        step_batch_size=2, forward_batch_size=4, total_steps=3, query_len=48, response_len=12, rm_max_length=384,
        learning_rate=5e-3, warmup_steps=1, lora_r=4, save_every=10, seed=3)
    values.update(extra)
    return build_config(PPOConfig, stage="ppo", values=values)


def _perturb(model: Any, name: str, seed: int) -> None:
    """Give adapter ``name`` non-zero B matrices, so that it changes what the model computes."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if f"lora_B.{name}." in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


def _logits(model: Any, ids: Any) -> Any:
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_merged_copy_computes_what_the_adapter_computes_and_follows_its_updates(tiny_model: str,
                                                                                tiny_rm_lora: str) -> None:
    from salmon.ppo.shared import SharedRoles

    roles = SharedRoles(tiny_model, None, tiny_rm_lora, lora_r=4, lora_alpha=8, device=torch.device("cpu"),
                        merge_for_generation=True)
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    for seed in (1, 2):  # the second update must reach the copy: a stale copy would keep the first
        _perturb(roles.model, "policy", seed)
        copy = roles.sampler
        assert copy is not roles.model
        roles.use("policy")
        unmerged = _logits(roles.model, ids)
        with roles.model.disable_adapter():
            bare = _logits(roles.model, ids)
        merged = _logits(copy, ids)
        assert torch.allclose(merged, unmerged, atol=1e-5)
        assert not torch.allclose(merged, bare, atol=1e-3)  # the adapter matters here
    assert not any(p.requires_grad for p in copy.parameters())
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(copy.parameters(), roles.model.parameters(), strict=False))


@pytest.mark.parametrize("layout", ["shared", "separate"])
def test_ppo_with_the_merged_copy_samples_the_same_rollouts(tiny_model: str, tiny_rm_lora: str, prompts: str,
                                                            tmp_path: Path, layout: str) -> None:
    """Same seed, same rollouts every step, with and without the generation copy: the copy holds the
    policy's weights after each update (a stale copy samples step 2 and 3 from older weights)."""
    from salmon.stages import ppo

    texts = {}
    for merged in (False, True):
        out = tmp_path / f"merged-{merged}"
        ppo.run(_cfg(tiny_model, tiny_rm_lora, prompts, out, role_layout=layout, merge_for_generation=merged))
        texts[merged] = [[r["response"] for r in map(json.loads, (out / "rollouts" / f"step_{s:05d}.jsonl")
                                                      .read_text().splitlines())] for s in (1, 2, 3)]
    assert texts[True] == texts[False]
    assert texts[True][0] != texts[True][2]  # the policy moved, so a stale copy would show


def test_checkpointed_learning_recomputes_the_layers_and_keeps_the_gradients(tiny_model: str,
                                                                             tiny_rm_lora: str) -> None:
    from salmon.modeling import encode
    from salmon.ppo.generation import checkpointed_learning
    from salmon.ppo.rollout import make_batch
    from salmon.ppo.shared import SharedRoles

    grads: dict[bool, dict[str, Any]] = {}
    calls: dict[bool, int] = {}
    for on in (False, True):
        torch.manual_seed(0)
        roles = SharedRoles(tiny_model, None, tiny_rm_lora, lora_r=4, lora_alpha=8, device=torch.device("cpu"),
                            gradient_checkpointing=on)
        _perturb(roles.model, "policy", 1)
        tok = roles.tokenizer
        batch = make_batch([encode(tok, "Tell me about bees.")] * 2, [encode(tok, "Bees make honey."),
                                                                      encode(tok, "Bees.")], int(tok.pad_token_id))
        saved = [0]

        def pack(t: Any, saved: list[int] = saved) -> Any:
            saved[0] += 1
            return t

        roles.model.eval()  # as generation leaves it
        with checkpointed_learning(*roles.learning_models) as n_layers:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = roles.policy_logprobs(batch, 0.7).sum() + roles.values(batch).sum()
            loss.backward()
        assert n_layers == (2 if on else 0)
        assert not any(m.training for m in roles.model.modules())  # back to eval mode everywhere
        calls[on] = saved[0]
        grads[on] = {n: p.grad.clone() for n, p in roles.trainable().items() if p.grad is not None}
        saved[0] = 0
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):  # outside the block: all kept
            roles.policy_logprobs(batch, 0.7).sum() + roles.values(batch).sum()
        outside = saved[0]
        assert outside == calls[on] if not on else outside > 4 * calls[on]
    # the layers keep only their inputs for the backward pass: the recompute rebuilds the rest
    assert calls[True] * 4 < calls[False]
    assert grads[True].keys() == grads[False].keys() and grads[True]
    for name, g in grads[True].items():
        assert torch.allclose(g, grads[False][name], atol=1e-6), name


def test_ppo_with_checkpointing_trains_the_same_policy(tiny_model: str, tiny_rm_lora: str, prompts: str,
                                                       tmp_path: Path) -> None:
    from salmon.stages import ppo

    logs = {}
    for on in (False, True):
        result = ppo.run(_cfg(tiny_model, tiny_rm_lora, prompts, tmp_path / f"ckpt-{on}", role_layout="shared",
                              gradient_checkpointing=on))
        logs[on] = [json.loads(x) for x in Path(result.outputs["train_log"]).read_text().splitlines()]
    for a, b in zip(logs[True], logs[False], strict=True):
        assert a["policy_loss"] == pytest.approx(b["policy_loss"], abs=1e-5)
        assert a["value_loss"] == pytest.approx(b["value_loss"], abs=1e-5)


def test_rollouts_to_the_token_limit_read_the_same_turns(tiny_model: str) -> None:
    """stop=False runs every sequence to max_new_tokens; the turns read from it are those of a
    generation that stops (same seed), and some turns did end before the limit."""
    from collections import Counter

    from salmon.modeling import load_causal_lm, load_tokenizer
    from salmon.turns import PolicyTurns, generate_ids

    tok = load_tokenizer(tiny_model)
    model = load_causal_lm(tiny_model, device=torch.device("cpu"))
    plain = PolicyTurns(tok, "dromedary", system_prompt="### User")
    queries = [plain.query_ids(f"Question {i}: what do bees make?") for i in range(6)]
    torch.manual_seed(0)
    raw = generate_ids(model, tok, queries, temperature=0.7, top_p=1.0, max_new_tokens=40, batch_size=6)
    # the little model rarely ends a turn by itself: make its most frequent id an end id
    frequent = Counter(i for row in raw for i in row if i != tok.pad_token_id).most_common(1)[0][0]
    turns = PolicyTurns(tok, "dromedary", system_prompt="### User", end_ids=[frequent])
    steps: dict[bool, int] = {}
    read: dict[bool, list[Any]] = {}
    for stop in (True, False):
        count = [0]
        hook = model.register_forward_hook(lambda *_, count=count: count.__setitem__(0, count[0] + 1))
        read[stop] = []
        for i, q in enumerate(queries):  # seeded per query, so both sides draw the same ids
            torch.manual_seed(i)
            read[stop] += turns.generate(model, [q], temperature=0.7, top_p=1.0, max_new_tokens=40, batch_size=1,
                                         stop=stop)
        hook.remove()
        steps[stop] = count[0]
    assert [t.text for t in read[True]] == [t.text for t in read[False]]
    assert any(t.stopped for t in read[True])
    assert steps[False] == 6 * 40 and steps[True] < steps[False]  # one forward per new token


@pytest.mark.parametrize(("values", "says"), [
    ({"quantize": "4bit", "merge_for_generation": True}, "4-bit base"),
    ({"deepspeed": "zero3", "merge_for_generation": True}, "ZeRO-3"),
    ({"rollout_backend": "openai", "endpoint": "http://127.0.0.1:9/v1", "merge_for_generation": True},
     "rollout_backend=openai"),
])
def test_merge_for_generation_is_refused_where_there_is_no_copy_to_merge_into(
        tiny_model: str, tiny_rm_lora: str, prompts: str, tmp_path: Path, values: dict[str, Any], says: str) -> None:
    from salmon.core.errors import SalmonInputError

    with pytest.raises(SalmonInputError, match=says):
        _cfg(tiny_model, tiny_rm_lora, prompts, tmp_path / "out", **values)
    assert not (tmp_path / "out").exists()


def test_merged_copy_on_a_real_chat_model(smollm2_model: str) -> None:
    """SmolLM2 (tied embeddings, pad != eos): the copy with a LoRA adapter merged in computes what
    the adapter computes, and the copy's embeddings and LM head are the base's."""
    from peft import LoraConfig, get_peft_model

    from salmon.modeling import load_causal_lm, load_tokenizer
    from salmon.ppo.generation import MergedCopy
    from salmon.turns import PolicyTurns

    base = load_causal_lm(smollm2_model, device=torch.device("cpu"))
    copy = MergedCopy(base)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"), adapter_name="policy")
    _perturb(model, "policy", 3)
    tok = load_tokenizer(smollm2_model)
    ids = torch.tensor([PolicyTurns(tok, "chat_template").query_ids("Name a bee.")])
    merged = copy.refresh(model, "policy")
    got, want = _logits(merged, ids), _logits(model, ids)
    with model.disable_adapter():
        bare = _logits(model, ids)
    assert (got - want).abs().max() < 2e-3 < (bare - want).abs().max()  # float rounding over 30 layers
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    assert merged.get_output_embeddings().weight is merged.get_input_embeddings().weight  # still tied
