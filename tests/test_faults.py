"""Faults survived: ``label``, ``sft``, ``train_rm`` and ``ppo`` are killed with SIGKILL at random
points and rerun with the same command; each rerun resumes from what the killed run finished
(the newest checkpoint, the pairs already judged), and the last one ends exactly where an
uninterrupted run ends: the same bytes of weights and judgements, the same training log.

The kill points are drawn from ``SALMON_FAULT_SEED`` (random when unset; every assertion names
the seed, so a failure can be replayed with ``SALMON_FAULT_SEED=<seed> pytest tests/test_faults.py``).
A kill lands at a random progress point (the k-th checkpoint or judged batch) plus a random
fraction of the time the stage took for its last unit of work, so it falls anywhere: in the
forward pass, the optimizer step, or in the middle of writing the next checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from salmon.core.digest import digest_file
from salmon.core.io import read_jsonl, write_jsonl
from salmon.core.records import Judgement

pytest.importorskip("torch")

SEED = int(os.environ.get("SALMON_FAULT_SEED") or random.SystemRandom().randrange(1 << 31))
KILLS = 2
"""Kills per stage before the final rerun: the second kill interrupts a run that had resumed."""


def _where(stage: str) -> str:
    return f"(replay with SALMON_FAULT_SEED={SEED}; stage {stage})"


def _command(stage: str, tmp: Path, values: dict[str, Any], preset: str | None = None) -> list[str]:
    """``python -m salmon.stages.<stage> --config <file> --result <file>``: the same command each time."""
    config = tmp / f"{stage}.yaml"
    config.write_text(yaml.safe_dump(values))
    argv = [sys.executable, "-m", f"salmon.stages.{stage}", "--config", str(config),
            "--result", str(tmp / f"{stage}.result.json")]
    return argv + (["--preset", preset] if preset else [])


def _kill_at_random_point(argv: list[str], progress: Callable[[], int], target: int,
                          rng: random.Random, log: Path, where: str, timeout: float = 300) -> int:
    """Start ``argv``, wait until ``progress() >= target``, wait a random fraction of the last
    unit of work, then SIGKILL. Returns the progress on disk after the kill."""
    with open(log, "ab") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
        try:
            # the time one unit of work takes, from two progress changes seen by this loop (the
            # first change also includes start-up: it does not count)
            seen, changed, interval = progress(), None, 0.2
            deadline = time.monotonic() + timeout
            while seen < target and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
                now_seen = progress()
                if now_seen != seen:
                    now = time.monotonic()
                    if changed is not None:
                        interval = (now - changed) / (now_seen - seen)
                    changed, seen = now, now_seen
            assert seen >= target and proc.poll() is None, (
                f"the run ended or stalled before progress {target} (at {seen}, rc {proc.poll()}) {where}")
            # a random moment inside the next unit of work (cut short if that unit completes)
            until = time.monotonic() + rng.random() * interval
            while time.monotonic() < until and progress() == seen and proc.poll() is None:
                time.sleep(0.005)
            assert proc.poll() is None, f"the run finished before the kill; give it more work {where}"
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
    return progress()


def _rerun(argv: list[str], log: Path) -> str:
    """Run to the end; returns the run's stderr."""
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600)
    with open(log, "a") as f:
        f.write(done.stderr)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def _kill_twice_then_finish(stage: str, argv: list[str], progress: Callable[[], int], last_target: int,
                            resumed_at: Callable[[str], int], tmp: Path, rng: random.Random,
                            outputs: list[Path]) -> list[int]:
    """Kill ``KILLS`` times at increasing random progress points in ``[1, last_target]``, then run
    to the end. After each kill no final output exists; every run after the first resumes at the
    progress the run before it left on disk. Returns the progress left by each kill."""
    where = _where(stage)
    at: list[int] = []
    lo = 1
    for k in range(KILLS):
        hi = last_target - (KILLS - 1 - k)  # room for the kills still to come
        target = rng.randint(lo, max(lo, hi))
        log = tmp / f"{stage}.run{k}.stderr"
        left = _kill_at_random_point(argv, progress, target, rng, log, where)
        assert left >= target, where
        for out in outputs:
            assert not out.exists(), f"{out} exists after a kill {where}"
        if k:
            resumed = resumed_at(log.read_text())
            assert resumed == at[-1], f"run {k} resumed at {resumed}, not at {at[-1]} {where}"
        at.append(left)
        lo = left + 1
    stderr = _rerun(argv, tmp / f"{stage}.run{KILLS}.stderr")
    resumed = resumed_at(stderr)
    assert resumed == at[-1], f"the last run resumed at {resumed}, not at {at[-1]}: {stderr[-2000:]} {where}"
    return at


