"""Stage 2, dedup + decontaminate, on normalized question stems.

Why stems and not stem + options: the pool's options are shuffled (and other copies of
the same question order them differently), so a fuzzy ratio over "stem + options" can
stay under its threshold for a question that is verbatim in an eval set. Stems do not
move. Checks, first that fires wins, each against every eval item:
  exact    the normalized stem (or, for PubMedQA layouts, the question after the abstract) is equal
  ngram    the stems share word n-grams (n = 13 by default, as GPT-3 / s1 decontaminate):
           at least `ngram_overlap` of the shorter stem's n-grams are in one eval stem.
           A single shared 13-gram is not enough for exam questions: USMLE stems share
           boilerplate ("which of the following is the most likely underlying cause of
           this patient's", vital-sign sentences); measured on the MedQA train sample,
           "any shared 13-gram" flagged ~30% of it against MedQA test, nearly all false.
           n-grams found in more than one eval stem are boilerplate and never count.
  fuzzy    RapidFuzz ratio >= threshold against the few eval stems sharing the most word
           3-grams with it (an inverted index, not all pairs)
Short stems ("Which of the following is true?") are shared by unrelated questions, so
below `min_stem_tokens` words a match also needs half the options in common.
Within the pool (`within_pool`), a repeat of the same stem with the same option set is a
"duplicate"; a later item that the same three checks match to an earlier kept pool item is a
"near_duplicate" (the pool's own index grows as items are kept). The first is kept.
Every removal is reported with the eval item it matched and why.
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from m1.benchmarks.items import Item
from m1.curation.collect import PUBMEDQA_BRIDGE
from m1.curation.config import DedupConfig
from m1.errors import M1Error

BLOCK_N = 3  # word n-grams that pick fuzzy candidates
MAX_BLOCK_DF = 300  # a 3-gram in more stems than this picks no fuzzy candidates


_NON_WORD = re.compile(r"[\W_]+")


def normalize(text: str) -> str:
    """Case, accents-as-composed, punctuation and spacing folded away."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def stem_keys(question: str) -> list[str]:
    """Normalized stem, plus the bare question when a PubMedQA abstract precedes it."""
    keys = [normalize(question)]
    bridge = PUBMEDQA_BRIDGE.strip()
    if bridge in question:
        keys.append(normalize(question.rsplit(bridge, 1)[1]))
    return [k for k in keys if k]


@dataclass
class Match:
    rule: str  # exact | ngram | fuzzy | duplicate
    other: int  # index of the eval item (or earlier pool item)
    score: float
    detail: str = ""


@dataclass
class EvalIndex:
    """Eval stems indexed three ways; built once, queried per pool item."""

    items: list[Item]
    ngram: int
    stems: list[str] = field(default_factory=list)
    options: list[set[str]] = field(default_factory=list)
    exact: dict[str, list[int]] = field(default_factory=dict)  # short stems recur: keep every eval item
    grams: dict[int, int] = field(default_factory=dict)  # n-gram -> eval item, -1: in several (boilerplate)
    n_grams: list[int] = field(default_factory=list)
    blocks: dict[int, list[int]] = field(default_factory=dict)

    @classmethod
    def build(cls, items: list[Item], ngram: int) -> EvalIndex:
        idx = cls([], ngram)
        for it in items:
            idx.add(it)
        return idx

    def add(self, it: Item) -> None:
        """Index one more item (the pool's own index grows as items are kept)."""
        i = len(self.items)
        self.items.append(it)
        keys = stem_keys(it.question)
        stem = keys[0] if keys else ""
        self.stems.append(stem)
        self.options.append({normalize(o) for o in it.options.values()})
        for k in keys:
            self.exact.setdefault(k, []).append(i)
        toks = stem.split()
        grams = set(_grams(toks, self.ngram))
        self.n_grams.append(len(grams))
        for g in grams:
            self.grams[g] = i if self.grams.get(g, i) == i else -1
        for b in set(_grams(toks, BLOCK_N)):
            self.blocks.setdefault(b, []).append(i)

    def match(self, item: Item, cfg: DedupConfig) -> Match | None:
        keys = stem_keys(item.question)
        if not keys:
            return None
        stem = keys[0]
        toks = stem.split()
        opts = {normalize(o) for o in item.options.values()}
        short = len(toks) < cfg.min_stem_tokens

        def ok(i: int) -> bool:  # short stems must also share options
            return not short or len(opts & self.options[i]) * 2 >= min(len(opts), len(self.options[i]))

        for k in keys:
            for i in self.exact.get(k, ()):
                if ok(i):
                    return Match("exact", i, 100.0)
        grams = set(_grams(toks, self.ngram))
        shared = Counter(i for i in map(self.grams.get, grams) if i is not None and i >= 0)
        if shared:
            i, n = shared.most_common(1)[0]
            share = n / max(1, min(len(grams), self.n_grams[i]))
            if share >= cfg.ngram_overlap:
                return Match("ngram", i, round(100 * share, 2), f"{n} shared {self.ngram}-grams")
        return self.fuzzy(stem, toks, cfg, ok)

    def fuzzy(self, stem: str, toks: list[str], cfg: DedupConfig, ok) -> Match | None:
        from rapidfuzz import fuzz

        votes: Counter[int] = Counter()
        for b in set(_grams(toks, BLOCK_N)):
            hits = self.blocks.get(b, ())
            if len(hits) <= MAX_BLOCK_DF:  # a 3-gram in many stems ("which of the") picks nothing
                votes.update(hits)
        best: Match | None = None
        for i, _ in votes.most_common(cfg.fuzzy_candidates):
            score = fuzz.ratio(stem, self.stems[i], score_cutoff=cfg.fuzzy_threshold)
            if score and ok(i) and (best is None or score > best.score):
                best = Match("fuzzy", i, round(score, 2))
        return best


