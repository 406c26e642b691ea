"""``ppo``: RL against the principle-following reward model (method §4).

One PPO step:

1. draw ``rollout_batch_size`` prompts (``/ group_size`` for grpo and rloo, each sampled
   ``group_size`` times) and sample responses from the policy at ``temperature``;
2. end each at the end of its turn (eos, or the stop string with the method's cuts, §4.3;
   generation stops there per rollout) and score each with the reward model, whose prompt
   carries the fixed interventions and ``principles_per_rollout`` principles drawn by weight
   from the RL-time set (boosted by prompt type), the instruction and the WHOLE response, within
   ``rm_max_length`` (:func:`reward_limits`; not the shorter limits the RM was trained with);
3. shape rewards: per-token KL to the reference, no-stop penalty, length bonus, times
   ``reward_scale`` (:mod:`salmon.ppo.math`);
4. log-probs of the sampling policy and the reference and the values, ``forward_batch_size``
   rollouts per forward (:func:`rollout_stats`); advantages by GAE on the value model (or group
   baselines for grpo / rloo), whitened over the whole batch (``whiten_over``);
5. ``ppo_epochs`` passes of clipped policy and value updates over minibatches of
   ``step_batch_size``, each backpropagated ``micro_batch_size`` rollouts at a time with the
   gradients accumulated (:func:`update_minibatch`); the LR schedule steps once per PPO step.

Memory therefore grows with ``forward_batch_size`` and ``micro_batch_size``, not with the rollout
batch: the method's 576 rollouts and 288 per optimizer step run on one process. Each step's
console line and ``resources.jsonl`` record its peak memory (``peak_memory_mib``: the CUDA
allocator's peak, or on Linux the resident set's high-water mark, above the step's start).

Roles (``role_layout``): ``shared`` (the method's) puts policy, reference, value and reward as
LoRA adapters on ONE base model (:mod:`salmon.ppo.shared`); it needs a LoRA RM trained on the
policy's base; ``quantize: 4bit`` loads that one base in NF4 (QLoRA, the method's; bitsandbytes
and a CUDA GPU). ``separate`` keeps four modules: the policy a LoRA adapter (new, or the SFT adapter
continued), the reference the frozen starting policy, the value model a copy of the RM body
(only its LoRA weights train when the RM is an adapter), the RM frozen; it also serves fully
fine-tuned reward models. Either way the value head starts at zero.

Queries and answers follow ``prompt_format`` (:class:`salmon.turns.PolicyTurns`): the query ids
are those ``sft`` trained on; a rollout's response ids are the sampled ids up to the end of its
turn (its eos included), and the RM sees its text without special tokens. A rollout that ended
at eos counts as stopped, in either format.

Outputs in ``output_dir``: ``policy/`` (the adapter and tokenizer), ``rollouts/step_<k>.jsonl``
(every rollout with its token ids, principles, score, per-token log-probs, shaped rewards,
values and advantages before whitening), ``train_log.jsonl`` (one line per PPO step),
``resources.jsonl`` (per step: seconds per phase and peak memory, measurements a resumed run
does not repeat exactly) and ``checkpoints/step-<k>/`` every ``save_every`` steps (trainable
weights, optimizer, scheduler, torch and principle-sampler RNG). A rerun resumes from the newest checkpoint.

``deepspeed: zero2|zero3`` trains the trainable roles (policy, and value body and head; in the
shared layout the one adapter model and the value head) as one DeepSpeed engine
(:mod:`salmon.distributed`); the reference and a separate RM stay plain frozen modules on every
rank. Under ``torchrun`` each rank rolls out its even share of the step's prompts (a prompt's whole
group on one rank), advantages are whitened over all ranks' tokens, each rank takes
``step_batch_size / world_size`` rollouts per optimizer step, and the per-rank losses are
averaged, as in data-parallel training. Sampling and principle draws are seeded by (seed, rank,
step), so a resumed run repeats them; checkpoints are DeepSpeed's own in ``checkpoints/deepspeed/``,
and rank 0 writes the rollouts of all ranks, the log and the policy (gathered under ZeRO-3).
Generation under ZeRO-3 gathers each layer's weights at every decoding step: correct, but slow.
"""

from __future__ import annotations

import copy
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from salmon.core.config import PPOConfig
from salmon.core.errors import SalmonInputError
from salmon.core.io import read_jsonl, write_text
from salmon.core.principles import PrincipleSet, load_principle_set
from salmon.core.records import PromptRecord
from salmon.core.rl_principles import rl_principle_lines
from salmon.reward.train import data_order, latest_checkpoint, lr_multiplier
from salmon.stages.common import StageResult, log, preflight_model, stage_main

STAGE = "ppo"


