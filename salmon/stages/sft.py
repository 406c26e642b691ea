"""``sft``: principle engraving (method §1.4): LoRA SFT on (distilled system prompt + instruction
-> answer), with the loss on the answer only.

Each example is laid out as at inference (:class:`salmon.turns.PolicyTurns`): the source is the
policy's query, the very ids ``sample``, ``ppo``, ``eval_policy`` and the logged model feed it
(kept from the right end, ``source_max_len`` tokens), and the target is the answer (kept from the
start, ``target_max_len`` tokens). With ``prompt_format: dromedary`` (the method's) the query is
``{system}\\n{instruction}\\n\\n### Dromedary`` and the target ``\\n{response}`` ends with the
textual end-of-turn marker, no EOS; with ``chat_template`` the query is the tokenizer's chat
template and the target ends with the tokenizer's eos. The system prompt alternates over
``system_prompts`` by example index. The loss is the mean cross-entropy over all target tokens of
an optimizer batch.

``quantize: 4bit`` loads the base in NF4 with double quantization and bf16 compute (QLoRA); it
needs bitsandbytes and a CUDA GPU. Checkpoints every ``save_every`` steps hold the adapter,
optimizer and scheduler; a rerun resumes from the newest. The adapter lands in
``<output_dir>/adapter`` and loads with ``PeftModel.from_pretrained`` on the base model.

``deepspeed: zero2|zero3`` trains under a DeepSpeed engine (see :mod:`salmon.distributed`): under
``torchrun`` each rank takes its even share of every optimizer batch, the loss keeps its
single-process normalisation (all target tokens of the whole batch), and rank 0 writes the log and
the adapter (gathered first under ZeRO-3). Checkpoints are then DeepSpeed's own, in
``checkpoints/deepspeed/``; a rerun with the same number of ranks resumes from them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from salmon.core import templates
from salmon.core.config import SFTConfig
from salmon.core.errors import SalmonInputError
from salmon.core.io import read_jsonl, write_text
from salmon.core.records import SFTExample
from salmon.reward.train import data_order, lr_multiplier, resume_point
from salmon.stages.common import StageResult, preflight_model, stage_main

STAGE = "sft"
IGNORE = -100
"""Label of tokens that carry no loss (the source and the padding)."""


def sft_tokens(source: list[int], target: list[int], source_max_len: int,
               target_max_len: int) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` of one example: the source's last ``source_max_len`` tokens, then the
    target's first ``target_max_len``; labels are :data:`IGNORE` on the source.

    >>> sft_tokens([1, 2, 3], [7, 8, 9], 2, 2)
    ([2, 3, 7, 8], [-100, -100, 7, 8])
    """
    src = source[-source_max_len:]
    tgt = target[:target_max_len]
    return src + tgt, [IGNORE] * len(src) + tgt


def pad_right(rows: list[list[int]], value: int) -> list[list[int]]:
    width = max(len(r) for r in rows)
    return [r + [value] * (width - len(r)) for r in rows]


def system_prompts(cfg: SFTConfig) -> list[str | None]:
    """The system prompts examples alternate over (``None``: the chat template's own)."""
    if cfg.system_prompts:
        return list(cfg.system_prompts)
    return list(templates.SFT_SYSTEM_PROMPTS) if cfg.prompt_format == "dromedary" else [None]


def encode_examples(tok: Any, examples: list[SFTExample], cfg: SFTConfig) -> list[tuple[list[int], list[int]]]:
    from salmon.turns import policy_turns

    base = policy_turns(tok, cfg, cfg.base_model)
    formats = [base.with_system(s) for s in system_prompts(cfg)]
    out = []
    for i, ex in enumerate(examples):
        source, target = formats[i % len(formats)].sft_ids(ex.full_instruction(), ex.response)
        out.append(sft_tokens(source, target, cfg.source_max_len, cfg.target_max_len))
    return out


