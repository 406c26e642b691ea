"""``salmon bench ppo``: where a PPO step's time goes, and what the shared-base role layout saves.

The step measured is the ``ppo`` stage itself (:func:`salmon.stages.ppo.train`), not a copy of
it. The stage has no timing hooks: the benchmark builds the roles and hands the stage a timing
implementation of :class:`salmon.ppo.roles.Roles` around them, and a timing context, so the
phases are read at the seams the recipe already has:

- **generation**: the ``generate`` calls of ``roles.sampler`` (and, with a merged generation copy,
  its refresh before the step);
- **scoring**: ``roles.score`` (the RM forward over the encoded RM inputs);
- **reference/value**: the roles' passes run without gradients (old policy log-probs,
  reference log-probs, old values);
- **learning**: from the first pass with gradients to the step's log line (the clipped policy
  and value losses, backward passes, clipping and optimizer steps of every PPO epoch);
- **other**: the rest of the step (reading the turns, tokenising, RM input encoding, reward
  shaping, GAE).

A step starts when the stage asks the context for its shard of prompts and ends at its
``step k/n`` log line, so the parts add up to the step by construction. The first step is a
warm-up and is left out; the figures are medians over the other steps.

Memory: each layout runs in its own subprocess (same model, RM, prompts and sizes): ``shared``
(one base with policy, reference, value and reward adapters) against ``separate`` (policy,
reference, RM and value model as four modules, i.e. four copies of the base weights). The
figure compared is the peak resident memory (``VmHWM``) after the roles are built and the steps
have run, minus the resident memory after the imports (what the Python runtime, torch and
transformers take whatever the layout); the raw peaks are reported too.

A third run of the shared layout generates from a copy of the base with the policy adapter merged
in (``merge_for_generation``); its generation phase is compared with the unmerged one. The full
run measures the memory of both layouts on SmolLM2-135M-Instruct too, without and with
``gradient_checkpointing`` (the learning passes recompute the decoder layers' activations).

The model is :func:`salmon.bench.models.bench_model` (random weights); the RM is a LoRA adapter
with a seeded scalar head on the same base, untrained (speed does not depend on what it learned).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from salmon.bench.common import BenchResult, Comparison

PHASES = ("generation", "scoring", "reference_value", "learning", "other")

QUICK_SIZES: dict[str, Any] = {"prompts": 48, "rollout_batch_size": 8, "step_batch_size": 4,
                               "forward_batch_size": 8, "response_len": 24, "steps": 3, "lora_r": 8}
FULL_SIZES: dict[str, Any] = {"prompts": 64, "rollout_batch_size": 8, "step_batch_size": 4,
                              "forward_batch_size": 8, "response_len": 48, "steps": 3, "lora_r": 16}


# ------------------------------------------------------------------------------ set-up


def build_lora_rm(model: str, out: Path, lora_r: int = 8) -> str:
    """An untrained LoRA reward model on ``model`` (non-zero adapter, seeded head), as train_rm saves one."""
    import torch
    from peft import LoraConfig, get_peft_model

    from salmon.modeling import load_backbone, load_tokenizer
    from salmon.reward.model import RM_FORMAT, RMMeta, build_reward_model, save_reward_model

    if (out / "rm.json").is_file():
        return str(out)
    body = load_backbone(model, device=torch.device("cpu"))
    body = get_peft_model(body, LoraConfig(r=lora_r, lora_alpha=2 * lora_r, target_modules="all-linear"))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in body.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    rm = build_reward_model(body, seed=5)
    meta = RMMeta(format=RM_FORMAT, base_model=model, finetune="lora", model_max_length=512, query_len=64,
                  response_len=128)
    save_reward_model(rm, load_tokenizer(model), meta, out)
    return str(out)


def setup(work: Path, quick: bool) -> dict[str, Any]:
    """Model, RM and prompts in ``work``; returns the PPO config values shared by both layouts."""
    from salmon.bench.models import bench_model
    from salmon.core.io import write_jsonl
    from salmon.nano.world import make_prompts

    sizes = QUICK_SIZES if quick else FULL_SIZES
    work.mkdir(parents=True, exist_ok=True)
    model = bench_model(work, quick)
    rm = build_lora_rm(model, work / ("rm-quick" if quick else "rm-full"), lora_r=sizes["lora_r"])
    prompts = work / "prompts.jsonl"
    write_jsonl(prompts, make_prompts(sizes["prompts"], seed=7, heldout_fraction=0.0))
    return {"prompts": str(prompts), "policy_model": model, "reward_model": rm,
            "rollout_batch_size": sizes["rollout_batch_size"], "step_batch_size": sizes["step_batch_size"],
            "forward_batch_size": sizes["forward_batch_size"], "response_len": sizes["response_len"],
            "total_steps": sizes["steps"], "lora_r": sizes["lora_r"], "lora_alpha": 2 * sizes["lora_r"],
            "ppo_epochs": 1, "save_every": 10_000, "device": "cpu", "prompt_splits": None}


# ------------------------------------------------------------------------------ instrumentation


class _Clock:
    """Phase boundaries of every PPO step, filled in by the wrappers below."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []
        self.current: dict[str, float] | None = None
        self.start = 0.0
        self.learn_start: float | None = None

    def begin(self) -> None:
        self.start = time.perf_counter()
        self.learn_start = None
        self.current = {p: 0.0 for p in PHASES}

    def add(self, phase: str, seconds: float) -> None:
        if self.current is not None:
            self.current[phase] += seconds

    def end(self) -> None:
        if self.current is None:
            return
        now = time.perf_counter()
        if self.learn_start is not None:
            self.current["learning"] = now - self.learn_start
        total = now - self.start
        self.current["step"] = total
        self.current["other"] = total - sum(self.current[p] for p in PHASES if p != "other")
        self.steps.append(self.current)
        self.current = None