def _grams(toks: list[str], n: int) -> list[int]:
    return [hash(" ".join(toks[i:i + n])) for i in range(len(toks) - n + 1)]


def load_eval_items(cfg: DedupConfig) -> tuple[list[Item], dict[str, object]]:
    """Every benchmark m1 knows that is present (or those named), plus extra eval files.
    Returns the items and, per benchmark, its size or why it was not used."""
    from m1.benchmarks import BENCHMARKS, load_benchmark, load_file

    every = cfg.benchmarks is None or list(cfg.benchmarks) == ["all"]  # [] means none: only eval_files
    names = list(BENCHMARKS) if every else list(cfg.benchmarks or ())
    items: list[Item] = []
    report: dict[str, object] = {}
    for name in names:
        try:
            got = load_benchmark(name, data_dir=cfg.data_dir)
        except M1Error as e:
            if not every:
                raise  # named on purpose: missing is an error
            report[name] = f"not present ({str(e).split(';')[0]})"
            continue
        items += got
        report[name] = len(got)
    for path in cfg.eval_files:
        got = load_file(path)
        items += got
        report[str(path)] = len(got)
    if not items:
        raise M1Error("dedup: no eval items to decontaminate against; set dedup.benchmarks or dedup.eval_files")
    return items, report


def dedup(pool: list[Item], evals: list[Item], cfg: DedupConfig) -> tuple[list[Item], list[dict], dict]:
    """(kept items, one report row per removed item, counts by rule)."""
    if cfg.ngram < 3:
        raise M1Error(f"dedup.ngram is {cfg.ngram}; use 3 or more words (13 is the usual choice)")
    index = EvalIndex.build(evals, cfg.ngram)
    own = EvalIndex([], cfg.ngram)  # the kept pool items, for near-duplicates within the pool
    kept: list[Item] = []
    removed: list[dict] = []
    seen: dict[str, int] = {}  # stem + options -> position in the pool
    for pos, item in enumerate(pool):
        if cfg.within_pool:
            key = normalize(item.question) + "\x00" + "\x00".join(sorted(normalize(o) for o in item.options.values()))
            if key in seen:
                removed.append(_report(item, pool[seen[key]], Match("duplicate", seen[key], 100.0)))
                continue
            seen[key] = pos
        m = index.match(item, cfg)
        if m is not None:
            removed.append(_report(item, evals[m.other], m))
            continue
        if cfg.within_pool and (m := own.match(item, cfg)) is not None:
            removed.append(_report(item, own.items[m.other], Match("near_duplicate", m.other, m.score,
                                                                    f"{m.rule} {m.detail}".strip())))
            continue
        kept.append(item)
        if cfg.within_pool:
            own.add(item)
    by_rule = Counter(r["rule"] for r in removed)
    return kept, removed, dict(sorted(by_rule.items()))


def _report(item: Item, other: Item, m: Match) -> dict:
    return {"id": item.id, "source": item.source, "question": item.question, "rule": m.rule,
            "score": float(m.score), "detail": m.detail, "matched_id": other.id, "matched_source": other.source,
            "matched_question": other.question}


def write_report_jsonl(rows: list[dict], path: Path) -> None:
    import json

    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
