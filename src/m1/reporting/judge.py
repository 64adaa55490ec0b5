"""An LLM judge for wrong answers: why did the model pick the wrong option?

Each wrong answer (outcome "wrong": a letter was read and it is not the gold one) is sent,
with its question, options, the gold letter and the model's reasoning, to a judge model
behind any OpenAI-compatible API, which names the main cause as one of LABELS:

  missing_knowledge  the reasoning lacks a fact it needed: it says it is unsure, guesses,
                     or never brings up the fact that decides the question
  wrong_knowledge    the reasoning states a false medical fact (mechanism, drug, association,
                     threshold) and the wrong answer follows from it
  reasoning_slip     the needed facts are stated correctly, but the conclusion drawn from them
                     is wrong: a logical or arithmetic error, a self-contradiction, or a final
                     letter that does not match the reasoning's own conclusion
  misread_question   the model answers another question than the one asked: it misses or
                     misreads a detail of the vignette (age, sex, timing, a value) or of the
                     ask ("EXCEPT", "next step", "most likely cause" vs "mechanism")

The reply must end with a line `LABEL: <label>`; a reply without one readable label is kept
with label None ("unparsed"), never guessed.

Replies are cached on disk (a JSON-lines file) keyed by (judge model, hash of the request:
messages, temperature, max_tokens), so a rerun over the same traces makes no request, and
the same thinking judged at several budgets is asked once. A failed request is not cached.

The API key is read from the environment variable named by `api_key_env` when a request is
about to be made; it goes to the client and nowhere else (not the cache, not the results,
not an error message).

How far to trust the labels: `measure_agreement` runs the judge on a hand-labelled sample
(tests/data/judge_sample.jsonl ships one) and gives its accuracy and Cohen's kappa.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from m1.client import Client, Policy, RequestFailed, StatusError
from m1.errors import M1Error, first_line
from m1.runs import question_text

if TYPE_CHECKING:
    from m1.runs import Run, Trace

LABELS = ("missing_knowledge", "wrong_knowledge", "reasoning_slip", "misread_question")
UNPARSED = "unparsed"  # the judge's reply held no single readable label

SYSTEM = """You audit the wrong answers of a medical question-answering model. You are given a \
multiple-choice question, the correct option, the option the model chose, and the model's reasoning. \
Name the main cause of the error, exactly one of:
missing_knowledge: the reasoning lacks a medical fact it needed: it says it is unsure, guesses, or never \
brings up the fact that decides the question.
wrong_knowledge: the reasoning states a false medical fact (a wrong mechanism, drug, association, \
threshold or definition) and the wrong answer follows from it.
reasoning_slip: the facts it needed are stated correctly, but the conclusion drawn from them is wrong: \
a logical or arithmetic error, a self-contradiction, or a final letter that does not match the \
reasoning's own conclusion.
misread_question: the model answers a different question than the one asked: it misses or misreads a \
detail of the case (age, sex, timing, a lab value) or of the ask ("EXCEPT", "next step", "most likely \
cause" versus "mechanism").
Reply with one short sentence giving the reason, then a last line exactly: LABEL: <one of the four names>"""

_NAMES = {label: re.compile(r"\b" + label.replace("_", r"[\s_-]+") + r"\b", re.I) for label in LABELS}
_LABEL_LINE = re.compile(r"label\s*[:=]\s*\**\s*([a-z][a-z _-]*[a-z])", re.I)


@dataclass(frozen=True)
class Case:
    """A wrong answer as the judge sees it."""

    question: str
    options: dict[str, str]
    gold: str
    letter: str  # the model's (wrong) choice
    reasoning: str = ""
    answer: str = ""  # the text of the answer phase, when there was one


@dataclass(frozen=True)
class Verdict:
    label: str | None  # one of LABELS; None when the reply held no readable label, or the request failed
    reply: str
    prompt_hash: str
    cached: bool = False  # True: no request was made for it (from the cache, or asked once for an identical case)
    error: str | None = None  # why the request failed (then label is None and nothing was cached)


@dataclass(frozen=True)
class Judgement:
    """The judge's verdict on one trace: run name, source, id and budget say which."""

    run: str
    source: str
    id: str
    budget: int
    letter: str | None
    gold: str
    label: str | None
    reply: str
    cached: bool = False
    error: str | None = None

    @property
    def reason(self) -> str:
        """The reply without its LABEL line, on one line."""
        text = " ".join(ln.strip() for ln in self.reply.splitlines() if not _LABEL_LINE.search(ln))
        return text.strip()


