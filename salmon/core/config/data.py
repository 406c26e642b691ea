"""The configs of the stages that make data: prompts, selfalign, sample, label, aggregate, pmp_data."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from salmon.core.config.base import (
    GENERATION_DTYPE_HELP,
    INPUT,
    MODEL_REF,
    OUTPUT,
    Device,
    DType,
    PromptFormat,
    _Config,
    _PolicyPrompt,
    _ServerClient,
)


class SampleConfig(_ServerClient, _PolicyPrompt):
    """``sample``: two responses per prompt from the policy (method §2.1)."""

    prompts: str = Field(json_schema_extra=INPUT, description="PromptRecord JSONL to answer.")
    output: str = Field(json_schema_extra=OUTPUT, description="ResponsePair JSONL to write.")
    backend: Literal["hf", "openai", "nano"] = Field(
        default="hf", description="hf: generate with a local HF model; openai: an OpenAI-compatible server "
                                  "(vLLM); nano: the nano response generator.")
    model: str | None = Field(default=None, json_schema_extra=MODEL_REF,
                              description="HF model folder or packaged model name, e.g. smollm2 (hf backend).")
    adapter: str | None = Field(json_schema_extra=INPUT,
        default=None, description="PEFT adapter merged into the model (the SFT policy); with openai, the server "
                                  "serves it as a LoRA model (see served_model).")
    seeds: tuple[int, int] = Field(default=(42, 43), description="One sampling seed per response.")
    temperature: float = Field(default=0.7, gt=0, description="Sampling temperature.")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(default=768, ge=1, description="Longest response in tokens.")
    min_chars: int = Field(default=16, ge=0, description="Drop a prompt if either response is shorter.")
    stop: str | None = Field(
        default=None, description="Responses are cut before this marker (and generation stops at it); default "
                                  "'###' with dromedary, none with chat_template (the turn ends at eos).")
    batch_size: int = Field(default=8, ge=1, description="Prompts per generate call (hf) or per request (openai).")
    device: Device = Field(default="auto", description="auto picks cuda when available.")
    dtype: DType = Field(default="float32", description=GENERATION_DTYPE_HELP)
    limit: int | None = Field(default=None, ge=1, description="Use only the first N prompts.")


class LabelConfig(_ServerClient):
    """``label``: the judge compares each pair under each principle, in both orders (method §2.2)."""

    pairs: str = Field(json_schema_extra=INPUT, description="ResponsePair JSONL to judge.")
    output: str = Field(json_schema_extra=OUTPUT, description="Judgement JSONL to write.")
    principles: str = Field(
        json_schema_extra=INPUT, default="reward_model", description="Principle set name or YAML path.")
    principle_ids: list[str] | None = Field(default=None, description="Judge only these principles.")
    backend: Literal["hf", "openai", "rules"] = Field(
        default="hf", description="hf: a local causal LM judges by logits; openai: a model server judges by "
                                  "logprobs (vLLM); rules: nano checkers score.")
    model: str | None = Field(
        default=None, json_schema_extra=MODEL_REF,
        description="HF model folder (or packaged model name) of the judge (hf); with openai, the served model's "
                    "folder, whose tokenizer builds the prompts.")
    adapter: str | None = Field(json_schema_extra=INPUT,
        default=None, description="PEFT adapter merged into the judge (the SFT policy); with openai, the server "
                                  "serves it as a LoRA model (see served_model).")
    prompt_format: PromptFormat = Field(
        default="dromedary",
        description="dromedary: the judge prompt as plain text (the method's); chat_template: the same text as a "
                    "user turn in the tokenizer's chat template, the answer stem opening the assistant turn.")
    letter_logprobs: Literal["token_ids", "top", "echo"] = Field(
        default="token_ids",
        description="openai backend: how log P(a) and log P(b) are read: token_ids asks for the two letters by id "
                    "(vLLM logprob_token_ids); top reads the top_logprobs likeliest tokens; echo scores prompt+letter. "
                    "Prompts whose letters are missing from an answer are scored by echo.")
    top_logprobs: int = Field(
        default=20, ge=1,
        description="openai backend, letter_logprobs=top: tokens read per prompt (--max-logprobs must allow it).")
    batch_size: int = Field(
        default=4, ge=1, description="Pairs per forward pass (hf) or per round of concurrent requests (openai).")
    max_length: int = Field(default=1536, ge=16, description="Longest judge prompt in tokens.")
    reuse_prefix: bool = Field(
        default=True, description="Share the KV cache of the instruction and outputs across principles and orders.")
    principle_groups: int = Field(
        default=4, ge=1,
        description="hf with reuse_prefix: the principle segments of a batch run in at most this many forward calls "
                    "of principles of similar length, each padded only to its own longest (1: one call, all padded "
                    "to the longest principle).")
    device: Device = Field(default="auto", description="auto picks cuda when available.")
    dtype: DType = Field(default="float32", description="Judge weights dtype.")
    flush_every: int = Field(default=8, ge=1, description="Batches between progress-file flushes.")
    limit: int | None = Field(default=None, ge=1, description="Judge only the first N pairs.")
    audit_pairs: int = Field(
        default=0, ge=0, description="With backend=rules: also judge the first N pairs with the hf judge (model, "
        "adapter) and report how often it agrees with the checkers and how often it is position-consistent; its "
        "verdicts are reported, never written.")
    progress: bool = Field(default=True, description="Show a progress line on stderr.")


class AggregateConfig(_Config):
    """``aggregate``: principle-conditioned RM instances from judgements (method §2.3)."""

    pairs: str = Field(json_schema_extra=INPUT, description="ResponsePair JSONL that was judged.")
    judgements: str = Field(json_schema_extra=INPUT, description="Judgement JSONL from label.")
    output: str = Field(json_schema_extra=OUTPUT, description="RMInstance JSONL to write.")
    principles: str = Field(
        json_schema_extra=INPUT, default="reward_model", description="Principle set name or YAML path.")
    dimensions: list[str] | None = Field(
        default=None, description="Principle ids to use; default: those with rm_training true (8 of 11).")
    holdout_principles: list[str] = Field(
        default=[], description="Principle ids kept out of every instance, so that the RM never sees them in "
        "training; eval_rm's zero_shot then measures how it follows them from their definition alone.")
    splits: list[Literal["train", "heldout"]] = Field(
        default=["train"], description="Use pairs whose prompt is in these splits.")
    normalizer: Literal["variance", "std"] = Field(
        default="variance", description="Divide each principle's scores by the variance (the method) or std.")
    passes: int = Field(default=4, ge=1, description="Augmentation passes over the data.")
    geometric_p: float = Field(default=0.2, gt=0, le=1, description="K ~ Geometric(p) principles per instance.")
    max_principles: int = Field(default=8, ge=1, description="K is redrawn until K <= this.")
    negation_p: float = Field(default=0.5, ge=0, le=1, description="Chance each shown principle is negated.")
    ai_phrase: str = Field(default="As an AI language model", description="Phrase that marks a worse output.")
    ai_phrase_p: float = Field(default=0.5, ge=0, le=1, description="Chance the AI-phrase rule sets the label.")
    language_rule: bool = Field(default=True, description="Prefer the output in the instruction's script.")
    label_noise: float = Field(default=0.10, ge=0, le=1, description="Label flip chance.")
    rule_label_noise: float = Field(default=0.25, ge=0, le=1, description="Label flip chance when a rule fired.")
    swap_p: float = Field(default=0.5, ge=0, le=1, description="Chance output_1 and output_2 are swapped.")
    seed: int = Field(default=42, description="Seed of the one RNG used.")
    export_preferences: bool = Field(
        default=True, description="Also write <output>.preferences.jsonl in prompt/chosen/rejected form.")


class PMPSource(_Config):
    """One JSONL file of public preference data to turn into PMP pairs."""

    uri: str = Field(
        json_schema_extra=INPUT, description="Local path or s3://bucket/key of a JSONL file, one object per line "
                                             "(uncompressed).")
    format: Literal["hh_rlhf", "shp"] = Field(
        description="hh_rlhf: Anthropic HH-RLHF lines (chosen, rejected transcripts); shp: Stanford SHP lines "
                    "(history, human_ref_A, human_ref_B, labels, score_ratio).")
    limit: int | None = Field(default=None, ge=1, description="Keep at most N pairs of this source (in file order).")


class PMPDataConfig(_Config):
    """``pmp_data``: generic preference pairs from HH-RLHF / SHP files for train_rm's PMP phase."""

    sources: list[PMPSource] = Field(min_length=1, description="Preference files to read, in order.")
    output: str = Field(json_schema_extra=OUTPUT, description="RMInstance JSONL to write (train_rm's pmp_data).")
    shp_min_score_ratio: float = Field(
        default=2.0, ge=0, description="shp: keep a pair only when its score_ratio is greater than this (the "
                                       "original's cleaning keeps score_ratio > 2).")
    dedupe: bool = Field(
        default=True, description="Drop a pair whose instruction and two answers equal an earlier one's (first wins).")
    shuffle: bool = Field(default=True, description="Shuffle the merged pairs (seeded) before max_pairs and writing.")
    max_pairs: int | None = Field(
        default=None, ge=1, description="Write at most N pairs (after the shuffle: a random subset); null for all.")
    seed: int = Field(default=42, description="Seed of the shuffle.")



