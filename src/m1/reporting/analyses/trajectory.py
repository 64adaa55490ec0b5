"""Answer trajectories: how the model's answer moves as it thinks, and when it could have stopped.

A one-pass sweep with dense budgets (`m1 eval --budgets 32:512:32`) forces an answer after the
same thinking cut at every budget, so each question has an *answer trajectory*: its probed
answer at each budget, in order. Two sections read them.

`trajectory(runs)`: per question, the answers over budgets ("C C B B B", "-" for unparsed).
  - Natural end: a cut sweep that ended its thinking by itself before budget B holds the same
    trace at every larger budget, so the trajectory is held there: from the first budget whose
    thinking ended naturally, every later budget takes that budget's answer (runs made with
    `m1 eval --independent` rethink at each budget and are used as they are).
  - settle point: the smallest budget from which the answer (a letter, or unparsed) stays what it
    is at the largest budget; defined for every question, unparsed at the end included. A
    question settles no later than its natural end.
  - final_correct: right at the largest budget; ever_correct: right at some budget.
  - late_flip_rate (right -> wrong, overthinking): share right at some budget and wrong at the
    largest; wrong_to_right_rate: share wrong at some budget and right at the largest;
    mean_flips: mean number of budget-to-budget changes of the answer (unparsed is an answer).
  - share settled by budget B, next to accuracy at B.
  Per benchmark (source), pooled ("all (micro)") when a run has several, and per domain when
  given a `domains` mapping ((source, id) -> domain) or a `labeller` (domains.label_runs; off by
  default, so the report labels questions once, in its domains section).

  Tables (CSV columns):
    trajectory_summary    run, source, n, final_correct, ever_correct, settle_p25, settle_median,
                          settle_p75, settle_p90 (budgets: quantiles of the settle point),
                          late_flip_rate, wrong_to_right_rate, mean_flips, natural_end_share
                          (share whose thinking ended by itself within the largest budget)
    trajectory_settled    run, source, budget, share_settled, accuracy, share_ended (thinking ended
                          naturally by this budget)
    trajectory_questions  run, source, id, answers, settle, natural_end, flips, final_correct,
                          ever_correct; at most MAX_QUESTION_ROWS a run, late right -> wrong flips
                          first, then wrong -> right, then by number of flips
    trajectory_domains    run, domain, and the summary's columns (only with domains)
  Figures: trajectory_stability (share settled, accuracy and share ended against budget, a panel
  per benchmark), trajectory_raster (questions x budgets coloured right / wrong / unparsed, paler
  after the natural end, sorted by settle point, a black line at it; up to RASTER_QUESTIONS a run).
  Links: a few questions per run with a late right -> wrong flip.

`adaptive(runs)`: adaptive stopping policies (m1.thinking.policies: Stable, Confidence, Deer)
  replayed on each question's trajectory with `policies.simulate`, the same loop the online mode
  runs, and set against the fixed budgets: accuracy (Wilson interval) against mean thinking
  tokens (bootstrap interval), the frontier.
  Table adaptive_policies: run, policy ("fixed" for the fixed budgets), params, n, accuracy,
    ci_low, ci_high, mean_tokens, tokens_ci_low, tokens_ci_high, tokens_saved_vs_largest
    (1 - mean_tokens / mean tokens at the largest budget), acc_vs_largest (accuracy minus the
    largest budget's), mean_probes (answers forced at checkpoints; 0 for a fixed budget, whose one
    answer comes after its thinking), and the share stopped for each reason: stopped_stable,
    stopped_confident, stopped_natural_end, stopped_budget. Policies: `default_policies(budgets)`
    unless given; Confidence and Deer are left out of a run whose traces hold no log-probabilities.
  Figure adaptive_frontier, a panel per run.

Both need dense runs: a run with fewer than MIN_BUDGETS budgets is left out, and a section with
no run left is None. Only questions answered at every budget of their benchmark are used.

    from m1.reporting.analyses.trajectory import adaptive, trajectory, trajectories
    section = trajectory([run])
    trajs, left_out = trajectories(run)   # Trajectory objects: .answers, .settle_budget, ...
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from m1.reporting import plots, stats
from m1.reporting.metrics import wilson_interval
from m1.reporting.sections import Section, Table, TraceLink
from m1.thinking import policies as pol

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from m1.reporting.analyses.domains import Labeller
    from m1.runs import Run, Trace

MIN_BUDGETS = 4  # fewer budgets make no trajectory
MAX_QUESTION_ROWS = 500  # trajectory_questions rows per run
RASTER_QUESTIONS = 200  # rows of a run's raster
MAX_RASTER_RUNS = 4
MAX_PANELS = 9  # more benchmarks than this: the stability figure pools them
MIN_DOMAIN = 10  # smaller domains are pooled in trajectory_domains
LINKS_PER_RUN = 5
MICRO = "all (micro)"
UNPARSED = "-"  # an unparsed answer in the answer strings
ALPHA = 0.05

RIGHT, WRONG, UNREAD = (0.298, 0.604, 0.357), (0.784, 0.333, 0.239), (0.769, 0.769, 0.769)  # as in failures


# ---- one question's trajectory ----

@dataclass(frozen=True)
class Trajectory:
    """A question's answers at every budget, in budget order (held after its natural end)."""

    source: str
    id: str
    budgets: tuple[int, ...]
    letters: tuple[str | None, ...]
    correct: tuple[bool, ...]
    end: int | None = None  # index of the first budget whose thinking had ended naturally

    @property
    def settle(self) -> int:
        """Index of the smallest budget from which the answer stays what it is at the largest."""
        j = len(self.letters) - 1
        while j > 0 and self.letters[j - 1] == self.letters[-1]:
            j -= 1
        return j

    @property
    def settle_budget(self) -> int:
        return self.budgets[self.settle]

    @property
    def flips(self) -> int:
        return sum(a != b for a, b in zip(self.letters, self.letters[1:]))

    @property
    def final_correct(self) -> bool:
        return self.correct[-1]

    @property
    def ever_correct(self) -> bool:
        return any(self.correct)

    @property
    def right_to_wrong(self) -> bool:
        """Right at some budget, wrong at the largest (overthinking)."""
        return self.ever_correct and not self.final_correct

    @property
    def wrong_to_right(self) -> bool:
        """Wrong at some budget, right at the largest."""
        return self.final_correct and not all(self.correct)

    @property
    def end_budget(self) -> int | None:
        return None if self.end is None else self.budgets[self.end]

    @property
    def answers(self) -> str:
        return " ".join(UNPARSED if x is None else x for x in self.letters)

    def at(self, budget: int) -> int:
        return self.budgets.index(budget)


