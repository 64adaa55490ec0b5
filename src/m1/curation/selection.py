"""Stage 7, select: the training sets.

  domain  m1K: repeat a seeded draw of a domain, then a source within it, then an item
          within that, each uniform and without replacement (an emptied source or domain
          leaves the draw), until n items. Small domains and sources are thereby
          over-represented relative to their size, which is the point: breadth.
  random  n items uniformly at random (the "random" / "hard-random" ablations, by input).
  all     every item (m23K).
Each set reads the "data" table of its `input` stage: domains (validated, labelled:
m1K, m23K, hard-domain), validate, or distill (unvalidated traces).
"""
from __future__ import annotations

import random

from m1.curation.config import SetConfig
from m1.errors import M1Error

METHODS = ("domain", "random", "all")
INPUTS = ("distill", "validate", "domains")


def check_set(s: SetConfig) -> None:
    if s.method not in METHODS:
        raise M1Error(f'select set "{s.name}": method "{s.method}" unknown; choose one of {", ".join(METHODS)}')
    if s.input not in INPUTS:
        raise M1Error(f'select set "{s.name}": input "{s.input}" has no teacher traces; use one of {", ".join(INPUTS)}')
    if s.method != "all" and (s.n is None or s.n < 1):
        raise M1Error(f'select set "{s.name}": method {s.method} needs n >= 1 (how many items)')
    if s.method == "domain" and s.input != "domains":
        raise M1Error(f'select set "{s.name}": method domain needs input domains (items labelled with a domain)')


def select(rows: list[dict], s: SetConfig, seed: int) -> list[dict]:
    check_set(s)
    rng = random.Random(f"{seed}:{s.name}")
    if s.method == "all":
        return list(rows)
    if s.method == "random":
        return rng.sample(rows, min(s.n, len(rows)))
    pools: dict[str, dict[str, list[dict]]] = {}
    for r in rows:
        pools.setdefault(r.get("domain") or "", {}).setdefault(r["source"], []).append(r)
    chosen = []
    while len(chosen) < s.n and pools:
        domain = rng.choice(sorted(pools))
        source = rng.choice(sorted(pools[domain]))
        items = pools[domain][source]
        chosen.append(items.pop(rng.randrange(len(items))))
        if not items:
            del pools[domain][source]
            if not pools[domain]:
                del pools[domain]
    return chosen
