"""Reading YAML: the safe loader, refusing a key given twice in one mapping.

PyYAML keeps the last of two equal keys without a word, so a config or principle file with a
key repeated by mistake would silently lose the first value. Every YAML the project reads
(configs, presets, principle sets, exemplars, key=value overrides, manifests) goes through
:func:`safe_load` / :func:`safe_load_all`; a repeated key is a ``yaml.YAMLError`` naming both
lines, which the readers report as bad input.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import yaml


class UniqueKeySafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping with the same key twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        first: dict[Hashable, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # the base class reports an unhashable key
            if key in first:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found the key {key!r} twice (first on line {first[key] + 1}); give each key once",
                    key_node.start_mark)
            first[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def safe_load(text: str) -> Any:
    """One YAML document, safely, refusing repeated keys."""
    return yaml.load(text, Loader=UniqueKeySafeLoader)


def safe_load_all(text: str) -> list[Any]:
    """Every YAML document of a stream, safely, refusing repeated keys."""
    return list(yaml.load_all(text, Loader=UniqueKeySafeLoader))


class _PlainSafeDumper(yaml.SafeDumper):
    """``yaml.SafeDumper`` that writes a repeated object out again instead of as an anchor
    (``&id001``) and an alias (``*id001``): manifests meant for people and for diffs."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def safe_dump(data: Any, **options: Any) -> str:
    """``data`` as YAML text: safe types only, keys in insertion order, no anchors or aliases."""
    options.setdefault("sort_keys", False)
    text: str = yaml.dump(data, Dumper=_PlainSafeDumper, **options)
    return text
