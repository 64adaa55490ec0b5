"""Stage 7, select: the training sets.

  domain  m1K: repeat a seeded draw of a domain, then a source within it, then an item
          within that, each uniform and without replacement (an emptied source or domain
          leaves the draw), until n items. Small domains and sources are thereby
          over-represented relative to their size, which is the point: breadth.
          weighting: long_trace draws the item as s1K does instead: ranked by the length
          of the teacher's trace (its completion tokens, else characters), longest first,
          item of rank r with weight 2^-r. That is steep on purpose: the longest
          remaining trace is taken about half the time, the next a quarter.
  random  n items uniformly at random (the "random" / "hard-random" ablations, by input).
  all     every item (m23K).
Each set reads the "data" table of its `input` stage: domains (validated, labelled:
m1K, m23K, hard-domain), validate, or distill (unvalidated traces). What a set may say
(methods, weightings, inputs) is checked by m1.curation.config.check_set, when the config loads.
"""
from __future__ import annotations

import random

from m1.curation.config import SetConfig, check_set


def select(rows: list[dict], s: SetConfig, seed: int) -> list[dict]:
    check_set(s)
    rng = random.Random(f"{seed}:{s.name}")
    n = s.n
    if s.method == "all" or n is None:  # n is None only for method all (check_set)
        return list(rows)
    if s.method == "random":
        return rng.sample(rows, min(n, len(rows)))
    pools: dict[str, dict[str, list[dict]]] = {}
    for r in rows:
        pools.setdefault(r.get("domain") or "", {}).setdefault(r["source"], []).append(r)
    chosen: list[dict] = []
    while len(chosen) < n and pools:
        domain = rng.choice(sorted(pools))
        source = rng.choice(sorted(pools[domain]))
        items = pools[domain][source]
        chosen.append(items.pop(_pick_long(rng, items) if s.weighting == "long_trace" else rng.randrange(len(items))))
        if not items:
            del pools[domain][source]
            if not pools[domain]:
                del pools[domain]
    return chosen


def trace_length(row: dict) -> int:
    return int(row.get("completion_tokens") or 0) or len(row.get("reasoning") or "")


def _pick_long(rng: random.Random, items: list[dict]) -> int:
    """Index of an item drawn with weight 2^-rank by trace length (rank 0: the longest)."""
    order = sorted(range(len(items)), key=lambda i: (-trace_length(items[i]), i))
    # 2^-r underflows past r ~ 1074; those items are as good as never drawn anyway.
    weights = [2.0 ** -r for r in range(len(order))]
    return order[rng.choices(range(len(order)), weights=weights)[0]]