@dataclass(frozen=True)
class Agreement:
    """The judge against hand labels on the same cases. A case the judge left unparsed counts
    as a disagreement, and as a category of its own in kappa's chance agreement."""

    n: int
    n_agree: int
    n_unparsed: int
    accuracy: float
    kappa: float  # Cohen's kappa; nan when chance agreement is 1 (one category on both sides)
    confusion: dict[tuple[str, str], int]  # (hand label, judge label or "unparsed") -> count


@dataclass
class JudgeResult:
    """What `judge_failures` returns; pass it to `failures(runs, judged=...)`."""

    model: str
    judgements: list[Judgement]
    requests: int = 0  # HTTP requests made (retries included); 0 when everything came from the cache
    cache_hits: int = 0
    failed: int = 0
    agreement: Agreement | None = None  # on the hand-labelled sample, when one was given
    sample_verdicts: list[Verdict] = field(default_factory=list)


# ---- the request ----

def messages_for(case: Case, max_reasoning_chars: int = 6000) -> list[dict[str, str]]:
    options = "\n".join(f"{k}. {v}" for k, v in sorted(case.options.items()))
    reasoning = _clip(case.reasoning.strip(), max_reasoning_chars) or "(none)"
    parts = [f"Question:\n{case.question.strip()}", f"Options:\n{options}",
             f"Correct option: {case.gold}", f"Model's choice: {case.letter}",
             f"Model's reasoning:\n{reasoning}"]
    if case.answer.strip():
        parts.append(f"Model's final answer text:\n{_clip(case.answer.strip(), 600)}")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]


def _clip(text: str, limit: int) -> str:
    """At most `limit` characters: the start and the end, where the conclusion is."""
    if len(text) <= limit:
        return text
    head = limit // 3
    return text[:head] + "\n[...]\n" + text[len(text) - (limit - head):]


