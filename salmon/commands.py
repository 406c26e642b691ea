"""What the ``salmon`` sub-commands other than the stages do: principle sets, reward scores, base
models, the nano world, the registry, Kubernetes manifests and the benchmarks. ``salmon.cli``
builds the parser and points each sub-command here; bad input raises ``SalmonInputError``."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from salmon.core.errors import SalmonInputError, ServiceUnavailable


def bounded(convert: Callable[[str], Any], accept: Callable[[Any], bool], what: str) -> Callable[[str], Any]:
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


positive_int = bounded(int, lambda v: v >= 1, "a positive integer")
non_negative_int = bounded(int, lambda v: v >= 0, "an integer >= 0")
share = bounded(float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def principles_validate(args: argparse.Namespace) -> int:
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


def principles_show(args: argparse.Namespace) -> int:
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


def principles_list(args: argparse.Namespace) -> int:
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


def rm_score(args: argparse.Namespace) -> int:
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


def base_prepare(args: argparse.Namespace) -> int:
    from salmon.base_models import prepare
    from salmon.core.paths import check_output
    from salmon.stages.common import results_only_on_stdout

    if args.out:
        check_output(args.out, "dir", "--out")
    with results_only_on_stdout():
        folder = prepare(args.name, args.out, log=lambda m: print(f"[base] {m}", file=sys.stderr, flush=True))
    print(folder)
    return 0


def base_list(args: argparse.Namespace) -> int:
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


def nano_build(args: argparse.Namespace) -> int:
    from salmon.core.paths import check_output
    from salmon.nano.model import NanoModelSpec, build_nano_model

    check_output(args.out, "dir", "--out")
    summary = build_nano_model(args.out, NanoModelSpec(pretrain_steps=args.pretrain_steps, seed=args.seed))
    print(json.dumps(summary, indent=2))
    return 0


def nano_prompts(args: argparse.Namespace) -> int:
    from salmon.core.io import write_jsonl
    from salmon.core.paths import check_output
    from salmon.nano.world import make_prompts

    check_output(args.out, "file", "--out")
    n = write_jsonl(args.out, make_prompts(args.n, args.seed, heldout_fraction=args.heldout))
    print(f"wrote {n} nano prompts to {args.out}", file=sys.stderr)
    return 0


ALIAS = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,255}$")
"""An MLflow model alias; ``latest`` and ``v<number>`` are MLflow's own names for versions."""


def registry_promote(args: argparse.Namespace) -> int:
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


def job_render(args: argparse.Namespace) -> int:
    from salmon.cluster.dryrun import render_job_yaml

    print(render_job_yaml(args.stage, args.executor, args.overrides, name=args.name,
                          validate=not args.no_validate), end="")
    return 0


def sampler_render(args: argparse.Namespace) -> int:
    from salmon.cluster.dryrun import render_sampler_yaml

    print(render_sampler_yaml(args.overrides, validate=not args.no_validate), end="")
    return 0


def bench(args: argparse.Namespace) -> int:
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


def bench_command(sub: Any) -> None:
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
    b.add_argument("--threads", type=non_negative_int, default=0, metavar="N",
                   help="torch CPU threads (default: torch's choice); on a shared or busy CPU, 1 gives steadier "
                        "figures")
    b.set_defaults(func=bench)


def cluster_commands(sub: Any) -> None:
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
    jr.set_defaults(func=job_render)

    smp = sub.add_parser("sampler", help="the vLLM server of the openai backend")
    smps = smp.add_subparsers(dest="action", required=True, metavar="ACTION")
    sr = smps.add_parser(
        "render", help="print and validate the vLLM Deployment + Service (dry run)",
        description="Render the vLLM OpenAI server's Deployment and Service, validate them offline and print "
                    "them. Overrides are server settings, e.g. model=/mnt/models/base gpus=2 "
                    "tensor_parallel_size=2 lora_modules.sft=/mnt/models/sft runtime_lora_updates=true.")
    sr.add_argument("--no-validate", action="store_true", help="skip the offline validation")
    sr.add_argument("overrides", nargs="*", metavar="key=value", help="server settings (model=... required)")
    sr.set_defaults(func=sampler_render)
