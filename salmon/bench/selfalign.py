"""``salmon bench selfalign``: self-alignment generation on a real model with the shared
rules-and-exemplars prefix encoded once, against encoding every prompt whole.

The model is SmolLM2-135M-Instruct (``salmon base prepare smollm2``) on the CPU, in float32. The
prompts are nano-world requests in the ``selfalign`` stage's default in-context prompt (17 rules,
the exemplars, ``prompt_format: dromedary``), built by :func:`salmon.stages.selfalign.self_align_query`.
Both sides run :func:`salmon.turns.generate_ids` as the stage does (its stop strings and end ids,
``batch`` prompts per ``generate`` call, ``new_tokens`` new ids at most), greedily so that their
outputs can be compared id for id:

- baseline: every prompt encoded whole, left-padded per batch (``reuse_prefix: false``);
- salmon: the tokens all prompts share encoded once (that time counted), each batch generating
  from a copy of their cache (``reuse_prefix: true``).

Seconds are the median of the repeats after a warm-up, the two sides timed in alternation.
``prompt tokens encoded`` counts the slots the prompts fill in the model's first forward of
each batch (padding included), plus the shared prefix once.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from salmon.bench.common import BenchResult, Comparison

QUICK_SIZES = {"prompts": 8, "batch": 4, "new_tokens": 64, "repeats": 1}
FULL_SIZES = {"prompts": 16, "batch": 4, "new_tokens": 128, "repeats": 3}


def prompt_slots(queries: list[list[int]], batch: int, shared: int) -> int:
    """Ids the prompts put through the model: per batch its rows times its widest row (without
    the first ``shared`` ids of each), plus ``shared`` once when it is reused.

    >>> prompt_slots([[1, 2, 3], [1, 2, 3, 4, 5], [1, 2]], 2, 0)
    12
    >>> prompt_slots([[1, 2, 3], [1, 2, 3, 4, 5], [1, 2]], 2, 1)
    10
    """
    total = shared
    for start in range(0, len(queries), batch):
        chunk = queries[start:start + batch]
        total += len(chunk) * (max(len(q) for q in chunk) - shared)
    return total


def run(quick: bool, work: Path) -> BenchResult:
    import torch

    from salmon.base_models import prepare
    from salmon.core.config import SelfAlignConfig
    from salmon.core.principles import load_principle_set
    from salmon.core.selfalign import load_exemplars
    from salmon.modeling import generation_end_ids, load_causal_lm, load_tokenizer
    from salmon.nano.world import make_prompts
    from salmon.stages.selfalign import exemplar_path, self_align_query, stop_strings
    from salmon.turns import common_prefix_length, encode_prefix, generate_ids, prefix_reuse_unsupported

    sizes = QUICK_SIZES if quick else FULL_SIZES
    path = str(prepare("smollm2"))
    tok = load_tokenizer(path)
    model = load_causal_lm(path, device=torch.device("cpu"))
    cfg = SelfAlignConfig(prompts="-", output="-", model=path)
    ex = load_exemplars(exemplar_path(cfg))
    rules = load_principle_set(cfg.rules)
    prompts = make_prompts(sizes["prompts"], seed=11)
    queries = [self_align_query(tok, cfg, rules, ex, p.full_instruction()) for p in prompts]
    shared = common_prefix_length(queries)
    longest = max(len(q) for q in queries) + sizes["new_tokens"]
    why = prefix_reuse_unsupported(model, longest)
    if why:
        raise RuntimeError(f"SmolLM2's cache cannot be shared: {why}")
    stops, end_ids = stop_strings(ex), generation_end_ids(path)

    def generate(reuse: bool, batch_queries: list[list[int]], new_tokens: int) -> tuple[list[list[int]], float]:
        t0 = time.perf_counter()
        prefix = encode_prefix(model, batch_queries[0][:shared]) if reuse else None
        out = generate_ids(model, tok, batch_queries, temperature=0.0, top_p=1.0, max_new_tokens=new_tokens,
                           batch_size=sizes["batch"], stop_strings=stops, end_ids=end_ids, prefix=prefix)
        return out, time.perf_counter() - t0

    for reuse in (False, True):  # warm-up
        generate(reuse, queries[: sizes["batch"]], 4)
    t0 = time.perf_counter()
    encode_prefix(model, queries[0][:shared])
    prefix_s = time.perf_counter() - t0
    ids: dict[bool, list[list[int]]] = {}
    seconds: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(sizes["repeats"]):
        for reuse in (False, True):
            out, s = generate(reuse, queries, sizes["new_tokens"])
            ids.setdefault(reuse, out)
            seconds[reuse].append(s)
    same = sum(a == b for a, b in zip(ids[False], ids[True], strict=True))
    n = len(queries)
    base_s, fast_s = statistics.median(seconds[False]), statistics.median(seconds[True])
    result = BenchResult(name="selfalign", baseline="every self-alignment prompt encoded whole")
    result.setup = {"model": "SmolLM2-135M-Instruct", **sizes, "temperature": 0.0, "dtype": "float32",
                    "prompt_format": "dromedary"}
    result.comparisons = [
        Comparison("seconds per prompt", "s", base_s / n, fast_s / n, better="lower", goal=3.0),
        Comparison("prompt tokens encoded", "tokens", prompt_slots(queries, sizes["batch"], 0),
                   prompt_slots(queries, sizes["batch"], shared), better="lower", goal=5.0),
    ]
    result.figures = {
        "baseline_seconds": base_s,
        "salmon_seconds": fast_s,
        "shared_prefix_tokens": shared,
        "prompt_tokens_mean": sum(len(q) for q in queries) / n,
        "prefix_encode_seconds": prefix_s,
        "greedy_outputs_identical_share": same / n,
        "new_tokens_mean": sum(_generated(row, tok.pad_token_id) for row in ids[True]) / n,
    }
    result.notes.append(f"{same} of {n} greedy outputs identical id for id")
    return result


def _generated(row: Any, pad: int) -> int:
    """New ids before the trailing padding (a sequence that stopped is padded to the batch's end)."""
    n = len(row)
    while n and row[n - 1] == pad:
        n -= 1
    return n
