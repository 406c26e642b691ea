"""``pmp_data``: generic preference pairs for the reward model's preference-model pre-training
(PMP, method §3) from public preference data the user provides: Anthropic HH-RLHF and Stanford
SHP JSONL files, local or on S3. Nothing is downloaded; nothing in the files is run.

Per source, in file order: parse each line in its format (:mod:`salmon.core.pmp`); HH-RLHF
lines give (conversation, chosen answer, rejected answer) when both transcripts share the
conversation before the final assistant turn; SHP lines give (post, preferred comment, other
comment) when ``score_ratio > shp_min_score_ratio`` (2 by default). Lines without a usable pair
(an empty or identical answer, a different conversation, a low score ratio) are dropped and
counted by reason; with ``dedupe`` a pair equal to an earlier one is dropped too; ``limit`` stops
a source after N kept pairs. Then the merged pairs are shuffled (``seed``), cut to ``max_pairs``
and written as RMInstance JSONL, the preferred answer as ``output_1`` with ``preference`` 1 and
no principles: the file ``train_rm`` reads as ``pmp_data``.

A line that is not JSON, lacks a key, has a wrong type or a NaN stops the stage with the file and
line named, before anything is written.
"""

from __future__ import annotations

import random
from typing import Any

from salmon.core.config import PMPDataConfig, PMPSource
from salmon.core.errors import SalmonInputError
from salmon.core.io import write_jsonl
from salmon.core.pmp import Pair, hh_pair, pair_id, parse_line, pmp_instance, shp_pair
from salmon.core.records import RMInstance
from salmon.stages.common import StageResult, log, stage_main

STAGE = "pmp_data"
DUPLICATE = "duplicate"


def load_source(src: PMPSource, cfg: PMPDataConfig, seen: set[tuple[str, str, str]] | None
                ) -> tuple[list[Pair], dict[str, Any]]:
    """The pairs of one source, and its counts: lines read, pairs kept, drops by reason. ``seen``
    (the pairs of earlier sources, updated here) drops duplicates; None keeps them."""
    from salmon.storage import read_text

    pairs: list[Pair] = []
    dropped: dict[str, int] = {}
    read = 0
    for n, line in enumerate(read_text(src.uri).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{src.uri}:{n}"
        obj = parse_line(line, where, src.format)
        read += 1
        got = hh_pair(obj, where) if src.format == "hh_rlhf" else shp_pair(obj, where, cfg.shp_min_score_ratio)
        if isinstance(got, Pair) and seen is not None:
            key = (got.instruction, got.chosen, got.rejected)
            if key in seen:
                got = DUPLICATE
            else:
                seen.add(key)
        if isinstance(got, str):
            dropped[got] = dropped.get(got, 0) + 1
            continue
        pairs.append(got)
        if src.limit and len(pairs) >= src.limit:
            break
    return pairs, {"uri": src.uri, "format": src.format, "read": read, "kept": len(pairs),
                   "dropped": dict(sorted(dropped.items()))}


def instances(pairs: list[Pair]) -> list[RMInstance]:
    """The pairs as records; a pair that occurs more than once (``dedupe`` off) gets ``-2``, ``-3``,
    ... after its content id, so that ids stay unique."""
    counts: dict[str, int] = {}
    out = []
    for p in pairs:
        pid = pair_id(p)
        counts[pid] = counts.get(pid, 0) + 1
        out.append(pmp_instance(p, pid if counts[pid] == 1 else f"{pid}-{counts[pid]}"))
    return out


def run(cfg: PMPDataConfig) -> StageResult:
    seen: set[tuple[str, str, str]] | None = set() if cfg.dedupe else None
    merged: list[Pair] = []
    per_source: dict[str, dict[str, Any]] = {}
    by_format: dict[str, int] = {}
    for i, src in enumerate(cfg.sources):
        pairs, stats = load_source(src, cfg, seen)
        merged += pairs
        per_source[f"source_{i}"] = stats
        by_format[src.format] = by_format.get(src.format, 0) + len(pairs)
        drops = ", ".join(f"{k} {v}" for k, v in stats["dropped"].items()) or "none"
        log(STAGE, f"{src.uri} ({src.format}): {stats['read']} lines read, {stats['kept']} pairs kept; dropped: "
                   f"{drops}")
    if not merged:
        raise SalmonInputError(", ".join(s.uri for s in cfg.sources), f"no pair survived ({per_source})",
                               "check each source's format and, for shp, shp_min_score_ratio="
                               f"{cfg.shp_min_score_ratio:g}")
    if cfg.shuffle:
        random.Random(cfg.seed).shuffle(merged)
    over = max(0, len(merged) - cfg.max_pairs) if cfg.max_pairs else 0
    if over:
        merged = merged[: cfg.max_pairs]
    n = write_jsonl(cfg.output, instances(merged))
    log(STAGE, f"wrote {n} PMP pairs to {cfg.output}" + (f" ({over} over max_pairs left out)" if over else ""))
    totals: dict[str, int] = {}
    for stats in per_source.values():
        for reason, count in stats["dropped"].items():
            totals[f"dropped_{reason}"] = totals.get(f"dropped_{reason}", 0) + count
    metrics: dict[str, Any] = {
        "pairs": n, "read": sum(s["read"] for s in per_source.values()),
        "kept": sum(s["kept"] for s in per_source.values()), **dict(sorted(totals.items())),
        "dropped_over_max_pairs": over, "by_format": by_format, "sources": per_source}
    return StageResult(STAGE, outputs={"pairs": cfg.output}, metrics=metrics)


def main(argv: list[str] | None = None) -> int:
    return stage_main(STAGE, PMPDataConfig, run, argv, __doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())
