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

import json
import random
import time
from pathlib import Path
from typing import Any

from salmon.core.config import PPOConfig
from salmon.core.io import write_text
from salmon.core.principles import PrincipleSet
from salmon.core.records import PromptRecord
from salmon.core.rl_principles import rl_principle_lines
from salmon.ppo.inputs import encode_queries, load_rl_principles, load_rl_prompts, reward_limits
from salmon.ppo.passes import chunks, micro_batch, rollout_stats, update_minibatch
from salmon.ppo.roles import Roles, build_roles, check_role_layout, wrap_roles
from salmon.ppo.served import served_policy, served_rollouts
from salmon.ppo.state import (
    Advantages,
    Rollouts,
    Training,
    floats,
    load_training_checkpoint,
    rollout_line,
    save_training_checkpoint,
)
from salmon.reward.train import data_order, lr_multiplier, resume_point
from salmon.stages.common import StageResult, log, preflight_model, stage_main

STAGE = "ppo"


# ---------------------------------------------------------------------------- inputs


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


# ---------------------------------------------------------------------------- the recipe


def step_seed(seed: int, rank: int, step: int) -> int:
    """The seed of one rank's sampling and principle draws at one PPO step (DeepSpeed runs).

    >>> step_seed(42, 0, 0) != step_seed(42, 1, 0) != step_seed(42, 0, 1)
    True
    """
    return ((seed * 1_000_003 + rank) * 1_000_003 + step) % 2**63


def run(cfg: PPOConfig) -> StageResult:
    from salmon.distributed import session

    if cfg.quantize == "4bit":  # refused before any data or model is read
        from salmon.modeling import check_4bit, resolve_device

        check_4bit(resolve_device(cfg.device))
    with session(cfg.deepspeed, cfg.device) as ctx:
        return train(cfg, ctx)


def train(cfg: PPOConfig, ctx: Any, roles: Roles | None = None) -> StageResult:
    """The PPO loop in ``ctx`` (a :mod:`salmon.distributed` session), each step in the numbered
    phases of the module docstring. ``roles``: built from ``cfg`` when not given."""
    t = start(cfg, ctx, roles)
    for step in range(t.first, t.last):
        t_step = time.monotonic()
        t.memory.start()
        rollouts = roll_out(t, step)  # 1-2
        t_sampled = time.monotonic()
        score(t, rollouts)  # 2
        adv = advantages(t, rollouts)  # 3-4
        t_scored = time.monotonic()
        losses = update(t, step, rollouts, adv)  # 5
        seconds = {"rollout": round(t_sampled - t_step, 2), "scoring": round(t_scored - t_sampled, 2),
                   "update": round(time.monotonic() - t_scored, 2)}
        record(t, step + 1, rollouts, adv, losses, seconds)
    return finish(t)


def start(cfg: PPOConfig, ctx: Any, roles: Roles | None = None) -> Training:
    """Inputs checked, roles built, the optimizer and schedule, and the state of a resumed run."""
    import torch

    from salmon.memory import PeakMemory
    from salmon.reward.model import RMEncoder
    from salmon.turns import policy_turns

    prompts = load_rl_prompts(cfg)
    rl_set, interventions = load_rl_principles(cfg)
    queries, kept = check_inputs(cfg, prompts, rl_set, interventions, say=ctx.log)
    roles = roles if roles is not None else build_roles(cfg, ctx.device)
    turns = policy_turns(roles.tokenizer, cfg, cfg.policy_model)
    ctx.log(STAGE, f"{len(kept)} of {len(prompts)} prompts fit query_len {cfg.query_len}; algorithm "
               f"{cfg.algorithm}; RL principles {rl_set.name} {rl_set.ids()}"
               + (f", interventions {interventions.ids()}" if interventions else ", no interventions"))
    group = 1 if cfg.algorithm == "ppo" else cfg.group_size
    per_step = max(1, cfg.rollout_batch_size // group)
    batches = data_order(len(kept), cfg.total_epochs, per_step, cfg.seed)
    if cfg.total_steps is not None:  # a shorter (or longer) schedule, same data order
        epochs = cfg.total_steps * per_step / len(kept)
        batches = data_order(len(kept), max(epochs, cfg.total_epochs), per_step, cfg.seed)[:cfg.total_steps]
    trainable = roles.trainable()
    params = list(trainable.values())
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_multiplier(s, cfg.warmup_steps, len(batches), cfg.lr_schedule))
    rng = random.Random(cfg.seed)
    if ctx.deepspeed:
        wrap_roles(roles, ctx, opt, cfg)
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    first, history, resources = _resume(cfg, ctx, trainable, opt, sched, rng)
    last = len(batches) if cfg.max_steps is None else min(len(batches), first + cfg.max_steps)
    ctx.log(STAGE, f"{len(batches)} PPO steps of {per_step * group} rollouts (this run: {first + 1}..{last}); "
                   f"{sum(p.numel() for p in params):,} trainable parameters")
    if ctx.deepspeed:
        local = sum(len(ctx.shard(batches[s], "rollout_batch_size")) * group for s in range(first, last))
        ctx.log(STAGE, f"{cfg.deepspeed} on {ctx.device.type}: {local} local examples (rollouts) in steps "
                       f"{first + 1}..{last}, {cfg.step_batch_size // ctx.world_size} per optimizer step",
                every_rank=True)
    return Training(
        cfg=cfg, ctx=ctx, roles=roles, trainable=trainable, turns=turns,
        encoder=RMEncoder(roles.rm_tokenizer, reward_limits(cfg), "rm_max_length"), kept=kept, queries=queries,
        rl_set=rl_set, interventions=interventions, batches=batches, group=group, opt=opt, sched=sched, rng=rng,
        first=first, last=last, history=history, resources=resources,
        served=served_policy(cfg, ctx) if cfg.rollout_backend == "openai" else None,
        memory=PeakMemory(ctx.device), updates=int(ctx.engine.global_steps) if ctx.deepspeed else 0,
        started=time.monotonic())


