"""The bad-input corpus of issue 7 (``tests/bad_inputs.py``), run through the real ``salmon`` command.

Every case must end with exit code 2 and one ``error:`` line, the last on stderr (only a
stage's ``[stage] ...`` progress lines may come before it; argparse-level misuse gives argparse's
usage and ``salmon ...: error:`` line instead), that names the input and says what to do, with no
traceback, and must leave no partial output: the paths it was told to write do not exist and its
folder holds no new file, hidden temporary files included, and no changed one (an input the case
names as its output keeps its bytes). ``docs/reliability.md`` carries the
corpus table; ``SALMON_UPDATE_GOLDEN=1`` rewrites it.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from bad_inputs import CASES, CATEGORIES, BadInput, Ctx, Setup, render_markdown

from salmon.core.errors import SalmonInputError

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "reliability.md"
BEGIN, END = "<!-- bad-inputs:begin -->", "<!-- bad-inputs:end -->"
PROGRESS = re.compile(r"^\[[a-z_]+\] ")
"""A stage's progress line on stderr (``[label] 24 pairs x ...``), allowed before the error line."""


@pytest.fixture(scope="session")
def bad_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A one-layer random Llama with the nano tokenizer and a 512-token window (seconds to build:
    no case needs a trained model, only a loadable one)."""
    pytest.importorskip("torch")
    from transformers import LlamaConfig, LlamaForCausalLM

    from salmon.nano.model import NanoModelSpec, build_tokenizer

    out = tmp_path_factory.mktemp("bad-models") / "model"
    tok = build_tokenizer(NanoModelSpec(vocab_size=600))
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=1, num_key_value_heads=1, head_dim=64, max_position_embeddings=512,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def bad_rm(bad_model: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A reward model folder on ``bad_model`` (full backbone, model_max_length 384)."""
    import torch

    from salmon.modeling import load_backbone, load_tokenizer
    from salmon.reward.model import RM_FORMAT, RMMeta, build_reward_model, save_reward_model

    out = tmp_path_factory.mktemp("bad-rms") / "rm"
    model = build_reward_model(load_backbone(bad_model, device=torch.device("cpu")), seed=1)
    meta = RMMeta(format=RM_FORMAT, base_model=bad_model, finetune="full", model_max_length=384, query_len=48,
                  response_len=64)
    save_reward_model(model, load_tokenizer(bad_model), meta, out)
    return str(out)


def snapshot(folder: Path) -> dict[str, str]:
    """Every path under ``folder`` (files and folders, hidden ones included) with the SHA-256 of
    each file's content: an input a case is told to overwrite must come out unchanged."""
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
            for p in folder.rglob("*")}


def rebind_log_streams() -> None:
    """Library loggers (transformers) keep the stderr of the test that imported them; point their
    stream handlers at this test's, so that what they print is captured here."""
    loggers = [logging.getLogger(), *(x for x in logging.root.manager.loggerDict.values()
                                      if isinstance(x, logging.Logger))]
    for logger in loggers:
        for handler in logger.handlers:
            if type(handler) is logging.StreamHandler and handler.stream is not sys.stdout:
                handler.stream = sys.stderr  # not setStream: it flushes the old, closed one


