"""``salmon bench hardware``: achieved FLOP/s of RM training and of the PPO learning step, as a
fraction of this machine's matmul peak measured in the same run.

- **peak**: ``torch.matmul`` of two square ``n x n`` matrices (float32 on CPU, bfloat16 on a GPU),
  FLOP/s = ``2 n^3 / t``, best of several runs;
- **RM training step**: salmon's reward model as the ``train_rm`` stage builds it
  (:func:`salmon.stages.train_rm.build_model`: LoRA r=64 all-linear, float32 head), one
  micro-batch of encoded nano RM instances (both responses of each pair in one forward),
  Bradley-Terry loss, backward, gradient clipping, AdamW step;
- **PPO learning step**: salmon's shared-base roles (:class:`salmon.ppo.shared.SharedRoles`: policy,
  reference, value and reward adapters on one base), one minibatch of rollouts: policy
  log-probs + clipped policy loss + backward, values + clipped value loss + backward, clipping,
  AdamW step over the policy and value adapters and the value head, as the PPO stage does it.

FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode` on one step (what really
ran: matmuls of the forward and backward, frozen weights included). On CPU it does not count the
fused attention kernel (``_scaled_dot_product_flash_attention_for_cpu``), so the fractions are a
slight under-estimate; ``*_flops_6nt`` gives the ``6 * N * tokens`` rule for comparison. Times
are medians of several steps after a warm-up step.

On a GPU the model is SmolLM2-135M-Instruct in bfloat16 (micro-batches of 16 pairs, 16 rollouts of
256 + 256 tokens) and the RM row carries the goal MFU >= 40 %; each fraction is also a comparison
row (baseline: the peak; ratio: the fraction achieved).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from salmon.bench.common import BenchResult, Comparison


def matmul_peak(n: int, repeats: int, dtype: Any, device: Any) -> float:
    """Best FLOP/s of ``n x n @ n x n`` over ``repeats`` runs (after one warm-up)."""
    import torch

    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    best = float("inf")
    for i in range(repeats + 1):
        _sync(device)
        t0 = time.perf_counter()
        torch.matmul(a, b)
        _sync(device)
        if i:
            best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def count_and_time(step: Any, repeats: int, device: Any) -> tuple[float, float]:
    """FLOPs of one ``step()`` (counted) and the median seconds of ``repeats`` more (after that one)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()  # also the warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return float(counter.get_total_flops()), statistics.median(times)


def rm_step(model_path: str, work: Path, micro: int, device: Any, dtype: str) -> tuple[Any, int, Any]:
    """Salmon's RM training step on one micro-batch: ``(step, tokens per step, model)``."""
    import torch

    from salmon.bench.train_rm import encoded_pairs, make_instances, rm_config
    from salmon.reward.loss import bradley_terry_loss
    from salmon.reward.model import left_pad
    from salmon.stages.train_rm import build_model

    instances = make_instances(work / "hw-instances.jsonl", micro)
    cfg = rm_config(model_path, instances, work / "hw-rm", micro, micro).model_copy(update={"dtype": dtype})
    model, tokenizer = build_model(cfg, device)
    chosen, rejected, _ = encoded_pairs(cfg)
    rows = [r for pair in zip(chosen, rejected, strict=True) for r in pair]
    ids, mask = left_pad(rows, int(tokenizer.pad_token_id))
    ids, mask = ids.to(device), mask.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)

    def step() -> None:
        rewards = model(ids, mask).view(micro, 2)
        loss = bradley_terry_loss(rewards[:, 0], rewards[:, 1])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, int(ids.numel()), (model, tokenizer, cfg)


def ppo_step(model_path: str, rm_parts: Any, work: Path, rollouts: int, query: int, response: int,
             device: Any) -> tuple[Any, int]:
    """Salmon's PPO learning step (policy and value, shared base) on one minibatch."""
    import torch

    from salmon.ppo import math as ppo_math
    from salmon.ppo.rollout import make_batch
    from salmon.ppo.shared import SharedRoles
    from salmon.reward.model import RM_FORMAT, RMMeta, save_reward_model

    model, tokenizer, cfg = rm_parts
    rm_dir = work / "hw-rm-model"
    if not (rm_dir / "rm.json").is_file():
        meta = RMMeta(format=RM_FORMAT, base_model=str(Path(model_path).resolve()), finetune="lora",
                      model_max_length=cfg.model_max_length, query_len=cfg.query_len, response_len=cfg.response_len)
        save_reward_model(model, tokenizer, meta, rm_dir)
    torch.manual_seed(0)
    roles = SharedRoles(model_path, None, str(rm_dir), 64, 16, device)
    vocab = int(roles.model.get_base_model().config.vocab_size)
    gen = torch.Generator().manual_seed(1)
    q = [torch.randint(5, vocab, (query,), generator=gen).tolist() for _ in range(rollouts)]
    r = [torch.randint(5, vocab, (response,), generator=gen).tolist() for _ in range(rollouts)]
    sub = make_batch(q, r, int(tokenizer.pad_token_id)).to(device)
    with torch.no_grad():
        logp_old = roles.policy_logprobs(sub, 0.7)
    advantages = torch.randn(logp_old.shape, generator=gen).to(device)
    returns = torch.randn(logp_old.shape, generator=gen).to(device)
    values_old = torch.zeros_like(returns)
    params = list(roles.trainable().values())
    opt = torch.optim.AdamW(params, lr=1e-6)

    def step() -> None:
        logp = roles.policy_logprobs(sub, 0.7)
        pl, _ = ppo_math.policy_loss(logp, logp_old, advantages, sub.response_mask, 0.2)
        pl.backward()
        v = roles.values(sub)
        vl = ppo_math.value_loss(v, values_old, returns, sub.response_mask, 0.2, 0.1)
        vl.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, int(sub.input_ids.numel())


