"""The policy's turn: how a query is written for the model and how a sampled answer is read back.

One :class:`PolicyTurns` serves every stage that prompts or reads the policy (``sft``,
``sample``, ``selfalign``, ``ppo``, ``eval_policy``) and the model logged to MLflow, so a policy
is trained on exactly the ids it is sampled and served on. ``prompt_format`` picks the layout:

- ``dromedary`` (the method's, for base models): ``{system}\\n{instruction}\\n\\n### Dromedary``,
  tokenized as the tokenizer tokenizes any document (Llama-2, Llama-3 and Mistral tokenizers add
  their BOS, Qwen and SmolLM2 ones add nothing). The turn ends with the text ``\\n\\n### User``
  (the stop string) or at eos; SFT targets end with the end-of-turn text.
- ``chat_template`` (for chat models): the tokenizer's own template, the instruction as the
  user message, the system prompt (if any) as the system message, the generation prompt opening
  the assistant turn; the template itself writes any BOS. The turn ends at eos; SFT targets end
  with the tokenizer's eos.

Generation stops per sequence at eos (the tokenizer's and those of the model's
``generation_config.json``) and at the stop strings. :meth:`PolicyTurns.read` turns the sampled
ids into a :class:`Turn`: its text (special tokens never appear in it; Dromedary turns are cut
the method's way), the ids the trainer scores (the sampled ids up to the end of the turn, eos
included) and whether the turn ended.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from salmon.core.errors import SalmonInputError
from salmon.core.rollout_text import TRUNCATE_AFTER, postprocess_response, rm_response_text, truncate_after
from salmon.core.templates import DROMEDARY_END_OF_TURN, DROMEDARY_STOP, DROMEDARY_SYSTEM, policy_query
from salmon.modeling import encode, encode_document, encode_segments

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

FORMATS = ("dromedary", "chat_template")


def tokenizer_name(tokenizer: Any) -> str:
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


def render_chat(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], *,
                add_generation_prompt: bool) -> str:
    """The tokenizer's chat template applied to ``messages``, as text.

    Raises:
        SalmonInputError: no template, or the template refuses the messages (some take no
            system message).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise SalmonInputError(f"tokenizer {tokenizer_name(tokenizer)}", "has no chat template",
                               "use prompt_format: dromedary, or a tokenizer that has one")
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as e:  # jinja's TemplateError and the templates' own raise_exception calls
        raise SalmonInputError(f"chat template of {tokenizer_name(tokenizer)}",
                               f"cannot render the prompt ({e})".replace("\n", " "),
                               "leave system_prompt unset if the template takes no system message, or use "
                               "prompt_format: dromedary") from None
    return str(text)


def chat_wrap(tokenizer: PreTrainedTokenizerBase, system: str | None = None) -> tuple[str, str]:
    """``(before, after)``: the template's text before a user message's content and after it,
    up to the opening of the assistant turn."""
    sentinel = "\u2063SALMON-USER-CONTENT\u2063"
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": sentinel}]
    text = render_chat(tokenizer, messages, add_generation_prompt=True)
    if text.count(sentinel) != 1:
        raise SalmonInputError(f"chat template of {tokenizer_name(tokenizer)}", "does not show the user message "
                               "verbatim", "use prompt_format: dromedary")
    before, after = text.split(sentinel)
    return before, after


@dataclass(frozen=True)
class Turn:
    """A sampled answer as read back.

    Attributes:
        text: the answer's text: special tokens removed; Dromedary turns cut and stripped the
            method's way (the stop string kept, :func:`salmon.core.rollout_text.postprocess_response`);
            what :meth:`PolicyTurns.answer_text` cleans for readers.
        ids: the sampled ids up to the end of the turn (its eos included when it ended there).
        stopped: the turn ended (eos, or the stop string), rather than running out of tokens. A
            Dromedary turn that is nothing but the stop string is not stopped: the method's strip
            leaves ``### User`` without the stop string's newlines (the method's ``has_stop``).
    """

    text: str
    ids: list[int]
    stopped: bool