def run_case(case: BadInput, setup: Setup, capfd: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run one case; returns (exit code, stderr)."""
    if case.via == "call":
        assert setup.call is not None
        with pytest.raises(SalmonInputError) as raised:
            setup.call()
        return 2, f"error: {raised.value}\n"
    if case.via == "subprocess":
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        r = subprocess.run([sys.executable, "-m", setup.module, *setup.argv], capture_output=True, text=True,
                           cwd=REPO, env=env, timeout=120)
        return r.returncode, r.stderr
    from salmon.cli import main

    capfd.readouterr()
    rebind_log_streams()
    try:
        code = main(setup.argv)
    except SystemExit as e:  # argparse
        code = int(e.code) if isinstance(e.code, int) else 1
    return code, capfd.readouterr().err


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_clear_error_and_no_output(case: BadInput, tmp_path: Path,
                                                       request: pytest.FixtureRequest,
                                                       capfd: pytest.CaptureFixture[str]) -> None:
    """The case exits 2 with one error line naming the input and the fix, no traceback, and
    writes nothing: neither the outputs it was told to write nor any (hidden) temp file."""
    folder = tmp_path / "case"
    folder.mkdir()
    ctx = Ctx(folder, model=request.getfixturevalue("bad_model") if {"model", "rm"} & set(case.needs) else "",
              rm=request.getfixturevalue("bad_rm") if "rm" in case.needs else "")
    setup = case.build(ctx)
    before = snapshot(folder)

    code, err = run_case(case, setup, capfd)

    assert "Traceback" not in err, err
    assert code == 2, f"exit code {code}; stderr:\n{err}"
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    if case.usage:  # argparse: usage lines, then 'salmon ...: error: ...'
        assert lines[0].startswith("usage: "), err
        line = lines[-1]
        assert re.match(r"^\S.*: error: ", line), err
        usage = " ".join(lines[:-1])
        assert case.fix is not None and case.fix in usage, f"usage does not show {case.fix!r}:\n{err}"
    else:
        errors = [x for x in lines if x.startswith("error:")]
        assert len(errors) == 1 and lines[-1] == errors[0], f"not exactly one final error line:\n{err}"
        line = errors[0]
        others = [x for x in lines[:-1] if not PROGRESS.match(x)]
        assert not others, f"stderr has more than progress lines and the error:\n{err}"
        if case.fix is not None:
            assert case.fix in line, f"the fix {case.fix!r} is missing from: {line}"
        else:  # a documented gap: the message has no fix yet (see case.gap)
            assert case.gap, "a case without a fix must say where the fix belongs"
            assert not line.rstrip().endswith(")"), f"{case.id} now has a fix: set its fix substring"
    assert case.expect in line, f"{case.expect!r} is missing from: {line}"
    assert setup.names in line, f"the error does not name the input {setup.names!r}: {line}"

    for path in setup.outputs:
        assert not path.exists(), f"partial output {path}"
    after = snapshot(folder)
    assert after == before, f"files added or changed: {sorted(k for k in after if after.get(k) != before.get(k))}"


def test_corpus_covers_every_category_and_ids_are_unique() -> None:
    """Each category of issue 7 has cases, every case names a known category and a fix (or a
    gap), and ids are unique."""
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    for cat in CATEGORIES:
        assert sum(c.category == cat for c in CASES) >= 5, cat
    assert all(c.category in CATEGORIES for c in CASES)
    assert all(c.fix or c.gap for c in CASES)
    assert sum(c.via == "subprocess" for c in CASES) >= 3, "a few cases prove the real process's exit code"


def section(text: str) -> str:
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[start:end]


def test_reliability_doc_lists_the_corpus() -> None:
    """docs/reliability.md shows exactly the rendered corpus between its markers (regenerate with
    ``SALMON_UPDATE_GOLDEN=1 pytest tests/test_bad_inputs.py -k reliability_doc``)."""
    expected = "\n" + render_markdown() + "\n"
    text = DOC.read_text(encoding="utf-8")
    if os.environ.get("SALMON_UPDATE_GOLDEN"):
        start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
        text = text[:start] + expected + text[end:]
        DOC.write_text(text, encoding="utf-8")
    assert section(text) == expected, (
        "docs/reliability.md is out of date with tests/bad_inputs.py; regenerate with "
        "SALMON_UPDATE_GOLDEN=1 pytest tests/test_bad_inputs.py -k reliability_doc")


def test_render_markdown_counts_each_category() -> None:
    """The table has one row per category with its count, and a total."""
    table = render_markdown(CASES[:2])
    assert f"| {CASES[0].category} | 2 |" in table
    assert "| **all** | **2** | |" in table
    assert table.count("\n") == 2 + len(CATEGORIES) + 1

