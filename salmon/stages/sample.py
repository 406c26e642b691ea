"""``sample``: two responses per prompt from the policy, as response pairs (method §2.1).

Backends: ``hf`` generates with a local HF causal LM in the Dromedary turn format (one seed
per response, temperature 0.7, top-p 1.0 by default); ``nano`` uses the nano world's response
generator, which stands in for a policy in the nano world. Responses are cut before the first
``###`` and stripped; a prompt is skipped if either response is under ``min_chars``.
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


def run(cfg: SampleConfig) -> StageResult:
    prompts = read_jsonl(cfg.prompts, PromptRecord)
    if cfg.limit:
        prompts = prompts[: cfg.limit]
    log(STAGE, f"{len(prompts)} prompts from {cfg.prompts}, backend {cfg.backend}")
    if cfg.backend == "nano":
        from salmon.nano.world import make_pairs

        raw = [(p.output_1, p.output_2) for p in make_pairs(prompts, seed=cfg.seeds[0])]
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
                       metrics={"pairs": len(pairs), "skipped_short": skipped})


def main(argv: list[str] | None = None) -> int:
    return stage_main(STAGE, SampleConfig, run, argv, __doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())