def _steps_on_disk(ckpt_dir: Path) -> Callable[[], int]:
    """The step of the newest complete checkpoint (0 when none)."""
    from salmon.reward.train import latest_checkpoint

    def newest() -> int:
        found = latest_checkpoint(ckpt_dir)
        return int(found.name.split("-")[1]) if found is not None else 0
    return newest


def _resumed_step(stderr: str) -> int:
    m = re.search(r"resuming from \S*step-(\d+)", stderr)
    return int(m.group(1)) if m else 0


def _file_digests(folder: Path, names: list[str]) -> dict[str, str]:
    return {n: digest_file(folder / n) for n in names}


def _log_rows(path: Path, drop: tuple[str, ...] = ("seconds",)) -> list[dict[str, Any]]:
    return [{k: v for k, v in json.loads(x).items() if k not in drop} for x in path.read_text().splitlines()]


def _metrics(tmp: Path, stage: str, drop: tuple[str, ...] = ("seconds",)) -> dict[str, Any]:
    metrics = json.loads((tmp / f"{stage}.result.json").read_text())["metrics"]
    return {k: v for k, v in metrics.items() if k not in drop}


def _uninterrupted(stage: str, values: dict[str, Any], tmp: Path, preset: str | None = None) -> None:
    """The reference run: the same command in a fresh process, as the killed runs are (a process
    of its own, not this one, whose threading earlier tests may have changed)."""
    tmp.mkdir(parents=True, exist_ok=True)
    _rerun(_command(stage, tmp, values, preset), tmp / f"{stage}.reference.stderr")


def test_sft_killed_twice_ends_with_the_same_adapter(tmp_path: Path, tiny_model: str) -> None:
    from salmon.core.records import SFTExample
    from salmon.nano.world import make_prompts, make_response

    rng = random.Random(SEED)
    data = tmp_path / "sft.jsonl"
    resp_rng = random.Random(0)
    write_jsonl(data, [SFTExample(example_id=p.prompt_id, instruction=p.instruction, prompt_type=p.prompt_type,
                                  response=make_response(p, resp_rng) + "\n\n### User\n", source="nano")
                       for p in make_prompts(32, seed=2)])

    def values(out: Path) -> dict[str, Any]:
        return dict(data=str(data), base_model=tiny_model, output_dir=str(out), batch_size=8,
                    micro_batch_size=4, epochs=3.0, save_every=1, log_every=1, lora_r=4, learning_rate=3e-3)

    _uninterrupted("sft", values(tmp_path / "full"), tmp_path / "full", preset="nano")
    out = tmp_path / "killed"
    out.mkdir()
    argv = _command("sft", out, values(out), preset="nano")
    steps = _kill_twice_then_finish("sft", argv, _steps_on_disk(out / "checkpoints"), 9, _resumed_step,
                                    out, rng, [out / "adapter"])
    where = f"{_where('sft')}, killed at steps {steps}"
    names = ["adapter_model.safetensors"]
    assert _file_digests(out / "adapter", names) == _file_digests(tmp_path / "full" / "adapter", names), where
    assert _log_rows(out / "train_log.jsonl") == _log_rows(tmp_path / "full" / "train_log.jsonl"), where
    assert _metrics(out, "sft") == _metrics(tmp_path / "full", "sft"), where


def _rm_instances(tmp: Path) -> Path:
    from salmon.core.aggregate import AggregateParams, aggregate, index_judgements
    from salmon.core.principles import load_principle_set
    from salmon.judge.rules import judge_pairs_rules
    from salmon.nano.world import make_pairs, make_prompts

    pset = load_principle_set("nano")
    pairs = make_pairs(make_prompts(24, seed=8), seed=9)
    judged = index_judgements(judge_pairs_rules(pairs, pset.ids()))
    inst, _ = aggregate(pairs, judged, pset, AggregateParams(dimensions=tuple(pset.ids()), passes=1))
    path = tmp / "instances.jsonl"
    write_jsonl(path, inst)
    return path


def test_train_rm_killed_twice_ends_with_the_same_reward_model(tmp_path: Path, tiny_model: str) -> None:
    rng = random.Random(SEED + 1)
    instances = _rm_instances(tmp_path)

    def values(out: Path) -> dict[str, Any]:
        return dict(instances=str(instances), base_model=tiny_model, output_dir=str(out), finetune="lora",
                    lora_r=4, batch_size=4, micro_batch_size=2, save_every=1, log_every=2,
                    learning_rate=1e-3, epochs=1.0, model_max_length=256, query_len=32, response_len=96)

    _uninterrupted("train_rm", values(tmp_path / "full"), tmp_path / "full")
    full_log = _log_rows(tmp_path / "full" / "train_log.jsonl")
    total = full_log[-1]["step"]
    assert total >= 5
    out = tmp_path / "killed"
    out.mkdir()
    argv = _command("train_rm", out, values(out))
    steps = _kill_twice_then_finish("train_rm", argv, _steps_on_disk(out / "checkpoints"), total - 3,
                                    _resumed_step, out, rng, [out / "model"])
    where = f"{_where('train_rm')}, killed at steps {steps}"
    names = ["reward_head.safetensors", "adapter/adapter_model.safetensors"]
    assert _file_digests(out / "model", names) == _file_digests(tmp_path / "full" / "model", names), where
    assert _log_rows(out / "train_log.jsonl") == full_log, where
    assert _metrics(out, "train_rm") == _metrics(tmp_path / "full", "train_rm"), where