class PromptSource(_Config):
    """One JSONL file of prompts to load."""

    uri: str = Field(
        json_schema_extra=INPUT, description="Local path or s3://bucket/key of a JSONL file, one object per line.")
    prompt_type: Literal["general", "reasoning", "red_teaming"] = Field(
        default="general", description="Type tag of every prompt of this source (picks the RL length multiplier).")
    instruction_field: str = Field(default="instruction", description="JSON key of the instruction.")
    input_field: str | None = Field(default=None, description="JSON key of an optional extra input.")
    clean_chat: bool = Field(
        default=False, description="Strip chat-export artefacts (n / m counters, 'Share Prompt', 'Language: X').")
    drop_phrases: list[str] = Field(
        default=[], description="Drop prompts containing any of these (case-insensitive), e.g. NLI items.")
    limit: int | None = Field(default=None, ge=1, description="Keep at most N prompts of this source.")


class RedTeamConfig(_Config):
    """Topic-guided red-teaming synthesis (TGRT, method §1.3) by a base model."""

    model: str = Field(description="Base model folder (or packaged model name) that brainstorms topics and writes "
                                   "questions.", json_schema_extra=MODEL_REF)
    seeds: str = Field(
        default="data/red_team_seeds.jsonl", json_schema_extra=INPUT,
        description="JSONL seeds, one per question type: {type, topic, question}; a relative path that is no file "
                    "is looked up in the principles folder (default: the 12 shipped question types; the method "
                    "ships about 20).")
    topic_rounds: int = Field(
        default=6, ge=1,
        description="Brainstorm rounds (each asks for new topics per type). The method's script brainstorms 9 "
                    "rounds but writes its questions from the topics after 6 (its 'epoch 5' file).")
    topics_shown: int = Field(default=5, ge=1, description="Known topics shown per brainstorm prompt.")
    examples_shown: int = Field(default=5, ge=1, description="Seed examples shown per question prompt.")
    hints_per_prompt: int = Field(default=5, ge=1, description="(type, topic) hints per question prompt.")
    max_topic_words: int = Field(default=3, ge=1, description="Longest topic kept, in words.")
    topic_tokens: int = Field(default=128, ge=1, description="New tokens per brainstorm.")
    question_tokens: int = Field(default=384, ge=1, description="New tokens per question prompt.")
    temperature: float = Field(default=1.0, ge=0, description="Sampling temperature of both steps.")
    topic_top_p: float = Field(default=0.98, gt=0, le=1, description="Nucleus sampling mass of the brainstorms.")
    question_top_p: float = Field(default=0.95, gt=0, le=1, description="Nucleus sampling mass of the questions.")
    suppress_eos: bool = Field(
        default=True,
        description="Never sample an end token (eos and the model's other end ids) in either step, so that "
                    "every generation runs to its token limit and writes more list lines (the method's logit "
                    "bias of -100 on eos); the last, unfinished line of such a generation is dropped.")
    device: Device = Field(default="auto", description="auto picks cuda when available.")


