"""``pmp_data``: HH-RLHF and SHP files to train_rm's PMP pairs (parsing, the SHP filter, label
orientation, dedupe, limits, bad input, S3), a nano train_rm run on them, and the pipeline path
(``pmp_sources`` -> the pmp_data task -> train_rm's ``pmp_data``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from salmon.cli import main
from salmon.core.io import digest_path, read_jsonl
from salmon.core.records import RMInstance


def _hh(prefix: str, chosen: str, rejected: str, rejected_prefix: str | None = None) -> dict[str, str]:
    """An HH-RLHF line: two transcripts that end in different final assistant turns."""
    return {"chosen": f"{prefix}\n\nAssistant: {chosen}",
            "rejected": f"{prefix if rejected_prefix is None else rejected_prefix}\n\nAssistant: {rejected}"}


def _shp(history: str, a: str, b: str, labels: int, score_ratio: float) -> dict[str, Any]:
    return {"post_id": "x1", "domain": "askscience_train", "history": history, "human_ref_A": a,
            "human_ref_B": b, "labels": labels, "score_ratio": score_ratio, "upvote_ratio": 0.9}


def _write(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


MULTI_TURN = "\n\nHuman: What is a good soup for winter?\n\nAssistant: Which flavours do you like?\n\nHuman: Tomato."
HH_ROWS = [
    _hh(MULTI_TURN, "Roast tomatoes with garlic, then blend them with stock.", "Soup is a liquid food."),
    _hh("\n\nHuman: How do I boil an egg?", "Put it in boiling water for eight minutes.", "Eggs come from hens."),
    # the rejected transcript has another earlier human turn: not the same conversation
    _hh("\n\nHuman: Name a planet.", "Mars.", "Pluto.", rejected_prefix="\n\nHuman: Name a dwarf planet."),
    _hh("\n\nHuman: Say hi.", "Hi!", "   "),                    # an empty final answer
    _hh("\n\nHuman: Count to two.", "One, two.", "One, two."),  # identical answers
    {"chosen": "no turns at all", "rejected": "none here either"},
]
SHP_ROWS = [
    _shp("Why is the sky blue?", "Rayleigh scattering of sunlight.", "Because it is.", labels=1, score_ratio=2.5),
    _shp("Why do cats purr?", "Nobody knows anything.", "Purring comes from the larynx muscles.", labels=0,
         score_ratio=3.0),
    _shp("Is the moon hollow?", "No, it is solid rock.", "Maybe.", labels=1, score_ratio=2.0),  # not > 2
    _shp("Why is ice slippery?", "A thin water layer.", "Ice.", labels=1, score_ratio=1.2),
]


def _run(tmp_path: Path, sources: list[dict[str, Any]], *extra: str, out: str = "pmp.jsonl",
         capsys: pytest.CaptureFixture[str] | None = None) -> tuple[int, list[RMInstance], dict[str, Any]]:
    """``salmon pmp_data`` on the sources; the exit code, the pairs written and the metrics."""
    output = tmp_path / out
    code = main(["pmp_data", f"sources={json.dumps(sources)}", f"output={output}", *extra])
    metrics = json.loads(capsys.readouterr().out)["metrics"] if capsys is not None and code == 0 else {}
    return code, (read_jsonl(output, RMInstance) if code == 0 else []), metrics


def test_hh_rlhf_lines_become_conversation_chosen_rejected(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    hh = _write(tmp_path / "hh.jsonl", HH_ROWS)
    code, pairs, metrics = _run(tmp_path, [{"format": "hh_rlhf", "uri": str(hh)}], "shuffle=false", capsys=capsys)
    assert code == 0 and len(pairs) == 2
    multi, single = pairs
    assert multi.instruction == ("Human: What is a good soup for winter?\n\nAssistant: Which flavours do you "
                                 "like?\n\nHuman: Tomato.")
    assert multi.output_1 == "Roast tomatoes with garlic, then blend them with stock."
    assert multi.output_2 == "Soup is a liquid food."
    assert single.instruction == "How do I boil an egg?"  # one human turn: its text alone
    assert all(p.preference == 1 and p.principles == [] and p.augmentation_pass == 0 for p in pairs)
    assert metrics["sources"]["source_0"] == {
        "uri": str(hh), "format": "hh_rlhf", "read": 6, "kept": 2,
        "dropped": {"different_conversation": 1, "empty_answer": 1, "identical": 1, "no_assistant_turn": 1}}
    assert metrics["pairs"] == 2 and metrics["dropped_identical"] == 1 and metrics["by_format"] == {"hh_rlhf": 2}


def test_shp_keeps_score_ratio_above_2_and_puts_the_preferred_comment_first(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shp = _write(tmp_path / "shp.jsonl", SHP_ROWS)
    code, pairs, metrics = _run(tmp_path, [{"format": "shp", "uri": str(shp)}], "shuffle=false", capsys=capsys)
    assert code == 0
    assert [(p.instruction, p.output_1, p.output_2, p.preference) for p in pairs] == [
        ("Why is the sky blue?", "Rayleigh scattering of sunlight.", "Because it is.", 1),       # labels 1: A
        ("Why do cats purr?", "Purring comes from the larynx muscles.", "Nobody knows anything.", 1),  # 0: B
    ]
    assert metrics["sources"]["source_0"]["dropped"] == {"low_score_ratio": 2}  # 2.0 (not > 2) and 1.2
    code, pairs, _ = _run(tmp_path, [{"format": "shp", "uri": str(shp)}], "shp_min_score_ratio=1.5", out="b.jsonl")
    assert code == 0 and len(pairs) == 3


def test_dedupe_limit_max_pairs_and_a_seeded_shuffle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [_hh(f"\n\nHuman: Question {i}?", f"Good answer {i}.", f"Bad answer {i}.") for i in range(8)]
    a = _write(tmp_path / "a.jsonl", rows)
    b = _write(tmp_path / "b.jsonl", rows[:3] + [rows[0]])  # all seen in a, one twice
    both = [{"format": "hh_rlhf", "uri": str(a)}, {"format": "hh_rlhf", "uri": str(b)}]
    code, pairs, metrics = _run(tmp_path, both, capsys=capsys)
    assert code == 0 and len(pairs) == 8 and metrics["sources"]["source_1"]["dropped"] == {"duplicate": 4}
    assert len({p.instance_id for p in pairs}) == 8
    code, kept, _ = _run(tmp_path, both, "dedupe=false", out="all.jsonl")
    assert code == 0 and len(kept) == 12 and len({p.instance_id for p in kept}) == 12  # ids stay unique
    code, limited, _ = _run(tmp_path, [{"format": "hh_rlhf", "uri": str(a), "limit": 3}], "shuffle=false",
                            out="limited.jsonl")
    assert code == 0 and [p.output_1 for p in limited] == ["Good answer 0.", "Good answer 1.", "Good answer 2."]
    one = [{"format": "hh_rlhf", "uri": str(a)}]
    runs = [_run(tmp_path, one, f"seed={s}", "max_pairs=5", out=f"s{s}-{i}.jsonl")[1]
            for s, i in ((1, 0), (1, 1), (2, 0))]
    assert len(runs[0]) == 5 and runs[0] == runs[1] and runs[0] != runs[2]
    assert {p.output_1 for p in runs[0]} < {p.output_1 for p in pairs}


def test_the_output_is_what_train_rm_reads_as_pmp_data(tmp_path: Path) -> None:
    from salmon.core.config import TrainRMConfig, build_config
    from salmon.stages.train_rm import phases

    hh, shp = _write(tmp_path / "hh.jsonl", HH_ROWS), _write(tmp_path / "shp.jsonl", SHP_ROWS)
    code, pairs, _ = _run(tmp_path, [{"format": "hh_rlhf", "uri": str(hh)}, {"format": "shp", "uri": str(shp)}])
    assert code == 0 and len(pairs) == 4 and digest_path(tmp_path / "pmp.jsonl").is_file()
    cfg = build_config(TrainRMConfig, stage="train_rm", values={
        "instances": "i.jsonl", "base_model": "m", "output_dir": "o", "pmp_data": str(tmp_path / "pmp.jsonl")})
    first = phases(cfg)[0]
    assert first.name == "pmp" and read_jsonl(first.data, RMInstance) == pairs


@pytest.mark.parametrize(("fmt", "line", "says"), [
    ("hh_rlhf", "{not json", "not valid JSON"),
    ("hh_rlhf", '["chosen", "rejected"]', "expected a JSON object"),
    ("hh_rlhf", '{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b"}', "missing key rejected"),
    ("hh_rlhf", '{"chosen": 1, "rejected": "x"}', "key chosen must be a string"),
    ("shp", '{"history": "h", "human_ref_A": "a", "human_ref_B": "b", "labels": 1}', "missing key score_ratio"),
    ("shp", '{"history": "h", "human_ref_A": "a", "human_ref_B": "b", "labels": 1, "score_ratio": NaN}',
     "NaN, which is not a JSON number"),
    ("shp", '{"history": "h", "human_ref_A": "a", "human_ref_B": "b", "labels": 1, "score_ratio": Infinity}',
     "Infinity, which is not a JSON number"),
    ("shp", '{"history": "h", "human_ref_A": "a", "human_ref_B": "b", "labels": 1, "score_ratio": 1e999}',
     "not finite"),
    ("shp", '{"history": "h", "human_ref_A": "a", "human_ref_B": "b", "labels": "1", "score_ratio": 3}',
     "labels must be 0 or 1"),
    ("shp", '{"history": "h", "human_ref_A": "a", "human_ref_B": "b", "labels": 1, "score_ratio": "3"}',
     "score_ratio must be a number"),
])
def test_a_bad_line_names_file_and_line_exits_2_and_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str, line: str, says: str) -> None:
    good = json.dumps(HH_ROWS[0] if fmt == "hh_rlhf" else SHP_ROWS[0])
    path = tmp_path / "data.jsonl"
    path.write_text(f"{good}\n{line}\n{good}\n", encoding="utf-8")
    code, _, _ = _run(tmp_path, [{"format": fmt, "uri": str(path)}])
    err = capsys.readouterr().err
    assert code == 2 and f"error: {path}:2: " in err and says in err, err
    assert "Traceback" not in err and not (tmp_path / "pmp.jsonl").exists()


@pytest.mark.parametrize(("sources", "says"), [
    ([{"format": "hh_rlhf", "uri": "{missing}"}], "file not found"),
    ([{"format": "oasst", "uri": "{missing}"}], "sources.0.format"),
    ([{"uri": "{missing}"}], "missing required key 'sources.0.format'"),
    ([], "sources"),
])
def test_bad_sources_exit_2_and_write_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              sources: list[dict[str, str]], says: str) -> None:
    missing = str(tmp_path / "nowhere.jsonl")
    given = [{k: v.format(missing=missing) for k, v in s.items()} for s in sources]
    code, _, _ = _run(tmp_path, given)
    err = capsys.readouterr().err
    assert code == 2 and says in err and err.startswith("error: "), err
    assert not (tmp_path / "pmp.jsonl").exists()


def test_no_surviving_pair_is_an_input_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shp = _write(tmp_path / "shp.jsonl", SHP_ROWS[2:])
    code, _, _ = _run(tmp_path, [{"format": "shp", "uri": str(shp)}])
    assert code == 2 and "no pair survived" in capsys.readouterr().err and not (tmp_path / "pmp.jsonl").exists()


@pytest.fixture()
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1, stopped by PID."""
    pytest.importorskip("moto")
    from servers import moto_server

    with moto_server() as url:
        yield url


