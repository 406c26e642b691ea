"""The bad-input corpus (issue 7): every kind of bad input a user can give salmon, declared as data.

Each :class:`BadInput` builds its input in a fresh folder, runs the real ``salmon`` command on it
(in process through :func:`salmon.cli.main`, or as a subprocess to prove the real exit code, or
by calling the pipeline's first-step check directly) and says what the one ``error:`` line must
contain: the input it names and what to do about it. ``tests/test_bad_inputs.py`` runs them all
and checks exit code 2, one error line, no traceback and no partial output;
:func:`render_markdown` renders the corpus for ``docs/reliability.md``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from salmon.core.io import record_line
from salmon.nano.world import make_pairs, make_prompts

CATEGORIES = ("principle file", "data file", "config", "model URI", "pipeline parameter", "CLI", "output path",
              "number", "duplicate or stray", "Kubernetes name")
"""The categories of bad input, in the order the docs list them."""

Via = Literal["main", "subprocess", "call"]


@dataclass(frozen=True)
class Ctx:
    """Where a case builds its input: a fresh folder, and the session's tiny models when asked for."""

    tmp: Path
    model: str = ""
    """A tiny random Llama + nano tokenizer (window 512 tokens), an HF folder."""
    rm: str = ""
    """A reward model folder on ``model`` (full backbone, model_max_length 384)."""

    def write(self, name: str, content: str | bytes) -> Path:
        """An input file (text as UTF-8, bytes as they are); no digest file is written beside it."""
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    def yaml(self, name: str, data: Any) -> Path:
        return self.write(name, yaml.safe_dump(data, sort_keys=False))

    def out(self, name: str) -> Path:
        """A path the command is told to write: it must not exist afterwards."""
        return self.tmp / name


@dataclass
class Setup:
    """What a built case runs, and what its error line must name."""

    names: str
    """The input the error line must name: a path, a config key or a parameter."""
    argv: list[str] = field(default_factory=list)
    """``salmon`` arguments (``main`` and ``subprocess`` cases)."""
    call: Callable[[], object] | None = None
    """A direct call that must raise ``SalmonInputError`` (``call`` cases)."""
    outputs: list[Path] = field(default_factory=list)
    """Paths the command was told to write."""
    module: str = "salmon.cli"
    """The module a subprocess case runs with ``python -m``."""


@dataclass(frozen=True)
class BadInput:
    """One bad input and the error it must give."""

    id: str
    category: str
    description: str
    build: Callable[[Ctx], Setup]
    expect: str
    """A substring of the error line: what is wrong."""
    fix: str | None
    """A substring of the error line: what to do. None only for a documented ``gap``."""
    gap: str = ""
    """Where the missing fix belongs, when ``fix`` is None (a file another change owns)."""
    needs: tuple[str, ...] = ()
    """Tiny models the case needs: ``model``, ``rm``."""
    via: Via = "main"
    usage: bool = False
    """argparse-level misuse: argparse prints its usage and ``salmon ...: error: ...`` (exit 2)."""


# ----------------------------------------------------------------------------- input builders

Build = Callable[[Ctx], Setup]


def principle_set(principles: list[dict[str, Any]] | None = None, **changes: Any) -> dict[str, Any]:
    """A valid RL-kind principle set as data, with top-level ``changes`` (None deletes a key)."""
    data: dict[str, Any] = {
        "name": "corpus", "version": "1", "kind": "rl", "description": "A set of the bad-input corpus.",
        "principles": principles if principles is not None else [
            {"id": "concise", "name": "Concise", "definition": "The AI should answer briefly."},
            {"id": "polite", "name": "Polite", "definition": "The AI should answer politely."}],
    }
    for k, v in changes.items():
        if v is None:
            data.pop(k, None)
        else:
            data[k] = v
    return data


def one_principle(**fields: Any) -> list[dict[str, Any]]:
    base = {"id": "concise", "name": "Concise", "definition": "The AI should answer briefly."}
    return [{**base, **fields}]


LONG_TEXT = " ".join(["The AI should weigh every consideration carefully and explain each one."] * 26)
"""About 300 words (1,900 characters, under the 2,000 a definition may have): longer than the tiny
models' context (512 tokens) and the RM's input (384)."""


def long_principle_set(kind: str = "rl") -> dict[str, Any]:
    p = {"id": "verbose", "name": "Verbose", "definition": LONG_TEXT}
    if kind in ("reward_model", "nano"):
        p["negative_definition"] = "The AI should be brief."
    return principle_set([p], kind=kind)


def jsonl(records: list[Any]) -> str:
    """Records as JSONL text (written by hand: no digest file beside it)."""
    return "".join(record_line(r) for r in records)


def pairs_text(n: int = 4, seed: int = 1) -> str:
    return jsonl(make_pairs(make_prompts(n, seed=seed), seed=seed + 1))


def prompts_text(n: int = 4, seed: int = 1, **changes: Any) -> str:
    return jsonl([p.model_copy(update=changes) for p in make_prompts(n, seed=seed)])


def long_prompts_text(words: int) -> str:
    prompts = [p.model_copy(update={"instruction": " ".join([f"word{i % 7}" for i in range(words)]) + f" {k}"})
               for k, p in enumerate(make_prompts(3, seed=2))]
    return jsonl(prompts)


def judgements_text(pair_ids: list[str], principle_id: str = "concise") -> str:
    return "".join(json.dumps({"pair_id": i, "principle_id": principle_id, "delta_12": 1.0, "delta_21": 1.0,
                               "backend": "rules"}) + "\n" for i in pair_ids)


def rm_instance_text() -> str:
    return json.dumps({"instance_id": "i", "pair_id": "p", "augmentation_pass": 0, "instruction": "x",
                       "output_1": "a", "output_2": "b", "principles": [], "preference": 1,
                       "dominant_index": -1}) + "\n"


def copy_model(ctx: Ctx, name: str, source: str = "") -> Path:
    """A private copy of the tiny model (or ``source``), without its digest list, to damage."""
    dest = ctx.tmp / name
    shutil.copytree(source or ctx.model, dest)
    (dest / "SHA256SUMS").unlink(missing_ok=True)
    return dest


