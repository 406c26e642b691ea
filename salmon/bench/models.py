"""The models the benchmarks run on: the nano architecture and tokenizer, scaled up, with random
weights (speed does not depend on what the weights know).

- ``quick``: the nano size (0.9 M parameters), for smoke runs;
- full: hidden 512, 8 layers, 8 heads (head dim 64), intermediate 1536, vocab 1024: about
  26 M parameters, big enough that matmuls, not Python, dominate a step on CPU.
"""

from __future__ import annotations

from pathlib import Path

QUICK = {"hidden_size": 128, "intermediate_size": 256, "num_layers": 4, "num_heads": 2}
FULL = {"hidden_size": 512, "intermediate_size": 1536, "num_layers": 8, "num_heads": 8}


def bench_model(work: Path, quick: bool) -> str:
    """Build (once per ``work`` folder) and return the path of the benchmark model folder."""
    from salmon.nano.model import NanoModelSpec, build_nano_model

    size = QUICK if quick else FULL
    out = Path(work) / ("model-quick" if quick else "model-full")
    if not (out / "config.json").is_file():
        build_nano_model(out, NanoModelSpec(pretrain_steps=0, **size), log=lambda _: None)
    return str(out)


def parameter_count(path: str) -> int:
    import json

    cfg = json.loads((Path(path) / "config.json").read_text())
    h, i, layers, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    per_layer = 4 * h * h + 3 * h * i + 2 * h
    embed = v * h * (1 if cfg.get("tie_word_embeddings") else 2)
    return layers * per_layer + embed + h
