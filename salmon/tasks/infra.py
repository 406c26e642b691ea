"""The pipeline's infrastructure tasks: the base model, and the vLLM server that sampling,
judging and rollouts can use."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from salmon.base_models import is_packaged
from salmon.core.errors import SalmonInputError
from salmon.stages.common import log
from salmon.tasks.common import BASE_NAMES, artifact_digest


def serve_sampler_task(mode: str, *, endpoint: str, base_model: str, adapter: str, run_id: str,
                       cluster: dict[str, Any], api_key_secret: str, api_client: Any = None) -> str:
    """The OpenAI-compatible server that ``sample`` and ``label`` use with the ``openai`` backend
    (and ``ppo`` / ``eval_policy`` with ``rollout_backend=openai``), as JSON ``{"endpoint",
    "served_model", "adapter_dir"}``: ``none`` -> ``{}``; ``endpoint`` -> the given URL; ``deploy``
    -> a vLLM Deployment + Service serving the base model with the SFT adapter as LoRA ``sft``
    and runtime LoRA loading on (``salmon.cluster.sampler``), removed by
    :func:`stop_sampler_task`."""
    if mode == "none":
        return "{}"
    if mode == "endpoint":
        return json.dumps({"endpoint": endpoint})
    from salmon.cluster.executor import ClusterSettings, copy_replacing
    from salmon.cluster.launch import kube_api_client, own_pod_owner
    from salmon.cluster.sampler import deploy_server, server_name
    from salmon.cluster.spec import OwnerRef, VLLMServerSpec, gpu_tolerations

    settings = ClusterSettings(**cluster)
    name = server_name(artifact_digest(base_model), artifact_digest(adapter))
    folder = Path(settings.mount_path) / "salmon-serve" / name
    for src, dst in ((base_model, folder / "base"), (adapter, folder / "sft")):
        if not dst.exists():
            copy_replacing(Path(src), dst)
    spec = VLLMServerSpec(
        name=name, namespace=settings.resolved_namespace(), model=str(folder / "base"), served_model_name="base",
        model_pvc=settings.pvc, model_mount=settings.mount_path, gpus=settings.gpus,
        gpu_resource=settings.gpu_resource, lora_modules={"sft": str(folder / "sft")},
        runtime_lora_updates=True,  # ppo / eval_policy with rollout_backend=openai load adapters at run time
        api_key_secret=api_key_secret,
        tolerations=gpu_tolerations(settings.gpus, settings.gpu_resource))
    api = api_client or kube_api_client()
    owner = own_pod_owner(api, spec.namespace, os.environ.get("KFP_POD_NAME"))
    if owner:  # deleting the run's Workflow garbage-collects the server too
        spec = spec.model_copy(update={"owner": OwnerRef(**owner)})
    url = deploy_server(spec, api_client=api, run_id=run_id, out=lambda line: log("sampler", line))
    # adapters written under adapter_dir (on the model cache, which the server mounts at the same
    # path) are loaded at run time by rollout_backend=openai
    return json.dumps({"endpoint": url, "served_model": "sft", "adapter_dir": str(folder / "served")})


def rollout_values(rollout_backend: str, sampler: str) -> dict[str, Any]:
    """Config values of ``ppo`` / ``eval_policy`` for the pipeline's ``rollout_backend``: with
    ``openai``, the run's server (``sampler``: :func:`serve_sampler_task`'s JSON) and the folder
    on the model cache where it reads the adapters; nothing with ``hf``."""
    if rollout_backend != "openai":
        return {}
    server = json.loads(sampler or "{}")
    values: dict[str, Any] = {"rollout_backend": "openai", "endpoint": server.get("endpoint")}
    if server.get("adapter_dir"):
        values["served_adapter_dir"] = server["adapter_dir"]
    return values


def stop_sampler_task(mode: str, *, run_id: str, namespace: str = "", api_client: Any = None,
                      keep: bool = False) -> list[str]:
    """Exit handler: remove the vLLM server this run deployed (nothing for other modes, or when
    ``keep``: a later stage still needs it)."""
    if mode != "deploy" or keep:
        if keep and mode == "deploy":
            log("sampler", "kept up for the rollouts of ppo and eval_policy (rollout_backend=openai)")
        return []
    from salmon.cluster.executor import ClusterSettings
    from salmon.cluster.launch import kube_api_client
    from salmon.cluster.sampler import delete_servers

    ns = ClusterSettings(namespace=namespace).resolved_namespace()
    return delete_servers(api_client=api_client or kube_api_client(), namespace=ns, run_id=run_id,
                          out=lambda line: log("sampler", line))


def base_model_task(uri: str, out_dir: str, *, nano_pretrain_steps: int = 300, seed: int = 0) -> dict[str, Any]:
    """Materialise the base model into ``out_dir``: ``nano`` builds the nano model; a packaged
    model (``smollm2``) is prepared once into the model cache and copied; a local folder is
    copied; ``s3://bucket/prefix`` is downloaded (boto3); ``models:/<name>/<version>`` (or
    ``@<alias>``) is the Hugging Face folder in that registered version's artifacts. Returns a
    summary."""
    import shutil

    from salmon.core.io import atomic_dir

    if uri == "nano":
        from salmon.nano.model import NanoModelSpec, build_nano_model

        info = build_nano_model(out_dir, NanoModelSpec(seed=seed, pretrain_steps=nano_pretrain_steps),
                                log=lambda m: log("base_model", m))
        return {"source": "nano", **{k: info[k] for k in ("parameters", "vocab_size", "pretrain_loss_last")}}
    if uri.startswith("s3://"):
        from salmon.storage import download_prefix

        with atomic_dir(out_dir) as tmp:
            n = download_prefix(uri, tmp)
        return {"source": uri, "files": n}
    if uri.startswith("models:/"):
        from salmon.tracking.models import download_model_folder

        with atomic_dir(out_dir) as tmp:
            n = download_model_folder(uri, tmp)
        return {"source": uri, "files": n}
    if is_packaged(uri):  # prepared once into the model cache, then copied like a folder
        from salmon.base_models import prepare

        prepare(uri, out_dir, log=lambda m: log("base_model", m))
        return {"source": uri, "files": sum(1 for p in Path(out_dir).rglob("*") if p.is_file())}
    src = Path(uri)
    if not (src / "config.json").is_file():
        raise SalmonInputError(f"base model '{uri}'", "not a Hugging Face model folder (no config.json)",
                               f"give 'nano', {BASE_NAMES}, a local model folder, an s3:// prefix or a models:/ "
                               "URI")
    with atomic_dir(out_dir) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
    return {"source": uri, "files": sum(1 for p in Path(out_dir).rglob("*") if p.is_file())}
