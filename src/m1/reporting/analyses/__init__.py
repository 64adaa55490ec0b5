"""The report's analyses: each a function `list[Run] -> Section | None` (see reporting/sections.py).

The report runs every one in ANALYSES, in this order; one that cannot answer its question from
the given runs returns None and is left out.
"""
from __future__ import annotations

from m1.reporting.analyses.domains import OfflineLabeller, domains
from m1.reporting.analyses.failures import failures
from m1.reporting.analyses.forcing import forcing
from m1.reporting.analyses.knowledge import knowledge
from m1.reporting.analyses.scaling import scaling
from m1.reporting.analyses.seeds import seeds
from m1.reporting.analyses.trajectory import adaptive, trajectory
from m1.reporting.sections import Analysis, Section
from m1.runs import Run


def trajectory_by_domain(runs: list[Run]) -> Section | None:
    """The trajectory section with per-domain rows (the offline labeller: about 1 s per 1,000 questions)."""
    return trajectory(runs, labeller=OfflineLabeller())


ANALYSES: list[Analysis] = [scaling, forcing, knowledge, domains, failures, trajectory_by_domain, adaptive, seeds]