def _resume(cfg: PPOConfig, ctx: Any, trainable: dict[str, Any], opt: Any, sched: Any, rng: random.Random
            ) -> tuple[int, list[dict[str, Any]], list[dict[str, Any]]]:
    """(steps already done, their log lines, their resource lines) from the newest checkpoint."""
    out_dir = Path(cfg.output_dir)
    first, resume = resume_point(ctx, out_dir / "checkpoints", sched,
                                 lambda path: load_training_checkpoint(path, trainable, opt, sched, rng))
    if not first:
        return 0, [], []
    ctx.log(STAGE, f"resuming from {resume} (step {first})")

    def done(name: str) -> list[dict[str, Any]]:
        path = out_dir / name
        lines = map(json.loads, path.read_text().splitlines()) if path.is_file() else []
        return [h for h in lines if h["step"] <= first]

    return first, done("train_log.jsonl"), done("resources.jsonl")


def roll_out(t: Training, step: int) -> Rollouts:
    """1-2. Sample this rank's rollouts, cut each at the end of its turn, draw the principles each
    is scored under and encode its RM input."""
    import torch

    cfg, ctx = t.cfg, t.ctx
    mine = ctx.shard(t.batches[step], "rollout_batch_size")  # this rank's prompts (all on one process)
    if ctx.deepspeed:  # draws depend on (seed, rank, step) only, so a resumed run repeats them
        torch.manual_seed(step_seed(cfg.seed, ctx.rank, step))
        t.rng = random.Random(step_seed(cfg.seed, ctx.rank, step))
    items = [t.kept[i] for i in mine for _ in range(t.group)]
    q_ids = [t.queries[i] for i in mine for _ in range(t.group)]
    server_logps: list[list[float]] | None = None
    if t.served is not None:  # the server loads this step's adapter; every rank then asks it
        sampled, server_logps = served_rollouts(t.served, t.roles, ctx, t.trainable, t.turns, q_ids, cfg, step,
                                                offset=ctx.rank * len(q_ids))
    else:
        sampled = t.turns.generate(t.roles.sampler, q_ids, temperature=cfg.temperature, top_p=cfg.top_p,
                                   max_new_tokens=cfg.response_len, batch_size=cfg.forward_batch_size,
                                   stop=cfg.stop_rollouts)
    texts = [s.text for s in sampled]
    lines = [rl_principle_lines(t.rng, t.rl_set, t.interventions, p.prompt_type, cfg.principles_per_rollout)
             for p in items]
    rm_rows = [t.encoder.encode_rm(t.turns.answer_text(s), p.full_instruction(), drawn, fixed)
               for s, p, (fixed, drawn) in zip(texts, items, lines, strict=True)]
    return Rollouts(items=items, q_ids=q_ids, r_ids=[s.ids[: cfg.response_len] for s in sampled], texts=texts,
                    lines=lines, rm_rows=rm_rows, stops=torch.tensor([s.stopped for s in sampled], device=ctx.device),
                    server_logps=server_logps)


def score(t: Training, r: Rollouts) -> None:
    """2. The reward model's score of every rollout (into ``r.scores``)."""
    import torch

    scores = t.roles.score(r.rm_rows, int(t.roles.rm_tokenizer.pad_token_id), t.cfg.forward_batch_size)
    r.scores = torch.tensor(scores, device=t.ctx.device)


