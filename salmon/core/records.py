"""One typed definition per data record. Every stage reads and writes these as JSONL.

Records link by explicit ids (``prompt_id``, ``pair_id``, ``instance_id``), never by position
or shuffle order.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from salmon.core.principles import PromptType

MetaValue = str | int | float | bool


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    KEY: ClassVar[tuple[str, ...]] = ()
    """The fields that identify a record: no two records of one file share them."""


class PromptRecord(_Record):
    """A user prompt."""

    KEY = ("prompt_id",)

    prompt_id: str = Field(min_length=1, description="Unique id of the prompt.")
    instruction: str = Field(min_length=1, description="The user's request.")
    input: str = Field(default="", description="Optional extra input appended to the instruction.")
    prompt_type: PromptType = Field(default="general", description="general, reasoning or red_teaming.")
    split: Literal["train", "heldout"] = Field(default="train", description="Data split.")
    meta: dict[str, MetaValue] = Field(default_factory=dict, description="Free-form tags.")

    def full_instruction(self) -> str:
        """Instruction with the input appended after a blank line, as the method does."""
        return f"{self.instruction}\n\n{self.input}" if self.input else self.instruction


class SFTExample(_Record):
    """One principle-engraving example: an instruction and the answer to train on (method §1.4)."""

    KEY = ("example_id",)

    example_id: str = Field(min_length=1, description="Unique id; also picks the system prompt (index parity).")
    instruction: str = Field(min_length=1, description="The user's request.")
    input: str = Field(default="", description="Optional extra input appended to the instruction.")
    response: str = Field(min_length=1, description="The answer, usually ending with the end-of-turn marker.")
    prompt_type: PromptType = Field(default="general", description="general, reasoning or red_teaming.")
    source: str = Field(default="selfalign", description="What produced the response (selfalign, nano, ...).")

    def full_instruction(self) -> str:
        return f"{self.instruction}\n\n{self.input}" if self.input else self.instruction


class GenerationRecord(_Record):
    """One raw self-alignment generation and what the post-filters made of it (selfalign's audit)."""

    KEY = ("prompt_id",)

    prompt_id: str = Field(min_length=1, description="The prompt it answers.")
    instruction: str = Field(description="The user's request.")
    input: str = Field(default="", description="Optional extra input.")
    generation: str = Field(description="The text after the internal-thought header, special tokens removed.")
    ended_at_eos: bool = Field(description="The model ended its turn with eos.")
    reason: str = Field(description="The filter's verdict: kept, or why it was dropped.")
    answer: str | None = Field(default=None, description="The kept answer (None when dropped).")


class ResponsePair(_Record):
    """Two responses to one prompt, to be judged against each other."""

    KEY = ("pair_id",)

    pair_id: str = Field(min_length=1, description="Unique id of the pair.")
    prompt: PromptRecord = Field(description="The prompt both outputs answer.")
    output_1: str = Field(description="First response.")
    output_2: str = Field(description="Second response.")


class Judgement(_Record):
    """The judge's verdict on one pair under one principle, in both presentation orders.

    Both deltas are oriented so that a positive value favours ``output_1``:
    ``delta_12 = logit(a) - logit(b)`` with output_1 shown as (a), and
    ``delta_21 = logit(b) - logit(a)`` with output_1 shown as (b).
    """

    KEY = ("pair_id", "principle_id")

    pair_id: str
    principle_id: str
    delta_12: float
    delta_21: float
    backend: str = Field(description="Which judge produced it: hf, rules, ...")

    @property
    def consistent(self) -> bool:
        """Both orders agree on the winner (a zero delta counts as no opinion)."""
        return self.delta_12 * self.delta_21 > 0

    @property
    def label(self) -> Literal[0, 1, 2]:
        """1 if output_1 wins in both orders, 2 if output_2 does, 0 for a tie."""
        if self.delta_12 > 0 and self.delta_21 > 0:
            return 1
        if self.delta_12 < 0 and self.delta_21 < 0:
            return 2
        return 0


class RMPrinciple(_Record):
    """A principle line as shown to the reward model in one training instance."""

    principle_id: str
    negated: bool = Field(description="The negative definition is shown instead of the definition.")
    text: str = Field(description="The exact line text the RM sees (without the '- ' bullet).")
    score: float = Field(description="Normalised judge score, sign flipped if negated.")


class RMInstance(_Record):
    """One principle-conditioned preference for reward-model training."""

    KEY = ("instance_id",)

    instance_id: str
    pair_id: str
    augmentation_pass: int = Field(ge=0)
    instruction: str = Field(description="Full instruction (with input) the responses answer.")
    output_1: str
    output_2: str
    principles: list[RMPrinciple] = Field(min_length=0, description="Lines in display order.")
    preference: Literal[1, 2] = Field(description="Which output the RM should prefer.")
    dominant_index: int = Field(description="Index in principles of the deciding principle; -1 if a rule decided.")
    noise_flip: bool = Field(default=False, description="The label was flipped as label noise.")
    rule_flag: bool = Field(default=False, description="A rule (AI phrase, language) set the label.")
    lang: str | None = Field(default=None, description="Detected language of the instruction.")


class ScoreRequest(_Record):
    """Input of ``salmon rm score``: a response to score under arbitrary principle texts."""

    prompt: str
    response: str
    principles: list[str] = Field(description="Principle texts exactly as the RM should see them.")


class ScoredResponse(ScoreRequest):
    """Output of ``salmon rm score``: the request plus the reward."""

    reward: float


class PreferenceExport(_Record):
    """The common preference format used by TRL and others."""

    prompt: str
    chosen: str
    rejected: str


def to_preference_export(instance: RMInstance) -> PreferenceExport:
    """An RM instance as ``prompt / chosen / rejected`` (principles are dropped)."""
    if instance.preference == 1:
        chosen, rejected = instance.output_1, instance.output_2
    else:
        chosen, rejected = instance.output_2, instance.output_1
    return PreferenceExport(prompt=instance.instruction, chosen=chosen, rejected=rejected)
