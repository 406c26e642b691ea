"""``train_rm``: the principle-following reward model (method §3).

A causal-LM body with LoRA (r=64, alpha=16 on all linear layers by default; ``finetune=full``
for small models) and a float32 scalar head read at the last token of left-padded inputs.
``lora_layers=N`` puts LoRA on the last N layers only, which stops backpropagation there (a
cheaper step, for CPU runs). ``quantize=4bit`` trains the LoRA body on an NF4 base (QLoRA, the
method's; bitsandbytes and a CUDA GPU, refused elsewhere before any work). Each instance gives
two sequences, (response, instruction, principle lines) for both outputs, run in one forward;
the loss is Bradley-Terry,
``-log sigmoid(r_chosen - r_rejected)``.

With ``pmp_data``, a preference-model pre-training phase on generic pairs (template without
principles) runs first and the principle-conditioned phase continues its weights.

Checkpoints (trainable weights, optimizer, scheduler, step) land in ``<output_dir>/checkpoints``
every ``save_every`` steps; a rerun resumes from the newest one. ``max_steps`` stops an invocation
after that many optimizer steps (checkpointed; the schedule still spans the whole run) and a rerun
continues. The final RM is written to ``<output_dir>/model`` atomically once every step is done.

``deepspeed: zero2|zero3`` trains under a DeepSpeed engine (:mod:`salmon.distributed`): each rank
takes its even share of every batch of pairs, the loss stays the mean over the whole batch, and
rank 0 writes the model (gathered first under ZeRO-3). Checkpoints are DeepSpeed's own, in
``checkpoints/deepspeed/``; a rerun with the same number of ranks resumes from them. The PMP phase
is single-process only.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from salmon.core import templates
from salmon.core.config import TrainRMConfig
from salmon.core.digest import digest_file
from salmon.core.errors import SalmonInputError
from salmon.core.io import read_jsonl, write_text
from salmon.core.records import RMInstance
from salmon.reward.train import data_order, latest_checkpoint, lr_multiplier
from salmon.stages.common import StageResult, preflight_model, stage_main

STAGE = "train_rm"


@dataclass(frozen=True)
class Phase:
    """One training phase: PMP (generic template) or FT (principle-conditioned)."""

    name: str
    data: str
    learning_rate: float
    warmup_ratio: float
    epochs: float
    model_max_length: int
    query_len: int
    response_len: int


def phases(cfg: TrainRMConfig) -> list[Phase]:
    out = []
    if cfg.pmp_data:
        out.append(Phase("pmp", cfg.pmp_data, cfg.pmp_learning_rate, cfg.pmp_warmup_ratio,
                         cfg.pmp_epochs, cfg.pmp_model_max_length, cfg.pmp_query_len,
                         cfg.pmp_response_len))
    out.append(Phase("ft", cfg.instances, cfg.learning_rate, cfg.warmup_ratio, cfg.epochs,
                     cfg.model_max_length, cfg.query_len, cfg.response_len))
    return out


def encode_instance(encoder: Any, inst: RMInstance, pmp: bool) -> tuple[list[int], list[int]]:
    """Token ids of (output_1, output_2) under the instance's principle lines (or the PMP guide)."""
    lines = [p.text for p in inst.principles]
    if pmp:
        return (encoder.encode(templates.pmp_prompt(inst.output_1, inst.instruction)),
                encoder.encode(templates.pmp_prompt(inst.output_2, inst.instruction)))
    return (encoder.encode_rm(inst.output_1, inst.instruction, lines),
            encoder.encode_rm(inst.output_2, inst.instruction, lines))


def _trainable(model: Any) -> dict[str, Any]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _checkpoint_step(phase_index: int, step: int) -> int:
    """One increasing number per (phase, step): the checkpoint folder ``step-<phase><step:07d>``."""
    return phase_index * 10_000_000 + step


