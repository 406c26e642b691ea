"""``salmon bench train_rm``: reward-model training, salmon's stage against TRL's ``RewardTrainer``.

Both sides train the same LoRA reward model on the same pairs, in the same order:

- base model: :func:`~salmon.bench.models.bench_model`, float32 on CPU (bf16 on a GPU is not
  used here: the comparison is of the training loops);
- LoRA: salmon's RM defaults (``r=64, alpha=16, dropout 0, all-linear``); TRL gets the same
  ``LoraConfig`` with ``task_type=SEQ_CLS`` (so its ``score`` head is trained, as salmon's head is);
- data: nano pairs judged by the rules judge and aggregated into RM instances, encoded ONCE
  with salmon's RM template (:class:`~salmon.reward.model.RMEncoder`); TRL gets those token ids
  as a pre-tokenized dataset (``chosen_ids`` / ``rejected_ids``), so no EOS is added and both
  see identical sequences. TRL reads the batches in salmon's data order (a sequential sampler),
  so every micro-batch holds the same pairs and pads to the same shape ``[2 x micro, L]``;
- optimizer: AdamW, same LR, cosine schedule, no weight decay, clip norm; ``batch_size`` pairs
  per step in micro-batches of ``micro_batch_size`` (TRL: gradient accumulation).

**salmon** is the real stage code (``salmon.stages.train_rm.train`` under a single-process
session), **TRL** is ``RewardTrainer.train()``. On each side the training loop alone is timed:
from the end of the first optimizer step to the end of the last (the first step is the warm-up;
model loading, encoding, dataset preparation and saving fall outside). Salmon's end-of-step
times come from its per-step log line, TRL's from a ``TrainerCallback.on_step_end``.

A second TRL row keeps TRL's default ``gradient_checkpointing=True`` (what a user gets without
changing it); everything else as above.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from salmon.bench.common import BenchResult, Comparison
from salmon.bench.runner import SkipBench

STEP_MARK = "ft step "


def make_instances(path: Path, n: int, seed: int = 5) -> Path:
    """``n`` RM instances from nano pairs (rules judge, nano principles), written as JSONL."""
    from salmon.core.aggregate import AggregateParams, aggregate, index_judgements
    from salmon.core.io import write_jsonl
    from salmon.core.principles import load_principle_set
    from salmon.judge.rules import judge_pairs_rules
    from salmon.nano.world import make_pairs, make_prompts

    pset = load_principle_set("nano")
    got: list[Any] = []
    k = 0
    while len(got) < n:
        pairs = make_pairs(make_prompts(2 * n, seed=seed + k), seed=seed + k + 1)
        judged = index_judgements(judge_pairs_rules(pairs, pset.ids()))
        inst, _ = aggregate(pairs, judged, pset, AggregateParams(dimensions=tuple(pset.ids()), passes=1))
        got += [i.model_copy(update={"instance_id": f"{i.instance_id}-{k}"}) for i in inst]
        k += 1
    write_jsonl(path, got[:n])
    return path


def rm_config(model: str, instances: Path, out: Path, batch: int, micro: int) -> Any:
    import shutil

    from salmon.core.config import TrainRMConfig, build_config

    shutil.rmtree(out, ignore_errors=True)  # a leftover checkpoint would make the stage resume
    return build_config(TrainRMConfig, stage="train_rm", values=dict(
        instances=str(instances), output_dir=str(out), base_model=model, finetune="lora",
        batch_size=batch, micro_batch_size=micro, log_every=1, save_every=10**6, device="cpu",
        learning_rate=1e-4))


def salmon_train(cfg: Any) -> dict[str, Any]:
    """Run salmon's train_rm stage loop; the end time of every optimizer step."""
    from salmon.distributed import session
    from salmon.stages.train_rm import train

    ends: list[float] = []
    with session("off", "cpu") as ctx:
        def log(stage: str, message: str, every_rank: bool = False) -> None:
            if message.startswith(STEP_MARK):
                ends.append(time.perf_counter())

        ctx.log = log  # type: ignore[method-assign]
        result = train(cfg, ctx)
    return {"ends": ends, "metrics": result.metrics}


def encoded_pairs(cfg: Any) -> tuple[list[list[int]], list[list[int]], int]:
    """Chosen and rejected ids of the instances in salmon's data order, as salmon encodes them."""
    from salmon.core.io import read_jsonl
    from salmon.core.records import RMInstance
    from salmon.modeling import load_tokenizer
    from salmon.reward.model import EncodeLimits, RMEncoder
    from salmon.reward.train import data_order
    from salmon.stages.train_rm import encode_instance

    data = read_jsonl(cfg.instances, RMInstance)
    enc = RMEncoder(load_tokenizer(cfg.base_model), EncodeLimits(cfg.model_max_length, cfg.query_len,
                                                                  cfg.response_len))
    examples = [encode_instance(enc, inst, pmp=False) for inst in data]
    order = [i for b in data_order(len(examples), cfg.epochs, cfg.batch_size, cfg.seed) for i in b]
    chosen = [examples[i][data[i].preference - 1] for i in order]
    rejected = [examples[i][2 - data[i].preference] for i in order]
    return chosen, rejected, len(order) // cfg.batch_size


