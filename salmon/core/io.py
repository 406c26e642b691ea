"""Atomic writes with digests, and schema-checked JSONL.

Every output is written to a temporary name in the same folder, flushed to disk and then
renamed into place, so a reader never sees a half-written file. Published outputs carry their
SHA-256 in the format of ``sha256sum`` (``sha256sum -c`` checks them by hand):

- a JSONL data file ``X`` has ``X.sha256`` beside it, written after ``X`` (a stale one is
  removed before ``X`` is replaced);
- a folder (a model, an adapter, a checkpoint) has ``SHA256SUMS`` inside, listing every file,
  written before the folder is renamed into place.

Readers check a digest when there is one and refuse a file or folder that does not match it;
a JSONL file whose last line is cut off is refused as truncated whether or not it has a digest.
JSONL readers validate each line against its record type and fail with ``file:line: reason``.
"""

from __future__ import annotations

import hashlib
import json
import math
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

DIGEST_SUFFIX = ".sha256"
"""The suffix of the digest file written beside each published JSONL file."""
DIGEST_MANIFEST = "SHA256SUMS"
"""The digest list written inside each published folder."""
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json")
"""Any one of these makes a Hugging Face folder's tokenizer loadable (vocab.json with merges.txt)."""
_CHUNK = 1 << 20


