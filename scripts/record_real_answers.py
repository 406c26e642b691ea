"""Record a real chat model's answers to nano-world prompts, for the checkers' real-text tests.

    .venv/bin/python scripts/record_real_answers.py --out tests/data/smollm2_nano_answers.jsonl
    .venv/bin/python scripts/record_real_answers.py --out tests/data/smollm2_nano_answers_seed1.jsonl \
        --per-type 32 --seed 1

Makes nano prompts (``salmon.nano.world.make_prompts``, seed ``--prompt-seed``, the three types
in equal shares), keeps the first ``--per-type`` of each type (general, reasoning, red_teaming),
and has the model answer each once in its chat template: one sampled answer per prompt
(temperature 0.7, top-p 1.0, ``--max-new-tokens`` new tokens, torch seeded with ``--seed``),
generated in batches of ``--batch-size`` as the ``sample`` stage's hf backend does
(:class:`salmon.turns.PolicyTurns`, :func:`salmon.turns.generate_ids`). Writes one JSON object
per line: the prompt's fields, the response (special tokens removed, stripped) and whether the
model ended its turn at eos. On two busy CPU cores the first command takes about a minute.

The hand labels of the fixtures (``human_*`` fields, see ``tests/test_checkers_real_text.py``)
are not written here: a reader adds them, and a rerun keeps those of responses whose text is
unchanged.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

LABEL_FIELDS = ("human_refuses", "human_list", "human_praise", "human_correct", "human_note")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSONL to write")
    parser.add_argument("--model", default="smollm2", help="packaged model name or HF folder (default smollm2)")
    parser.add_argument("--per-type", type=int, default=16, help="prompts of each type (default 16)")
    parser.add_argument("--prompt-seed", type=int, default=5, help="seed of the nano prompts (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="torch seed of the sampling (default 0)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="new tokens per answer (default 128)")
    parser.add_argument("--batch-size", type=int, default=48, help="prompts per generate call (default 48)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu: the fixtures' samples)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a busy machine more threads spin and wait)")
    args = parser.parse_args()

    from salmon.stages.common import fixed_threading

    fixed_threading()  # before torch loads
    import torch

    from salmon.base_models import resolve_model_ref
    from salmon.modeling import generation_end_ids, load_causal_lm, load_tokenizer, resolve_device
    from salmon.nano.world import make_prompts
    from salmon.turns import PolicyTurns, generate_ids

    torch.set_num_threads(args.threads)
    model_dir = resolve_model_ref(args.model)
    chosen: dict[str, list[Any]] = {"general": [], "reasoning": [], "red_teaming": []}
    for p in make_prompts(50 * args.per_type, args.prompt_seed, heldout_fraction=0.25, mix=(1.0, 1.0, 1.0)):
        if len(chosen[p.prompt_type]) < args.per_type:
            chosen[p.prompt_type].append(p)
    prompts = [p for kind in chosen.values() for p in kind]

    device = resolve_device(args.device)
    model = load_causal_lm(model_dir, device=device)
    turns = PolicyTurns(load_tokenizer(model_dir), "chat_template", end_ids=generation_end_ids(model_dir))
    queries = [turns.query_ids(p.full_instruction()) for p in prompts]
    torch.manual_seed(args.seed)
    t0 = time.monotonic()
    raw = generate_ids(model, turns.tokenizer, queries, temperature=0.7, top_p=1.0,
                       max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, end_ids=turns.end_ids)
    print(f"generated {len(raw)} answers in {time.monotonic() - t0:.0f} s", file=sys.stderr)

    out = Path(args.out)
    old: dict[tuple[str, str], dict[str, Any]] = {}
    if out.is_file():
        for line in out.read_text(encoding="utf-8").splitlines():
            if line.strip():
                labelled = json.loads(line)
                old[(labelled["prompt_id"], labelled["response"])] = labelled
    rows = []
    for p, ids in zip(prompts, raw, strict=True):
        text, _, ended = turns.text_of(ids, [])
        response = text.strip()
        row: dict[str, Any] = {"prompt_id": p.prompt_id, "instruction": p.instruction, "prompt_type": p.prompt_type,
                               "split": p.split, "meta": p.meta, "response": response, "ended_at_eos": ended}
        kept = old.get((p.prompt_id, response), {})
        row.update({k: kept[k] for k in LABEL_FIELDS if k in kept})
        rows.append(row)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} answers to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
