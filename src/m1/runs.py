"""Runs: what `m1 eval` writes, and the typed records every reader gets back.

A run folder holds config.json (the resolved config and environment) and traces.jsonl,
one line per (question, budget), appended as questions finish. Rerunning the same command
resumes: finished pairs are read back and never recomputed, and a line cut short by a
crash is dropped, not duplicated.

A trace records what was generated; each grader's verdict on it is a typed Score kept beside
it, `scores: {grader: Score}` (as Inspect AI keeps one Score per scorer beside each sample).
`m1 eval` writes its grader's score into the trace line; `m1 regrade` appends another grader's
to scores.jsonl beside traces.jsonl, one line per (trace, grader), and never rewrites the traces.
A run is read with one active grader (its own, config.json's, unless another is asked for):
`Trace.correct`, `.outcome`, `.letter` and `.rule` are that grader's score.

Readers (report, regrade, compare, notebooks) load a folder as a `Run` of `Trace`s:
    run = Run.load("runs/medqa-...")
    run.scored_by("m1").traces[0].correct   # the m1 grader's verdict, graded now if not stored
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
from m1.grading.score import Score

TRACES = "traces.jsonl"
SCORES = "scores.jsonl"
CONFIG = "config.json"
METRICS = "metrics.json"
TRACE_SCHEMA = 4  # 1: lines without "schema" (before the typed model); 2: renamed forcing_rounds, added
# grader, question and option_logprobs; 3: knowledge fields (a schema-2 line reads as knowledge "none");
# 4: the grading fields (letter, outcome, rule, correct, grader) moved into scores: {grader: Score}
# (an older line's become scores[its grader] on read)
_UNSET: Any = object()


@dataclass(frozen=True)
class _TraceRecord:
    """One question answered at one budget: what was asked, thought and answered, and each
    grader's score of it (see Trace, which adds the active score's views).

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
    graded_text: str = ""  # what every grader reads: the answer, or the thinking where the model answered there
    scores: dict[str, Score] = field(default_factory=dict)  # each grader's verdict on graded_text, by name
    grader: str = "strict"  # whose score the views show: the run's active grader (not stored in the line)
    schema: int = TRACE_SCHEMA


class Trace(_TraceRecord):
    """A trace with its active grader's score as read-only views: `correct`, `outcome`,
    `letter`, `rule` (and `score`) are `scores[grader]`'s, the ungraded placeholder's
    (unparsed, not correct) when that grader has not scored it.

    `Trace(..., correct=True, outcome="correct", letter="A")` still builds a graded trace:
    those keywords set the active grader's score (how tests and notebooks wrote traces before
    scores; `dataclasses.replace(t, correct=True)` changes that score likewise)."""

    def __init__(self, *args: Any, letter: Any = _UNSET, outcome: Any = _UNSET, rule: Any = _UNSET,
                 correct: Any = _UNSET, **fields: Any) -> None:
        super().__init__(*args, **fields)
        given = {k: v for k, v in (("letter", letter), ("outcome", outcome), ("rule", rule), ("correct", correct))
                 if v is not _UNSET}
        if given:
            base = self.scores.get(self.grader) or Score(self.grader)
            object.__setattr__(self, "scores", {**self.scores, self.grader: dataclasses.replace(base, **given)})

    @property
    def score(self) -> Score:
        """The active grader's score (Score(grader), ungraded, when it has none)."""
        return self.scores.get(self.grader) or Score(self.grader)

    @property
    def letter(self) -> str | None:
        return self.score.letter

    @property
    def outcome(self) -> str:
        return self.score.outcome

    @property
    def rule(self) -> str | None:
        return self.score.rule

    @property
    def correct(self) -> bool:
        return self.score.correct

    def rescored(self, **changes: Any) -> Trace:
        """This trace with its active score changed (`letter`, `outcome`, `rule`, `correct`): for
        tests and what-ifs; a grader's verdict comes from `scored`."""
        score = dataclasses.replace(self.score, **changes)
        return dataclasses.replace(self, scores={**self.scores, self.grader: score})

    def scored(self, grader: str) -> Trace:
        """This trace with `grader` active, graded now (in memory) if it has no score of it."""
        if grader in self.scores:
            return self if grader == self.grader else dataclasses.replace(self, grader=grader)
        return dataclasses.replace(self, grader=grader, scores={**self.scores, grader: grade_trace(self, grader)})

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Trace:
        """A trace line of any schema; old names are mapped, unknown keys dropped. A line before
        schema 4 holds one grader's verdict in flat fields: it becomes scores[that grader]."""
        d = dict(d)
        if "rounds_forced" not in d and "forcing_rounds" in d:  # schema 1 used the config's name
            d["rounds_forced"] = d.pop("forcing_rounds")
        stored = d.get("scores")
        if isinstance(stored, dict):
            scores = {str(g): Score.from_json(str(g), s) for g, s in stored.items() if isinstance(s, dict)}
        else:  # schemas 1-3; schema 1 runs were graded by the strict grader
            grader = d.get("grader") or "strict"
            scores = {grader: Score(grader, d.get("letter"), d.get("outcome", "unparsed"), d.get("rule"),
                                    bool(d.get("correct", False)))}
        d["scores"] = scores
        if d.get("grader") not in scores:
            d["grader"] = next(iter(scores), "strict")
        d["schema"] = TRACE_SCHEMA
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_json(self) -> dict[str, Any]:
        """The trace line: what was generated, and every score under its grader's name."""
        d = dataclasses.asdict(dataclasses.replace(self, scores={}))
        del d["grader"]
        d["scores"] = {g: s.to_json() for g, s in self.scores.items()}
        d["schema"] = d.pop("schema")  # last, as before
        return d

    @property
    def key(self) -> tuple[str, str, int]:
        return self.source, self.id, self.budget