def advantages(t: Training, r: Rollouts) -> Advantages:
    """3-4. Log-probs and values of the rollouts, shaped rewards, and advantages (GAE, or group
    baselines for grpo / rloo), whitened over the rollouts of every rank."""
    import torch

    from salmon.ppo import math as ppo_math

    cfg, ctx, device = t.cfg, t.ctx, t.ctx.device
    old = rollout_stats(t.roles, r.q_ids, r.r_ids, int(t.roles.tokenizer.pad_token_id), cfg, t.critic, device)
    mask = (torch.arange(old.logp.shape[1], device=device)[None, :]
            < torch.tensor([len(ids) for ids in r.r_ids], device=device)[:, None]).float()
    lengths = mask.sum(-1)
    multipliers = torch.tensor([cfg.length_multipliers[p.prompt_type] for p in r.items], device=device)
    rewards, terminal = ppo_math.shaped_rewards(r.scores, r.stops, lengths, multipliers, old.logp, old.logp_ref,
                                                mask, ppo_math.ShapingParams.from_config(cfg))
    if t.critic:
        raw, returns = ppo_math.gae(rewards, old.values, mask, cfg.gamma, cfg.lam)
    else:
        seq = rewards.sum(-1).view(-1, t.group)
        base = ppo_math.rloo_advantages(seq) if cfg.algorithm == "rloo" else ppo_math.grpo_advantages(seq)
        raw = base.reshape(-1, 1) * mask
        returns = torch.zeros_like(raw)
    whitened = raw
    if cfg.whiten_advantages:  # over the rollouts of every rank
        whitened = ppo_math.whiten(raw, mask, all_sum=ctx.all_sum_tensor if ctx.deepspeed else None,
                                   slots=cfg.response_len if cfg.whiten_over == "all_slots" else None)
    return Advantages(old=old, mask=mask, lengths=lengths, multipliers=multipliers, rewards=rewards,
                      terminal=terminal, kl=ppo_math.per_token_kl(old.logp, old.logp_ref, mask), raw=raw,
                      advantages=whitened, returns=returns)


def update(t: Training, step: int, r: Rollouts, a: Advantages) -> tuple[list[float], list[float], list[float]]:
    """5. ``ppo_epochs`` passes of clipped updates over minibatches of ``step_batch_size``, micro-batch
    by micro-batch; the schedule steps once. Returns the (policy loss, clip fraction, value loss)
    of every minibatch."""
    import torch

    cfg, ctx = t.cfg, t.ctx
    losses: list[float] = []
    clipfracs: list[float] = []
    vlosses: list[float] = []
    gen = torch.Generator().manual_seed(cfg.seed + step)
    mb_size = cfg.step_batch_size // ctx.world_size  # this rank's share of an optimizer batch
    # under DeepSpeed each backward is one engine micro-step; the per-rank means are averaged
    backward = (lambda loss: ctx.backward(loss / ctx.world_size)) if ctx.deepspeed else (
        lambda loss: loss.backward())
    params = list(t.trainable.values())
    pad_id = int(t.roles.tokenizer.pad_token_id)
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(len(r.items), generator=gen).tolist()
        for mb in chunks(order, mb_size):
            pl, cf, vl = update_minibatch(t.roles, mb, r.q_ids, r.r_ids, pad_id, a.old, a.advantages, a.returns,
                                          cfg, t.critic, micro_batch(cfg, ctx.world_size), backward, ctx.device)
            if ctx.deepspeed:  # the engine clipped and stepped at its last micro-step
                t.updates += 1
                ctx.finish_step(t.updates)
            else:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                t.opt.step()
                t.opt.zero_grad(set_to_none=True)
            losses.append(pl)
            clipfracs.append(cf)
            if t.critic:
                vlosses.append(vl)
    t.sched.step()
    return losses, clipfracs, vlosses