class PromptsConfig(_Config):
    """``prompts``: load, clean, dedupe and tag prompt sets; optionally synthesise red-teaming prompts."""

    sources: list[PromptSource] = Field(default_factory=list, description="Prompt files to load, in order.")
    nano_prompts: int | None = Field(
        default=None, ge=1,
        description="Add N prompts of the synthetic nano world (kept as generated, with its held-out topics).")
    output: str = Field(json_schema_extra=OUTPUT, description="PromptRecord JSONL to write.")
    min_words: int = Field(
        default=2, ge=0, description="Drop prompts shorter than this, in whitespace words (without length_tokenizer).")
    max_words: int = Field(
        default=256, ge=1, description="Drop prompts longer than this, in whitespace words (without length_tokenizer).")
    length_tokenizer: str | None = Field(
        default=None, json_schema_extra=MODEL_REF,
        description="Count prompt lengths in tokens of this tokenizer (a model folder or packaged model name; "
                    "the method counts its base model's tokens, BOS included, and keeps 2-256) and apply "
                    "min_tokens/max_tokens instead of the word bounds. Default null: whitespace words, since this "
                    "stage needs no model and may run before one is chosen (English text runs about 1.3 "
                    "Llama tokens per word, so 256 words is a looser bound than 256 tokens).")
    min_tokens: int = Field(
        default=2, ge=0, description="Drop prompts shorter than this, in tokens of length_tokenizer (when set).")
    max_tokens: int = Field(
        default=256, ge=1, description="Drop prompts longer than this, in tokens of length_tokenizer (when set).")
    dedupe: Literal["exact", "normalized"] = Field(
        default="exact", description="exact text, or lower-cased with punctuation and spacing removed.")
    heldout_fraction: float = Field(
        default=0.0, ge=0, lt=1, description="Share of prompts marked heldout, chosen by a hash of the text.")
    red_team: RedTeamConfig | None = Field(default=None, description="TGRT synthesis; null to skip.")
    seed: int = Field(default=42, description="Seed of the synthesis draws.")

    @model_validator(mode="after")
    def _some_source(self) -> PromptsConfig:
        if not self.sources and not self.nano_prompts and self.red_team is None:
            raise ValueError("give at least one of sources, nano_prompts or red_team")
        return self