def question_trajectory(traces: Sequence[Trace], hold: bool = True) -> Trajectory:
    """One question's traces (any order, one per budget) -> its trajectory. hold: after the first
    budget whose thinking ended naturally, every budget takes that budget's answer."""
    ts = sorted(traces, key=lambda t: t.budget)
    letters = [t.letter for t in ts]
    correct = [bool(t.correct) for t in ts]
    end = next((j for j, t in enumerate(ts) if t.thinking_ended == "natural"), None)
    if hold and end is not None:
        letters[end:] = [letters[end]] * (len(ts) - end)
        correct[end:] = [correct[end]] * (len(ts) - end)
    return Trajectory(ts[0].source, ts[0].id, tuple(t.budget for t in ts), tuple(letters), tuple(correct), end)


def _complete(run: Run) -> tuple[dict[tuple[str, str], list[Trace]], dict[str, int]]:
    """(source, id) -> the question's traces, for questions answered at every budget of their
    benchmark; and per benchmark, how many were left out."""
    by_q: dict[tuple[str, str], list[Trace]] = defaultdict(list)
    budgets: dict[str, set[int]] = defaultdict(set)
    for t in run.traces:
        by_q[(t.source, t.id)].append(t)
        budgets[t.source].add(t.budget)
    done: dict[tuple[str, str], list[Trace]] = {}
    left_out: dict[str, int] = {}
    for key, ts in sorted(by_q.items()):
        if {t.budget for t in ts} == budgets[key[0]]:
            done[key] = ts
        else:
            left_out[key[0]] = left_out.get(key[0], 0) + 1
    return done, left_out


def trajectories(run: Run) -> tuple[list[Trajectory], dict[str, int]]:
    """Every complete question's trajectory (by source and id), and per benchmark the number of
    questions left out because some budget is missing (a run still going)."""
    hold = run.config.get("method", "cut") != "independent"
    done, left_out = _complete(run)
    return [question_trajectory(ts, hold) for ts in done.values()], left_out


# ---- summaries ----

SUMMARY_STATS = ["n", "final_correct", "ever_correct", "settle_p25", "settle_median", "settle_p75", "settle_p90",
                 "late_flip_rate", "wrong_to_right_rate", "mean_flips", "natural_end_share"]
SUMMARY_COLUMNS = ["run", "source", *SUMMARY_STATS]
SETTLED_COLUMNS = ["run", "source", "budget", "share_settled", "accuracy", "share_ended"]
QUESTION_COLUMNS = ["run", "source", "id", "answers", "settle", "natural_end", "flips", "final_correct",
                    "ever_correct"]
DOMAIN_COLUMNS = ["run", "domain", *SUMMARY_STATS]