def test_s3_source(tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str]) -> None:
    import boto3

    for k, v in {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="prefs")
    client.put_object(Bucket="prefs", Key="shp/train.jsonl",
                      Body="".join(json.dumps(r) + "\n" for r in SHP_ROWS).encode())
    code, pairs, _ = _run(tmp_path, [{"format": "shp", "uri": "s3://prefs/shp/train.jsonl"}])
    assert code == 0 and len(pairs) == 2
    code, _, _ = _run(tmp_path, [{"format": "shp", "uri": "s3://prefs/shp/missing.jsonl"}], out="x.jsonl")
    assert code == 2 and "cannot read the object" in capsys.readouterr().err


def _nano_instances(tmp_path: Path, n: int) -> Path:
    """Principle-conditioned RM instances of the nano world (the FT phase's data)."""
    from salmon.core.aggregate import AggregateParams, aggregate, index_judgements
    from salmon.core.io import write_jsonl
    from salmon.core.principles import load_principle_set
    from salmon.judge.rules import judge_pairs_rules
    from salmon.nano.world import make_pairs, make_prompts

    pset = load_principle_set("nano")
    pairs = make_pairs(make_prompts(n, seed=8), seed=9)
    judged = index_judgements(judge_pairs_rules(pairs, pset.ids()))
    inst, _ = aggregate(pairs, judged, pset, AggregateParams(dimensions=tuple(pset.ids()), passes=1))
    path = tmp_path / "instances.jsonl"
    write_jsonl(path, inst)
    return path


