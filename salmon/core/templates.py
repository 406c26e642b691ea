"""Prompt layouts of the judge and the reward model, as segments of plain text.

Segments are joined with no separator. Each segment boundary falls right after a newline, so
that tokenizing the segments one by one gives the same tokens as tokenizing the whole prompt
for byte-level BPE tokenizers; the judge relies on this to reuse the shared prefix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

DROMEDARY_SYSTEM = (
    "# Dromedary\n\n"
    "## System Overview\n\n"
    "Dromedary is an AI assistant that answers the user's questions helpfully, honestly and "
    "harmlessly. Each user turn starts with '### User' and each answer with '### Dromedary'.\n\n"
    "### User"
)
"""The concise system prompt of the policy; the instruction follows on the next line."""

DROMEDARY_SYSTEM_STANDARD = (
    "# Dromedary\n\n"
    "## System Overview\n\n"
    "Dromedary is an AI assistant that answers the user's questions helpfully, honestly and "
    "harmlessly. Each user turn starts with '### User' and each answer with '### Dromedary'.\n\n"
    "## Example\n\n"
    "### User\nWho are you?\n\n"
    "### Dromedary\nI am Dromedary, an AI assistant. I answer questions, explain ideas and help "
    "with writing and reasoning tasks. I try to be accurate, to say so when I am unsure, and to "
    "decline requests that could hurt someone.\n\n"
    "### User"
)
"""The standard system prompt: the concise one plus a self-introduction exchange."""


SFT_SYSTEM_PROMPTS = (DROMEDARY_SYSTEM, DROMEDARY_SYSTEM_STANDARD)
"""The distilled system prompts SFT alternates over in the Dromedary format (method §1.4)."""

DROMEDARY_STOP = "\n\n### User"
"""Where a turn ends in the Dromedary format: the next user turn's header."""

DROMEDARY_END_OF_TURN = DROMEDARY_STOP + "\n"
"""What a finished answer ends with in Dromedary-format training data (SFT targets end with it)."""


def policy_query(instruction: str, system_prompt: str = DROMEDARY_SYSTEM) -> str:
    """The policy's input: system prompt (ending in ``### User``), the instruction, the answer header."""
    return f"{system_prompt}\n{instruction.strip()}\n\n### Dromedary"


JUDGE_OVERVIEW = (
    "Dromedary compares two outputs written for the same instruction and picks the better one, "
    "or, when both fall short, the one that falls less short. Each example has an instruction, "
    "Output (a) and Output (b)."
)
JUDGE_REQUEST = ("Read the instruction and the two outputs below, then say which output you prefer.\n\n"
                 "#### Instruction\n")
JUDGE_HEADER = (
    "# Dromedary\n\n"
    "## System Overview\n\n"
    f"{JUDGE_OVERVIEW}\n\n"
    "## User Conversation\n\n"
    "### User\n"
    f"{JUDGE_REQUEST}"
)
"""The judge prompt's opening in plain text (the method's layout)."""

ChatWrap = tuple[str, str]
"""A chat template's text before a user message's content and after it, up to the opening of the
assistant turn (:func:`salmon.turns.chat_wrap`)."""


@dataclass(frozen=True)
class JudgePrompt:
    """The judge prompt for one (pair, order, principle), in three segments.

    ``shared`` depends only on the pair's instruction, ``outputs`` on the presentation order,
    ``principle`` on the principle. The prompt ends right after ``Output (``: the next token is
    ``a`` or ``b``.
    """

    shared: str
    outputs: str
    principle: str

    @property
    def text(self) -> str:
        return self.shared + self.outputs + self.principle


def judge_shared(instruction: str, wrap: ChatWrap | None = None) -> str:
    """Segment 1: header and instruction. With a chat ``wrap``, the user turn opens with the
    overview and the request instead of the plain-text headings."""
    header = JUDGE_HEADER if wrap is None else f"{wrap[0]}{JUDGE_OVERVIEW}\n\n{JUDGE_REQUEST}"
    return f"{header}{instruction.strip()}\n\n"


def judge_outputs(output_a: str, output_b: str) -> str:
    """Segment 2: the two outputs in presentation order."""
    return f"#### Output (a)\n{output_a.strip()}\n\n#### Output (b)\n{output_b.strip()}\n\n"


def judge_principle(name: str, definition: str, wrap: ChatWrap | None = None) -> str:
    """Segment 3: the one principle to judge by, then the pre-filled answer stem (which opens the
    assistant turn with a chat ``wrap``)."""
    turn = "\n\n### Dromedary\n" if wrap is None else wrap[1]
    return (
        "#### Annotation Guide\n"
        "Judge by one aspect only this time.\n"
        f"{name}: {definition.strip()}\n"
        "Pick the output that is better according to this definition alone."
        f"{turn}"
        f"I have read the instruction, both outputs and the definition of {name}. "
        f"The more {name} output is Output ("
    )


def judge_prompt(instruction: str, output_a: str, output_b: str, name: str, definition: str,
                 wrap: ChatWrap | None = None) -> JudgePrompt:
    """All three segments of a judge prompt (plain text, or inside a chat ``wrap``)."""
    return JudgePrompt(judge_shared(instruction, wrap), judge_outputs(output_a, output_b),
                       judge_principle(name, definition, wrap))


RM_HEADER = "# Reviewing an AI system\n\n### The AI system's response\n"
RM_BETWEEN = "\n\n### The instruction it answers\n"
RM_GUIDE = "\n\n### What a good response does\n"
RM_CLOSING = "\n## Reviewer\nThe quality of the output is"

PMP_GUIDE_LINES = (
    "Is the response helpful to the person who wrote the instruction?",
    "Is it written in natural language, without needless repetition?",
    "Is what it says correct?",
)


@dataclass(frozen=True)
class RMPrompt:
    """The reward-model prompt as five segments; the response comes before the instruction.

    The reward is read at the last token of ``closing`` ("... output is").
    """

    header: str
    response: str
    between: str
    instruction: str
    closing: str

    @property
    def text(self) -> str:
        return self.header + self.response + self.between + self.instruction + self.closing


def rm_prompt(
    response: str,
    instruction: str,
    principles: Sequence[str],
    interventions: Sequence[str] = (),
) -> RMPrompt:
    """Fill the RM template.

    Args:
        response: the response to score.
        instruction: the instruction it answers (with input appended, if any).
        principles: principle texts, one bullet line each, in display order. The principle
            NAME is never shown, only the text.
        interventions: fixed RL-time lines shown before the principles (empty in RM training).
    """
    lines = "".join(f"- {t.strip()}\n" for t in (*interventions, *principles))
    closing = RM_GUIDE + lines + RM_CLOSING
    return RMPrompt(RM_HEADER, response.strip(), RM_BETWEEN, instruction.strip(), closing)


def pmp_prompt(response: str, instruction: str) -> RMPrompt:
    """The preference-model pre-training template: fixed generic questions, no principles."""
    return rm_prompt(response, instruction, PMP_GUIDE_LINES)