def trajectory_summary(trajs: Sequence[Trajectory]) -> dict[str, Any]:
    """The summary statistics of a group of trajectories (SUMMARY_STATS): a trajectory_summary row
    without its run and source."""
    n = len(trajs)
    settle = np.array([t.settle_budget for t in trajs])
    q = np.quantile(settle, [0.25, 0.5, 0.75, 0.9], method="inverted_cdf")  # a budget that was run
    return {
        "n": n,
        "final_correct": sum(t.final_correct for t in trajs) / n,
        "ever_correct": sum(t.ever_correct for t in trajs) / n,
        **{k: int(v) for k, v in zip(("settle_p25", "settle_median", "settle_p75", "settle_p90"), q)},
        "late_flip_rate": sum(t.right_to_wrong for t in trajs) / n,
        "wrong_to_right_rate": sum(t.wrong_to_right for t in trajs) / n,
        "mean_flips": sum(t.flips for t in trajs) / n,
        "natural_end_share": sum(t.end is not None for t in trajs) / n,
    }


def settled(trajs: Sequence[Trajectory]) -> list[dict[str, Any]]:
    """Per budget common to all of them: share settled by it, accuracy at it, share whose thinking
    had ended by itself by it."""
    if not trajs:
        return []
    budgets = sorted(set.intersection(*(set(t.budgets) for t in trajs)))
    n = len(trajs)
    return [{"budget": b,
             "share_settled": sum(t.settle_budget <= b for t in trajs) / n,
             "accuracy": sum(t.correct[t.at(b)] for t in trajs) / n,
             "share_ended": sum(t.end is not None and t.budgets[t.end] <= b for t in trajs) / n}
            for b in budgets]


def _groups(trajs: Sequence[Trajectory]) -> dict[str, list[Trajectory]]:
    """source -> its trajectories, plus the pooled group when there are several sources."""
    groups: dict[str, list[Trajectory]] = defaultdict(list)
    for t in trajs:
        groups[t.source].append(t)
    out = dict(sorted(groups.items()))
    if len(out) > 1:
        out[MICRO] = list(trajs)
    return out


def _domain_groups(trajs: Sequence[Trajectory], domains: Mapping[tuple[str, str], str]) -> dict[str, list]:
    groups: dict[str, list[Trajectory]] = defaultdict(list)
    for t in trajs:
        groups[domains.get((t.source, t.id), "unlabelled")].append(t)
    big = {d: ts for d, ts in groups.items() if len(ts) >= MIN_DOMAIN}
    small = [d for d in groups if d not in big]
    out = dict(sorted(big.items(), key=lambda kv: (-len(kv[1]), kv[0])))
    if small:
        out[f"other (pooled: {len(small)} domain{'s' if len(small) > 1 else ''})"] = \
            [t for d in small for t in groups[d]]
    return out


def _question_rows(run: Run, trajs: Sequence[Trajectory]) -> list[dict[str, Any]]:
    order = sorted(trajs, key=lambda t: (not t.right_to_wrong, not t.wrong_to_right, -t.flips, t.source, t.id))
    return [{"run": run.name, "source": t.source, "id": t.id, "answers": t.answers, "settle": t.settle_budget,
             "natural_end": t.end_budget, "flips": t.flips, "final_correct": t.final_correct,
             "ever_correct": t.ever_correct} for t in order[:MAX_QUESTION_ROWS]]


def _links(run: Run, trajs: Sequence[Trajectory]) -> list[TraceLink]:
    """Late right -> wrong flips, those right latest first: the answer lost to the most thinking."""
    def last_right(t: Trajectory) -> int:
        return max(j for j, c in enumerate(t.correct) if c)

    flipped = sorted((t for t in trajs if t.right_to_wrong), key=lambda t: (-last_right(t), t.source, t.id))
    out = []
    for t in flipped[:LINKS_PER_RUN]:
        j = last_right(t)
        final = t.letters[-1] or "unparsed"
        out.append(TraceLink(run.name, t.source, t.id, t.budgets[-1],
                             f"right at {t.budgets[j]} ({t.letters[j]}), {final} (wrong) at {t.budgets[-1]}; "
                             f"answers {t.answers}"))
    return out


def _dense(runs: Sequence[Run]) -> tuple[list[Run], list[Run]]:
    runs = [r for r in runs if r.traces]
    return [r for r in runs if len(r.budgets) >= MIN_BUDGETS], [r for r in runs if len(r.budgets) < MIN_BUDGETS]


# ---- the trajectory section ----

