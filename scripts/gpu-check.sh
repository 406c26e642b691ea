#!/usr/bin/env bash
# The GPU check: the `gpu` test tier (bf16 and QLoRA SFT on SmolLM2), the real world on the GPU
# at a larger size, the MFU of RM training in bf16, and, where a CUDA build of vLLM is at
# $SALMON_VLLM_PYTHON, PPO rollouts from a vLLM server with the LoRA adapter hot-loaded against
# rollouts in the trainer; about 10 minutes on one H100. Figures go to one JSON file:
#
#   bash scripts/gpu-check.sh [OUT_DIR]        # default $OUT or out/gpu-check
#
# Uses .venv when present (make env), else the python3 on PATH with the project importable.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-out/gpu-check}}"
mkdir -p "$out"
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$out/gpu.txt" 2>&1 || true
start=$(date +%s)

# 1. the gpu tier (about 2 minutes)
timeout 240 "$py" -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider 2>&1 | tee "$out/gpu-tier.log"
tier=${PIPESTATUS[0]}

# 2. the real world at a larger size on the GPU (about 5 minutes): 1,000 prompts, bf16 judge
#    audit, the small preset's stages on cuda, the RM's LoRA on every layer (the method's; the
#    preset's last-8-layers is a CPU economy)
timeout 330 "$py" -m salmon demo --base smollm2 --out "$out/demo" --no-cache nano_prompts=1000 ppo_steps=16 \
    eval_limit=100 'stage_overrides={"train_rm": {"lora_layers": null}}' 2>&1 | tee "$out/demo.log" | grep -E '^\s*\[|SALMON pipeline|^[a-z_/:]+ +[-0-9.]+$' || true
demo=${PIPESTATUS[0]}

# 3. hardware efficiency (about 1 minute): RM training and PPO learning steps on SmolLM2 in bf16 as a
#    fraction of the card's measured bf16 matmul peak (goal: RM training MFU >= 40 %)
timeout 150 "$py" -m salmon bench hardware --json "$out/hardware.json" 2>&1 | tee "$out/hardware.log"
hardware=${PIPESTATUS[0]}

# 4. PPO rollouts: vLLM on the GPU with the policy adapter loaded every step vs HF generate in the
#    trainer (goals: >= 3x the rollout phase, >= 1.5x the step). Needs a CUDA vLLM build.
rollouts=skipped
if [ -n "${SALMON_VLLM_PYTHON:-}" ] && [ -x "$SALMON_VLLM_PYTHON" ]; then
    timeout 240 "$py" -m salmon bench ppo_rollouts --json "$out/ppo_rollouts.json" 2>&1 | tee "$out/ppo_rollouts.log"
    rollouts=${PIPESTATUS[0]}
else
    echo "ppo_rollouts: skipped (no CUDA vLLM build at \$SALMON_VLLM_PYTHON)" | tee "$out/ppo_rollouts.log"
fi

"$py" - "$out" "$tier" "$demo" "$start" "$rollouts" "$hardware" <<'PY'
import json, sys, time
from pathlib import Path
out, tier, demo, start = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rollouts, hardware = sys.argv[5], sys.argv[6]
summary = out / "demo" / "summary.json"
figures = {"gpu": (out / "gpu.txt").read_text().strip(), "gpu_tier_exit": tier, "demo_exit": demo,
           "seconds": round(time.time() - start)}
if summary.is_file():
    s = json.loads(summary.read_text())
    figures.update(headline=s.get("headline"), pipeline_seconds=s.get("seconds"),
                   stage_seconds={k: v["metrics"].get("seconds") for k, v in s.get("stages", {}).items()})
figures["hardware_exit"] = hardware
if (out / "hardware.json").is_file():
    figures["hardware"] = json.loads((out / "hardware.json").read_text())["results"]
figures["ppo_rollouts_exit"] = rollouts
if (out / "ppo_rollouts.json").is_file():
    figures["ppo_rollouts"] = json.loads((out / "ppo_rollouts.json").read_text())["results"]
(out / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
print(json.dumps(figures, indent=2))
PY
[ "$tier" = 0 ] && [ "$demo" = 0 ]