def test_train_rm_runs_its_pmp_phase_on_the_stage_output(tmp_path: Path, tiny_model: str) -> None:
    from salmon.core.config import TrainRMConfig, build_config
    from salmon.stages.train_rm import run

    rows = [_hh(f"\n\nHuman: Tell me fact number {i}.", f"Fact {i} is true and useful.", "No.") for i in range(12)]
    code, _, _ = _run(tmp_path, [{"format": "hh_rlhf", "uri": str(_write(tmp_path / "hh.jsonl", rows))}])
    assert code == 0
    values = dict(instances=str(_nano_instances(tmp_path, 8)), base_model=tiny_model, output_dir=str(tmp_path / "rm"),
                  finetune="lora", lora_r=4, batch_size=4, micro_batch_size=4, save_every=100, log_every=1,
                  learning_rate=1e-3, epochs=0.5, model_max_length=256, query_len=32, response_len=96,
                  pmp_data=str(tmp_path / "pmp.jsonl"), pmp_epochs=1.0, pmp_learning_rate=1e-3,
                  pmp_model_max_length=256, pmp_query_len=64, pmp_response_len=96)
    result = run(build_config(TrainRMConfig, stage="train_rm", values=values))
    log = [json.loads(x) for x in Path(result.outputs["train_log"]).read_text().splitlines()]
    assert [e["phase"] for e in log] == ["pmp", "pmp", "pmp", "ft"]  # 12 pairs in steps of 4, then FT
    assert result.metrics["finished"] is True