def trajectory(runs: list[Run], domains: Mapping[tuple[str, str], str] | None = None,
               labeller: Labeller | None = None) -> Section | None:
    """Answer trajectories over budgets, per run; None when no run has MIN_BUDGETS budgets.

    domains: (source, id) -> domain, for per-domain rows; labeller: label the questions with
    domains.label_runs instead (e.g. domains.OfflineLabeller(), about 1 s per 1,000 questions)."""
    dense, sparse = _dense(runs)
    if not dense:
        return None
    if domains is None and labeller is not None:
        from m1.reporting.analyses.domains import label_runs

        domains = label_runs(dense, labeller)
    summary, settled_rows, question_rows, domain_rows = [], [], [], []
    links: list[TraceLink] = []
    per_run: list[tuple[Run, list[Trajectory]]] = []
    notes = []
    for run in dense:
        trajs, left_out = trajectories(run)
        if not trajs:
            continue
        per_run.append((run, trajs))
        for source, group in _groups(trajs).items():
            summary.append({"run": run.name, "source": source, **trajectory_summary(group)})
            settled_rows += [{"run": run.name, "source": source, **r} for r in settled(group)]
        question_rows += _question_rows(run, trajs)
        if domains is not None:
            domain_rows += [{"run": run.name, "domain": d, **trajectory_summary(g)}
                            for d, g in _domain_groups(trajs, domains).items()]
        links += _links(run, trajs)
        if left_out:
            notes.append(f"{run.name}: questions not answered at every budget (a run still going?) are left out ("
                         + ", ".join(f"{s}: {k}" for s, k in sorted(left_out.items())) + ").")
        if run.config.get("method") == "independent":
            notes.append(f"{run.name} rethinks at every budget (m1 eval --independent): its trajectories are "
                         "answers of separate thinking runs, not of one thinking cut ever later, and are not held "
                         "after a natural end.")
        if len(trajs) > MAX_QUESTION_ROWS:
            notes.append(f"{run.name}: trajectory_questions keeps {MAX_QUESTION_ROWS} of its {len(trajs)} "
                         "questions (late right -> wrong flips first, then wrong -> right, then the most flips).")
    if not per_run:
        return None
    if sparse:
        notes.append("Left out, with fewer than "
                     f"{MIN_BUDGETS} budgets: " + ", ".join(r.name for r in sparse) + ".")
    tables = [
        Table("trajectory_summary", SUMMARY_COLUMNS, summary,
              "Per benchmark: final_correct = accuracy at the largest budget; ever_correct = right at some budget; "
              "settle_* = quantiles of the settle point (the budget from which the answer no longer changes); "
              "late_flip_rate = right at some budget but wrong at the largest; wrong_to_right_rate = wrong at some "
              "budget but right at the largest; mean_flips = changes of answer per question; natural_end_share = "
              "thinking ended by itself within the largest budget."),
        Table("trajectory_settled", SETTLED_COLUMNS, settled_rows,
              "At each budget: the share of questions whose answer is already final (settled), the accuracy, and "
              "the share whose thinking had ended by itself."),
        Table("trajectory_questions", QUESTION_COLUMNS, question_rows,
              f"Each question's answers at every budget ('{UNPARSED}': unparsed), its settle point and natural end "
              f"(budgets); at most {MAX_QUESTION_ROWS} a run, late right -> wrong flips first."),
    ]
    if domain_rows:
        tables.insert(1, Table("trajectory_domains", DOMAIN_COLUMNS, domain_rows,
                               f"The summary per domain (domains with fewer than {MIN_DOMAIN} questions pooled)."))
    figures = {"trajectory_stability": stability_figure(per_run),
               "trajectory_raster": raster_figure(per_run[:MAX_RASTER_RUNS])}
    return Section("trajectory", "Answer trajectories: how the answer moves as the model thinks",
                   _text(per_run, summary, notes), tables, figures, links)