def record(t: Training, done: int, r: Rollouts, a: Advantages, losses: tuple[list[float], list[float], list[float]],
           seconds: dict[str, float]) -> None:
    """The step's log line, its rollouts (``rollouts/step_<k>.jsonl``), the train log, the resources,
    and a checkpoint every ``save_every`` steps and at the last."""
    cfg, ctx = t.cfg, t.ctx
    policy_losses, clipfracs, vlosses = losses
    stats = [float(r.scores.mean()), float(a.terminal.mean()), float(a.kl.sum(-1).mean()), float(a.lengths.mean()),
             float(r.stops.float().mean()), sum(policy_losses) / len(policy_losses), sum(clipfracs) / len(clipfracs),
             sum(vlosses) / len(vlosses) if vlosses else 0.0]
    if ctx.deepspeed:  # every rank has as many rollouts and minibatches: the mean of the rank means
        stats = [v / ctx.world_size for v in ctx.all_sum(stats)]
    entry: dict[str, Any] = {
        "step": done, "rm_score": round(stats[0], 4), "shaped_terminal": round(stats[1], 4),
        "kl": round(stats[2], 5), "response_tokens": round(stats[3], 2), "stop_rate": round(stats[4], 4),
        "policy_loss": round(stats[5], 5), "clipfrac": round(stats[6], 4), "lr": t.sched.get_last_lr()[0],
    }
    if vlosses:
        entry["value_loss"] = round(stats[7], 5)
    if r.server_logps is not None:  # how far the server's log-probs are from the trainer's (health)
        from salmon.ppo.served import logprob_gap

        gap = logprob_gap([floats(a.old.logp[i, :len(ids)]) for i, ids in enumerate(r.r_ids)], r.server_logps)
        if gap is not None:
            entry["server_logprob_gap"] = round(gap, 5)
    used = {"step": done, "seconds": seconds, "peak_memory_mib": t.memory.peak_mib()}  # this rank's
    t.history.append(entry)
    t.resources.append(used)
    ctx.log(STAGE, f"step {done}/{t.total} rm {entry['rm_score']:+.3f} kl {entry['kl']:.4f} "
                   f"len {entry['response_tokens']:.0f} stop {entry['stop_rate']:.2f} "
                   f"({time.monotonic() - t.started:.0f}s; this step: rollout {seconds['rollout']:.0f}s, "
                   f"scoring {seconds['scoring']:.0f}s, update {seconds['update']:.0f}s"
                   + ("" if used["peak_memory_mib"] is None else f", peak memory +{used['peak_memory_mib']:.0f} MiB")
                   + ")")
    dump = [rollout_line(r, a, i) for i in range(len(r.items))]
    if ctx.deepspeed:
        dump = ctx.gather_lists(dump)  # all ranks' rollouts, in rank order
    out_dir = t.out_dir
    history, resources = list(t.history), list(t.resources)

    def write_step() -> None:
        write_text(out_dir / "rollouts" / f"step_{done:05d}.jsonl", "".join(json.dumps(d) + "\n" for d in dump))
        write_text(out_dir / "train_log.jsonl", "".join(json.dumps(h) + "\n" for h in history))
        write_text(out_dir / "resources.jsonl", "".join(json.dumps(x) + "\n" for x in resources))

    checkpoint = done % cfg.save_every == 0 or done == t.last
    if ctx.deepspeed:
        ctx.on_main(write_step)
        if checkpoint:
            ctx.save_engine_checkpoint(out_dir / "checkpoints" / "deepspeed", done,
                                       {"step": done, "scheduler": t.sched.state_dict()})
    else:
        write_step()
        if checkpoint:
            save_training_checkpoint(out_dir / "checkpoints", done, t.trainable, t.opt, t.sched, t.rng)


def finish(t: Training) -> StageResult:
    """Publish the policy when the schedule is done; the stage's metrics and outputs."""
    cfg, ctx = t.cfg, t.ctx
    if t.served is not None:
        ctx.on_main(t.served.close)
    finished = (t.history[-1]["step"] if t.history else t.first) >= t.total
    policy_dir = t.out_dir / "policy"
    if finished:
        from salmon.checkpoints import publish_adapter

        meta = {"base_model": cfg.policy_model, "rl_principles": t.rl_set.name,
                "rl_principles_digest": t.rl_set.digest(), "steps": t.total, "prompt_format": cfg.prompt_format,
                "system_prompt": t.turns.system, "stop": t.turns.stop}
        with ctx.gathered(list(t.trainable.values())):  # ZeRO-3: the whole adapter; rank 0 writes it
            ctx.on_main(lambda: publish_adapter(policy_dir, t.roles.save_policy, t.roles.tokenizer,
                                                "salmon_policy.json", meta))
    else:
        ctx.log(STAGE, f"stopped after step {t.last} of {t.total} (max_steps); rerun to continue")
    metrics: dict[str, Any] = {k: v for k, v in (t.history[-1] if t.history else {}).items() if k != "lr"}
    metrics.update(steps=t.total, steps_done=t.last, finished=finished, prompts=len(t.kept),
                   rl_principles=t.rl_set.ids(), rl_principles_digest=t.rl_set.digest())
    if ctx.deepspeed:
        metrics.update(deepspeed=cfg.deepspeed, world_size=ctx.world_size)
    outputs = {"rollouts": str(t.out_dir / "rollouts"), "train_log": str(t.out_dir / "train_log.jsonl")}
    if finished:
        outputs["policy"] = str(policy_dir)
    return StageResult(STAGE, outputs=outputs, metrics=metrics)


def main(argv: list[str] | None = None) -> int:
    return stage_main(STAGE, PPOConfig, run, argv, __doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())
