"""Principle sets as validated data.

A principle set is a YAML file under ``principles/`` (see ``principles/README.md``). Loading
validates it against :class:`PrincipleSet`; a bad file raises one :class:`SalmonInputError`
naming the file and the field. Each set has a stable content digest that ties every run,
dataset and model to the exact principle texts it used.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from salmon.core.digest import digest_value
from salmon.core.errors import SalmonInputError
from salmon.core.yamlio import safe_load

PromptType = Literal["general", "reasoning", "red_teaming"]
"""The three prompt types of the method: general, reasoning (math, logic), red-teaming."""

SetKind = Literal["reward_model", "rl", "interventions", "self_align", "nano"]

ID_PATTERN = r"^[a-z][a-z0-9_]*$"
MAX_NAME_CHARS = 80
MAX_DEFINITION_CHARS = 2000
"""Longest principle text (about 500 tokens): a judge prompt holds one definition beside two outputs
within its 1536 tokens, and an RM input several within 1280. Longer text is refused when the
set is read, not minutes later by a stage."""
MAX_PRINCIPLES = 100
MAX_FILE_BYTES = 1 << 20
"""A principle file is refused above 1 MiB before it is parsed (100 principles of 2,000
characters are well under it)."""


class Principle(BaseModel):
    """One principle: what the judge and the reward model are told to value."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    id: str = Field(pattern=ID_PATTERN, max_length=MAX_NAME_CHARS, description="Stable identifier, lower_snake_case.")
    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS,
                      description="Short name shown to the judge, e.g. 'Concise'.")
    definition: str = Field(min_length=1, max_length=MAX_DEFINITION_CHARS,
                            description="The text shown to the judge and the RM.")
    negative_definition: str | None = Field(
        default=None, max_length=MAX_DEFINITION_CHARS,
        description="The opposite text, shown to the RM when the principle is negated."
    )
    weight: float = Field(default=1.0, ge=0, description="Sampling weight at RL time.")
    boosts: dict[PromptType, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict,
        description="Extra sampling weight for prompts of a type (the method uses +128).",
    )
    rm_training: bool = Field(
        default=True, description="Used as a dimension when aggregating RM training instances."
    )


class PrincipleSet(BaseModel):
    """A named, versioned list of principles."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(pattern=ID_PATTERN, description="Set name, e.g. 'reward_model'.")
    version: str = Field(min_length=1, description="Human version label; bump on any edit.")
    kind: SetKind = Field(description="What the set is used for.")
    description: str = Field(min_length=1, max_length=2 * MAX_DEFINITION_CHARS,
                             description="One paragraph on what the set is for.")
    principles: list[Principle] = Field(min_length=1, max_length=MAX_PRINCIPLES,
                                        description="The principles, in order.")

    @model_validator(mode="after")
    def _check(self) -> PrincipleSet:
        seen: set[str] = set()
        for i, p in enumerate(self.principles):
            if p.id in seen:
                raise ValueError(f"principles.{i}.id: duplicate id '{p.id}'")
            seen.add(p.id)
            if self.kind in ("reward_model", "nano") and not p.negative_definition:
                raise ValueError(
                    f"principles.{i}.negative_definition: required in a {self.kind} set "
                    f"(principle '{p.id}')"
                )
        return self

    def digest(self) -> str:
        """``sha256:`` digest of the set's validated content (formatting-independent)."""
        return digest_value(self.model_dump(mode="json"))

    def get(self, principle_id: str) -> Principle:
        """The principle with this id."""
        for p in self.principles:
            if p.id == principle_id:
                return p
        raise SalmonInputError(
            f"principle set {self.name}", f"no principle with id '{principle_id}'",
            f"known ids: {', '.join(self.ids())}",
        )

    def ids(self) -> list[str]:
        return [p.id for p in self.principles]

    def subset(self, ids: Sequence[str] | None) -> PrincipleSet:
        """The set restricted to ``ids`` (in the set's order); ``None`` keeps every principle.

        The subset keeps the set's name and version and gets its own digest.
        """
        if ids is None:
            return self
        for i in ids:
            self.get(i)
        if not ids:
            raise SalmonInputError(f"principle set {self.name}", "an empty subset of principle ids",
                                   "give at least one id, or null for the whole set")
        return self.model_copy(update={"principles": [p for p in self.principles if p.id in set(ids)]})


def principles_dir() -> Path:
    """Where the shipped principle sets live: ``$SALMON_PRINCIPLES_DIR`` or ``<repo>/principles``."""
    env = os.environ.get("SALMON_PRINCIPLES_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "principles"


def available_sets() -> list[str]:
    """Names of the shipped sets."""
    d = principles_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def _format_error(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def parse_principle_set(data: Any, source: str) -> PrincipleSet:
    """Validate already-parsed YAML/JSON data as a principle set."""
    if data is None:
        raise SalmonInputError(source, "the file is empty",
                               "write a principle set as in principles/README.md")
    if not isinstance(data, dict):
        raise SalmonInputError(source, "a principle set must be a mapping with name, version, "
                               "kind, description and principles", "see principles/README.md for the schema")
    try:
        return PrincipleSet.model_validate(data)
    except ValidationError as e:
        raise SalmonInputError(source, _format_error(e),
                               "see principles/README.md for the schema") from None


def load_principle_set(name_or_path: str | Path) -> PrincipleSet:
    """Load a set by shipped name (``reward_model``) or by path to a YAML file."""
    text = str(name_or_path)
    path = Path(text)
    if not (text.endswith((".yaml", ".yml")) or path.is_file()):
        path = principles_dir() / f"{text}.yaml"
        if not path.is_file():
            raise SalmonInputError(
                f"principle set '{text}'", "no such set",
                f"use one of: {', '.join(available_sets())}, or a path to a YAML file",
            )
    if not path.is_file():
        raise SalmonInputError(str(path), "file not found", "check the path")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise SalmonInputError(str(path), f"is {path.stat().st_size:,} bytes, more than a principle set may be "
                               f"({MAX_FILE_BYTES:,}: at most {MAX_PRINCIPLES} principles of {MAX_DEFINITION_CHARS:,} "
                               "characters)", "shorten the definitions")
    try:
        data = safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise SalmonInputError(str(path), "not UTF-8 text", "save the file as UTF-8") from None
    except yaml.YAMLError as e:
        raise SalmonInputError(str(path), f"not valid YAML ({e})".replace("\n", " "),
                               "fix the YAML syntax at the line shown") from None
    return parse_principle_set(data, str(path))