# ----------------------------------------------------------------------------- the pipeline


def test_the_pipeline_runs_pmp_data_and_hands_its_pairs_to_train_rm() -> None:
    """pmp_sources reaches plan (checked there) and the pmp_data task, whose pairs are train_rm's
    pmp_data input; register reads its result (the golden file is the compiled pipeline)."""
    import yaml

    spec = next(yaml.safe_load_all((Path(__file__).parent / "golden" / "salmon.yaml").read_text()))
    root = spec["root"]
    assert root["inputDefinitions"]["parameters"]["pmp_sources"]["defaultValue"] == ""
    tasks = root["dag"]["tasks"]
    pmp = tasks["pmp-data"]["inputs"]["parameters"]
    assert pmp["sources"] == {"componentInputParameter": "pmp_sources"}
    assert pmp["plan"]["taskOutputParameter"] == {"outputParameterKey": "pmp_data", "producerTask": "plan"}
    assert tasks["plan"]["inputs"]["parameters"]["pmp_sources"] == {"componentInputParameter": "pmp_sources"}
    assert tasks["train-rm"]["inputs"]["artifacts"]["pmp_data"]["taskOutputArtifact"] == {
        "outputArtifactKey": "pairs", "producerTask": "pmp-data"}
    assert tasks["register"]["inputs"]["parameters"]["pmp_data"]["taskOutputParameter"]["producerTask"] == "pmp-data"