class _TimedRoles:
    """The stage's roles, with the passes timed into the clock's phases."""

    def __init__(self, roles: Any, clock: _Clock) -> None:
        self._roles = roles
        self._clock = clock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._roles, name)

    def _timed_pass(self, fn: Any, *args: Any) -> Any:
        import torch

        if torch.is_grad_enabled():  # learning: timed as a whole from here to the step's end
            if self._clock.learn_start is None:
                self._clock.learn_start = time.perf_counter()
            return fn(*args)
        t0 = time.perf_counter()
        out = fn(*args)
        self._clock.add("reference_value", time.perf_counter() - t0)
        return out

    def policy_logprobs(self, batch: Any, temperature: float) -> Any:
        return self._timed_pass(self._roles.policy_logprobs, batch, temperature)

    def reference_logprobs(self, batch: Any, temperature: float) -> Any:
        return self._timed_pass(self._roles.reference_logprobs, batch, temperature)

    def values(self, batch: Any) -> Any:
        return self._timed_pass(self._roles.values, batch)

    def score(self, rows: list[list[int]], pad_id: int, batch_size: int) -> list[float]:
        t0 = time.perf_counter()
        out: list[float] = self._roles.score(rows, pad_id, batch_size)
        self._clock.add("scoring", time.perf_counter() - t0)
        return out

    @property
    def sampler(self) -> Any:
        """The roles' generation model (its refresh, for a merged copy, counted as generation),
        with its ``generate`` calls timed."""
        t0 = time.perf_counter()
        model = self._roles.sampler
        self._clock.add("generation", time.perf_counter() - t0)
        return _TimedGenerator(model, self._clock)


class _TimedGenerator:
    """A generation model whose ``generate`` calls are timed as the step's generation."""

    def __init__(self, model: Any, clock: _Clock) -> None:
        self._model = model
        self._clock = clock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = self._model.generate(*args, **kwargs)
        self._clock.add("generation", time.perf_counter() - t0)
        return out


class _TimedContext:
    """The stage's (single-process) context: a step starts at ``shard`` and ends at its log line."""

    def __init__(self, ctx: Any, clock: _Clock) -> None:
        self._ctx = ctx
        self._clock = clock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)

    def shard(self, items: Any, what: str = "batch") -> Any:
        self._clock.begin()
        return self._ctx.shard(items, what)

    def log(self, stage: str, message: str, every_rank: bool = False) -> None:
        if message.startswith("step "):
            self._clock.end()
        self._ctx.log(stage, message, every_rank)


def _vm_kib(field: str) -> int:
    from salmon.memory import status_kib

    return status_kib(field) or 0


