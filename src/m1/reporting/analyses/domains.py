"""Domains: which of the 76 MeSH qualifiers (m1's domains) gain from thinking.

Every distinct question of the runs, by (source, id), is labelled once with one qualifier,
from the question text inside its trace's prompt (chat template, system prompt and the
instruction line stripped; the options appended). Then, per run:
  - accuracy per domain and budget, with Wilson intervals;
  - the gain from thinking per domain: accuracy at the run's best budget minus at its smallest,
    on the same questions (paired bootstrap interval, exact McNemar p, Holm-adjusted p).
The best budget is chosen once per run, from its accuracy over all questions, so a small domain
cannot "gain" by picking its own luckiest budget. When no budget beats the smallest, the largest
is used and the text says so. Domains with fewer than `min_questions` questions in a run are
pooled into one "other (pooled: ...)" row, and the text says how many.

Labellers. The default, `OfflineLabeller`, is the curation pipeline's TF-IDF classifier
(m1.curation.domains.TfidfClassifier: scikit-learn, deterministic, no network) set up for exam
questions. It labels 1,000 questions in under a second, so labels are recomputed, never cached.
The set-up:
  - the qualifier descriptions lose their exclusion clauses ("It excludes case histories",
    "... discussions of the course of disease in particular patients"), whose words point away
    from the qualifier but made "history" and "patient" vote for History and Trends;
  - each qualifier gets a few words exam questions use for that aspect (Diagnosis: "likely
    diagnosis", Therapy: "next step in management", Etiology: "cause", ...);
  - the vignette's boilerplate (age, sex, vital signs, "history", "examination") is dropped and
    the question's ask (its sentences ending in "?") counts three times;
  - the options are read too: on the labelled subjects of HEAD-QA (pharmacology, psychology,
    nursing) and MMLU (anatomy, medical genetics) they raise the share labelled with a fitting
    qualifier from 18% to 20%, and change 15% of MedQA labels.
On 1,000 MedQA questions the curation classifier as it is labels 60% of them Blood, Trends
or History; this one gives mostly Diagnosis, Therapy, Etiology and Drug Therapy.
`OfflineLabeller(tuned=False)` reproduces the curation pipeline's labels exactly.
Offline labels are approximate: for claims about specific domains use `llm_labeller`, the
curation pipeline's LLM classifier (replies cached in SQLite, reused on every report).

Tables (CSV columns):
  domains_accuracy  run, domain, budget, n, n_correct, accuracy, ci_low, ci_high (Wilson)
  domains_gain      run, domain, n (questions at both budgets), smallest_budget, best_budget,
                    acc_smallest, acc_best, gain (acc_best - acc_smallest), gain_ci_low,
                    gain_ci_high (paired bootstrap), wrong_to_right, right_to_wrong, p_mcnemar
                    (exact, two-sided), p_holm (Holm over the run's domains); by gain, largest first
Figure domains_gain: the gain per domain with its interval, one panel per run.
Links: per run, a few questions of the domain that gains most that went wrong -> right.

    from m1.reporting.analyses.domains import domains, llm_labeller
    section = domains(runs)                                  # offline labels
    section = domains(runs, labeller=llm_labeller(teacher))  # LLM labels (m1.curation TeacherConfig)
"""
from __future__ import annotations

import dataclasses
import os
import re
from collections import Counter, defaultdict
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from m1.curation.domains import Qualifier, TfidfClassifier, _words, qualifiers
from m1.reporting import stats
from m1.reporting.metrics import wilson_interval
from m1.reporting.plots import grid
from m1.reporting.sections import Section, Table, TraceLink
from m1.runs import Run, Trace, question_text

if TYPE_CHECKING:
    from m1.curation.config import TeacherConfig