def test_ppo_killed_twice_ends_with_the_same_policy(tmp_path: Path, tiny_model: str, tiny_rm: str) -> None:
    from salmon.nano.world import make_prompts

    rng = random.Random(SEED + 2)
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, make_prompts(24, seed=11))

    def values(out: Path) -> dict[str, Any]:
        return dict(prompts=str(prompts), policy_model=tiny_model, reward_model=tiny_rm, output_dir=str(out),
                    role_layout="separate", rl_principles="nano", interventions="interventions",
                    principles_per_rollout=2, system_prompt="### User", rollout_batch_size=4,
                    step_batch_size=2, forward_batch_size=4, total_epochs=1.0, query_len=48, response_len=12,
                    rm_max_length=384, learning_rate=5e-3, warmup_steps=1, lora_r=4, save_every=1, seed=3)

    _uninterrupted("ppo", values(tmp_path / "full"), tmp_path / "full")
    full_log = _log_rows(tmp_path / "full" / "train_log.jsonl")
    total = len(full_log)
    assert total >= 5
    out = tmp_path / "killed"
    out.mkdir()
    argv = _command("ppo", out, values(out))
    steps = _kill_twice_then_finish("ppo", argv, _steps_on_disk(out / "checkpoints"), total - 3,
                                    _resumed_step, out, rng, [out / "policy"])
    where = f"{_where('ppo')}, killed at steps {steps}"
    names = ["adapter_model.safetensors"]
    assert _file_digests(out / "policy", names) == _file_digests(tmp_path / "full" / "policy", names), where
    assert _log_rows(out / "train_log.jsonl") == full_log, where
    assert _metrics(out, "ppo") == _metrics(tmp_path / "full", "ppo"), where
    rollouts = sorted(p.name for p in (tmp_path / "full" / "rollouts").glob("*.jsonl"))
    assert rollouts and sorted(p.name for p in (out / "rollouts").glob("*.jsonl")) == rollouts, where
    for name in rollouts:
        assert (out / "rollouts" / name).read_bytes() == (tmp_path / "full" / "rollouts" / name).read_bytes(), where


def test_label_killed_twice_ends_with_the_same_judgements(tmp_path: Path, tiny_model: str,
                                                          nano_pairs_file: Path) -> None:
    """The hf judge on the tiny model; progress is the pairs whose judgements reached the disk."""
    from salmon.core.principles import load_principle_set

    rng = random.Random(SEED + 3)
    n_principles = len(load_principle_set("nano").principles)

    def values(out: Path) -> dict[str, Any]:
        return dict(pairs=str(nano_pairs_file), output=str(out / "judgements.jsonl"), backend="hf",
                    model=tiny_model, principles="nano", batch_size=1, flush_every=1, progress=False,
                    max_length=512)

    _uninterrupted("label", values(tmp_path / "full"), tmp_path / "full")
    out = tmp_path / "killed"
    out.mkdir()
    partial = out / "judgements.jsonl.partial"

    def pairs_on_disk() -> int:
        if not partial.is_file():
            return 0
        return len(partial.read_bytes().split(b"\n")[:-1]) // n_principles

    def resumed_at(stderr: str) -> int:
        m = re.search(r"(\d+) pairs already judged", stderr)
        return int(m.group(1)) if m else -1

    argv = _command("label", out, values(out))
    at = _kill_twice_then_finish("label", argv, pairs_on_disk, 20, resumed_at, out, rng,
                                 [out / "judgements.jsonl"])
    where = f"{_where('label')}, killed after {at} pairs"
    full = tmp_path / "full" / "judgements.jsonl"
    assert read_jsonl(out / "judgements.jsonl", Judgement) == read_jsonl(full, Judgement), where
    assert digest_file(out / "judgements.jsonl") == digest_file(full), where
    assert _metrics(out, "label", drop=("seconds", "pairs_judged_now", "prefill_tokens",
                                        "prefill_tokens_without_reuse")) == \
        _metrics(tmp_path / "full", "label", drop=("seconds", "pairs_judged_now", "prefill_tokens",
                                                   "prefill_tokens_without_reuse")), where
    assert _metrics(out, "label")["pairs_judged_now"] == 24 - at[-1], where
    assert not partial.exists(), where