def build_model(cfg: SFTConfig, device: Any) -> tuple[Any, Any]:
    """(base + a fresh trainable LoRA adapter, tokenizer)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from salmon.modeling import load_4bit, load_causal_lm, load_tokenizer

    torch.manual_seed(cfg.seed)
    tok = load_tokenizer(cfg.base_model)
    if cfg.quantize == "4bit":
        base = load_4bit(cfg.base_model, device=device)
    else:
        base = load_causal_lm(cfg.base_model, device=device, dtype=cfg.dtype)
    target: str | list[str] = (cfg.lora_target if cfg.lora_target == "all-linear"
                               else [t.strip() for t in cfg.lora_target.split(",")])
    model = get_peft_model(base, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                            target_modules=target, task_type="CAUSAL_LM"))
    model.train()
    return model, tok


def _trainable(model: Any) -> dict[str, Any]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def run(cfg: SFTConfig) -> StageResult:
    from salmon.distributed import session

    with session(cfg.deepspeed, cfg.device) as ctx:
        return _train(cfg, ctx)


def resume(ctx: Any, out_dir: Path, trainable: dict[str, Any], opt: Any, sched: Any
           ) -> tuple[int, list[dict[str, Any]]]:
    """(steps already done, their train-log lines) from the newest checkpoint in ``out_dir``
    (DeepSpeed's own under ``checkpoints/deepspeed`` in a DeepSpeed session); (0, []) for a new run."""
    from salmon.checkpoints import load_checkpoint

    first, found = resume_point(ctx, out_dir / "checkpoints", sched,
                                lambda path: int(load_checkpoint(path, trainable, opt, sched)["step"]))
    if not first:
        return 0, []
    log_path = out_dir / "train_log.jsonl"
    history = [h for h in map(json.loads, log_path.read_text().splitlines()) if h["step"] <= first] if (
        log_path.is_file()) else []
    ctx.log(STAGE, f"resuming from {found} (step {first})")
    return first, history


def backpropagate_batch(ctx: Any, forward: Any, rows: list[tuple[list[int], list[int]]], micro_size: int,
                        n_tokens: int, pad: int) -> float:
    """Backpropagate this rank's share of a batch, ``micro_size`` examples per forward: the summed
    cross-entropy of the target tokens over ``n_tokens`` (the WHOLE batch's target tokens, on every
    rank). Returns this rank's part of the batch loss."""
    import torch

    device = ctx.device
    total = 0.0
    for start in range(0, len(rows), micro_size):
        micro = rows[start:start + micro_size]
        ids = torch.tensor(pad_right([r[0] for r in micro], pad), device=device)
        labels = torch.tensor(pad_right([r[1] for r in micro], IGNORE), device=device)
        mask = torch.tensor(pad_right([[1] * len(r[0]) for r in micro], 0), device=device)
        logits = forward(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        target = labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                 ignore_index=IGNORE, reduction="sum") / max(1, n_tokens)
        if ctx.deepspeed:
            ctx.backward(loss)
        else:
            loss.backward()
        total += float(loss.detach())
    return total


def _train(cfg: SFTConfig, ctx: Any) -> StageResult:
    import torch

    from salmon.checkpoints import publish_adapter, save_checkpoint
    from salmon.core.deepspeed_config import stage_deepspeed_config

    examples = read_jsonl(cfg.data, SFTExample)
    if not examples:
        raise SalmonInputError(cfg.data, "no examples", "give selfalign's output")
    preflight_model(STAGE, cfg.base_model, prompt_format=cfg.prompt_format, say=ctx.log)
    device = ctx.device
    model, tok = build_model(cfg, device)
    rows = encode_examples(tok, examples, cfg)
    batches = data_order(len(rows), cfg.epochs, cfg.batch_size, cfg.seed)
    total = len(batches)
    trainable = _trainable(model)
    params = list(trainable.values())
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    warmup = int(cfg.warmup_ratio * total)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_multiplier(s, warmup, total, cfg.lr_schedule))
    n_params = sum(p.numel() for p in params)
    forward, micro_size = model, cfg.micro_batch_size
    if ctx.deepspeed:
        ds_config, micro_size = stage_deepspeed_config(cfg, world_size=ctx.world_size, device_type=device.type)
        forward = ctx.initialize(model, opt, ds_config)
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out_dir / "checkpoints"
    ds_ckpt_dir = ckpt_dir / "deepspeed"
    log_path = out_dir / "train_log.jsonl"
    first, history = resume(ctx, out_dir, trainable, opt, sched)
    last = total if cfg.max_steps is None else min(total, first + cfg.max_steps)
    ctx.log(STAGE, f"{len(rows)} examples, {total} steps of {cfg.batch_size}; {n_params:,} trainable parameters")
    if ctx.deepspeed:
        local = sum(len(ctx.shard(batches[s])) for s in range(first, last))
        ctx.log(STAGE, f"{cfg.deepspeed} on {device.type}: {local} local examples in steps {first + 1}..{last} "
                       f"(micro-batches of {micro_size})", every_rank=True)
    pad = int(tok.pad_token_id)
    t0 = time.monotonic()
    window: list[float] = []
    for step in range(first, last):
        batch = batches[step]
        # the loss is normalised by the target tokens of the WHOLE batch, on every rank
        n_tokens = sum(sum(1 for x in rows[i][1] if x != IGNORE) for i in batch)
        step_loss = backpropagate_batch(ctx, forward, [rows[i] for i in ctx.shard(batch)], micro_size, n_tokens, pad)
        if ctx.deepspeed:  # the engine clipped and stepped at its last micro-batch
            ctx.finish_step(step + 1)
            step_loss = ctx.all_sum([step_loss])[0]
            sched.step()
        else:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        done = step + 1
        window.append(step_loss)
        history.append({"step": done, "loss": round(step_loss, 5), "lr": sched.get_last_lr()[0]})
        if done % cfg.log_every == 0 or done == last:
            ctx.log(STAGE, f"step {done}/{total} loss {sum(window) / len(window):.4f} "
                       f"lr {sched.get_last_lr()[0]:.2e} ({time.monotonic() - t0:.0f}s)")
            window = []
        if done % cfg.save_every == 0 or done == last:
            text = "".join(json.dumps(h) + "\n" for h in history)
            if ctx.deepspeed:
                ctx.on_main(lambda text=text: write_text(log_path, text))
                ctx.save_engine_checkpoint(ds_ckpt_dir, done, {"step": done, "scheduler": sched.state_dict()})
            else:
                write_text(log_path, text)
                save_checkpoint(ckpt_dir, done, trainable, opt, sched)

    finished = last >= total
    adapter_dir = out_dir / "adapter"
    if finished:
        with ctx.gathered(params):  # ZeRO-3: the whole adapter, on every rank; rank 0 writes it
            ctx.on_main(lambda: publish_adapter(
                adapter_dir, model.save_pretrained, tok, "salmon_sft.json",
                {"base_model": cfg.base_model, "examples": len(rows), "steps": total,
                 "prompt_format": cfg.prompt_format, "system_prompt": system_prompts(cfg)[0]}))
    else:
        ctx.log(STAGE, f"stopped after step {last} of {total} (max_steps); rerun to continue")
    metrics: dict[str, Any] = {"examples": len(rows), "steps": total, "steps_done": last, "finished": finished,
                               "loss_first": history[0]["loss"] if history else None,
                               "loss_last": history[-1]["loss"] if history else None}
    if ctx.deepspeed:
        metrics.update(deepspeed=cfg.deepspeed, world_size=ctx.world_size)
    outputs = {"train_log": str(log_path)}
    if finished:
        outputs["adapter"] = str(adapter_dir)
    return StageResult(STAGE, outputs=outputs, metrics=metrics)


def main(argv: list[str] | None = None) -> int:
    return stage_main(STAGE, SFTConfig, run, argv, __doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())
