"""What a command-line user expects of any tool: ``--version``, shell completion, and machine-
readable output (``--json``) from every command that lists things."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from salmon.cli import main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from salmon import __version__

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"salmon {__version__}"


@pytest.mark.parametrize(("argv", "key", "expected"), [
    (["principles", "list", "--json"], "name", "nano"),
    (["base", "list", "--json"], "name", "smollm2"),
    (["pipeline", "params", "--json"], "name", "pmp_sources"),
])
def test_list_commands_print_json(argv: list[str], key: str, expected: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows)
    assert expected in [r[key] for r in rows]
    if argv[0] == "principles":
        nano = next(r for r in rows if r["name"] == "nano")
        assert nano["digest"].startswith("sha256:") and nano["principles"] >= 1
    if argv[0] == "pipeline":
        assert {"name", "type", "default", "description"} <= set(rows[0])


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completion_offers_subcommands_and_options(tmp_path: object) -> None:
    script = subprocess.run([sys.executable, "-m", "salmon", "completion", "bash"], capture_output=True, text=True,
                            check=True).stdout
    assert "complete -F _salmon salmon" in script

    def offered(*words: str) -> list[str]:
        probe = (script + f"\nCOMP_WORDS=(salmon {' '.join(words)}); COMP_CWORD={len(words)}; _salmon; "
                 'printf "%s\\n" "${COMPREPLY[@]}"')
        out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True).stdout
        return out.split()

    assert offered("princ") == ["principles"]
    assert "list" in offered("principles", "") and "validate" in offered("principles", "")
    assert offered("principles", "list", "--j") == ["--json"]
    assert "--executor" in offered("job", "render", "--")
    assert "ppo" in offered("") and "pmp_data" in offered("")
    assert offered("completion", "b") == ["bash"]


def test_demo_and_pipeline_arrive_as_entry_points_not_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    """The library never names the application package: ``demo`` and ``pipeline`` are entry points
    of the ``salmon.commands`` group, and they answer through ``salmon``."""
    import inspect
    from importlib.metadata import entry_points

    import salmon.cli

    eps = {ep.name: ep.value for ep in entry_points(group=salmon.cli.COMMAND_PLUGINS)}
    assert eps == {"demo": "pipelines.cli:add_demo_command", "pipeline": "pipelines.cli:add_pipeline_command"}
    assert "pipelines" not in inspect.getsource(salmon.cli)
    with pytest.raises(SystemExit) as done:
        main(["pipeline", "--help"])
    assert done.value.code == 0 and "compile" in capsys.readouterr().out