def run(quick: bool, work: Path) -> BenchResult:
    import torch

    from salmon.bench.models import bench_model, parameter_count

    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    mm_dtype = torch.bfloat16 if gpu else torch.float32
    model_dtype = "bfloat16" if gpu else "float32"
    if gpu:  # a real model at batch sizes a GPU run uses: the bench model is too small to load a card
        from salmon.base_models import prepare

        path = str(prepare("smollm2"))
    else:
        path = bench_model(work, quick)
    n_params = parameter_count(path)
    n, peak_repeats = (8192, 10) if gpu else ((1024, 5) if quick else (2048, 5))
    micro, rollouts, qlen, rlen, repeats = (
        (16, 16, 256, 256, 5) if gpu else (2, 2, 64, 64, 3) if quick else (2, 2, 128, 128, 3))

    peak_before = matmul_peak(n, peak_repeats, mm_dtype, device)
    step, rm_tokens, rm_parts = rm_step(path, work, micro, device, model_dtype)
    rm_flops, rm_s = count_and_time(step, repeats, device)
    pstep, ppo_tokens = ppo_step(path, rm_parts, work, rollouts, qlen, rlen, device)
    ppo_flops, ppo_s = count_and_time(pstep, repeats, device)
    peak_after = matmul_peak(n, peak_repeats, mm_dtype, device)
    peak = max(peak_before, peak_after)

    rm_rate, ppo_rate = rm_flops / rm_s, ppo_flops / ppo_s
    result = BenchResult(name="hardware", baseline=f"{'bf16' if gpu else 'fp32'} matmul peak {n}x{n} (measured)")
    result.figures = {
        "matmul_peak_gflops": peak / 1e9,
        "matmul_peak_gflops_before": peak_before / 1e9,
        "matmul_peak_gflops_after": peak_after / 1e9,
        "rm_step_gflop": rm_flops / 1e9,
        "rm_step_flops_6nt_gflop": 6 * n_params * rm_tokens / 1e9,
        "rm_step_seconds": rm_s,
        "rm_achieved_gflops": rm_rate / 1e9,
        "rm_fraction_of_peak": rm_rate / peak,
        "rm_tokens_per_second": rm_tokens / rm_s,
        "ppo_learn_gflop": ppo_flops / 1e9,
        "ppo_learn_flops_6nt_gflop": 2 * 6 * n_params * ppo_tokens / 1e9,
        "ppo_learn_seconds": ppo_s,
        "ppo_achieved_gflops": ppo_rate / 1e9,
        "ppo_fraction_of_peak": ppo_rate / peak,
        "ppo_tokens_per_second": ppo_tokens / ppo_s,
    }
    if gpu:
        result.figures["rm_mfu"] = rm_rate / peak
        result.figures["ppo_mfu"] = ppo_rate / peak
    # the ratio of these two rows is the fraction of the peak achieved (the MFU on a GPU in bf16)
    result.comparisons = [
        Comparison("RM training step, achieved vs matmul peak", "GFLOP/s", peak / 1e9, rm_rate / 1e9,
                   better="higher", goal=0.4 if gpu else None,
                   note="ratio = fraction of the measured peak; goal on a GPU in bf16: MFU >= 40 %"),
        Comparison("PPO learning step, achieved vs matmul peak", "GFLOP/s", peak / 1e9, ppo_rate / 1e9,
                   better="higher", note="ratio = fraction of the measured peak"),
    ]
    result.setup = {"model": path, "parameters": n_params, "device": device.type, "dtype": model_dtype,
                    "matmul_n": n, "rm_micro_batch_pairs": micro, "rm_tokens_per_step": rm_tokens,
                    "ppo_rollouts": rollouts, "ppo_query_len": qlen, "ppo_response_len": rlen,
                    "ppo_tokens_per_step": ppo_tokens, "repeats": repeats, "threads": torch.get_num_threads()}
    result.notes = [
        "FLOPs counted by torch FlopCounterMode on one step (forward, backward through frozen weights, "
        "LoRA); the fused CPU attention kernel is not counted",
        "PPO learning: two forward/backward passes (policy, value) per step; 6NT rule given as 2 x 6 N T",
        "peak: best of the matmul runs before and after the steps",
    ]
    return result