MIN_QUESTIONS = 10
UNLABELLED = "unlabelled"
ACCURACY_COLUMNS = ["run", "domain", "budget", "n", "n_correct", "accuracy", "ci_low", "ci_high"]
GAIN_COLUMNS = ["run", "domain", "n", "smallest_budget", "best_budget", "acc_smallest", "acc_best", "gain",
                "gain_ci_low", "gain_ci_high", "wrong_to_right", "right_to_wrong", "p_mcnemar", "p_holm"]

# A labeller maps question texts to one qualifier each (a Qualifier, a domain name, or None: unlabelled).
Labeller = Callable[[list[str]], Sequence["Qualifier | str | None"]]


# ---- the offline labeller ----

# Words that exam questions use for a qualifier's aspect, added to its TF-IDF document.
CUES = {
    "Abnormalities": "malformation anomaly defect deformity",
    "Administration & Dosage": "dose dosing dosage route frequency regimen",
    "Adverse Effects": "adverse side effect reaction complication drug induced",
    "Anatomy & Histology": "anatomy anatomical histology structure located muscle bone ligament",
    "Antagonists & Inhibitors": "antagonist inhibitor blocker inhibits blocks",
    "Blood Supply": "artery arterial vein venous vessel supplied",
    "Cytology": "cell cells cellular smear",
    "Deficiency": "deficiency deficient lack",
    "Diagnosis": "diagnosis likely diagnostic confirm test finding findings evaluation",
    "Diagnostic Imaging": "imaging radiograph x-ray ct mri ultrasound ultrasonography scan",
    "Diet Therapy": "diet dietary nutrition nutritional",
    "Drug Therapy": "pharmacotherapy drug medication treatment treat antibiotic",
    "Embryology": "embryologic embryo fetal development develop derived",
    "Epidemiology": "risk incidence prevalence population",
    "Ethics": "ethical consent confidentiality autonomy disclose",
    "Etiology": "cause caused causes cause etiology underlying pathogenesis responsible",
    "Genetics": "gene genetic mutation inheritance inherited chromosome dna",
    "Immunology": "immune antibody antigen immunologic",
    "Injuries": "injury trauma fracture wound",
    "Innervation": "nerve innervation innervated",
    "Metabolism": "metabolism metabolic enzyme biochemical",
    "Microbiology": "organism bacteria bacterial pathogen culture",
    "Parasitology": "parasite parasitic",
    "Pathology": "biopsy histologic histopathology microscopic specimen lesion",
    "Pharmacology": "mechanism action drug receptor",
    "Physiology": "normal physiologic function",
    "Physiopathology": "mechanism pathophysiology explains",
    "Poisoning": "poisoning overdose ingestion",
    "Prevention & Control": "prevent prevention vaccine vaccination screening prophylaxis",
    "Psychology": "psychiatric behavior behavioral mood anxiety",
    "Statistics & Numerical Data": "sensitivity specificity value statistical study",
    "Surgery": "surgery surgical operation resection",
    "Therapy": "management step therapy treatment appropriate",
    "Transmission": "transmission transmitted spread",
    "Virology": "virus viral",
}
# The boilerplate of a clinical vignette: it says nothing about which aspect is asked.
VIGNETTE = frozenset("""year old patient patients man woman boy girl child infant physician doctor department
emergency present presents presented comes brought history examination shows show showed temperature pulse
respirations respiration blood pressure mm hg min vital signs following which most likely best next appropriate
day days week weeks month months ago hours past mother father condition conditions symptom symptoms use used
no not one time follow follows followed does did has had also""".split())
# Sentences of a qualifier's description that send the reader elsewhere ("It excludes X, for which
# "y" is used"; "For X, use Y"): their words point away from the qualifier.
_EXCLUSION = re.compile(r"[^.;]*\b(?:excludes?|except|for which|is used\b[^.;]*\"|use specific|use fatal|not /)"
                        r"[^.;]*[.;]?", re.I)
ASK_WEIGHT = 3  # the sentences ending in "?" count this many times


