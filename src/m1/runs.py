"""A run folder: config, one JSONL line per (question, budget), appended as they finish.

Rerunning the same command resumes: finished (question, budget) pairs are read back
and never recomputed, and a line cut short by a crash is dropped, not duplicated.
"""
from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from pathlib import Path

from m1.errors import M1Error

TRACES = "traces.jsonl"
CONFIG = "config.json"


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.traces = self.path / TRACES

    def check_target(self) -> None:
        """A run folder must be a folder: say so before any work if --out names something else."""
        for parent in (self.path, *self.path.parents):
            if parent.exists() and not parent.is_dir():
                raise M1Error(f"--out {self.path}: {parent} is a file, not a folder; pass a folder path for the run")

    def prepare(self, config: dict, environment: dict, identity=lambda d: d) -> None:
        """Create the folder, or check that an existing one holds the same config.

        `identity(config)` is what must match; settings that only schedule the work (how
        many requests in flight, which servers) may differ between a run and its resume."""
        self.path.mkdir(parents=True, exist_ok=True)
        cfg_file = self.path / CONFIG
        if cfg_file.exists():
            try:
                saved = json.loads(cfg_file.read_text())["config"]
            except (json.JSONDecodeError, KeyError):
                raise M1Error(f"{cfg_file} is damaged; delete the run folder or pass another --out") from None
            saved, now = identity(saved), identity(config)
            diff = [k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
            if diff:
                k = diff[0]
                raise M1Error(f"{self.path} holds a run with another config ({k}: {saved.get(k)!r} there, "
                              f"{now.get(k)!r} now); pass another --out or delete the folder")
        else:
            tmp = cfg_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"config": config, "environment": environment}, indent=2))
            os.replace(tmp, cfg_file)

    def load(self) -> list[dict]:
        """Finished records; drops a trailing partial line left by a crash."""
        if not self.traces.exists():
            return []
        records, good_bytes = [], 0
        with open(self.traces, "rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    break
                try:
                    records.append(json.loads(raw))
                except json.JSONDecodeError:
                    break
                good_bytes += len(raw)
        if good_bytes != self.traces.stat().st_size:
            with open(self.traces, "r+b") as f:
                f.truncate(good_bytes)
        return records

    def append(self, records: list[dict]) -> None:
        if not records:
            return
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        with open(self.traces, "a", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def read_traces(path: Path, needed: tuple[str, ...] = ()) -> list[dict]:
    """The records of a traces.jsonl, read only (for report, regrade, compare).

    A last line without its newline is a write cut short by a crash and is skipped (the run
    itself drops it on resume); any other unreadable line, or one lacking a `needed` field,
    is an error naming file and line. If a (source, id, budget) appears twice, the later wins.
    """
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    records: dict[tuple, dict] = {}
    for no, line in enumerate(lines[:-1], 1):  # lines[-1]: "" after the last newline, or the cut line
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            raise M1Error(f"{path}:{no}: not a JSON line; the traces are damaged") from None
        missing = [k for k in needed if k not in r]
        if missing:
            raise M1Error(f"{path}:{no}: record lacks {', '.join(missing)}; was it written by `m1 eval`?")
        records[(r.get("source"), r.get("id"), r.get("budget"))] = r
    return list(records.values())


def read_config(path: Path) -> dict:
    """The resolved config a run saved (the "config" object of its config.json)."""
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))["config"]
        if not isinstance(cfg, dict):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise M1Error(f"{path} is damaged (expected JSON with a 'config' object)") from None
    return cfg


def package_versions(packages: tuple[str, ...]) -> dict:
    """Python's version and each installed package's, for the record a run keeps."""
    out = {"python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out