class SelfAlignConfig(_Config):
    """``selfalign``: principle-driven answers from a base model, filtered (method §1.3-1.4)."""

    prompts: str = Field(json_schema_extra=INPUT, description="PromptRecord JSONL to answer.")
    output: str = Field(json_schema_extra=OUTPUT, description="SFTExample JSONL to write.")
    backend: Literal["hf", "nano"] = Field(
        default="hf", description="hf: in-context generation by a base model; nano: the nano generator (fallback).")
    model: str | None = Field(default=None, json_schema_extra=MODEL_REF,
                              description="Base model folder or packaged model name (hf backend).")
    prompt_format: PromptFormat = Field(
        default="dromedary",
        description="dromedary: the rules, exemplars and request as one plain-text prompt (the method's); "
                    "chat_template: rules and exemplars as the system message, the request as the user turn, the "
                    "internal-thought header opening the assistant turn, which ends at the tokenizer's eos.")
    rules: str = Field(
        json_schema_extra=INPUT, default="self_align", description="Principle set of the rules shown in the prompt.")
    exemplars: str = Field(json_schema_extra=INPUT, default="exemplars/self_align.yaml",
                           description="Exemplar YAML; a relative path is looked up in the principles folder.")
    temperature: float = Field(default=0.7, ge=0, description="Sampling temperature.")
    top_p: float = Field(default=0.95, gt=0, le=1, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(default=512, ge=1, description="Longest generation (thought + answer).")
    min_chars: int = Field(
        default=160, ge=0,
        description="Shortest finished answer kept, counting the end-of-turn text appended to it (the method "
                    "checks after appending '\\n\\n### User\\n', so 149 characters of answer suffice with "
                    "dromedary; with chat_template nothing is appended).")
    dedupe: Literal["raw", "stripped"] = Field(
        default="raw",
        description="How the answer is cut at its first repeated segment (a piece ending in a newline or "
                    "punctuation): raw compares the segments as written (the method's); stripped compares them "
                    "without surrounding whitespace, so it also cuts a repeat that follows a different space.")
    keep_truncated: bool = Field(
        default=False,
        description="Keep an answer that ran out of tokens, minus its last word (the method's filter); by default "
                    "it is dropped, since a target that never ends its turn teaches the policy not to stop.")
    copy_min_chars: int = Field(default=16, ge=0, description="Instruction/input longer than this must not be copied.")
    final_name: str = Field(default="Dromedary",
                            description="The assistant's name in kept answers and in the identity conversations.")
    identity: bool = Field(
        default=True,
        description="Add identity conversations ('Who are you?' answered with final_name) to the output, as the "
                    "method mixes such conversations into its SFT data; they are added after the filters and "
                    "the kept-answer gate, with source 'identity'.")
    identity_file: str = Field(
        json_schema_extra=INPUT, default="data/identity.yaml",
        description="Identity conversation YAML (questions, answers with {name}); a relative path is looked up in "
                    "the principles folder.")
    identity_examples: int | None = Field(
        default=None, ge=1,
        description="How many identity conversations to add: null adds every (question, answer) pair of the file "
                    "once; N adds N, drawn by seed (every pair before any repeats).")
    generations_output: str | None = Field(json_schema_extra=OUTPUT,
        default=None, description="Also write every raw generation with its filter reason here (JSONL), to audit "
                                  "the filters; null: not written.")
    splits: list[Literal["train", "heldout"]] = Field(default=["train"], description="Prompts to answer.")
    limit: int | None = Field(default=None, ge=1, description="Answer only the first N prompts.")
    batch_size: int = Field(default=4, ge=1, description="Prompts per generate call.")
    reuse_prefix: bool = Field(
        default=True, description="Compute the KV cache of the rules-and-exemplars prefix, which every request "
        "shares, once and start each generation from it (hf backend); false encodes the whole prompt each time.")
    seed: int = Field(default=42, description="Sampling seed.")
    device: Device = Field(default="auto", description="auto picks cuda when available.")
    dtype: DType = Field(default="float32", description=GENERATION_DTYPE_HELP)