def exam_qualifiers(quals: list[Qualifier]) -> list[Qualifier]:
    """The qualifiers with exclusion clauses removed and exam-question cue words added."""
    return [dataclasses.replace(q, description=f"{_EXCLUSION.sub(' ', q.description)} {CUES.get(q.title, '')}")
            for q in quals]


_TOKEN = re.compile(r"[a-z][a-z-]+")


@lru_cache(maxsize=1 << 16)
def _stems(token: str) -> tuple[str, ...]:
    return tuple(_words(token))  # the curation classifier's own tokeniser and stemmer, once per distinct token


def _tokens(text: str) -> list[str]:
    return [s for w in _TOKEN.findall(text.lower()) if w not in VIGNETTE for s in _stems(w)]


def exam_words(text: str) -> list[str]:
    """A question as the tuned labeller reads it: vignette boilerplate out, then the words of
    its ask (the sentences ending in "?", else the last sentence) counted ASK_WEIGHT times."""
    sentences = re.split(r"(?<=[.?!])\s+", text.strip())
    asks = [s for s in sentences if s.rstrip("\"'”’ ").endswith("?")] or sentences[-1:]
    return _tokens(text) + _tokens(" ".join(asks)) * (ASK_WEIGHT - 1)


@lru_cache(maxsize=2)
def _classifier(tuned: bool) -> TfidfClassifier:
    return TfidfClassifier(exam_qualifiers(_qualifiers()) if tuned else _qualifiers())


@lru_cache(maxsize=1)
def _qualifiers() -> list[Qualifier]:
    return qualifiers()


class OfflineLabeller:
    """TF-IDF nearest qualifier (m1.curation.domains.TfidfClassifier); `tuned` for exam questions
    (see the module's docstring), or False for the curation pipeline's labels as they are.
    A text without a word the classifier knows gets None (unlabelled)."""

    def __init__(self, tuned: bool = True):
        self.tuned = tuned
        self.name = ("the offline TF-IDF classifier of the curation pipeline, set up for exam questions" if tuned
                     else "the offline TF-IDF classifier of the curation pipeline")

    def __call__(self, texts: list[str]) -> list[Qualifier | None]:
        clf, quals = _classifier(self.tuned), _qualifiers()
        scores = clf.scores([exam_words(t) if self.tuned else _words(t) for t in texts])
        # A text without a known word scores 0 everywhere: unlabelled rather than the first qualifier.
        return [quals[int(row.argmax())] if row.max() > 0 else None for row in scores]


