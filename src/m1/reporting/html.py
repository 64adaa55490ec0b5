"""One self-contained HTML report: tables, plots and a trace viewer for one or more runs.

Model output is untrusted text: a trace may well contain `</script>` or `<img onerror=...>`.
So the page carries no data in its markup. Everything sits in one JSON block, escaped so
that nothing inside can close the tag, and the script builds the page with createElement
and text nodes only (no innerHTML). A Content-Security-Policy that allows only this page's
own script (by hash), no network and only data: images is a second wall behind the first.

The page's script and style are package files, viewer/report.js and viewer/report.css (the JS
is linted by .ci/run). What the page shows comes with the data: the metrics columns, the run
cards, the trace fields of the detail view (derived from runs.Trace, so a new field shows up
with no change to the JS) and the analyses' sections with their tables, figures and links.

Knowledge a trace was given (--knowledge) is shown where it went: a prompt insertion as a block
before the question, a thinking insertion as a block inside the thinking at its offset. The data
gives each insertion its place in UTF-16 units (as JavaScript slices) and leaves out text the page
already holds (see page_insertions).
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import math
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from m1.grading.score import Score
from m1.reporting import plots
from m1.reporting.metrics import COLUMNS, compute_metrics
from m1.reporting.sections import Section, Table, TraceLink
from m1.runs import Run, Trace, write_atomic

# Record keys that belong to the question, not to one (question, budget) trace: stored once.
QUESTION_KEYS = ("id", "source", "gold", "options", "prompt")

# ---- what the page shows, sent with the data (the JS has no field names of its own)

# The trace view: every field of runs.Trace is shown once, and so is each of SCORE_VIEWS, the
# active grader's score (the page's record has them flat; "scores" holds every grader's verdict).
# The title line has HEADER's, BLOCKS are text panels (their keys joined; "insertions": the knowledge
# inserted there, drawn in place; kind "screened": a list shown only when not empty), IN_PLACE are
# drawn inside those blocks, NOT_SHOWN say nothing new; every other field is a stat in the strip,
# LEAD's first, then in the dataclass's order (the score's views where "scores" is), labelled by
# LABELS or by its name.
SCORE_VIEWS = ("letter", "outcome", "rule", "correct")
HEADER = ("id", "source", "budget", "outcome", "knowledge", "knowledge_where")
IN_PLACE = ("insertions",)  # each in the block whose "insertions" is its "where"
NOT_SHOWN = ("correct", "schema")  # outcome says it; the line format's version
BLOCKS: tuple[dict[str, Any], ...] = (
    {"id": "options", "label": "Options", "keys": ["options"], "kind": "options"},
    {"id": "prompt", "label": "Prompt", "keys": ["prompt"], "kind": "text", "insertions": "prompt"},
    {"id": "thinking", "label": "Thinking", "keys": ["thinking"], "kind": "text", "insertions": "thinking"},
    {"id": "screened", "label": "Screened out by decontamination", "keys": ["screened"], "kind": "screened"},
    {"id": "answer", "label": "Answer", "keys": ["answer_prefix", "answer"], "kind": "text"},
    {"id": "graded", "label": "Graded text", "keys": ["graded_text"], "kind": "text"},
)
LEAD = ("gold", "letter", "rule")
LABELS = {"letter": "extracted", "scores": "graders", "prompt_tokens": "prompt tok", "thinking_tokens": "thinking tok",
          "think_finish_reasons": "think finish", "answer_tokens": "answer tok",
          "answer_finish_reason": "answer finish", "knowledge_tokens": "knowledge tok"}
STAT_EXTRA = {"thinking_tokens": {"of": "budget"}}  # shown as "thinking tok 412 / 512"

# The accuracy table: metrics.COLUMNS in order, these joined or relabelled (a new column shows
# under its own name). Kinds: text, int, fixed1, fixed3, pct, range3 (two keys, low–high).
METRIC_LABELS: dict[str, tuple[str, str]] = {
    "source": ("source", "text"), "budget": ("budget", "int"), "n": ("n", "int"),
    "accuracy": ("accuracy", "fixed3"), "ci_low": ("95% CI", "range3"), "unparsed_rate": ("unparsed", "pct"),
    "mean_thinking_tokens": ("think tok", "fixed1"), "mean_answer_tokens": ("answer tok", "fixed1"),
    "hit_budget_rate": ("hit budget", "pct"),
}
METRIC_JOINED = {"ci_low": "ci_high"}  # ci_high is shown with ci_low


def detail_fields(trace_type: type = Trace) -> dict[str, Any]:
    """How the trace view shows each field of `trace_type` (a dataclass like runs.Trace):
    {"stats": [{key, label, kind?, of?}], "blocks": BLOCKS, "elsewhere": keys in the title, in place or hidden,
    "searched": the keys the list's search reads}."""
    fields = dataclasses.fields(trace_type)
    flags = {f.name for f in fields if f.type in (bool, "bool")}  # a string under `from __future__ import annotations`
    names = [v for f in fields for v in ([*SCORE_VIEWS, f.name] if f.name == "scores" else [f.name])]
    block_keys = [k for b in BLOCKS for k in b["keys"]]
    taken = {*HEADER, *IN_PLACE, *NOT_SHOWN, *block_keys}
    order = [n for n in LEAD if n in names] + [n for n in names if n not in taken and n not in LEAD]
    stats = []
    for name in order:
        stat: dict[str, Any] = {"key": name, "label": LABELS.get(name, name.replace("_", " "))}
        if name in flags:
            stat["kind"] = "flag"
        stats.append({**stat, **STAT_EXTRA.get(name, {})})
    return {"stats": stats, "blocks": [dict(b) for b in BLOCKS], "elsewhere": [*HEADER, *IN_PLACE, *NOT_SHOWN],
            "searched": [*block_keys, *IN_PLACE]}


def metric_columns(several_runs: bool, columns: Sequence[str] = COLUMNS) -> list[dict[str, Any]]:
    """The accuracy table's columns: {label, keys, kind}, with a run column first for several runs."""
    joined = set(METRIC_JOINED.values())
    out = [{"label": "run", "keys": ["run"], "kind": "text"}] if several_runs else []
    for key in columns:
        if key in joined:
            continue
        label, kind = METRIC_LABELS.get(key, (key.replace("_", " "), "num"))
        out.append({"label": label, "keys": [key, METRIC_JOINED[key]] if key in METRIC_JOINED else [key],
                    "kind": kind})
    return out


def run_card(run: Run) -> list[tuple[str, Any]]:
    """The (label, value) pairs of a run's card on the summary."""
    c = run.config
    budgets = c.get("budgets")
    return [("traces", len(run.traces)), ("benchmark", c.get("benchmark")),
            ("model", c.get("model") or "embedded SmolLM2-135M"), ("engine", c.get("engine")),
            ("format", c.get("format")), ("budgets", ", ".join(map(str, budgets)) if budgets else None),
            ("forcing rounds", c.get("forcing_rounds")), ("temperature", c.get("temperature")),
            ("method", c.get("method")), ("grader", run.grader)]


def _kind(values: list[Any]) -> str:
    """A section table column's kind: num (floats, shown to 3 decimals), int, or text."""
    nums = [v for v in values if v is not None]
    if nums and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in nums):
        return "num" if any(isinstance(v, float) for v in nums) else "int"
    return "text"


