"""Knowledge or reasoning? Runs that differ only in the knowledge they were given.

Runs that are the same evaluation apart from the knowledge settings (knowledge, knowledge_where,
knowledge_k, knowledge_corpus, knowledge_retriever, knowledge_at, knowledge_counted, min_thinking)
form a group; their budgets may differ, and each comparison uses the budgets both runs ran. Its
baseline is the run without knowledge ("none", min_thinking 0 when there are several); every other
run is a condition, labelled by what it inserted and where: "gold-background · prompt", "retrieve
k=4 · thinking · counted". Each condition is compared with the baseline question by question. A
question wrong without knowledge and right with its own background text (gold-background: the item's
explanation without the sentences naming the answer) lacked knowledge; one wrong under both did not
fail for want of that text.

Tables (CSV columns; source "avg (macro)" / "all (micro)" rows average over sources when there are
several; unparsed answers count as wrong throughout):
  knowledge_accuracy     group, condition, knowledge, where, run, source, budget, n, n_correct, accuracy,
                         ci_low, ci_high (Wilson per source; bootstrap for macro/micro), mean_thinking_tokens,
                         mean_knowledge_tokens, hit_budget_rate, collapsed_share (thinking of at most
                         COLLAPSED tokens: the knowledge stopped the thinking at once), skipped_items (items
                         the run did not evaluate, e.g. no explanation: config.json environment.knowledge.skipped)
  knowledge_paired       group, condition, baseline_run, run, source, budget, n, acc_none, acc_condition, diff
                         (condition - none), ci_low, ci_high (paired bootstrap), both_right, right_to_wrong,
                         wrong_to_right, both_wrong, p_mcnemar (exact, two-sided, uncorrected)
  knowledge_gap          group, condition (a gold-background run), source, domain ("all", or a MeSH domain at
                         the largest budget), budget, n, n_no_gap (right under none), n_gap (wrong under none,
                         right with the background), n_not_knowledge (wrong under both), share_no_gap, share_gap,
                         share_not_knowledge (of n), gap_share_of_errors (n_gap / errors under none)
  knowledge_interaction  group, condition, source, budget_low, budget_high, n (questions in all four cells),
                         acc_none_low, acc_none_high, acc_condition_low, acc_condition_high, gain_none,
                         gain_condition, difference (gain_condition - gain_none), ci_low, ci_high (bootstrap
                         over questions)
  knowledge_controls     group, control, condition, reference, source, budget, n, value, ci_low, ci_high,
                         reference_value, p_value, acc_with_hit, acc_without_hit, note (see CONTROLS)
  knowledge_fixes        group, condition, budget, doubled_budget, n_errors (wrong under none at budget),
                         fixed_by_knowledge, share_fixed_by_knowledge, ci_low, ci_high (Wilson),
                         fixed_by_doubling, share_fixed_by_doubling, doubling_ci_low, doubling_ci_high, diff
                         (knowledge - doubling), diff_ci_low, diff_ci_high, p_mcnemar; "n/a" without a none
                         budget twice the largest compared one
  knowledge_matched      group, condition, source, budget, mean_knowledge_tokens, target_budget, none_budget,
                         n, acc_none_same_budget, acc_none, acc_condition, diff, ci_low, ci_high,
                         right_to_wrong, wrong_to_right, p_mcnemar
  knowledge_judge        (with `judged=`) group, condition, budget, n, judge_and_gap, judge_only, gap_only,
                         neither, agreement, kappa: the failure judge's missing_knowledge label of wrong
                         answers under none against the gold-background verdict
Figure knowledge_accuracy[_gN]: accuracy against budget, one line per condition, Wilson bands.
Links: questions with a knowledge gap, then questions wrong even with the background, at the largest
budget; and a few whose thinking collapsed under a condition.
"""
from __future__ import annotations

import dataclasses
import math
import re
import textwrap
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np

from m1.config import KNOWLEDGE_FIELDS, EvalConfig
from m1.reporting import stats
from m1.reporting.metrics import wilson_interval
from m1.reporting.plots import accuracy_panel, chance, describe, grid, questions_of
from m1.reporting.sections import Section, Table, TraceLink
from m1.runs import Run, Trace

if TYPE_CHECKING:
    from m1.reporting.analyses.domains import Labeller
    from m1.reporting.judge import JudgeResult

MACRO, MICRO = "avg (macro)", "all (micro)"
# What may differ within a group: the knowledge settings, and the budgets (a run without knowledge at
# more budgets gives the doubled and token-matched budgets; comparisons use the budgets both ran).
VARYING = (*KNOWLEDGE_FIELDS, "min_thinking", "budgets")
ORDER = ("none", "gold", "gold-background", "counterfactual", "placebo", "retrieve")
BACKGROUND = "gold-background"
COLLAPSED = 2  # thinking of at most this many tokens stopped at once
COLLAPSE_NOTE = 0.2  # a condition collapsing this much more often than none gets a sentence and links
COLLAPSE_LINKS = 10
MIN_DOMAIN = 5  # domains with fewer questions are pooled
DEFAULT_AT = "1/3,2/3"

ACCURACY_COLUMNS = ["group", "condition", "knowledge", "where", "run", "source", "budget", "n", "n_correct",
                    "accuracy", "ci_low", "ci_high", "mean_thinking_tokens", "mean_knowledge_tokens",
                    "hit_budget_rate", "collapsed_share", "skipped_items"]
FLIPS = ["both_right", "right_to_wrong", "wrong_to_right", "both_wrong", "p_mcnemar"]
PAIRED_COLUMNS = ["group", "condition", "baseline_run", "run", "source", "budget", "n", "acc_none", "acc_condition",
                  "diff", "ci_low", "ci_high", *FLIPS]
