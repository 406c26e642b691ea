"""``salmon bench``: salmon's fast paths measured side by side against the baselines users would
pick, on this machine, with ratios (see docs/benchmarks.md).

Each benchmark is a module with ``run(quick: bool, work: Path) -> BenchResult``. ``quick`` sizes
it for a laptop smoke run (all of them in under ten minutes on 2 CPU cores); without it the
sizes are those of docs/benchmarks.md.
"""

from __future__ import annotations

BENCHES: dict[str, tuple[str, str]] = {
    # name: (module, what it compares)
    "label": ("salmon.bench.label", "prefix-shared judge vs one padded forward per principle and order"),
    "label_real": ("salmon.bench.label_real", "SmolLM2 judging pairs of realistic length: prefix-shared, principles "
                   "grouped by length, vs padded to the longest prompt per forward"),
    "train_rm": ("salmon.bench.train_rm", "reward-model training vs TRL's RewardTrainer"),
    "ppo": ("salmon.bench.ppo", "PPO step split; shared-base adapters vs four model copies (memory)"),
    "hardware": ("salmon.bench.hardware", "achieved FLOP/s of RM training and PPO learning vs matmul peak"),
    "sampling": ("salmon.bench.sampling", "sample with hf vs openai on a vLLM server"),
    "ppo_rollouts": ("salmon.bench.ppo_rollouts", "PPO steps with rollouts in the trainer vs from a vLLM server "
                     "that hot-loads the policy's LoRA adapter"),
    "stopping": ("salmon.bench.stopping", "SmolLM2 rollouts stopping at the end of their turn vs to the token limit"),
    "selfalign": ("salmon.bench.selfalign", "SmolLM2 self-alignment generation from the shared prefix's cache vs "
                  "whole prompts"),
    "pipeline": ("pipelines.bench", "the nano pipeline under kfp.local vs the stage recipes in one process"),
}