def table_data(t: Table) -> dict[str, Any]:
    """A section's table for the page: rows as lists in the table's column order."""
    rows = [[r.get(c) for c in t.columns] for r in t.rows]
    kinds = [_kind([r[i] for r in rows]) for i in range(len(t.columns))]
    return {"name": t.name, "caption": t.caption, "columns": list(t.columns), "kinds": kinds, "rows": rows}


def viewer_file(name: str) -> str:
    """A file of the page (report.js, report.css), shipped as package data beside this module."""
    text = (resources.files("m1.reporting") / "viewer" / name).read_text(encoding="utf-8")
    closer = "</script" if name.endswith(".js") else "</style"
    if closer in text.lower():
        raise ValueError(f"viewer/{name} contains {closer!r}, which would end its tag in the page")
    return text


def _clean(x):
    """NaN and infinities to null: JSON has no NaN, and JSON.parse rejects it."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def script_json(data) -> str:
    """JSON safe to place inside <script type="application/json">.

    ensure_ascii escapes every non-ASCII character (U+2028/2029 included, which older JS
    parsers treat as line ends); <, > and & are escaped so no `</script>` or `<!--` can
    appear. They occur only inside JSON strings, where \\uXXXX means the same character.
    """
    text = json.dumps(_clean(data), ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _snippet(prompt: str) -> str:
    """The longest line of a prompt: in a chat template that is nearly always the question stem."""
    line = max((prompt or "").splitlines() or [""], key=len).strip()
    return line[:200]


def build_data(runs: list[Run], images: dict[str, bytes], sections: Sequence[Section] = (),
               section_images: dict[str, bytes] | None = None) -> dict:
    questions: list[dict] = []
    traces, qindex = [], {}
    out_runs, metric_rows = [], []
    several = len(runs) > 1
    for i, run in enumerate(runs):
        out_runs.append({"name": run.name, "config": run.config, "card": run_card(run), "n": len(run.traces)})
        metric_rows += [{"run": run.name, **row} if several else row for row in compute_metrics(run.traces)]
        for trace in run.traces:
            rec = page_record(trace)
            key = (i, trace.source, trace.id)
            if key not in qindex:
                qindex[key] = len(questions)
                q = {k: rec.get(k) for k in QUESTION_KEYS}
                q["run"] = i
                q["snippet"] = _snippet(trace.prompt)
                questions.append(q)
            q = questions[qindex[key]]
            t = {k: v for k, v in rec.items() if k not in QUESTION_KEYS}
            if trace.prompt != q["prompt"]:
                t["prompt"] = trace.prompt  # rare: keep a prompt that differs per budget
            t["insertions"] = page_insertions(rec)
            t["q"] = qindex[key]
            traces.append(t)
    # Stable order for the list: run, benchmark, question, budget.
    traces.sort(key=lambda t: (questions[t["q"]]["run"], str(questions[t["q"]]["source"]),
                               str(questions[t["q"]]["id"]), t.get("budget") or 0))
    for shared in ("thinking", "insertions", "screened"):
        _share_prefixes(traces, shared)
    names = [r.name for r in runs]
    section_images = section_images or {}
    # A link names its trace by run name, source, id and budget (the report keeps run names unique).
    run_index: dict[str, int] = {}
    for i, name in enumerate(names):
        run_index.setdefault(name, i)
    where = {(questions[t["q"]]["run"], questions[t["q"]]["source"], questions[t["q"]]["id"], t["budget"]): j
             for j, t in enumerate(traces)}

    def link(x: TraceLink) -> dict[str, Any]:
        j = where.get((run_index.get(x.run, -1), x.source, x.id, x.budget))
        return {**dataclasses.asdict(x), "trace": j}

    return {
        "title": "m1 report · " + ", ".join(names),
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "runs": out_runs,
        "metrics": {"columns": metric_columns(several), "rows": metric_rows},
        "detail": detail_fields(),
        "images": [{"key": k, "title": plots.TITLES.get(k, k), "src": _data_uri(v)} for k, v in images.items()],
        "sections": [{"key": s.key, "title": s.title, "text": s.text,
                      "tables": [table_data(t) for t in s.tables],
                      "images": [{"key": stem, "src": _data_uri(section_images[stem])}
                                 for stem in s.figures if stem in section_images],
                      "links": [link(x) for x in s.links]} for s in sections],
        "questions": questions,
        "traces": traces,
    }


def page_record(trace: Trace) -> dict[str, Any]:
    """A trace as the page reads it: its line, with the active grader's score flat (SCORE_VIEWS and
    "grader") and "scores" as one short verdict per grader, "C correct (phrase)", the active one first."""
    rec = trace.to_json()
    rec.update({k: getattr(trace.score, k) for k in SCORE_VIEWS}, grader=trace.grader)
    order = [trace.grader, *(g for g in trace.scores if g != trace.grader)]
    rec["scores"] = {g: _verdict(trace.scores.get(g) or trace.score) for g in order}
    return rec


def _verdict(score: Score) -> str:
    return f"{score.letter or '–'} {score.outcome}" + (f" ({score.rule})" if score.rule else "")


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _units(text: str) -> int:
    """The length of text in UTF-16 code units, as JavaScript's String.slice counts it."""
    return len(text.encode("utf-16-le")) // 2


