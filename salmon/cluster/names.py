"""Kubernetes names: one check for every name a salmon command takes or renders.

- ``namespace``: an RFC 1123 label (lowercase letters, digits, '-', at most 63 characters);
- ``object``: salmon's own jobs and servers, an RFC 1035 label (starting with a letter) of at
  most :data:`MAX_OBJECT_NAME` characters, so that the pod names controllers derive from it stay
  within 63;
- ``service account``, ``secret`` and ``persistent volume claim``: RFC 1123 subdomains (dots
  allowed, at most 253);
- ``version``: a pipeline version suffix, which becomes part of an object name: an RFC 1123
  label of at most 40 characters.

:func:`name_problem` says what is wrong (pydantic validators raise it as ``ValueError``);
:func:`check_name` raises it as bad input naming where the value came from.
"""

from __future__ import annotations

import re
from typing import Literal

from salmon.core.errors import SalmonInputError

NameKind = Literal["namespace", "object", "service account", "secret", "persistent volume claim", "version",
                   "priority class", "queue"]
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MAX_OBJECT_NAME = 40
"""Longest object name salmon renders: JobSet and the pod names derived from it must stay under
the 63-character label limit after the controllers add their suffixes."""

_RULES: dict[str, tuple[re.Pattern[str], int, str]] = {
    "namespace": (DNS1123_LABEL, 63, "lowercase letters, digits and '-', starting and ending with a letter or digit"),
    "object": (DNS1035_LABEL, MAX_OBJECT_NAME, "lowercase letters, digits and '-', starting with a letter and ending "
                                               "with a letter or digit"),
    "service account": (DNS1123_SUBDOMAIN, 253, "lowercase letters, digits, '-' and '.'"),
    "secret": (DNS1123_SUBDOMAIN, 253, "lowercase letters, digits, '-' and '.'"),
    "persistent volume claim": (DNS1123_SUBDOMAIN, 253, "lowercase letters, digits, '-' and '.'"),
    "version": (DNS1123_LABEL, 40, "lowercase letters, digits and '-', starting and ending with a letter or digit"),
    "priority class": (DNS1123_SUBDOMAIN, 253, "lowercase letters, digits, '-' and '.'"),
    "queue": (DNS1123_LABEL, 63, "lowercase letters, digits and '-', starting and ending with a letter or digit"),
}


def name_problem(value: object, kind: NameKind) -> str | None:
    """What is wrong with ``value`` as a Kubernetes name of ``kind``; None when it is valid."""
    pattern, longest, allowed = _RULES[kind]
    if not isinstance(value, str):
        return f"a {kind} name must be text, not {type(value).__name__}"
    if not value or len(value) > longest or not pattern.match(value):
        return f"'{value}' is not a valid {kind} name: at most {longest} characters, {allowed}"
    return None


def check_name(value: object, kind: NameKind, source: str) -> str:
    """``value`` when it is a valid name of ``kind``.

    Raises:
        SalmonInputError: naming ``source`` (the flag, setting or parameter it came from).
    """
    problem = name_problem(value, kind)
    if problem:
        raise SalmonInputError(source, problem, f"give a valid Kubernetes {kind} name, e.g. 'salmon-ml'")
    return str(value)


def name_validator(kind: NameKind, *, optional: bool = False):  # type: ignore[no-untyped-def]
    """A pydantic ``AfterValidator`` body: ``ValueError`` with :func:`name_problem`'s text."""
    def check(value: str | None) -> str | None:
        if value is None or (optional and value == ""):
            return value
        problem = name_problem(value, kind)
        if problem:
            raise ValueError(problem)
        return value
    return check