# ---------------------------------------------------------------------------- inputs


def load_rl_prompts(cfg: PPOConfig) -> list[PromptRecord]:
    """The prompts to roll out on, filtered by split, with a length multiplier for every type."""
    prompts = read_jsonl(cfg.prompts, PromptRecord)
    if cfg.prompt_splits is not None:
        prompts = [p for p in prompts if p.split in cfg.prompt_splits]
    if not prompts:
        raise SalmonInputError(cfg.prompts, f"no prompts in splits {cfg.prompt_splits}",
                               "check prompt_splits or the file")
    for p in prompts:
        if p.prompt_type not in cfg.length_multipliers:
            raise SalmonInputError(cfg.prompts, f"prompt {p.prompt_id} has type {p.prompt_type}, which has "
                                   "no length multiplier", "add it to length_multipliers")
    return prompts


def load_rl_principles(cfg: PPOConfig) -> tuple[PrincipleSet, PrincipleSet | None]:
    """(RL-time principle set, intervention set or None), restricted to the configured ids."""
    rl_set = load_principle_set(cfg.rl_principles).subset(cfg.rl_principle_ids)
    interventions = (load_principle_set(cfg.interventions).subset(cfg.intervention_ids)
                     if cfg.interventions else None)
    return rl_set, interventions


# ---------------------------------------------------------------------------- roles


@dataclass
class SeparateRoles:
    """The four roles as separate modules: policy (LoRA), frozen reference, value body + head, frozen RM."""

    policy: Any
    reference: Any
    reward: Any
    value_body: Any | None
    value_head: Any | None
    tokenizer: Any
    rm_tokenizer: Any
    generation_copy: Any = None
    layout: str = "separate"

    def trainable(self) -> dict[str, Any]:
        mods = {"policy": self.policy}
        if self.value_body is not None:
            mods.update(value_body=self.value_body, value_head=self.value_head)
        return {f"{name}.{n}": p for name, m in mods.items() for n, p in m.named_parameters() if p.requires_grad}

    @property
    def sampler(self) -> Any:
        if self.generation_copy is not None:
            return self.generation_copy.refresh(self.policy, "default")
        return self.policy

    @property
    def learning_models(self) -> tuple[Any, ...]:
        return tuple(m for m in (self.policy, self.value_body) if m is not None)

    def policy_logprobs(self, batch: Any, temperature: float) -> Any:
        from salmon.ppo.rollout import response_logprobs

        return response_logprobs(self.policy, batch, temperature)

    def reference_logprobs(self, batch: Any, temperature: float) -> Any:
        from salmon.ppo.rollout import response_logprobs

        return response_logprobs(self.reference, batch, temperature)

    def values(self, batch: Any) -> Any:
        from salmon.ppo.rollout import response_values

        return response_values(self.value_body, self.value_head, batch)

    def score(self, rows: list[list[int]], pad_id: int, batch_size: int) -> list[float]:
        from salmon.reward.model import score_sequences

        return score_sequences(self.reward, rows, pad_id, batch_size)

    def save_policy(self, folder: Path) -> None:
        self.policy.save_pretrained(folder)


def check_role_layout(cfg: PPOConfig) -> None:
    """The shared layout builds the value model from the RM adapter: ppo with init_value_with_reward."""
    if cfg.role_layout == "shared" and (cfg.algorithm != "ppo" or not cfg.init_value_with_reward):
        raise SalmonInputError("role_layout", "shared builds the value model from the RM adapter (ppo with "
                               "init_value_with_reward)", "set role_layout: separate")


def build_roles(cfg: PPOConfig, device: Any) -> Any:
    """The roles in ``cfg.role_layout``: one base with four adapters, or separate modules."""
    import torch

    torch.manual_seed(cfg.seed)
    check_role_layout(cfg)
    if cfg.role_layout == "shared":
        from salmon.ppo.shared import SharedRoles

        return SharedRoles(cfg.policy_model, cfg.policy_adapter, cfg.reward_model, cfg.lora_r, cfg.lora_alpha,
                           device, quantize=cfg.quantize, merge_for_generation=cfg.merge_for_generation,
                           gradient_checkpointing=cfg.gradient_checkpointing)
    return build_separate_roles(cfg, device)