def _share_prefixes(traces: list[dict], key: str) -> None:
    """Store each question's `key` (a text or a list) once across budgets. In a cut sweep the
    thinking at a lower budget is a prefix of the thinking at a higher one, and so are its
    insertions (those before its budget), so a sweep up to 8192 would otherwise carry about twice
    its longest traces. A trace whose value starts a longer one's (same run and question) keeps
    {"prefix_of": index, "units": length} for a text, the length in UTF-16 code units as
    JavaScript's slice counts them, or {"prefix_of": index, "items": length} for a list."""
    by_question: dict[int, list[int]] = {}
    for i, t in enumerate(traces):
        if isinstance(t.get(key), (str, list)) and t[key]:
            by_question.setdefault(t["q"], []).append(i)
    for idxs in by_question.values():
        anchors: list[int] = []  # traces that keep their full value
        for i in sorted(idxs, key=lambda i: -len(traces[i][key])):
            value = traces[i][key]
            j = next((a for a in anchors if type(traces[a][key]) is type(value)
                      and traces[a][key][:len(value)] == value), None)
            if j is None:
                anchors.append(i)
            elif isinstance(value, str):
                traces[i][key] = {"prefix_of": j, "units": _units(value)}
            else:
                traces[i][key] = {"prefix_of": j, "items": len(value)}