def timed_ppo(values: dict[str, Any]) -> dict[str, Any]:
    """Run the ppo stage with ``values`` in this process, timing every step's phases.

    Returns the per-step phase seconds, the rollouts and generated tokens per step, and the
    resident memory after the imports and at peak (KiB; 0 where /proc is missing)."""
    import peft  # noqa: F401  (the runtime every layout pays for, before the baseline reading)
    import torch  # noqa: F401
    from transformers import LlamaForCausalLM  # noqa: F401

    import salmon.stages.ppo as stage
    from salmon.core.config import PPOConfig, build_config
    from salmon.distributed import session
    from salmon.ppo.roles import build_roles
    from salmon.reward import model as _rm  # noqa: F401

    rss_imports = _vm_kib("VmRSS")
    cfg = build_config(PPOConfig, stage="ppo", preset="nano", values=values)
    clock = _Clock()
    with session("off", cfg.device) as ctx:
        roles = build_roles(cfg, ctx.device)
        rss_roles = _vm_kib("VmRSS")  # the runtime and the roles' weights, before any step
        stage.train(cfg, _TimedContext(ctx, clock), roles=_TimedRoles(roles, clock))
    log = [json.loads(line) for line in (Path(cfg.output_dir) / "train_log.jsonl").read_text().splitlines()]
    per_step = cfg.rollout_batch_size
    tokens = [float(h["response_tokens"]) * per_step for h in log]
    return {"steps": clock.steps, "tokens": tokens, "rollouts": per_step, "rss_imports_kib": rss_imports,
            "rss_roles_kib": rss_roles, "peak_kib": _vm_kib("VmHWM")}


