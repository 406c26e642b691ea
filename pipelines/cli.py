"""``salmon pipeline compile|submit|run`` and ``salmon demo``: the commands that need kfp.

They reach the ``salmon`` command as entry points of the ``salmon.commands`` group
(:func:`add_demo_command`, :func:`add_pipeline_command`, declared in ``pyproject.toml``), so the
salmon package never names this one and never imports kfp.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path
from typing import Any

from pipelines.kfp_server import compile_pipeline, run_link, submit, wait_for_run
from salmon.core.errors import SalmonInputError
from salmon.core.paths import check_output

DEMO_PARAMS: dict[str, Any] = {
    # The laptop demo: the nano world sized to finish in minutes on 2 CPU cores.
    "nano_prompts": 3000,
    "rm_epochs": 1.0,
    "ppo_steps": 16,
    "eval_limit": 200,
    "stage_overrides": {"eval_rm": {"passes": 1}},
}
QUICK_PARAMS: dict[str, Any] = {
    # A smoke run of every task in about two minutes; the metrics mean little.
    "nano_prompts": 160,
    "nano_pretrain_steps": 40,
    "rm_epochs": 0.5,
    "ppo_steps": 2,
    "eval_limit": 16,
    "stage_overrides": {"ppo": {"rollout_batch_size": 8, "step_batch_size": 8}, "eval_rm": {"passes": 1}},
}

SMALL_HOLDOUT = ["structured", "refuse_harm"]
"""Nano principles the real-world demo keeps out of the RM's training, for eval_rm's zero-shot check."""
SMALL_PARAMS: dict[str, Any] = {
    # The real world: SmolLM2-135M-Instruct answers the nano world's prompts, the checkers label,
    # and every stage runs on the real model, within 30 minutes on 2 CPU cores (docs/results.md).
    "base_model_uri": "smollm2", "preset": "small", "selfalign_backend": "hf", "sample_backend": "hf",
    "label_backend": "rules",
    "nano_prompts": 160,
    "rm_epochs": 2.0,
    "ppo_steps": 6,
    "eval_limit": 32,
    "stage_overrides": {},
}
SMALL_QUICK_PARAMS: dict[str, Any] = {
    # A smoke run of every task on SmolLM2 in a few minutes; the metrics mean little.
    **SMALL_PARAMS,
    "nano_prompts": 48,
    "rm_epochs": 0.5,
    "ppo_steps": 1,
    "eval_limit": 4,
    "stage_overrides": {"selfalign": {"limit": 8, "max_new_tokens": 128, "min_chars": 0, "keep_truncated": True},
                        "sft": {"epochs": 1, "source_max_len": 128, "target_max_len": 128},
                        "sample": {"max_new_tokens": 48}, "label": {"audit_pairs": 2},
                        "ppo": {"rollout_batch_size": 4, "step_batch_size": 4, "forward_batch_size": 4,
                                "response_len": 32, "ppo_epochs": 1},
                        "eval_policy": {"max_new_tokens": 32},
                        "eval_rm": {"passes": 1}},
}
BASES = ("nano", "smollm2")


def demo_params(args: argparse.Namespace) -> dict[str, Any]:
    """The pipeline parameters of a ``salmon demo`` command line, ``key=value`` extras included; an
    extra ``stage_overrides`` merges into the demo's per stage (its keys win)."""
    from salmon.core.principles import load_principle_set

    nano = load_principle_set("nano")
    nano.get(args.rl_principle)  # a bad --rl-principle fails first
    if args.base == "smollm2":
        params = dict(SMALL_QUICK_PARAMS if args.quick else SMALL_PARAMS)
        given = SMALL_HOLDOUT if args.holdout is None else args.holdout.split(",")
        holdout = [h.strip() for h in given if h.strip()]
        for h in holdout:
            nano.get(h)
        if args.rl_principle in holdout:
            raise SalmonInputError(f"--rl-principle {args.rl_principle}", "is held out of the RM's training "
                                   "(--holdout)", "steer PPO by a trained principle, or hold out others")
        overrides = {k: dict(v) for k, v in params["stage_overrides"].items()}
        # scored by the RM under the steering principle (and concise and detailed in a full run);
        # every checker's adherence is reported either way
        scored = [args.rl_principle] if args.quick else list(dict.fromkeys(["concise", "detailed", args.rl_principle]))
        overrides.setdefault("eval_policy", {})["principle_sets"] = [f"nano:{p}" for p in scored]
        if args.quick:
            overrides["eval_policy"]["adherence"] = [args.rl_principle]
        if holdout:
            overrides.setdefault("aggregate", {})["holdout_principles"] = holdout
            overrides.setdefault("eval_rm", {})["zero_shot"] = holdout
        params["stage_overrides"] = overrides
    else:
        if args.holdout is not None:
            raise SalmonInputError("--holdout", "applies to --base smollm2",
                                   "set stage_overrides for aggregate and eval_rm in the nano world")
        params = dict(QUICK_PARAMS if args.quick else DEMO_PARAMS)
    params.update(rl_principle_ids=[args.rl_principle], policy_gate_principles=f"nano:{args.rl_principle}")
    if args.quick:  # a smoke run: no gate means anything at this size, unless asked for
        params.update(min_rm_accuracy=0.0, min_rm_flip_rate=0.0, min_policy_win_rate=0.0, max_policy_kl=1e6)
    if args.rm_epochs is not None:
        params["rm_epochs"] = args.rm_epochs
    extra = parse_params(args.params)
    given = extra.pop("stage_overrides", None)
    params.update(extra)
    if isinstance(given, dict) and all(isinstance(v, dict) for v in given.values()):
        # per stage, the command line's keys over the demo's: a change to one stage keeps the
        # demo's settings of the others (the held-out principles, the principles scored)
        merged = {k: dict(v) for k, v in params["stage_overrides"].items()}
        for stage, values in given.items():
            merged[stage] = {**merged.get(stage, {}), **values}
        params["stage_overrides"] = merged
    elif given is not None:  # not a map of maps: check_params names the problem
        params["stage_overrides"] = given
    return params


