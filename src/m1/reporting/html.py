"""One self-contained HTML report: tables, plots and a trace viewer for one or more runs.

Model output is untrusted text: a trace may well contain `</script>` or `<img onerror=...>`.
So the page carries no data in its markup. Everything sits in one JSON block, escaped so
that nothing inside can close the tag, and the script builds the page with createElement
and text nodes only (no innerHTML). A Content-Security-Policy that allows only this page's
own script (by hash), no network and only data: images is a second wall behind the first.
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path

from m1.reporting import plots

# Record keys that belong to the question, not to one (question, budget) trace: stored once.
QUESTION_KEYS = ("id", "source", "gold", "options", "prompt")


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


def build_data(runs: list[dict], images: dict[str, bytes]) -> dict:
    questions: list[dict] = []
    traces, qindex = [], {}
    out_runs = []
    for i, run in enumerate(runs):
        cfg = run.get("config") or {}
        out_runs.append({"name": run["name"], "config": cfg, "rows": run.get("rows") or [],
                         "n": len(run["records"])})
        for rec in run["records"]:
            key = (i, rec.get("source"), rec.get("id"))
            if key not in qindex:
                qindex[key] = len(questions)
                q = {k: rec.get(k) for k in QUESTION_KEYS}
                q["run"] = i
                q["snippet"] = _snippet(rec.get("prompt") or "")
                questions.append(q)
            q = questions[qindex[key]]
            t = {k: v for k, v in rec.items() if k not in QUESTION_KEYS}
            if rec.get("prompt") != q["prompt"]:
                t["prompt"] = rec.get("prompt")  # rare: keep a prompt that differs per budget
            t["q"] = qindex[key]
            traces.append(t)
    # Stable order for the list: run, benchmark, question, budget.
    traces.sort(key=lambda t: (questions[t["q"]]["run"], str(questions[t["q"]]["source"]),
                               str(questions[t["q"]]["id"]), t.get("budget") or 0))
    _share_prefixes(traces)
    names = [r["name"] for r in runs]
    return {
        "title": "m1 report · " + ", ".join(names),
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "runs": out_runs,
        "images": [{"key": k, "title": TITLES.get(k, k),
                    "src": "data:image/png;base64," + base64.b64encode(v).decode("ascii")}
                   for k, v in images.items()],
        "questions": questions,
        "traces": traces,
    }


def _share_prefixes(traces: list[dict]) -> None:
    """Store each question's thinking once across budgets. In a cut sweep the thinking at a
    lower budget is a prefix of the thinking at a higher one, so a sweep up to 8192 would
    otherwise carry about twice its longest traces. A trace whose thinking is a prefix of a
    longer one's (same run and question) keeps {"prefix_of": index, "units": length}, the
    length in UTF-16 code units as JavaScript's slice counts them."""
    by_question: dict[int, list[int]] = {}
    for i, t in enumerate(traces):
        if isinstance(t.get("thinking"), str) and t["thinking"]:
            by_question.setdefault(t["q"], []).append(i)
    for idxs in by_question.values():
        anchors: list[int] = []  # traces that keep their full text
        for i in sorted(idxs, key=lambda i: -len(traces[i]["thinking"])):
            text = traces[i]["thinking"]
            j = next((a for a in anchors if traces[a]["thinking"].startswith(text)), None)
            if j is None:
                anchors.append(i)
            else:
                traces[i]["thinking"] = {"prefix_of": j, "units": len(text.encode("utf-16-le")) // 2}


TITLES = {
    "accuracy": "Accuracy against thinking budget",
    "thinking_hist": "Thinking length at each budget",
    "hit_budget": "Share of questions hitting the budget",
}


def plot_runs(runs: list[dict]):
    """The (label, records, rows) triples that plots.py takes; no labels for a lone run."""
    return [("" if len(runs) == 1 else r["name"], r["records"], r.get("rows") or []) for r in runs]


def plot_title(runs: list[dict]) -> str:
    if len(runs) != 1:
        return ""
    return plots.describe(runs[0].get("config") or {})


def write_html(path, runs: list[dict], images: dict[str, bytes] | None = None) -> Path:
    """Write the report for runs ({name, config, records, rows}); images: PNG bytes keyed
    like plots.FILES, rendered here when not given."""
    path = Path(path)
    if images is None:
        images = plots.figures(plot_runs(runs), plot_title(runs))
    data = script_json(build_data(runs, images))
    script_hash = base64.b64encode(hashlib.sha256(SCRIPT.encode("utf-8")).digest()).decode("ascii")
    csp = (f"default-src 'none'; script-src 'sha256-{script_hash}'; style-src 'unsafe-inline'; "
           "img-src data:; base-uri 'none'; form-action 'none'")
    # Joined piecewise, never by str.replace on the page: data must not be scanned for markers.
    page = "".join([
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n',
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n',
        "<title>m1 report</title>\n<style>", STYLE, "</style>\n</head>\n<body>\n",
        '<noscript>This report needs JavaScript to show its data.</noscript>\n',
        '<script type="application/json" id="m1-data">', data, "</script>\n",
        "<script>", SCRIPT, "</script>\n</body>\n</html>\n",
    ])
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path


STYLE = r"""
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: #1d2330; background: #f5f6f8; }
header { background: #1f2a44; color: #fff; padding: 10px 18px; display: flex; align-items: baseline; gap: 18px; }
header h1 { font-size: 17px; margin: 0; font-weight: 600; }
header .sub { color: #b8c2d8; font-size: 12px; }
nav { display: flex; gap: 4px; margin-left: auto; }
nav button { background: transparent; color: #cdd5e6; border: 1px solid transparent; border-radius: 4px;
             padding: 4px 12px; cursor: pointer; font: inherit; }
nav button.active { background: #fff; color: #1f2a44; }
main { padding: 14px 18px; }
.hidden { display: none !important; }
h2 { font-size: 15px; margin: 18px 0 8px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { background: #fff; border: 1px solid #dde1e8; border-radius: 6px; padding: 10px 12px; min-width: 260px; }
.card h3 { margin: 0 0 6px; font-size: 14px; word-break: break-all; }
.kv { display: grid; grid-template-columns: auto 1fr; gap: 2px 10px; font-size: 12px; }
.kv .k { color: #6a7385; }
table.metrics { border-collapse: collapse; background: #fff; font-size: 13px; }
table.metrics th, table.metrics td { border: 1px solid #dde1e8; padding: 4px 8px; text-align: right; }
table.metrics th { background: #eef0f4; }
table.metrics td.l, table.metrics th.l { text-align: left; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; }
.plots figure { margin: 0; background: #fff; border: 1px solid #dde1e8; border-radius: 6px; padding: 8px; }
.plots figcaption { font-size: 12px; color: #6a7385; margin-bottom: 4px; }
.plots img { max-width: 100%; display: block; }
pre { white-space: pre-wrap; word-break: break-word; margin: 0;
      font: 12.5px/1.45 ui-monospace, Menlo, Consolas, monospace;
      background: #fafbfc; border: 1px solid #e3e6ec; border-radius: 4px; padding: 8px; }
details > summary { cursor: pointer; color: #44506a; font-size: 12px; }
.filters { display: flex; flex-wrap: wrap; gap: 8px; align-items: center; margin-bottom: 10px; }
.filters label { font-size: 12px; color: #44506a; display: flex; gap: 4px; align-items: center; }
.filters select, .filters input { font: inherit; padding: 3px 6px; border: 1px solid #c5cbd6; border-radius: 4px;
                                  background: #fff; }
.filters input[type=search] { width: 320px; }
#count { font-size: 12px; color: #44506a; margin-left: auto; }
.viewer { display: grid; grid-template-columns: minmax(300px, 34%) 1fr; gap: 12px; height: calc(100vh - 130px);
          min-height: 400px; }
#list { overflow-y: auto; position: relative; background: #fff; border: 1px solid #dde1e8; border-radius: 6px;
        outline: none; }
#list .row { position: absolute; left: 0; right: 0; height: 46px; padding: 4px 10px; border-bottom: 1px solid #eef0f4;
             cursor: pointer; overflow: hidden; }
#list .row:hover { background: #f2f5fb; }
#list .row.sel { background: #dfe8fb; }
.row .top { display: flex; gap: 8px; font-size: 12px; white-space: nowrap; }
.row .id { font-weight: 600; }
.row .meta { color: #6a7385; }
.row .snip { font-size: 12px; color: #44506a; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.badge { display: inline-block; padding: 0 6px; border-radius: 9px; font-size: 11px; font-weight: 600; color: #fff; }
.badge.correct { background: #2e8540; } .badge.wrong { background: #c0392b; } .badge.unparsed { background: #d68910; }
#detail { overflow: auto; background: #fff; border: 1px solid #dde1e8; border-radius: 6px; padding: 12px 14px; }
#detail .empty { color: #8a93a5; margin-top: 40px; text-align: center; }
.dhead { display: flex; flex-wrap: wrap; gap: 10px; align-items: center; margin-bottom: 8px; }
.dhead h3 { margin: 0; font-size: 15px; }
.stats { display: flex; flex-wrap: wrap; gap: 6px 14px; font-size: 12px; margin: 6px 0 10px; }
.stats span b { color: #1d2330; } .stats span { color: #6a7385; }
.sect { margin: 10px 0 4px; font-size: 12px; font-weight: 600; color: #44506a; text-transform: uppercase;
        letter-spacing: .04em; }
ol.opts { margin: 0; padding-left: 0; list-style: none; font-size: 13px; }
ol.opts li { padding: 1px 0; } ol.opts li.gold { font-weight: 600; color: #2e8540; }
ol.opts li.picked { text-decoration: underline; }
button.act { font: inherit; font-size: 12px; padding: 3px 10px; border: 1px solid #9aa6bf; background: #f2f5fb;
             border-radius: 4px; cursor: pointer; }
.cmp { display: grid; gap: 10px; overflow-x: auto; }
.cmp-run { font-weight: 600; margin: 10px 0 4px; font-size: 13px; }
.cmp-cell { border: 1px solid #dde1e8; border-radius: 6px; padding: 8px; min-width: 220px; background: #fcfcfd; }
.cmp-cell.cur { border-color: #5b7bd5; box-shadow: 0 0 0 1px #5b7bd5; }
.cmp-cell pre { max-height: 360px; overflow: auto; }
.cmp-cell .h { display: flex; flex-wrap: wrap; gap: 4px 8px; align-items: center; font-size: 12px; margin-bottom: 6px;
               cursor: pointer; }
.cmp-cell .h span { white-space: nowrap; }
"""

# No "</script" anywhere in here: it would end the tag early (and break the CSP hash).
SCRIPT = r"""
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("m1-data").textContent);
  const RUNS = D.runs, QS = D.questions, TS = D.traces;
  const ROW_H = 46;

  // Build elements from text only: strings become text nodes, never markup.
  function el(tag, props, ...kids) {
    const e = document.createElement(tag);
    for (const k in (props || {})) {
      const v = props[k];
      if (k === "class") e.className = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, String(v));
    }
    add(e, kids);
    return e;
  }
  function add(e, kid) {
    if (kid === null || kid === undefined || kid === false) return;
    if (Array.isArray(kid)) { for (const k of kid) add(e, k); return; }
    e.appendChild(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  function clear(e) { while (e.firstChild) e.removeChild(e.firstChild); }
  function txt(v) {
    return v === null || v === undefined ? "–" : (typeof v === "object" ? JSON.stringify(v) : String(v));
  }
  function pct(v) { return v === null || v === undefined ? "–" : (100 * v).toFixed(1) + "%"; }
  function num(v, d) { return v === null || v === undefined ? "–" : Number(v).toFixed(d); }
  function badge(outcome) { return el("span", {class: "badge " + (outcome || "")}, outcome || "?"); }
  const q = (t) => QS[t.q];
  const promptOf = (t) => (t.prompt !== undefined ? t.prompt : q(t).prompt) || "";
  // A thinking stored once for a sweep: {prefix_of: trace index, units: UTF-16 length} (see build_data).
  const thinkingOf = (t) => {
    const th = t.thinking;
    if (th && typeof th === "object") return String(TS[th.prefix_of].thinking || "").slice(0, th.units);
    return th || "";
  };
  const multiRun = RUNS.length > 1;

  // ---- page skeleton
  document.title = D.title;
  const tabs = {summary: el("button", {id: "tab-summary", class: "active"}, "Summary"),
                traces: el("button", {id: "tab-traces"}, "Traces")};
  document.body.appendChild(el("header", null,
    el("h1", null, "m1 report"),
    el("span", {class: "sub"}, RUNS.map((r) => r.name).join(" · ") + " — " + TS.length.toLocaleString() +
       " traces — generated " + D.generated),
    el("nav", null, tabs.summary, tabs.traces)));
  const summary = el("main", {id: "summary"});
  const tracesPane = el("main", {id: "traces", class: "hidden"});
  document.body.appendChild(summary);
  document.body.appendChild(tracesPane);
  function show(name) {
    for (const k in tabs) tabs[k].classList.toggle("active", k === name);
    summary.classList.toggle("hidden", name !== "summary");
    tracesPane.classList.toggle("hidden", name !== "traces");
    if (name === "traces") renderList();
  }
  tabs.summary.addEventListener("click", () => show("summary"));
  tabs.traces.addEventListener("click", () => show("traces"));

  // ---- summary: run cards, metrics table, plots
  const cards = el("div", {class: "cards"});
  for (const r of RUNS) {
    const c = r.config || {};
    const kv = el("div", {class: "kv"});
    const pairs = [["traces", r.n], ["benchmark", c.benchmark], ["model", c.model || "embedded SmolLM2-135M"],
                   ["engine", c.engine], ["format", c.format], ["budgets", (c.budgets || []).join(", ")],
                   ["forcing rounds", c.forcing_rounds], ["temperature", c.temperature], ["method", c.method]];
    for (const [k, v] of pairs) add(kv, [el("span", {class: "k"}, k), el("span", null, txt(v))]);
    cards.appendChild(el("div", {class: "card"}, el("h3", null, r.name), kv,
      el("details", null, el("summary", null, "full config"), el("pre", null, JSON.stringify(c, null, 2)))));
  }
  const head = ["source", "budget", "n", "accuracy", "95% CI", "unparsed", "think tok", "answer tok", "hit budget"];
  if (multiRun) head.unshift("run");
  const table = el("table", {class: "metrics", id: "metrics"},
    el("thead", null, el("tr", null, head.map((h, i) => el("th", {class: i < (multiRun ? 2 : 1) ? "l" : ""}, h)))));
  const tbody = el("tbody");
  for (const r of RUNS) for (const row of r.rows) {
    const cells = [row.source, row.budget, row.n, num(row.accuracy, 3),
      num(row.ci_low, 3) + "–" + num(row.ci_high, 3), pct(row.unparsed_rate),
      num(row.mean_thinking_tokens, 1), num(row.mean_answer_tokens, 1), pct(row.hit_budget_rate)];
    if (multiRun) cells.unshift(r.name);
    tbody.appendChild(el("tr", null,
      cells.map((v, i) => el("td", {class: i < (multiRun ? 2 : 1) ? "l" : ""}, txt(v)))));
  }
  table.appendChild(tbody);
  const figs = el("div", {class: "plots"});
  for (const im of D.images) {
    if (!String(im.src).startsWith("data:image/png;base64,")) continue;  // only our own PNGs
    const img = el("img", {alt: im.title});
    img.src = im.src;
    figs.appendChild(el("figure", null, el("figcaption", null, im.title), img));
  }
  add(summary, [el("h2", null, multiRun ? "Runs" : "Run"), cards, el("h2", null, "Accuracy by benchmark and budget"),
                table, el("h2", null, "Plots"), figs]);

  // ---- trace viewer: filters
  function options(values, allLabel) {
    return [el("option", {value: ""}, allLabel)].concat(values.map((v) => el("option", {value: String(v)}, String(v))));
  }
  const uniq = (xs) => Array.from(new Set(xs));
  const fRun = el("select", {id: "f-run"}, options(RUNS.map((r) => r.name), "all runs"));
  fRun.querySelectorAll("option").forEach((o, i) => { if (i > 0) o.value = String(i - 1); });
  const fSource = el("select", {id: "f-source"}, options(uniq(QS.map((x) => x.source)).sort(), "all benchmarks"));
  const fBudget = el("select", {id: "f-budget"},
    options(uniq(TS.map((t) => t.budget)).sort((a, b) => a - b), "all budgets"));
  const fOutcome = el("select", {id: "f-outcome"}, options(["correct", "wrong", "unparsed"], "all outcomes"));
  const fSearch = el("input",
    {id: "f-search", type: "search", placeholder: "search question, thinking, answer (all words)"});
  const count = el("span", {id: "count"});
  const list = el("div", {id: "list", tabindex: "0"});
  const spacer = el("div");
  list.appendChild(spacer);
  const detail = el("div", {id: "detail"}, el("div", {class: "empty"}, "Select a trace on the left."));
  add(tracesPane, [
    el("div", {class: "filters"},
      el("label", null, "run", fRun), el("label", null, "benchmark", fSource), el("label", null, "budget", fBudget),
      el("label", null, "outcome", fOutcome), fSearch, count),
    el("div", {class: "viewer"}, list, detail)]);

  // Lower-cased text to search, built on first search (it doubles the memory of the texts).
  let hay = null;
  function haystack() {
    if (hay) return hay;
    hay = TS.map((t) => {
      const opts = Object.values(q(t).options || {}).join("\n");
      return [promptOf(t), opts, thinkingOf(t), t.answer || "", t.graded_text || ""].join("\n").toLowerCase();
    });
    return hay;
  }

  let visible = new Int32Array(0);
  let selected = -1;
  function applyFilters() {
    const run = fRun.value === "" ? -1 : Number(fRun.value);
    const source = fSource.value, budget = fBudget.value === "" ? null : Number(fBudget.value);
    const outcome = fOutcome.value;
    const terms = fSearch.value.toLowerCase().split(/\s+/).filter(Boolean);
    const h = terms.length ? haystack() : null;
    const out = new Int32Array(TS.length);
    let n = 0;
    for (let i = 0; i < TS.length; i++) {
      const t = TS[i], qq = QS[t.q];
      if (run >= 0 && qq.run !== run) continue;
      if (source && qq.source !== source) continue;
      if (budget !== null && t.budget !== budget) continue;
      if (outcome && t.outcome !== outcome) continue;
      if (h) { let ok = true; for (const w of terms) if (!h[i].includes(w)) { ok = false; break; } if (!ok) continue; }
      out[n++] = i;
    }
    visible = out.subarray(0, n);
    count.textContent = n.toLocaleString() + " of " + TS.length.toLocaleString() + " traces";
    count.dataset.n = String(n);
    list.scrollTop = 0;
    renderList();
  }

  // Virtual list: only the rows in view exist in the DOM, so 10,000 traces stay fast.
  function renderList() {
    spacer.style.height = (visible.length * ROW_H) + "px";
    for (const r of Array.from(list.querySelectorAll(".row"))) r.remove();
    const first = Math.max(0, Math.floor(list.scrollTop / ROW_H) - 5);
    const last = Math.min(visible.length, first + Math.ceil((list.clientHeight || 800) / ROW_H) + 10);
    for (let k = first; k < last; k++) {
      const i = visible[k], t = TS[i], qq = QS[t.q];
      const row = el("div", {class: "row" + (i === selected ? " sel" : ""), "data-idx": i},
        el("div", {class: "top"}, badge(t.outcome), el("span", {class: "id"}, txt(qq.id)),
          el("span", {class: "meta"}, "budget " + t.budget + " · " + qq.source +
             (multiRun ? " · " + RUNS[qq.run].name : "") + " · " + txt(t.thinking_tokens) + " think tok")),
        el("div", {class: "snip"}, qq.snippet));
      row.style.top = (k * ROW_H) + "px";
      row.addEventListener("click", () => openTrace(i));
      list.appendChild(row);
    }
  }
  let pending = 0;
  list.addEventListener("scroll", () => {
    if (!pending) pending = requestAnimationFrame(() => { pending = 0; renderList(); });
  });
  list.addEventListener("keydown", (ev) => {
    if (ev.key !== "ArrowDown" && ev.key !== "ArrowUp") return;
    ev.preventDefault();
    let k = Array.prototype.indexOf.call(visible, selected);
    k = Math.max(0, Math.min(visible.length - 1, k + (ev.key === "ArrowDown" ? 1 : -1)));
    if (visible.length) {
      openTrace(visible[k]);
      const top = k * ROW_H;
      if (top < list.scrollTop) list.scrollTop = top;
      else if (top + ROW_H > list.scrollTop + list.clientHeight) list.scrollTop = top + ROW_H - list.clientHeight;
    }
  });
  for (const f of [fRun, fSource, fBudget, fOutcome]) f.addEventListener("change", applyFilters);
  // Typing waits for a pause; Enter (change) filters at once.
  let timer = 0;
  fSearch.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(applyFilters, 150); });
  fSearch.addEventListener("change", () => { clearTimeout(timer); applyFilters(); });

  // ---- one trace
  function stat(label, value) { return el("span", null, label + " ", el("b", null, txt(value))); }
  function optionList(t) {
    const qq = q(t);
    const ol = el("ol", {class: "opts"});
    for (const [letter, text] of Object.entries(qq.options || {})) {
      const cls = (letter === qq.gold ? "gold " : "") + (letter === t.letter ? "picked" : "");
      ol.appendChild(el("li", {class: cls}, letter + ". " + text +
        (letter === qq.gold ? "  ✓ gold" : "") + (letter === t.letter ? "  ← extracted" : "")));
    }
    return ol;
  }
  const SHOWN = new Set(["q", "budget", "prompt", "prompt_tokens", "thinking", "thinking_tokens", "thinking_ended",
    "thinking_stop", "hit_budget", "forcing_rounds", "forced_at", "think_finish_reasons", "answer_prefix", "answer",
    "answer_tokens", "answer_finish_reason", "graded_text", "letter", "outcome", "rule", "correct"]);

  function openTrace(i) {
    selected = i;
    const t = TS[i], qq = q(t);
    clear(detail);
    const extra = Object.keys(t).filter((k) => !SHOWN.has(k));
    add(detail, [
      el("div", {class: "dhead"}, el("h3", {id: "d-title"}, txt(qq.id) + " · budget " + t.budget), badge(t.outcome),
        el("span", null, qq.source + (multiRun ? " · " + RUNS[qq.run].name : "")),
        el("button", {class: "act", id: "btn-compare", onclick: () => openCompare(i)}, "compare across budgets")),
      el("div", {class: "stats"}, stat("gold", qq.gold), stat("extracted", t.letter), stat("rule", t.rule),
        stat("prompt tok", t.prompt_tokens), stat("thinking tok", txt(t.thinking_tokens) + " / " + t.budget),
        stat("thinking ended", t.thinking_ended), stat("thinking stop", t.thinking_stop),
        stat("hit budget", t.hit_budget ? "yes" : "no"),
        stat("forcing rounds", t.forcing_rounds), stat("forced at", t.forced_at),
        stat("think finish", t.think_finish_reasons), stat("answer tok", t.answer_tokens),
        stat("answer finish", t.answer_finish_reason)),
      el("div", {class: "sect"}, "Options"), optionList(t),
      el("div", {class: "sect"}, "Prompt"), el("pre", {id: "d-prompt"}, promptOf(t)),
      el("div", {class: "sect"}, "Thinking"), el("pre", {id: "d-thinking"}, thinkingOf(t)),
      el("div", {class: "sect"}, "Answer"), el("pre", {id: "d-answer"}, (t.answer_prefix || "") + (t.answer || "")),
      el("div", {class: "sect"}, "Graded text"), el("pre", {id: "d-graded"}, t.graded_text || ""),
      extra.length ? [el("div", {class: "sect"}, "Other fields"),
        el("pre", null, extra.map((k) => k + ": " + JSON.stringify(t[k])).join("\n"))] : null,
    ]);
    detail.scrollTop = 0;
    for (const r of list.querySelectorAll(".row")) r.classList.toggle("sel", Number(r.dataset.idx) === i);
  }

  // ---- one question at every budget, side by side (a row per run that has it)
  let byQuestion = null;
  function openCompare(i) {
    if (!byQuestion) {
      byQuestion = new Map();
      TS.forEach((t, j) => {
        const key = QS[t.q].source + "\u0000" + QS[t.q].id;
        if (!byQuestion.has(key)) byQuestion.set(key, []);
        byQuestion.get(key).push(j);
      });
    }
    const qq = q(TS[i]);
    const all = byQuestion.get(qq.source + "\u0000" + qq.id);
    clear(detail);
    add(detail, el("div", {class: "dhead"}, el("h3", null, txt(qq.id) + " at every budget"),
      el("span", null, "gold " + txt(qq.gold)),
      el("button", {class: "act", id: "btn-back", onclick: () => openTrace(i)}, "back to trace")));
    add(detail, el("pre", {class: "snip"}, qq.snippet));
    const wrap = el("div", {id: "compare"});
    for (let r = 0; r < RUNS.length; r++) {
      const js = all.filter((j) => QS[TS[j].q].run === r).sort((a, b) => TS[a].budget - TS[b].budget);
      if (!js.length) continue;
      if (multiRun) wrap.appendChild(el("div", {class: "cmp-run"}, RUNS[r].name));
      const grid = el("div", {class: "cmp"});
      grid.style.gridTemplateColumns = "repeat(" + js.length + ", minmax(220px, 1fr))";
      for (const j of js) {
        const t = TS[j];
        grid.appendChild(el("div", {class: "cmp-cell" + (j === i ? " cur" : ""), "data-budget": t.budget},
          el("div", {class: "h", title: "open this trace", onclick: () => openTrace(j)},
            el("b", null, "budget " + t.budget), badge(t.outcome), el("span", null, "letter " + txt(t.letter)),
            el("span", null, txt(t.thinking_tokens) + " tok, ended by " + txt(t.thinking_ended))),
          el("div", {class: "sect"}, "Thinking"), el("pre", {class: "c-thinking"}, thinkingOf(t)),
          el("div", {class: "sect"}, "Answer"),
          el("pre", {class: "c-answer"}, (t.answer_prefix || "") + (t.answer || ""))));
      }
      wrap.appendChild(grid);
    }
    detail.appendChild(wrap);
    detail.scrollTop = 0;
  }

  applyFilters();
})();
"""
