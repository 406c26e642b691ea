"""No input can run code: the sources never evaluate text, unpickle, load unsafe YAML or remote model code.

Inputs (configs, principle sets, JSONL, model folders, pipeline parameters) are data. This
scans every Python file of ``salmon/``, ``components/`` and ``pipelines/`` (by syntax tree, so
``model.eval()`` and a docstring that mentions ``eval(`` are not flagged) for the calls that
would turn data into code, and proves on synthetic snippets that each one is caught.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("salmon", "components", "pipelines")
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader", "UniqueKeySafeLoader"}


def _name(node: ast.AST) -> str:
    """``a.b.c`` for a Name/Attribute chain, else ''."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _name(node.value)
        return f"{base}.{node.attr}" if base else node.attr
    return ""


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_const(node: ast.expr | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def unsafe_calls(source: str, filename: str = "<snippet>") -> list[str]:
    """``file:line: what`` for every construct that could run code from input."""
    found: list[str] = []

    def flag(node: ast.AST, what: str) -> None:
        found.append(f"{filename}:{getattr(node, 'lineno', 0)}: {what}")

    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom)
                                                      and node.module else [])
            if any(m.split(".")[0] in ("pickle", "cPickle", "_pickle", "dill", "cloudpickle") for m in modules):
                flag(node, "imports pickle")
        elif isinstance(node, ast.Name) and node.id == "pickle":
            flag(node, "uses pickle")
        elif isinstance(node, ast.Call):
            func = _name(node.func)
            if isinstance(node.func, ast.Name) and node.func.id in ("eval", "exec"):
                flag(node, f"calls {node.func.id}()")
            elif func in ("builtins.eval", "builtins.exec"):
                flag(node, f"calls {func}()")
            elif func in ("yaml.unsafe_load", "yaml.unsafe_load_all", "yaml.full_load", "yaml.full_load_all"):
                flag(node, f"calls {func}()")
            elif func in ("yaml.load", "yaml.load_all"):
                loader = _keyword(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
                if loader is None or _name(loader).split(".")[-1] not in SAFE_YAML_LOADERS:
                    flag(node, f"calls {func}() without a safe Loader")
            elif func == "torch.load" and not _is_const(_keyword(node, "weights_only"), True):
                flag(node, "calls torch.load() without weights_only=True")
            if _keyword(node, "trust_remote_code") is not None and not _is_const(
                    _keyword(node, "trust_remote_code"), False):
                flag(node, "passes trust_remote_code")
            if func.endswith("from_pretrained") and _is_const(_keyword(node, "use_safetensors"), False):
                flag(node, "calls from_pretrained(use_safetensors=False)")
    return found


def test_sources_never_turn_input_into_code() -> None:
    """No eval/exec, pickle, unsafe YAML, unrestricted torch.load, remote model code or non-safetensors
    weights anywhere in salmon/, components/ or pipelines/."""
    files = [f for d in SCANNED for f in sorted((REPO / d).rglob("*.py"))]
    assert len(files) > 20, "the scan found the sources"
    problems = [p for f in files for p in unsafe_calls(f.read_text(encoding="utf-8"), str(f.relative_to(REPO)))]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("snippet", [
    "x = eval(text)",
    "exec(code)",
    "import builtins\nbuiltins.eval(text)",
    "import pickle\nobj = pickle.loads(data)",
    "from pickle import loads",
    "import dill",
    "import yaml\nyaml.load(text)",
    "import yaml\nyaml.load(text, Loader=yaml.Loader)",
    "import yaml\nyaml.load_all(text, yaml.FullLoader)",
    "import yaml\nyaml.unsafe_load(text)",
    "import yaml\nyaml.full_load(text)",
    "import torch\nstate = torch.load(path)",
    "import torch\nstate = torch.load(path, weights_only=False)",
    "AutoModel.from_pretrained(path, trust_remote_code=True)",
    "AutoTokenizer.from_pretrained(path, trust_remote_code=flag)",
    "AutoModelForCausalLM.from_pretrained(path, use_safetensors=False)",
])
def test_the_scan_catches_each_unsafe_call(snippet: str) -> None:
    """Each unsafe construct, introduced anywhere, is reported (so the scan above can fail)."""
    assert unsafe_calls(snippet), snippet


@pytest.mark.parametrize("snippet", [
    "model.eval()",
    "evaluate(x)",
    'doc = "never call eval( on input"',
    "import yaml\nyaml.safe_load(text)",
    "import yaml\nyaml.load(text, Loader=yaml.SafeLoader)",
    "import yaml\nyaml.load(text, Loader=yaml.CSafeLoader)",
    "import torch\ntorch.load(path, weights_only=True)",
    "AutoModel.from_pretrained(path, local_files_only=True, trust_remote_code=False)",
    "AutoModel.from_pretrained(path, use_safetensors=True)",
])
def test_the_scan_leaves_safe_calls_alone(snippet: str) -> None:
    """Safe look-alikes are not flagged (the scan is by syntax tree, not by text)."""
    assert unsafe_calls(snippet) == [], snippet


def test_the_project_loader_counted_as_safe_is_a_safe_loader() -> None:
    import yaml

    from salmon.core.yamlio import UniqueKeySafeLoader

    assert issubclass(UniqueKeySafeLoader, yaml.SafeLoader)
