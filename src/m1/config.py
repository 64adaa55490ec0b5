"""The evaluation config: resolved once, saved with every run."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import asdict, field, fields
from typing import Annotated, Iterable, Literal

from pydantic import Field, field_validator, model_validator

from m1.configfile import settings
from m1.engine_options import check_options
from m1.errors import M1Error
from m1.models import is_embedded, registered_name

M1_INSTRUCTION = "Return your final response within \\boxed{}."
# Engine options that only decide how the work is scheduled, never what is computed: a run
# resumed with other values (more requests in flight, other replicas) continues the same run.
SCHEDULING_OPTIONS = ("n_slots", "n_threads", "n_batch", "concurrency", "base_url", "timeout",
                      "skip_unreachable", "max_num_seqs", "batch_size", "api_key_env", "open_questions")


MAX_BUDGETS = 1000  # a sweep of more budgets is almost surely a typo in a range


def parse_budgets(spec: str | int | Iterable[int | str]) -> tuple[int, ...]:
    """Thinking budgets from `--budgets` syntax: comma-separated items, each a number or a
    range `start:stop:step` (stop included when it lands on the grid: 32:512:32 is 32, 64, …,
    512), e.g. "16,32:512:32,1024". Also a list/tuple of numbers or such strings (config files).
    Sorted ascending, duplicates dropped. Bad input raises M1Error with one line."""
    parts: list[object]
    if isinstance(spec, str):
        parts = list(spec.split(","))
    elif isinstance(spec, (int, bool)):
        parts = [spec]
    else:
        try:
            parts = list(spec)
        except TypeError:
            raise M1Error(f"--budgets: expected numbers or a string like 32:512:32, got {spec!r}") from None
    out: set[int] = set()
    for part in parts:
        for item in part.split(",") if isinstance(part, str) else [part]:
            item = item.strip() if isinstance(item, str) else item
            if item == "":
                continue
            if isinstance(item, str) and ":" in item:
                out.update(_budget_range(item))
            else:
                out.add(_budget(item, "budget"))
            if len(out) > MAX_BUDGETS:
                raise M1Error(f"--budgets: more than {MAX_BUDGETS} budgets; use a coarser step")
    if not out:
        raise M1Error("no budgets given: pass --budgets 128,256,... or a range such as 32:512:32")
    return tuple(sorted(out))


def budgets_arg(text: str) -> tuple[int, ...]:
    """parse_budgets for an argparse `type=`: a bad value becomes argparse's one-line error."""
    import argparse

    try:
        return parse_budgets(text)
    except M1Error as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--budgets: ")) from None


