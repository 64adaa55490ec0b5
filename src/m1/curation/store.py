"""Stage outputs on disk: Parquet tables plus a manifest.json per stage folder.

<out_dir>/<stage>/<table>.parquet   "data" is what the next stage reads; others are
                                    reports (removed items, every model answer, ...)
<out_dir>/<stage>/manifest.json     counts per source in and out, the config section,
                                    input_hash (what the stage was run on), content_hash
                                    (of the tables it wrote), time.

A stage is skipped when its manifest's input_hash equals the one it would be run with
and its tables still hash to content_hash, so editing one stage's settings reruns that
stage and the ones after it, nothing before. Files are written to a temporary name and
renamed, so a killed build never leaves a half-written table that looks finished.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from m1.errors import M1Error

MANIFEST = "manifest.json"


@dataclass
class Manifest:
    stage: str
    input_hash: str
    content_hash: str
    tables: dict[str, int]  # table -> rows
    counts_in: dict[str, int]  # source -> rows read
    counts_out: dict[str, int]  # source -> rows in "data"
    config: dict
    started: str
    seconds: float
    extra: dict = field(default_factory=dict)  # stage-specific totals (calls, tokens, removals by rule, ...)


def _pa():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise M1Error("the data pipeline writes Parquet and needs pyarrow: pip install 'm1[data]'") from None
    return pa, pq


def write_table(path: Path, rows: list[dict]) -> None:
    pa, pq = _pa()
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows) if rows else pa.table({"id": pa.array([], pa.string())})
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def read_table(path: Path) -> list[dict]:
    _, pq = _pa()
    if not path.is_file():
        raise M1Error(f"{path} is missing; run the stage that writes it first (m1 data build CONFIG)")
    return pq.read_table(path).to_pylist()


def file_hash(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        with open(p, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def json_hash(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def read_manifest(stage_dir: Path) -> Manifest | None:
    try:
        return Manifest(**json.loads((stage_dir / MANIFEST).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def is_current(stage_dir: Path, input_hash: str) -> Manifest | None:
    """The manifest if the stage already ran on these inputs and its tables are intact."""
    m = read_manifest(stage_dir)
    if m is None or m.input_hash != input_hash:
        return None
    paths = [stage_dir / f"{t}.parquet" for t in m.tables]
    if not all(p.is_file() for p in paths) or file_hash(paths) != m.content_hash:
        return None
    return m


def write_stage(stage_dir: Path, stage: str, tables: dict[str, list[dict]], input_hash: str,
                counts_in: dict[str, int], config: dict, started: float, extra: dict) -> Manifest:
    from m1.curation.records import count_by_source

    stage_dir.mkdir(parents=True, exist_ok=True)
    (stage_dir / MANIFEST).unlink(missing_ok=True)  # not current while tables change
    for old in stage_dir.glob("*.parquet"):
        if old.stem not in tables:
            old.unlink()
    for name, rows in tables.items():
        write_table(stage_dir / f"{name}.parquet", rows)
    paths = [stage_dir / f"{t}.parquet" for t in tables]
    m = Manifest(stage=stage, input_hash=input_hash, content_hash=file_hash(paths),
                 tables={k: len(v) for k, v in tables.items()}, counts_in=counts_in,
                 counts_out=count_by_source(tables.get("data", [])), config=config,
                 started=time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
                 seconds=round(time.time() - started, 3), extra=extra)
    tmp = stage_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(asdict(m), indent=2, ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, stage_dir / MANIFEST)
    return m
