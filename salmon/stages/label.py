"""``label``: principle-driven AI feedback on response pairs (method §2.2).

Every pair is judged under every principle of the set, once with output_1 shown as (a) and
once as (b). The ``hf`` backend reads ``logit(a) - logit(b)`` after "Output (" from a local
causal LM, sharing the KV cache of the instruction and outputs across principles and orders;
the ``rules`` backend scores nano principles with exact checkers.

Resumable: judgements are appended to ``<output>.partial`` as batches finish; a rerun skips
pairs already judged there (or in an earlier ``<output>``). The final ``<output>`` appears
atomically when every pair is done, and the progress file is removed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from salmon.core.config import LabelConfig
from salmon.core.errors import SalmonInputError
from salmon.core.io import iter_jsonl, read_jsonl, record_line, write_jsonl
from salmon.core.principles import Principle, load_principle_set
from salmon.core.progress import Progress
from salmon.core.records import Judgement, ResponsePair
from salmon.stages.common import StageResult, log, stage_main

STAGE = "label"


def _previous(path: Path, pair_ids: set[str], principle_ids: list[str]) -> dict[str, list[Judgement]]:
    """Judgements already on disk, by pair, keeping only pairs with every principle judged."""
    by_pair: dict[str, dict[str, Judgement]] = {}
    if path.is_file():
        for j in iter_jsonl(path, Judgement, allow_truncated_tail=True):
            if j.pair_id in pair_ids:
                by_pair.setdefault(j.pair_id, {})[j.principle_id] = j
    return {pid: [d[p] for p in principle_ids] for pid, d in by_pair.items()
            if all(p in d for p in principle_ids)}


def _make_judge(cfg: LabelConfig):  # type: ignore[no-untyped-def]
    from salmon.judge.hf import HFJudge
    from salmon.modeling import load_causal_lm, load_tokenizer, resolve_device, with_adapter

    if not cfg.model:
        raise SalmonInputError("label config", "backend hf needs model=<HF folder>")
    device = resolve_device(cfg.device)
    return HFJudge(with_adapter(load_causal_lm(cfg.model, device=device, dtype=cfg.dtype), cfg.adapter),
                   load_tokenizer(cfg.model), max_length=cfg.max_length)


def run(cfg: LabelConfig) -> StageResult:
    pairs = read_jsonl(cfg.pairs, ResponsePair)
    if cfg.limit:
        pairs = pairs[: cfg.limit]
    pset = load_principle_set(cfg.principles)
    principles: list[Principle] = (
        [pset.get(i) for i in cfg.principle_ids] if cfg.principle_ids else list(pset.principles))
    ids = [p.id for p in principles]
    if cfg.backend == "rules":
        from salmon.nano.checkers import CHECKERS

        unknown = [i for i in ids if i not in CHECKERS]
        if unknown:
            raise SalmonInputError(f"principle set {pset.name}",
                                   f"the rules judge has no checker for {', '.join(unknown)}",
                                   "use principles=nano with backend=rules, or backend=hf")

    output = Path(cfg.output)
    partial = output.with_name(output.name + ".partial")
    wanted = {p.pair_id for p in pairs}
    done = _previous(output, wanted, ids)
    done.update(_previous(partial, wanted, ids))
    todo = [p for p in pairs if p.pair_id not in done]
    log(STAGE, f"{len(pairs)} pairs x {len(ids)} principles x 2 orders, backend {cfg.backend}; "
               f"{len(done)} pairs already judged, {len(todo)} to go")

    judge = _make_judge(cfg) if cfg.backend == "hf" and todo else None
    tokens, unshared = 0, 0
    t0 = time.monotonic()
    output.parent.mkdir(parents=True, exist_ok=True)
    # rewrite the progress file with only complete pairs, then append as batches finish
    with open(partial, "w", encoding="utf-8") as f:
        for js in done.values():
            f.writelines(record_line(j) for j in js)
    bar = Progress(STAGE, len(pairs), "pairs", enabled=cfg.progress, done=len(done))
    with open(partial, "a", encoding="utf-8") as f:
        for b, start in enumerate(range(0, len(todo), cfg.batch_size)):
            batch = todo[start:start + cfg.batch_size]
            if judge is not None:
                new, stats = judge.judge(batch, principles, reuse_prefix=cfg.reuse_prefix)
                tokens += stats.tokens_processed
                unshared += stats.tokens_unshared
            else:
                from salmon.judge.rules import judge_pairs_rules

                new = judge_pairs_rules(batch, ids)
            for j in new:
                f.write(record_line(j))
                done.setdefault(j.pair_id, []).append(j)
            if (b + 1) % cfg.flush_every == 0:
                f.flush()
                os.fsync(f.fileno())
            bar.update(len(batch))
    seconds = time.monotonic() - t0

    ordered = [j for p in pairs for j in done[p.pair_id]]
    write_jsonl(output, ordered)
    partial.unlink(missing_ok=True)
    consistent = sum(j.consistent for j in ordered) / max(1, len(ordered))
    metrics: dict[str, float | int] = {
        "pairs": len(pairs), "judgements": len(ordered), "pairs_judged_now": len(todo),
        "position_consistent_rate": round(consistent, 4), "seconds": round(seconds, 2),
    }
    if judge is not None:
        metrics.update(prefill_tokens=tokens, prefill_tokens_without_reuse=unshared)
    log(STAGE, f"wrote {len(ordered)} judgements to {output}; position-consistent "
               f"{100 * consistent:.1f}%")
    return StageResult(STAGE, outputs={"judgements": str(output)}, metrics=metrics)


def main(argv: list[str] | None = None) -> int:
    return stage_main(STAGE, LabelConfig, run, argv, __doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())