def build_separate_roles(cfg: PPOConfig, device: Any) -> SeparateRoles:
    """Policy (trainable LoRA), frozen reference and RM, and (for ppo) the value model."""
    from peft import LoraConfig, PeftModel, get_peft_model

    from salmon.modeling import check_adapter_dir, load_causal_lm, load_tokenizer
    from salmon.ppo.generation import MergedCopy, enable_activation_checkpointing
    from salmon.ppo.rollout import zero_value_head
    from salmon.reward.model import load_reward_model

    tok = load_tokenizer(cfg.policy_model)
    base = load_causal_lm(cfg.policy_model, device=device)
    generation_copy = MergedCopy(base) if cfg.merge_for_generation else None  # before the adapter wraps base
    ref = load_causal_lm(cfg.policy_model, device=device)
    if cfg.policy_adapter:
        check_adapter_dir(cfg.policy_adapter)
        policy = PeftModel.from_pretrained(base, cfg.policy_adapter, is_trainable=True)
        ref = PeftModel.from_pretrained(ref, cfg.policy_adapter).merge_and_unload()
    else:
        policy = get_peft_model(base, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                                 target_modules="all-linear"))
    ref.requires_grad_(False)
    ref.eval()
    rm, rm_tok, _ = load_reward_model(cfg.reward_model, device=device)
    rm.requires_grad_(False)

    value_body = value_head = None
    if cfg.algorithm == "ppo":
        if cfg.init_value_with_reward:
            value_body = copy.deepcopy(rm.backbone)
            lora = isinstance(value_body, PeftModel)
            for name, p in value_body.named_parameters():
                p.requires_grad_(not lora or "lora_" in name)
            hidden = rm.head.in_features
        else:
            value_body = copy.deepcopy(getattr(ref, ref.base_model_prefix))
            value_body.requires_grad_(True)
            hidden = value_body.config.hidden_size
        value_body.train()
        value_head = zero_value_head(hidden).to(device)
    if cfg.gradient_checkpointing:
        enable_activation_checkpointing(*(m for m in (policy, value_body) if m is not None))
    return SeparateRoles(policy, ref, rm, value_body, value_head, tok, rm_tok, generation_copy)


# ---------------------------------------------------------------------------- checkpoints


def _save_checkpoint(ckpt_dir: Path, step: int, params: dict[str, Any], opt: Any, sched: Any,
                     rng: random.Random) -> None:
    from salmon.checkpoints import save_checkpoint

    version, state, gauss = rng.getstate()
    save_checkpoint(ckpt_dir, step, params, opt, sched, {"sampler_rng": [version, list(state), gauss]})


def _load_checkpoint(path: Path, params: dict[str, Any], opt: Any, sched: Any, rng: random.Random) -> int:
    from salmon.checkpoints import load_checkpoint

    state = load_checkpoint(path, params, opt, sched)
    version, inner, gauss = state["sampler_rng"]
    rng.setstate((version, tuple(inner), gauss))
    return int(state["step"])


# ---------------------------------------------------------------------------- rollouts


def encode_queries(tok: Any, prompts: list[PromptRecord], cfg: PPOConfig) -> tuple[list[list[int]], list[PromptRecord]]:
    """Token ids of each prompt's policy query; prompts longer than ``query_len`` are dropped."""
    from salmon.turns import policy_turns

    turns = policy_turns(tok, cfg, cfg.policy_model)
    queries, kept = [], []
    for p in prompts:
        ids = turns.query_ids(p.full_instruction())
        if len(ids) <= cfg.query_len:
            queries.append(ids)
            kept.append(p)
    if not kept:
        raise SalmonInputError(cfg.prompts, f"every prompt is longer than query_len={cfg.query_len} tokens",
                               "raise query_len")
    return queries, kept


def check_inputs(cfg: PPOConfig, prompts: list[PromptRecord], rl_set: PrincipleSet,
                 interventions: PrincipleSet | None,
                 say: Any = None) -> tuple[list[list[int]], list[PromptRecord]]:
    """What can be checked before any model is loaded: the model folders, the prompts that fit
    ``query_len`` (their query token ids are returned with them) and the RM input of the longest
    draw of RL-time principles with every intervention line.

    Raises:
        SalmonInputError: a missing model, no prompt that fits, or principles too long for the RM.
    """
    from salmon.modeling import encode, load_tokenizer
    from salmon.reward.model import RMEncoder, read_rm_meta

    check_role_layout(cfg)
    preflight_model(STAGE, cfg.policy_model, prompt_format=cfg.prompt_format, say=say or log)
    read_rm_meta(cfg.reward_model)
    queries, kept = encode_queries(load_tokenizer(cfg.policy_model), prompts, cfg)
    rm_tok = load_tokenizer(cfg.reward_model)
    encoder = RMEncoder(rm_tok, reward_limits(cfg), "rm_max_length")
    k = min(cfg.principles_per_rollout, len(rl_set.principles))
    longest = sorted((p.definition for p in rl_set.principles), key=lambda t: len(encode(rm_tok, t)),
                     reverse=True)[:k]
    fixed = [p.definition for p in interventions.principles] if interventions else []
    where = f"principle set {cfg.rl_principles}" + (f" with interventions {cfg.interventions}" if fixed else "")
    encoder.check_fit(longest, fixed, where, encoder.instruction_tokens([p.full_instruction() for p in kept]))
    return queries, kept