def lora_targets(cfg: TrainRMConfig, body: Any) -> str | list[str]:
    """peft ``target_modules`` for the body: ``cfg.lora_target``, confined with ``cfg.lora_layers``
    to the linear modules of the last N decoder layers, named in full (``layers.<i>.<path>``)."""
    import torch

    names = None if cfg.lora_target == "all-linear" else {t.strip() for t in cfg.lora_target.split(",")}
    if cfg.lora_layers is None:
        return "all-linear" if names is None else sorted(names)
    n = int(getattr(body.config, "num_hidden_layers", 0) or 0)
    if cfg.lora_layers > n:
        raise SalmonInputError(f"lora_layers={cfg.lora_layers}", f"exceeds the {n} layers of {cfg.base_model}",
                               f"set lora_layers to at most {n}, or null for every layer")
    top = {str(i) for i in range(n - cfg.lora_layers, n)}
    out = []
    for name, module in body.named_modules():
        parts = name.split(".")
        if not isinstance(module, torch.nn.Linear) or "layers" not in parts:
            continue
        at = parts.index("layers")
        if at + 1 < len(parts) and parts[at + 1] in top and (names is None or parts[-1] in names):
            out.append(name)
    if not out:
        raise SalmonInputError(f"lora_layers={cfg.lora_layers}", f"found no linear modules in 'layers.<i>' of "
                               f"{cfg.base_model}", "leave lora_layers null for this architecture")
    return out