GAP_COLUMNS = ["group", "condition", "source", "domain", "budget", "n", "n_no_gap", "n_gap", "n_not_knowledge",
               "share_no_gap", "share_gap", "share_not_knowledge", "gap_share_of_errors"]
INTERACTION_COLUMNS = ["group", "condition", "source", "budget_low", "budget_high", "n", "acc_none_low",
                       "acc_none_high", "acc_condition_low", "acc_condition_high", "gain_none", "gain_condition",
                       "difference", "ci_low", "ci_high"]
CONTROL_COLUMNS = ["group", "control", "condition", "reference", "source", "budget", "n", "value", "ci_low",
                   "ci_high", "reference_value", "p_value", "acc_with_hit", "acc_without_hit", "note"]
FIXES_COLUMNS = ["group", "condition", "budget", "doubled_budget", "n_errors", "fixed_by_knowledge",
                 "share_fixed_by_knowledge", "ci_low", "ci_high", "fixed_by_doubling", "share_fixed_by_doubling",
                 "doubling_ci_low", "doubling_ci_high", "diff", "diff_ci_low", "diff_ci_high", "p_mcnemar"]
MATCHED_COLUMNS = ["group", "condition", "source", "budget", "mean_knowledge_tokens", "target_budget",
                   "none_budget", "n", "acc_none_same_budget", "acc_none", "acc_condition", "diff", "ci_low",
                   "ci_high", "right_to_wrong", "wrong_to_right", "p_mcnemar"]
JUDGE_COLUMNS = ["group", "condition", "budget", "n", "judge_and_gap", "judge_only", "gap_only", "neither",
                 "agreement", "kappa"]

Key = tuple[str, str]  # (source, id)
Pairs = dict[str, list[tuple[Trace, Trace]]]  # source -> (baseline trace, condition trace)


# ---- groups ----

@dataclasses.dataclass(frozen=True)
class Condition:
    """One run of a group and the knowledge it was given."""

    run: Run
    knowledge: str
    where: str
    k: int
    counted: bool
    min_thinking: int
    retriever: str
    corpus: str | None
    at: str

    @classmethod
    def of(cls, run: Run) -> Condition:
        c = run.config
        return cls(run, str(c.get("knowledge") or "none"), str(c.get("knowledge_where") or "prompt"),
                   int(c.get("knowledge_k") or 4), bool(c.get("knowledge_counted")), int(c.get("min_thinking") or 0),
                   str(c.get("knowledge_retriever") or "bm25"), c.get("knowledge_corpus"),
                   str(c.get("knowledge_at") or DEFAULT_AT))

    @property
    def label(self) -> str:
        parts = ["none"]
        if self.knowledge != "none":
            retrieve = self.knowledge == "retrieve"
            parts = [f"retrieve k={self.k}" if retrieve else self.knowledge, self.where]
            if retrieve and self.retriever != "bm25":
                parts.append(self.retriever)
            if retrieve and self.corpus:
                parts.append(f"corpus {Path(self.corpus).name}")
            if self.where == "thinking" and self.at != DEFAULT_AT:
                parts.append(f"at {self.at}")
            if self.counted:
                parts.append("counted")
        if self.min_thinking:
            parts.append(f"min_thinking {self.min_thinking}")
        return " · ".join(parts)

    @property
    def order(self) -> tuple:
        rank = ORDER.index(self.knowledge) if self.knowledge in ORDER else len(ORDER)
        return rank, self.knowledge, self.where != "prompt", self.min_thinking, self.label

    @property
    def skipped(self) -> int:
        """Items the run did not evaluate under its condition (the run's environment lists them)."""
        k = self.run.environment.get("knowledge")
        skipped = k.get("skipped") if isinstance(k, dict) else None
        return len(skipped) if isinstance(skipped, list) else 0


@dataclasses.dataclass
class Group:
    name: str  # "g1", "g2", ...
    none: Condition  # the baseline
    conditions: list[Condition]  # the others, in ORDER
    unused: list[Run]  # a second run of a condition already taken

    @property
    def everything(self) -> list[Condition]:
        return [self.none, *self.conditions]

    def describe(self) -> str:
        cfg = self.none.run.config
        what = [describe(cfg), questions_of(cfg), f"seed {cfg.get('seed')}"]
        conds = ", ".join(f"{c.run.name} ({c.label})" for c in self.everything)
        text = f"{self.name}: {' · '.join(what)}; runs {conds}"
        if self.unused:
            text += f"; not used (same condition as a run above): {', '.join(r.name for r in self.unused)}"
        return text


def _key(config: dict[str, Any]) -> str:
    """What must match for two runs to be compared: their identity without the knowledge settings."""
    return EvalConfig.comparison_key(config, VARYING)


def knowledge_groups(runs: Sequence[Run]) -> list[Group]:
    """Runs that differ only in knowledge: groups with a run without knowledge and at least one other."""
    by_key: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        if run.traces:
            by_key[_key(run.config)].append(run)
    groups: list[Group] = []
    for members in by_key.values():
        taken: dict[str, Condition] = {}
        unused = []
        for run in sorted(members, key=lambda r: -len(r.traces)):  # of two runs of a condition, the larger
            cond = Condition.of(run)
            if cond.label in taken:
                unused.append(run)
            else:
                taken[cond.label] = cond
        nones = sorted((c for c in taken.values() if c.knowledge == "none"), key=lambda c: c.min_thinking)
        if nones and len(taken) >= 2:
            others = sorted((c for c in taken.values() if c is not nones[0]), key=lambda c: c.order)
            groups.append(Group(f"g{len(groups) + 1}", nones[0], others, unused))
    return groups