def reward_limits(cfg: PPOConfig) -> Any:
    """The RM's input limits at RL time (method §4.3 step 5): the instruction (its last
    ``query_len`` tokens) and the whole rollout (``response_len``) within ``rm_max_length``, whatever
    limits the RM was trained with. Everything the policy wrote, a closing self-praise sentence
    included, is scored."""
    from salmon.reward.model import EncodeLimits

    return EncodeLimits(cfg.rm_max_length, cfg.query_len, cfg.response_len)


def _floats(values: Any) -> list[float]:
    return [float(v) for v in values]


def chunks(indices: list[int], size: int) -> list[list[int]]:
    """``indices`` in consecutive pieces of at most ``size``.

    >>> chunks([4, 5, 6, 7, 8], 2)
    [[4, 5], [6, 7], [8]]
    """
    return [indices[s:s + size] for s in range(0, len(indices), size)]


@dataclass
class RolloutStats:
    """What the rollouts' tokens are worth before the update, each ``(B, T)`` (0 on padding):
    log-probs under the sampling policy and the reference, and the value model's values."""

    logp: Any
    logp_ref: Any
    values: Any


def rollout_stats(roles: Any, q_ids: list[list[int]], r_ids: list[list[int]], pad_id: int, cfg: PPOConfig,
                  critic: bool, device: Any) -> RolloutStats:
    """Old and reference log-probs and (``critic``) values of every rollout, computed without
    gradients ``forward_batch_size`` rollouts at a time (rollouts of similar length together), so
    that memory grows with that number and not with the rollout batch. Equal, within float
    tolerance, to one pass over the whole batch: positions count real tokens only."""
    import torch

    from salmon.ppo.rollout import make_batch

    width = max(1, max(len(r) for r in r_ids))
    out = RolloutStats(*(torch.zeros(len(r_ids), width, device=device) for _ in range(3)))
    by_length = sorted(range(len(r_ids)), key=lambda i: (len(q_ids[i]) + len(r_ids[i]), i))
    with torch.no_grad():
        for idx in chunks(by_length, cfg.forward_batch_size):
            sub = make_batch([q_ids[i] for i in idx], [r_ids[i] for i in idx], pad_id).to(device)
            w = sub.response_mask.shape[1]
            out.logp[idx, :w] = roles.policy_logprobs(sub, cfg.temperature)
            out.logp_ref[idx, :w] = roles.reference_logprobs(sub, cfg.temperature)
            if critic:
                out.values[idx, :w] = roles.values(sub)
    return out


def update_minibatch(roles: Any, mb: list[int], q_ids: list[list[int]], r_ids: list[list[int]], pad_id: int,
                     old: RolloutStats, advantages: Any, returns: Any, cfg: PPOConfig, critic: bool,
                     micro_batch_size: int, backward: Any, device: Any) -> tuple[float, float, float]:
    """Backpropagate the clipped policy loss (and the value loss) of one minibatch, ``micro_batch_size``
    rollouts per forward/backward; the caller clips and steps.

    Each micro-batch's masked mean is weighted by its share of the minibatch's real tokens, so
    the accumulated gradients are those of the minibatch's loss in one piece (within float
    tolerance). Policy and value losses are backpropagated one after the other (each pass
    activates its own adapter when the roles share one base). Returns the minibatch's policy
    loss, clip fraction and value loss.
    """
    from salmon.ppo import math as ppo_math
    from salmon.ppo.generation import checkpointed_learning
    from salmon.ppo.rollout import make_batch

    tokens = max(1, sum(len(r_ids[i]) for i in mb))
    pl_sum = cf_sum = vl_sum = 0.0
    with checkpointed_learning(*roles.learning_models):  # a no-op unless gradient_checkpointing
        for idx in chunks(mb, micro_batch_size):
            sub = make_batch([q_ids[i] for i in idx], [r_ids[i] for i in idx], pad_id).to(device)
            w = sub.response_mask.shape[1]
            share = float(sub.response_mask.sum()) / tokens
            logp = roles.policy_logprobs(sub, cfg.temperature)
            pl, cf = ppo_math.policy_loss(logp, old.logp[idx, :w], advantages[idx, :w], sub.response_mask,
                                          cfg.clip_range)
            backward(pl * share)
            pl_sum += float(pl.detach()) * share
            cf_sum += float(cf) * share
            if critic:
                v = roles.values(sub)
                vl = ppo_math.value_loss(v, old.values[idx, :w], returns[idx, :w], sub.response_mask,
                                         cfg.clip_range_value, cfg.vf_coef)
                backward(vl * share)
                vl_sum += float(vl.detach()) * share
    return pl_sum, cf_sum, vl_sum


