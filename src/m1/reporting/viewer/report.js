// The report page's script (m1/reporting/html.py embeds it, with the CSP hash of this text).
// Everything comes from the JSON block #m1-data, and so does what to show: the metrics
// columns, the run cards, the trace fields of the detail view (with their labels and order)
// and the analyses' sections. Model output is untrusted: strings only ever become text nodes.
// This file must never contain the characters "</" followed by "script": they would end the tag.
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("m1-data").textContent);
  const RUNS = D.runs, QS = D.questions, TS = D.traces, DETAIL = D.detail;
  const ROW_H = 46;
  const FOLD = 20;  // a section's table or link list shows this many rows until "show all"

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

  // ---- values as text
  function txt(v) {
    if (v === null || v === undefined) return "–";
    if (typeof v === "number") return Number.isInteger(v) ? String(v) : fixed(v, 3);
    if (Array.isArray(v)) return v.length ? v.map(txt).join(", ") : "–";
    if (typeof v === "object") return Object.keys(v).map((k) => k + ": " + txt(v[k])).join(", ") || "–";
    return String(v);
  }
  function fixed(v, d) { return v === null || v === undefined ? "–" : Number(v).toFixed(d); }
  // A float in a section's table: 3 decimals (none from 1000 up); a tiny p-value keeps its digits.
  function num(v) {
    if (v !== 0 && Math.abs(v) < 0.0005) return v.toExponential(1);
    return fixed(v, Math.abs(v) < 1000 ? 3 : 0);
  }
  // A kind the Python side names for a column or field: how its value reads.
  function fmt(v, kind) {
    if (v === null || v === undefined) return "–";
    switch (kind) {
      case "pct": return (100 * v).toFixed(1) + "%";
      case "fixed1": return fixed(v, 1);
      case "fixed3": return fixed(v, 3);
      case "num": return typeof v === "number" ? num(v) : txt(v);
      case "flag": return v ? "yes" : "no";
      default: return txt(v);
    }
  }
  function badge(outcome) { return el("span", {class: "badge " + (outcome || "")}, outcome || "?"); }

  // ---- a trace's fields: its own, else its question's; a thinking (or a list: insertions,
  // screened) stored once for a sweep is {prefix_of: trace index, units: UTF-16 length} ({..., items:
  // list length}) (see build_data) and is sliced back here.
  const q = (t) => QS[t.q];
  function value(t, key) {
    const v = key in t ? t[key] : q(t)[key];
    if (v && typeof v === "object" && "prefix_of" in v) {
      const full = TS[v.prefix_of][key];
      return "items" in v ? (full || []).slice(0, v.items) : String(full || "").slice(0, v.units);
    }
    return v;
  }
  const textOf = (t, key) => {
    const v = value(t, key);
    return v === null || v === undefined ? "" : String(v);
  };
  const thinkingOf = (t) => textOf(t, "thinking");
  const answerOf = (t) => textOf(t, "answer_prefix") + textOf(t, "answer");
  const multiRun = RUNS.length > 1;

  // ---- knowledge a trace was given (html.page_insertions): each insertion has its place in the
  // text it went into ("units", UTF-16) and how many units there are its own text ("inline").
  const insertionsOf = (t, where) => (value(t, "insertions") || []).filter((x) => x.where === where);
  const condition = (t) => (t.knowledge && t.knowledge !== "none"
    ? "knowledge " + t.knowledge + (t.knowledge_where ? " in the " + t.knowledge_where : "") : "");
  // A text with its insertions in place: the prompt's or the model's own words stay text nodes;
  // each insertion is a bordered block that folds (an inline one takes its text out of the flow).
  function withInsertions(text, ins, open) {
    const out = [];
    let pos = 0;
    for (const x of ins.slice().sort((a, b) => a.units - b.units)) {
      const at = Math.max(pos, Math.min(x.units, text.length));
      if (at > pos) out.push(text.slice(pos, at));
      out.push(insertion(x, x.inline ? text.slice(at, at + x.inline) : String(x.text || ""), open));
      pos = at + (x.inline || 0);
    }
    if (pos < text.length) out.push(text.slice(pos));
    return out;
  }
  function insertion(x, text, open) {
    const ps = x.passages || [];
    const where = x.where === "prompt" ? "in the prompt" : "inserted after " + txt(x.at) + " thinking tokens";
    const props = {class: "ins", "data-where": x.where, "data-at": txt(x.at)};
    if (open) props.open = "";
    return el("details", props,
      el("summary", null, "knowledge " + where + " · " + txt(x.tokens) + " tokens · " + ps.length +
        (ps.length === 1 ? " passage" : " passages")),
      x.query ? el("div", {class: "query"}, "query: " + x.query) : null,
      ps.length ? el("ol", {class: "passages"}, ps.map((p) => el("li", null, el("b", {class: "pid"}, txt(p.id)),
        " " + txt(p.source) + " · score " + fmt(p.score, "fixed3") + (p.title ? " · " + p.title : ""),
        p.text ? el("div", {class: "ptext"}, p.text) : null))) : null,
      el("div", {class: "ins-text"}, text));
  }
  // Tokens inserted beside the thinking tokens (whether the budget counted them is the run's choice).
  function knowledgeNote(t, where, ins) {
    if (!ins.length) return null;
    const n = ins.reduce((s, x) => s + (Number(x.tokens) || 0), 0);
    if (where === "prompt") return n + " knowledge tokens before the question";
    const head = ins.length + (ins.length === 1 ? " insertion · " : " insertions · ") + n + " tokens inserted";
    if (RUNS[q(t).run].config.knowledge_counted) {
      return head + ", counted against the budget · " + txt(t.thinking_tokens) + " thinking tokens, " +
        txt(t.thinking_tokens - n) + " of them the model's";
    }
    return head + ", not counted against the budget · " + txt(t.thinking_tokens) + " thinking tokens of the model's";
  }

  // ---- page skeleton
  document.title = D.title;
  const tabs = {summary: el("button", {id: "tab-summary", class: "active"}, "Summary"),
                traces: el("button", {id: "tab-traces"}, "Traces")};
  document.body.appendChild(el("header", null,
    el("h1", null, "m1 report"),
    el("span", {class: "sub"}, RUNS.map((r) => r.name).join(" · ") + " — " + TS.length.toLocaleString() +
       " traces — generated " + D.generated),
    el("nav", {class: "tabs"}, tabs.summary, tabs.traces)));
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

  // ---- summary: run cards, metrics table, plots, then the analyses' sections
  const cards = el("div", {class: "cards"});
  for (const r of RUNS) {
    const kv = el("div", {class: "kv"});
    for (const [k, v] of r.card) add(kv, [el("span", {class: "k"}, k), el("span", null, txt(v))]);
    cards.appendChild(el("div", {class: "card"}, el("h3", null, r.name), kv,
      el("details", null, el("summary", null, "full config"), el("pre", null, JSON.stringify(r.config, null, 2)))));
  }
  // Columns as build_data lists them: {label, keys, kind}; "range3" joins two keys as low–high.
  const M = D.metrics;
  const left = (c) => c.kind === "text";
  const metricCell = (row, c) => (c.kind === "range3" ? fmt(row[c.keys[0]], "fixed3") + "–" +
    fmt(row[c.keys[1]], "fixed3") : fmt(row[c.keys[0]], c.kind));
  const table = el("table", {class: "metrics", id: "metrics"},
    el("thead", null, el("tr", null, M.columns.map((c) => el("th", {class: left(c) ? "l" : ""}, c.label)))),
    el("tbody", null, M.rows.map((row) => el("tr", null,
      M.columns.map((c) => el("td", {class: left(c) ? "l" : ""}, metricCell(row, c)))))));
  const figs = el("div", {class: "plots"}, D.images.map((im) => figure(im.title, im.src)));

  function figure(caption, src) {
    if (!String(src).startsWith("data:image/png;base64,")) return null;  // only our own PNGs
    const img = el("img", {alt: caption});
    img.src = src;
    return el("figure", null, el("figcaption", null, caption), img);
  }

  // Rows 0..n-1 made by make(i) go into parent; past FOLD they wait behind a "show all" toggle.
  function folded(parent, n, make, noun) {
    for (let i = 0; i < Math.min(n, FOLD); i++) parent.appendChild(make(i));
    if (n <= FOLD) return null;
    const rest = [];
    let open = false;
    const label = () => (open ? "show the first " + FOLD + " " + noun : "show all " + n + " " + noun);
    const btn = el("button", {class: "act more", "aria-expanded": "false"}, label());
    btn.addEventListener("click", () => {
      open = !open;
      if (open && !rest.length) for (let i = FOLD; i < n; i++) rest.push(make(i));
      for (const e of rest) { if (open) parent.appendChild(e); else e.remove(); }
      btn.textContent = label();
      btn.setAttribute("aria-expanded", String(open));
    });
    return btn;
  }

  // A section's table: columns as given; the Python side marks the columns that hold floats.
  function sectionTable(tb) {
    const right = tb.kinds.map((k) => k === "num" || k === "int");
    const body = el("tbody");
    const more = folded(body, tb.rows.length, (r) => el("tr", null,
      tb.rows[r].map((v, c) => el("td", {class: right[c] ? "" : "l"}, fmt(v, tb.kinds[c])))), "rows");
    return el("div", {class: "stable", "data-name": tb.name},
      tb.caption ? el("div", {class: "caption"}, tb.caption) : null,
      el("div", {class: "scroll"}, el("table", {class: "metrics"},
        el("thead", null, el("tr", null, tb.columns.map((c, i) => el("th", {class: right[i] ? "" : "l"}, c)))),
        body)),
      more);
  }

  // A question an analysis points at: a button that opens it in the trace viewer.
  function linkItem(s, link) {
    const label = (multiRun ? link.run + " · " : "") + link.source + " · " + link.id + " · budget " + link.budget;
    const go = link.trace === null || link.trace === undefined ? el("span", {class: "tlink missing",
      title: "this trace is not in the report"}, label + " (not in this report)")
      : el("button", {class: "tlink", "data-trace": link.trace,
        onclick: (ev) => goToTrace(link.trace, {title: s.title, why: link.why, back: ev.currentTarget})}, label);
    return el("li", null, go, link.why ? el("span", {class: "why"}, " — " + link.why) : null);
  }

  function section(s, id) {
    const box = el("section", {class: "section", id: id, "data-key": s.key}, el("h2", null, s.title));
    for (const p of String(s.text || "").split(/\n[ \t]*\n/)) if (p.trim()) box.appendChild(el("p", null, p.trim()));
    for (const tb of s.tables) box.appendChild(sectionTable(tb));
    const imgs = s.images.map((im) => figure(im.key, im.src)).filter(Boolean);
    if (imgs.length) box.appendChild(el("div", {class: "plots"}, imgs));
    if (s.links.length) {
      const ul = el("ul", {class: "links"});
      add(box, [el("h3", null, "Questions to look at (" + s.links.length + ")"), ul,
                folded(ul, s.links.length, (i) => linkItem(s, s.links[i]), "questions")]);
    }
    return box;
  }

  // Contents first: every part of the summary, the sections included.
  const parts = [["s-runs", multiRun ? "Runs" : "Run", [cards]],
                 ["s-metrics", "Accuracy by benchmark and budget", [table]],
                 ["s-plots", "Plots", [figs]]];
  const toc = el("nav", {class: "toc", id: "toc", "aria-label": "contents"});
  for (const [id, title] of parts) toc.appendChild(el("a", {href: "#" + id}, title));
  D.sections.forEach((s, n) => toc.appendChild(el("a", {href: "#sec-" + n, class: "sec"}, s.title)));
  add(summary, toc);
  for (const [id, title, kids] of parts) add(summary, el("div", {id: id}, el("h2", null, title), kids));
  D.sections.forEach((s, n) => add(summary, section(s, "sec-" + n)));

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

  // Lower-cased text to search: every text block of the detail view (question, options, thinking,
  // answer, graded text...) and the knowledge inserted, built on first search (it doubles the
  // memory of the texts).
  const searched = DETAIL.searched;
  const flat = (v) => (v === null || v === undefined ? ""
    : typeof v === "object" ? Object.values(v).map(flat).join("\n") : String(v));
  let hay = null;
  function haystack() {
    if (hay) return hay;
    hay = TS.map((t) => searched.map((k) => flat(value(t, k))).join("\n").toLowerCase());
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
             (multiRun ? " · " + RUNS[qq.run].name : "") + " · " + txt(t.thinking_tokens) + " think tok" +
             (condition(t) ? " · " + t.knowledge : ""))),
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

  // A section's link: the trace's run and benchmark in the list (the question's other budgets
  // beside it), the list scrolled to it, and the trace open under a note of why it was linked.
  function goToTrace(i, from) {
    const t = TS[i], qq = q(t);
    fRun.value = String(qq.run);
    fSource.value = qq.source;
    fBudget.value = fOutcome.value = fSearch.value = "";
    show("traces");
    applyFilters();
    const k = Array.prototype.indexOf.call(visible, i);
    list.scrollTop = Math.max(0, k * ROW_H - (list.clientHeight - ROW_H) / 2);
    openTrace(i);
    if (from) {
      detail.insertBefore(el("div", {class: "from", id: "d-from"}, "From “" + from.title + "”" +
        (from.why ? ": " + from.why : ""), " ", el("button", {class: "act", id: "btn-from", onclick: () => {
        show("summary");
        from.back.scrollIntoView({block: "center"});
        from.back.focus({preventScroll: true});
      }}, "back to the section")), detail.firstChild);
    }
    renderList();
    window.scrollTo(0, 0);
    list.focus({preventScroll: true});
  }

  // ---- one trace: the stats and text blocks that build_data lists (DETAIL), in its order
  function stat(label, v) { return el("span", null, label + " ", el("b", null, v)); }
  function statOf(t, s) {
    const v = value(t, s.key);
    return stat(s.label, fmt(v, s.kind) + (s.of ? " / " + txt(value(t, s.of)) : ""));
  }
  function optionList(t, key) {
    const qq = q(t), ol = el("ol", {class: "opts"});
    for (const [letter, text] of Object.entries(value(t, key) || {})) {
      const cls = (letter === qq.gold ? "gold " : "") + (letter === t.letter ? "picked" : "");
      ol.appendChild(el("li", {class: cls}, letter + ". " + text +
        (letter === qq.gold ? "  ✓ gold" : "") + (letter === t.letter ? "  ← extracted" : "")));
    }
    return ol;
  }
  function block(t, b) {
    if (b.kind === "screened") {  // passages decontamination removed: shown only where there were some
      const gone = value(t, b.keys[0]) || [];
      return gone.length ? [el("div", {class: "sect"}, b.label + " (" + gone.length + ")"),
        el("ul", {class: "screened", id: "d-" + b.id}, gone.map((p) => el("li", null, el("b", null, txt(p.id)),
          " " + txt(p.source) + " · rule " + txt(p.rule) + " · score " + fmt(p.score, "fixed3"))))] : null;
    }
    const ins = b.insertions ? insertionsOf(t, b.insertions) : [];
    const text = b.keys.map((k) => textOf(t, k)).join("");
    const body = b.kind === "options" ? optionList(t, b.keys[0])
      : el("pre", {id: "d-" + b.id}, ins.length ? withInsertions(text, ins, true) : text);
    const note = knowledgeNote(t, b.insertions, ins);
    return [el("div", {class: "sect"}, b.label, note ? el("span", {class: "note"}, " · " + note) : null), body];
  }
  const covered = new Set(["q"].concat(DETAIL.elsewhere, DETAIL.stats.map((s) => s.key), searched));

  function openTrace(i) {
    selected = i;
    const t = TS[i], qq = q(t);
    clear(detail);
    const extra = Object.keys(t).filter((k) => !covered.has(k));
    add(detail, [
      el("div", {class: "dhead"}, el("h3", {id: "d-title"}, txt(qq.id) + " · budget " + t.budget), badge(t.outcome),
        el("span", {id: "d-where"}, qq.source + (multiRun ? " · " + RUNS[qq.run].name : "")),
        condition(t) ? el("span", {class: "kn", id: "d-knowledge"}, condition(t)) : null,
        el("button", {class: "act", id: "btn-compare", onclick: () => openCompare(i)}, "compare across budgets")),
      el("div", {class: "stats"}, DETAIL.stats.map((s) => statOf(t, s))),
      DETAIL.blocks.map((b) => block(t, b)),
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
          el("div", {class: "sect"}, "Thinking"),
          el("pre", {class: "c-thinking"}, withInsertions(thinkingOf(t), insertionsOf(t, "thinking"), false)),
          el("div", {class: "sect"}, "Answer"), el("pre", {class: "c-answer"}, answerOf(t))));
      }
      wrap.appendChild(grid);
    }
    detail.appendChild(wrap);
    detail.scrollTop = 0;
  }

  applyFilters();
})();
