"""Records and JSONL I/O: validation with file:line, atomic writes, preference export."""

from __future__ import annotations

from pathlib import Path

import pytest

from salmon.core.errors import SalmonInputError
from salmon.core.io import (
    atomic_dir,
    atomic_open,
    check_dir_digests,
    digest_path,
    iter_jsonl,
    read_jsonl,
    write_jsonl,
    write_text,
)
from salmon.core.records import (
    Judgement,
    PromptRecord,
    ResponsePair,
    RMInstance,
    RMPrinciple,
    to_preference_export,
)


def pair(i: int) -> ResponsePair:
    prompt = PromptRecord(prompt_id=f"p{i}", instruction=f"Question {i}?")
    return ResponsePair(pair_id=f"p{i}/pair", prompt=prompt, output_1="one", output_2="two")


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    assert write_jsonl(path, [pair(0), pair(1)]) == 2
    assert read_jsonl(path, ResponsePair) == [pair(0), pair(1)]


def test_bad_json_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, [pair(0)])
    digest_path(path).unlink()  # an edited file: without its digest, the lines are checked
    with open(path, "a") as f:
        f.write("{not json\n")
    with pytest.raises(SalmonInputError, match=r"pairs\.jsonl:2: not valid JSON"):
        read_jsonl(path, ResponsePair)


def test_schema_mismatch_names_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    path.write_text('{"pair_id": "x", "principle_id": "concise", "delta_12": "big", '
                    '"delta_21": 1.0, "backend": "rules"}\n')
    with pytest.raises(SalmonInputError, match=r"j\.jsonl:1: .*delta_12"):
        read_jsonl(path, Judgement)


def test_unknown_field_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt_id": "a", "instruction": "hi", "colour": "red"}\n')
    with pytest.raises(SalmonInputError, match="colour"):
        read_jsonl(path, PromptRecord)


def test_empty_file_is_an_error_unless_allowed(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(SalmonInputError, match="no ResponsePair records"):
        read_jsonl(path, ResponsePair)
    assert read_jsonl(path, ResponsePair, allow_empty=True) == []


def test_truncated_tail_is_skipped_only_when_allowed(tmp_path: Path) -> None:
    path = tmp_path / "partial.jsonl"
    write_jsonl(path, [pair(0)])
    with open(path, "a") as f:
        f.write('{"pair_id": "p1/pa')
    assert [p.pair_id for p in iter_jsonl(path, ResponsePair, allow_truncated_tail=True)] == ["p0/pair"]
    with pytest.raises(SalmonInputError, match="does not match its digest"):
        read_jsonl(path, ResponsePair)
    digest_path(path).unlink()  # without a digest the cut-off line itself is recognised
    with pytest.raises(SalmonInputError, match=r"partial\.jsonl:2: the last line is cut off .* truncated"):
        read_jsonl(path, ResponsePair)


def test_published_jsonl_carries_a_sha256sum_digest(tmp_path: Path) -> None:
    """The digest beside the file is the SHA-256 of its bytes in ``sha256sum`` format."""
    import hashlib

    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, [pair(0), pair(1)])
    assert digest_path(path).read_text() == f"{hashlib.sha256(path.read_bytes()).hexdigest()}  pairs.jsonl\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.jsonl", "pairs.jsonl.sha256"]


def test_a_file_cut_at_a_line_boundary_is_caught_only_by_its_digest(tmp_path: Path) -> None:
    """Dropping whole lines leaves valid JSONL: the digest is what tells it from the original."""
    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, [pair(0), pair(1), pair(2)])
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:2]))
    with pytest.raises(SalmonInputError, match=r"pairs\.jsonl: content does not match its digest "
                                               r"pairs\.jsonl\.sha256 .*rerun the stage"):
        read_jsonl(path, ResponsePair)
    digest_path(path).write_text("not a digest\n")
    with pytest.raises(SalmonInputError, match="not a SHA-256 digest file"):
        read_jsonl(path, ResponsePair)


def test_republishing_replaces_the_digest_with_the_new_one(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, [pair(0)])
    write_jsonl(path, [pair(1), pair(2)])
    assert [p.pair_id for p in read_jsonl(path, ResponsePair)] == ["p1/pair", "p2/pair"]