def remove_stale_temps(target: str | Path) -> int:
    """Remove what a killed writer of ``target`` left: ``.<name>.*.tmp`` files and folders
    beside it. Returns how many were removed. (One writer per output is assumed, as for any
    stage output folder.)"""
    t = Path(target)
    if not t.parent.is_dir():
        return 0
    n = 0
    for stale in t.parent.glob(f".{t.name}.*.tmp"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
        n += 1
    return n


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success rename it to ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
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
    """A temporary folder beside ``path`` to fill; on success its ``SHA256SUMS`` is written and
    it replaces ``path``.

    On an exception the temporary folder is removed and ``path`` is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        write_dir_digests(tmp)
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
    """Write a JSON document atomically (indented, keys in insertion order). NaN and Infinity,
    which are not JSON, are refused (``ValueError``) before anything is written: a metric that
    measured nothing is written as null."""
    write_text(path, json.dumps(value, indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def non_finite(value: Any, where: str = "") -> list[str]:
    """Where NaN or an infinity sits in a nested value (dict keys and list indexes, dot-joined)."""
    if isinstance(value, float) and not math.isfinite(value):
        return [where or "(value)"]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in non_finite(v, f"{where}.{k}" if where else str(k))]
    if isinstance(value, list | tuple):
        return [p for i, v in enumerate(value) for p in non_finite(v, f"{where}[{i}]")]
    return []


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text}, which is not finite")
    return value


def _no_constant(name: str) -> float:
    raise ValueError(f"{name}, which is not a JSON number")


def finite_or_none(value: Any) -> Any:
    """``value`` with every NaN or infinite float (in nested dicts and lists) replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    return value


def record_line(record: BaseModel) -> str:
    """One JSONL line (with the newline) for a record."""
    return record.model_dump_json() + "\n"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def digest_path(path: str | Path) -> Path:
    """The digest file of a published JSONL file: ``<path>.sha256``."""
    p = Path(path)
    return p.with_name(p.name + DIGEST_SUFFIX)


def write_jsonl(path: str | Path, records: Iterable[BaseModel]) -> int:
    """Publish records as JSONL: the file atomically, then its ``.sha256``; returns how many
    records were written."""
    target = Path(path)
    digest_path(target).unlink(missing_ok=True)  # never leave an old digest beside new content
    h = hashlib.sha256()
    n = 0
    with atomic_open(target) as f:
        for record in records:
            line = record_line(record)
            f.write(line)
            h.update(line.encode("utf-8"))
            n += 1
    write_text(digest_path(target), f"{h.hexdigest()}  {target.name}\n")
    return n


def _recorded_sha256(digest_file: Path) -> str:
    """The hex digest from a ``sha256sum``-style line (``<hex>  <name>``)."""
    text = digest_file.read_text(encoding="utf-8", errors="replace").strip()
    value = text.split()[0] if text else ""
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise SalmonInputError(str(digest_file), "not a SHA-256 digest file",
                               "delete it, or rerun the stage that wrote the data beside it")
    return value


def check_file_digest(path: str | Path, data: bytes | None = None) -> bool:
    """Compare a file with its ``.sha256`` when it has one; returns whether one was checked.

    Raises:
        SalmonInputError: the content does not match the recorded digest.
    """
    p = Path(path)
    sidecar = digest_path(p)
    if not sidecar.is_file():
        return False
    recorded = _recorded_sha256(sidecar)
    actual = hashlib.sha256(data).hexdigest() if data is not None else _sha256_file(p)
    if actual != recorded:
        raise SalmonInputError(
            str(p), f"content does not match its digest {sidecar.name} (recorded {recorded[:12]}, "
            f"now {actual[:12]}): the file is truncated or was changed after it was written",
            "rerun the stage that wrote it; if you edited it on purpose, delete "
            f"{sidecar.name}")
    return True


def write_dir_digests(folder: str | Path) -> Path:
    """Write ``SHA256SUMS`` in ``folder`` listing every file below it (sorted relative paths)."""
    root = Path(folder)
    manifest = root / DIGEST_MANIFEST
    lines = [f"{_sha256_file(f)}  {f.relative_to(root).as_posix()}\n"
             for f in sorted(p for p in root.rglob("*") if p.is_file() and p != manifest)]
    write_text(manifest, "".join(lines))
    return manifest


_VERIFIED_DIRS: dict[Path, tuple[tuple[str, int, int], ...]] = {}
"""Folders already checked in this process, with the (name, size, mtime) of each listed file:
a model loaded several times (policy and reference, pre-check and load) is hashed once."""


def check_dir_digests(folder: str | Path) -> bool:
    """Check every file listed in a folder's ``SHA256SUMS``; returns whether there was one.

    Files added after publishing are ignored; a listed file that is missing or differs is an
    error. A folder checked before in this process whose listed files kept their size and
    modification time is not hashed again.

    Raises:
        SalmonInputError: a listed file is missing or its content differs.
    """
    root = Path(folder).resolve()
    manifest = root / DIGEST_MANIFEST
    if not manifest.is_file():
        return False
    fix = "rerun the stage that wrote it (the folder was damaged or changed after it was published)"
    listed: list[tuple[str, Path, str]] = []
    for lineno, line in enumerate(manifest.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        recorded, sep, name = line.partition("  ")
        rel = Path(name)
        if not sep or len(recorded) != 64 or rel.is_absolute() or ".." in rel.parts:
            raise SalmonInputError(f"{manifest}:{lineno}", "not a sha256sum line", fix)
        f = root / rel
        if not f.is_file():
            raise SalmonInputError(str(folder), f"{name} is listed in {DIGEST_MANIFEST} but missing", fix)
        listed.append((name, f, recorded))
    stamp = tuple((name, (st := f.stat()).st_size, st.st_mtime_ns) for name, f, _ in listed)
    if _VERIFIED_DIRS.get(root) == stamp:
        return True
    for name, f, recorded in listed:
        if _sha256_file(f) != recorded:
            raise SalmonInputError(str(folder), f"{name} does not match its digest in {DIGEST_MANIFEST}", fix)
    _VERIFIED_DIRS[root] = stamp
    return True


def _describe(error: ValidationError) -> str:
    parts = []
    for e in error.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(record)"
        parts.append(f"field '{loc}': {e['msg']}")
    return "; ".join(parts)


def iter_jsonl(path: str | Path, model: type[M], *, allow_truncated_tail: bool = False) -> Iterator[M]:
    """Yield validated records from a JSONL file (see :func:`_numbered_records`)."""
    for _, record in _numbered_records(path, model, allow_truncated_tail=allow_truncated_tail):
        yield record


def _numbered_records(path: str | Path, model: type[M], *,
                      allow_truncated_tail: bool = False) -> Iterator[tuple[int, M]]:
    """Yield ``(line number, validated record)`` from a JSONL file.

    Args:
        path: the file.
        model: the record type every line must match.
        allow_truncated_tail: skip an unterminated, unparsable last line instead of failing
            (used when resuming from a progress file that a killed process was writing; such a
            file has no digest).

    Raises:
        SalmonInputError: missing file, content that does not match its ``.sha256``, a cut-off
            last line, non-UTF-8 bytes, bad JSON or a schema mismatch, naming ``file:line``.
    """
    p = Path(path)
    if not p.is_file():
        raise SalmonInputError(str(p), "file not found", "check the path")
    with open(p, "rb") as f:
        data = f.read()
    if not allow_truncated_tail:
        check_file_digest(p, data)
    raw_lines = data.split(b"\n")
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
            obj = json.loads(text, parse_float=_finite_float, parse_constant=_no_constant)
        except ValueError as e:
            if not isinstance(e, json.JSONDecodeError):  # NaN, Infinity or a number too big for a float
                raise SalmonInputError(where, f"holds {e}", "write a finite number (or null where a field "
                                       "may be missing)") from None
            if lineno == last:  # no newline after it: the writer stopped in the middle of the line
                if allow_truncated_tail:
                    return
                raise SalmonInputError(where, f"the last line is cut off ({e.msg}): the file is truncated",
                                       "rerun the stage that wrote it") from None
            raise SalmonInputError(where, f"not valid JSON ({e.msg})",
                                   "each line must be one complete JSON object") from None
        if not isinstance(obj, dict):
            raise SalmonInputError(where, f"expected a JSON object, got {type(obj).__name__}",
                                   "each line must be one JSON object {...} (one record)")
        try:
            yield lineno, model.model_validate(obj)
        except ValidationError as e:
            raise SalmonInputError(where, f"not a valid {model.__name__}: {_describe(e)}",
                                   f"fix the record; its fields are those of salmon.core.records.{model.__name__}"
                                   ) from None


def read_jsonl(path: str | Path, model: type[M], *, allow_empty: bool = False) -> list[M]:
    """Read and validate a whole JSONL file; an empty file is an error unless allowed, and so is
    a record whose key (the record type's ``KEY`` fields, e.g. ``pair_id``) an earlier line has."""
    key_fields: tuple[str, ...] = getattr(model, "KEY", ())
    seen: dict[tuple[Any, ...], int] = {}
    records = []
    for lineno, record in _numbered_records(path, model):
        if key_fields:
            key = tuple(getattr(record, f) for f in key_fields)
            if key in seen:
                shown = ", ".join(f"{f} '{v}'" for f, v in zip(key_fields, key, strict=True))
                raise SalmonInputError(f"{path}:{lineno}", f"duplicate {shown} (first on line {seen[key]})",
                                       f"give every {model.__name__} its own id")
            seen[key] = lineno
        records.append(record)
    if not records and not allow_empty:
        raise SalmonInputError(str(path), f"no {model.__name__} records in the file",
                               "the file is empty; point to the output of the previous stage")
    return records