def pipeline_parameters() -> dict[str, inspect.Parameter]:
    from pipelines.salmon import salmon_pipeline

    return dict(inspect.signature(salmon_pipeline.pipeline_func).parameters)


def parse_params(items: list[str]) -> dict[str, Any]:
    """``key=value`` pipeline parameters; values are YAML scalars/lists/maps (never code)."""
    import yaml

    from salmon.core.yamlio import safe_load

    known = pipeline_parameters()
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise SalmonInputError(f"parameter '{item}'", "not key=value", "write e.g. rm_epochs=2")
        if key not in known:
            raise SalmonInputError(f"parameter '{key}'", "not a pipeline parameter",
                                   "see `salmon pipeline params` for the list")
        try:
            value = safe_load(raw) if raw else ""
        except yaml.YAMLError as e:
            raise SalmonInputError(f"parameter '{key}'", f"not a YAML value ({e})".replace("\n", " "),
                                   "quote the value, or fix its YAML syntax") from None
        default = known[key].default
        if isinstance(default, str) and not isinstance(value, str):
            value = raw
        elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if default is not inspect.Parameter.empty and type(value) is not type(default):
            raise SalmonInputError(f"parameter '{key}={raw}'",
                                   f"expected {type(default).__name__}, got {type(value).__name__}",
                                   f"e.g. {key}={json.dumps(default)}; see `salmon pipeline params`")
        out[key] = value
    return out


def check_params(params: dict[str, Any]) -> None:
    """The plan task's parameter checks, on the parameters with the pipeline's defaults filled in."""
    from salmon.tasks.params import validate_pipeline_params

    defaults = {name: p.default for name, p in pipeline_parameters().items()}
    validate_pipeline_params({**defaults, **params})


