"""Principle sets: the shipped files, the schema's errors and the CLI's exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from salmon.cli import main
from salmon.core.errors import SalmonInputError
from salmon.core.principles import available_sets, load_principle_set

EXPECTED_SIZES = {
    "reward_model": 11, "rl": 14, "interventions": 3, "harmless": 11, "honest": 8,
    "non_evasive": 9, "self_align": 17, "nano": 6,
}

def test_the_do_the_task_intervention_keeps_the_original_scope() -> None:
    """The method's second intervention line forbids step-by-step instructions and executable code
    outright (S:salmon_reward_model_prompt_v1.txt), not only those left "for the user" to follow
    or run; the project's wording keeps that scope."""
    pset = load_principle_set("interventions")
    line = next(p.definition for p in pset.principles if p.id == "do_the_task")
    assert "step-by-step instructions" in line and "executable code" in line and "pros and cons" in line
    assert "for the user" not in line
    assert pset.version == "1.1"


GOOD = {
    "name": "tiny", "version": "1", "kind": "rl", "description": "A test set.",
    "principles": [
        {"id": "alpha", "name": "Alpha", "definition": "Be alpha."},
        {"id": "beta", "name": "Beta", "definition": "Be beta.", "weight": 2},
    ],
}


def write_set(tmp_path: Path, data: object, name: str = "set.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_every_shipped_set_loads_with_the_expected_size() -> None:
    assert sorted(available_sets()) == sorted(EXPECTED_SIZES)
    for name, size in EXPECTED_SIZES.items():
        pset = load_principle_set(name)
        assert pset.name == name
        assert len(pset.principles) == size, name


def test_reward_model_set_has_negations_and_eight_training_dimensions() -> None:
    pset = load_principle_set("reward_model")
    assert all(p.negative_definition for p in pset.principles)
    assert sum(p.rm_training for p in pset.principles) == 8


def test_rl_set_weights_and_boosts() -> None:
    pset = load_principle_set("rl")
    boosted = {p.id: p.boosts for p in pset.principles if p.boosts}
    assert boosted["ethical"] == {"red_teaming": 128}
    assert boosted["consistent_reasoning"] == {"reasoning": 128}
    assert boosted["numerical_sensitive"] == {"reasoning": 128}
    assert all(p.weight > 0 for p in pset.principles)


def test_digest_is_stable_and_content_sensitive(tmp_path: Path) -> None:
    a = load_principle_set(write_set(tmp_path, GOOD, "a.yaml"))
    # same content, different key order and formatting: same digest
    reordered = {k: GOOD[k] for k in reversed(list(GOOD))}
    b = load_principle_set(write_set(tmp_path, reordered, "b.yaml"))
    assert a.digest() == b.digest()
    assert a.digest().startswith("sha256:")
    changed = json.loads(json.dumps(GOOD))
    changed["principles"][0]["definition"] = "Be alpha, always."
    c = load_principle_set(write_set(tmp_path, changed, "c.yaml"))
    assert c.digest() != a.digest()


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["principles"][0].pop("definition"), "principles.0.definition"),
        (lambda d: d["principles"][1].update(id="alpha"), "duplicate id 'alpha'"),
        (lambda d: d["principles"][1].update(weight="heavy"), "principles.1.weight"),
        (lambda d: d.update(principles=[]), "principles"),
        (lambda d: d["principles"][0].update(colour="red"), "principles.0.colour"),
        (lambda d: d.update(kind="reward_model"), "principles.0.negative_definition"),
    ],
    ids=["missing-field", "duplicate-id", "wrong-type", "empty-set", "unknown-key", "missing-negation"],
)
def test_bad_files_name_the_file_and_the_field(tmp_path: Path, mutate, field: str) -> None:  # type: ignore[no-untyped-def]
    data = json.loads(json.dumps(GOOD))
    mutate(data)
    path = write_set(tmp_path, data)
    with pytest.raises(SalmonInputError) as err:
        load_principle_set(path)
    assert str(path) in str(err.value)
    assert field in str(err.value)


def test_not_yaml_and_unknown_set_are_clear_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SalmonInputError, match="bad.yaml"):
        load_principle_set(bad)
    with pytest.raises(SalmonInputError, match="no such set"):
        load_principle_set("no_such_set")


def test_cli_validate_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write_set(tmp_path, GOOD, "good.yaml")
    assert main(["principles", "validate", str(good)]) == 0
    bad_data = json.loads(json.dumps(GOOD))
    bad_data["principles"][0]["colour"] = "red"
    bad = write_set(tmp_path, bad_data, "bad.yaml")
    assert main(["principles", "validate", str(good), str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "colour" in err and "Traceback" not in err


def test_cli_show_json_round_trips(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["principles", "show", "nano", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [p["id"] for p in shown["principles"]] == load_principle_set("nano").ids()


def test_cli_error_is_one_line_without_traceback_in_a_subprocess(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "salmon", "principles", "show", "nope"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0
    assert "nope" in proc.stderr and "Traceback" not in proc.stderr