def prompt_hash(messages: list[dict[str, str]], temperature: float, max_tokens: int) -> str:
    blob = json.dumps({"messages": messages, "temperature": temperature, "max_tokens": max_tokens},
                      sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def parse_label(reply: str) -> str | None:
    """The label a reply names: its last `LABEL: x` line when x is a label name; else the one
    label named anywhere in it; else None (several names, or none)."""
    found = _LABEL_LINE.findall(reply or "")
    for value in reversed(found):
        named = [label for label, rx in _NAMES.items() if rx.fullmatch(value.strip())]
        if named:
            return named[0]
    named = [label for label, rx in _NAMES.items() if rx.search(reply or "")]
    return named[0] if len(named) == 1 else None


# ---- from traces ----

def case_from_trace(t: Trace) -> Case:
    return Case(question=question_text(t), options=dict(t.options), gold=t.gold, letter=t.letter or "",
                reasoning=t.thinking, answer=t.answer)


def wrong_traces(runs: Iterable[Run], budgets: Iterable[int] | None = None) -> list[tuple[Run, Trace]]:
    wanted = set(budgets) if budgets is not None else None
    return [(run, t) for run in runs for t in sorted(run.traces, key=lambda t: (t.source, t.id, t.budget))
            if t.outcome == "wrong" and (wanted is None or t.budget in wanted)]


# ---- the cache ----

class JudgeCache:
    """Replies on disk, one JSON line each: {"model", "prompt_hash", "reply", "finish_reason"}.
    Nothing else is written (no key, no server address). A line cut short by a crash is skipped."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], dict[str, Any]] = {}
        if self.path is not None and self.path.exists():
            for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    d = json.loads(line)
                    self._entries[(d["model"], d["prompt_hash"])] = d
                except (ValueError, KeyError, TypeError):
                    continue

    def get(self, model: str, key: str) -> dict[str, Any] | None:
        return self._entries.get((model, key))

    def put(self, model: str, key: str, reply: str, finish_reason: str | None) -> None:
        entry = {"model": model, "prompt_hash": key, "reply": reply, "finish_reason": finish_reason}
        with self._lock:
            self._entries[(model, key)] = entry
            if self.path is None:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())


# ---- asking ----

class Judge:
    """A judge model behind an OpenAI-compatible API (chat completions)."""

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY",
                 cache: str | Path | None = None, temperature: float = 0.0, max_tokens: int = 200,
                 timeout: float = 120.0, max_retries: int = 2, concurrency: int = 4,
                 max_reasoning_chars: int = 6000):
        base_url = str(base_url).strip().rstrip("/")
        if concurrency < 1 or max_tokens < 1 or max_retries < 0:
            raise M1Error("judge: concurrency and max_tokens must be >= 1, max_retries >= 0")
        self.base_url, self.model, self.api_key_env = base_url, model, api_key_env  # the key's name only
        self.temperature, self.max_tokens, self.timeout = temperature, max_tokens, timeout
        self.max_retries, self.concurrency, self.max_reasoning_chars = max_retries, concurrency, max_reasoning_chars
        self.cache = JudgeCache(cache)
        self.requests = 0
        self._lock = threading.Lock()
        self.client = self._client()  # refuses a URL holding a password

    def __repr__(self) -> str:
        return f"Judge(base_url={self.base_url!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    def judge(self, cases: Sequence[Case]) -> list[Verdict]:
        """A verdict per case, in order. Cached replies are reused; identical requests go once."""
        prepared = []
        for case in cases:
            msgs = messages_for(case, self.max_reasoning_chars)
            prepared.append((msgs, prompt_hash(msgs, self.temperature, self.max_tokens)))
        todo = {h: msgs for msgs, h in prepared if self.cache.get(self.model, h) is None}
        fresh: dict[str, Verdict] = {}
        if todo:
            client = self.client
            try:
                with ThreadPoolExecutor(min(self.concurrency, len(todo))) as pool:
                    for h, verdict in zip(todo, pool.map(lambda item: self._ask(client, *item), todo.items())):
                        fresh[h] = verdict
            finally:
                client.close()
            if all(v.error for v in fresh.values()) and all("connection" in (v.error or "") for v in fresh.values()):
                raise M1Error(f"judge: cannot reach {self.base_url} ({next(iter(fresh.values())).error}); start the "
                              "server or fix base_url")
        out, seen = [], set()
        for _, h in prepared:
            if h in fresh:
                v = fresh[h]
                # a second case with the same request was not asked again
                out.append(dataclasses.replace(v, cached=True) if h in seen and v.error is None else v)
                seen.add(h)
            else:
                hit = self.cache.get(self.model, h)
                assert hit is not None
                out.append(Verdict(parse_label(hit["reply"]), hit["reply"], h, cached=True))
        return out

    def _client(self) -> Client:
        # m1's client layer; every attempt counts in self.requests (retries through on_retry)
        policy = Policy(timeout=self.timeout, retries=self.max_retries, backoff=0.5, backoff_max=10.0)
        return Client(self.base_url, self.api_key_env, policy, on_retry=lambda cause: self._count(1),
                      fix="fix --judge-url")

    def _ask(self, client: Client, key: str, messages: list[dict[str, str]]) -> Verdict:
        body = {"model": self.model, "messages": messages, "temperature": self.temperature,
                "max_tokens": self.max_tokens}
        try:
            reply, finish = client.post("/chat/completions", body, validate=_chat_reply)
        except StatusError as e:
            if e.status in (401, 403):
                raise M1Error(f"judge at {self.base_url} refused the key (HTTP {e.status}); set "
                              f"{self.api_key_env} in the environment") from None
            self._count(1)
            return Verdict(None, "", key, error=f"HTTP {e.status}")
        except RequestFailed as e:
            self._count(1)
            why = {"timeout": f"no answer within {self.timeout:g} s", "connection": "connection failed",
                   "malformed": "not a chat completion"}
            return Verdict(None, "", key, error=why.get(e.cause, e.cause))
        self._count(1)
        self.cache.put(self.model, key, reply, finish)
        return Verdict(parse_label(reply), reply, key)

    def _count(self, attempts: int) -> None:
        with self._lock:
            self.requests += attempts


def _chat_reply(body: dict) -> tuple[str, str | None]:
    choice = body["choices"][0]
    content = choice["message"].get("content") or ""
    if not isinstance(content, str):
        raise TypeError("content is not text")
    return content, choice.get("finish_reason")


def judge_failures(runs: Sequence[Run], base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY",
                   cache: str | Path | None = None, *, budgets: Iterable[int] | None = None,
                   limit: int | None = None, sample: str | Path | Sequence[SampleCase] | None = None,
                   **options: Any) -> JudgeResult:
    """Label every wrong answer in `runs` (at `budgets`, all when None; the first `limit` per run
    when given) with the judge `model` at `base_url`. `cache`: a JSON-lines file of replies
    (None: in memory only). `sample`: a hand-labelled sample (path or loaded) the judge is also
    run on, giving `result.agreement`. `options` go to `Judge` (temperature, max_tokens, timeout,
    max_retries, concurrency, max_reasoning_chars)."""
    judge = Judge(base_url, model, api_key_env, cache, **options)
    chosen: list[tuple[Run, Trace]] = []
    for run in runs:
        wrong = wrong_traces([run], budgets)
        chosen += wrong[:limit] if limit is not None else wrong
    verdicts = judge.judge([case_from_trace(t) for _, t in chosen])
    judgements = [Judgement(run.name, t.source, t.id, t.budget, t.letter, t.gold, v.label, v.reply, v.cached, v.error)
                  for (run, t), v in zip(chosen, verdicts)]
    result = JudgeResult(model, judgements)
    if sample is not None:
        cases = load_sample(sample) if isinstance(sample, (str, Path)) else list(sample)
        result.sample_verdicts = judge.judge([c.case for c in cases])
        result.agreement = agreement([c.label for c in cases], [v.label for v in result.sample_verdicts])
    every = list(verdicts) + result.sample_verdicts
    result.requests = judge.requests
    result.cache_hits = sum(v.cached for v in every)
    result.failed = sum(v.error is not None for v in every)
    return result


# ---- agreement with hand labels ----

@dataclass(frozen=True)
class SampleCase:
    case: Case
    label: str
    id: str = ""
    note: str = ""


def load_sample(path: str | Path) -> list[SampleCase]:
    """A hand-labelled sample: JSON lines with question, options, gold, letter, reasoning,
    label (one of LABELS), and optionally id, answer and note."""
    out = []
    path = Path(path)
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            case = Case(d["question"], dict(d["options"]), d["gold"], d["letter"], d.get("reasoning", ""),
                        d.get("answer", ""))
            label = d["label"]
        except (ValueError, KeyError, TypeError) as e:
            raise M1Error(f"{path}:{no}: not a labelled case ({first_line(e)})") from None
        if label not in LABELS:
            raise M1Error(f"{path}:{no}: label {label!r} is not one of {', '.join(LABELS)}")
        out.append(SampleCase(case, label, str(d.get("id", no)), d.get("note", "")))
    return out


def agreement(gold: Sequence[str], judged: Sequence[str | None]) -> Agreement:
    """Accuracy and Cohen's kappa of judge labels against hand labels (None = unparsed).

    kappa = (p_o - p_e) / (1 - p_e): p_o the share of cases where both agree, p_e the agreement
    expected by chance from each side's label shares, summed over categories."""
    if len(gold) != len(judged):
        raise ValueError(f"agreement needs as many judge labels as hand labels, got {len(judged)} and {len(gold)}")
    n = len(gold)
    if n == 0:
        raise ValueError("agreement needs at least one case")
    pred = [p if p is not None else UNPARSED for p in judged]
    agree = sum(g == p for g, p in zip(gold, pred))
    cg, cp = Counter(gold), Counter(pred)
    p_o = agree / n
    p_e = sum(cg[k] * cp[k] for k in set(cg) | set(cp)) / n ** 2
    kappa = math.nan if p_e == 1 else (p_o - p_e) / (1 - p_e)
    return Agreement(n, agree, cp[UNPARSED], p_o, kappa, dict(Counter(zip(gold, pred))))


def measure_agreement(sample: str | Path | Sequence[SampleCase], base_url: str, model: str,
                      api_key_env: str = "OPENAI_API_KEY", cache: str | Path | None = None,
                      **options: Any) -> tuple[Agreement, list[Verdict]]:
    """Run the judge on a hand-labelled sample: its agreement, and the verdicts in sample order."""
    cases = load_sample(sample) if isinstance(sample, (str, Path)) else list(sample)
    verdicts = Judge(base_url, model, api_key_env, cache, **options).judge([c.case for c in cases])
    return agreement([c.label for c in cases], [v.label for v in verdicts]), verdicts