def _print_params(as_json: bool = False) -> None:
    from pipelines.salmon import salmon_pipeline

    doc = salmon_pipeline.pipeline_func.__doc__ or ""
    descriptions = {}
    for line in doc.splitlines():
        name, sep, text = line.strip().partition(": ")
        if sep and name.isidentifier():
            descriptions[name] = text
    rows = [{"name": name, "type": type(p.default).__name__, "default": p.default,
             "description": descriptions.get(name, "")} for name, p in pipeline_parameters().items()]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        print(f"{r['name']:<24} {r['type']:<6} {json.dumps(r['default']):<22} {r['description']}")


def _run(out: str, params: dict[str, Any], cache: bool, verbose: bool = False) -> int:
    from pipelines.local import plain, print_report, run_local

    try:
        run = run_local(out, params, cache=cache, verbose=verbose)
    except RuntimeError as e:
        where = "above" if verbose else f"in {Path(out) / 'pipeline.log'} (its last lines are above)"
        print(f"error: the pipeline failed: {plain(str(e))}\n(the failing task's log is {where})",
              file=sys.stderr)
        return 1
    print_report(run)
    return 0


def add_demo_command(sub: Any) -> None:
    """The ``salmon demo`` sub-command (registered with ``salmon`` as a ``salmon.commands`` entry point)."""
    demo = sub.add_parser(
        "demo", help="run the SALMON pipeline with kfp.local: the nano world, or SmolLM2 on the nano world's "
                     "prompts (--base smollm2)",
        description="Run the whole SALMON pipeline locally with kfp.local in the nano world: MLflow "
                    "runs in DIR/mlflow.db, models registered, champion promoted when the gates pass.")
    add_demo_arguments(demo)
    demo.set_defaults(func=main)


def add_pipeline_command(sub: Any) -> None:
    """The ``salmon pipeline`` sub-command (a ``salmon.commands`` entry point)."""
    pipe = sub.add_parser("pipeline", help="compile, submit or locally run the Kubeflow pipeline")
    add_pipeline_arguments(pipe)
    pipe.set_defaults(func=main)


def build_parser(prog: str = "salmon") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_demo_command(sub)
    add_pipeline_command(sub)
    return parser


def add_demo_arguments(demo: argparse.ArgumentParser) -> None:
    demo.add_argument("--base", choices=BASES, default="nano",
                      help="nano: the 0.9 M nano model (minutes); smollm2: SmolLM2-135M-Instruct from its Python "
                      "package answering the nano prompts, the checkers labelling (about 23 minutes on 2 cores)")
    demo.add_argument("--out", default=None,
                      help="output folder (pipeline root, MLflow db, summary); default out/demo or out/demo-smollm2")
    demo.add_argument("--quick", action="store_true", help="a smoke run of every task (metrics mean little)")
    demo.add_argument("--rl-principle", default="concise", help="the nano principle PPO is steered by")
    demo.add_argument("--holdout", default=None, metavar="IDS",
                      help="--base smollm2: comma-separated nano principles kept out of the RM's training and "
                      f"measured zero-shot by eval_rm (default {','.join(SMALL_HOLDOUT)}; '' for none)")
    demo.add_argument("--rm-epochs", type=float, default=None, help="passes of train_rm over its instances")
    demo.add_argument("--no-cache", action="store_true", help="rerun every task even if its inputs are unchanged")
    demo.add_argument("-v", "--verbose", action="store_true",
                      help="print everything kfp.local prints (default: a line per task; the rest in OUT/pipeline.log)")
    demo.add_argument("params", nargs="*", metavar="key=value",
                      help="more pipeline parameters; stage_overrides merges into the demo's own per stage "
                           "(its keys win)")


