"""The MLflow pyfunc model of salmon's trained artifacts, logged from code (nothing pickled).

``model_config["kind"]`` says what the ``model`` artifact folder holds:

- ``sft`` / ``ppo``: a PEFT adapter. ``predict`` takes prompts (a list of strings or a frame with a
  ``prompt`` column) and returns one greedy answer per prompt. The base model is the adapter's
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
        self.system_prompt = cfg.get("system_prompt", "### User")
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

        from salmon.modeling import load_causal_lm

        base = cfg.get("base_model") or json.loads((Path(path) / "adapter_config.json").read_text())[
            "base_model_name_or_path"]
        model = load_causal_lm(base, device=self.device)
        self.model = PeftModel.from_pretrained(model, path).merge_and_unload().eval()
        self.tok = load_tokenizer(base)

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> list[Any]:
        import torch

        rows = _rows(model_input)
        if self.kind == "train_rm":
            from salmon.reward.model import score_sequences

            seqs = [self.encoder.encode_rm(r["response"], r["prompt"], list(r["principles"])) for r in rows]
            return list(score_sequences(self.model, seqs, int(self.tok.pad_token_id)))
        from salmon.core.templates import policy_query

        answers = []
        for r in rows:
            enc = self.tok(policy_query(r["prompt"], self.system_prompt), return_tensors="pt").to(self.device)
            with torch.no_grad():
                out = self.model.generate(**enc, do_sample=False, max_new_tokens=self.max_new_tokens,
                                          pad_token_id=self.tok.pad_token_id)
            text = self.tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            answers.append(text.split("\n\n### User")[0].strip())
        return answers


set_model(SalmonModel())
