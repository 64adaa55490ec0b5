"""Runs: what `m1 eval` writes, and the typed records every reader gets back.

A run folder holds config.json (the resolved config and environment) and traces.jsonl,
one line per (question, budget), appended as questions finish. Rerunning the same command
resumes: finished pairs are read back and never recomputed, and a line cut short by a
crash is dropped, not duplicated.

Readers (report, regrade, compare, notebooks) load a folder as a `Run` of `Trace`s:
    run = Run.load("runs/medqa-...")
    run.regraded("m1").traces[0].correct
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from m1.errors import M1Error

TRACES = "traces.jsonl"
CONFIG = "config.json"
METRICS = "metrics.json"
TRACE_SCHEMA = 3  # 1: lines without "schema" (before the typed model); 2: renamed forcing_rounds, added
# grader, question and option_logprobs; 3: knowledge fields (a schema-2 line reads as knowledge "none")


@dataclass(frozen=True)
class Trace:
    """One question answered at one budget: what was asked, thought, answered and graded.

    Budgets and lengths count the engine's own token ids. For a question with a natural
    end of thinking before the budget, every larger budget holds the same thinking.
    """

    id: str
    source: str
    budget: int
    gold: str = ""
    options: dict[str, str] = field(default_factory=dict)
    question: str = ""  # the stem as the benchmark wrote it ("" in runs before schema 2: see question_text)
    prompt: str = ""
    prompt_tokens: int = 0
    thinking: str = ""
    thinking_tokens: int = 0
    thinking_ended: str = "natural"  # "natural": the model ended it; "budget": cut at the budget
    thinking_stop: str | None = None  # the delimiter or token that ended it naturally
    hit_budget: bool = False
    rounds_forced: int = 0  # ends of thinking replaced by the ignore string (the config's forcing_rounds caps it)
    min_thinking_forced: int = 0  # of those, the ends --min-thinking replaced (not counted as forcing rounds)
    forced_at: list[int] = field(default_factory=list)  # thinking token counts where each forcing happened
    think_finish_reasons: list[str] = field(default_factory=list)
    answer_prefix: str = ""  # the forced text between thinking and answer ("" when none was forced)
    answer: str = ""
    answer_tokens: int = 0
    answer_finish_reason: str | None = None
    option_logprobs: dict[str, float] | None = None  # log p of each option letter at the answer position
    # Adaptive runs (--adaptive): why thinking stopped (thinking.policies.REASONS) and each forced
    # answer on the way: {"tokens", "letter", "confidence"}. None in fixed-budget runs.
    stopped_by: str | None = None
    probes: list[dict[str, Any]] | None = None
    # Knowledge (--knowledge): the condition, where its text went, and each insertion as it was made:
    # {"where": "prompt"|"thinking", "at": counted thinking ids before it (None in the prompt),
    #  "char_at": its offset in `thinking`, "tokens": ids inserted, "query", "text": exactly what went in,
    #  "passages": [Passage.to_json()]}. `thinking_tokens` never includes inserted ids unless the run
    # counted them (knowledge_counted); `knowledge_tokens` is all of them, prompt and thinking.
    knowledge: str = "none"
    knowledge_where: str | None = None
    insertions: list[dict[str, Any]] | None = None
    knowledge_tokens: int = 0
    screened: list[dict[str, Any]] | None = None  # passages decontamination removed: {"id","source","rule","score"}
    graded_text: str = ""
    letter: str | None = None
    outcome: str = "unparsed"  # "correct" | "wrong" | "unparsed"
    rule: str | None = None  # the grader rule that read the letter
    correct: bool = False
    grader: str = "strict"
    schema: int = TRACE_SCHEMA

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Trace:
        """A trace line of any schema; old names are mapped, unknown keys dropped."""
        d = dict(d)
        if "rounds_forced" not in d and "forcing_rounds" in d:  # schema 1 used the config's name
            d["rounds_forced"] = d.pop("forcing_rounds")
        d.setdefault("grader", "strict")  # schema 1 runs were graded by the strict grader
        d["schema"] = TRACE_SCHEMA
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def key(self) -> tuple[str, str, int]:
        return self.source, self.id, self.budget


@dataclass
class Run:
    """A finished (or still running) evaluation: where it lives, its config, its traces.

    `config` is the resolved config dict the run saved; `engine_load` the engine's occupancy
    and throughput as `m1 eval` measured them (None for runs that never recorded it)."""

    path: Path
    config: dict[str, Any]
    traces: list[Trace]
    environment: dict[str, Any] = field(default_factory=dict)
    engine_load: dict[str, Any] | None = None
    name: str = ""

    def __post_init__(self):
        self.path = Path(self.path)
        self.name = self.name or self.path.resolve().name

    @classmethod
    def load(cls, path: str | Path) -> Run:
        """Read a run folder without changing it (a run still writing is read as far as it got)."""
        path = Path(path)
        if not path.is_dir():
            raise M1Error(f"{path} is not a folder; pass a run folder written by `m1 eval`")
        cfg_file, traces = path / CONFIG, path / TRACES
        if not cfg_file.exists() or not traces.exists():
            missing = CONFIG if not cfg_file.exists() else TRACES
            raise M1Error(f"{path} is not a run folder (no {missing}); pass a folder written by `m1 eval`")
        saved = _read_json(cfg_file)
        config = saved.get("config")
        if not isinstance(config, dict):
            raise M1Error(f"{cfg_file} is damaged (expected JSON with a 'config' object)")
        load = None
        if (path / METRICS).exists():
            try:
                load = json.loads((path / METRICS).read_text()).get("engine_load")
            except (ValueError, AttributeError):
                load = None
        return cls(path, config, read_traces(traces), saved.get("environment") or {}, load)

    @property
    def grader(self) -> str:
        graders = {t.grader for t in self.traces}
        return graders.pop() if len(graders) == 1 else self.config.get("grader", "strict")

    @property
    def budgets(self) -> list[int]:
        return sorted({t.budget for t in self.traces})

    @property
    def sources(self) -> list[str]:
        return sorted({t.source for t in self.traces})

    def regraded(self, grader: str) -> Run:
        """The same run with every trace graded again by `grader` (no model needed)."""
        from m1.benchmarks.items import Item
        from m1.grading import get_grader

        grade = get_grader(grader)
        traces = []
        for t in self.traces:
            g = grade(t.graded_text or "", Item(id=t.id, question="", options=t.options, answer=t.gold,
                                                source=t.source))
            traces.append(dataclasses.replace(t, letter=g.letter, outcome=g.outcome, rule=g.rule,
                                              correct=g.outcome == "correct", grader=grader))
        return dataclasses.replace(self, traces=traces, config={**self.config, "grader": grader})


# Special tokens of common chat templates: <|im_start|>, <|start_header_id|>, <｜User｜> (DeepSeek),
# <start_of_turn> (Gemma), [INST] / <<SYS>> (Llama 2, Mistral), <s> </s>.
_MARKER = re.compile(r"<[|｜][^<>\n]{0,40}?[|｜]>|</?s>|\[/?INST\]|<</?SYS>>|<(?:start|end)_of_turn>")
_ROLE = re.compile(r"^\s*(?:user|human|system|assistant|model)\s*(?::|\n)", re.I)
_ANSWER_CUE = re.compile(r"\s*Answer:\s*$")  # what a template-less prompt ends with


def question_text(trace: Trace, instruction: str | None = None, system_prompt: str | None = None,
                  options: bool = False) -> str:
    """The question as the benchmark wrote it (whitespace collapsed), with the options' texts
    appended when `options`. Traces since schema 2 carry it; for older ones it is recovered from
    the rendered chat prompt: without the template's markup, the system prompt (as configured)
    and the instruction line."""
    if trace.question:
        text = " ".join(trace.question.split())
    else:
        text = _question_from_prompt(trace, instruction, system_prompt)
    if options and trace.options:
        text = " ".join([text, *(" ".join(str(v).split()) for v in trace.options.values())]).strip()
    return text


def _question_from_prompt(trace: Trace, instruction: str | None, system_prompt: str | None) -> str:
    prompt = trace.prompt or ""
    block = "\n".join(f"{k}. {v}" for k, v in trace.options.items())
    cut = prompt.rfind(block) if trace.options else -1
    anchored = cut >= 0
    if anchored:  # the question ends where the options begin
        body = prompt[:cut]
    else:
        body = prompt
        if instruction and (i := body.rfind(instruction)) >= 0:  # or where the instruction begins
            body, anchored = body[:i], True
        body = _ANSWER_CUE.sub("", body)
    if system_prompt and (i := body.rfind(system_prompt)) >= 0:
        body = body[i + len(system_prompt):]
    segments = [_ROLE.sub("", s, count=1).strip() for s in _MARKER.split(body)]
    segments = [s for s in segments if s and s.lower() not in ("user", "assistant", "system", "model")]
    if not segments:
        text = ""
    elif anchored:
        text = segments[-1]  # the user turn holding the options or instruction
    else:
        text = max(segments, key=len)  # nothing to anchor on: the longest turn
    return " ".join(text.split())


def write_atomic(path: Path, data: str | bytes) -> Path:
    """Write then rename, so a reader (or a crash) never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(data, bytes):
        tmp.write_bytes(data)
    else:
        tmp.write_text(data, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise M1Error(f"{path} is damaged (not JSON); delete the run folder or pass another") from None
    if not isinstance(data, dict):
        raise M1Error(f"{path} is damaged (expected a JSON object)")
    return data


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.traces = self.path / TRACES

    def check_target(self) -> None:
        """A run folder must be a folder: say so before any work if --out names something else."""
        for parent in (self.path, *self.path.parents):
            if parent.exists() and not parent.is_dir():
                raise M1Error(f"--out {self.path}: {parent} is a file, not a folder; pass a folder path for the run")

    def prepare(self, config: dict, environment: dict, identity=lambda d: d) -> None:
        """Create the folder, or check that an existing one holds the same config.

        `identity(config)` is what must match; settings that only schedule the work (how
        many requests in flight, which servers) may differ between a run and its resume."""
        self.path.mkdir(parents=True, exist_ok=True)
        cfg_file = self.path / CONFIG
        if cfg_file.exists():
            try:
                saved = json.loads(cfg_file.read_text())["config"]
            except (json.JSONDecodeError, KeyError):
                raise M1Error(f"{cfg_file} is damaged; delete the run folder or pass another --out") from None
            saved, now = identity(saved), identity(config)
            diff = [k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
            if diff:
                k = diff[0]
                raise M1Error(f"{self.path} holds a run with another config ({k}: {saved.get(k)!r} there, "
                              f"{now.get(k)!r} now); pass another --out or delete the folder")
        # The latest resolved config is what the report shows (its grader, its scheduling).
        write_atomic(cfg_file, json.dumps({"config": config, "environment": environment}, indent=2))

    def load(self) -> list[dict]:
        """Finished records; drops a trailing partial line left by a crash."""
        if not self.traces.exists():
            return []
        records, good_bytes = [], 0
        with open(self.traces, "rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    break
                try:
                    records.append(json.loads(raw))
                except json.JSONDecodeError:
                    break
                good_bytes += len(raw)
        if good_bytes != self.traces.stat().st_size:
            with open(self.traces, "r+b") as f:
                f.truncate(good_bytes)
        return records

    def append(self, records: list[dict]) -> None:
        if not records:
            return
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        with open(self.traces, "a", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


NEEDED = ("id", "source", "budget", "correct", "outcome")


def read_traces(path: Path) -> list[Trace]:
    """The traces of a traces.jsonl, read only (for report, regrade, compare).

    A last line without its newline is a write cut short by a crash and is skipped (the run
    itself drops it on resume); any other unreadable line, or one lacking a field every
    schema has, is an error naming file and line. If a (source, id, budget) appears twice,
    the later wins.
    """
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    records: dict[tuple, Trace] = {}
    for no, line in enumerate(lines[:-1], 1):  # lines[-1]: "" after the last newline, or the cut line
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            raise M1Error(f"{path}:{no}: not a JSON line; the traces are damaged") from None
        missing = [k for k in NEEDED if k not in r] if isinstance(r, dict) else ["everything"]
        if missing:
            raise M1Error(f"{path}:{no}: record lacks {', '.join(missing)}; was it written by `m1 eval`?")
        try:
            t = Trace.from_json(r)
        except TypeError as err:
            raise M1Error(f"{path}:{no}: not a trace line ({err}); was it written by `m1 eval`?") from None
        records[t.key] = t
    return list(records.values())


def package_versions(packages: tuple[str, ...]) -> dict:
    """Python's version and each installed package's, for the record a run keeps."""
    out = {"python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out