def _child(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    out = timed_ppo(spec["values"])
    Path(spec["result"]).write_text(json.dumps(out))


def run_layout(values: dict[str, Any], layout: str, work: Path, tag: str = "") -> dict[str, Any]:
    """:func:`timed_ppo` for one role layout in a fresh subprocess (so its peak memory is its own);
    ``tag`` names the run's files when one layout runs more than once in ``work``."""
    import salmon.ppo.rollout  # noqa: F401  (the child imports these too: same baseline both sides)

    work.mkdir(parents=True, exist_ok=True)
    name = layout + tag
    spec = {"values": {**values, "role_layout": layout, "output_dir": str(work / f"out-{name}")},
            "result": str(work / f"result-{name}.json")}
    spec_path = work / f"spec-{name}.json"
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, "-c", "import sys; from salmon.bench.ppo import _child; "
                           "_child(sys.argv[1])", str(spec_path)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ppo bench child ({layout}) failed: {proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(Path(spec["result"]).read_text())
    return result


def phase_medians(result: dict[str, Any]) -> dict[str, float]:
    """Median seconds of each phase and of the step over the steps after the first (warm-up)."""
    steps = result["steps"][1:] or result["steps"]
    tokens = result["tokens"][1:] or result["tokens"]
    med = {p: statistics.median(s[p] for s in steps) for p in (*PHASES, "step")}
    med["tokens_per_step"] = statistics.median(tokens)
    med["tokens_per_s"] = statistics.median(t / s["step"] for t, s in zip(tokens, steps, strict=True))
    return med


def real_scale_values(work: Path) -> dict[str, Any]:
    """PPO config values on SmolLM2-135M-Instruct (``chat_template``) with a LoRA RM on it, sized
    for a memory measurement (2 steps of 4 rollouts of up to 32 tokens)."""
    from salmon.base_models import prepare
    from salmon.core.io import write_jsonl
    from salmon.nano.world import make_prompts

    model = str(prepare("smollm2"))
    rm = build_lora_rm(model, work / "rm-smollm2", lora_r=8)
    prompts = work / "prompts-smollm2.jsonl"
    write_jsonl(prompts, make_prompts(16, seed=7, heldout_fraction=0.0))
    return {"prompts": str(prompts), "policy_model": model, "reward_model": rm, "prompt_format": "chat_template",
            "rollout_batch_size": 4, "step_batch_size": 4, "forward_batch_size": 4, "micro_batch_size": 4,
            "response_len": 32, "query_len": 96, "rm_max_length": 512, "total_steps": 2, "lora_r": 8,
            "lora_alpha": 16, "ppo_epochs": 1, "save_every": 10_000, "device": "cpu", "prompt_splits": None}


def run(quick: bool, work: Path) -> BenchResult:
    from salmon.bench.models import parameter_count

    values = setup(work, quick)
    shared = run_layout(values, "shared", work)
    separate = run_layout(values, "separate", work)
    sh, sep = phase_medians(shared), phase_medians(separate)
    mib = 1 / 1024
    sh_net = (shared["peak_kib"] - shared["rss_imports_kib"]) * mib
    sep_net = (separate["peak_kib"] - separate["rss_imports_kib"]) * mib
    result = BenchResult(name="ppo", baseline="role_layout separate (four model copies)")
    result.setup = {"parameters": parameter_count(values["policy_model"]),
                    **{k: values[k] for k in ("rollout_batch_size", "step_batch_size", "forward_batch_size",
                                              "response_len", "total_steps", "lora_r", "ppo_epochs")},
                    "timed_steps": max(1, len(shared["steps"]) - 1), "rm": "LoRA adapter + scalar head, untrained",
                    "policy": "new LoRA adapter (no SFT adapter): reference = base with adapters off"}
    result.comparisons = [
        Comparison("peak memory above the runtime", "MiB", sep_net, sh_net, better="lower", goal=2.0,
                   note="VmHWM minus RSS after imports; goal: shared <= 0.5x separate"),
        Comparison("peak RSS (whole process)", "MiB", separate["peak_kib"] * mib, shared["peak_kib"] * mib,
                   better="lower"),
        Comparison("PPO step time", "s", sep["step"], sh["step"], better="lower"),
        Comparison("throughput (generated tokens / step time)", "tok/s", sep["tokens_per_s"], sh["tokens_per_s"],
                   better="higher"),
    ]
    for name, med in (("shared", sh), ("separate", sep)):
        for key, value in med.items():
            result.figures[f"{name}.{key}" + ("_s" if key in (*PHASES, "step") else "")] = round(value, 4)
        for p in PHASES:
            result.figures[f"{name}.{p}_share"] = round(med[p] / med["step"], 4) if med["step"] else 0.0
    result.figures["shared.rss_imports_mib"] = round(shared["rss_imports_kib"] * mib, 1)
    result.figures["separate.rss_imports_mib"] = round(separate["rss_imports_kib"] * mib, 1)
    for name, res in (("shared", shared), ("separate", separate)):  # weights vs the step's working set
        if res.get("rss_roles_kib"):
            result.figures[f"{name}.roles_mib"] = round((res["rss_roles_kib"] - res["rss_imports_kib"]) * mib, 1)
            result.figures[f"{name}.step_working_set_mib"] = round((res["peak_kib"] - res["rss_roles_kib"]) * mib, 1)
    merged = phase_medians(run_layout({**values, "merge_for_generation": True}, "shared", work, tag="-merged"))
    result.comparisons.append(Comparison(
        "generation phase, policy adapter unmerged vs merged into a generation copy", "s", sh["generation"],
        merged["generation"], better="lower", note="shared layout; merge_for_generation: true"))
    result.figures["merged.generation_s"] = round(merged["generation"], 4)
    result.figures["merged.step_s"] = round(merged["step"], 4)
    if not quick:  # the memory comparison again where weights, not activations, dominate
        real_values = real_scale_values(work)
        for checkpointing in (False, True):
            real = {layout: run_layout({**real_values, "gradient_checkpointing": checkpointing}, layout,
                                       work / "smollm2", tag=f"-ckpt{int(checkpointing)}")
                    for layout in ("shared", "separate")}
            net = {k: (v["peak_kib"] - v["rss_imports_kib"]) * mib for k, v in real.items()}
            result.comparisons.append(Comparison(
                "peak memory above the runtime, SmolLM2-135M-Instruct"
                + (", gradient_checkpointing on both sides" if checkpointing else ""), "MiB", net["separate"],
                net["shared"], better="lower", goal=2.0, note="2 steps of 4 rollouts x 32 tokens; LoRA RM on the "
                "same base"))
            for layout, res in real.items():
                result.figures[f"smollm2.ckpt{int(checkpointing)}.{layout}.step_s"] = round(
                    phase_medians(res)["step"], 3)
    result.notes = [
        "The step split is measured on the stage's own code (salmon.stages.ppo.train), given timing roles "
        "(the Roles protocol) and a timing context; 'other' is reading turns, RM input encoding, shaping and GAE.",
        "Each layout runs in its own subprocess, back to back; the first step is a warm-up and left out.",
    ]
    return result
