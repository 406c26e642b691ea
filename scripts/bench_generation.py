"""Tokens per second of sampled generation by a packaged model, per dtype and batch size.

    .venv/bin/python scripts/bench_generation.py                       # SmolLM2, 64 new tokens
    .venv/bin/python scripts/bench_generation.py --batch-sizes 16,32 --dtypes float32,bfloat16

Loads the model (``salmon base prepare`` name or an HF folder) once per dtype and, for each batch
size, samples up to ``--new-tokens`` tokens (temperature 0.7) for that many chat-template
prompts through :func:`salmon.turns.generate_ids`, the path ``sample`` takes. Prints one JSON line
per (dtype, batch size) with the seconds and the token positions generated per second (a row that
ends at eos early is padded to its batch's length, which costs the same), then each one's ratio to
the first measured (the first dtype at the first batch size). Run it on a quiet
machine: another process on the same cores changes the figures.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="packaged model name or HF folder")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated dtypes")
    parser.add_argument("--batch-sizes", default="16,32,64", help="comma-separated batch sizes")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens generated per prompt")
    args = parser.parse_args()

    import torch

    from salmon.base_models import resolve_model_ref
    from salmon.modeling import load_causal_lm, load_tokenizer
    from salmon.turns import PolicyTurns, generate_ids

    path = resolve_model_ref(args.model)
    tok = load_tokenizer(path)
    turns = PolicyTurns(tok, "chat_template")
    rates: dict[tuple[str, int], float] = {}
    for dtype in args.dtypes.split(","):
        model = load_causal_lm(path, device=torch.device("cpu"), dtype=dtype)
        for bs in (int(b) for b in args.batch_sizes.split(",")):
            queries = [turns.query_ids(f"Tell me about topic number {i} in detail.") for i in range(bs)]
            torch.manual_seed(0)
            t0 = time.monotonic()
            out = generate_ids(model, tok, queries, temperature=0.7, top_p=1.0, max_new_tokens=args.new_tokens,
                               batch_size=bs)  # no end ids: every row runs to max_new_tokens
            seconds = time.monotonic() - t0
            tokens = sum(len(o) for o in out)
            rates[dtype, bs] = tokens / seconds
            print(json.dumps({"model": args.model, "dtype": dtype, "batch_size": bs, "tokens": tokens,
                              "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1)}), flush=True)
    base = next(iter(rates))  # the first measured: first dtype, first batch size
    for key, rate in rates.items():
        print(json.dumps({"dtype": key[0], "batch_size": key[1], "x_vs": f"{base[0]} at batch {base[1]}",
                          "ratio": round(rate / rates[base], 2)}))


if __name__ == "__main__":
    main()
