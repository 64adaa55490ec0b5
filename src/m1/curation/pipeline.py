"""The build: stages in order, each reading the one before from disk, each skipped when
its inputs and settings are unchanged.

    collect -> dedup -> difficulty -> distill -> validate -> domains -> select -> format

A stage's input_hash covers its code version, its config section, the content hashes
of the tables it reads and anything outside the pipeline it depends on (source files,
eval sets). Difficulty, distill and LLM domain labelling also resume inside a stage: their
answers sit in the difficulty journal or the teacher cache, so rerunning an interrupted
stage only asks for what is missing,
and a distill that left failures (questions still unanswered after every retry) runs
again on the next build.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from m1.curation.config import STAGES, DataConfig
from m1.curation.records import count_by_source, item_to_row, row_to_item
from m1.curation.store import Manifest, file_hash, is_current, json_hash, read_manifest, read_table, write_stage
from m1.errors import M1Error

# Bump a stage's number when its code changes what it writes: reruns it and what follows.
VERSIONS = {"collect": 1, "dedup": 1, "difficulty": 2, "distill": 1, "validate": 1, "domains": 1, "select": 1,
            "format": 1}


@dataclass
class StageResult:
    stage: str
    skipped: bool
    manifest: Manifest
    dir: Path


def build(cfg: DataConfig, until: str | None = None, force: bool = False, log=None) -> list[StageResult]:
    """Run (or skip) every stage up to and including `until`."""
    last = STAGES.index(_check_stage(until)) if until else len(STAGES) - 1
    return [run_stage(cfg, stage, force=force, log=log) for stage in STAGES[: last + 1]]


def run_stage(cfg: DataConfig, stage: str, force: bool = False, log=None) -> StageResult:
    """One stage on the tables already on disk (M1Error if the stage before has not run)."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    stage_dir = Path(cfg.out_dir) / _check_stage(stage)
    inputs = {name: _upstream(cfg, name, stage) for name in _reads(cfg, stage)}
    input_hash = json_hash({"version": VERSIONS[stage], "config": cfg.section(stage),
                            "inputs": {k: m.content_hash for k, m in inputs.items()},
                            "external": _external(cfg, stage)})
    m = None if force else is_current(stage_dir, input_hash)
    if m is not None and m.tables.get("failures", 0) and stage == "distill":
        log(f"{stage}: {m.tables['failures']} questions failed last time; asking again (answers come from the cache)")
    elif m is not None:
        log(f"{stage}: unchanged, skipped ({_summary(m)})")
        return StageResult(stage, True, m, stage_dir)
    started = time.time()
    log(f"{stage}: running")
    # format reads every set select wrote, not one "data" table
    tables = {name: read_table(Path(cfg.out_dir) / name / "data.parquet") for name in inputs if stage != "format"}
    previous = _previous(stage)
    main_in = tables.get(previous, []) if previous else []
    out, extra = STAGE_FUNCTIONS[stage](cfg, tables, stage_dir)
    m = write_stage(stage_dir, stage, out, input_hash, count_by_source(main_in), cfg.section(stage), started, extra)
    log(f"{stage}: done in {m.seconds:.1f} s ({_summary(m)})")
    return StageResult(stage, False, m, stage_dir)


def _check_stage(stage: str) -> str:
    if stage not in STAGES:
        raise M1Error(f'unknown stage "{stage}"; stages are {", ".join(STAGES)}')
    return stage


def _previous(stage: str) -> str | None:
    i = STAGES.index(stage)
    return STAGES[i - 1] if i else None


def _reads(cfg: DataConfig, stage: str) -> list[str]:
    """The stages whose "data" tables this one reads."""
    if stage == "collect":
        return []
    if stage == "select":
        return sorted({s.input for s in cfg.select.sets})
    if stage == "format":
        return ["select"]
    previous = _previous(stage)
    return [previous] if previous else []


def _upstream(cfg: DataConfig, name: str, stage: str) -> Manifest:
    m = read_manifest(Path(cfg.out_dir) / name)
    if m is None:
        raise M1Error(f"{stage} reads the output of {name}, which has not run in {cfg.out_dir}; "
                      f"run m1 data build CONFIG --until {name} first")
    return m


def _external(cfg: DataConfig, stage: str) -> object:
    """What a stage depends on outside the pipeline's own tables."""
    if stage == "collect":
        return [file_hash([Path(s.path)]) if s.path and Path(s.path).is_file() else f"hub:{s.hub}:{s.split}"
                for s in cfg.collect.sources]
    if stage == "dedup":
        from m1.curation.dedup import load_eval_items

        evals, _ = load_eval_items(cfg.dedup)
        return json_hash([(e.id, e.question, sorted(e.options.values())) for e in evals])
    return None