def grade_trace(trace: Trace, grader: str) -> Score:
    """`grader`'s score of a trace's graded text, against its options and gold."""
    from m1.benchmarks.items import Item
    from m1.grading import score

    item = Item(id=trace.id, question=trace.question, options=trace.options, answer=trace.gold, source=trace.source)
    return score(trace.graded_text or "", item, grader)


@dataclass
class Run:
    """A finished (or still running) evaluation: where it lives, its config, its traces.

    `config` is the resolved config dict the run saved; `engine_load` the engine's occupancy
    and throughput as `m1 eval` measured them (None for runs that never recorded it);
    `stored`: the (source, id, budget, grader) of every score the folder holds on disk."""

    path: Path
    config: dict[str, Any]
    traces: list[Trace]
    environment: dict[str, Any] = field(default_factory=dict)
    engine_load: dict[str, Any] | None = None
    name: str = ""
    stored: set[tuple[str, str, int, str]] = field(default_factory=set, repr=False, compare=False)

    def __post_init__(self):
        self.path = Path(self.path)
        self.name = self.name or self.path.resolve().name

    @classmethod
    def load(cls, path: str | Path, grader: str | None = None) -> Run:
        """Read a run folder without changing it (a run still writing is read as far as it got):
        traces.jsonl with the scores scores.jsonl adds. The traces show `grader`'s scores (default:
        the run's own grader, config.json's), graded in memory where none is stored."""
        path = Path(path)
        if not path.is_dir():
            raise M1Error(f"{path} is not a folder; pass a run folder written by `m1 eval`")
        cfg_file, traces_file = path / CONFIG, path / TRACES
        if not cfg_file.exists() or not traces_file.exists():
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
        traces = read_traces(traces_file)
        added = read_scores(path / SCORES) if (path / SCORES).exists() else {}
        if added:
            traces = [dataclasses.replace(t, scores={**t.scores, **added[t.key]}) if t.key in added else t
                      for t in traces]
        stored = {(*t.key, g) for t in traces for g in t.scores}
        own = config.get("grader") or _common({g for t in traces for g in t.scores}) or "strict"
        active = grader or own
        if grader is not None:
            from m1.grading import get_grader

            get_grader(grader)  # an unknown name fails here, with no traces too
        traces = [t.scored(active) for t in traces]
        if active != own:
            config = {**config, "grader": active}
        return cls(path, config, traces, saved.get("environment") or {}, load, stored=stored)

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

    def scored_by(self, grader: str) -> Run:
        """The same run with `grader` active: every trace shows that grader's score, graded now
        (no model needed) where it has none. Nothing is written; see add_scores for that."""
        from m1.grading import get_grader

        get_grader(grader)  # an unknown name fails here, with no traces too
        return dataclasses.replace(self, traces=[t.scored(grader) for t in self.traces],
                                   config={**self.config, "grader": grader})

    regraded = scored_by  # the name readers used before scores

    def unstored(self, grader: str) -> list[Trace]:
        """The traces whose `grader` score is not on disk (graded in memory, or not at all)."""
        return [t for t in self.traces if (*t.key, grader) not in self.stored]