def test_a_published_folder_lists_its_files_and_refuses_damage(tmp_path: Path) -> None:
    """SHA256SUMS inside a published folder: a changed, truncated or missing file is refused."""
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "weights.bin").write_bytes(b"\x00" * 1000)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "config.json").write_text("{}")
    listed = [line.split("  ")[1] for line in (target / "SHA256SUMS").read_text().splitlines()]
    assert listed == ["sub/config.json", "weights.bin"]
    assert check_dir_digests(target) is True
    (target / "extra.txt").write_text("added later")  # files added after publishing are ignored
    assert check_dir_digests(target) is True
    (target / "weights.bin").write_bytes(b"\x00" * 999)
    with pytest.raises(SalmonInputError, match="weights.bin does not match its digest in SHA256SUMS"):
        check_dir_digests(target)
    (target / "weights.bin").unlink()
    with pytest.raises(SalmonInputError, match="weights.bin is listed in SHA256SUMS but missing"):
        check_dir_digests(target)
    assert check_dir_digests(tmp_path) is False  # a folder without SHA256SUMS is not checked


def test_atomic_write_leaves_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    write_text(path, "old")
    with pytest.raises(RuntimeError), atomic_open(path) as f:
        f.write("half of the new")
        raise RuntimeError("crash mid-write")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_judgement_consistency_and_label() -> None:
    j = Judgement(pair_id="x", principle_id="c", delta_12=1.0, delta_21=2.0, backend="rules")
    assert j.consistent and j.label == 1
    tie = Judgement(pair_id="x", principle_id="c", delta_12=1.0, delta_21=-2.0, backend="rules")
    assert not tie.consistent and tie.label == 0


def test_preference_export_orders_chosen_and_rejected() -> None:
    base = dict(instance_id="i", pair_id="p", augmentation_pass=0, instruction="Q?",
                output_1="first", output_2="second",
                principles=[RMPrinciple(principle_id="c", negated=False, text="Be brief.", score=1.0)],
                dominant_index=0, noise_flip=False, rule_flag=False)
    one = to_preference_export(RMInstance(**base, preference=1))  # type: ignore[arg-type]
    two = to_preference_export(RMInstance(**base, preference=2))  # type: ignore[arg-type]
    assert (one.chosen, one.rejected) == ("first", "second")
    assert (two.chosen, two.rejected) == ("second", "first")
    assert one.prompt == "Q?"


def test_atomic_dir_replaces_on_success_and_leaves_the_target_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("one")
    assert (target / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("two")
            raise RuntimeError("killed")
    assert (target / "a.txt").read_text() == "one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp folder left behind


def test_stale_temporary_files_of_a_killed_writer_are_removed(tmp_path: Path) -> None:
    """A writer killed mid-write leaves ``.<name>.*.tmp``; the next writer of that name removes
    it (and only it)."""
    (tmp_path / ".pairs.jsonl.abc123.tmp").write_text('{"half": ')
    (tmp_path / ".model.xyz.tmp").mkdir()
    (tmp_path / ".model.xyz.tmp" / "weights.bin").write_bytes(b"\x00")
    (tmp_path / ".other.jsonl.def.tmp").write_text("not ours")
    write_jsonl(tmp_path / "pairs.jsonl", [pair(0)])
    with atomic_dir(tmp_path / "model") as tmp:
        (tmp / "a.txt").write_text("one")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".other.jsonl.def.tmp", "model", "pairs.jsonl", "pairs.jsonl.sha256"]


def test_a_checked_folder_is_hashed_once_until_a_file_changes(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A model loaded several times in one process is hashed once; a rewrite is hashed again."""
    import salmon.core.io as io

    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "weights.bin").write_bytes(b"\x01" * 100)
    hashed: list[Path] = []
    real = io._sha256_file
    monkeypatch.setattr(io, "_sha256_file", lambda p: hashed.append(p) or real(p))
    assert check_dir_digests(target) and check_dir_digests(target)
    assert len(hashed) == 1
    (target / "weights.bin").write_bytes(b"\x02" * 100)  # same size, new content and mtime
    with pytest.raises(SalmonInputError, match="weights.bin does not match its digest"):
        check_dir_digests(target)