def page_insertions(rec: dict[str, Any]) -> list[dict[str, Any]] | None:
    """A trace's knowledge insertions as the page draws them (None when it has none).

    Each gets "units": its place in the text it went into (the thinking, or the prompt) in UTF-16
    units, and "inline": how many units there are its own text (0 when that text does not hold it,
    and the block goes in between). A prompt insertion without char_at sits where its text is in
    the prompt, else before the question. Text the page holds anyway is left out: an inline
    insertion's text, and a passage's text that the inserted text contains. A thinking insertion
    at or past the trace's budget belongs to a larger budget of the sweep and is not shown here.
    Read defensively: runs written before these fields, or with a malformed one, still render."""
    given = rec.get("insertions")
    if not isinstance(given, list):
        return None
    budget, out = rec.get("budget"), []
    for x in given:
        if not isinstance(x, dict):
            continue
        char_at, at = x.get("char_at"), x.get("at")
        where = x["where"] if x.get("where") in ("prompt", "thinking") else "prompt" if char_at is None else "thinking"
        if where == "thinking" and isinstance(at, int) and isinstance(budget, int) and at >= budget:
            continue
        text = x["text"] if isinstance(x.get("text"), str) else ""
        host = str(rec.get(where) or "")
        if isinstance(char_at, int) and not isinstance(char_at, bool):
            pos = min(max(char_at, 0), len(host))
        elif where == "thinking":
            pos = len(host)
        else:
            pos = host.find(text) if text else -1
            if pos < 0:
                question = str(rec.get("question") or "")
                pos = max(host.find(question), 0) if question else 0
        inline = bool(text) and host.startswith(text, pos)
        shown = {k: v for k, v in x.items() if k not in ("passages", "text")}
        shown.update(where=where, units=_units(host[:pos]), inline=_units(text) if inline else 0)
        if not inline:
            shown["text"] = text
        passages = x["passages"] if isinstance(x.get("passages"), list) else []
        shown["passages"] = [{k: v for k, v in p.items() if not (k == "text" and isinstance(v, str) and v in text)}
                             for p in passages if isinstance(p, dict)]
        out.append(shown)
    return out or None


def write_html(path, runs: list[Run], images: dict[str, bytes] | None = None, sections: Sequence[Section] = (),
               section_images: dict[str, bytes] | None = None) -> Path:
    """Write the page for runs; images: PNG bytes keyed like plots.FILES (rendered here when
    not given); sections: the analyses' Sections with their figures' PNG bytes by stem."""
    path = Path(path)
    if images is None:
        images = {k: plots.png_bytes(fig) for k, fig in plots.figures(runs).items()}
    data = script_json(build_data(runs, images, sections, section_images))
    script, style = viewer_file("report.js"), viewer_file("report.css")
    # The hash of exactly the text placed between the tags: the CSP runs this script and no other.
    script_hash = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    csp = (f"default-src 'none'; script-src 'sha256-{script_hash}'; style-src 'unsafe-inline'; "
           "img-src data:; base-uri 'none'; form-action 'none'")
    # Joined piecewise, never by str.replace on the page: data must not be scanned for markers.
    page = "".join([
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n',
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n',
        "<title>m1 report</title>\n<style>", style, "</style>\n</head>\n<body>\n",
        '<noscript>This report needs JavaScript to show its data.</noscript>\n',
        '<script type="application/json" id="m1-data">', data, "</script>\n",
        "<script>", script, "</script>\n</body>\n</html>\n",
    ])
    return write_atomic(path, page)