# ---- the section ----

def knowledge(runs: list[Run], judged: JudgeResult | None = None, labeller: Labeller | None = None,
              domains: Mapping[Key, str] | None = None, by_domain: bool = True, max_links: int = 200,
              n_boot: int = stats.N_BOOT) -> Section | None:
    """Each knowledge condition against none, question by question; None when no runs differ only in it.

    judged: the failure judge's labels (m1.reporting.judge.judge_failures) for the knowledge_judge table.
    domains: (source, id) -> MeSH domain for per-domain gap rows; else the questions are labelled with
    `labeller` (default: the offline TF-IDF labeller of the domains analysis, about 1 s per 1,000
    questions) unless by_domain is False."""
    groups = knowledge_groups(runs)
    if not groups:
        return None
    if domains is None and by_domain and any(c.knowledge == BACKGROUND for g in groups for c in g.conditions):
        from m1.reporting.analyses.domains import OfflineLabeller, label_runs

        domains = label_runs([g.none.run for g in groups], labeller or OfflineLabeller())
    rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    links: list[TraceLink] = []
    figures = {}
    notes: list[str] = []
    for group in groups:
        head = {"group": group.name}
        for cond in group.everything:
            rows["accuracy"] += [{**head, **r} for r in _accuracy_rows(cond)]
        for cond in group.conditions:
            c_head = {**head, "condition": cond.label}
            rows["paired"] += [{**c_head, **r} for r in _paired_rows(group.none, cond, n_boot)]
            rows["interaction"] += [{**c_head, **r} for r in _interaction_rows(group.none, cond, n_boot)]
            rows["fixes"] += [{**c_head, **r} for r in _fixes_rows(group.none, cond, n_boot)]
            rows["matched"] += [{**c_head, **r} for r in _matched_rows(group.none, cond, n_boot)]
            if cond.knowledge == BACKGROUND:
                gap, gap_links, more = _gap(group.none, cond, domains, max_links)
                rows["gap"] += [{**c_head, **r} for r in gap]
                links += gap_links
                if more:
                    notes.append(f"{group.name}, {cond.label}: {more} of the gap and not-knowledge questions are "
                                 f"not linked (max_links={max_links}).")
                if judged is not None:
                    rows["judge"] += [{**c_head, **r} for r in _judge_rows(group.none, cond, judged)]
            collapse_note, collapse_links = _collapse(group.none, cond)
            if collapse_note:
                notes.append(f"{group.name}, {collapse_note}")
                links += collapse_links
        rows["controls"] += [{**head, **r} for r in _controls(group, n_boot)]
        name = "knowledge_accuracy" if len(groups) == 1 else f"knowledge_accuracy_{group.name}"
        figures[name] = _figure(group)
    tables = [
        Table("knowledge_accuracy", ACCURACY_COLUMNS, rows["accuracy"], "Accuracy per knowledge condition and budget"),
        Table("knowledge_paired", PAIRED_COLUMNS, rows["paired"], "Each condition against none, paired by question"),
        Table("knowledge_gap", GAP_COLUMNS, rows["gap"], "Knowledge gap: wrong without knowledge, right with the "
              "item's background"),
        Table("knowledge_interaction", INTERACTION_COLUMNS, rows["interaction"],
              "Gain from the smallest to the largest budget, with and without knowledge"),
        Table("knowledge_controls", CONTROL_COLUMNS, rows["controls"], "Controls: placebo, counterfactual, retrieval"),
        Table("knowledge_fixes", FIXES_COLUMNS, rows["fixes"], "Errors at the largest budget: fixed by knowledge or "
              "by twice the budget"),
        Table("knowledge_matched", MATCHED_COLUMNS, rows["matched"], "Knowledge against none given as many more "
              "thinking tokens as were inserted"),
    ]
    if rows["judge"]:
        tables.append(Table("knowledge_judge", JUDGE_COLUMNS, rows["judge"],
                            "The failure judge's missing_knowledge against the gold-background verdict"))
    text = "\n\n".join([*INTRO, "\n".join(g.describe() for g in groups), *READING,
                        *([JUDGE_TEXT] if rows["judge"] else []), *notes])
    return Section("knowledge", "Knowledge or reasoning?", text, tables, figures, links)


