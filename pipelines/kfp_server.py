"""The pipeline on a Kubeflow Pipelines server: compile it, upload a version named after its
digest (reused while the spec is unchanged), start a run, and follow it to its end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from salmon.core.errors import SalmonInputError, ServiceUnavailable


def compile_pipeline(out_dir: str | Path, *, namespace: str | None = None, version: str = "v0-1-0") -> list[Path]:
    """Write ``salmon.yaml`` (IR) and ``salmon-k8s.yaml`` (Pipeline + PipelineVersion CRs)."""
    from kfp import compiler
    from kfp.compiler.compiler_utils import KubernetesManifestOptions

    from pipelines.salmon import PIPELINE_NAME, salmon_pipeline

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ir = out / "salmon.yaml"
    k8s = out / "salmon-k8s.yaml"
    for path, kwargs in ((ir, {}), (k8s, {
        "kubernetes_manifest_format": True,
        "kubernetes_manifest_options": KubernetesManifestOptions(
            pipeline_name=PIPELINE_NAME, pipeline_display_name="SALMON",
            pipeline_version_name=f"{PIPELINE_NAME}-{version}", pipeline_version_display_name=f"SALMON {version}",
            namespace=namespace, include_pipeline_manifest=True)})):
        tmp = path.with_name(".tmp-" + path.name)
        compiler.Compiler().compile(salmon_pipeline, str(tmp), **kwargs)
        tmp.replace(path)
    return [ir, k8s]


def spec_version(package: str | Path) -> str:
    """A version name for a compiled pipeline: ``v-`` and the first 12 hex digits of its IR's
    sha256, so that submitting the same pipeline twice names (and reuses) the same version."""
    import hashlib

    return "v-" + hashlib.sha256(Path(package).read_bytes()).hexdigest()[:12]


def run_name(given: str | None, now: Any = None) -> str:
    """``given``, or ``salmon-YYYYMMDD-HHMMSS`` (UTC): a run's name tells when it started."""
    import datetime

    from pipelines.salmon import PIPELINE_NAME

    if given:
        return given
    now = now or datetime.datetime.now(datetime.UTC)
    return f"{PIPELINE_NAME}-{now:%Y%m%d-%H%M%S}"


def _versions(client: Any, pipeline_id: str) -> dict[str, str]:
    """Name -> id of every version of the pipeline (all pages)."""
    found: dict[str, str] = {}
    token = ""
    while True:
        page = client.list_pipeline_versions(pipeline_id, page_token=token, page_size=100)
        for v in page.pipeline_versions or []:
            found[str(getattr(v, "display_name", None) or getattr(v, "name", ""))] = v.pipeline_version_id
        token = getattr(page, "next_page_token", None) or ""
        if not token:
            return found


def _client(host: str, token: str | None, namespace: str | None) -> Any:
    """A kfp.Client (it asks the server's /healthz on creation)."""
    import warnings

    import kfp

    with warnings.catch_warnings():  # kfp's notice that it needs a v2 server, on every client
        warnings.simplefilter("ignore", FutureWarning)
        return kfp.Client(host=host, existing_token=token, namespace=namespace)


def _kfp_unreachable(host: str, error: Exception) -> ServiceUnavailable:
    reason = str(getattr(error, "reason", None) or error).splitlines()[0][:200]
    return ServiceUnavailable(f"KFP API {host}", f"could not be reached ({type(error).__name__}: {reason})",
                              "check --host (e.g. kubectl port-forward svc/ml-pipeline-ui 8080:80) and the network")


def submit(host: str, params: dict[str, Any], *, experiment: str, version: str | None, token: str | None,
           namespace: str | None, enable_caching: bool, service_account: str | None = None,
           name: str | None = None, say: Any = print) -> str:
    """Upload the pipeline (or a new version of it) and start a run; returns the run id.

    Without ``version`` the version is named after the compiled spec's digest
    (:func:`spec_version`): an unchanged pipeline reuses its version, a changed one gets a new
    one, so submitting again never collides. A ``version`` that already exists is refused (KFP
    keeps one spec per version name). The run is named ``name`` or :func:`run_name`.

    Raises:
        SalmonInputError: ``version`` exists already.
        ServiceUnavailable: the KFP API cannot be reached.
    """
    import tempfile

    from pipelines.salmon import PIPELINE_NAME

    try:
        client = _client(host, token, namespace)
        with tempfile.TemporaryDirectory() as tmp:
            package = str(compile_pipeline(tmp, version=version or "v0")[0])
            version_name = f"{PIPELINE_NAME}-{version or spec_version(package)}"
            pipeline_id = client.get_pipeline_id(PIPELINE_NAME)
            if pipeline_id is None:
                pipeline_id = client.upload_pipeline(package, pipeline_name=PIPELINE_NAME).pipeline_id
                version_id = client.list_pipeline_versions(pipeline_id).pipeline_versions[0].pipeline_version_id
                say(f"uploaded pipeline {PIPELINE_NAME}")
            else:
                existing = _versions(client, pipeline_id)
                if version_name in existing and version:
                    raise SalmonInputError(f"--version {version}", f"pipeline version {version_name} exists already",
                                           "choose a new --version, or leave it out: the version is then named "
                                           "after the compiled spec and reused when unchanged")
                if version_name in existing:
                    version_id = existing[version_name]
                    say(f"pipeline version {version_name} (unchanged spec, reused)")
                else:
                    version_id = client.upload_pipeline_version(
                        package, pipeline_version_name=version_name, pipeline_id=pipeline_id).pipeline_version_id
                    say(f"uploaded pipeline version {version_name}")
        exp = client.create_experiment(experiment, namespace=namespace)
        run = client.run_pipeline(exp.experiment_id, job_name=run_name(name), params=params,
                                  pipeline_id=pipeline_id, version_id=version_id, enable_caching=enable_caching,
                                  service_account=service_account)
    except (SalmonInputError, ServiceUnavailable):
        raise
    except Exception as e:
        if _is_connection_error(e):
            raise _kfp_unreachable(host, e) from None
        raise
    return str(run.run_id)


def _is_connection_error(error: BaseException) -> bool:
    """A refused, reset or timed-out connection, as urllib3 (under kfp's API client) raises it."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError | TimeoutError) or type(seen).__name__ in (
                "MaxRetryError", "NewConnectionError", "ProtocolError", "ConnectTimeoutError"):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def run_link(host: str, run_id: str) -> str:
    """The run's page in the KFP UI."""
    return f"{host.rstrip('/')}/#/runs/details/{run_id}"


def wait_for_run(host: str, run_id: str, *, token: str | None, namespace: str | None, timeout_s: float,
                 say: Any = print) -> int:
    """Follow a run to its end: 0 when it succeeded, 1 when it failed, was cancelled or timed out."""


    try:
        run = _client(host, token, namespace).wait_for_run_completion(run_id, timeout=timeout_s)
    except TimeoutError:
        say(f"run {run_id} did not finish within {timeout_s:g} s")
        return 1
    except Exception as e:
        if _is_connection_error(e):
            raise _kfp_unreachable(host, e) from None
        raise
    state = str(getattr(run, "state", "UNKNOWN"))
    say(f"run {run_id} ended: {state}")
    return 0 if state == "SUCCEEDED" else 1
