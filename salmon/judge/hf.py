"""The ``hf`` judge: a local causal LM picks Output (a) or (b) under one principle.

The score of a prompt is ``logit("a") - logit("b")`` at the last position, right after
``Output (``. Each (pair, principle) is judged in both orders; both deltas are oriented so that
positive favours output_1.

Prefix reuse: the prompt is laid out as ``shared | outputs | principle``. The shared segment
(header, instruction) is encoded once per pair, the outputs segment once per order on top of
it, and only the short principle segment once per (order, principle), all through the KV
cache. :func:`judge_batch_reference` runs one plain forward per (pair, order, principle) on
the same token ids; the tests check that both give the same deltas.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from salmon.core import templates
from salmon.core.errors import SalmonInputError
from salmon.core.principles import Principle
from salmon.core.records import Judgement, ResponsePair
from salmon.modeling import added_prefix, encode, encode_segments

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def answer_token_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
    """Ids of the tokens ``a`` and ``b`` as they follow ``(``; checks that each is ONE token.

    Raises:
        SalmonInputError: naming the tokenizer, if ``(a`` / ``(b`` do not split into ``(``
            plus one token, or if ``a`` and ``b`` share an id.
    """
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    stem = encode(tokenizer, "\n The more Concise output is Output (")
    ids = []
    for letter in ("a", "b"):
        full = encode(tokenizer, f"\n The more Concise output is Output ({letter}")
        if full[: len(stem)] != stem or len(full) != len(stem) + 1:
            raise SalmonInputError(
                f"tokenizer {name}", f"'{letter}' after 'Output (' is not a single token",
                "use a judge model whose tokenizer splits '(a' into '(' and 'a'")
        ids.append(full[-1])
    if ids[0] == ids[1]:
        raise SalmonInputError(f"tokenizer {name}", "'a' and 'b' map to the same token id",
                               "use a different judge model")
    return ids[0], ids[1]


@dataclass
class JudgeStats:
    """Work done by the judge: prompts scored and tokens run through the model."""

    prompts: int = 0
    tokens_processed: int = 0
    tokens_unshared: int = 0
    forward_calls: int = 0

    def add(self, other: JudgeStats) -> None:
        self.prompts += other.prompts
        self.tokens_processed += other.tokens_processed
        self.tokens_unshared += other.tokens_unshared
        self.forward_calls += other.forward_calls


@dataclass
class PairTokens:
    """Token ids of one pair's segments: shared (with the tokenizer's prefix) and outputs per order."""

    shared: list[int]
    outputs: tuple[list[int], list[int]]


_ANCHOR = templates.judge_outputs("a", "b")
"""Text that ends like every outputs segment: principle segments are tokenized after it."""


@dataclass
class JudgeTokenizer:
    """Token ids of judge prompts, as every logit judge (``hf``, ``openai``) builds them.

    The prompt's segments are tokenized as parts of the whole prompt
    (:func:`salmon.modeling.encode_segments`), so that ``shared + outputs + principle`` is the
    whole prompt's encoding for any tokenizer (SentencePiece or byte-level BPE). With
    ``prompt_format: dromedary`` the prompt is plain text after the tokenizer's own prefix (its
    BOS, if it adds one); with ``chat_template`` it is a user turn of the tokenizer's chat
    template and the answer stem opens the assistant turn. Principle segments are tokenized once
    and cached; :meth:`pair_tokens` left-truncates a pair's segments so that its longest prompt
    fits ``max_length``. ``id_a`` / ``id_b`` are the answer tokens read after ``Output (``.
    """

    tokenizer: PreTrainedTokenizerBase
    max_length: int = 1536
    prompt_format: str = "dromedary"
    principle_groups: int = 4
    """Most forward calls the principle segments of a batch are split into (by length)."""
    id_a: int = field(init=False)
    id_b: int = field(init=False)
    wrap: templates.ChatWrap | None = field(init=False, default=None)
    _principle_cache: dict[tuple[str, str], list[int]] = field(default_factory=dict, init=False)
    _keep: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.id_a, self.id_b = answer_token_ids(self.tokenizer)
        if self.prompt_format == "chat_template":
            from salmon.turns import chat_wrap

            self.wrap = chat_wrap(self.tokenizer)
        self._keep = (len(added_prefix(self.tokenizer)) if self.wrap is None
                      else len(encode_segments(self.tokenizer, [self.wrap[0], "x"], prefix=False)[0]))

    def _protected(self) -> int:
        """Leading ids that truncation never removes: the tokenizer's prefix, or the chat
        template's opening."""
        return self._keep

    def principle_tokens(self, principle: Principle) -> list[int]:
        key = (principle.name, principle.definition)
        if key not in self._principle_cache:
            text = templates.judge_principle(principle.name, principle.definition, self.wrap)
            self._principle_cache[key] = encode_segments(self.tokenizer, [_ANCHOR, text], prefix=False)[1]
        return self._principle_cache[key]

    def check_fit(self, principles: Sequence[Principle], source: str) -> None:
        """Every principle's segment must leave room in ``max_length`` for the protected opening
        and the outputs' template; checked before any pair is judged, so a too-long principle
        fails first.

        Raises:
            SalmonInputError: naming the principle and ``source`` (the set's name or path).
        """
        skeleton = self._protected() + len(encode(self.tokenizer, templates.judge_outputs("", "")))
        for p in principles:
            need = skeleton + len(self.principle_tokens(p))
            if need >= self.max_length:
                raise SalmonInputError(
                    f"principle '{p.id}' of {source}",
                    f"its judge prompt needs {need} tokens before any instruction or output, more than the "
                    f"judge's context of {self.max_length} tokens",
                    "shorten the definition, or use a judge with a longer context: label max_length and the "
                    "model's window")

    def pair_tokens(self, pair: ResponsePair, principle_budget: int) -> PairTokens:
        """Segments of one pair, left-truncated so that the longest prompt fits ``max_length``.

        The shared segment loses tokens first (after the protected opening: the tokenizer's
        prefix, or the chat template's opening), then the outputs segments.
        """
        shared_text = templates.judge_shared(pair.prompt.full_instruction(), self.wrap)
        principle = templates.judge_principle("Concise", "x", self.wrap)
        prefix = self.wrap is None
        shared, o12, _ = encode_segments(self.tokenizer, [
            shared_text, templates.judge_outputs(pair.output_1, pair.output_2), principle], prefix=prefix)
        shared_21, o21, _ = encode_segments(self.tokenizer, [
            shared_text, templates.judge_outputs(pair.output_2, pair.output_1), principle], prefix=prefix)
        if shared_21 != shared:  # the outputs segment always opens with the same text
            raise SalmonInputError(f"pair {pair.pair_id}", "the tokenizer joins the instruction to the outputs "
                                   "differently in the two orders", "use a judge model with another tokenizer")
        room = self.max_length - principle_budget
        n_bos = self._protected()
        excess = len(shared) + max(len(o12), len(o21)) - room
        if excess > 0:
            cut = min(excess, len(shared) - n_bos)
            shared = shared[:n_bos] + shared[n_bos + cut:]
            excess -= cut
            if excess > 0:
                o12, o21 = o12[excess:], o21[excess:]
                if not o12 or not o21:
                    raise SalmonInputError(
                        f"pair {pair.pair_id}", "the principle text alone exceeds the judge's max_length",
                        "raise label max_length or shorten the principle definitions")
        return PairTokens(shared, (o12, o21))

    def batch(self, pairs: Sequence[ResponsePair],
              principles: Sequence[Principle]) -> tuple[list[PairTokens], list[list[int]]]:
        """Pair segments and principle segments of a batch, truncated to one common budget."""
        p_ids = [self.principle_tokens(p) for p in principles]
        budget = max(len(t) for t in p_ids)
        return [self.pair_tokens(pair, budget) for pair in pairs], p_ids


@dataclass
class HFJudge:
    """Judge with a loaded causal LM; prompts are built by a :class:`JudgeTokenizer`."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    max_length: int = 1536
    prompt_format: str = "dromedary"
    principle_groups: int = 4
    """Most forward calls the principle segments of a batch are split into (by length)."""
    id_a: int = field(init=False)
    id_b: int = field(init=False)
    tokens: JudgeTokenizer = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = JudgeTokenizer(self.tokenizer, self.max_length, self.prompt_format)
        self.id_a, self.id_b = self.tokens.id_a, self.tokens.id_b

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def principle_tokens(self, principle: Principle) -> list[int]:
        return self.tokens.principle_tokens(principle)

    def pair_tokens(self, pair: ResponsePair, principle_budget: int) -> PairTokens:
        """See :meth:`JudgeTokenizer.pair_tokens`."""
        return self.tokens.pair_tokens(pair, principle_budget)

    def judge(self, pairs: Sequence[ResponsePair], principles: Sequence[Principle],
              reuse_prefix: bool = True) -> tuple[list[Judgement], JudgeStats]:
        """Judge every pair under every principle, both orders."""
        toks, p_ids = self.tokens.batch(pairs, principles)
        if reuse_prefix:
            scores, stats = judge_batch_prefix(self.model, toks, p_ids, self.id_a, self.id_b,
                                               principle_groups=self.principle_groups)
        else:
            scores, stats = judge_batch_reference(self.model, toks, p_ids, self.id_a, self.id_b)
        out = []
        for i, pair in enumerate(pairs):
            for j, principle in enumerate(principles):
                s12, s21 = scores[i][0][j], scores[i][1][j]
                # order (2,1) shows output_1 as (b): flip the sign so positive favours output_1
                out.append(Judgement(pair_id=pair.pair_id, principle_id=principle.id,
                                     delta_12=s12, delta_21=-s21, backend="hf"))
        return out, stats


def _pad_right(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[n, L]`` ids and mask of right-padded rows."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def positions_after_padding(full_mask: torch.Tensor, width: int) -> torch.Tensor:
    """Position ids of the last ``width`` slots: the count of real tokens before each slot."""
    pos = full_mask.cumsum(-1) - 1
    return pos[:, -width:].clamp(min=0)


def length_groups(lengths: Sequence[int], max_groups: int) -> list[list[int]]:
    """Indices of ``lengths`` split into at most ``max_groups`` groups of similar length so that
    padding every item to the longest of its group costs the fewest slots in all: the optimum,
    found by dynamic programming over the lengths in ascending order. Groups come shortest first,
    each in ascending length; an empty input gives no groups.

    >>> length_groups([10, 90, 12, 88, 50], 2)
    [[0, 2], [4, 3, 1]]
    >>> length_groups([10, 90, 12, 88, 50], 3)
    [[0, 2], [4], [3, 1]]
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    n, k = len(order), max(1, min(max_groups, len(order)))
    if not n:
        return []
    size = [lengths[i] for i in order]
    inf = float("inf")
    # best[g][i]: fewest slots for the first i items in g groups; cut[g][i]: where the last group starts
    best = [[inf] * (n + 1) for _ in range(k + 1)]
    cut = [[0] * (n + 1) for _ in range(k + 1)]
    best[0][0] = 0
    for g in range(1, k + 1):
        for i in range(1, n + 1):
            for j in range(g - 1, i):
                cost = best[g - 1][j] + (i - j) * size[i - 1]
                if cost < best[g][i]:
                    best[g][i], cut[g][i] = cost, j
    g = min(range(1, k + 1), key=lambda x: (best[x][n], x))  # fewer groups on a tie
    groups, i = [], n
    while g:
        j = cut[g][i]
        groups.append(order[j:i])
        i, g = j, g - 1
    return groups[::-1]


def judge_batch_prefix(
    model: PreTrainedModel, pairs: Sequence[PairTokens], principles: Sequence[Sequence[int]],
    id_a: int, id_b: int, principle_groups: int = 1,
) -> tuple[list[list[list[float]]], JudgeStats]:
    """Scores ``[pair][order][principle]`` = logit(a) - logit(b), sharing prefixes via the KV cache.

    Forward calls for the whole batch: shared segments ``[B, L0]``; outputs segments ``[2B, L1]``
    on the cache repeated per order; then the principle segments on the cache repeated per
    principle, in up to ``principle_groups`` calls of principles of similar length
    (:func:`length_groups`), each ``[2B*P_g, L2_g]`` padded only to the longest of its group.
    Padding sits between segments and is masked out; position ids count real tokens only, so
    every prompt sees the positions of its unpadded sequence.
    """
    import copy

    import torch
    from transformers import DynamicCache

    n_pairs, n_pr = len(pairs), len(principles)
    device = next(model.parameters()).device
    groups = length_groups([len(p) for p in principles], principle_groups)
    stats = JudgeStats(prompts=n_pairs * 2 * n_pr, forward_calls=2 + len(groups))
    with torch.no_grad():
        ids0, mask = _pad_right([p.shared for p in pairs], 0)
        ids0, mask = ids0.to(device), mask.to(device)
        cache = DynamicCache()
        model(input_ids=ids0, attention_mask=mask, position_ids=positions_after_padding(mask, ids0.shape[1]),
              past_key_values=cache, use_cache=True)

        cache.batch_repeat_interleave(2)
        ids1, mask1 = _pad_right([p.outputs[o] for p in pairs for o in (0, 1)], 0)
        mask = torch.cat([mask.repeat_interleave(2, dim=0), mask1.to(device)], dim=1)
        model(input_ids=ids1.to(device), attention_mask=mask,
              position_ids=positions_after_padding(mask, ids1.shape[1]), past_key_values=cache, use_cache=True)

        delta = [[[0.0] * n_pr for _ in (0, 1)] for _ in range(n_pairs)]
        third = 0
        for g, group in enumerate(groups):
            # the last group extends the cache itself; the others a copy of it
            part = cache if g == len(groups) - 1 else copy.deepcopy(cache)
            part.batch_repeat_interleave(len(group))
            ids2, mask2 = _pad_right([principles[j] for _ in range(2 * n_pairs) for j in group], 0)
            full = torch.cat([mask.repeat_interleave(len(group), dim=0), mask2.to(device)], dim=1)
            logits = model(input_ids=ids2.to(device), attention_mask=full,
                           position_ids=positions_after_padding(full, ids2.shape[1]), past_key_values=part,
                           use_cache=True, logits_to_keep=0).logits
            last = mask2.sum(-1).to(device) - 1
            rows = logits[torch.arange(logits.shape[0], device=device), last].float()
            values = (rows[:, id_a] - rows[:, id_b]).view(n_pairs, 2, len(group)).tolist()
            for i in range(n_pairs):
                for o in (0, 1):
                    for slot, j in enumerate(group):
                        delta[i][o][j] = values[i][o][slot]
            third += ids2.numel()

    stats.tokens_processed = ids0.numel() + ids1.numel() + third
    stats.tokens_unshared = sum(
        len(p.shared) + len(p.outputs[o]) + len(t) for p in pairs for o in (0, 1) for t in principles)
    return delta, stats


def judge_batch_reference(
    model: PreTrainedModel, pairs: Sequence[PairTokens], principles: Sequence[Sequence[int]],
    id_a: int, id_b: int, pad_to: int | None = None,
) -> tuple[list[list[list[float]]], JudgeStats]:
    """The same scores with one plain forward per (pair, order, principle), left-padded.

    This is the original layout (no reuse). ``pad_to`` pads every prompt to a fixed length, as
    the original did (1536); by default prompts are padded to the longest in each pair's batch.
    """
    import torch

    device = next(model.parameters()).device
    n_pr = len(principles)
    out: list[list[list[float]]] = []
    stats = JudgeStats()
    with torch.no_grad():
        for p in pairs:
            seqs = [p.shared + p.outputs[o] + list(principles[j]) for o in (0, 1) for j in range(n_pr)]
            width = max(pad_to or 0, max(len(s) for s in seqs))
            ids = torch.zeros((len(seqs), width), dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for i, s in enumerate(seqs):
                ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
                mask[i, width - len(s):] = 1
            mask = mask.to(device)
            logits = model(input_ids=ids.to(device), attention_mask=mask,
                           position_ids=positions_after_padding(mask, width), logits_to_keep=1).logits[:, -1].float()
            delta = (logits[:, id_a] - logits[:, id_b]).view(2, n_pr).tolist()
            out.append(delta)
            stats.prompts += len(seqs)
            stats.tokens_processed += ids.numel()
            stats.tokens_unshared += int(mask.sum())
            stats.forward_calls += 1
    return out, stats