def add_scores(run: Run, grader: str) -> int:
    """Append `grader`'s score of every trace of `run` that has none on disk to RUN/scores.jsonl
    (graded now where the run holds none in memory either); traces.jsonl is never touched.
    Returns how many were added: 0 when the folder already holds them all."""
    todo = [t.scored(grader) for t in run.unstored(grader)]
    if not todo:
        return 0
    target = run.path / SCORES
    _drop_cut_line(target)
    data = "".join(json.dumps({"source": t.source, "id": t.id, "budget": t.budget, "grader": grader,
                               "score": t.scores[grader].to_json(), "schema": TRACE_SCHEMA},
                              ensure_ascii=False) + "\n" for t in todo)
    with open(target, "a", encoding="utf-8") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    run.stored |= {(*t.key, grader) for t in todo}
    return len(todo)


def _drop_cut_line(path: Path) -> None:
    """A line cut short by a crash at the end of an append-only file goes before the next append."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def _common(values: set[str]) -> str | None:
    return next(iter(values)) if len(values) == 1 else None


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


NEEDED = ("id", "source", "budget")
GRADED = ("correct", "outcome")  # a line before schema 4 holds its grades flat; since, "scores"


def read_traces(path: Path) -> list[Trace]:
    """The traces of a traces.jsonl, read only (for report, regrade, compare).

    A last line without its newline is a write cut short by a crash and is skipped (the run
    itself drops it on resume); any other unreadable line, or one lacking a field every
    schema has, is an error naming file and line. If a (source, id, budget) appears twice,
    the later wins.
    """
    records: dict[tuple, Trace] = {}
    for no, r in _json_lines(path):
        missing = [k for k in NEEDED if k not in r] if isinstance(r, dict) else ["everything"]
        if isinstance(r, dict) and not isinstance(r.get("scores"), dict):
            missing += [k for k in GRADED if k not in r]
        if missing:
            raise M1Error(f"{path}:{no}: record lacks {', '.join(missing)}; was it written by `m1 eval`?")
        try:
            t = Trace.from_json(r)
        except TypeError as err:
            raise M1Error(f"{path}:{no}: not a trace line ({err}); was it written by `m1 eval`?") from None
        records[t.key] = t
    return list(records.values())


def read_scores(path: Path) -> dict[tuple[str, str, int], dict[str, Score]]:
    """The scores of a scores.jsonl by trace key, then grader (a later line wins), read only."""
    out: dict[tuple[str, str, int], dict[str, Score]] = {}
    for no, r in _json_lines(path):
        try:
            key, grader = (str(r["source"]), str(r["id"]), int(r["budget"])), str(r["grader"])
            out.setdefault(key, {})[grader] = Score.from_json(grader, r["score"])
        except (KeyError, TypeError, ValueError, AttributeError):
            raise M1Error(f"{path}:{no}: not a score line; was it written by `m1 regrade`?") from None
    return out


def _json_lines(path: Path):
    """(line number, parsed JSON) of each line but the last when a crash cut it short."""
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    for no, line in enumerate(lines[:-1], 1):  # lines[-1]: "" after the last newline, or the cut line
        if not line.strip():
            continue
        try:
            yield no, json.loads(line)
        except json.JSONDecodeError:
            raise M1Error(f"{path}:{no}: not a JSON line; the {path.stem} are damaged") from None


def package_versions(packages: tuple[str, ...]) -> dict:
    """Python's version and each installed package's, for the record a run keeps."""
    out = {"python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out