def test_pmp_sources_are_checked_before_any_work() -> None:
    from salmon.core.errors import SalmonInputError
    from salmon.core.pmp import parse_source_spec
    from salmon.tasks.params import validate_pipeline_params

    assert parse_source_spec(" hh_rlhf:s3://data/hh/train.jsonl , shp:/mnt/models/shp.jsonl,") == [
        {"format": "hh_rlhf", "uri": "s3://data/hh/train.jsonl"}, {"format": "shp", "uri": "/mnt/models/shp.jsonl"}]
    assert parse_source_spec("") == []
    validate_pipeline_params({"preset": "nano", "pmp_sources": "hh_rlhf:s3://data/hh/train.jsonl"})
    for spec, says in (("oasst:/data/o.jsonl", "not FORMAT:URI"), ("/data/hh.jsonl", "not FORMAT:URI"),
                       ("shp:https://example.org/shp.jsonl", "not a local path or s3:// URI"),
                       ("shp:s3://bucket-only", "not an s3://bucket/key URI")):
        with pytest.raises(SalmonInputError, match=says) as e:
            validate_pipeline_params({"pmp_sources": spec})
        assert str(e.value).startswith("pipeline parameter pmp_sources=")
    deepspeed = {"train_rm": {"deepspeed": "zero2"}}
    with pytest.raises(SalmonInputError, match="train_rm trains with deepspeed=zero2, and its PMP phase runs "
                                               "single-process only"):
        validate_pipeline_params({"preset": "nano", "pmp_sources": "shp:/d/shp.jsonl", "stage_overrides": deepspeed})
    validate_pipeline_params({"preset": "nano", "pmp_sources": "", "stage_overrides": deepspeed})  # no PMP: fine


@dataclass
class Art:
    """A KFP artifact as the component bodies see one: a path and a metadata dict."""

    path: str
    metadata: dict[str, Any] = field(default_factory=dict)


def test_without_sources_the_task_writes_an_empty_file_and_train_rm_skips_pmp(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The component bodies: no pmp_sources gives an empty pairs file, no tracking run and no
    pmp_data for train_rm; pairs on disk become train_rm's pmp_data (and a logged input)."""
    pytest.importorskip("kfp")
    import components.stages as c
    import salmon.tasks.run

    pairs = Art(str(tmp_path / "pmp" / "pairs"))
    assert c.pmp_data.python_func(plan="", sources=" ", seed=0, pairs=pairs) == ""
    assert Path(pairs.path).read_text() == "" and pairs.metadata["rows"] == 0
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(salmon.tasks.run, "run_stage_task", lambda stage, **kw: calls.append(kw) or "{}")
    common = dict(plan="", executor="local", instances=Art("i.jsonl"), base_model=Art("m"),
                  reward_model=Art("rm"), metrics=Art("metrics"), job_manifest=Art("job"))
    c.train_rm.python_func(pmp_data=pairs, **common)
    assert "pmp_data" not in calls[0]["values"] and "pmp_data" not in calls[0]["inputs"]
    hh = _write(tmp_path / "hh.jsonl", HH_ROWS)
    assert main(["pmp_data", f"sources=[{{format: hh_rlhf, uri: {hh}}}]", f"output={pairs.path}"]) == 0
    c.train_rm.python_func(pmp_data=pairs, **common)
    assert calls[1]["values"]["pmp_data"] == pairs.path and calls[1]["inputs"]["pmp_data"] is pairs