def default_cache() -> Path:
    """Where LLM labels are cached: $M1_CACHE, else $XDG_CACHE_HOME/m1, else ~/.cache/m1."""
    root = os.environ.get("M1_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "m1"
    return Path(root) / "domain_labels.sqlite"


def llm_labeller(teacher: TeacherConfig, cache: str | Path | None = None, rubric: str = "full",
                 fallback: bool = True) -> Labeller:
    """The curation pipeline's LLM classifier (m1.curation.domains.llm_classify) as a labeller.

    Replies are cached in SQLite (`cache`, default `default_cache()`), keyed by the request, so a
    second report asks the server nothing. Questions the model fails to label twice get the
    offline label when `fallback`, else stay unlabelled. Never writes to a run folder."""
    from m1.curation.config import DomainsConfig
    from m1.curation.domains import llm_classify

    path = Path(cache) if cache else default_cache()
    max_tokens = min(2048, teacher.params.get("max_tokens", 2048))
    teacher = dataclasses.replace(teacher, params={**teacher.params, "max_tokens": max_tokens})
    cfg = DomainsConfig(method="llm", teacher=teacher, rubric=rubric)

    def label(texts: list[str]) -> list[Qualifier | None]:
        found, _, _ = llm_classify(texts, _qualifiers(), cfg, teacher, path)
        if fallback:
            missing = [i for i, q in enumerate(found) if q is None]
            for i, q in zip(missing, OfflineLabeller()([texts[i] for i in missing])):
                found[i] = q
        return found

    label.name = f"the LLM {teacher.model or 'teacher'} at {teacher.base_url} (cached in {path})"  # type: ignore[attr-defined]
    return label


def _domain(label: Qualifier | str | None) -> str:
    if isinstance(label, Qualifier):
        return label.title
    return label or UNLABELLED


def label_runs(runs: Sequence[Run], labeller: Labeller | None = None,
               options: bool = True) -> dict[tuple[str, str], str]:
    """(source, id) -> domain for every distinct question of the runs, each labelled once."""
    texts: dict[tuple[str, str], str] = {}
    for run in runs:
        instruction, system = run.config.get("instruction"), run.config.get("system_prompt")
        for t in run.traces:
            if (t.source, t.id) not in texts:
                texts[(t.source, t.id)] = question_text(t, instruction, system, options=options)
    keys = sorted(texts)
    labels = list((labeller or OfflineLabeller())([texts[k] for k in keys]))
    if len(labels) != len(keys):
        raise ValueError(f"the labeller returned {len(labels)} labels for {len(keys)} questions")
    return {k: _domain(q) for k, q in zip(keys, labels)}


# ---- the analysis ----

def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment (statsmodels): family-wise error control over the domains of a run."""
    from statsmodels.stats.multitest import multipletests  # slow to import; reports only

    return [float(p) for p in multipletests(pvalues, method="holm")[1]]


def _pool(counts: Counter, min_questions: int) -> tuple[dict[str, str], list[str]]:
    """domain -> the name it is reported under, and the pooled domains."""
    small = sorted(d for d, n in counts.items() if n < min_questions)
    if not small:
        return {d: d for d in counts}, []
    name = (f"other (pooled: {len(small)} domain{'s' if len(small) != 1 else ''} "
            f"with < {min_questions} questions each)")
    return {d: name if d in small else d for d in counts}, small


@dataclasses.dataclass
class _RunResult:
    accuracy: list[dict[str, Any]]
    gain: list[dict[str, Any]]
    notes: list[str]
    links: list[TraceLink]


def _analyse(run: Run, labels: dict[tuple[str, str], str], min_questions: int, n_boot: int,
             max_links: int) -> _RunResult:
    questions = {(t.source, t.id) for t in run.traces}
    counts = Counter(labels[q] for q in questions)
    name_of, pooled = _pool(counts, min_questions)
    domain = {q: name_of[labels[q]] for q in questions}
    notes = [f"{run.name}: {len(questions)} questions in {len(counts)} domains"]
    if pooled:
        n_pooled = sum(counts[d] for d in pooled)
        notes[0] += (f"; {len(pooled)} domain{'s' if len(pooled) != 1 else ''} with fewer than {min_questions} "
                     f"questions each ({n_pooled} questions) pooled into one \"other\" row")

    by_cell: dict[tuple[str, int], list[bool]] = defaultdict(list)
    for t in run.traces:
        by_cell[(domain[(t.source, t.id)], t.budget)].append(bool(t.correct))
    accuracy: list[dict[str, Any]] = []
    for (d, b), correct in sorted(by_cell.items(), key=lambda kv: (kv[0][0].startswith("other ("), kv[0])):
        k, n = sum(correct), len(correct)
        lo, hi = wilson_interval(k, n)
        accuracy.append({"run": run.name, "domain": d, "budget": b, "n": n, "n_correct": k, "accuracy": k / n,
                         "ci_low": lo, "ci_high": hi})

    budgets = run.budgets
    if len(budgets) < 2:
        notes.append(f"{run.name}: one budget only ({budgets[0]}), so no gain from thinking to measure")
        return _RunResult(accuracy, [], notes, [])
    overall: dict[int, list[bool]] = defaultdict(list)
    for t in run.traces:
        overall[t.budget].append(bool(t.correct))
    acc = {b: sum(v) / len(v) for b, v in overall.items()}
    smallest = budgets[0]
    best = max(budgets, key=lambda b: (acc[b], -b))  # ties: the cheaper budget
    if best == smallest:
        best = budgets[-1]
        notes.append(f"{run.name}: no budget beat the smallest ({smallest}: {acc[smallest]:.3f}); "
                     f"the gain is taken at the largest budget, {best}")
    at = {(t.source, t.id, t.budget): t for t in run.traces}
    pairs: dict[str, list[tuple[Trace, Trace]]] = defaultdict(list)
    for q in sorted(questions):
        low, high = at.get((*q, smallest)), at.get((*q, best))
        if low is not None and high is not None:
            pairs[domain[q]].append((low, high))
    gain: list[dict[str, Any]] = []
    for d, items in pairs.items():
        p = stats.paired_compare([a.correct for a, _ in items], [b.correct for _, b in items], n_boot=n_boot)
        gain.append({"run": run.name, "domain": d, "n": p.n, "smallest_budget": smallest, "best_budget": best,
                     "acc_smallest": p.acc_a, "acc_best": p.acc_b, "gain": p.diff, "gain_ci_low": p.ci_low,
                     "gain_ci_high": p.ci_high, "wrong_to_right": p.flips.wrong_to_right,
                     "right_to_wrong": p.flips.right_to_wrong, "p_mcnemar": p.p_value})
    for row, adjusted in zip(gain, holm([r["p_mcnemar"] for r in gain])):
        row["p_holm"] = adjusted
    gain.sort(key=lambda r: (-r["gain"], r["domain"]))

    every = [pair for items in pairs.values() for pair in items]
    n_right = [sum(a.correct for a, _ in every), sum(b.correct for _, b in every)]
    notes.append(f"{run.name}: over all {len(every)} questions, {n_right[0] / len(every):.3f} at budget {smallest} "
                 f"and {n_right[1] / len(every):.3f} at {best} (gain {(n_right[1] - n_right[0]) / len(every):+.3f})")
    real = [r for r in gain if not r["domain"].startswith("other (")]
    if real:
        top, last = real[0], real[-1]
        notes.append(f"{run.name}: most gain in {top['domain']} ({top['gain']:+.3f}, 95% CI {top['gain_ci_low']:+.3f} "
                     f"to {top['gain_ci_high']:+.3f}, n={top['n']}, Holm p={top['p_holm']:.3g}); least in "
                     f"{last['domain']} ({last['gain']:+.3f}, n={last['n']})")
        significant = [r["domain"] for r in gain if r["p_holm"] < 0.05]
        notes.append(f"{run.name}: domains whose gain (or loss) holds after Holm's correction: "
                     f"{', '.join(significant) if significant else 'none'}")
    links: list[TraceLink] = []
    if real and real[0]["gain"] > 0:
        top_domain = real[0]["domain"]
        flips = [b for a, b in pairs[top_domain] if not a.correct and b.correct]
        why = f"{top_domain}: wrong at budget {smallest}, right at {best}"
        links = [TraceLink(run.name, t.source, t.id, t.budget, why) for t in flips[:max_links]]
    return _RunResult(accuracy, gain, notes, links)


def gain_figure(rows: list[dict[str, Any]], runs: list[str]):
    """The gain per domain with its 95% paired interval, one panel per run; pooled rows in grey."""
    most = max(sum(r["run"] == name for r in rows) for name in runs)
    fig, axes = grid(len(runs), width=6.4, height=0.32 * most + 1.4)
    lo, hi = min(r["gain_ci_low"] for r in rows), max(r["gain_ci_high"] for r in rows)
    pad = 0.05 * (hi - lo) or 0.05
    for ax, name in zip(axes, runs):
        mine = [r for r in rows if r["run"] == name][::-1]  # largest gain on top
        y = list(range(len(mine)))
        for yi, r in zip(y, mine):
            color = "grey" if r["domain"].startswith("other (") else ("C0" if r["p_holm"] >= 0.05 else "C3")
            ax.errorbar(r["gain"], yi, xerr=[[r["gain"] - r["gain_ci_low"]], [r["gain_ci_high"] - r["gain"]]],
                        fmt="o", color=color, capsize=2, markersize=4)
        ax.axvline(0, color="grey", linestyle=":", linewidth=1)
        ax.set_xlim(min(lo, 0) - pad, max(hi, 0) + pad)  # one scale for every run
        ax.set_yticks(y)
        ax.set_yticklabels([f"{_short(r['domain'])} (n={r['n']})" for r in mine], fontsize=7)
        if mine:
            ax.set_xlabel(f"accuracy at budget {mine[0]['best_budget']} - at {mine[0]['smallest_budget']} "
                          "(95% paired CI; red: Holm p < 0.05)", fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
        if len(runs) > 1:
            ax.set_title(name, fontsize=8)
    fig.tight_layout()
    return fig


def _short(domain: str) -> str:
    return re.sub(r"^other \(pooled: (\d+) domains?.*", r"other (\1 pooled)", domain)


def domains(runs: list[Run], labeller: Labeller | None = None, min_questions: int = MIN_QUESTIONS,
            options: bool = True, n_boot: int = stats.N_BOOT, max_links: int = 5) -> Section | None:
    """Accuracy and gain from thinking per domain, per run; None without traces.

    labeller: None for the offline one; `llm_labeller(teacher)` for LLM labels; or any callable
    texts -> qualifiers (or domain names). min_questions: smaller domains are pooled."""
    runs = [run for run in runs if run.traces]
    if not runs:
        return None
    labeller = labeller or OfflineLabeller()
    labels = label_runs(runs, labeller, options)
    results = [_analyse(run, labels, min_questions, n_boot, max_links) for run in runs]
    accuracy = [r for res in results for r in res.accuracy]
    gain = [r for res in results for r in res.gain]
    how = getattr(labeller, "name", getattr(labeller, "__name__", "a custom labeller"))
    text = [
        f"Which domains gain from thinking. Each of the {len(labels)} distinct questions was labelled once with "
        f"one of the 76 MeSH qualifiers (m1's domains) by {how}, from its question and options. "
        + ("Offline labels are approximate (nearest qualifier description by TF-IDF); use an LLM labeller "
           "(m1.reporting.analyses.domains.llm_labeller) before claiming a specific domain gains. "
           if isinstance(labeller, OfflineLabeller) else ""),
        "domains_gain compares each run's best budget (by accuracy over all its questions, chosen once so that no "
        "domain picks its own luckiest budget) with its smallest, on the same questions: gain = acc_best - "
        "acc_smallest, with a paired bootstrap 95% interval and McNemar's exact test; p_holm corrects for testing "
        f"every domain of the run. Domains with fewer than {min_questions} questions in a run are pooled into one "
        "\"other\" row. domains_accuracy has every domain at every budget with Wilson intervals.",
        *(note for res in results for note in res.notes),
    ]
    tables = [Table("domains_gain", GAIN_COLUMNS, gain,
                    "Gain from thinking per domain (best budget - smallest), largest first"),
              Table("domains_accuracy", ACCURACY_COLUMNS, accuracy, "Accuracy per domain and budget")]
    figures = {}
    with_gain = [run.name for run in runs if any(r["run"] == run.name for r in gain)]
    if with_gain:
        figures["domains_gain"] = gain_figure(gain, with_gain)
    if not gain:
        tables = tables[1:]
    return Section("domains", "Domains: which specialties gain from thinking", "\n\n".join(text), tables,
                   figures, [link for res in results for link in res.links])


def label_distribution(labels: dict[tuple[str, str], str]) -> list[tuple[str, int]]:
    """Domains by number of questions, most first (for a quick look at what the labeller did)."""
    return Counter(labels.values()).most_common()


__all__ = ["ACCURACY_COLUMNS", "GAIN_COLUMNS", "Labeller", "MIN_QUESTIONS", "OfflineLabeller", "domains",
           "gain_figure", "holm", "label_distribution", "label_runs", "llm_labeller", "question_text"]