INTRO = [
    "Does the model fail for want of a fact, or for want of reasoning? Runs that differ only in the knowledge put "
    "before the question or into the thinking are compared with the run without knowledge (none), question by "
    "question at each budget. gold is the item's own explanation; gold-background the same without the answer (the "
    "sentences that state it removed, other mentions masked); placebo is another item's explanation of about the "
    "same length; counterfactual the explanation rewritten to argue for a wrong option; retrieve brings passages "
    "from a corpus. Knowledge tokens never count as thinking unless the condition says "
    "\"counted\".",
]
READING = [
    "knowledge_accuracy: accuracy per condition and budget with its 95% interval. collapsed_share is the share of "
    f"questions whose thinking stopped within {COLLAPSED} tokens: knowledge in the prompt can make the model end its "
    "thinking at once, and then the condition measures no thinking at all (rerun with --min-thinking). "
    "skipped_items counts items the run did not evaluate (no explanation to give).",
    "knowledge_paired: diff is the condition's accuracy minus none's on the same questions, with a paired bootstrap "
    "95% interval; right_to_wrong counts questions the knowledge turned wrong, wrong_to_right those it turned "
    "right; p_mcnemar is McNemar's exact test on those flips, one per row and not corrected for multiplicity.",
    "knowledge_gap: of the questions at each budget, share_gap were wrong without knowledge and right with their "
    "background (the model lacked the fact), share_not_knowledge were wrong under both (the background did not "
    "help: reasoning, or knowledge the explanation does not hold), share_no_gap were right already. "
    "gap_share_of_errors is the part of none's errors the background fixed. Domain rows (at the largest budget) "
    "use offline MeSH labels: approximate.",
    "knowledge_interaction: gain_none is none's accuracy at the largest budget minus at the smallest, gain_condition "
    "the same with knowledge; difference (gain_condition - gain_none) above 0 means knowledge makes thinking pay "
    "more, below 0 that it replaces thinking. Its interval is a bootstrap over questions.",
    "knowledge_controls: placebo vs none (value: accuracy difference, reference_value: none's accuracy) says "
    "whether any text helps; a placebo gain means the gold gains are partly not about the facts. counterfactual "
    "follow (value: the share of answers that picked the option the counterfactual text argued for, read from "
    "insertions[].passages[].supports; reference_value: how often none picked that option) says how far the model "
    "follows what it reads. retrieve vs gold-background (value: (acc_retrieve - acc_none) / (acc_background - "
    "acc_none), the share of the background's gain retrieval recovers, bootstrap interval; reference_value: the "
    "background's gain) says how much of the gap retrieval closes. retrieval hit (value: the share of retrieve "
    "traces whose passages contain the correct option's text, case and punctuation ignored) says whether the "
    "corpus found the answer at all; acc_with_hit and acc_without_hit split accuracy by it.",
    "knowledge_fixes: of none's errors at the largest budget both ran, the share the condition fixes against the "
    "share none fixes itself at twice that budget (n/a when none did not run it); diff and p_mcnemar compare the "
    "two on the same errors. knowledge_matched: each condition at budget B against none at the budget closest to "
    "B plus the mean inserted tokens (none_budget), so the knowledge is set against as much extra thinking; under "
    "\"counted\" the inserted tokens are already in the budget, so none_budget is B.",
    "The linked questions are those with a knowledge gap (open them to see the fact the background supplied), "
    "those wrong even with the background, and any whose thinking collapsed.",
]
JUDGE_TEXT = ("knowledge_judge: on the wrong answers under none that the failure judge labelled, its label "
              "missing_knowledge against the intervention's verdict (a knowledge gap: right with the background). "
              "judge_and_gap: both say knowledge; judge_only: the judge says knowledge, the background did not fix "
              "it; gap_only: fixed by the background though the judge named another cause. kappa is Cohen's kappa "
              "of the two binary verdicts (nan when one side never varies).")


# ---- pairing ----

def _index(run: Run) -> dict[tuple[str, str, int], Trace]:
    return {t.key: t for t in run.traces}


def _by_budget(run: Run) -> dict[int, list[Trace]]:
    out: dict[int, list[Trace]] = defaultdict(list)
    for t in run.traces:
        out[t.budget].append(t)
    return out


def _pairs(a: Run, b: Run) -> dict[int, Pairs]:
    """budget -> source -> (a's trace, b's trace) of the questions both ran at that budget."""
    base = _index(a)
    out: dict[int, Pairs] = defaultdict(lambda: defaultdict(list))
    for t in sorted(b.traces, key=lambda t: t.key):
        match = base.get(t.key)
        if match is not None:
            out[t.budget][t.source].append((match, t))
    return out


def _compared(by_source: Pairs, n_boot: int) -> list[tuple[str, stats.Paired]]:
    """Per source, then (with several) macro and micro: the paired comparison of b against a."""
    groups = {s: ([a.correct for a, _ in ps], [b.correct for _, b in ps]) for s, ps in sorted(by_source.items()) if ps}
    out = [(s, stats.paired_compare(a, b, n_boot)) for s, (a, b) in groups.items()]
    if len(groups) > 1:
        macro, micro = stats.paired_pooled(groups, n_boot)
        out += [(MACRO, macro), (MICRO, micro)]
    return out


def _flip_cells(p: stats.Paired) -> dict[str, Any]:
    f = p.flips
    return {"n": p.n, "diff": p.diff, "ci_low": p.ci_low, "ci_high": p.ci_high, "both_right": f.both_right,
            "right_to_wrong": f.right_to_wrong, "wrong_to_right": f.wrong_to_right, "both_wrong": f.both_wrong,
            "p_mcnemar": p.p_value}


def _per_source(by_source: Mapping[str, list]) -> list[tuple[str, list[list]]]:
    """(label, strata): each source alone, then all sources pooled (stratified) when there are several."""
    sources = [s for s in sorted(by_source) if by_source[s]]
    out = [(s, [by_source[s]]) for s in sources]
    if len(sources) > 1:
        out.append((MICRO, [by_source[s] for s in sources]))
    return out


def _boot_means(strata: Sequence[np.ndarray], n_boot: int, seed: int = 0) -> np.ndarray:
    """Bootstrap means of per-question 0/1 vectors, questions resampled within each stratum (source):
    (n_boot, columns). A stratum takes few distinct rows, so a resample is a multinomial draw of their counts."""
    rng = np.random.default_rng(seed)
    total = np.zeros((n_boot, strata[0].shape[1]))
    for values in strata:
        rows, counts = np.unique(values, axis=0, return_counts=True)
        total += rng.multinomial(len(values), counts / len(values), size=n_boot) @ rows
    return total / sum(len(v) for v in strata)


def _ci(samples: np.ndarray) -> tuple[float, float]:
    finite = samples[np.isfinite(samples)]
    if finite.size < samples.size / 2:  # the statistic is undefined in most resamples
        return math.nan, math.nan
    lo, hi = np.quantile(finite, [0.025, 0.975])
    return float(lo), float(hi)


