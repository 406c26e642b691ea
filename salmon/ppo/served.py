"""PPO rollouts from a vLLM server that serves the policy's LoRA adapter (``rollout_backend=openai``).

The policy is a LoRA adapter, so keeping the server's copy current costs megabytes per step:
before each step's rollouts, rank 0 writes the adapter into a folder the server can read (a
volume both mount), loads it through vLLM's runtime LoRA API under a name of its own for that
step, and unloads the previous step's. Every request names the step's adapter, so a rollout can
never come from a stale one. The server must run with ``--enable-lora`` (and a
``--max-lora-rank`` at least the policy's rank) and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``.

A rollout is one ``/completions`` request for one query (token ids in, token ids and their
log-probs out, ``return_tokens_as_token_ids``), seeded per rollout so that a resumed run draws
the same samples. The server stops at the end ids and the first four stop strings (the OpenAI
limit; the turn's own stop string first) and keeps the stop string in its output, so that
:meth:`salmon.turns.PolicyTurns.read` cuts the turn exactly as it cuts a local generation. The
trainer recomputes every log-prob it trains with; the server's own log-probs only measure how
far the two engines are apart (:func:`logprob_gap`).
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from salmon.core.config import PPOConfig

MAX_STOP_STRINGS = 4
"""The most stop strings an OpenAI-compatible /completions request may carry (vLLM enforces it)."""


def server_stop_strings(stop: str | None, stop_strings: Sequence[str]) -> list[str]:
    """The stop strings sent to the server: the turn's own ``stop`` first, then the others, at
    most :data:`MAX_STOP_STRINGS`. The turn is read locally afterwards, so a stop string left
    out costs generated tokens, never a different turn.

    >>> server_stop_strings("### User", ["a", "b", "c", "d", "### User"])
    ['### User', 'a', 'b', 'c']
    """
    return [s for s in dict.fromkeys([stop or "", *stop_strings]) if s][:MAX_STOP_STRINGS]


def rollout_seed(seed: int, step: int, index: int) -> int:
    """The seed of rollout ``index`` of PPO step ``step`` (one per request: a batch of identical
    queries, as in a GRPO group, must not share a seed). A 31-bit integer."""
    digest = hashlib.sha256(f"{seed}:{step}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def rollout_body(model: str, query: Sequence[int], *, max_tokens: int, temperature: float, top_p: float,
                 seed: int, stop: Sequence[str], end_ids: Sequence[int]) -> dict[str, Any]:
    """The ``/completions`` request of one rollout."""
    return {"model": model, "prompt": [list(query)], "max_tokens": max_tokens, "temperature": temperature,
            "top_p": top_p, "seed": seed, "n": 1, "stop": list(stop), "include_stop_str_in_output": True,
            "stop_token_ids": [int(i) for i in end_ids], "logprobs": 0, "return_tokens_as_token_ids": True}


def parse_rollout(answer: dict[str, Any]) -> tuple[list[int], list[float]]:
    """The generated token ids of a one-choice ``/completions`` answer and the server's log-prob
    of each.

    Raises:
        ValueError: the answer has no ``token_id:N`` tokens (the server ignored
            ``return_tokens_as_token_ids``: not vLLM, or too old).
    """
    choices = answer.get("choices") or []
    if len(choices) != 1:
        raise ValueError(f"expected one choice, got {len(choices)}")
    logprobs = choices[0].get("logprobs") or {}
    tokens = logprobs.get("tokens") or []
    values = logprobs.get("token_logprobs") or []
    ids = []
    for t in tokens:
        if not (isinstance(t, str) and t.startswith("token_id:")):
            raise ValueError(f"token {t!r} is not 'token_id:N'")
        ids.append(int(t.split(":", 1)[1]))
    return ids, [float(v) if v is not None else 0.0 for v in values]


def logprob_gap(trainer: Sequence[Sequence[float]], server: Sequence[Sequence[float]]) -> float | None:
    """Mean absolute difference between the trainer's and the server's log-probs of the same
    sampled tokens (each rollout compared over the tokens both have). ``None`` without tokens.

    >>> logprob_gap([[-1.0, -2.0], [-0.5]], [[-1.5, -2.0, -9.0], [-0.25]])
    0.25
    """
    diffs = [abs(a - b) for t, s in zip(trainer, server, strict=True) for a, b in zip(t, s, strict=False)]
    return sum(diffs) / len(diffs) if diffs else None


def served_adapter_dir(cfg: Any) -> Path:
    """Where a ``ppo`` / ``eval_policy`` config writes adapters for the server to read:
    ``served_adapter_dir``, or ``output_dir/served_policy``."""
    return Path(cfg.served_adapter_dir or Path(cfg.output_dir) / "served_policy")


class ServedPolicy:
    """The policy adapter on the server, one served name per PPO step.

    Args:
        client: an :class:`salmon.sampling.openai_client.OpenAIClient` of the server.
        write_dir: where this process writes each step's adapter.
        server_dir: the same folder as the server sees it (``None``: the same path).
        run_key: what makes the served names of this run unique on a shared server.
    """

    def __init__(self, client: Any, write_dir: Path, server_dir: str | None, run_key: str) -> None:
        self.client = client
        self.write_dir = Path(write_dir)
        self.server_dir = server_dir or str(self.write_dir)
        self.prefix = "salmon-policy-" + hashlib.sha256(run_key.encode()).hexdigest()[:8]
        self.current: str | None = None

    def name(self, step: int) -> str:
        return f"{self.prefix}-step-{step}"

    def publish(self, step: int, save: Callable[[Path], None]) -> str:
        """Write the adapter the policy has before ``step`` (``save(folder)``), load it as
        :meth:`name` ``(step)`` (in place of a same-named one a killed run left), unload the
        previous step's and delete its folder; returns the served name."""
        from salmon.core.io import atomic_dir

        name = self.name(step)
        folder = self.write_dir / name
        with atomic_dir(folder) as tmp:
            save(tmp)
        self.client.load_lora(name, f"{self.server_dir.rstrip('/')}/{name}", in_place=True)
        previous = self.current or (self.name(step - 1) if step > 0 else None)
        if previous and previous != name:
            self.client.unload_lora(previous)
            shutil.rmtree(self.write_dir / previous, ignore_errors=True)
        self.current = name
        return name

    def close(self) -> None:
        """Unload the last adapter (its folder stays: the last step's policy, for inspection)."""
        if self.current:
            self.client.unload_lora(self.current)
            self.current = None