def _text(per_run: list[tuple[Run, list[Trajectory]]], summary: list[dict], notes: list[str]) -> str:
    paras = [
        "Each question's answer forced at every budget, in budget order: its answer trajectory (a one-pass sweep "
        "cuts one thinking at each budget, so the trajectory follows the model's choice as it thinks). Where the "
        "thinking ended by itself before a budget, every larger budget holds the same trace, so the trajectory "
        "is held from there. The settle point is the smallest budget from which the answer (a letter, or "
        "unparsed) stays what it is at the largest budget. A late right -> wrong flip (overthinking) is a "
        "question right at some budget and wrong at the largest; wrong -> right the reverse."]
    several = len(per_run) > 1
    for run, trajs in per_run:
        head = MICRO if len({t.source for t in trajs}) > 1 else trajs[0].source
        row = next(r for r in summary if r["run"] == run.name and r["source"] == head)
        who = f"{run.name}: " if several else ""
        paras.append(
            f"{who}{row['n']} questions over {len(run.budgets)} budgets. Half have settled by {row['settle_median']} "
            f"tokens and 90% by {row['settle_p90']}. Right at the largest budget: {row['final_correct']:.1%}; right "
            f"at some budget: {row['ever_correct']:.1%}. Right -> wrong by the largest budget: "
            f"{row['late_flip_rate']:.1%}; wrong -> right: {row['wrong_to_right_rate']:.1%}; "
            f"{row['mean_flips']:.2f} changes of answer per question.")
    paras.append(
        "How to read the figures: trajectory_stability sets the share of questions already settled against the "
        "accuracy at each budget (and, dotted, the share whose thinking had ended by itself); where the settled "
        "share reaches 1 more thinking changes no answer. The raster shows questions (rows) at every budget "
        "(columns): green right, red wrong, grey unparsed, paler after the thinking ended by itself, sorted by "
        "settle point (the black line). ever_correct minus final_correct is the accuracy an oracle stopping "
        "rule could add at most.")
    return "\n\n".join(paras + notes)


# ---- trajectory figures ----

def stability_figure(per_run: list[tuple[Run, list[Trajectory]]]) -> Figure:
    """Share settled (solid), accuracy (dashed) and share ended naturally (dotted) against budget,
    a panel per benchmark (one pooled panel beyond MAX_PANELS), a colour per run."""
    sources = sorted({t.source for _, trajs in per_run for t in trajs})
    panels = sources if len(sources) <= MAX_PANELS else [MICRO]
    if 1 < len(sources) <= MAX_PANELS:
        panels = [*sources, MICRO]
    fig, axes = plots.grid(len(panels))
    several = len(per_run) > 1
    colours = plots.colours()
    for ax, panel in zip(axes, panels):
        budgets: list[int] = []
        for i, (run, trajs) in enumerate(per_run):
            group = trajs if panel == MICRO else [t for t in trajs if t.source == panel]
            rows = settled(group)
            if not rows:
                continue
            x = [r["budget"] for r in rows]
            budgets += x
            c = colours[i % len(colours)]
            name = f"{run.name}: " if several else ""
            marker = "" if len(x) > 12 else "o"
            ax.plot(x, [r["share_settled"] for r in rows], color=c, marker=marker, markersize=3,
                    label=f"{name}settled")
            ax.plot(x, [r["accuracy"] for r in rows], color=c, linestyle="--", marker=marker, markersize=3,
                    label=f"{name}accuracy")
            ax.plot(x, [r["share_ended"] for r in rows], color=c, linestyle=":", linewidth=1,
                    label=f"{name}thinking ended")
        plots.budget_axis(ax, budgets or [1])
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("share of questions", fontsize=8)
        ax.set_title("all benchmarks (pooled)" if panel == MICRO else panel, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    title = plots.describe(per_run[0][0].config) if not several else ""
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def _raster_rows(trajs: Sequence[Trajectory], k: int = RASTER_QUESTIONS) -> list[Trajectory]:
    """At most k trajectories, sorted by settle point (then right before wrong, then id), evenly
    spaced through that order so the spread of settle points is kept."""
    order = sorted(trajs, key=lambda t: (t.settle, not t.final_correct, t.letters[-1] is None, t.source, t.id))
    if len(order) <= k:
        return order
    idx = np.unique(np.linspace(0, len(order) - 1, k).round().astype(int))
    return [order[i] for i in idx]


def raster_figure(per_run: list[tuple[Run, list[Trajectory]]]) -> Figure:
    """Questions x budgets, coloured right / wrong / unparsed (paler after the natural end),
    sorted by settle point, the settle point drawn as a black line; a panel per run."""
    from matplotlib.patches import Patch

    fig, axes = plots.grid(len(per_run), width=5.0, height=5.2)
    for ax, (run, trajs) in zip(axes, per_run):
        rows = _raster_rows(trajs)
        budgets = max((t.budgets for t in rows), key=len)
        img = np.ones((len(rows), len(budgets), 3))
        for i, t in enumerate(rows):
            for j, b in enumerate(t.budgets):
                if b not in budgets:
                    continue
                colour = np.array(RIGHT if t.correct[j] else UNREAD if t.letters[j] is None else WRONG)
                if t.end is not None and j > t.end:
                    colour = 1 - 0.5 * (1 - colour)  # held after the natural end: paler
                img[i, budgets.index(b)] = colour
        ax.imshow(img, aspect="auto", interpolation="nearest")
        xs, ys = [], []
        for i, t in enumerate(rows):
            x = budgets.index(t.settle_budget) - 0.5 if t.settle_budget in budgets else math.nan
            xs += [x, x]
            ys += [i - 0.5, i + 0.5]
        ax.plot(xs, ys, color="black", linewidth=0.8)
        step = max(1, math.ceil(len(budgets) / 10))
        ticks = list(range(0, len(budgets), step))
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(budgets[j]) for j in ticks], fontsize=7, rotation=45)
        ax.set_xlabel("thinking budget (tokens)", fontsize=8)
        ax.set_ylabel(f"questions ({len(rows)} of {len(trajs)}), by settle point", fontsize=8)
        ax.set_yticks([])
        ax.set_title(run.name if len(per_run) > 1 else "answer at each budget", fontsize=9)
        ax.legend(handles=[Patch(color=RIGHT, label="right"), Patch(color=WRONG, label="wrong"),
                           Patch(color=UNREAD, label="unparsed"),
                           Patch(color=tuple(1 - 0.5 * (1 - np.array(WRONG))), label="after natural end")],
                  fontsize=6, loc="lower left")
    fig.tight_layout()
    return fig


