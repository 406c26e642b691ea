"""The MLflow pyfunc model of salmon's trained artifacts, logged from code (nothing pickled).

``model_config["kind"]`` says what the ``model`` artifact folder holds:

- ``sft`` / ``ppo``: a PEFT adapter. ``predict`` takes prompts (a list of strings or a frame with a
  ``prompt`` column) and returns one greedy answer per prompt, written and read in the
  ``prompt_format`` and system prompt the adapter was trained with (recorded in its
  ``salmon_sft.json`` / ``salmon_policy.json``), through the same
  :class:`salmon.turns.PolicyTurns` as training. The base model is the adapter's
  ``base_model_name_or_path`` unless ``model_config["base_model"]`` names another folder.
- ``train_rm``: the reward model folder. ``predict`` takes records (or a frame) with ``prompt``,
  ``response`` and ``principles`` (a list of principle texts) and returns one reward each.

Load with ``mlflow.pyfunc.load_model("models:/salmon-policy@champion")``.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
from mlflow.models import set_model


def _rows(model_input: Any) -> list[dict[str, Any]]:
    if hasattr(model_input, "to_dict"):
        return list(model_input.to_dict(orient="records"))
    if isinstance(model_input, dict):
        return [model_input]
    return [x if isinstance(x, dict) else {"prompt": str(x)} for x in model_input]


class SalmonModel(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    def load_context(self, context: Any) -> None:
        from salmon.modeling import load_tokenizer, resolve_device

        cfg = context.model_config or {}
        self.kind = cfg.get("kind", "ppo")
        self.max_new_tokens = int(cfg.get("max_new_tokens", 96))
        path = context.artifacts["model"]
        self.device = resolve_device("auto")
        if self.kind == "train_rm":
            from salmon.reward.model import RMEncoder, load_reward_model

            self.model, self.tok, meta = load_reward_model(path, device=self.device)
            self.encoder = RMEncoder(self.tok, meta.limits())
            return
        import json
        from pathlib import Path

        from peft import PeftModel

        from salmon.modeling import generation_end_ids, load_causal_lm
        from salmon.turns import PolicyTurns

        base = cfg.get("base_model") or json.loads((Path(path) / "adapter_config.json").read_text())[
            "base_model_name_or_path"]
        model = load_causal_lm(base, device=self.device)
        self.model = PeftModel.from_pretrained(model, path).merge_and_unload().eval()
        self.tok = load_tokenizer(base)
        made = next((Path(path) / n for n in ("salmon_policy.json", "salmon_sft.json") if (Path(path) / n).is_file()),
                    None)
        meta = json.loads(made.read_text(encoding="utf-8")) if made else {}
        self.turns = PolicyTurns(self.tok, meta.get("prompt_format", "dromedary"),
                                 system_prompt=meta.get("system_prompt"), stop=meta.get("stop"),
                                 end_ids=generation_end_ids(base))

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> list[Any]:
        rows = _rows(model_input)
        if self.kind == "train_rm":
            from salmon.reward.model import score_sequences

            seqs = [self.encoder.encode_rm(r["response"], r["prompt"], list(r["principles"])) for r in rows]
            return list(score_sequences(self.model, seqs, int(self.tok.pad_token_id)))
        queries = [self.turns.query_ids(str(r["prompt"])) for r in rows]
        turns = self.turns.generate(self.model, queries, temperature=0.0, top_p=1.0,
                                    max_new_tokens=self.max_new_tokens, batch_size=1)
        return [self.turns.answer_text(t.text) for t in turns]


set_model(SalmonModel())