def generate_on_server(client: Any, model: str, turns: Any, queries: Sequence[Sequence[int]], *,
                       max_new_tokens: int, temperature: float, top_p: float,
                       seeds: Sequence[int]) -> tuple[list[Any], list[list[float]]]:
    """One rollout per query from the served ``model``, read by ``turns`` as local generations
    are; returns the turns and the server's log-probs of each turn's ids."""
    stop = server_stop_strings(turns.stop, turns.stop_strings)
    bodies = [rollout_body(model, q, max_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=s,
                           stop=stop, end_ids=turns.end_ids) for q, s in zip(queries, seeds, strict=True)]
    answers = client.complete_many(bodies)
    out, logps = [], []
    for a in answers:
        ids, values = parse_rollout(a)
        turn = turns.read(ids)
        out.append(turn)
        logps.append(values[: len(turn.ids)])
    return out, logps


def base_name(models: Sequence[Any]) -> str:
    """The served name of the base model among ``/v1/models`` entries (the first without a parent)."""
    return next(m.id for m in models if not m.parent or m.parent == m.id)


@contextmanager
def adapter_on_server(client: Any, adapter: str, write_dir: Path, server_dir: str | None) -> Iterator[str]:
    """An adapter folder served for the length of the block: copied into ``write_dir`` (which
    the server reads as ``server_dir``), loaded under a name from its content digest, unloaded
    at the end. Yields the served name."""
    from salmon.core.digest import digest_dir
    from salmon.core.io import atomic_dir

    name = "salmon-adapter-" + digest_dir(adapter).removeprefix("sha256:")[:12]
    folder = Path(write_dir) / name
    if not folder.is_dir():
        with atomic_dir(folder) as tmp:
            shutil.copytree(adapter, tmp, dirs_exist_ok=True)
    client.load_lora(name, f"{(server_dir or str(write_dir)).rstrip('/')}/{name}", in_place=True)
    try:
        yield name
    finally:
        client.unload_lora(name)


def served_policy(cfg: PPOConfig, ctx: Any) -> Any:
    """The :class:`salmon.ppo.served.ServedPolicy` of ``rollout_backend=openai``, once the server
    lists its models."""
    from salmon.ppo.served import ServedPolicy, served_adapter_dir
    from salmon.sampling.openai_client import OpenAIClient

    assert cfg.endpoint is not None  # the config's validator
    client = OpenAIClient.from_config(cfg)
    models = client.wait_ready(cfg.ready_timeout_s)
    ctx.log("ppo", f"rollouts from {client.endpoint} (serving {', '.join(m.id for m in models)}); the policy "
                   "adapter is loaded there before every step")
    return ServedPolicy(client, served_adapter_dir(cfg), cfg.served_adapter_dir_on_server,
                        run_key=str(Path(cfg.output_dir).resolve()))


def served_rollouts(served: Any, roles: Any, ctx: Any, trainable: dict[str, Any], turns: Any, q_ids: list[list[int]],
                    cfg: PPOConfig, step: int, offset: int) -> tuple[list[Any], list[list[float]]]:
    """This step's rollouts from the server: rank 0 publishes the policy adapter as it is now
    (ZeRO-3 gathers it first), every rank waits for it, then asks for its own queries, seeded by
    (seed, step, rollout index across ranks)."""
    from salmon.ppo.served import generate_on_server, rollout_seed

    with ctx.gathered(list(trainable.values())):
        ctx.on_main(lambda: served.publish(step, roles.save_policy))  # the other ranks wait at its barrier
    seeds = [rollout_seed(cfg.seed, step, offset + i) for i in range(len(q_ids))]
    return generate_on_server(served.client, served.name(step), turns, q_ids, max_new_tokens=cfg.response_len,
                              temperature=cfg.temperature, top_p=cfg.top_p, seeds=seeds)
