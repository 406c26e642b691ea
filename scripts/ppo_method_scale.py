"""One PPO step at the method's batch sizes (576 rollouts, 288 per optimizer step) on the nano
model, in one process each: micro-batched (the method's 6 per forward and per backward) and in
one piece (every pass over the whole batch at once, as before micro-batching). Reports each
run's wall time, the step's peak memory above its start and the process's peak resident set.

    .venv/bin/python scripts/ppo_method_scale.py [WORK_DIR]   # default out/ppo-method-scale

It builds what it needs in WORK_DIR: the nano model, 1,600 nano prompts and a nano RM (the nano
train_rm preset on rule-judged pairs). Figures: docs/results.md, "PPO at the method's batch sizes".
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path


def build(work: Path) -> dict[str, str]:
    from salmon.core.aggregate import AggregateParams, aggregate, index_judgements
    from salmon.core.io import write_jsonl
    from salmon.core.principles import load_principle_set
    from salmon.judge.rules import judge_pairs_rules
    from salmon.nano.model import build_nano_model
    from salmon.nano.world import make_pairs, make_prompts

    model = work / "nano"
    if not model.is_dir():
        build_nano_model(model, log=lambda _: None)
    prompts = work / "prompts.jsonl"
    if not prompts.is_file():
        write_jsonl(prompts, make_prompts(1600, seed=1))
    rm = work / "rm"
    if not (rm / "model" / "rm.json").is_file():
        pset = load_principle_set("nano")
        pairs = make_pairs(make_prompts(200, seed=2), seed=3)
        instances, _ = aggregate(pairs, index_judgements(judge_pairs_rules(pairs, pset.ids())), pset,
                                 AggregateParams(dimensions=tuple(pset.ids()), passes=1))
        write_jsonl(work / "instances.jsonl", instances)
        subprocess.run([sys.executable, "-m", "salmon.stages.train_rm", "--preset", "nano",
                        f"instances={work / 'instances.jsonl'}", f"base_model={model}", f"output_dir={rm}",
                        "device=cpu"], check=True, stdout=subprocess.DEVNULL)
    return {"prompts": str(prompts), "model": str(model), "rm": str(rm / "model")}


# the stage's own entry point, reporting the process's resident-set peak at exit (Linux: since
# the step began, because the stage resets the mark at the start of each step)
_WRAP = ("import atexit, json, resource, runpy, sys; "
         "atexit.register(lambda: print(json.dumps({'maxrss_kib': resource.getrusage(resource.RUSAGE_SELF)"
         ".ru_maxrss}), file=sys.stderr)); sys.argv[0] = 'ppo'; "
         "runpy.run_module('salmon.stages.ppo', run_name='__main__')")


def one_step(paths: dict[str, str], out: Path, forward: int, micro: int) -> dict[str, object]:
    """One PPO step in a fresh process: wall seconds, the step's peak above its start and the
    process's resident set at that peak (MiB)."""
    cmd = [sys.executable, "-c", _WRAP, "--preset", "nano", f"prompts={paths['prompts']}",
           f"policy_model={paths['model']}", f"reward_model={paths['rm']}", f"output_dir={out}",
           "rollout_batch_size=576", "step_batch_size=288", f"forward_batch_size={forward}",
           f"micro_batch_size={micro}", "max_steps=1", "device=cpu"]
    if out.exists():  # a fresh run: an existing folder would resume from its checkpoint
        shutil.rmtree(out)
    t0 = time.monotonic()
    proc = subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.monotonic() - t0
    rss = json.loads(proc.stderr.strip().splitlines()[-1])["maxrss_kib"]
    row = json.loads((out / "resources.jsonl").read_text().splitlines()[0])
    return {"seconds": round(seconds, 1), "step_peak_mib": row["peak_memory_mib"],
            "resident_at_peak_mib": round(rss / 1024, 1), "phases": row["seconds"]}


def main() -> int:
    work = Path(sys.argv[1] if len(sys.argv) > 1 else "out/ppo-method-scale")
    work.mkdir(parents=True, exist_ok=True)
    paths = build(work)
    runs = {}
    runs["one piece (576 / 288 per pass)"] = one_step(paths, work / "ppo-whole", 576, 288)
    runs["micro-batched (6 / 6 per pass)"] = one_step(paths, work / "ppo-micro", 6, 6)
    whole, micro = runs.values()
    report = {"runs": runs,
              "step_peak_ratio_whole_over_micro": round(whole["step_peak_mib"] / micro["step_peak_mib"], 2),
              "resident_ratio_whole_over_micro":
                  round(whole["resident_at_peak_mib"] / micro["resident_at_peak_mib"], 2),
              "seconds_ratio_micro_over_whole": round(micro["seconds"] / whole["seconds"], 2)}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
