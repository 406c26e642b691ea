"""The MLflow pyfunc models of salmon's trained artifacts, logged from code (nothing pickled).

A logged model carries everything it needs to load where salmon is not installed:

- the code: the ``salmon`` package's modules travel in the model's ``code/`` folder
  (``code_paths``), so ``mlflow.pyfunc.load_model`` and ``mlflow models serve`` need only the
  requirements the model lists (torch, transformers, peft, safetensors, pydantic, PyYAML);
- the weights: the ``model`` artifact is the stage's folder (a PEFT adapter for ``sft`` and
  ``ppo``, the reward-model folder for ``train_rm``, a whole model folder for ``base``);
- its settings, in the ``salmon_model`` artifact (``salmon_model.json``: ``kind``, ``base_model``,
  ``base_model_digest``, ``prompt_format``); not ``model_config``, which MLflow would also write
  into the logging run's params;
- the base model, by a portable reference (``base_model``): a logged or registered model
  (``models:/...``) or an S3 prefix, never a path of the training machine. It is downloaded when
  the model loads (the tracking server in ``MLFLOW_TRACKING_URI``, S3 through the AWS variables
  and ``MLFLOW_S3_ENDPOINT_URL``) and checked against ``base_model_digest``.

While salmon logs a model (``SALMON_PYFUNC_SIGNATURE_ONLY`` set), MLflow's check of the input
example against the signature runs without weights: the model answers placeholders of the
signature's types. The real load and answer are what ``tests/test_pipeline.py`` checks in a
virtualenv without salmon and through ``mlflow models serve``.

Two classes, one per signature (both typed, so MLflow derives the signature from the hints):

- :class:`PolicyModel` (``kind`` ``base``, ``sft``, ``ppo``): a list of prompts in, one greedy
  answer per prompt out, written and read in the ``prompt_format`` and system prompt the adapter
  was trained with (its ``salmon_sft.json`` / ``salmon_policy.json``) through the same
  :class:`salmon.turns.PolicyTurns` as training;
- :class:`RewardModelPyfunc` (``kind`` ``train_rm``): records of ``prompt``, ``response`` and
  ``principles`` (principle texts) in, one reward each out.

``salmon/pyfunc_policy.py`` and ``salmon/pyfunc_reward.py`` are the files MLflow runs to build
them (``set_model``). Load with ``mlflow.pyfunc.load_model("models:/salmon-policy@champion")``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import mlflow.pyfunc
from pydantic import BaseModel


class RewardRequest(BaseModel):
    """One input of the reward model: the instruction, a response, the principle texts to judge by."""

    prompt: str
    response: str
    principles: list[str]


def materialize_base(uri: str, digest: str, dest: str | Path) -> str:
    """Download the base model that ``uri`` references (``models:/...`` or ``s3://...``) into
    ``dest`` and check it against ``digest`` (``sha256:...``; empty: not checked); returns the
    folder.

    Raises:
        SalmonInputError: an unknown kind of reference, or a download whose digest differs.
    """
    from salmon.core.digest import digest_dir
    from salmon.core.errors import SalmonInputError

    dest = Path(dest)
    if uri.startswith("models:/"):
        from salmon.tracking.models import download_model_folder

        download_model_folder(uri, dest)
    elif uri.startswith("s3://"):
        from salmon.storage import download_prefix

        download_prefix(uri, dest)
    else:
        raise SalmonInputError(f"base model reference {uri!r}", "not a models:/ or s3:// URI",
                               "log the model again from a pipeline run (it records a portable reference)")
    if digest and (actual := digest_dir(dest)) != digest:
        raise SalmonInputError(f"base model {uri}", f"its content digest {actual[:19]} differs from the "
                               f"{digest[:19]} the model was trained on",
                               "restore that base model version, or log the model again against the new one")
    return str(dest)


def _settings(context: Any) -> dict[str, Any]:
    path = (context.artifacts or {}).get("salmon_model")
    return dict(json.loads(Path(path).read_text(encoding="utf-8"))) if path else {}


def _signature_only() -> bool:
    from salmon.tracking.models import SIGNATURE_ONLY_ENV

    return os.environ.get(SIGNATURE_ONLY_ENV) == "1"


def _base_folder(config: dict[str, Any]) -> str | None:
    uri = str(config.get("base_model") or "")
    if not uri:
        return None
    return materialize_base(uri, str(config.get("base_model_digest") or ""),
                            tempfile.mkdtemp(prefix="salmon-base-"))


class PolicyModel(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    """Greedy answers of a base model, an SFT adapter or a PPO policy adapter."""

    def load_context(self, context: Any) -> None:
        from salmon.modeling import generation_end_ids, load_causal_lm, load_tokenizer, resolve_device
        from salmon.turns import PolicyTurns

        cfg = _settings(context)
        self.kind = cfg.get("kind", "ppo")
        self.max_new_tokens = int(cfg.get("max_new_tokens", 96))
        self.model = None
        if _signature_only():
            return
        path = context.artifacts["model"]
        device = resolve_device("auto")
        base = path if self.kind == "base" else (_base_folder(cfg) or json.loads(
            (Path(path) / "adapter_config.json").read_text(encoding="utf-8"))["base_model_name_or_path"])
        model = load_causal_lm(base, device=device)
        if self.kind != "base":
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, path).merge_and_unload()
        self.model = model.eval()
        made = next((Path(path) / n for n in ("salmon_policy.json", "salmon_sft.json") if (Path(path) / n).is_file()),
                    None)
        meta = json.loads(made.read_text(encoding="utf-8")) if made else {}
        self.turns = PolicyTurns(load_tokenizer(base), meta.get("prompt_format", cfg.get("prompt_format", "dromedary")),
                                 system_prompt=meta.get("system_prompt"), stop=meta.get("stop"),
                                 end_ids=generation_end_ids(base))

    def predict(self, context: Any, model_input: list[str], params: dict[str, Any] | None = None) -> list[str]:
        if self.model is None:  # logging: the example is checked against the signature only
            return ["" for _ in model_input]
        queries = [self.turns.query_ids(str(p)) for p in model_input]
        turns = self.turns.generate(self.model, queries, temperature=0.0, top_p=1.0,
                                    max_new_tokens=self.max_new_tokens, batch_size=1)
        return [self.turns.answer_text(t.text) for t in turns]


class RewardModelPyfunc(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    """Rewards of (prompt, response, principles) records from a train_rm folder."""

    def load_context(self, context: Any) -> None:
        from salmon.modeling import resolve_device
        from salmon.reward.model import RMEncoder, load_reward_model

        self.model = None
        if _signature_only():
            return
        self.model, self.tok, meta = load_reward_model(context.artifacts["model"], device=resolve_device("auto"),
                                                       base_model=_base_folder(_settings(context)))
        self.encoder = RMEncoder(self.tok, meta.limits())

    def predict(self, context: Any, model_input: list[RewardRequest],
                params: dict[str, Any] | None = None) -> list[float]:
        from salmon.reward.model import score_sequences

        if self.model is None:  # logging: the example is checked against the signature only
            return [0.0 for _ in model_input]
        seqs = [self.encoder.encode_rm(r.response, r.prompt, list(r.principles)) for r in model_input]
        return [float(x) for x in score_sequences(self.model, seqs, int(self.tok.pad_token_id))]