def _summary(m: Manifest) -> str:
    if "data" not in m.tables:  # select, format: one table per set
        return "; ".join(f"{k} {v} rows" for k, v in m.tables.items())
    parts = ", ".join(f"{k} {v}" for k, v in m.counts_out.items())
    extra = "; ".join(f"{k} {v}" for k, v in m.tables.items() if k != "data")
    return f"{m.tables['data']} rows" + (f": {parts}" if parts else "") + \
        (f"; {extra}" if extra else "")


# ---- the stages: (cfg, input tables by stage, stage folder) -> (tables to write, manifest extras) ----

def _collect(cfg: DataConfig, tables: dict, stage_dir: Path):
    from m1.curation.collect import collect

    items, notes = collect(cfg.collect, cfg.seed)
    return {"data": [item_to_row(i) for i in items]}, {"sources": notes}


def _dedup(cfg: DataConfig, tables: dict, stage_dir: Path):
    from m1.curation.dedup import dedup, load_eval_items, write_report_jsonl

    rows = tables["collect"]
    evals, report = load_eval_items(cfg.dedup)
    kept, removed, by_rule = dedup([row_to_item(r) for r in rows], evals, cfg.dedup)
    keep = {i.id for i in kept}
    stage_dir.mkdir(parents=True, exist_ok=True)
    write_report_jsonl(removed, stage_dir / "removed.jsonl")  # the same report, for grep
    return ({"data": [r for r in rows if r["id"] in keep], "removed": removed},
            {"removed_by_rule": by_rule, "eval_items": len(evals), "eval_sets": report})


JOURNAL = "answers.journal.jsonl"


def _difficulty(cfg: DataConfig, tables: dict, stage_dir: Path):
    from m1.curation.difficulty import difficulty

    # The journal outlives a kill: a rerun generates only the answers it lacks.
    kept, everything, extra = difficulty(tables["dedup"], cfg.difficulty, stage_dir / JOURNAL, progress=True)
    return {"data": kept, "answers": everything}, extra


def _distill(cfg: DataConfig, tables: dict, stage_dir: Path):
    from m1.curation.distill import distill

    rows, failures, stats = distill(tables["difficulty"], cfg.distill, cfg.teacher_cache)
    return {"data": rows, "failures": failures}, stats


def _validate(cfg: DataConfig, tables: dict, stage_dir: Path):
    from m1.curation.validate import validate

    kept, rejected, extra = validate(tables["distill"], cfg.validate)
    return {"data": kept, "rejected": rejected}, extra


def _domains(cfg: DataConfig, tables: dict, stage_dir: Path):
    from m1.curation.domains import label_domains

    rows, failures, stats = label_domains(tables["validate"], cfg.domains, cfg.distill, cfg.teacher_cache)
    return {"data": rows, "failures": failures}, stats


def _select(cfg: DataConfig, tables: dict, stage_dir: Path):
    from m1.curation.selection import select

    out = {s.name: select(tables[s.input], s, cfg.seed) for s in cfg.select.sets}
    return out, {"sets": {k: {"rows": len(v), "by_source": count_by_source(v)} for k, v in out.items()}}


def _format(cfg: DataConfig, tables: dict, stage_dir: Path):
    from m1.curation.formatting import format_rows, load_chat_renderer

    selected = {p.stem: read_table(p) for p in sorted((Path(cfg.out_dir) / "select").glob("*.parquet"))}
    render, label = load_chat_renderer(cfg.format.tokenizer)
    out = {name: format_rows(rows, cfg.format, render) for name, rows in selected.items()}
    return out, {"tokenizer": label, "sets": {k: {"rows": len(v), "by_source": count_by_source(v)}
                                              for k, v in out.items()}}


STAGE_FUNCTIONS = {"collect": _collect, "dedup": _dedup, "difficulty": _difficulty, "distill": _distill,
                   "validate": _validate, "domains": _domains, "select": _select, "format": _format}


def push_to_hub(cfg: DataConfig, repo: str, log=None) -> list[str]:
    """Each formatted set as a config of one hub dataset repo (token from HF_TOKEN / huggingface-cli login)."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    try:
        import datasets
    except ImportError:
        raise M1Error("--push-to-hub needs the datasets package: pip install 'm1[data]'") from None
    paths = sorted((Path(cfg.out_dir) / "format").glob("*.parquet"))
    if not paths:
        raise M1Error(f"nothing to push: {cfg.out_dir}/format has no sets; run the build to the format stage")
    pushed = []
    for p in paths:
        try:
            datasets.Dataset.from_parquet(str(p)).push_to_hub(repo, config_name=p.stem)
        except Exception as e:
            raise M1Error(f"push of {p.stem} to {repo} failed ({type(e).__name__}: {str(e)[:200]}); check "
                          "HF_TOKEN and that the repo name is yours") from None
        log(f"pushed {p.stem} to {repo}")
        pushed.append(p.stem)
    return pushed