# ---- adaptive stopping, replayed offline ----

POLICY_COLUMNS = ["run", "policy", "params", "n", "accuracy", "ci_low", "ci_high", "mean_tokens", "tokens_ci_low",
                  "tokens_ci_high", "tokens_saved_vs_largest", "acc_vs_largest", "mean_probes",
                  *(f"stopped_{r.replace(' ', '_')}" for r in pol.REASONS)]
FIXED = "fixed"


def default_policies(budgets: Sequence[int]) -> list[pol.Policy]:
    """The policies the report replays on a run with these budgets: Stable m = 2..5, Confidence
    tau 0.8..0.99 and Deer tau 0.8..0.95, probing at every budget; on an evenly spaced sweep
    (32:512:32) `every` is its step, and Stable also probes at every other step. On other sweeps
    (64,128,256,...) `every` is None: each budget is a checkpoint."""
    g = math.gcd(*budgets)
    regular = sorted(set(budgets)) == list(range(g, max(budgets) + 1, g))
    every: tuple[int | None, ...] = (g, 2 * g) if regular else (None,)
    return [*(pol.Stable(m, e) for e in every for m in (2, 3, 4, 5)),
            *(pol.Confidence(tau, every[0]) for tau in (0.8, 0.9, 0.95, 0.99)),
            *(pol.Deer(tau, every=every[0]) for tau in (0.8, 0.9, 0.95))]