def _share(k: int, n: int) -> dict[str, Any]:
    lo, hi = wilson_interval(k, n)
    return {"value": k / n if n else math.nan, "ci_low": lo, "ci_high": hi}


# ---- tables ----

def _accuracy_rows(cond: Condition) -> list[dict[str, Any]]:
    traces = cond.run.traces
    head = {"condition": cond.label, "knowledge": cond.knowledge, "where": "" if cond.knowledge == "none" else
            cond.where, "run": cond.run.name, "skipped_items": cond.skipped}
    cells: dict[tuple[str, int], list[Trace]] = defaultdict(list)
    for t in traces:
        cells[(t.source, t.budget)].append(t)
    rows = [{**head, "source": a.source, "budget": a.budget, "n": a.n, "n_correct": a.n_correct, "accuracy": a.accuracy,
             "ci_low": a.ci_low, "ci_high": a.ci_high, **_usage(cells[(a.source, a.budget)])}
            for a in stats.accuracy_table(traces)]
    if len({t.source for t in traces}) > 1:
        for av in stats.averages(traces):
            at_budget = [t for t in traces if t.budget == av.budget]
            for label, est in ((MACRO, av.macro), (MICRO, av.micro)):
                rows.append({**head, "source": label, "budget": av.budget, "n": av.n, "accuracy": est.value,
                             "ci_low": est.ci_low, "ci_high": est.ci_high, **_usage(at_budget),
                             **({"n_correct": sum(t.correct for t in at_budget)} if label == MICRO else {})})
    return rows


def _collapsed(t: Trace) -> bool:
    """The thinking stopped within COLLAPSED tokens where the budget allowed more (budget 0 is no collapse)."""
    return t.thinking_tokens <= COLLAPSED < t.budget


def _usage(traces: list[Trace]) -> dict[str, float]:
    n = len(traces)
    return {"mean_thinking_tokens": sum(t.thinking_tokens for t in traces) / n,
            "mean_knowledge_tokens": sum(t.knowledge_tokens for t in traces) / n,
            "hit_budget_rate": sum(t.hit_budget for t in traces) / n,
            "collapsed_share": sum(_collapsed(t) for t in traces) / n}


def _paired_rows(none: Condition, cond: Condition, n_boot: int) -> list[dict[str, Any]]:
    rows = []
    for budget, by_source in sorted(_pairs(none.run, cond.run).items()):
        for source, p in _compared(by_source, n_boot):
            rows.append({"baseline_run": none.run.name, "run": cond.run.name, "source": source, "budget": budget,
                         "acc_none": p.acc_a, "acc_condition": p.acc_b, **_flip_cells(p)})
    return rows


def _verdict(none_t: Trace, background_t: Trace) -> str:
    if none_t.correct:
        return "no_gap"
    return "gap" if background_t.correct else "not_knowledge"


def _gap_row(pairs: list[tuple[Trace, Trace]]) -> dict[str, Any]:
    counts = Counter(_verdict(a, b) for a, b in pairs)
    n, errors = len(pairs), counts["gap"] + counts["not_knowledge"]
    return {"n": n, "n_no_gap": counts["no_gap"], "n_gap": counts["gap"], "n_not_knowledge": counts["not_knowledge"],
            "share_no_gap": counts["no_gap"] / n, "share_gap": counts["gap"] / n,
            "share_not_knowledge": counts["not_knowledge"] / n,
            "gap_share_of_errors": counts["gap"] / errors if errors else math.nan}


