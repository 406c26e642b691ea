"""Atomic writes and schema-checked JSONL.

Every output is written to a temporary name in the same folder, flushed to disk and then
renamed into place, so a reader never sees a half-written file. JSONL readers validate each
line against its record type and fail with ``file:line: reason``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

from pydantic import BaseModel, ValidationError

from salmon.core.errors import SalmonInputError

M = TypeVar("M", bound=BaseModel)


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success rename it to ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """A temporary folder beside ``path`` to fill; on success it replaces ``path``.

    On an exception the temporary folder is removed and ``path`` is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_open(path) as f:
        f.write(text)


def write_json(path: str | Path, value: Any) -> None:
    """Write a JSON document atomically (indented, keys in insertion order)."""
    write_text(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def record_line(record: BaseModel) -> str:
    """One JSONL line (with the newline) for a record."""
    return record.model_dump_json() + "\n"


def write_jsonl(path: str | Path, records: Iterable[BaseModel]) -> int:
    """Write records as JSONL atomically; returns how many were written."""
    n = 0
    with atomic_open(path) as f:
        for record in records:
            f.write(record_line(record))
            n += 1
    return n


def _describe(error: ValidationError) -> str:
    parts = []
    for e in error.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(record)"
        parts.append(f"field '{loc}': {e['msg']}")
    return "; ".join(parts)


def iter_jsonl(path: str | Path, model: type[M], *, allow_truncated_tail: bool = False) -> Iterator[M]:
    """Yield validated records from a JSONL file.

    Args:
        path: the file.
        model: the record type every line must match.
        allow_truncated_tail: skip an unterminated, unparsable last line instead of failing
            (used when resuming from a progress file that a killed process was writing).

    Raises:
        SalmonInputError: missing file, non-UTF-8 bytes, bad JSON or a schema mismatch,
            naming ``file:line``.
    """
    p = Path(path)
    if not p.is_file():
        raise SalmonInputError(str(p), "file not found", "check the path")
    with open(p, "rb") as f:
        raw_lines = f.read().split(b"\n")
    last = len(raw_lines)
    for lineno, raw in enumerate(raw_lines, start=1):
        if not raw.strip():
            continue
        where = f"{p}:{lineno}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SalmonInputError(where, f"not UTF-8 ({e.reason} at byte {e.start})",
                                   "re-encode the file as UTF-8") from None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            if allow_truncated_tail and lineno == last:
                return
            raise SalmonInputError(where, f"not valid JSON ({e.msg})",
                                   "each line must be one complete JSON object") from None
        if not isinstance(obj, dict):
            raise SalmonInputError(where, f"expected a JSON object, got {type(obj).__name__}")
        try:
            yield model.model_validate(obj)
        except ValidationError as e:
            raise SalmonInputError(where, f"not a valid {model.__name__}: {_describe(e)}") from None


def read_jsonl(path: str | Path, model: type[M], *, allow_empty: bool = False) -> list[M]:
    """Read and validate a whole JSONL file; an empty file is an error unless allowed."""
    records = list(iter_jsonl(path, model))
    if not records and not allow_empty:
        raise SalmonInputError(str(path), f"no {model.__name__} records in the file",
                               "the file is empty; point to the output of the previous stage")
    return records