def mean_intervals(tokens: np.ndarray, n_boot: int = stats.N_BOOT, seed: int = 0,
                   alpha: float = ALPHA) -> list[tuple[float, float]]:
    """Percentile bootstrap interval of each column's mean, tokens (questions, columns): questions
    drawn with replacement, the same draws for every column (the columns are paired)."""
    n, k = tokens.shape
    if n == 0:
        return [(math.nan, math.nan)] * k
    rng = np.random.default_rng(seed)
    step = max(1, 2_000_000 // n)  # resamples per chunk: bounds the (resamples, questions) counts
    means = []
    for start in range(0, n_boot, step):
        counts = rng.multinomial(n, np.full(n, 1 / n), size=min(step, n_boot - start))  # a resample's draws
        means.append(counts @ tokens / n)
    lo, hi = np.quantile(np.concatenate(means), [alpha / 2, 1 - alpha / 2], axis=0)
    return [(float(a), float(b)) for a, b in zip(lo, hi)]


def policy_row(outcomes: Sequence[pol.Outcome]) -> dict[str, Any]:
    """Accuracy (Wilson interval), mean tokens, mean probes and the share stopped for each reason,
    over one policy's outcomes (one per question); the tokens' interval comes from mean_intervals."""
    n = len(outcomes)
    k = sum(o.correct for o in outcomes)
    lo, hi = wilson_interval(k, n)
    return {"n": n, "accuracy": k / n, "ci_low": lo, "ci_high": hi, "mean_tokens": sum(o.tokens for o in outcomes) / n,
            "mean_probes": sum(o.probes for o in outcomes) / n,
            **{f"stopped_{r.replace(' ', '_')}": sum(o.reason == r for o in outcomes) / n for r in pol.REASONS}}


def fixed_outcome(trace: Trace) -> pol.Outcome:
    """A fixed budget as an outcome: the trace's answer after its thinking (cut or ended)."""
    natural = trace.thinking_ended == "natural"
    return pol.Outcome(trace.letter, bool(trace.correct), trace.thinking_tokens,
                       pol.NATURAL_END if natural else pol.BUDGET, trace.budget, 0)


def replay(run: Run, policies: Sequence[pol.Policy] | None = None, n_boot: int = stats.N_BOOT,
           seed: int = 0) -> list[dict[str, Any]]:
    """adaptive_policies rows of one run: each fixed budget, then each policy replayed on every
    complete question (see the module docstring)."""
    done, _ = _complete(run)
    if not done:
        return []
    questions = list(done.values())
    budgets = sorted({t.budget for ts in questions for t in ts})
    policies = default_policies(budgets) if policies is None else policies
    has_logprobs = any(t.option_logprobs for ts in questions for t in ts)
    results: list[tuple[str, str, list[pol.Outcome]]] = []
    for b in budgets:
        outs = [fixed_outcome(t) for ts in questions for t in ts if t.budget == b]
        if len(outs) == len(questions):  # every benchmark has this budget
            results.append((FIXED, f"B={b}", outs))
    for p in policies:
        if not has_logprobs and isinstance(p, (pol.Confidence, pol.Deer)):
            continue
        results.append((p.name, p.params, [pol.simulate(p, ts) for ts in questions]))
    tokens = np.array([[o.tokens for o in outs] for _, _, outs in results], dtype=float).T
    intervals = mean_intervals(tokens, n_boot, seed)
    rows = [{"run": run.name, "policy": name, "params": params, **policy_row(outs),
             "tokens_ci_low": lo, "tokens_ci_high": hi}
            for (name, params, outs), (lo, hi) in zip(results, intervals)]
    largest = next((r for r in reversed(rows) if r["policy"] == FIXED), None)
    for r in rows:
        if largest is None:
            r["tokens_saved_vs_largest"] = r["acc_vs_largest"] = math.nan
            continue
        r["tokens_saved_vs_largest"] = (1 - r["mean_tokens"] / largest["mean_tokens"]
                                        if largest["mean_tokens"] > 0 else math.nan)
        r["acc_vs_largest"] = r["accuracy"] - largest["accuracy"]
    return rows


def adaptive(runs: list[Run], policies: Sequence[pol.Policy] | None = None, n_boot: int = stats.N_BOOT,
             seed: int = 0) -> Section | None:
    """Adaptive stopping policies replayed on dense runs against the fixed budgets; None when no run
    has MIN_BUDGETS budgets. policies: default `default_policies(the run's budgets)`."""
    dense, sparse = _dense(runs)
    per_run = [(run, rows) for run in dense if (rows := replay(run, policies, n_boot, seed))]
    if not per_run:
        return None
    rows = [r for _, rs in per_run for r in rs]
    notes = []
    for run, _ in per_run:
        if not any(t.option_logprobs for t in run.traces):
            notes.append(f"{run.name}: no option log-probabilities in its traces (the engine gave none), so the "
                         "Confidence and Deer policies are left out.")
        if run.config.get("method") == "independent":
            notes.append(f"{run.name} rethinks at every budget (m1 eval --independent): a replay reads each probe "
                         "from a separate thinking run, so it approximates the online mode only.")
        budgets = run.budgets
        gaps = sorted({k for p in (policies or default_policies(budgets)) for k in pol.missing_checkpoints(p, budgets)})
        if gaps:
            notes.append(f"{run.name}: its budgets lack {len(gaps)} multiples of a policy's `every` "
                         f"(first {gaps[:3]}); an online run would also probe there, so its replay is approximate.")
    if sparse:
        notes.append(f"Left out, with fewer than {MIN_BUDGETS} budgets: " + ", ".join(r.name for r in sparse) + ".")
    table = Table("adaptive_policies", POLICY_COLUMNS, rows,
                  "Fixed budgets and adaptive policies: accuracy with its 95% Wilson interval, mean thinking tokens "
                  "with a 95% bootstrap interval, tokens saved and accuracy gained against the largest budget, mean "
                  "answers forced at checkpoints, and the share of questions stopped for each reason.")
    return Section("adaptive", "Adaptive stopping, replayed: accuracy against thinking tokens",
                   _adaptive_text(per_run, notes), [table], {"adaptive_frontier": frontier_figure(per_run)})


def _adaptive_text(per_run: list[tuple[Run, list[dict]]], notes: list[str]) -> str:
    paras = [
        "Could the model stop thinking earlier with no loss? Each policy of m1.thinking.policies is replayed on "
        "every question's answer trajectory, with the same decide loop the online mode runs (policies.simulate): "
        "at each checkpoint (a budget that is a multiple of the policy's `every`) it reads the answer forced "
        "there, and stops when the rule fires. Stable(m): the last m probed answers are the same letter. "
        "Confidence(tau): the top option's probability, renormalised over the options, is at least tau. "
        "Deer(tau): as Confidence, but probing only where the new thinking holds a switch word (Wait, "
        "Alternatively, Hmm, But). A question whose thinking ends by itself first stops there (natural end); one "
        "that reaches the largest budget stops there (budget). Tokens are thinking tokens; each probe also costs "
        "an answer (mean_probes).",
        "The frontier figure sets each policy's accuracy (95% Wilson interval) against its mean thinking tokens "
        "(95% bootstrap interval) on the line of the fixed budgets: a policy above and left of that line does "
        "better than any fixed budget for the same tokens. The policies' parameters are tried many at once on "
        "the same questions, so pick one on another split before claiming its gain."]
    several = len(per_run) > 1
    for run, rows in per_run:
        largest = next((r for r in reversed(rows) if r["policy"] == FIXED), None)
        adaptive_rows = [r for r in rows if r["policy"] != FIXED]
        if largest is None or not adaptive_rows:
            continue
        ok = [r for r in adaptive_rows if r["accuracy"] >= largest["accuracy"]]
        who = f"{run.name}: " if several else ""
        if ok:
            best = max(ok, key=lambda r: r["tokens_saved_vs_largest"])
            paras.append(f"{who}{best['policy']}({best['params']}) matches the largest budget's accuracy "
                         f"({best['accuracy']:.1%} against {largest['accuracy']:.1%}) with "
                         f"{best['tokens_saved_vs_largest']:.0%} fewer thinking tokens "
                         f"({best['mean_tokens']:.0f} against {largest['mean_tokens']:.0f}).")
        else:
            best = max(adaptive_rows, key=lambda r: r["accuracy"])
            paras.append(f"{who}no policy reaches the largest budget's accuracy ({largest['accuracy']:.1%}); the "
                         f"closest is {best['policy']}({best['params']}) at {best['accuracy']:.1%} with "
                         f"{best['mean_tokens']:.0f} thinking tokens against {largest['mean_tokens']:.0f}.")
    return "\n\n".join(paras + notes)


FAMILY_STYLE = {"Stable": ("tab:blue", "o"), "Confidence": ("tab:orange", "s"), "Deer": ("tab:purple", "^")}


def frontier_figure(per_run: list[tuple[Run, list[dict]]]) -> Figure:
    """Accuracy against mean thinking tokens, a panel per run: the fixed budgets as a line with
    their Wilson band, each policy as a point with both intervals."""
    fig, axes = plots.grid(len(per_run), width=5.2, height=4.0)
    for ax, (run, rows) in zip(axes, per_run):
        fixed = [r for r in rows if r["policy"] == FIXED]
        if fixed:
            x = [r["mean_tokens"] for r in fixed]
            ax.plot(x, [r["accuracy"] for r in fixed], color="grey", marker="o" if len(x) <= 12 else ".",
                    markersize=3, label="fixed budgets")
            ax.fill_between(x, [r["ci_low"] for r in fixed], [r["ci_high"] for r in fixed], color="grey", alpha=0.15)
            for r in (fixed[0], fixed[-1]):
                ax.annotate(r["params"], (r["mean_tokens"], r["accuracy"]), fontsize=6, color="grey",
                            textcoords="offset points", xytext=(3, -9))
        seen = set()
        for r in rows:
            if r["policy"] == FIXED:
                continue
            colour, marker = FAMILY_STYLE.get(r["policy"], ("black", "x"))
            y, x0 = r["accuracy"], r["mean_tokens"]
            ax.errorbar([x0], [y], yerr=[[y - r["ci_low"]], [r["ci_high"] - y]],
                        xerr=[[x0 - r["tokens_ci_low"]], [r["tokens_ci_high"] - x0]], color=colour, marker=marker,
                        markersize=4, linewidth=0.6, capsize=0, alpha=0.85,
                        label=r["policy"] if r["policy"] not in seen else None)
            seen.add(r["policy"])
            ax.annotate(_short(r["params"]), (x0, y), fontsize=5, color=colour, textcoords="offset points",
                        xytext=(3, 3))
        ax.set_xlabel("mean thinking tokens", fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
        ax.set_title(run.name if len(per_run) > 1 else "adaptive policies against fixed budgets", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    title = plots.describe(per_run[0][0].config) if len(per_run) == 1 else ""
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def _short(params: str) -> str:
    return params.replace("every=", "/").replace(", /", "/").replace("tau=", "").replace("m=", "m")


__all__ = ["MIN_BUDGETS", "POLICY_COLUMNS", "QUESTION_COLUMNS", "SETTLED_COLUMNS", "SUMMARY_COLUMNS", "Trajectory",
           "adaptive", "default_policies", "fixed_outcome", "policy_row", "question_trajectory", "raster_figure",
           "replay", "settled", "stability_figure", "trajectories", "trajectory", "trajectory_summary"]