def model_with_config(ctx: Ctx, name: str, config: dict[str, Any]) -> Path:
    """The tiny model's tokenizer and weights under a different ``config.json``."""
    dest = copy_model(ctx, name)
    (dest / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return dest


def ab_tokenizer_model(ctx: Ctx) -> Path:
    """The tiny model with '(a' and '(b' added as tokens: 'a' after 'Output (' is no longer one token."""
    from transformers import AutoTokenizer

    dest = copy_model(ctx, "judge")
    tok = AutoTokenizer.from_pretrained(str(dest), local_files_only=True)
    tok.add_tokens(["(a", "(b"])
    tok.save_pretrained(str(dest))
    return dest


def rm_with_meta(ctx: Ctx, rm_json: str) -> Path:
    """A copy of the tiny RM with ``rm_json`` as its rm.json."""
    dest = copy_model(ctx, "rm", ctx.rm)
    (dest / "rm.json").write_text(rm_json, encoding="utf-8")
    return dest


def nano_stage(stage: str, *keys: str) -> list[str]:
    return [stage, "--preset", "nano", *keys]


def with_partial(out: Path) -> list[Path]:
    """label's outputs: the judgements and their resumable progress file."""
    return [out, out.with_name(out.name + ".partial")]


def at_line(build: Build, line: int) -> Build:
    """The same case; the error must name line ``line`` of the input (``file:line``)."""
    def wrapped(c: Ctx) -> Setup:
        setup = build(c)
        return replace(setup, names=f"{setup.names}:{line}")
    return wrapped


def naming(build: Build, names: str) -> Build:
    """The same case; the error must name ``names`` instead."""
    return lambda c: replace(build(c), names=names)


def params_call(params: dict[str, Any]) -> Callable[[], object]:
    def call() -> object:
        from salmon.tasks.params import validate_pipeline_params

        validate_pipeline_params(params)
        return None

    return call


# ----------------------------------------------------------------------------- principle files


def validate(content: str | bytes | dict[str, Any]) -> Build:
    """``salmon principles validate`` on one file."""
    def build(c: Ctx) -> Setup:
        f = c.yaml("set.yaml", content) if isinstance(content, dict) else c.write("set.yaml", content)
        return Setup(str(f), ["principles", "validate", str(f)])
    return build


def label_with_set(name: str, *keys: str, content: bytes = b"") -> Build:
    """``salmon label --preset nano`` (the rules judge) on nano pairs with the principle set ``name``,
    or with a file ``set.yaml`` holding ``content``."""
    def build(c: Ctx) -> Setup:
        ref = str(c.write("set.yaml", content)) if content else name
        pairs = c.write("pairs.jsonl", pairs_text())
        out = c.out("judgements.jsonl")
        return Setup(ref, nano_stage("label", f"pairs={pairs}", f"output={out}", f"principles={ref}", *keys),
                     outputs=with_partial(out))
    return build


def aggregate_with_principles(data: dict[str, Any]) -> Build:
    def build(c: Ctx) -> Setup:
        f = c.yaml("set.yaml", data)
        out = c.out("instances.jsonl")
        return Setup(str(f), ["aggregate", "pairs=p.jsonl", "judgements=j.jsonl", f"output={out}",
                              f"principles={f}"], outputs=[out])
    return build


def judge_long_principle(c: Ctx) -> Setup:
    f = c.yaml("long.yaml", long_principle_set())
    pairs = c.write("pairs.jsonl", pairs_text())
    out = c.out("judgements.jsonl")
    return Setup(str(f), ["label", f"pairs={pairs}", f"output={out}", f"principles={f}", "backend=hf",
                          f"model={c.model}", "device=cpu", "progress=false"], outputs=with_partial(out))


def eval_rm_long_principle(c: Ctx) -> Setup:
    f = c.yaml("long.yaml", long_principle_set("reward_model"))
    pairs = make_pairs(make_prompts(6, seed=1), seed=2)
    pairs_file = c.write("pairs.jsonl", jsonl(pairs))
    judgements = c.write("judgements.jsonl", judgements_text([p.pair_id for p in pairs], "verbose"))
    out = c.out("eval")
    return Setup(str(f), ["eval_rm", f"model={c.rm}", f"pairs={pairs_file}", f"judgements={judgements}",
                          f"output_dir={out}", f"principles={f}", "splits=[train, heldout]",
                          "sensitivity=[verbose, verbose]", "intervention_set=null", "device=cpu"], outputs=[out])


def ppo_run(c: Ctx, prompts: str, *keys: str, policy: str = "") -> Setup:
    """``salmon ppo --preset nano`` on the tiny policy and RM; names the prompts file."""
    f = c.write("prompts.jsonl", prompts)
    out = c.out("ppo")
    return Setup(str(f), nano_stage("ppo", f"prompts={f}", f"policy_model={policy or c.model}",
                                    f"reward_model={c.rm}", f"output_dir={out}", "prompt_splits=null", "device=cpu",
                                    *keys), outputs=[out])


def ppo_long_principle(c: Ctx) -> Setup:
    f = c.yaml("long.yaml", long_principle_set())
    return replace(ppo_run(c, prompts_text(8), f"rl_principles={f}", "rl_principle_ids=null"), names=str(f))


def _principles() -> list[BadInput]:
    cat, schema = "principle file", "principles/README.md"
    return [
        BadInput("principle-missing-field", cat, "a principle set without its description",
                 validate(principle_set(description=None)), "description: Field required", schema),
        BadInput("principle-unknown-field", cat, "a principle with an unknown field (a typo: weigth)",
                 validate(principle_set(one_principle(weigth=2))), "weigth: Extra inputs are not permitted", schema),
        BadInput("principle-duplicate-ids", cat, "two principles with the same id",
                 validate(principle_set(one_principle() + one_principle(name="Brief"))), "duplicate id 'concise'",
                 schema),
        BadInput("principle-empty-set", cat, "a set with an empty principles list",
                 validate(principle_set([])), "principles: List should have at least 1 item", schema),
        BadInput("principle-negative-weight", cat, "a negative sampling weight, read by aggregate",
                 aggregate_with_principles(principle_set(one_principle(weight=-1))),
                 "weight: Input should be greater than or equal to 0", schema),
        BadInput("principle-negative-boost", cat, "a negative prompt-type boost",
                 validate(principle_set(one_principle(boosts={"reasoning": -128}))),
                 "boosts.reasoning: Input should be greater than or equal to 0", schema),
        BadInput("principle-unknown-kind", cat, "an unknown set kind",
                 validate(principle_set(kind="rules")), "kind: Input should be", schema),
        BadInput("principle-missing-negative", cat, "a reward_model set whose principle has no negative definition",
                 validate(principle_set(kind="reward_model")), "negative_definition: required in a reward_model set",
                 schema),
        BadInput("principle-yaml-syntax", cat, "a file that is not YAML",
                 validate("name: corpus\nprinciples: [\n  - id: x\n"), "not valid YAML", "fix the YAML syntax"),
        BadInput("principle-not-utf8", cat, "non-UTF-8 bytes in a set read by label",
                 label_with_set("", content=b"name: corpus\ndescription: caf\xe9\n"), "not UTF-8 text",
                 "save the file as UTF-8"),
        BadInput("principle-empty-file", cat, "an empty principle file", validate(""), "the file is empty", schema),
        BadInput("principle-unknown-set", cat, "a principle set name that is not shipped (label)",
                 naming(label_with_set("no_such_set"), "principle set 'no_such_set'"), "no such set",
                 "use one of"),
        BadInput("principle-unknown-id", cat, "a principle id the set does not have (label)",
                 naming(label_with_set("nano", "principle_ids=[nope]"), "principle set nano"),
                 "no principle with id 'nope'", "known ids: concise"),
        BadInput("principle-empty-ids", cat, "an empty list of principle ids: some or all, never none (label)",
                 naming(label_with_set("nano", "principle_ids=[]"), "principle set nano"),
                 "an empty list of principle ids", "null for the whole set"),
        BadInput("principle-too-long-judge", cat, "a principle longer than the judge model's context (label, hf)",
                 judge_long_principle, "more than the judge's context of 512 tokens", "shorten the definition",
                 needs=("model",)),
        BadInput("principle-too-long-rm", cat, "a principle longer than the reward model's input (eval_rm)",
                 eval_rm_long_principle, "more than the reward model's model_max_length=384", "shorten the principle",
                 needs=("rm",)),
        BadInput("principle-too-long-ppo", cat, "an RL-time principle longer than the reward model's input (ppo)",
                 ppo_long_principle, "more than rm_max_length=512", "shorten the principle",
                 needs=("model", "rm")),
    ]


# ----------------------------------------------------------------------------- data files


def label_pairs(content: str | bytes) -> Build:
    """``salmon label --preset nano`` on a pairs file with ``content``."""
    def build(c: Ctx) -> Setup:
        f = c.write("pairs.jsonl", content)
        out = c.out("judgements.jsonl")
        return Setup(str(f), nano_stage("label", f"pairs={f}", f"output={out}"), outputs=with_partial(out))
    return build


def sample_prompts(content: str | bytes, *keys: str) -> Build:
    """``salmon sample`` on a prompts file (the tiny model when the case needs it)."""
    def build(c: Ctx) -> Setup:
        f = c.write("prompts.jsonl", content)
        out = c.out("pairs.jsonl")
        model = [f"model={c.model}", "device=cpu"] if c.model else []
        return Setup(str(f), ["sample", f"prompts={f}", f"output={out}", *model, *keys], outputs=[out])
    return build


def prompt_source(content: str | bytes, *keys: str) -> Build:
    """``salmon prompts`` with one source file."""
    def build(c: Ctx) -> Setup:
        f = c.write("source.jsonl", content)
        out = c.out("prompts.jsonl")
        return Setup(str(f), ["prompts", f"sources=[{{uri: '{f}'}}]", f"output={out}", *keys], outputs=[out])
    return build


def rm_score(content: str, model: Callable[[Ctx], str] = lambda c: c.rm, names_model: bool = False) -> Build:
    """``salmon rm score`` on an input file with ``content``; the error names the input (or the model)."""
    def build(c: Ctx) -> Setup:
        f = c.write("requests.jsonl", content)
        m = model(c)
        out = c.out("scored.jsonl")
        return Setup(m if names_model else str(f), ["rm", "score", "--model", m, "--input", str(f), "--output",
                                                    str(out), "--device", "cpu"], outputs=[out])
    return build


def sft_data(content: str) -> Build:
    def build(c: Ctx) -> Setup:
        f = c.write("sft.jsonl", content)
        out = c.out("sft")
        return Setup(str(f), nano_stage("sft", f"data={f}", f"base_model={c.tmp / 'no-model'}", f"output_dir={out}"),
                     outputs=[out])
    return build


def aggregate_truncated_judgements(c: Ctx) -> Setup:
    pairs = c.write("pairs.jsonl", pairs_text(3))
    judgements = c.write("judgements.jsonl", judgements_text(["x"]) + '{"pair_id": "y", "principle_id": "conc')
    out = c.out("instances.jsonl")
    return Setup(f"{judgements}:2", nano_stage("aggregate", f"pairs={pairs}", f"judgements={judgements}",
                                               f"output={out}", "splits=[train, heldout]"), outputs=[out])


def train_rm_missing_instances(c: Ctx) -> Setup:
    missing = c.tmp / "missing.jsonl"
    out = c.out("rm")
    return Setup(str(missing), nano_stage("train_rm", f"instances={missing}", f"base_model={c.tmp / 'no-model'}",
                                          f"output_dir={out}"), outputs=[out])


def selfalign_no_split(c: Ctx) -> Setup:
    f = c.write("prompts.jsonl", prompts_text(3, split="train"))
    out = c.out("sft.jsonl")
    return Setup(str(f), nano_stage("selfalign", f"prompts={f}", f"output={out}", "splits=[heldout]"), outputs=[out])


def red_team_seed_without_topic(c: Ctx) -> Setup:
    seeds = c.write("seeds.jsonl", json.dumps({"type": "privacy", "question": "Where does she live?"}) + "\n")
    out = c.out("prompts.jsonl")
    return Setup(f"{seeds}:1", ["prompts", "nano_prompts=5", f"red_team.seeds={seeds}",
                                f"red_team.model={c.tmp / 'no-model'}", f"output={out}"], outputs=[out])


def _data() -> list[BadInput]:
    cat = "data file"
    lines = pairs_text(3).splitlines(keepends=True)
    request = {"prompt": "Add 2 and 3.", "response": "5", "principles": [LONG_TEXT]}
    return [
        BadInput("data-truncated-line", cat, "a JSONL line cut in the middle (label pairs)",
                 at_line(label_pairs(lines[0] + lines[1][:40] + "\n" + lines[2]), 2), "not valid JSON",
                 "each line must be one complete JSON object"),
        BadInput("data-truncated-tail", cat, "a file whose last line is cut off (aggregate judgements)",
                 aggregate_truncated_judgements, "the last line is cut off", "rerun the stage that wrote it"),
        BadInput("data-wrong-type", cat, "a field of the wrong type, pair_id: 5 (label)",
                 at_line(label_pairs(json.dumps({**json.loads(lines[0]), "pair_id": 5}) + "\n"), 1),
                 "field 'pair_id': Input should be a valid string", "fix the record; its fields are those of"),
        BadInput("data-missing-field", cat, "a record without a required field (rm score: principles)",
                 at_line(rm_score(json.dumps({"prompt": "p", "response": "r"}) + "\n"), 1),
                 "field 'principles': Field required", "salmon.core.records.ScoreRequest", needs=("rm",)),
        BadInput("data-not-object", cat, "a JSON array where a record object belongs (sft data)",
                 at_line(sft_data("[1, 2]\n"), 1), "expected a JSON object, got list",
                 "each line must be one JSON object"),
        BadInput("data-not-utf8", cat, "non-UTF-8 bytes in a prompts file (sample)",
                 at_line(sample_prompts(prompts_text(1).encode() + b'{"prompt_id": "caf\xe9"}\n', "backend=nano"), 2),
                 "not UTF-8", "re-encode the file as UTF-8"),
        BadInput("data-empty-file", cat, "an empty pairs file (label)", label_pairs(""),
                 "no ResponsePair records in the file", "the file is empty"),
        BadInput("data-missing-file", cat, "an instances file that does not exist (train_rm)",
                 train_rm_missing_instances, "file not found", "check the path"),
        BadInput("data-source-not-utf8", cat, "non-UTF-8 bytes in a prompt source (prompts)",
                 at_line(prompt_source(b'{"instruction": "caf\xe9 au lait, please"}\n'), 1), "not UTF-8",
                 "re-encode the file as UTF-8"),
        BadInput("data-source-not-json", cat, "a prompt source line that is not JSON (prompts)",
                 at_line(prompt_source('{"instruction": "Tell me a story."}\n{"instruction": "Tell\n'), 2),
                 "not JSON", "one JSON object per line"),
        BadInput("data-prompts-over-max-words", cat, "prompts all longer than max_words (prompts)",
                 prompt_source(json.dumps({"instruction": " ".join(["very"] * 40) + " long request"}) + "\n",
                               "max_words=20"), "no prompt survived cleaning", "max_words=20"),
        BadInput("data-prompts-over-window", cat, "prompts longer than the model's context (sample, hf)",
                 sample_prompts(long_prompts_text(700), "max_new_tokens=8"), "longer than the model's context",
                 "shorten the prompts", needs=("model",)),
        BadInput("data-prompts-over-query-len", cat, "prompts all longer than query_len (ppo)",
                 lambda c: ppo_run(c, long_prompts_text(120)), "every prompt is longer than query_len=64 tokens",
                 "raise query_len", needs=("model", "rm")),
        BadInput("data-no-prompts-in-split", cat, "a prompts file with no prompt in the configured splits (selfalign)",
                 selfalign_no_split, "no prompts in splits ['heldout']", "check splits or the file"),
        BadInput("data-red-team-seed", cat, "a red-teaming seed without a topic (prompts)",
                 red_team_seed_without_topic, "needs string fields type, topic and question", "write {"),
        BadInput("data-rm-principle-too-long", cat, "an rm score request whose principle is longer than the RM input",
                 naming(rm_score(json.dumps(request) + "\n"), "requests.jsonl (request 1)"),
                 "more than the reward model's model_max_length=384", "shorten the principle", needs=("rm",)),
        BadInput("data-rm-score-empty", cat, "an empty rm score input",
                 rm_score("\n"), "no ScoreRequest records in the file", "the file is empty", needs=("rm",)),
    ]


# ----------------------------------------------------------------------------- configs


def stage_run(names: str, *argv: str, outputs: tuple[str, ...] = ()) -> Build:
    """A stage command whose arguments need no files (``{tmp}`` is the case folder)."""
    return lambda c: Setup(names.format(tmp=c.tmp), [a.format(tmp=c.tmp) for a in argv],
                           outputs=[c.out(o) for o in outputs])


def aggregate_keys(*keys: str) -> Build:
    """``salmon aggregate`` with ``keys``; the error names the first key."""
    return stage_run(keys[0].split("=")[0], "aggregate", "pairs=p.jsonl", "judgements=j.jsonl",
                     "output={tmp}/instances.jsonl", *keys, outputs=("instances.jsonl",))


def label_config_file(content: str | bytes, names: str = "") -> Build:
    """``salmon label --preset nano --config FILE`` with ``content`` in FILE."""
    def build(c: Ctx) -> Setup:
        f = c.write("config.yaml", content)
        out = c.out("judgements.jsonl")
        return Setup(names or str(f), ["label", "--preset", "nano", "--config", str(f), "pairs=p.jsonl",
                                       f"output={out}"], outputs=[out])
    return build


def with_prompts(names: str, stage: str, *keys: str, preset: bool = False) -> Build:
    """A stage run on a small valid prompts file (``{prompts}``, ``{tmp}`` in ``keys``)."""
    def build(c: Ctx) -> Setup:
        f = c.write("prompts.jsonl", prompts_text(2))
        argv = [k.format(prompts=f, tmp=c.tmp) for k in keys]
        return Setup(names, nano_stage(stage, *argv) if preset else [stage, *argv],
                     outputs=[c.out("out")])
    return build


def label_pairs_keys(names: str, *keys: str) -> Build:
    def build(c: Ctx) -> Setup:
        f = c.write("pairs.jsonl", pairs_text(2))
        out = c.out("judgements.jsonl")
        return Setup(names, ["label", f"pairs={f}", f"output={out}", *keys], outputs=with_partial(out))
    return build


def _configs() -> list[BadInput]:
    cat = "config"
    return [
        BadInput("config-unknown-key", cat, "an unknown key override (aggregate nonsense=1)",
                 aggregate_keys("nonsense=1"), "unknown key 'nonsense'", "salmon aggregate --help"),
        BadInput("config-unknown-key-file", cat, "an unknown key in a --config file (label)",
                 label_config_file("max_lenght: 512\n", names="max_lenght"), "unknown key 'max_lenght'",
                 "salmon label --help"),
        BadInput("config-unknown-nested-key", cat, "an unknown key inside a prompt source (prompts)",
                 stage_run("sources.0.instruction_feild", "prompts", "sources=[{{uri: a.jsonl, instruction_feild: q}}]",
                           "output={tmp}/prompts.jsonl", outputs=("prompts.jsonl",)),
                 "unknown key 'sources.0.instruction_feild'", "salmon prompts --help"),
        BadInput("config-out-of-range", cat, "a probability above 1 (aggregate negation_p=2)",
                 aggregate_keys("negation_p=2"), "Input should be less than or equal to 1", "salmon aggregate --help"),
        BadInput("config-negative-lr", cat, "a negative learning rate (train_rm)",
                 stage_run("learning_rate", *nano_stage("train_rm", "instances=i.jsonl", "base_model=m",
                                                        "output_dir={tmp}/rm", "learning_rate=-1e-4"),
                           outputs=("rm",)),
                 "Input should be greater than 0", "salmon train_rm --help"),
        BadInput("config-zero-batch", cat, "a batch size of 0 (sft)",
                 stage_run("micro_batch_size", *nano_stage("sft", "data=d.jsonl", "base_model=m",
                                                           "output_dir={tmp}/sft", "micro_batch_size=0"),
                           outputs=("sft",)),
                 "Input should be greater than or equal to 1", "salmon sft --help"),
        BadInput("config-wrong-type", cat, "a word where a number belongs (aggregate passes=zero)",
                 aggregate_keys("passes=zero"), "Input should be a valid integer", "salmon aggregate --help"),
        BadInput("config-wrong-type-list", cat, "a number where a list belongs (label principle_ids=5)",
                 stage_run("principle_ids", *nano_stage("label", "pairs=p.jsonl", "output={tmp}/j.jsonl",
                                                        "principle_ids=5"), outputs=("j.jsonl",)),
                 "Input should be a valid list", "salmon label --help"),
        BadInput("config-missing-required", cat, "a required key left out (label without pairs)",
                 stage_run("pairs", *nano_stage("label", "output={tmp}/j.jsonl"), outputs=("j.jsonl",)),
                 "missing required key 'pairs'", "salmon label --help"),
        BadInput("config-unknown-preset", cat, "a preset that does not exist",
                 stage_run("preset 'huge'", "eval_rm", "--preset", "huge", "model=m", "pairs=p", "judgements=j",
                           "output_dir={tmp}/eval", outputs=("eval",)),
                 "has no config for stage eval_rm", "expected"),
        BadInput("config-file-missing", cat, "a --config file that does not exist",
                 stage_run("{tmp}/missing.yaml", "label", "--config", "{tmp}/missing.yaml", "pairs=p",
                           "output={tmp}/j.jsonl", outputs=("j.jsonl",)),
                 "config file not found", "check the path"),
        BadInput("config-file-not-yaml", cat, "a --config file that is not YAML",
                 label_config_file("max_length: [512\nbatch_size: 2\n"), "not valid YAML", "fix the YAML syntax"),
        BadInput("config-file-not-mapping", cat, "a --config file that is a list, not a mapping",
                 label_config_file("- max_length\n- 512\n"), "a config file must be a mapping",
                 "write one key: value per line"),
        BadInput("config-file-not-utf8", cat, "a --config file with non-UTF-8 bytes",
                 label_config_file(b"stop: caf\xe9\n"), "not UTF-8", "save the file as UTF-8"),
        BadInput("config-nothing-to-load", cat, "a prompts config with no source at all",
                 stage_run("prompts config", "prompts", "output={tmp}/prompts.jsonl", outputs=("prompts.jsonl",)),
                 "give at least one of sources, nano_prompts or red_team", "salmon prompts --help"),
        BadInput("config-system-prompt", cat, "a system prompt that does not end with '### User' (sample)",
                 stage_run("system_prompt", "sample", "prompts=p.jsonl", "output={tmp}/pairs.jsonl",
                           "system_prompt=You are helpful.", outputs=("pairs.jsonl",)),
                 "must end with '### User'", "salmon sample --help"),
        BadInput("config-hf-without-model", cat, "the hf judge without a model (label backend=hf)",
                 label_pairs_keys("label config", "backend=hf"), "backend hf needs model=<HF folder>", "set model="),
        BadInput("config-openai-without-endpoint", cat, "the openai sampler without an endpoint (sample)",
                 with_prompts("sample config", "sample", "prompts={prompts}", "output={tmp}/out", "backend=openai"),
                 "backend openai needs endpoint=<base URL>", "e.g. endpoint=http://"),
        BadInput("config-deepspeed-mode", cat, "an unknown DeepSpeed mode (train_rm deepspeed=zero4)",
                 stage_run("deepspeed", *nano_stage("train_rm", "instances=i.jsonl", "base_model=m",
                                                    "output_dir={tmp}/rm", "deepspeed=zero4"), outputs=("rm",)),
                 "Input should be 'off', 'zero2' or 'zero3'", "salmon train_rm --help"),
        BadInput("config-shared-layout-grpo", cat, "the shared role layout with a critic-free algorithm (ppo)",
                 with_prompts("role_layout", "ppo", "prompts={prompts}", "policy_model=m", "reward_model=r",
                              "output_dir={tmp}/out", "role_layout=shared", "algorithm=grpo", "prompt_splits=null",
                              preset=True),
                 "shared builds the value model from the RM adapter", "set role_layout: separate"),
    ]


# ----------------------------------------------------------------------------- model URIs


def label_judge(model: Callable[[Ctx], str | Path]) -> Build:
    """``salmon label backend=hf`` with the judge ``model(ctx)``; the error names that model."""
    def build(c: Ctx) -> Setup:
        m = str(model(c))
        return label_pairs_keys(m, "backend=hf", f"model={m}", "principles=nano", "device=cpu", "progress=false")(c)
    return build


def sample_with(model: Callable[[Ctx], str | Path], adapter: Callable[[Ctx], str | Path] | None = None) -> Build:
    """``salmon sample backend=hf``; the error names the adapter if given, else the model."""
    def build(c: Ctx) -> Setup:
        m = str(model(c))
        a = str(adapter(c)) if adapter else ""
        f = c.write("prompts.jsonl", prompts_text(2))
        out = c.out("pairs.jsonl")
        return Setup(a or m, ["sample", f"prompts={f}", f"output={out}", f"model={m}", "device=cpu",
                              "max_new_tokens=8", *([f"adapter={a}"] if a else [])], outputs=[out])
    return build


def train_rm_on(model: Callable[[Ctx], str | Path]) -> Build:
    def build(c: Ctx) -> Setup:
        m = str(model(c))
        f = c.write("instances.jsonl", rm_instance_text())
        out = c.out("rm")
        return Setup(m, nano_stage("train_rm", f"instances={f}", f"base_model={m}", f"output_dir={out}",
                                   "device=cpu"), outputs=[out])
    return build


def eval_rm_on(model: Callable[[Ctx], str | Path], names: str) -> Build:
    def build(c: Ctx) -> Setup:
        m = str(model(c))
        pairs = make_pairs(make_prompts(2, seed=1), seed=2)
        p = c.write("pairs.jsonl", jsonl(pairs))
        j = c.write("judgements.jsonl", judgements_text([x.pair_id for x in pairs]))
        out = c.out("eval")
        return Setup(names.format(model=m), nano_stage("eval_rm", f"model={m}", f"pairs={p}", f"judgements={j}",
                                                       f"output_dir={out}", "splits=[train, heldout]"),
                     outputs=[out])
    return build


def eval_policy_with_missing_rm(c: Ctx) -> Setup:
    f = c.write("prompts.jsonl", prompts_text(4, split="heldout"))
    rm = c.tmp / "no-rm"
    out = c.out("eval")
    return Setup(str(rm), nano_stage("eval_policy", f"prompts={f}", f"output_dir={out}", "device=cpu",
                                     "max_new_tokens=4", f"base_model={c.model}", f"reward_model={rm}"),
                 outputs=[out])


def ppo_missing_policy(c: Ctx) -> Setup:
    policy = c.tmp / "no-model"
    return replace(ppo_run(c, prompts_text(2), policy=str(policy)), names=str(policy))


T5_CONFIG = {"model_type": "t5", "d_model": 64, "d_ff": 128, "num_layers": 1, "num_heads": 1, "d_kv": 64,
             "vocab_size": 600}
RM_META_OTHER = json.dumps({"format": "other-rm/9", "base_model": "m", "finetune": "full", "model_max_length": 64,
                            "query_len": 8, "response_len": 8})
REQUEST = json.dumps({"prompt": "p", "response": "r", "principles": ["Be brief."]}) + "\n"


def empty_folder(c: Ctx, name: str) -> Path:
    (c.tmp / name).mkdir()
    return c.tmp / name


def _models() -> list[BadInput]:
    cat = "model URI"
    saved = "give the path of a folder written by save_pretrained"
    return [
        BadInput("model-missing-folder", cat, "a judge model folder that does not exist (label, hf)",
                 label_judge(lambda c: c.tmp / "no-model"), "folder not found", saved),
        BadInput("model-no-config", cat, "a folder without config.json (sample, hf)",
                 sample_with(lambda c: empty_folder(c, "empty-model")), "no config.json in the folder", saved),
        BadInput("model-unknown-architecture", cat, "a config.json with an unknown model_type (train_rm)",
                 train_rm_on(lambda c: model_with_config(c, "weird", {"model_type": "not_a_model"})),
                 "config.json has model_type 'not_a_model'", "decoder-only model", needs=("model",)),
        BadInput("model-not-causal", cat, "an encoder-decoder (T5) where a causal LM belongs (label, hf)",
                 label_judge(lambda c: model_with_config(c, "t5", T5_CONFIG)), "model_type 't5' is not a causal",
                 "decoder-only model", needs=("model",)),
        BadInput("model-ab-tokens", cat, "a judge tokenizer where 'a' and 'b' are not single tokens (label, hf)",
                 label_judge(ab_tokenizer_model), "'a' after 'Output (' is not a single token",
                 "use a judge model whose tokenizer", needs=("model",)),
        BadInput("model-registry-uri", cat, "an MLflow models:/ URI where a local folder is read (label, hf)",
                 label_judge(lambda c: "models:/salmon-policy@champion"), "not a local folder",
                 "download the model to a folder"),
        BadInput("model-not-an-rm", cat, "a plain model folder given as the reward model (rm score)",
                 rm_score(REQUEST, model=lambda c: c.model, names_model=True), "no rm.json in the folder",
                 "give a folder written by train_rm", needs=("model",)),
        BadInput("model-rm-json-broken", cat, "a reward model whose rm.json is not JSON (rm score)",
                 rm_score(REQUEST, model=lambda c: str(rm_with_meta(c, '{"format": ')), names_model=True),
                 "unreadable", "rerun train_rm", needs=("rm",)),
        BadInput("model-rm-format", cat, "a reward model of an unknown format (eval_rm)",
                 eval_rm_on(lambda c: rm_with_meta(c, RM_META_OTHER), "{model}/rm.json"),
                 "unknown format 'other-rm/9'", "expected salmon-reward-model/1", needs=("rm",)),
        BadInput("model-adapter-not-peft", cat, "an adapter folder that is not a PEFT adapter (sample, hf)",
                 sample_with(lambda c: c.model, adapter=lambda c: copy_model(c, "not-an-adapter")),
                 "not a PEFT adapter folder", "give the adapter/ folder written by sft", needs=("model",)),
        BadInput("model-eval-policy-rm-missing", cat,
                 "a reward model that does not exist, caught before sampling (eval_policy)",
                 eval_policy_with_missing_rm, "folder not found", "give a folder written by train_rm",
                 needs=("model",)),
        BadInput("model-ppo-policy-missing", cat, "a policy model that does not exist (ppo)", ppo_missing_policy,
                 "folder not found", saved, needs=("rm",)),
    ]


def _pipeline() -> list[BadInput]:
    cat = "pipeline parameter"

    def param(id_: str, description: str, names: str, params: dict[str, Any], expect: str, fix: str) -> BadInput:
        """A parameter set the pipeline's first-step check (validate_pipeline_params) must refuse."""
        return BadInput(id_, cat, description, lambda c: Setup(names, call=params_call(params)), expect, fix,
                        via="call")

    def plan_first_step(c: Ctx) -> Setup:
        def run() -> object:
            from salmon.tasks.plan import plan_task

            return plan_task(preset="nano", stage_overrides={}, selfalign_rules="", label_principles="",
                             rl_principles="", params={"sampler": "gpu"}, register=False)
        return Setup("sampler", call=run)

    def cli(names: str, *argv: str, action: str = "run") -> Callable[[Ctx], Setup]:
        def build(c: Ctx) -> Setup:
            out = c.out("run")
            head = {"demo": ["demo", "--out", str(out)], "run": ["pipeline", "run", "--out", str(out)],
                    "submit": ["pipeline", "submit", "--host", "http://127.0.0.1:9"]}[action]
            return Setup(names, [*head, *argv], outputs=[out])
        return build

    return [
        param("pipeline-sampler", "an unknown sampler mode", "sampler='gpu'", {"sampler": "gpu"},
              "unknown sampler mode", "use one of none, endpoint, deploy"),
        param("pipeline-backend", "an unknown judge backend", "label_backend='gpt'", {"label_backend": "gpt"},
              "unknown backend", "use one of hf, openai, rules"),
        param("pipeline-executor", "an unknown training executor", "ppo executor 'slurm'", {"ppo_executor": "slurm"},
              "unknown", "use one of local, trainjob"),
        param("pipeline-openai-without-server", "the openai backend with no sampler server", "label_backend='openai'",
              {"label_backend": "openai", "sampler": "none"}, "needs a server", "set sampler=deploy"),
        param("pipeline-rollouts-without-server", "server rollouts with no sampler server",
              "rollout_backend='openai'", {"rollout_backend": "openai", "sampler": "none"}, "needs a server",
              "set sampler=deploy"),
        param("pipeline-rollout-backend", "an unknown rollout backend", "rollout_backend='trt'",
              {"rollout_backend": "trt"}, "unknown rollout backend", "use hf or openai"),
        param("pipeline-endpoint-url", "a sampler endpoint that is not an http(s) URL", "sampler_endpoint",
              {"sample_backend": "openai", "sampler": "endpoint", "sampler_endpoint": "vllm:8000"},
              "is not an http(s) URL", "give the server's base URL"),
        param("pipeline-override-key", "an unknown config key in stage_overrides", "stage_overrides.ppo",
              {"stage_overrides": {"ppo": {"kl_coeff": 1}}}, "unknown keys ['kl_coeff']", "salmon ppo --help"),
        param("pipeline-override-value", "an out-of-range value in stage_overrides", "stage_overrides.ppo.kl_coef",
              {"stage_overrides": {"ppo": {"kl_coef": -1}}}, "Input should be greater than or equal to 0",
              "salmon ppo --help"),
        param("pipeline-rm-epochs", "zero reward-model epochs", "rm_epochs", {"rm_epochs": 0.0},
              "must be greater than 0", "e.g. rm_epochs=1"),
        param("pipeline-gate-range", "a rate gate above 1", "min_rm_accuracy", {"min_rm_accuracy": 1.5},
              "must be between 0 and 1", "a share, e.g. 0.8"),
        param("pipeline-gate-principles", "a win-rate gate on a principle the set does not have",
              "policy_gate_principles", {"policy_gate_principles": "nano:nope"}, "no principle with id 'nope'",
              "known ids"),
        param("pipeline-gate-unmeasured", "a win-rate gate under principles eval_policy does not score",
              "policy_gate_principles", {"preset": "nano", "policy_gate_principles": "harmless",
                                         "min_policy_win_rate": 0.6},
              "the win-rate gate could never pass", "use one of eval_policy's principle_sets"),
        param("pipeline-rl-principle-ids", "RL-time principle ids the RL set does not have", "rl_principle_ids",
              {"preset": "nano", "rl_principle_ids": ["nope"]}, "no principle with id 'nope'", "known ids"),
        param("pipeline-principle-set", "a label principle set that does not exist", "label_principles",
              {"label_principles": "no_such_set"}, "no such set", "use one of"),
        param("pipeline-base-model-uri", "a base model URI of an unsupported scheme", "base_model_uri",
              {"base_model_uri": "hf://meta-llama/Llama-2-7b"}, "not a supported model URI",
              "give 'nano', 'smollm2', a model folder"),
        param("pipeline-preset", "a preset that does not exist", "preset", {"preset": "huge"}, "no such preset",
              "use one of nano"),
        param("pipeline-train-nodes", "zero pods per training job", "train_nodes", {"train_nodes": 0},
              "must be 1 or more", "1 or more pods"),
        BadInput("pipeline-plan-task", cat, "a bad parameter reaching the pipeline's first task (plan)",
                 plan_first_step, "unknown sampler mode", "use one of none, endpoint, deploy", via="call"),
        BadInput("pipeline-cli-range", cat, "salmon pipeline run with ppo_steps=-1 (nothing starts)",
                 cli("ppo_steps", "ppo_steps=-1"), "must be 0 or more", "0 keeps the preset"),
        BadInput("pipeline-cli-unknown", cat, "salmon pipeline run with an unknown parameter",
                 cli("parameter 'seeds'", "seeds=3"), "not a pipeline parameter", "salmon pipeline params"),
        BadInput("pipeline-cli-type", cat, "salmon pipeline run with a word for an int parameter",
                 cli("nano_prompts", "nano_prompts=many"), "expected int, got str", "e.g. nano_prompts=4000"),
        BadInput("pipeline-cli-submit", cat, "salmon pipeline submit with a bad gate (checked before upload)",
                 cli("min_rm_flip_rate", "min_rm_flip_rate=2", action="submit"), "must be between 0 and 1",
                 "a share, e.g. 0.8"),
        BadInput("pipeline-demo-principle", cat, "salmon demo steered by a principle the nano set lacks",
                 cli("principle set nano", "--rl-principle", "nope", action="demo"), "no principle with id 'nope'",
                 "known ids"),
    ]


def _cli() -> list[BadInput]:
    cat = "CLI"

    def args(names: str, *argv: str) -> Callable[[Ctx], Setup]:
        return lambda c: Setup(names, [a.format(tmp=c.tmp) for a in argv])

    return [
        BadInput("cli-no-command", cat, "salmon with no command", args("COMMAND"),
                 "the following arguments are required: COMMAND", "usage: salmon", usage=True),
        BadInput("cli-unknown-command", cat, "an unknown command", args("frobnicate", "frobnicate"),
                 "invalid choice: 'frobnicate'", "usage: salmon", usage=True),
        BadInput("cli-missing-option", cat, "rm score without --input and --output",
                 args("--input", "rm", "score", "--model", "m"), "the following arguments are required: --input",
                 "usage: salmon rm score", usage=True),
        BadInput("cli-override-syntax", cat, "a config override without '=' (aggregate)",
                 args("override 'passes'", "aggregate", "pairs=p", "judgements=j", "output={tmp}/o.jsonl", "passes"),
                 "expected key=value", "write overrides as key=value"),
        BadInput("cli-override-empty-key", cat, "a config override with an empty key (aggregate)",
                 args("override '=3'", "aggregate", "pairs=p", "judgements=j", "output={tmp}/o.jsonl", "=3"),
                 "expected key=value", "write overrides as key=value"),
        BadInput("cli-validate-no-files", cat, "principles validate with no file",
                 args("files", "principles", "validate"),
                 "the following arguments are required: files", "usage: salmon principles validate", usage=True),
        BadInput("cli-show-unknown-set", cat, "principles show of a set that does not exist",
                 args("principle set 'no_such_set'", "principles", "show", "no_such_set"), "no such set", "use one of"),
        BadInput("cli-batch-size", cat, "rm score --batch-size 0",
                 args("--batch-size", "rm", "score", "--model", "m", "--input", "i", "--output", "{tmp}/o.jsonl",
                      "--batch-size", "0"),
                 "must be a positive integer", "usage: salmon rm score", usage=True),
        BadInput("cli-nano-prompts-n", cat, "nano prompts --n 0",
                 args("--n", "nano", "prompts", "--out", "{tmp}/p.jsonl", "--n", "0"), "must be a positive integer",
                 "usage: salmon nano prompts", usage=True),
        BadInput("cli-nano-heldout", cat, "nano prompts --heldout 1.5",
                 args("--heldout", "nano", "prompts", "--out", "{tmp}/p.jsonl", "--heldout", "1.5"),
                 "must be a number in [0, 1)", "usage: salmon nano prompts", usage=True),
        BadInput("cli-job-stage", cat, "job render for a stage that is not a training stage",
                 args("--stage", "job", "render", "--stage", "label"), "invalid choice: 'label'",
                 "usage: salmon job render", usage=True),
        BadInput("cli-job-setting", cat, "job render with nodes=0",
                 args("nodes", "job", "render", "--stage", "sft", "nodes=0"), "greater than or equal to 1",
                 "salmon job render --help"),
        BadInput("cli-bench-unknown", cat, "bench of a benchmark that does not exist",
                 args("benchmark nope", "bench", "nope"), "unknown", "use one of"),
        BadInput("cli-config-without-value", cat, "--config with no file after it",
                 args("--config", "label", "--config"), "expected one argument", "usage: salmon label", usage=True),
        BadInput("cli-subprocess-unknown-key", cat, "a real `salmon` process given an unknown key (exit code 2)",
                 args("unknown key 'nonsense'", "aggregate", "pairs=p", "judgements=j", "output={tmp}/o.jsonl",
                      "nonsense=1"),
                 "unknown key 'nonsense'", "salmon aggregate --help", via="subprocess"),
        BadInput("cli-subprocess-unknown-command", cat, "a real `salmon` process given an unknown command",
                 args("frobnicate", "frobnicate"), "invalid choice: 'frobnicate'", "usage: salmon",
                 via="subprocess", usage=True),
        BadInput("cli-subprocess-stage-module", cat, "python -m salmon.stages.label on a missing pairs file",
                 lambda c: Setup(str(c.tmp / "missing.jsonl"), ["--preset", "nano", f"pairs={c.tmp / 'missing.jsonl'}",
                                                                f"output={c.out('j.jsonl')}"],
                                 outputs=[c.out("j.jsonl")], module="salmon.stages.label"),
                 "file not found", "check the path", via="subprocess"),
    ]


# ----------------------------------------------------------------------------- outputs, numbers, names


def outputs_case(names: str, argv: Callable[[Ctx], list[str]], files: dict[str, str | bytes] | None = None,
                 folders: tuple[str, ...] = (), outputs: tuple[str, ...] = ()) -> Build:
    """A command whose output path is wrong; ``files`` and ``folders`` are made first (the inputs
    or obstacles), and must come out unchanged."""
    def build(c: Ctx) -> Setup:
        for name, content in (files or {}).items():
            c.write(name, content)
        for name in folders:
            (c.tmp / name).mkdir(parents=True, exist_ok=True)
        return Setup(names.format(tmp=c.tmp), argv(c), outputs=[c.out(o) for o in outputs])
    return build


def _outputs() -> list[BadInput]:
    cat = "output path"
    judged = judgements_text([p.pair_id for p in make_pairs(make_prompts(4, seed=1), seed=2)])
    return [
        BadInput("output-is-an-input", cat, "aggregate told to write its output over its pairs file",
                 outputs_case("aggregate config key output", lambda c: [
                     "aggregate", "--preset", "nano", f"pairs={c.tmp / 'pairs.jsonl'}",
                     f"judgements={c.tmp / 'j.jsonl'}", f"output={c.tmp / 'pairs.jsonl'}"],
                     files={"pairs.jsonl": pairs_text(), "j.jsonl": judged}),
                 "is also aggregate config key pairs, which this command reads", "write the output to another path"),
        BadInput("output-rm-score-over-input", cat, "rm score --output the same file as --input",
                 outputs_case("--output", lambda c: [
                     "rm", "score", "--model", str(c.tmp / "rm"), "--input", str(c.tmp / "requests.jsonl"),
                     "--output", str(c.tmp / "requests.jsonl")], files={"requests.jsonl": REQUEST}),
                 "is also --input, which this command reads", "write the output to another path"),
        BadInput("output-two-outputs-one-file", cat, "selfalign told to write its audit over its own output",
                 outputs_case("selfalign config key", lambda c: [
                     "selfalign", f"prompts={c.tmp / 'p.jsonl'}", f"output={c.tmp / 'sft.jsonl'}",
                     f"generations_output={c.tmp / 'sft.jsonl'}", "model=/nonexistent"],
                     files={"p.jsonl": prompts_text()}, outputs=("sft.jsonl",)),
                 "which this command also writes", "give each output its own path"),
        BadInput("output-parent-is-a-file", cat, "sample told to write under a path whose parent is a file",
                 outputs_case("sample config key output", lambda c: [
                     "sample", "--preset", "nano", f"prompts={c.tmp / 'p.jsonl'}",
                     f"output={c.tmp / 'p.jsonl' / 'pairs.jsonl'}"], files={"p.jsonl": prompts_text()}),
                 "is a file, not a folder", "give a path under a folder"),
        BadInput("output-file-is-a-folder", cat, "label told to write its judgements onto an existing folder",
                 outputs_case("label config key output", lambda c: [
                     "label", "--preset", "nano", f"pairs={c.tmp / 'pairs.jsonl'}", f"output={c.tmp / 'taken'}"],
                     files={"pairs.jsonl": pairs_text()}, folders=("taken",)),
                 "is an existing folder, where a file is written", "give a file path"),
        BadInput("output-dir-is-a-file", cat, "sft told to write its output folder onto an existing file",
                 outputs_case("sft config key output_dir", lambda c: [
                     "sft", "--preset", "nano", f"data={c.tmp / 'data.jsonl'}", "base_model=/nonexistent",
                     f"output_dir={c.tmp / 'taken.txt'}"], files={"data.jsonl": "{}\n", "taken.txt": "keep"}),
                 "is an existing file, where a folder is written", "give a folder path"),
        BadInput("output-compile-onto-a-file", cat, "pipeline compile --out an existing file",
                 outputs_case("--out", lambda c: ["pipeline", "compile", "--out", str(c.tmp / "build.txt")],
                              files={"build.txt": "keep"}),
                 "is an existing file, where a folder is written", "give a folder path"),
        BadInput("output-nano-prompts-onto-a-folder", cat, "nano prompts --out an existing folder",
                 outputs_case("--out", lambda c: ["nano", "prompts", "--out", str(c.tmp / "taken")],
                              folders=("taken",)),
                 "is an existing folder, where a file is written", "give a file path"),
    ]


def sample_meta_overflow(c: Ctx) -> Setup:
    meta = prompts_text(2).replace('"meta":{', '"meta":{"w":1e999,', 1)
    f = c.write("prompts.jsonl", meta)
    out = c.out("pairs.jsonl")
    return Setup(f"{f}:1", nano_stage("sample", f"prompts={f}", f"output={out}"), outputs=[out])


def _numbers() -> list[BadInput]:
    cat = "number"
    pairs = make_pairs(make_prompts(4, seed=1), seed=2)

    def judged_with(value: str) -> str:
        return "".join(f'{{"pair_id": "{p.pair_id}", "principle_id": "concise", "delta_12": {value}, '
                       f'"delta_21": 1.0, "backend": "rules"}}\n' for p in pairs)

    def aggregate_on(judgements: str) -> Build:
        def build(c: Ctx) -> Setup:
            pf, jf = c.write("pairs.jsonl", jsonl(pairs)), c.write("j.jsonl", judgements)
            out = c.out("instances.jsonl")
            return Setup(f"{jf}:1", nano_stage("aggregate", f"pairs={pf}", f"judgements={jf}", f"output={out}"),
                         outputs=[out])
        return build

    def params(id_: str, description: str, values: dict[str, Any], names: str) -> BadInput:
        return BadInput(id_, cat, description, lambda c: Setup(names, call=params_call(values)),
                        "holds a NaN or infinite number", "give a finite number", via="call")

    return [
        BadInput("number-nan-in-jsonl", cat, "NaN as a judgement delta (aggregate)", aggregate_on(judged_with("NaN")),
                 "holds NaN, which is not a JSON number", "write a finite number"),
        BadInput("number-infinity-in-jsonl", cat, "-Infinity as a judgement delta (aggregate)",
                 aggregate_on(judged_with("-Infinity")), "holds -Infinity, which is not a JSON number",
                 "write a finite number"),
        BadInput("number-overflow-in-jsonl", cat, "1e999 (too big for a float) in a prompt's meta (sample)",
                 sample_meta_overflow, "the number 1e999, which is not finite", "write a finite number"),
        BadInput("number-principle-weight", cat, "a principle weight of 1e999",
                 validate("name: corpus\nversion: '1'\nkind: rl\ndescription: d\nprinciples:\n  - id: concise\n"
                          "    name: Concise\n    definition: Be brief.\n    weight: 1e999\n"),
                 "weight: Input should be a finite number", "principles/README.md"),
        BadInput("number-config-inf", cat, "epochs=inf (train_rm)",
                 stage_run("epochs", "train_rm", "instances=i.jsonl", "base_model=m", "output_dir={tmp}/rm",
                           "epochs=inf", outputs=("rm",)), "Input should be a finite number", "salmon train_rm --help"),
        BadInput("number-config-nan", cat, "learning_rate=.nan (sft)",
                 stage_run("learning_rate", "sft", "data=d.jsonl", "base_model=m", "output_dir={tmp}/sft",
                           "learning_rate=.nan", outputs=("sft",)), "Input should be a finite number",
                 "salmon sft --help"),
        BadInput("number-deepspeed-override", cat, "an infinite value in deepspeed_overrides (train_rm)",
                 stage_run("train_rm config", "train_rm", "instances=i.jsonl", "base_model=m", "output_dir={tmp}/rm",
                           "deepspeed=zero2", "deepspeed_overrides.gradient_clipping=.inf", outputs=("rm",)),
                 "deepspeed_overrides holds a NaN or infinite number", "salmon train_rm --help"),
        params("number-pipeline-gate", "a pipeline gate of .nan", {"min_rm_accuracy": float("nan")},
               "min_rm_accuracy"),
        params("number-pipeline-override", "an infinite value inside stage_overrides",
               {"stage_overrides": {"ppo": {"kl_coef": float("inf")}}}, "stage_overrides"),
    ]


def _strays() -> list[BadInput]:
    cat = "duplicate or stray"
    prompts = make_prompts(4, seed=1)
    pairs = make_pairs(prompts, seed=2)

    def label_on(records: list[Any]) -> Build:
        def build(c: Ctx) -> Setup:
            f = c.write("pairs.jsonl", jsonl(records))
            out = c.out("judgements.jsonl")
            return Setup(f"{f}:{len(records)}", nano_stage("label", f"pairs={f}", f"output={out}", "progress=false"),
                         outputs=with_partial(out))
        return build

    def sample_on(records: list[Any]) -> Build:
        def build(c: Ctx) -> Setup:
            f = c.write("prompts.jsonl", jsonl(records))
            out = c.out("pairs.jsonl")
            return Setup(f"{f}:{len(records)}", nano_stage("sample", f"prompts={f}", f"output={out}"), outputs=[out])
        return build

    def aggregate_with(judgements: str, principles: str = "nano") -> Build:
        def build(c: Ctx) -> Setup:
            pf, jf = c.write("pairs.jsonl", jsonl(pairs)), c.write("j.jsonl", judgements)
            out = c.out("instances.jsonl")
            names = str(jf) if principles == "nano" else "principle set rl"
            return Setup(names, nano_stage("aggregate", f"pairs={pf}", f"judgements={jf}", f"output={out}",
                                           f"principles={principles}"), outputs=[out])
        return build

    return [
        BadInput("dup-pair-ids", cat, "two pairs with one pair_id (label)", label_on([*pairs, pairs[0]]),
                 "duplicate pair_id", "give every ResponsePair its own id"),
        BadInput("dup-prompt-ids", cat, "two prompts with one prompt_id (sample)", sample_on([*prompts, prompts[2]]),
                 "duplicate prompt_id", "give every PromptRecord its own id"),
        BadInput("stray-judged-principle", cat, "judgements for a principle the set does not have (aggregate)",
                 aggregate_with(judgements_text([p.pair_id for p in pairs], "kindness")),
                 "holds judgements for 'kindness', which principle set nano does not have",
                 "give the principle set the pairs were judged with"),
        BadInput("stray-no-negative-definitions", cat, "an RL-time set (no negative definitions) for aggregate",
                 aggregate_with(judgements_text([p.pair_id for p in pairs]), principles="rl"),
                 "have no negative_definition", "use a reward_model set"),
        BadInput("dup-yaml-key-config", cat, "a --config file with a key given twice (label)",
                 label_config_file("batch_size: 2\nbatch_size: 8\n"), "found the key 'batch_size' twice",
                 "fix the YAML syntax"),
        BadInput("dup-yaml-key-principles", cat, "a principle set with a key given twice",
                 validate("name: corpus\nname: other\nversion: '1'\nkind: rl\ndescription: d\nprinciples: []\n"),
                 "found the key 'name' twice", "fix the YAML syntax"),
        BadInput("size-principle-definition", cat, "a principle definition of 5,000 characters",
                 validate(principle_set(one_principle(definition="Be clear. " * 500))),
                 "String should have at most 2000 characters", "principles/README.md"),
        BadInput("size-principle-file", cat, "a principle file of 2 MB, refused before it is parsed",
                 validate("# " + "x" * (2 << 20) + "\n"), "more than a principle set may be",
                 "shorten the definitions"),
    ]


def _names() -> list[BadInput]:
    cat = "Kubernetes name"

    def args(names: str, *argv: str, outputs: tuple[str, ...] = ()) -> Callable[[Ctx], Setup]:
        return lambda c: Setup(names, [a.format(tmp=c.tmp) for a in argv], outputs=[c.out(o) for o in outputs])

    def param(key: str, value: str) -> BadInput:
        return BadInput(f"name-pipeline-{key.replace('_', '-')}", cat, f"a pipeline {key} that is not a name",
                        lambda c: Setup(f"pipeline parameter {key}", call=params_call({key: value})),
                        "is not a valid", "give a valid Kubernetes", via="call")

    return [
        BadInput("name-job", cat, "job render --name with an underscore",
                 args("--name", "job", "render", "--stage", "sft", "--name", "my_job"),
                 "'my_job' is not a valid object name", "give a valid Kubernetes object name"),
        BadInput("name-namespace", cat, "a job namespace in capitals (job render)",
                 args("job setting namespace", "job", "render", "--stage", "sft", "namespace=ML"),
                 "'ML' is not a valid namespace name", "salmon job render --help"),
        BadInput("name-service-account", cat, "a service account with a space (job render)",
                 args("job setting service_account", "job", "render", "--stage", "ppo", "service_account=my sa"),
                 "'my sa' is not a valid service account name", "salmon job render --help"),
        BadInput("name-sampler", cat, "a vLLM server name with a dot (sampler render)",
                 args("sampler setting name", "sampler", "render", "model=/mnt/models/base", "name=vllm.1"),
                 "'vllm.1' is not a valid object name", "salmon sampler render --help"),
        BadInput("name-version", cat, "pipeline compile --version with capitals and a dot",
                 args("--version", "pipeline", "compile", "--out", "{tmp}/build", "--version", "V1.0",
                      outputs=("build",)),
                 "'V1.0' is not a valid version name", "give a valid Kubernetes version name"),
        BadInput("name-submit-namespace", cat, "pipeline submit --namespace with capitals (checked before upload)",
                 args("--namespace", "pipeline", "submit", "--host", "http://127.0.0.1:9", "--namespace", "Team"),
                 "'Team' is not a valid namespace name", "give a valid Kubernetes namespace name"),
        param("mlflow_secret", "mlflow secret"),
        param("model_cache_pvc", "Models/Cache"),
    ]


CASES: list[BadInput] = [*_principles(), *_data(), *_configs(), *_models(), *_pipeline(), *_cli(), *_outputs(),
                         *_numbers(), *_strays(), *_names()]


def render_markdown(cases: list[BadInput] | None = None) -> str:
    """The corpus as a markdown table: category, number of cases, and what each one is."""
    cases = CASES if cases is None else cases
    lines = ["| category | cases | bad inputs |", "|---|---:|---|"]
    for cat in CATEGORIES:
        mine = [c for c in cases if c.category == cat]
        what = "; ".join(c.description.replace("|", "\\|") for c in mine)
        lines.append(f"| {cat} | {len(mine)} | {what} |")
    lines.append(f"| **all** | **{len(cases)}** | |")
    return "\n".join(lines) + "\n"