def _budget(value: object, what: str) -> int:
    """One positive whole number of tokens, from an int or a string of digits."""
    if isinstance(value, bool):
        raise M1Error(f"--budgets: {what} must be a whole number, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if not re.fullmatch(r"[+-]?[0-9]+", text):
            raise M1Error(f"--budgets: {what} must be a whole number, got {value!r} "
                          "(use commas and start:stop:step, e.g. 16,32:512:32)")
        value = int(text)
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise M1Error(f"--budgets: {what} must be a whole number, got {value!r}")
    if value < 0:
        raise M1Error(f"--budgets: a budget is a number of tokens, 0 or more (0: answer at once), got {value}")
    return value


def _budget_range(text: str) -> range:
    nums = text.split(":")
    if len(nums) != 3:
        raise M1Error(f"--budgets: a range is start:stop:step, got {text!r}")
    start, stop = _budget(nums[0], "a range's start"), _budget(nums[1], "a range's stop")
    step_text = nums[2].strip()
    if not re.fullmatch(r"[+-]?[0-9]+", step_text):
        raise M1Error(f"--budgets: a range's step must be a whole number, got {nums[2]!r} in {text!r}")
    step = int(step_text)
    if step <= 0:
        raise M1Error(f"--budgets: a range's step must be positive, got {step} in {text!r}")
    if start > stop:
        raise M1Error(f"--budgets: range {text!r} starts after it stops, so it holds no budget")
    n = (stop - start) // step + 1
    if n > MAX_BUDGETS:
        raise M1Error(f"--budgets: range {text!r} holds {n} budgets, more than {MAX_BUDGETS}; use a coarser step")
    return range(start, stop + 1, step)


def _adaptive_spec(spec: str, budgets: tuple[int, ...], method: str) -> str:
    """The --adaptive text, checked against the budgets and written the one way a run saves it."""
    from m1.thinking.policies import parse_policy, policy_spec

    try:
        policy = parse_policy(spec)
    except ValueError as err:
        raise M1Error(f"--adaptive {spec!r}: {err}") from None
    if len(budgets) != 1:
        raise M1Error(f"--adaptive stops each question at its own point, so it takes one budget, the cap "
                      f"(e.g. --budgets {max(budgets)}), got {len(budgets)}")
    if policy.every is not None and policy.every > budgets[0]:
        raise M1Error(f"--adaptive every={policy.every} is past the cap --budgets {budgets[0]}: no checkpoint")
    if method != "cut":
        raise M1Error("--adaptive thinks once per question; it does not combine with --independent")
    return policy_spec(policy)


KNOWLEDGE_FIELDS = ("knowledge", "knowledge_where", "knowledge_k", "knowledge_corpus", "knowledge_retriever",
                    "knowledge_at", "knowledge_counted", "knowledge_search_tags")
# `--knowledge-at search`: retrieve where the model writes a query between these (Search-o1's delimiters)
SEARCH = "search"
SEARCH_TAGS = ("<|begin_search_query|>", "<|end_search_query|>")


def insertion_points(spec: str, largest_budget: int) -> tuple[int, ...]:
    """`--knowledge-at` as thinking-token positions: "1/3,2/3" (fractions of the largest budget,
    rounded) or "64,128" (token counts). Points at or past the largest budget never happen.
    "search": no fixed point (the model's own search queries decide, EvalConfig.knowledge_search_tags)."""
    if str(spec).strip() == SEARCH:
        return ()
    points: set[int] = set()
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "/" in part or "." in part:
                num, _, den = part.partition("/")
                frac = float(num) / float(den) if den else float(num)
                if not 0 < frac < 1:
                    raise ValueError
                points.add(max(1, round(frac * largest_budget)))
            else:
                value = int(part)
                if value <= 0:
                    raise ValueError
                points.add(value)
        except (ValueError, ZeroDivisionError):
            raise M1Error(f"--knowledge-at: {part!r} is neither a fraction of the budget in (0, 1) such as 1/3, "
                          "a positive token count such as 128, nor `search`") from None
    if not points:
        raise M1Error("--knowledge-at: no insertion point given; use e.g. 1/3,2/3 or 64,128")
    return tuple(sorted(points))


Engine = Literal["llamacpp", "hf", "openai", "vllm"]  # m1.engines.ENGINES
Format = Literal["auto", "m1", "s1", "r1", "plain"]  # m1.thinking.formats.FORMATS, and auto
Grader = Literal["strict", "m1"]  # m1.grading.GRADERS
Knowledge = Literal["none", "gold", "gold-background", "counterfactual", "placebo", "retrieve"]  # CONDITIONS
NonNegative = Annotated[int, Field(ge=0)]
Positive = Annotated[int, Field(gt=0)]


@settings
class EvalConfig:
    """Everything that decides what an evaluation computes.

    The defaults are the embedded main job: SmolLM2-135M on a seeded 50-question
    sample of MedQA-USMLE at four small budgets, a few minutes on a laptop CPU.
    `format` and the other fields are resolved here, once; the resolved values are
    what a run saves and what its folder name hashes.
    """

    benchmark: str = "medqa"  # one name or several, comma-separated
    suite: str | None = None  # e.g. "m1": the paper's ten sources, those present
    data_dir: str | None = None  # where benchmarks m1 does not ship are looked for
    data: str | None = None  # a user file instead of a registered benchmark
    limit: NonNegative | None = 50  # 0 (or None): every question
    seed: int = 0
    engine: Engine = "llamacpp"
    model: str | None = None  # None: the embedded SmolLM2-135M-Instruct; llamacpp: a registered alias becomes its name
    engine_options: dict = field(default_factory=dict)
    # "auto": plain for the embedded SmolLM2, which was never trained on m1's think/answer
    # delimiters (it ends its turn at once inside them), m1 for any model you name; decided
    # by `resolved()` when the run starts, once the model that runs is known.
    format: Format = "auto"
    format_overrides: dict = field(default_factory=dict)
    # A tuple/list of budgets, or the string form "16,32:512:32,1024" (also in config files).
    budgets: tuple[int, ...] = (32, 64, 128, 256)
    answer_max_tokens: Positive = 64
    forcing_rounds: NonNegative = 0
    ignore_str: str = "Wait"
    temperature: Annotated[float, Field(ge=0)] = 0.0  # 0 is greedy
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    method: Literal["cut", "independent"] = "cut"  # independent: on the command line, --independent
    instruction: str = M1_INSTRUCTION
    system_prompt: str | None = None
    # How answers are read: "strict" (m1's) or "m1" (the official scorer's rules). Either can be
    # applied afterwards from the traces alone, so it is not part of what a run computes.
    grader: Grader = "strict"
    # Stop each question's thinking when a policy fires (m1.thinking.policies), e.g.
    # "stable=3,every=64": answers are forced every 64 tokens, thinking stops once 3 agree.
    # The one budget is then the cap. None: fixed budgets.
    adaptive: str | None = None
    # Knowledge in front of the thinking (m1.knowledge): the condition (none, gold, gold-background,
    # counterfactual, placebo, retrieve), where its text goes (before the question, or into the
    # thinking at `knowledge_at`: fractions of the largest budget or token counts, so every budget
    # of a sweep inserts at the same places and a cut sweep stays exact), how many passages a
    # retrieval brings, from which corpus (None: the shipped one) and retriever, and whether
    # inserted tokens count against the budget (by default they are context, not thinking).
    knowledge: Knowledge = "none"
    knowledge_where: Literal["prompt", "thinking"] = "prompt"
    knowledge_k: Positive = 4
    knowledge_corpus: str | None = None
    knowledge_retriever: Literal["bm25", "dense", "hybrid"] = "bm25"
    knowledge_at: str = "1/3,2/3"
    knowledge_counted: bool = False
    # `knowledge_at: search`: the model writes a query between these two strings (Search-o1's by default;
    # Search-R1-style models: ["<search>", "</search>"]) and the passages go in right after it.
    knowledge_search_tags: tuple[str, str] = SEARCH_TAGS
    # An end of thinking before this many tokens is replaced by the ignore string (not counted as a
    # forcing round): the pilot saw any passage in the prompt stop the thinking at once.
    min_thinking: NonNegative = 0

    @field_validator("budgets", mode="before")
    @classmethod
    def _budgets(cls, value: object) -> tuple[int, ...]:
        try:
            return parse_budgets(value)  # type: ignore[arg-type]
        except M1Error as e:
            raise ValueError(str(e).removeprefix("--budgets: ")) from None

    @field_validator("limit")
    @classmethod
    def _limit(cls, value: int | None) -> int | None:
        return value or None  # as on the command line: 0 means every question

    @model_validator(mode="after")
    def _together(self) -> EvalConfig:
        """The checks across fields (each raises a one-line M1Error that names the flags)."""
        check_options(self.engine, self.engine_options)
        if self.engine == "llamacpp" and (name := registered_name(self.model)) is not None:
            # An alias names the same model as the registry's name: the same config, run folder and format.
            object.__setattr__(self, "model", name)
        if self.adaptive is not None:
            object.__setattr__(self, "adaptive", _adaptive_spec(self.adaptive, self.budgets, self.method))
        if self.knowledge != "none":
            insertion_points(self.knowledge_at, max(self.budgets))
            if self.searches and (self.knowledge != "retrieve" or self.knowledge_where != "thinking"):
                raise M1Error("--knowledge-at search retrieves where the model writes a query: it needs "
                              "--knowledge retrieve --knowledge-where thinking")
            if self.searches and not all(self.knowledge_search_tags):
                raise M1Error("knowledge_search_tags: both the opening and the closing string must be non-empty")
            if self.knowledge_where == "thinking" and self.adaptive:
                raise M1Error("--adaptive does not combine with --knowledge-where thinking; "
                              "put the knowledge in the prompt")
        return self

    @property
    def searches(self) -> bool:
        """Retrieval where the model writes a search query (`--knowledge-at search`)."""
        return self.knowledge != "none" and str(self.knowledge_at).strip() == SEARCH

    def insertion_points(self) -> tuple[int, ...]:
        """Where thinking insertions go, in counted thinking tokens (empty unless into the thinking)."""
        if self.knowledge == "none" or self.knowledge_where != "thinking":
            return ()
        return insertion_points(self.knowledge_at, max(self.budgets))

    def resolved(self, embedded: bool | None = None) -> EvalConfig:
        """The config with format "auto" decided: plain for the embedded SmolLM2 (never trained
        on m1's delimiters), m1 for any other model. `embedded` says whether the model that
        will run is the embedded one (default: the llamacpp engine with no model named, or the
        embedded model's registered name or an alias of it: m1.models.is_embedded)."""
        if self.format != "auto":
            return self
        if embedded is None:
            embedded = self.engine == "llamacpp" and is_embedded(self.model)
        return dataclasses.replace(self, format="plain" if embedded else "m1")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["budgets"] = list(self.budgets)
        d["knowledge_search_tags"] = list(self.knowledge_search_tags)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> EvalConfig:
        """A saved config (chunk_size, gone since questions flow one by one, is dropped)."""
        return cls(**{k: v for k, v in d.items() if k != "chunk_size"})

    @staticmethod
    def identity(d: dict) -> dict:
        """The part of a config dict that decides what is generated: all but scheduling options,
        the grader (re-applied from traces at will) and fields that no longer mean anything
        (chunk_size, in runs written before pipelines)."""
        d = {k: v for k, v in d.items() if k not in ("chunk_size", "grader")}
        if d.get("adaptive") is None:  # fixed budgets: hashed as before adaptive runs existed
            d.pop("adaptive", None)
        if d.get("knowledge", "none") == "none":  # no knowledge: hashed as before knowledge existed
            for k in KNOWLEDGE_FIELDS:
                d.pop(k, None)
        elif str(d.get("knowledge_at", "")).strip() != SEARCH:  # hashed as before search queries existed
            d.pop("knowledge_search_tags", None)
        if not d.get("min_thinking"):
            d.pop("min_thinking", None)
        d["engine_options"] = {k: v for k, v in (d.get("engine_options") or {}).items()
                               if k not in SCHEDULING_OPTIONS}
        return d

    @classmethod
    def comparison_key(cls, config: dict, varying: Iterable[str] = ()) -> str:
        """What two saved runs must share to be compared while `varying` fields differ: their
        identity without those fields. Fields a run lacks (saved before they existed) take the
        defaults, so an old run compares with a new one that left them alone."""
        defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]
                    for f in fields(cls)}
        defaults["budgets"] = list(defaults["budgets"])
        defaults["knowledge_search_tags"] = list(defaults["knowledge_search_tags"])
        varying = set(varying)
        ident = {k: v for k, v in cls.identity({**defaults, **config}).items() if k not in varying}
        return json.dumps(ident, sort_keys=True, default=str)

    def fingerprint(self) -> str:
        """Short hash of everything that changes results (so a rerun finds its folder)."""
        blob = json.dumps(self.identity(self.to_dict()), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:8]
