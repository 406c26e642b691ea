"""The output guard: what a command writes is checked before any work, and never an input.

Every stage config marks its path fields (``INPUT``, ``OUTPUT``, ``OUTPUT_DIR`` in
:mod:`salmon.core.config`); :func:`check_config_paths` applies :func:`check_output` to each output
with every input of the config. Commands that are not stages (``rm score``, ``nano prompts``,
``pipeline compile``, ...) call :func:`check_output` on their own arguments. The rules:

- an output is never an input of the same command (their resolved paths differ), nor another
  output of it;
- a file output is not an existing folder, a folder output not an existing file;
- the nearest existing folder on the way to the output is a folder (not a file) the process
  may write into.

A URI (``s3://``, ``models:/``) or a name that is not a path (a shipped principle set, a
packaged model) is not a local input and is left alone.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from salmon.core.errors import SalmonInputError

Kind = Literal["file", "dir"]


def _local(value: str) -> Path | None:
    """The resolved local path a field value names, or None for URIs and bare names."""
    if not value or "://" in value or value.startswith(("models:/", "runs:/")):
        return None
    return Path(value).expanduser().resolve()


def path_fields(cfg: BaseModel, prefix: str = "") -> list[tuple[str, str, str]]:
    """``(role, dotted key, value)`` of every marked path field, nested configs and lists included."""
    found: list[tuple[str, str, str]] = []
    for name, info in type(cfg).model_fields.items():
        value = getattr(cfg, name)
        key = f"{prefix}{name}"
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        role = extra.get("path")
        if isinstance(role, str) and isinstance(value, str):
            found.append((role, key, value))
        elif isinstance(value, BaseModel):
            found += path_fields(value, key + ".")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    found += path_fields(item, f"{key}[{i}].")
    return found


def check_output(path: str | Path, kind: Kind, source: str, *, inputs: Iterable[tuple[str, str]] = (),
                 outputs: Iterable[tuple[str, str]] = ()) -> None:
    """Refuse an output that cannot be written, or that is one of ``inputs``, before any work.

    Args:
        path: what the command will write.
        kind: ``file`` or ``dir``.
        source: how the user named it, e.g. ``sample config key output`` or ``--output``.
        inputs: ``(how it was named, path)`` of everything the command reads.
        outputs: the same for everything else the command writes.

    Raises:
        SalmonInputError: naming ``source``, what is wrong and what to give instead.
    """
    target = Path(path).expanduser().resolve()
    where = f"{source}={path}"
    for name, value in inputs:
        local = _local(value)
        if local is not None and local == target:
            raise SalmonInputError(where, f"is also {name}, which this command reads: writing it would destroy "
                                   "the input", "write the output to another path")
    for name, value in outputs:
        local = _local(value)
        if local is not None and local == target:
            raise SalmonInputError(where, f"is also {name}, which this command also writes",
                                   "give each output its own path")
    if kind == "file" and target.is_dir():
        raise SalmonInputError(where, "is an existing folder, where a file is written", "give a file path")
    if kind == "dir" and target.exists() and not target.is_dir():
        raise SalmonInputError(where, "is an existing file, where a folder is written", "give a folder path")
    parent = target if kind == "dir" and target.is_dir() else target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise SalmonInputError(where, f"cannot be created: {parent} is a file, not a folder", "give a path under "
                               "a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SalmonInputError(where, f"cannot be written: the folder {parent} is not writable by this user",
                               "give a path in a writable folder")


def check_config_paths(cfg: BaseModel, stage: str) -> None:
    """Apply :func:`check_output` to every output of a stage config, against all its inputs and
    its other outputs."""
    fields = path_fields(cfg)
    inputs = [(f"{stage} config key {key}", value) for role, key, value in fields if role == "input"]
    outputs = [(key, value, role) for role, key, value in fields if role in ("output", "output_dir")]
    for i, (key, value, role) in enumerate(outputs):
        others = [(f"{stage} config key {k}", v) for j, (k, v, _) in enumerate(outputs) if j != i]
        check_output(value, "dir" if role == "output_dir" else "file", f"{stage} config key {key}",
                     inputs=inputs, outputs=others)

