"""The CEL rules (``x-kubernetes-validations``) of a custom resource's schema, evaluated offline with
cel-python as the API server would at create time: which apply to the values present, and which
of them a document breaks."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

HAND_WRITTEN_RULES: dict[str, str] = {}
"""CEL rules cel-python cannot compile, each mapped to the name of the check that replaces it.

Empty today: every create-time rule of the vendored CRDs (7 in TrainJob, 6 in each training
runtime) compiles and evaluates with cel-python 0.5.0; a test keeps it that way after a schema
update."""


@functools.cache
def _cel_program(rule: str) -> Any:
    """A compiled cel-python program, or None when celpy cannot compile the rule."""
    import celpy

    env = celpy.Environment()
    try:
        return env.program(env.compile(rule))
    except Exception:  # noqa: BLE001 - celpy raises several parser error types
        return None


def _walk_rules(schema: Any, value: Any,
                path: tuple[Any, ...]) -> Iterator[tuple[dict[str, Any], Any, tuple[Any, ...]]]:
    """(rule, self value, path) for every CEL rule that applies to a present value."""
    if not isinstance(schema, dict):
        return
    for rule in schema.get("x-kubernetes-validations", ()):
        yield rule, value, path
    if isinstance(value, dict):
        props = schema.get("properties")
        if isinstance(props, dict):
            for name, sub in props.items():
                if name in value:
                    yield from _walk_rules(sub, value[name], (*path, name))
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name, sub_value in value.items():
                if not isinstance(props, dict) or name not in props:
                    yield from _walk_rules(extra, sub_value, (*path, name))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            yield from _walk_rules(schema["items"], item, (*path, index))
    for key in ("allOf", "anyOf", "oneOf"):
        for sub in schema.get(key, ()) if isinstance(schema.get(key), list) else ():
            yield from _walk_rules(sub, value, path)


def cel_problems(schema: dict[str, Any], doc: dict[str, Any]) -> list[tuple[tuple[Any, ...], str, str]]:
    """The create-time CEL rules of ``schema`` (a CRD's ``openAPIV3Schema``) that ``doc`` breaks, as
    (path of the value the rule applies to, the rule's ``fieldPath`` suffix, message)."""
    # Transition rules (oldSelf) only constrain updates; hand-written checks replace the others
    # cel-python cannot compile.
    applicable = [(rule, value, path) for rule, value, path in _walk_rules(schema, doc, ())
                  if "oldSelf" not in rule.get("rule", "") and rule.get("rule", "") not in HAND_WRITTEN_RULES]
    if not applicable:
        return []
    try:
        from celpy.adapter import json_to_cel
        from celpy.evaluation import CELEvalError
    except ImportError:
        return [((), "", "cannot evaluate the CRD's CEL rules: cel-python is not installed "
                         "(install the dev extra: pip install -e '.[dev]')")]
    out: list[tuple[tuple[Any, ...], str, str]] = []
    for rule, value, path in applicable:
        expr = rule.get("rule", "")
        program = _cel_program(expr)
        if program is None:
            out.append((path, "", f"CEL rule {expr!r} cannot be compiled by cel-python and has no "
                                  "hand-written replacement (add one to salmon.cluster.validate)"))
            continue
        try:
            result = program.evaluate({"self": json_to_cel(value)})
        except Exception as err:  # noqa: BLE001 - evaluation errors reject the object, as in the API server
            out.append((path, "", f"CEL rule {expr!r} could not be evaluated: {err}"))
            continue
        if isinstance(result, CELEvalError):
            out.append((path, "", f"CEL rule {expr!r} could not be evaluated: {result}"))
        elif not bool(result):
            message = rule.get("message") or f"failed rule {expr!r}"
            out.append((path, rule.get("fieldPath", ""), f"{message} (rule: {expr})"))
    return out