def add_pipeline_arguments(pipe: argparse.ArgumentParser) -> None:
    ps = pipe.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = ps.add_parser("compile", help="write the IR YAML and the Pipeline/PipelineVersion manifests")
    c.add_argument("--out", default="build/pipeline", help="output folder")
    c.add_argument("--namespace", default=None, help="namespace of the Pipeline/PipelineVersion manifests")
    c.add_argument("--version", default="v0-1-0", help="pipeline version name suffix (DNS-1123)")
    s = ps.add_parser("submit", help="upload a pipeline version and start a run on a KFP server")
    s.add_argument("--host", required=True, help="KFP API URL, e.g. http://localhost:8080")
    s.add_argument("--experiment", default="salmon", help="KFP experiment")
    s.add_argument("--version", default=None,
                   help="pipeline version name suffix (default: v-<digest of the compiled spec>, reused while "
                        "the pipeline is unchanged); an existing one is refused")
    s.add_argument("--run-name", default=None, help="the run's name (default: salmon-<UTC date-time>)")
    s.add_argument("--wait", action="store_true",
                   help="follow the run to its end; exit 0 when it succeeded, 1 otherwise")
    s.add_argument("--timeout", type=float, default=24 * 3600, help="seconds --wait waits (default one day)")
    s.add_argument("--token", default=None, help="bearer token (else the kfp client's default auth)")
    s.add_argument("--namespace", default=None, help="user namespace (multi-user KFP)")
    s.add_argument("--no-cache", action="store_true", help="disable KFP caching for this run")
    s.add_argument("--service-account", default=None,
                   help="service account of the run's pods (default: KFP's; manifests/ grants KFP's "
                        "pipeline-runner the launcher verbs for TrainJobs, PyTorchJobs and vLLM servers)")
    s.add_argument("params", nargs="*", metavar="key=value", help="pipeline parameters")
    r = ps.add_parser("run", help="run the pipeline here with kfp.local")
    r.add_argument("--out", default="out/pipeline", help="output folder")
    r.add_argument("--no-cache", action="store_true", help="rerun every task")
    r.add_argument("-v", "--verbose", action="store_true",
                   help="print everything kfp.local prints (default: a line per task; the rest in OUT/pipeline.log)")
    r.add_argument("params", nargs="*", metavar="key=value", help="pipeline parameters")
    pp = ps.add_parser("params", help="list the pipeline parameters with types, defaults and descriptions")
    pp.add_argument("--json", action="store_true", help="print a JSON list (name, type, default, description)")


def check_names(args: argparse.Namespace) -> None:
    """The Kubernetes names a compile or submit was given (salmon.cluster.names)."""
    from salmon.cluster.names import check_name

    for flag, kind in (("namespace", "namespace"), ("version", "version"), ("service_account", "service account")):
        value = getattr(args, flag, None)
        if value:
            check_name(value, kind, f"--{flag.replace('_', '-')}")


def main(args: argparse.Namespace) -> int:
    """Run a parsed ``demo`` or ``pipeline`` command; bad input exits with 2."""
    try:
        if args.command == "demo":
            params = demo_params(args)
            check_params(params)
            out = args.out or ("out/demo" if args.base == "nano" else f"out/demo-{args.base}")
            check_output(out, "dir", "--out")
            return _run(out, params, cache=not args.no_cache, verbose=args.verbose)
        if args.action == "compile":
            check_names(args)
            check_output(args.out, "dir", "--out")
            for path in compile_pipeline(args.out, namespace=args.namespace, version=args.version):
                print(path)
            return 0
        if args.action == "params":
            _print_params(as_json=args.json)
            return 0
        params = parse_params(args.params)
        check_params(params)  # before anything starts: no output folder, no upload
        if args.action == "run":
            check_output(args.out, "dir", "--out")
            return _run(args.out, params, cache=not args.no_cache, verbose=args.verbose)
        check_names(args)
        run_id = submit(args.host, params, experiment=args.experiment, version=args.version, token=args.token,
                        namespace=args.namespace, enable_caching=not args.no_cache,
                        service_account=args.service_account or None, name=args.run_name)
        print(f"started run {run_id} on {args.host}: {run_link(args.host, run_id)}")
        if args.wait:
            return wait_for_run(args.host, run_id, token=args.token, namespace=args.namespace,
                                timeout_s=args.timeout)
        return 0
    except SalmonInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
