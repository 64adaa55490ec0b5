"""Failures: how each answer went wrong, per run, source and budget.

Every trace falls in exactly one category, decided from its fields in this order:

  correct              outcome == "correct"
  cut_no_answer        outcome == "unparsed" and the budget cut the thinking (hit_budget, i.e.
                       thinking_ended == "budget"): the answer was forced after the cut and the
                       grader read no letter from it (graded_text)
  unparsed             outcome == "unparsed" and the model ended its thinking itself: no letter
                       was read though nothing cut the thinking (off-format answer, or an answer
                       phase stopped by answer_max_tokens: see no_letter_answer_cut)
  wrong_after_forcing  outcome == "wrong" and rounds_forced > 0 (at least one end of thinking was
                       replaced by the ignore string), however the thinking then ended
  wrong_after_cut      outcome == "wrong", no round forced, and the budget cut the thinking
  wrong_natural        outcome == "wrong", no round forced, and the model ended its thinking itself

Forcing takes precedence over the cut among wrong answers because it is the intervention under
study; an unread answer is unparsed whatever else happened.

Table failures (CSV columns): run, source, budget, n, one count per category (CATEGORIES), then
share_<category> for each (count / n), and no_letter_answer_cut: of the cut_no_answer and
unparsed traces, those whose answer phase stopped at answer_max_tokens (answer_finish_reason
"length"; a larger --answer-max-tokens might have given a letter). A run with several sources
also gets an "all (micro)" row per budget. Figure failures_by_budget: stacked shares per budget.

With `judged=` (a JudgeResult from m1.reporting.judge.judge_failures) the section adds the
judge's labels of the wrong answers: tables failure_judge (run, source, budget, n_wrong,
n_judged, one count per label, unparsed, failed), failure_judge_questions (run, source, id,
budget, letter, gold, label, reason), judge_agreement and judge_confusion when the judge was
also run on the hand-labelled sample; figure failure_judge_labels; links to the judged questions.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any

from m1.reporting.judge import LABELS, UNPARSED
from m1.reporting.plots import grid
from m1.reporting.sections import Section, Table, TraceLink
from m1.runs import Run, Trace

if TYPE_CHECKING:
    from m1.reporting.judge import JudgeResult

CATEGORIES = ("correct", "wrong_natural", "wrong_after_cut", "wrong_after_forcing", "cut_no_answer", "unparsed")
COLORS = {"correct": "#4c9a5b", "wrong_natural": "#c8553d", "wrong_after_cut": "#e59c48",
          "wrong_after_forcing": "#8a5fb0", "cut_no_answer": "#7d7d7d", "unparsed": "#c4c4c4"}
LABEL_COLORS = {"missing_knowledge": "#5a8fc7", "wrong_knowledge": "#c8553d", "reasoning_slip": "#e5b448",
                "misread_question": "#8a5fb0", UNPARSED: "#c4c4c4"}
COLUMNS = ["run", "source", "budget", "n", *CATEGORIES, *(f"share_{c}" for c in CATEGORIES), "no_letter_answer_cut"]
JUDGE_COLUMNS = ["run", "source", "budget", "n_wrong", "n_judged", *LABELS, UNPARSED, "failed"]
MICRO = "all (micro)"
MAX_PANELS = 12  # more (run, source) panels than this: one panel per run, sources pooled


def category(t: Trace) -> str:
    """The failure category of one trace (see the module's docstring)."""
    cut = t.hit_budget or t.thinking_ended == "budget"
    if t.outcome == "correct":
        return "correct"
    if t.outcome != "wrong":  # "unparsed": no letter read
        return "cut_no_answer" if cut else "unparsed"
    if t.rounds_forced > 0:
        return "wrong_after_forcing"
    return "wrong_after_cut" if cut else "wrong_natural"


def failure_rows(runs: list[Run]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        cells: dict[tuple[str, int], list[Trace]] = defaultdict(list)
        for t in run.traces:
            cells[(t.source, t.budget)].append(t)
        for (source, budget), traces in sorted(cells.items()):
            rows.append(_row(run.name, source, budget, traces))
        if len({s for s, _ in cells}) > 1:
            for budget in sorted({b for _, b in cells}):
                rows.append(_row(run.name, MICRO, budget, [t for (_, b), ts in cells.items() if b == budget
                                                           for t in ts]))
    return rows


def _row(run: str, source: str, budget: int, traces: list[Trace]) -> dict[str, Any]:
    counts = Counter(category(t) for t in traces)
    n = len(traces)
    return {"run": run, "source": source, "budget": budget, "n": n, **{c: counts[c] for c in CATEGORIES},
            **{f"share_{c}": counts[c] / n for c in CATEGORIES},
            "no_letter_answer_cut": sum(t.outcome not in ("correct", "wrong") and t.answer_finish_reason == "length"
                                        for t in traces)}


def failures(runs: list[Run], judged: JudgeResult | None = None, max_links: int = 200) -> Section | None:
    """The failure taxonomy per (run, source, budget), with the judge's labels when `judged` is given.
    None when the runs hold no traces."""
    runs = [r for r in runs if r.traces]
    if not runs:
        return None
    rows = failure_rows(runs)
    tables = [Table("failures", COLUMNS, rows, "Outcome categories per run, source and budget")]
    figures = {"failures_by_budget": _figure(runs)}
    text = [
        "Every answer in one category, from its trace: correct; wrong_natural (a wrong letter after the model "
        "ended its thinking itself); wrong_after_cut (a wrong letter after the budget cut the thinking); "
        "wrong_after_forcing (a wrong letter after at least one forced \"Wait\" round); cut_no_answer (the "
        "budget cut the thinking and the forced answer gave no readable letter); unparsed (no letter read "
        "though the model ended its thinking itself). no_letter_answer_cut counts the answers without a letter "
        "whose answer phase ran out of answer_max_tokens.",
        "Read it as: cut_no_answer and wrong_after_cut shrink as the budget grows if the model needs more "
        "thinking; wrong_natural is what more budget cannot fix; unparsed is the grader's or the format's "
        "problem, not the model's medicine.",
    ]
    links: list[TraceLink] = []
    if judged is not None:
        judge_tables, judge_text, links = _judge_parts(runs, judged, max_links)
        tables += judge_tables
        text += judge_text
        figures["failure_judge_labels"] = _judge_figure(runs, judged)
    return Section("failures", "Failures", "\n\n".join(text), tables, figures, links)


# ---- the judge's labels ----

def _judge_parts(runs: list[Run], judged: JudgeResult, max_links: int):
    names = {r.name for r in runs}
    mine = [j for j in judged.judgements if j.run in names]
    wrong: Counter[tuple[str, str, int]] = Counter(
        (r.name, t.source, t.budget) for r in runs for t in r.traces if t.outcome == "wrong")
    by_cell: dict[tuple[str, str, int], list] = defaultdict(list)
    for j in mine:
        by_cell[(j.run, j.source, j.budget)].append(j)
    rows = []
    for cell in sorted(set(wrong) | set(by_cell)):
        js = by_cell.get(cell, [])
        labels = Counter(j.label if j.label is not None else (UNPARSED if j.error is None else "failed") for j in js)
        rows.append({"run": cell[0], "source": cell[1], "budget": cell[2], "n_wrong": wrong[cell],
                     "n_judged": len(js), **{k: labels[k] for k in (*LABELS, UNPARSED, "failed")}})
    per_question = [{"run": j.run, "source": j.source, "id": j.id, "budget": j.budget, "letter": j.letter,
                     "gold": j.gold, "label": j.label or ("failed: " + j.error if j.error else UNPARSED),
                     "reason": j.reason[:300]} for j in mine]
    tables = [
        Table("failure_judge", JUDGE_COLUMNS, rows, f"Wrong answers labelled by the judge {judged.model}"),
        Table("failure_judge_questions", ["run", "source", "id", "budget", "letter", "gold", "label", "reason"],
              per_question, "The judge's label for each wrong answer"),
    ]
    total = Counter(j.label or UNPARSED for j in mine if j.error is None)
    text = [f"An LLM judge ({judged.model}) labelled {len(mine)} wrong answers as missing_knowledge, "
            "wrong_knowledge, reasoning_slip or misread_question (definitions in m1.reporting.judge); "
            f"totals: {', '.join(f'{k} {total[k]}' for k in (*LABELS, UNPARSED))}"
            + (f"; {sum(j.error is not None for j in mine)} requests failed" if any(j.error for j in mine) else "")
            + ". unparsed: the judge's reply named no single label."]
    a = judged.agreement
    if a is not None:
        text.append(f"The judge's agreement with hand labels on {a.n} sample cases: accuracy {a.accuracy:.2f}, "
                    f"Cohen's kappa {a.kappa:.2f} ({a.n_unparsed} replies unparsed). Below about 0.4 kappa, read the "
                    "labels as a rough sorting, not a measurement.")
        tables.append(Table("judge_agreement", ["judge", "n", "n_agree", "n_unparsed", "accuracy", "kappa"],
                            [{"judge": judged.model, "n": a.n, "n_agree": a.n_agree, "n_unparsed": a.n_unparsed,
                              "accuracy": a.accuracy, "kappa": a.kappa}], "Judge against hand labels"))
        tables.append(Table("judge_confusion", ["hand_label", *LABELS, UNPARSED],
                            [{"hand_label": g, **{p: a.confusion.get((g, p), 0) for p in (*LABELS, UNPARSED)}}
                             for g in LABELS], "Hand label (rows) against judge label (columns)"))
    links = [TraceLink(j.run, j.source, j.id, j.budget,
                       f"judge {judged.model}: {(j.label or UNPARSED).replace('_', ' ')}"
                       + (f" ({j.reason[:160]})" if j.reason else ""))
             for j in mine if j.error is None][:max_links]
    return tables, text, links


# ---- figures ----

def _panels(runs: list[Run]) -> list[tuple[str, Run, str | None]]:
    pairs = [(run, s) for run in runs for s in run.sources]
    if len(pairs) <= MAX_PANELS:
        return [(f"{run.name} · {s}" if len(runs) > 1 else s, run, s) for run, s in pairs]
    return [(f"{run.name} · all sources", run, None) for run in runs]


def _stacked(ax, budgets: list[int], shares: dict[str, list[float]], colors: dict[str, str]) -> None:
    x = list(range(len(budgets)))
    bottom = [0.0] * len(budgets)
    for key, values in shares.items():
        if any(values):
            ax.bar(x, values, bottom=bottom, color=colors[key], width=0.8)
        bottom = [b + v for b, v in zip(bottom, values)]
    step = max(1, len(budgets) // 10)
    ax.set_xticks(x[::step])
    ax.set_xticklabels([str(b) for b in budgets[::step]], fontsize=7)
    ax.set_xlabel("thinking budget (tokens)", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of questions", fontsize=8)


def _figure(runs: list[Run]):
    panels = _panels(runs)
    fig, axes = grid(len(panels))
    for ax, (title, run, source) in zip(axes, panels):
        traces = [t for t in run.traces if source is None or t.source == source]
        budgets = sorted({t.budget for t in traces})
        cells = {b: Counter(category(t) for t in traces if t.budget == b) for b in budgets}
        shares = {c: [cells[b][c] / sum(cells[b].values()) for b in budgets] for c in CATEGORIES}
        _stacked(ax, budgets, shares, COLORS)
        ax.set_title(title, fontsize=9)
    _legend(fig, COLORS)
    fig.suptitle("How answers end, per budget", fontsize=9)
    return fig


def _legend(fig, colors: dict[str, str]) -> None:
    """One legend for all panels, below them, naming every category (present or not)."""
    from matplotlib.patches import Patch

    handles = [Patch(color=c, label=k.replace("_", " ")) for k, c in colors.items()]
    width, height = fig.get_size_inches()
    ncol = len(handles) if width >= 8 else 3
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=7, frameon=False)
    rows = -(-len(handles) // ncol)
    fig.tight_layout(rect=(0, (0.1 + 0.2 * rows) / height, 1, 1 - 0.3 / height))


def _judge_figure(runs: list[Run], judged: JudgeResult):
    names = [r.name for r in runs]
    fig, axes = grid(len(names))
    keys = (*LABELS, UNPARSED)
    for ax, name in zip(axes, names):
        js = [j for j in judged.judgements if j.run == name and j.error is None]
        budgets = sorted({j.budget for j in js})
        cells = {b: Counter(j.label or UNPARSED for j in js if j.budget == b) for b in budgets}
        shares = {k: [cells[b][k] / max(1, sum(cells[b].values())) for b in budgets] for k in keys}
        _stacked(ax, budgets, shares, LABEL_COLORS)
        ax.set_ylabel("share of judged wrong answers", fontsize=8)
        if len(names) > 1:
            ax.set_title(name, fontsize=9)
    _legend(fig, LABEL_COLORS)
    fig.suptitle(f"Why answers were wrong, by the judge {judged.model}", fontsize=9)
    return fig