def build_model(cfg: TrainRMConfig, device: Any = None) -> tuple[Any, Any]:
    """The RM to train and its tokenizer: base body (+ LoRA) and a fresh head (on ``cfg.device`` by default)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from salmon.modeling import load_4bit, load_backbone, load_tokenizer, resolve_device
    from salmon.reward.model import build_reward_model

    device = resolve_device(cfg.device) if device is None else device
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.base_model)
    if cfg.quantize == "4bit":  # QLoRA: the LoRA body on an NF4 base (the config requires finetune=lora)
        body = load_4bit(cfg.base_model, device=device, body=True)
    else:
        body = load_backbone(cfg.base_model, device=device, dtype=cfg.dtype)
    if cfg.finetune == "lora":
        body = get_peft_model(body, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                               lora_dropout=cfg.lora_dropout, target_modules=lora_targets(cfg, body)))
    model = build_reward_model(body, seed=cfg.seed)
    model.train()
    return model, tokenizer


def run(cfg: TrainRMConfig) -> StageResult:
    from salmon.distributed import session

    if cfg.pmp_data and cfg.deepspeed != "off":
        raise SalmonInputError("pmp_data", "the PMP phase runs single-process only (one DeepSpeed engine per run)",
                               "run PMP with deepspeed=off, or leave pmp_data unset")
    if cfg.quantize == "4bit":  # refused before any data or model is read
        from salmon.modeling import check_4bit, resolve_device

        check_4bit(resolve_device(cfg.device))
    with session(cfg.deepspeed, cfg.device) as ctx:
        return train(cfg, ctx)


def train(cfg: TrainRMConfig, ctx: Any) -> StageResult:
    import torch

    from salmon.checkpoints import load_checkpoint, save_checkpoint
    from salmon.core.deepspeed_config import stage_deepspeed_config

    out_dir = Path(cfg.output_dir)
    ckpt_dir = out_dir / "checkpoints"
    plan = phases(cfg)
    datasets = [read_jsonl(ph.data, RMInstance) for ph in plan]
    preflight_model(STAGE, cfg.base_model, say=ctx.log)
    model, tokenizer = build_model(cfg, ctx.device)
    device = next(model.parameters()).device
    pad = int(tokenizer.pad_token_id)
    n_trainable = sum(p.numel() for p in _trainable(model).values())
    n_total = sum(p.numel() for p in model.parameters())
    ctx.log(STAGE, f"{cfg.finetune} fine-tuning of {cfg.base_model}: {n_trainable:,} of {n_total:,} "
               f"parameters trainable; phases: {', '.join(p.name for p in plan)}")

    ds_ckpt_dir = ckpt_dir / "deepspeed"
    resume = None if ctx.deepspeed else latest_checkpoint(ckpt_dir)
    start_phase, start_step, history, (window_loss, window_acc, window_n) = resumed_state(ctx, resume, plan)

    t0 = time.monotonic()
    budget = cfg.max_steps  # optimizer steps this invocation may still take (None: all)
    finished = True
    for pi, (ph, data) in enumerate(zip(plan, datasets, strict=True)):
        if pi < start_phase:
            continue
        if budget == 0:
            finished = False
            break
        examples, labels = phase_examples(ph, data, tokenizer)
        batches = data_order(len(examples), ph.epochs, cfg.batch_size, cfg.seed)
        total = len(batches)
        warmup = int(round(ph.warmup_ratio * total))
        params = list(_trainable(model).values())
        opt = torch.optim.AdamW(params, lr=ph.learning_rate, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s, w=warmup, t=total: lr_multiplier(s, w, t, cfg.lr_schedule))
        forward, micro_size = model, cfg.micro_batch_size
        first = 0
        if ctx.deepspeed:
            ds_config, micro_size = stage_deepspeed_config(cfg, world_size=ctx.world_size, device_type=device.type)
            forward = ctx.initialize(model, opt, ds_config)
            state = ctx.load_engine_checkpoint(ds_ckpt_dir)
            if state is not None:
                first = int(state["step"])
                sched.load_state_dict(state["scheduler"])
                ctx.log(STAGE, f"resuming from {ds_ckpt_dir} (step {first})")
        elif pi == start_phase and resume is not None:
            load_checkpoint(resume, _trainable(model), opt, sched)
            first = start_step
        ctx.log(STAGE, f"phase {ph.name}: {len(examples)} instances, {total} steps of {cfg.batch_size} "
                       f"pairs, lr {ph.learning_rate:g}, warm-up {warmup}")
        if ctx.deepspeed:
            local = sum(len(ctx.shard(batches[s])) for s in range(first, total))
            ctx.log(STAGE, f"{cfg.deepspeed} on {device.type}: {local} local examples in steps {first + 1}..{total} "
                           f"(micro-batches of {micro_size})", every_rank=True)
        if pi != start_phase or resume is None:
            window_loss, window_acc, window_n = 0.0, 0.0, 0
        last = total if budget is None else min(total, first + budget)
        if budget is not None:
            budget -= last - first
        for step in range(first, last):
            batch = batches[step]
            mine = ctx.shard(batch)  # this rank's pairs (all of them on one process)
            loss_sum, correct = backpropagate_pairs(ctx, forward, [examples[i] for i in mine],
                                                    [labels[i] for i in mine], len(batch), micro_size, pad, device)
            window_loss, window_acc, window_n = window_loss + loss_sum, window_acc + correct, window_n + len(mine)
            if ctx.deepspeed:  # the engine clipped and stepped at its last micro-batch
                ctx.finish_step(step + 1)
                sched.step()
            else:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
            done = step + 1
            if done % cfg.log_every == 0 or done == total:
                history.append(log_window(ctx, ph.name, done, total, (window_loss, window_acc, window_n),
                                          sched.get_last_lr()[0], t0))
                window_loss, window_acc, window_n = 0.0, 0.0, 0
            if done % cfg.save_every == 0 or done == last:
                if ctx.deepspeed:
                    ctx.save_engine_checkpoint(ds_ckpt_dir, done, {"step": done, "scheduler": sched.state_dict()})
                else:  # the log so far and the open logging window travel with the weights
                    save_checkpoint(ckpt_dir, _checkpoint_step(pi, done), _trainable(model), opt, sched,
                                    {"phase_index": pi, "step": done, "history": history,
                                     "window": [window_loss, window_acc, window_n]})
        if last < total:
            finished = False
            ctx.log(STAGE, f"stopped after {ph.name} step {last} of {total} (max_steps); rerun to continue")
            break

    if not finished:
        return StageResult(STAGE, outputs={}, metrics={"finished": False, "seconds": round(time.monotonic() - t0, 1),
                                                       "trainable_parameters": n_trainable})
    return publish(cfg, ctx, model, tokenizer, datasets, history, n_trainable, t0)


def resumed_state(ctx: Any, resume: Path | None, plan: list[Phase]
                  ) -> tuple[int, int, list[dict[str, Any]], tuple[float, float, int]]:
    """(phase index, step, train log so far, open logging window) of the checkpoint ``resume``
    (a local run's; DeepSpeed keeps its own); zeros for a new run."""
    if resume is None:
        return 0, 0, [], (0.0, 0.0, 0)
    state = json.loads((resume / "state.json").read_text())
    ctx.log(STAGE, f"resuming from {resume} (phase {plan[state['phase_index']].name}, step {state['step']})")
    loss, acc, n = state.get("window", [0.0, 0.0, 0])
    return state["phase_index"], state["step"], state.get("history", []), (loss, acc, n)


def log_window(ctx: Any, phase: str, done: int, total: int, window: tuple[float, float, int], lr: float,
               t0: float) -> dict[str, Any]:
    """The train-log line of the steps since the last one (summed over the ranks), also printed."""
    loss, acc, n = window
    if ctx.deepspeed:
        loss, acc, n_all = ctx.all_sum([loss, acc, n])
        n = int(n_all)
    entry = {"phase": phase, "step": done, "loss": round(loss / n, 4), "accuracy": round(acc / n, 4), "lr": lr,
             "seconds": round(time.monotonic() - t0, 1)}
    ctx.log(STAGE, f"{phase} step {done}/{total} loss {entry['loss']:.4f} acc {entry['accuracy']:.3f} lr {lr:.2e}")
    return entry


def phase_examples(ph: Phase, data: list[RMInstance], tokenizer: Any) -> tuple[list[tuple[list[int], list[int]]],
                                                                               list[int]]:
    """The encoded (response A, response B) RM inputs of a phase's instances, and each preference (1 or 2)."""
    from salmon.reward.model import EncodeLimits, RMEncoder

    encoder = RMEncoder(tokenizer, EncodeLimits(ph.model_max_length, ph.query_len, ph.response_len))
    examples = []
    for inst in data:
        try:
            examples.append(encode_instance(encoder, inst, pmp=ph.name == "pmp"))
        except SalmonInputError as e:  # principle lines longer than model_max_length
            raise SalmonInputError(f"{ph.data}: instance {inst.instance_id}", e.message, e.fix) from None
    return examples, [inst.preference for inst in data]


def backpropagate_pairs(ctx: Any, forward: Any, examples: list[tuple[list[int], list[int]]], labels: list[int],
                        batch_size: int, micro_size: int, pad: int, device: Any) -> tuple[float, float]:
    """Backpropagate the Bradley-Terry loss of this rank's pairs of a batch, ``micro_size`` pairs per
    forward (both responses of a pair in one forward), each micro-batch weighted by its share of the
    ``batch_size`` pairs. Returns (summed loss, pairs ranked right)."""
    import torch

    from salmon.reward.loss import bradley_terry_loss
    from salmon.reward.model import left_pad

    loss_sum = correct = 0.0
    for start in range(0, len(examples), micro_size):
        micro = examples[start:start + micro_size]
        ids, mask = left_pad([ids for pair in micro for ids in pair], pad)
        rewards = forward(ids.to(device), mask.to(device)).view(len(micro), 2)
        pref = torch.tensor(labels[start:start + micro_size], device=device) - 1
        chosen = rewards.gather(1, pref[:, None]).squeeze(1)
        rejected = rewards.gather(1, (1 - pref)[:, None]).squeeze(1)
        loss = bradley_terry_loss(chosen, rejected)
        if ctx.deepspeed:  # this rank's share of the mean over the whole batch
            ctx.backward(loss * len(micro) / batch_size)
        else:
            (loss * len(micro) / batch_size).backward()
        loss_sum += float(loss.detach()) * len(micro)
        correct += float((chosen > rejected).float().sum())
    return loss_sum, correct


def publish(cfg: TrainRMConfig, ctx: Any, model: Any, tokenizer: Any, datasets: list[list[RMInstance]],
            history: list[dict[str, Any]], n_trainable: int, t0: float) -> StageResult:
    """Write the trained RM (``model/``) and the train log; the stage's metrics."""
    from salmon.reward.model import RM_FORMAT, RMMeta, save_reward_model

    out_dir = Path(cfg.output_dir)
    model.eval()
    meta = RMMeta(format=RM_FORMAT, base_model=str(Path(cfg.base_model).resolve()),
                  finetune=cfg.finetune, model_max_length=cfg.model_max_length,
                  query_len=cfg.query_len, response_len=cfg.response_len,
                  trained_principles=sorted({line.principle_id for data in datasets for inst in data
                                             for line in inst.principles}))

    def write_outputs() -> None:
        save_reward_model(model, tokenizer, meta, out_dir / "model")
        write_text(out_dir / "train_log.jsonl", "".join(json.dumps(h) + "\n" for h in history))

    with ctx.gathered(list(_trainable(model).values())):  # ZeRO-3: whole tensors; rank 0 writes
        ctx.on_main(write_outputs)
    last = {k: v for k, v in (history[-1] if history else {}).items() if k in ("loss", "accuracy")}
    metrics = {"train_" + k: v for k, v in last.items()}
    metrics.update(finished=True, instances=len(datasets[-1]), trainable_parameters=n_trainable,
                   seconds=round(time.monotonic() - t0, 1),
                   instances_digest=digest_file(cfg.instances))
    if ctx.deepspeed:
        metrics.update(deepspeed=cfg.deepspeed, world_size=ctx.world_size)
    ctx.log(STAGE, f"reward model written to {out_dir / 'model'}")
    return StageResult(STAGE, outputs={"model": str(out_dir / "model"),
                                       "train_log": str(out_dir / "train_log.jsonl")},
                       metrics=metrics)


def main(argv: list[str] | None = None) -> int:
    return stage_main(STAGE, TrainRMConfig, run, argv, __doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())
