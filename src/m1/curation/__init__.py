"""Curation: from raw question pools to m1K / m23K-style SFT sets, stage by stage, locally.

    collect -> dedup -> difficulty -> distill -> validate -> domains -> select -> format

Each stage is a library function (collect.collect, dedup.dedup, difficulty.difficulty,
distill.distill, validate.validate, domains.label_domains, selection.select,
formatting.format_rows) and a step of `m1 data build CONFIG` (pipeline.build), which
writes Parquet + a manifest per stage and skips stages whose inputs are unchanged.
"""
from m1.curation.config import STAGES, DataConfig, load_config
from m1.curation.pipeline import build, run_stage

__all__ = ["STAGES", "DataConfig", "build", "load_config", "run_stage"]