def micro_batch(cfg: PPOConfig, world_size: int) -> int:
    """Rollouts per forward/backward on this rank: ``micro_batch_size``, at most the rank's share
    of a minibatch (``step_batch_size / world_size``)."""
    return max(1, min(cfg.micro_batch_size, cfg.step_batch_size // world_size))


# ---------------------------------------------------------------------------- the recipe


def step_seed(seed: int, rank: int, step: int) -> int:
    """The seed of one rank's sampling and principle draws at one PPO step (DeepSpeed runs).

    >>> step_seed(42, 0, 0) != step_seed(42, 1, 0) != step_seed(42, 0, 1)
    True
    """
    return ((seed * 1_000_003 + rank) * 1_000_003 + step) % 2**63


def wrap_roles(roles: Any, ctx: Any, opt: Any, cfg: PPOConfig) -> None:
    """Put the trainable roles into one DeepSpeed engine; the roles then call them through it."""
    from dataclasses import replace

    from salmon.core.deepspeed_config import batch_layout, render_deepspeed_config

    if roles.layout == "shared":
        parts = {"model": roles.model, "value_head": roles.value_head}
        # peft freezes inactive adapters; DeepSpeed only trains what requires grad at start-up
        for p in roles.trainable().values():
            p.requires_grad_(True)
    else:
        parts = {"policy": roles.policy}
        if roles.value_body is not None:
            parts.update(value_body=roles.value_body, value_head=roles.value_head)
    layout = batch_layout(cfg.step_batch_size, cfg.micro_batch_size, ctx.world_size, what="step_batch_size")
    if cfg.algorithm == "ppo":  # the value loss is a second backward of each micro-batch: twice the micro-steps
        layout = replace(layout, accumulation=2 * layout.accumulation)
    config = render_deepspeed_config(
        mode=cfg.deepspeed, layout=layout, max_grad_norm=cfg.max_grad_norm, device_type=ctx.device.type,
        precision=cfg.precision, offload_optimizer=cfg.offload_optimizer, offload_param=cfg.offload_param,
        overrides=cfg.deepspeed_overrides)
    for name, routed in ctx.initialize_parts(parts, opt, config).items():
        setattr(roles, name, routed)
    if roles.layout == "shared":
        roles.use("policy")


def served_policy(cfg: PPOConfig, ctx: Any) -> Any:
    """The :class:`salmon.ppo.served.ServedPolicy` of ``rollout_backend=openai``, once the server
    lists its models."""
    from salmon.ppo.served import ServedPolicy, served_adapter_dir
    from salmon.sampling.openai_client import OpenAIClient

    assert cfg.endpoint is not None  # the config's validator
    client = OpenAIClient.from_config(cfg)
    models = client.wait_ready(cfg.ready_timeout_s)
    ctx.log(STAGE, f"rollouts from {client.endpoint} (serving {', '.join(m.id for m in models)}); the policy "
                   "adapter is loaded there before every step")
    return ServedPolicy(client, served_adapter_dir(cfg), cfg.served_adapter_dir_on_server,
                        run_key=str(Path(cfg.output_dir).resolve()))


def served_rollouts(served: Any, roles: Any, ctx: Any, trainable: dict[str, Any], turns: Any, q_ids: list[list[int]],
                    cfg: PPOConfig, step: int, offset: int) -> tuple[list[Any], list[list[float]]]:
    """This step's rollouts from the server: rank 0 publishes the policy adapter as it is now
    (ZeRO-3 gathers it first), every rank waits for it, then asks for its own queries, seeded by
    (seed, step, rollout index across ranks)."""
    from salmon.ppo.served import generate_on_server, rollout_seed

    with ctx.gathered(list(trainable.values())):
        ctx.on_main(lambda: served.publish(step, roles.save_policy))  # the other ranks wait at its barrier
    seeds = [rollout_seed(cfg.seed, step, offset + i) for i in range(len(q_ids))]
    return generate_on_server(served.client, served.name(step), turns, q_ids, max_new_tokens=cfg.response_len,
                              temperature=cfg.temperature, top_p=cfg.top_p, seeds=seeds)


def run(cfg: PPOConfig) -> StageResult:
    from salmon.distributed import session

    if cfg.quantize == "4bit":  # refused before any data or model is read
        from salmon.modeling import check_4bit, resolve_device

        check_4bit(resolve_device(cfg.device))
    with session(cfg.deepspeed, cfg.device) as ctx:
        return _train(cfg, ctx)


def _train(cfg: PPOConfig, ctx: Any) -> StageResult:
    import torch

    from salmon.memory import PeakMemory
    from salmon.ppo import math as ppo_math
    from salmon.reward.model import RMEncoder
    from salmon.turns import policy_turns

    prompts = load_rl_prompts(cfg)
    rl_set, interventions = load_rl_principles(cfg)
    queries, kept = check_inputs(cfg, prompts, rl_set, interventions, say=ctx.log)
    device = ctx.device
    roles = build_roles(cfg, device)
    tok = roles.tokenizer
    turns = policy_turns(tok, cfg, cfg.policy_model)
    pad_id = int(tok.pad_token_id)
    encoder = RMEncoder(roles.rm_tokenizer, reward_limits(cfg), "rm_max_length")
    ctx.log(STAGE, f"{len(kept)} of {len(prompts)} prompts fit query_len {cfg.query_len}; algorithm "
               f"{cfg.algorithm}; RL principles {rl_set.name} {rl_set.ids()}"
               + (f", interventions {interventions.ids()}" if interventions else ", no interventions"))

    critic = cfg.algorithm == "ppo"
    group = 1 if critic else cfg.group_size
    per_step = max(1, cfg.rollout_batch_size // group)
    batches = data_order(len(kept), cfg.total_epochs, per_step, cfg.seed)
    if cfg.total_steps is not None:  # a shorter (or longer) schedule, same data order
        epochs = cfg.total_steps * per_step / len(kept)
        batches = data_order(len(kept), max(epochs, cfg.total_epochs), per_step, cfg.seed)[:cfg.total_steps]
    total = len(batches)
    trainable = roles.trainable()
    params = list(trainable.values())
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_multiplier(s, cfg.warmup_steps, total, cfg.lr_schedule))
    rng = random.Random(cfg.seed)
    if ctx.deepspeed:
        wrap_roles(roles, ctx, opt, cfg)
    shaping = ppo_math.ShapingParams.from_config(cfg)
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out_dir / "checkpoints"
    log_path = out_dir / "train_log.jsonl"
    ds_ckpt_dir = ckpt_dir / "deepspeed"
    first = 0
    history: list[dict[str, Any]] = []
    resume = ds_ckpt_dir if ctx.deepspeed else latest_checkpoint(ckpt_dir)
    if ctx.deepspeed:
        state = ctx.load_engine_checkpoint(ds_ckpt_dir)
        if state is not None:
            first = int(state["step"])
            sched.load_state_dict(state["scheduler"])
    elif resume is not None:
        first = _load_checkpoint(resume, trainable, opt, sched, rng)
    if first:
        if log_path.is_file():
            history = [h for h in map(json.loads, log_path.read_text().splitlines()) if h["step"] <= first]
        ctx.log(STAGE, f"resuming from {resume} (step {first})")
    last = total if cfg.max_steps is None else min(total, first + cfg.max_steps)
    ctx.log(STAGE, f"{total} PPO steps of {per_step * group} rollouts (this run: {first + 1}..{last}); "
                   f"{sum(p.numel() for p in params):,} trainable parameters")
    updates = int(ctx.engine.global_steps) if ctx.deepspeed else 0
    if ctx.deepspeed:
        local = sum(len(ctx.shard(batches[s], "rollout_batch_size")) * group for s in range(first, last))
        ctx.log(STAGE, f"{cfg.deepspeed} on {device.type}: {local} local examples (rollouts) in steps "
                       f"{first + 1}..{last}, {cfg.step_batch_size // ctx.world_size} per optimizer step",
                every_rank=True)

    served = served_policy(cfg, ctx) if cfg.rollout_backend == "openai" else None
    micro = micro_batch(cfg, ctx.world_size)
    memory = PeakMemory(device)
    resources_path = out_dir / "resources.jsonl"
    resources = [r for r in map(json.loads, resources_path.read_text().splitlines()) if r["step"] <= first] if (
        first and resources_path.is_file()) else []
    t0 = time.monotonic()
    for step in range(first, last):
        # 1-2. sample, cut at the stop string, score under freshly drawn principles
        mine = ctx.shard(batches[step], "rollout_batch_size")  # this rank's prompts (all on one process)
        if ctx.deepspeed:  # draws depend on (seed, rank, step) only, so a resumed run repeats them
            torch.manual_seed(step_seed(cfg.seed, ctx.rank, step))
            rng = random.Random(step_seed(cfg.seed, ctx.rank, step))
        items = [kept[i] for i in mine for _ in range(group)]
        q_ids = [queries[i] for i in mine for _ in range(group)]
        t_step = time.monotonic()
        memory.start()
        server_logps: list[list[float]] | None = None
        if served is not None:  # the server loads this step's adapter; every rank then asks it
            sampled, server_logps = served_rollouts(served, roles, ctx, trainable, turns, q_ids, cfg, step,
                                                    offset=ctx.rank * len(q_ids))
        else:
            sampled = turns.generate(roles.sampler, q_ids, temperature=cfg.temperature, top_p=cfg.top_p,
                                     max_new_tokens=cfg.response_len, batch_size=cfg.forward_batch_size,
                                     stop=cfg.stop_rollouts)
        texts = [t.text for t in sampled]
        stops = torch.tensor([t.stopped for t in sampled], device=device)
        r_ids = [t.ids[: cfg.response_len] for t in sampled]
        lines = [rl_principle_lines(rng, rl_set, interventions, p.prompt_type, cfg.principles_per_rollout)
                 for p in items]
        rm_rows = [encoder.encode_rm(turns.answer_text(t), p.full_instruction(), drawn, fixed)
                   for t, p, (fixed, drawn) in zip(texts, items, lines, strict=True)]
        t_sampled = time.monotonic()
        scores = torch.tensor(roles.score(rm_rows, int(roles.rm_tokenizer.pad_token_id), cfg.forward_batch_size),
                              device=device)

        # 3-4. shaped rewards and advantages
        old = rollout_stats(roles, q_ids, r_ids, pad_id, cfg, critic, device)
        logp_old, logp_ref, values_old = old.logp, old.logp_ref, old.values
        mask = (torch.arange(logp_old.shape[1], device=device)[None, :]
                < torch.tensor([len(r) for r in r_ids], device=device)[:, None]).float()
        lengths = mask.sum(-1)
        multipliers = torch.tensor([cfg.length_multipliers[p.prompt_type] for p in items], device=device)
        rewards, terminal = ppo_math.shaped_rewards(scores, stops, lengths, multipliers, logp_old, logp_ref,
                                                    mask, shaping)
        kl = ppo_math.per_token_kl(logp_old, logp_ref, mask)
        if critic:
            advantages, returns = ppo_math.gae(rewards, values_old, mask, cfg.gamma, cfg.lam)
        else:
            seq = rewards.sum(-1).view(-1, group)
            base = ppo_math.rloo_advantages(seq) if cfg.algorithm == "rloo" else ppo_math.grpo_advantages(seq)
            advantages = base.reshape(-1, 1) * mask
            returns = torch.zeros_like(advantages)
        raw_advantages = advantages
        if cfg.whiten_advantages:  # over the rollouts of every rank
            advantages = ppo_math.whiten(advantages, mask, all_sum=ctx.all_sum_tensor if ctx.deepspeed else None,
                                         slots=cfg.response_len if cfg.whiten_over == "all_slots" else None)

        t_scored = time.monotonic()  # RM scores, log-probs and values of the rollouts

        # 5. clipped updates over minibatches, micro-batch by micro-batch
        losses: list[float] = []
        clipfracs: list[float] = []
        vlosses: list[float] = []
        gen = torch.Generator().manual_seed(cfg.seed + step)
        mb_size = cfg.step_batch_size // ctx.world_size  # this rank's share of an optimizer batch
        # under DeepSpeed each backward is one engine micro-step; the per-rank means are averaged
        backward = (lambda loss: ctx.backward(loss / ctx.world_size)) if ctx.deepspeed else (
            lambda loss: loss.backward())
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(len(items), generator=gen).tolist()
            for mb in chunks(order, mb_size):
                pl, cf, vl = update_minibatch(roles, mb, q_ids, r_ids, pad_id, old, advantages, returns, cfg,
                                              critic, micro, backward, device)
                if ctx.deepspeed:  # the engine clipped and stepped at its last micro-step
                    updates += 1
                    ctx.finish_step(updates)
                else:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                losses.append(pl)
                clipfracs.append(cf)
                if critic:
                    vlosses.append(vl)
        sched.step()

        done = step + 1
        stats = [float(scores.mean()), float(terminal.mean()), float(kl.sum(-1).mean()), float(lengths.mean()),
                 float(stops.float().mean()), sum(losses) / len(losses), sum(clipfracs) / len(clipfracs),
                 sum(vlosses) / len(vlosses) if vlosses else 0.0]
        if ctx.deepspeed:  # every rank has as many rollouts and minibatches: the mean of the rank means
            stats = [v / ctx.world_size for v in ctx.all_sum(stats)]
        entry: dict[str, Any] = {
            "step": done, "rm_score": round(stats[0], 4), "shaped_terminal": round(stats[1], 4),
            "kl": round(stats[2], 5), "response_tokens": round(stats[3], 2), "stop_rate": round(stats[4], 4),
            "policy_loss": round(stats[5], 5), "clipfrac": round(stats[6], 4), "lr": sched.get_last_lr()[0],
        }
        if vlosses:
            entry["value_loss"] = round(stats[7], 5)
        if server_logps is not None:  # how far the server's log-probs are from the trainer's (health)
            from salmon.ppo.served import logprob_gap

            gap = logprob_gap([_floats(logp_old[i, :len(r)]) for i, r in enumerate(r_ids)], server_logps)
            if gap is not None:
                entry["server_logprob_gap"] = round(gap, 5)
        seconds = {"rollout": round(t_sampled - t_step, 2), "scoring": round(t_scored - t_sampled, 2),
                   "update": round(time.monotonic() - t_scored, 2)}
        used = {"step": done, "seconds": seconds, "peak_memory_mib": memory.peak_mib()}  # this rank's
        history.append(entry)
        ctx.log(STAGE, f"step {done}/{total} rm {entry['rm_score']:+.3f} kl {entry['kl']:.4f} "
                   f"len {entry['response_tokens']:.0f} stop {entry['stop_rate']:.2f} "
                   f"({time.monotonic() - t0:.0f}s; this step: rollout {seconds['rollout']:.0f}s, "
                   f"scoring {seconds['scoring']:.0f}s, update {seconds['update']:.0f}s"
                   + ("" if used["peak_memory_mib"] is None else f", peak memory +{used['peak_memory_mib']:.0f} MiB")
                   + ")")
        dump = []
        for i, (p, t) in enumerate(zip(items, texts, strict=True)):
            n = int(lengths[i])
            dump.append({
                "prompt_id": p.prompt_id, "prompt_type": p.prompt_type, "response": t, "response_ids": r_ids[i],
                "has_stop": bool(stops[i]), "rm_score": float(scores[i]), "interventions": lines[i][0],
                "principles": lines[i][1], "length": n, "length_multiplier": float(multipliers[i]),
                "logp": _floats(logp_old[i, :n]), "logp_ref": _floats(logp_ref[i, :n]),
                "shaped_rewards": _floats(rewards[i, :n]), "values": _floats(values_old[i, :n]),
                "advantages": _floats(raw_advantages[i, :n]),
            })
        if ctx.deepspeed:
            dump = ctx.gather_lists(dump)  # all ranks' rollouts, in rank order

        resources.append(used)

        def write_step(dump: list[dict[str, Any]] = dump, done: int = done) -> None:
            write_text(out_dir / "rollouts" / f"step_{done:05d}.jsonl", "".join(json.dumps(d) + "\n" for d in dump))
            write_text(log_path, "".join(json.dumps(h) + "\n" for h in history))
            write_text(out_dir / "resources.jsonl", "".join(json.dumps(r) + "\n" for r in resources))

        if ctx.deepspeed:
            ctx.on_main(write_step)
            if done % cfg.save_every == 0 or done == last:
                ctx.save_engine_checkpoint(ds_ckpt_dir, done, {"step": done, "scheduler": sched.state_dict()})
        else:
            write_step()
            if done % cfg.save_every == 0 or done == last:
                _save_checkpoint(ckpt_dir, done, trainable, opt, sched, rng)

    if served is not None:
        ctx.on_main(served.close)
    finished = (history[-1]["step"] if history else first) >= total
    policy_dir = out_dir / "policy"
    if finished:
        from salmon.checkpoints import publish_adapter

        with ctx.gathered(params):  # ZeRO-3: the whole adapter, on every rank; rank 0 writes it
            ctx.on_main(lambda: publish_adapter(
                policy_dir, roles.save_policy, tok, "salmon_policy.json",
                {"base_model": cfg.policy_model, "rl_principles": rl_set.name,
                 "rl_principles_digest": rl_set.digest(), "steps": total, "prompt_format": cfg.prompt_format,
                 "system_prompt": turns.system, "stop": turns.stop}))
    else:
        ctx.log(STAGE, f"stopped after step {last} of {total} (max_steps); rerun to continue")
    metrics: dict[str, Any] = {k: v for k, v in (history[-1] if history else {}).items() if k != "lr"}
    metrics.update(steps=total, steps_done=last, finished=finished, prompts=len(kept),
                   rl_principles=rl_set.ids(), rl_principles_digest=rl_set.digest())
    if ctx.deepspeed:
        metrics.update(deepspeed=cfg.deepspeed, world_size=ctx.world_size)
    outputs = {"rollouts": str(out_dir / "rollouts"), "train_log": str(log_path)}
    if finished:
        outputs["policy"] = str(policy_dir)
    return StageResult(STAGE, outputs=outputs, metrics=metrics)


def main(argv: list[str] | None = None) -> int:
    return stage_main(STAGE, PPOConfig, run, argv, __doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())