def _gap(none: Condition, cond: Condition, domains: Mapping[Key, str] | None,
         max_links: int) -> tuple[list[dict[str, Any]], list[TraceLink], int]:
    """Gap rows per budget and source (domain rows at the largest budget), links, and links left out."""
    pairs = _pairs(none.run, cond.run)
    rows = []
    for budget, by_source in sorted(pairs.items()):
        for source, strata in _per_source(by_source):
            rows.append({"source": source, "domain": "all", "budget": budget,
                         **_gap_row([p for s in strata for p in s])})
    if not pairs:
        return rows, [], 0
    top = max(pairs)
    every = [p for ps in pairs[top].values() for p in ps]
    if domains is not None:
        by_domain: dict[str, list[tuple[Trace, Trace]]] = defaultdict(list)
        for a, b in every:
            by_domain[domains.get((a.source, a.id), "unlabelled")].append((a, b))
        small = sorted(d for d, ps in by_domain.items() if len(ps) < MIN_DOMAIN)
        pooled = [p for d in small for p in by_domain.pop(d)]
        if pooled:
            by_domain[f"other (pooled: {len(small)} domains under {MIN_DOMAIN} questions)"] = pooled
        source = MICRO if len(pairs[top]) > 1 else next(iter(pairs[top]))
        for domain, ps in sorted(by_domain.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            rows.append({"source": source, "domain": domain, "budget": top, **_gap_row(ps)})
    gap = [(a, b) for a, b in every if _verdict(a, b) == "gap"]
    not_knowledge = [(a, b) for a, b in every if _verdict(a, b) == "not_knowledge"]
    chosen = gap[:max_links] + not_knowledge[:max(0, max_links - len(gap))]
    links = [TraceLink(cond.run.name, b.source, b.id, b.budget,
                       f"{'knowledge gap' if b.correct else 'not knowledge'}: wrong without knowledge "
                       f"({a.letter or 'no letter read'}), {'right' if b.correct else 'still wrong'} with "
                       f"{cond.label} ({b.letter or 'no letter read'})") for a, b in chosen]
    return rows, links, len(gap) + len(not_knowledge) - len(chosen)


def _interaction_rows(none: Condition, cond: Condition, n_boot: int) -> list[dict[str, Any]]:
    """Gain from the smallest to the largest shared budget, with and without knowledge, on the questions
    in all four cells."""
    budgets = sorted(set(none.run.budgets) & set(cond.run.budgets))
    if len(budgets) < 2:
        return []
    lo, hi = budgets[0], budgets[-1]
    a, b = _index(none.run), _index(cond.run)
    by_source: dict[str, list[list[int]]] = defaultdict(list)
    for source, qid, budget in sorted(a):
        if budget != lo:
            continue
        cells = [(source, qid, lo), (source, qid, hi)]
        if all(c in a and c in b for c in cells):
            by_source[source].append([int(a[c].correct) for c in cells] + [int(b[c].correct) for c in cells])
    rows = []
    for source, strata in _per_source(by_source):
        arrays = [np.array(s) for s in strata]
        means = np.concatenate(arrays).mean(axis=0)
        boot = _boot_means(arrays, n_boot)
        diff = (boot[:, 3] - boot[:, 2]) - (boot[:, 1] - boot[:, 0])
        gain_none, gain_cond = means[1] - means[0], means[3] - means[2]
        rows.append({"source": source, "budget_low": lo, "budget_high": hi, "n": sum(len(s) for s in strata),
                     "acc_none_low": means[0], "acc_none_high": means[1], "acc_condition_low": means[2],
                     "acc_condition_high": means[3], "gain_none": gain_none, "gain_condition": gain_cond,
                     "difference": gain_cond - gain_none, **dict(zip(("ci_low", "ci_high"), _ci(diff)))})
    return rows


def _fixes_rows(none: Condition, cond: Condition, n_boot: int) -> list[dict[str, Any]]:
    """Of none's errors at the largest shared budget: the share the condition fixes, and the share none
    fixes at twice the budget."""
    shared = set(none.run.budgets) & set(cond.run.budgets)
    if not shared:
        return []
    budget = max(shared)
    doubled = 2 * budget if 2 * budget in none.run.budgets else None
    a, b = _index(none.run), _index(cond.run)
    errors = [k for k, t in sorted(a.items()) if t.budget == budget and not t.correct and k in b
              and (doubled is None or (k[0], k[1], doubled) in a)]
    by_knowledge = [b[k].correct for k in errors]
    row: dict[str, Any] = {"budget": budget, "n_errors": len(errors), "fixed_by_knowledge": sum(by_knowledge)}
    share = _share(sum(by_knowledge), len(errors))
    row.update(share_fixed_by_knowledge=share["value"], ci_low=share["ci_low"], ci_high=share["ci_high"])
    if doubled is None or not errors:
        row.update({c: "n/a" for c in FIXES_COLUMNS[FIXES_COLUMNS.index("doubled_budget"):] if c not in row})
        return [row]
    by_doubling = [a[(s, q, doubled)].correct for s, q, _ in errors]
    share = _share(sum(by_doubling), len(errors))
    p = stats.paired_compare(by_doubling, by_knowledge, n_boot)
    row.update(doubled_budget=doubled, fixed_by_doubling=sum(by_doubling), share_fixed_by_doubling=share["value"],
               doubling_ci_low=share["ci_low"], doubling_ci_high=share["ci_high"], diff=p.diff,
               diff_ci_low=p.ci_low, diff_ci_high=p.ci_high, p_mcnemar=p.p_value)
    return [row]


def _closest(budgets: Sequence[int], target: float) -> int:
    """The budget nearest the target; on a tie the larger (more thinking for none, the harder test)."""
    return min(budgets, key=lambda b: (abs(b - target), -b))


def _matched_rows(none: Condition, cond: Condition, n_boot: int) -> list[dict[str, Any]]:
    """The condition at B against none at the budget closest to B + the mean inserted tokens."""
    a = _index(none.run)
    rows = []
    for budget, at in sorted(_by_budget(cond.run).items()):
        inserted = sum(t.knowledge_tokens for t in at) / len(at)
        target = budget if cond.counted else budget + inserted
        matched = _closest(none.run.budgets, target)
        by_source: Pairs = defaultdict(list)
        for t in sorted(at, key=lambda t: t.key):
            if (t.source, t.id, matched) in a:
                by_source[t.source].append((a[(t.source, t.id, matched)], t))
        # none at B itself on the same questions: what the matched budget adds for none
        same = {s: [a[(x.source, x.id, budget)].correct for x, _ in ps if (x.source, x.id, budget) in a]
                for s, ps in by_source.items()}
        per_source = {s: sum(v) / len(v) for s, v in same.items() if v}
        pooled = [c for v in same.values() for c in v]
        same_acc = {**per_source, MACRO: float(np.mean(list(per_source.values()))) if per_source else math.nan,
                    MICRO: sum(pooled) / len(pooled) if pooled else math.nan}
        for source, p in _compared(by_source, n_boot):
            rows.append({"source": source, "budget": budget, "mean_knowledge_tokens": inserted,
                         "target_budget": target, "none_budget": matched,
                         "acc_none_same_budget": same_acc.get(source, math.nan), "acc_none": p.acc_a,
                         "acc_condition": p.acc_b, **_flip_cells(p)})
    return rows


# ---- controls ----

def _controls(group: Group, n_boot: int) -> list[dict[str, Any]]:
    rows = []
    backgrounds = [c for c in group.conditions if c.knowledge == BACKGROUND]
    for cond in group.conditions:
        if cond.knowledge == "placebo":
            rows += [{"control": "placebo vs none", "condition": cond.label, "reference": "none", **r}
                     for r in _placebo_rows(group.none, cond, n_boot)]
        elif cond.knowledge == "counterfactual":
            rows += [{"control": "counterfactual follow", "condition": cond.label, "reference": "none", **r}
                     for r in _follow_rows(group.none, cond)]
        elif cond.knowledge == "retrieve":
            for bg in backgrounds:
                rows += [{"control": "retrieve vs gold-background", "condition": cond.label, "reference": bg.label,
                          **r} for r in _closed_rows(group.none, bg, cond, n_boot)]
            rows += [{"control": "retrieval hit", "condition": cond.label, "reference": "", **r}
                     for r in _hit_rows(cond)]
    return rows


def _placebo_rows(none: Condition, cond: Condition, n_boot: int) -> list[dict[str, Any]]:
    return [{"source": source, "budget": budget, "n": p.n, "value": p.diff, "ci_low": p.ci_low, "ci_high": p.ci_high,
             "reference_value": p.acc_a, "p_value": p.p_value}
            for budget, by_source in sorted(_pairs(none.run, cond.run).items())
            for source, p in _compared(by_source, n_boot)]


def supported_letter(t: Trace) -> str | None:
    """The option a counterfactual insertion argued for: insertions[i]["passages"][j]["supports"]
    (None when the trace records none)."""
    for ins in t.insertions or []:
        for p in (ins.get("passages") or []) if isinstance(ins, dict) else []:
            if isinstance(p, dict) and p.get("supports"):
                return str(p["supports"])
    return None


def _cells(run: Run) -> Iterator[tuple[int, str, list[Trace]]]:
    """(budget, source row, its traces) for every budget, per source and for the pooled rows."""
    cells: dict[int, dict[str, list[Trace]]] = defaultdict(lambda: defaultdict(list))
    for t in run.traces:
        cells[t.budget][t.source].append(t)
    for budget, by_source in sorted(cells.items()):
        for source, strata in _per_source(by_source):
            yield budget, source, [t for s in strata for t in s]


def _follow_rows(none: Condition, cond: Condition) -> list[dict[str, Any]]:
    a = _index(none.run)
    rows = []
    for budget, source, traces in _cells(cond.run):
        known = [(t, letter) for t in traces if (letter := supported_letter(t)) is not None]
        if not known:
            rows.append({"source": source, "budget": budget, "n": 0, "value": math.nan,
                         "note": "no supported letter recorded (insertions[].passages[].supports)"})
            continue
        followed = sum(t.letter == letter for t, letter in known)
        in_none = [a[t.key].letter == letter for t, letter in known if t.key in a]
        note = f"{len(traces) - len(known)} traces without a supported letter left out" \
            if len(known) < len(traces) else ""
        rows.append({"source": source, "budget": budget, "n": len(known), **_share(followed, len(known)),
                     "reference_value": sum(in_none) / len(in_none) if in_none else math.nan, "note": note})
    return rows


def _closed_rows(none: Condition, bg: Condition, retrieve: Condition, n_boot: int) -> list[dict[str, Any]]:
    """(acc_retrieve - acc_none) / (acc_background - acc_none) per budget, on questions in all three runs."""
    a, g = _index(none.run), _index(bg.run)
    cells: dict[int, dict[str, list[list[int]]]] = defaultdict(lambda: defaultdict(list))
    for t in sorted(retrieve.run.traces, key=lambda t: t.key):
        if t.key in a and t.key in g:
            cells[t.budget][t.source].append([int(a[t.key].correct), int(g[t.key].correct), int(t.correct)])
    rows = []
    for budget, by_source in sorted(cells.items()):
        for source, strata in _per_source(by_source):
            arrays = [np.array(s) for s in strata]
            m = np.concatenate(arrays).mean(axis=0)
            gap = m[1] - m[0]
            boot = _boot_means(arrays, n_boot)
            with np.errstate(divide="ignore", invalid="ignore"):
                ratios = np.where(boot[:, 1] != boot[:, 0], (boot[:, 2] - boot[:, 0]) / (boot[:, 1] - boot[:, 0]),
                                  np.nan)
            lo, hi = _ci(ratios)
            rows.append({"source": source, "budget": budget, "n": int(sum(len(s) for s in strata)),
                         "value": (m[2] - m[0]) / gap if gap else math.nan, "ci_low": lo, "ci_high": hi,
                         "reference_value": gap,
                         "note": "" if gap else "the background fixes nothing here: no gap to close"})
    return rows


_PUNCT = re.compile(r"[\W_]+")


def _normal(text: str) -> str:
    return " " + _PUNCT.sub(" ", text.casefold()).strip() + " "


def retrieval_hit(t: Trace) -> bool | None:
    """Whether the passages inserted into `t` contain its correct option's text (case, punctuation and
    spacing ignored; whole words). None when nothing was inserted or the option has no text."""
    option = _normal(t.options.get(t.gold, ""))
    texts = []
    for ins in t.insertions or []:
        passages = ins.get("passages") or []
        texts += [f"{p.get('title', '')} {p.get('text', '')}" for p in passages if isinstance(p, dict)]
        if not passages and ins.get("text"):
            texts.append(str(ins["text"]))
    if not option.strip() or not texts:
        return None
    return option in _normal(" ".join(texts))


def _hit_rows(cond: Condition) -> list[dict[str, Any]]:
    rows = []
    for budget, source, traces in _cells(cond.run):
        hits = [(t, h) for t in traces if (h := retrieval_hit(t)) is not None]
        with_hit = [t.correct for t, h in hits if h]
        without = [t.correct for t, h in hits if not h]
        rows.append({"source": source, "budget": budget, "n": len(hits), **_share(len(with_hit), len(hits)),
                     "acc_with_hit": sum(with_hit) / len(with_hit) if with_hit else math.nan,
                     "acc_without_hit": sum(without) / len(without) if without else math.nan,
                     "note": f"{len(traces) - len(hits)} traces without inserted passages left out"
                     if len(hits) < len(traces) else ""})
    return rows


# ---- the judge ----

def _judge_rows(none: Condition, bg: Condition, judged: JudgeResult) -> list[dict[str, Any]]:
    """The judge's missing_knowledge on none's wrong answers against the background's verdict."""
    from m1.reporting.judge import agreement

    b = _index(bg.run)
    a = _index(none.run)
    pairs: dict[int, list[tuple[str, str]]] = defaultdict(list)  # budget -> (verdict, judge), as labels
    for j in judged.judgements:
        key = (j.source, j.id, j.budget)
        if j.run != none.run.name or j.label is None or key not in b or key not in a or a[key].correct:
            continue
        pairs[j.budget].append(("missing_knowledge" if b[key].correct else "other",
                                "missing_knowledge" if j.label == "missing_knowledge" else "other"))
    rows = []
    cells = sorted(pairs.items()) + ([("all", [p for ps in pairs.values() for p in ps])] if len(pairs) > 1 else [])
    for budget, ps in cells:
        agree = agreement([v for v, _ in ps], [jl for _, jl in ps])
        counts = Counter(ps)
        mk = "missing_knowledge"
        rows.append({"budget": budget, "n": len(ps), "judge_and_gap": counts[(mk, mk)],
                     "judge_only": counts[("other", mk)], "gap_only": counts[(mk, "other")],
                     "neither": counts[("other", "other")], "agreement": agree.accuracy, "kappa": agree.kappa})
    return rows


# ---- collapse ----

def _collapse(none: Condition, cond: Condition) -> tuple[str, list[TraceLink]]:
    """A sentence and links when the condition stops the thinking at once far more often than none."""
    worst: tuple[float, int, float] | None = None
    none_at = _by_budget(none.run)
    for budget, at in sorted(_by_budget(cond.run).items()):
        base = none_at.get(budget, [])
        share = sum(_collapsed(t) for t in at) / len(at)
        base_share = sum(_collapsed(t) for t in base) / len(base) if base else 0.0
        if share >= COLLAPSE_NOTE and share - base_share >= COLLAPSE_NOTE / 2 and (worst is None or share > worst[0]):
            worst = (share, budget, base_share)
    if worst is None:
        return "", []
    share, budget, base_share = worst
    text = (f"{cond.label}: the thinking collapsed (at most {COLLAPSED} tokens) on {share:.0%} of the questions at "
            f"budget {budget} (none: {base_share:.0%}); this condition measures the knowledge without thinking. "
            "Rerun it with --min-thinking to keep the model thinking.")
    collapsed = [t for t in sorted(cond.run.traces, key=lambda t: t.key)
                 if t.budget == budget and _collapsed(t)]
    links = [TraceLink(cond.run.name, t.source, t.id, t.budget,
                       f"thinking collapsed to {t.thinking_tokens} tokens under {cond.label}")
             for t in collapsed[:COLLAPSE_LINKS]]
    return text, links


# ---- figure ----

def _figure(group: Group):
    sources = sorted({t.source for c in group.everything for t in c.run.traces})
    panels = sources + ([MICRO] if len(sources) > 1 else [])
    fig, axes = grid(len(panels))
    for ax, panel in zip(axes, panels):
        budgets: list[int] = []
        for cond in group.everything:
            traces = [t for t in cond.run.traces if panel == MICRO or t.source == panel]
            cells: dict[int, list[Trace]] = defaultdict(list)
            for t in traces:
                cells[t.budget].append(t)
            x = sorted(cells)
            if not x:
                continue
            budgets += x
            k = [sum(t.correct for t in cells[b]) for b in x]
            ci = [wilson_interval(kb, len(cells[b])) for kb, b in zip(k, x)]
            collapsed = max(sum(_collapsed(t) for t in cells[b]) / len(cells[b]) for b in x)
            label = cond.label + (f" (collapsed up to {collapsed:.0%})" if collapsed >= COLLAPSE_NOTE else "")
            line, = ax.plot(x, [kb / len(cells[b]) for kb, b in zip(k, x)], marker="" if len(x) > 12 else "o",
                            linestyle="--" if cond.knowledge == "none" else "-", label=label)
            ax.fill_between(x, [c[0] for c in ci], [c[1] for c in ci], alpha=0.1, color=line.get_color())
        traces = [t for c in group.everything for t in c.run.traces if panel == MICRO or t.source == panel]
        accuracy_panel(ax, budgets, panel, chance(traces))
    title = f"Accuracy by knowledge condition · {group.name}: {describe(group.none.run.config)}"
    # wrapped to the figure's width: a model file's name would run past a one-panel figure's edges
    fig.suptitle(textwrap.fill(title, width=int(fig.get_figwidth() * 13)), fontsize=9)
    handles, labels = axes[0].get_legend_handles_labels()
    if len(labels) <= 4:
        fig.tight_layout()
        return fig
    # many conditions: one legend under the panels, where it hides no line
    for ax in axes:
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    ncol = 1 if len(axes) == 1 else 2  # a one-panel figure is too narrow for two columns of labels
    extra = 0.17 * math.ceil(len(labels) / ncol)  # inches of legend
    fig.set_figheight(fig.get_figheight() + extra)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, extra / fig.get_figheight(), 1, 1))
    return fig