class PolicyTurns:
    """Queries, SFT targets and the reading of sampled answers in one ``prompt_format``.

    Args:
        tokenizer: the policy's tokenizer.
        prompt_format: ``dromedary`` or ``chat_template``.
        system_prompt: dromedary: the text before the instruction (default the concise Dromedary
            prompt); chat_template: the system message (default none: the template's own).
        stop: the end-of-turn string (default ``\\n\\n### User`` for dromedary, none for
            chat_template).
        end_ids: more end-of-turn ids besides the tokenizer's eos (the model's
            ``generation_config`` eos ids).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_format: str = "dromedary", *,
                 system_prompt: str | None = None, stop: str | None = None, end_ids: Sequence[int] = ()) -> None:
        if prompt_format not in FORMATS:
            raise SalmonInputError("prompt_format", f"unknown format '{prompt_format}'",
                                   f"use one of {', '.join(FORMATS)}")
        self.tokenizer = tokenizer
        self.format = prompt_format
        if prompt_format == "dromedary":
            self.system = DROMEDARY_SYSTEM if system_prompt is None else system_prompt
            self.stop = DROMEDARY_STOP if stop is None else stop
        else:
            render_chat(tokenizer, [{"role": "user", "content": "x"}], add_generation_prompt=True)  # fails early
            self.system = system_prompt or None
            self.stop = stop or ""
        eos = tokenizer.eos_token_id
        self.end_ids: tuple[int, ...] = tuple(dict.fromkeys(
            [int(i) for i in ([eos] if eos is not None else []) + list(end_ids)]))
        if prompt_format == "chat_template" and not self.end_ids:
            raise SalmonInputError(f"tokenizer {tokenizer_name(tokenizer)}", "has no eos token, which ends a chat "
                                   "turn", "use prompt_format: dromedary, or set the tokenizer's eos_token")

    def with_system(self, system_prompt: str | None) -> PolicyTurns:
        """The same format with another system prompt (``None``: the format's default)."""
        return PolicyTurns(self.tokenizer, self.format, system_prompt=system_prompt, stop=self.stop,
                           end_ids=self.end_ids)

    # ------------------------------------------------------------------ writing

    def query_text(self, instruction: str) -> str:
        """The query as text (a chat template's special tokens written out)."""
        if self.format == "dromedary":
            return policy_query(instruction, self.system)
        messages = ([{"role": "system", "content": self.system}] if self.system else [])
        return render_chat(self.tokenizer, messages + [{"role": "user", "content": instruction.strip()}],
                           add_generation_prompt=True)

    def query_ids(self, instruction: str) -> list[int]:
        """The query's ids: what every stage feeds the policy before its answer."""
        text = self.query_text(instruction)
        return encode_document(self.tokenizer, text) if self.format == "dromedary" else encode(self.tokenizer, text)

    def sft_ids(self, instruction: str, response: str) -> tuple[list[int], list[int]]:
        """``(query ids, target ids)`` of one training example; the query ids are
        :meth:`query_ids`' and the target ends the turn (the end-of-turn text for dromedary, eos
        for chat_template). A response's Dromedary end-of-turn text is replaced by eos in
        chat_template, and added in dromedary when it lacks one."""
        query = self.query_text(instruction)
        body = response.rstrip()
        marker = DROMEDARY_END_OF_TURN.rstrip()
        if body.endswith(marker):
            body = body[: -len(marker)].rstrip()
        if self.format == "dromedary":
            source, target = encode_segments(self.tokenizer, [query, "\n" + body + DROMEDARY_END_OF_TURN])
            return source, target
        source, target = encode_segments(self.tokenizer, [query, body.strip()], prefix=False)
        return source, target + [self.end_ids[0]]

    # ------------------------------------------------------------------ reading

    @property
    def stop_strings(self) -> list[str]:
        """Strings that end generation besides eos. Dromedary adds the markers the method cuts
        after, so that stopping early changes no kept text."""
        if self.format == "dromedary":
            return [m for m in dict.fromkeys([*TRUNCATE_AFTER, self.stop]) if m]
        return [self.stop] if self.stop else []

    def _split(self, ids: Sequence[int], stops: Sequence[str] | None) -> tuple[list[int], int | None, str]:
        """(the ids before the end of the turn, the end id the model sampled or None, their text
        without special tokens), padding removed.

        A sequence that generation stopped at a stop string is followed by padding, which is an
        end id when the tokenizer pads with its eos: when the text holds one of ``stops`` (the
        stop strings generation used; default :attr:`stop_strings`), what follows it is padding,
        not a sampled eos.
        """
        ids = [int(i) for i in ids]
        cut = next((i for i, t in enumerate(ids) if t in self.end_ids), None)
        body, end = (ids[:cut], ids[cut]) if cut is not None else (ids, None)
        pad = self.tokenizer.pad_token_id
        while end is None and pad is not None and body and body[-1] == pad:
            body.pop()
        text = self.tokenizer.decode(body, skip_special_tokens=True)
        if end is not None and any(s and s in text for s in (self.stop_strings if stops is None else stops)):
            end = None
        return body, end, text

    def text_of(self, ids: Sequence[int], stops: Sequence[str] | None = None) -> tuple[str, int, bool]:
        """(the text of a sampled continuation up to its end of turn, without special tokens;
        how many ids were generated, the end id included; whether the model ended it with an
        end id). ``stops``: the stop strings generation used (default :attr:`stop_strings`)."""
        body, end, text = self._split(ids, stops)
        return text, len(body) + (end is not None), end is not None

    def read(self, ids: Sequence[int]) -> Turn:
        """A sampled continuation (ids after the query, padding included) as a :class:`Turn`."""
        body, end, text = self._split(ids, None)
        if self.format == "dromedary":
            kept = postprocess_response(text, stop=self.stop)
        else:
            kept = truncate_after(text, self.stop) if self.stop else text
        stopped = end is not None or bool(self.stop and self.stop in kept)
        if kept != text:  # cut before the end: the ids that spell the kept text, no eos
            # the Dromedary text is also stripped (the method's final strip); the ids keep the
            # leading whitespace the policy sampled (it is trained on what it sampled)
            lead = len(text) - len(text.lstrip()) if self.format == "dromedary" else 0
            return Turn(kept, body[: self._covering(body, lead + len(kept))], stopped)
        return Turn(kept, body + ([end] if end is not None else []), stopped)

    def _covering(self, ids: list[int], n_chars: int) -> int:
        """The fewest leading ids whose text has at least ``n_chars`` characters."""
        lo, hi = 0, len(ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if len(self.tokenizer.decode(ids[:mid], skip_special_tokens=True)) >= n_chars:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def answer_text(self, text: str) -> str:
        """A turn's text as the reward model, the checkers and readers see it: Dromedary turns
        cut before the stop string and the method's markers, chat turns before the stop string."""
        if self.format == "dromedary":
            return rm_response_text(text)
        return (text.split(self.stop, 1)[0] if self.stop else text).strip()

    def generate(self, model: Any, queries: Sequence[Sequence[int]], *, temperature: float, top_p: float,
                 max_new_tokens: int, batch_size: int, stop: bool = True) -> list[Turn]:
        """Sample one answer per query (see :func:`generate_ids`) and read it. ``stop=False``
        generates to ``max_new_tokens`` (only the model's own eos ends a sequence early); the
        turn is still read up to its end."""
        raw = generate_ids(model, self.tokenizer, queries, temperature=temperature, top_p=top_p,
                           max_new_tokens=max_new_tokens, batch_size=batch_size,
                           stop_strings=self.stop_strings if stop else (), end_ids=self.end_ids if stop else ())
        return [self.read(r) for r in raw]


def common_prefix_length(queries: Sequence[Sequence[int]]) -> int:
    """How many leading ids all ``queries`` share, short of the whole of any query.

    The count stops one id before the end of the shortest query, so that every query keeps at
    least one id after the shared prefix: generation from a cached prefix still has to feed the
    model one new id per sequence. 0 when there are no queries or the first ids differ.

    >>> common_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5, 6], [1, 2, 9]])
    2
    >>> common_prefix_length([[1, 2, 3], [1, 2, 3, 4]])
    2
    """
    if not queries:
        return 0
    limit = min(len(q) for q in queries) - 1
    first = queries[0]
    n = 0
    while n < limit and all(q[n] == first[n] for q in queries):
        n += 1
    return n


@dataclass(frozen=True)
class SharedPrefix:
    """Leading ids that every query of a generation shares, run through the model once.

    :func:`generate_ids` starts each batch from a copy of ``cache`` expanded to the batch, so
    the prefix is never encoded again; ``cache`` itself is left as it is.

    Attributes:
        ids: the shared ids.
        cache: their key/value cache (a transformers ``DynamicCache`` of batch size 1).
    """

    ids: list[int]
    cache: Any


def prefix_reuse_unsupported(model: Any, length: int) -> str | None:
    """Why generation on ``model`` cannot start from a shared prefix's cache, or ``None`` when it
    can. ``length``: the longest sequence generation will hold (query plus new ids).

    The shared layout puts the padding of each batch between the prefix and the queries' own
    ids. Full-attention layers see only the real ids through the attention mask, whatever the
    slots in between; a sliding-window layer counts slots, so it gives the same result only when
    the whole sequence fits its window. Caches other than transformers' dynamic one (static,
    quantized, recurrent states) are not reused.
    """
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    supports = getattr(model, "_supports_default_dynamic_cache", None)
    if supports is None or not supports():
        return f"{type(model).__name__} does not use transformers' dynamic cache"
    impl = getattr(getattr(model, "generation_config", None), "cache_implementation", None)
    if impl not in (None, "hybrid"):  # generate replaces "hybrid" with the dynamic cache
        return f"the model's generation config asks for the '{impl}' cache"
    for layer in DynamicCache(config=model.config).layers:
        if type(layer) is DynamicSlidingWindowLayer:
            if length >= layer.sliding_window:
                return (f"a {length}-token sequence does not fit the model's {layer.sliding_window}-token "
                        "sliding window")
        elif type(layer) is not DynamicLayer:
            return f"the model's cache has {type(layer).__name__} layers"
    return None


def encode_prefix(model: Any, ids: Sequence[int]) -> SharedPrefix:
    """Run ``model`` once on ``ids`` (positions 0 to len - 1, no padding) and keep their cache."""
    import torch
    from transformers import DynamicCache

    if not ids:
        raise ValueError("the shared prefix is empty")
    device = next(model.parameters()).device
    cache = DynamicCache(config=model.config)
    model.eval()
    with torch.no_grad():
        model(input_ids=torch.tensor([list(ids)], dtype=torch.long, device=device), past_key_values=cache,
              use_cache=True, logits_to_keep=1)
    return SharedPrefix([int(i) for i in ids], cache)


def _prefix_batch(prefix: SharedPrefix, n: int) -> Any:
    """A copy of the prefix's cache repeated ``n`` times along the batch (generation extends it)."""
    import copy

    cache = copy.deepcopy(prefix.cache)
    cache.batch_repeat_interleave(n)
    return cache


def generate_ids(model: Any, tokenizer: Any, queries: Sequence[Sequence[int]], *, temperature: float, top_p: float,
                 max_new_tokens: int, batch_size: int, stop_strings: Sequence[str] = (),
                 end_ids: Sequence[int] = (), prefix: SharedPrefix | None = None,
                 suppress_ids: Sequence[int] = ()) -> list[list[int]]:
    """Sampled continuations of token-id queries, left-padded per batch: the new ids of each,
    padding included. Each sequence stops at any of ``end_ids`` or ``stop_strings`` (the batch
    runs until all have stopped or ``max_new_tokens``). ``temperature`` 0 means greedy; sampling
    draws from torch's global RNG, so a seeded run samples the same ids. ``suppress_ids`` are never
    sampled (their logits are set to -inf, as a logit bias of -100 does in the method's TGRT).

    ``prefix`` (from :func:`encode_prefix`; every query must start with its ids and go on past
    them): each batch starts from a copy of the prefix's cache instead of encoding the prefix
    again. A row is laid out as ``[prefix][padding][rest of the query]``, the padding masked
    out; ``generate`` numbers positions by the running count of the attention mask, so every
    query sees the positions of its unpadded ids, as without the prefix. Greedy generation gives
    the same ids either way, up to float rounding in the attention over a different layout.
    """
    import torch

    device = next(model.parameters()).device
    pad_id = int(tokenizer.pad_token_id)
    shared = prefix.ids if prefix is not None else []
    if prefix is not None and any(len(q) <= len(shared) or list(q[:len(shared)]) != shared for q in queries):
        raise ValueError("a query does not extend the shared prefix by at least one id")
    sampling: dict[str, Any] = (dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=None)
                                if temperature > 0 else dict(do_sample=False, temperature=None, top_p=None,
                                                             top_k=None))
    stopping: dict[str, Any] = {"eos_token_id": list(end_ids)} if end_ids else {}
    if suppress_ids:
        stopping["suppress_tokens"] = [int(i) for i in suppress_ids]
    if stop_strings:
        stopping.update(stop_strings=list(stop_strings), tokenizer=tokenizer)
    model.eval()
    out: list[list[int]] = []
    for start in range(0, len(queries), batch_size):
        chunk = [list(q)[len(shared):] for q in queries[start:start + batch_size]]
        width = len(shared) + max(len(q) for q in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        if shared:
            ids[:, :len(shared)] = torch.tensor(shared, dtype=torch.long)
            mask[:, :len(shared)] = 1
        for i, q in enumerate(chunk):
            ids[i, width - len(q):] = torch.tensor(q, dtype=torch.long)
            mask[i, width - len(q):] = 1
        cache = {"past_key_values": _prefix_batch(prefix, len(chunk))} if prefix is not None else {}
        with torch.no_grad():
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 max_new_tokens=max_new_tokens, pad_token_id=pad_id, **cache, **stopping,
                                 **sampling)
        out += [row.tolist() for row in gen[:, width:]]
    return out


def policy_turns(tokenizer: PreTrainedTokenizerBase, cfg: Any, model_dir: str | None = None) -> PolicyTurns:
    """The :class:`PolicyTurns` of a stage config (``prompt_format``, ``system_prompt``, ``stop``
    when it has them), with the end ids of ``model_dir``'s generation config."""
    from salmon.modeling import generation_end_ids

    return PolicyTurns(tokenizer, getattr(cfg, "prompt_format", "dromedary"),
                       system_prompt=getattr(cfg, "system_prompt", None), stop=getattr(cfg, "stop", None),
                       end_ids=generation_end_ids(model_dir) if model_dir else ())

