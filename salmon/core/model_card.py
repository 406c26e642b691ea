"""The model card written into a registered model version's description (Markdown).

Pure text from what the ``register`` task already knows: the base model, the principle sets
(from the ``salmon.principles.<set>.digest`` / ``.uri`` tags), the datasets of the runs the
model descends from, and the gate figures against their thresholds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from salmon.core.stages import STAGES

WHAT = {name: stage.model for name, stage in STAGES.items() if stage.model}
"""What each training stage's registered model is, in one line."""


@dataclass(frozen=True)
class GateFigure:
    """One evaluation gate: the measured ``value`` against ``threshold`` (``kind`` min or max)."""

    name: str
    value: float | None
    threshold: float | None
    kind: str

    def result(self) -> str:
        if self.threshold is None:
            return "not gated"
        if self.value is None:
            return "missing"
        ok = self.value >= self.threshold if self.kind == "min" else self.value <= self.threshold
        return "pass" if ok else "FAIL"


@dataclass(frozen=True)
class DatasetLine:
    """A dataset a run in the model's lineage read or wrote."""

    stage: str
    name: str
    digest: str
    rows: str


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def principle_sets(tags: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """``(set, digest, prompt-registry URI)`` from ``salmon.principles.<set>.digest|uri`` tags
    (a set may be a file name with dots in it, e.g. ``data/identity.yaml``)."""
    prefix = "salmon.principles."
    names = sorted(k[len(prefix):-len(".digest")] for k in tags if k.startswith(prefix) and k.endswith(".digest"))
    return [(n, tags[f"{prefix}{n}.digest"], tags.get(f"{prefix}{n}.uri", "")) for n in names]


def model_card(*, name: str, version: str, stage: str, kfp_run_id: str, git_sha: str, base_source: str,
               base_reference: str, base_digest: str, tags: Mapping[str, str], datasets: Sequence[DatasetLine],
               gates: Sequence[GateFigure], champion: bool, reasons: Sequence[str]) -> str:
    """The Markdown card of ``name`` version ``version`` (a training ``stage``'s model)."""
    lines = [f"# {name} v{version}", "", f"The {WHAT.get(stage, stage)}.", "",
             f"Trained by salmon `{git_sha[:12] or 'unknown'}` in pipeline run `{kfp_run_id or 'unknown'}`.", "",
             "## Base model", "", f"- source: `{base_source or 'unknown'}`"]
    if base_reference:
        lines.append(f"- loaded from: `{base_reference}`")
    if base_digest:
        lines.append(f"- content digest: `{base_digest}`")
    lines += ["", "## Principles", ""]
    sets = principle_sets(tags)
    if sets:
        lines += ["| set | digest | prompt registry |", "|---|---|---|"]
        lines += [f"| {n} | `{d[:19]}` | `{u}` |" if u else f"| {n} | `{d[:19]}` | - |" for n, d, u in sets]
    else:
        lines.append("No principle set recorded.")
    lines += ["", "## Data", ""]
    if datasets:
        lines += ["| stage | dataset | rows | digest |", "|---|---|---|---|"]
        lines += [f"| {d.stage} | {d.name} | {d.rows or '-'} | `{d.digest[:19]}` |" for d in datasets]
    else:
        lines.append("No dataset recorded.")
    lines += ["", "## Evaluation gates", "", "| gate | value | threshold | result |", "|---|---|---|---|"]
    lines += [f"| {g.name} | {_num(g.value)} | {('≥ ' if g.kind == 'min' else '≤ ') + _num(g.threshold)} "
              f"| {g.result()} |" if g.threshold is not None else f"| {g.name} | {_num(g.value)} | - | not gated |"
              for g in gates]
    lines += ["", "Champion: " + ("yes, every gate passed." if champion else "no (" + "; ".join(reasons) + ")."),
              "", "## Use", "", "```python", "import mlflow", "",
              f'model = mlflow.pyfunc.load_model("models:/{name}/{version}")',
              'model.predict(["What is 2 + 3?"])' if stage != "train_rm" else
              'model.predict([{"prompt": "What is 2 + 3?", "response": "5", "principles": ["Be concise."]}])',
              "```", "", f"or `mlflow models serve -m models:/{name}/{version} --env-manager local`.", ""]
    return "\n".join(lines)