def trl_train(cfg: Any, out: Path, gradient_checkpointing: bool = False) -> dict[str, Any]:
    """TRL's RewardTrainer on the same model, LoRA, ids, order and optimizer settings."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForSequenceClassification, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    from salmon.modeling import load_tokenizer, quiet_progress_bars

    quiet_progress_bars()
    chosen, rejected, steps = encoded_pairs(cfg)
    dataset = Dataset.from_dict({"chosen_ids": chosen, "rejected_ids": rejected})
    tokenizer = load_tokenizer(cfg.base_model)
    torch.manual_seed(cfg.seed)
    model = AutoModelForSequenceClassification.from_pretrained(cfg.base_model, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    target = cfg.lora_target if cfg.lora_target == "all-linear" else [t.strip() for t in cfg.lora_target.split(",")]
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=target, task_type="SEQ_CLS")
    args = RewardConfig(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=cfg.batch_size // cfg.micro_batch_size, learning_rate=cfg.learning_rate,
        lr_scheduler_type="cosine", warmup_steps=int(round(cfg.warmup_ratio * steps)),
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, optim="adamw_torch",
        logging_steps=steps, save_strategy="no", report_to="none", use_cpu=True, bf16=False, fp16=False,
        gradient_checkpointing=gradient_checkpointing, seed=cfg.seed, max_length=cfg.model_max_length,
        dataloader_num_workers=0, disable_tqdm=True)

    ends: list[float] = []

    class StepTimes(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, *a: Any, **k: Any) -> None:
            ends.append(time.perf_counter())

    class InOrder(RewardTrainer):  # type: ignore[misc]
        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

    trainer = InOrder(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                      peft_config=lora, callbacks=[StepTimes()])
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    trainer.train()
    return {"ends": ends, "trainable_parameters": trainable, "pairs": len(chosen), "steps": steps}


def pairs_per_second(ends: list[float], batch: int) -> float:
    """Pairs per second from the end times of the optimizer steps, the first one excluded."""
    if len(ends) < 2:
        raise RuntimeError("need at least two optimizer steps to time the loop")
    return (len(ends) - 1) * batch / (ends[-1] - ends[0])


def run(quick: bool, work: Path) -> BenchResult:
    try:
        import datasets  # noqa: F401
        import trl
    except ImportError as e:
        raise SkipBench(f"TRL is not installed ({e.name}); pip install trl") from None
    import torch

    from salmon.bench.models import bench_model, parameter_count

    model = bench_model(work, quick)
    batch, micro, steps, repeats = (4, 2, 3, 2) if quick else (4, 2, 3, 3)
    instances = make_instances(work / "instances.jsonl", batch * steps)
    chosen, rejected, _ = encoded_pairs(rm_config(model, instances, work / "probe", batch, micro))
    lengths = [len(x) for x in chosen + rejected]

    rates: dict[str, list[float]] = {"salmon": [], "trl": [], "trl_gc": []}
    info: dict[str, Any] = {}
    for r in range(repeats):  # alternate the sides so that drift reaches both alike
        s = salmon_train(rm_config(model, instances, work / f"salmon-{r}", batch, micro))
        rates["salmon"].append(pairs_per_second(s["ends"], batch))
        info["salmon_trainable"] = s["metrics"]["trainable_parameters"]
        info["salmon_steps"] = len(s["ends"])
        t = trl_train(rm_config(model, instances, work / "x", batch, micro), work / f"trl-{r}")
        rates["trl"].append(pairs_per_second(t["ends"], batch))
        info["trl_trainable"] = t["trainable_parameters"]
        info["trl_steps"] = len(t["ends"])
        if r == 0:  # once: it only shows what TRL's default costs
            g = trl_train(rm_config(model, instances, work / "x", batch, micro), work / f"trl-gc-{r}",
                          gradient_checkpointing=True)
            rates["trl_gc"].append(pairs_per_second(g["ends"], batch))
    med = {k: statistics.median(v) for k, v in rates.items()}

    result = BenchResult(name="train_rm", baseline=f"TRL {trl.__version__} RewardTrainer, same LoRA/data/order")
    result.comparisons = [
        Comparison("RM training throughput vs TRL (matched settings)", "pairs/s", med["trl"], med["salmon"],
                   "higher", 1.3, note=f"median of {repeats}, sides alternated; steps 2..{steps} timed"),
        Comparison("RM training throughput vs TRL defaults (gradient checkpointing)", "pairs/s", med["trl_gc"],
                   med["salmon"], "higher", None),
    ]
    result.figures = {"salmon_pairs_per_second": med["salmon"], "trl_pairs_per_second": med["trl"],
                      "trl_gc_pairs_per_second": med["trl_gc"],
                      "salmon_tokens_per_second": med["salmon"] * 2 * statistics.mean(lengths),
                      "salmon_trainable_parameters": info["salmon_trainable"],
                      "trl_trainable_parameters": info["trl_trainable"],
                      "salmon_steps": info["salmon_steps"], "trl_steps": info["trl_steps"],
                      "pairs_per_side": batch * steps}
    result.setup = {"model": model, "parameters": parameter_count(model), "batch_size": batch,
                    "micro_batch_size": micro, "steps": steps, "repeats": repeats, "lora_r": 64, "lora_alpha": 16,
                    "lora_target": "all-linear", "dtype": "float32", "device": "cpu",
                    "sequence_tokens_mean": round(statistics.mean(lengths), 1), "sequence_tokens_max": max(lengths),
                    "threads": torch.get_num_threads(), "trl": trl.__version__,
                    "rates": {k: [round(x, 3) for x in v] for k, v in rates.items()}}
    result.notes = ["both sides: one forward of 2 x micro sequences (chosen and rejected) per micro-batch; "
                    "salmon left-pads and reads the last position, TRL right-pads and gathers the last real token"]
    return result
