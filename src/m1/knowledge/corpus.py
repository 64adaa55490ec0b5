"""A knowledge corpus on disk: MedRAG's chunk layout, read as a validated stream.

The file is JSONL (or JSONL.gz), one chunk a line: {"id", "title", "content"}, as MedRAG ships
its textbooks, StatPearls and PubMed snippets. "title" may be missing or empty; other fields
(PubMed's "pmid", ...) travel along in `Chunk.extra`. The sha256 of the file's bytes names the
corpus in every cache and in a run's identity, so editing a corpus can never reuse a stale index.

Memory: nothing here holds the corpus. `chunks()` streams it (a 1M-passage file is read once,
line by line); retrievers keep what they need in memory-mapped files beside their index, and
`PassageStore` reads one passage back from such a file when a search returns it.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m1.errors import M1Error, first_line
from m1.knowledge.passages import Passage

FORMAT_HINT = "a .jsonl corpus of {id, title, content} lines"
HINT = f"give {FORMAT_HINT}"
HASH_CHARS = 16
STORE_FILE = "passages.jsonl"  # the corpus again, one validated chunk a line, beside each cached index


@dataclass(frozen=True)
class Chunk:
    id: str
    title: str
    content: str
    extra: dict[str, Any] = field(default_factory=dict)  # every other field of the line, e.g. {"pmid": "..."}

    def text(self) -> str:
        """What retrievers index: the title (a book or article name carries topic words), then the content."""
        return f"{self.title}\n{self.content}" if self.title else self.content

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "content": self.content, "extra": self.extra}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Chunk:
        return cls(d["id"], d["title"], d["content"], d.get("extra") or {})


@dataclass(frozen=True)
class CorpusFile:
    """A corpus file that exists, named and hashed; `chunks()` reads and validates it."""

    path: Path
    name: str  # the Passage.source of its passages
    hash: str  # sha256 of the file's bytes, first 16 hex digits

    def chunks(self) -> Iterator[Chunk]:
        """Every chunk in file order. Raises M1Error (one line: file, line, field) at the first bad line,
        a repeated id, or an empty file; validation costs one pass, which building an index makes anyway."""
        seen: dict[str, int] = {}  # id -> line, for the duplicate message (~100 B an id)
        for n, raw in _lines(self.path):
            if not raw.strip():
                continue  # blank lines (a trailing newline, a gap) are not chunks
            chunk = _parse(raw, self.path, n)
            if chunk.id in seen:
                raise M1Error(f"{self.path} lines {seen[chunk.id]} and {n}: duplicate id {chunk.id!r}; "
                              "every chunk needs its own id")
            seen[chunk.id] = n
            yield chunk
        if not seen:
            raise M1Error(f"{self.path} holds no passages; {HINT}")


def open_corpus(path: str | Path, name: str | None = None) -> CorpusFile:
    """The corpus at `path`, hashed; `name` defaults to the file name without .jsonl(.gz)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise M1Error(f"{p} does not exist; {HINT}")
    if not p.is_file():
        raise M1Error(f"{p} is not a file; {HINT}")
    return CorpusFile(p, name or corpus_name(p), file_hash(p))


def read_corpus(path: str | Path) -> list[Chunk]:
    """The whole corpus in memory, validated (small corpora and tests; retrievers stream instead)."""
    return list(open_corpus(path).chunks())


def corpus_name(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".jsonl", ".json"):
        name = name.removesuffix(suffix)
    return name or path.name


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:HASH_CHARS]


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes); bytes, so a bad UTF-8 line is reported by number like any other."""
    gz = path.name.endswith(".gz")
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            yield from enumerate(f, 1)
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError; EOFError: a truncated .gz
        raise M1Error(f"{path}: cannot read it as {'gzip' if gz else 'a file'} ({first_line(e)}); {HINT}") from None


def _parse(raw: bytes, path: Path, n: int) -> Chunk:
    where = f"{path} line {n}"
    try:
        d = json.loads(raw)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        msg = getattr(e, "msg", None) or type(e).__name__
        raise M1Error(f"{where}: not valid JSON ({msg}); {HINT}") from None
    if not isinstance(d, dict):
        raise M1Error(f"{where}: a JSON {type(d).__name__}, not an object; {HINT}")
    for key in ("id", "content"):
        if key not in d:
            raise M1Error(f"{where}: field {key!r} is missing; {HINT}")
        if not isinstance(d[key], str):
            raise M1Error(f"{where}: field {key!r} must be a string, not {type(d[key]).__name__}; {HINT}")
    if not d["id"].strip():
        raise M1Error(f"{where}: field 'id' is empty; {HINT}")
    title = d.get("title")
    if title is not None and not isinstance(title, str):
        raise M1Error(f"{where}: field 'title' must be a string, not {type(title).__name__}; {HINT}")
    extra = {k: v for k, v in d.items() if k not in ("id", "title", "content")}
    return Chunk(d["id"], title or "", d["content"], extra)


# ---- the passage store every cached index keeps beside it ----

class PassageStore:
    """The validated chunks of one corpus in a JSONL file, read back one line at a time through
    bm25s's memory-mapped JsonlCorpus (a list of line offsets in memory, 8 B a passage)."""

    def __init__(self, folder: Path):
        from bm25s.utils.corpus import JsonlCorpus

        self.path = folder / STORE_FILE
        self._lines = JsonlCorpus(str(self.path), show_progress=False, verbosity=0)

    def __len__(self) -> int:
        return len(self._lines)

    def __getitem__(self, row: int) -> Chunk:
        return Chunk.from_json(self._lines[int(row)])


def write_store(chunks: Iterator[Chunk], folder: Path) -> Iterator[Chunk]:
    """Pass `chunks` through, writing each to `folder`/passages.jsonl; when the stream ends, also write
    the line offsets JsonlCorpus reads. One read of the source serves both the index and the store."""
    from bm25s.utils.corpus import save_mmindex

    path = folder / STORE_FILE
    offsets, at = [], 0
    with open(path, "w", encoding="ascii") as out:
        for c in chunks:
            line = _jsonl(c.to_json())
            out.write(line)
            offsets.append(at)
            at += len(line)  # ASCII: characters are bytes
            yield c
    save_mmindex(offsets, str(path))


def _jsonl(d: dict[str, Any]) -> str:
    # ensure_ascii: every line pure ASCII, so JsonlCorpus's byte offsets and text reads can never disagree
    return json.dumps(d, ensure_ascii=True) + "\n"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Where m1 caches indexes: `cache_dir`, else $M1_CACHE_DIR, else $M1_CACHE (as `m1 models` uses it),
    else $XDG_CACHE_HOME/m1, else ~/.cache/m1. Retrievers keep bm25/ and dense/ folders under it."""
    root = cache_dir or os.environ.get("M1_CACHE_DIR") or os.environ.get("M1_CACHE")
    if root:
        return Path(root).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "m1"


def write_json(path: Path, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ---- caches written whole or not at all ----

META_FILE = "meta.json"  # written last inside the build folder: its presence marks a complete cache


def build_once(final: Path, fmt: int, build: Callable[[Path], dict[str, Any]]) -> bool:
    """Make sure `final` holds a complete cache: if its meta.json names format `fmt`, do nothing and return
    False. Else run `build(tmp)` in a fresh folder beside it, write its returned meta, and rename the folder
    into place (atomic on one file system): a crash or Ctrl-C leaves only a temporary folder, which a later
    build sweeps away, never half an index under the real name. Returns True when it built."""
    if _complete(final, fmt):
        return False
    final.parent.mkdir(parents=True, exist_ok=True)
    _sweep(final.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-{os.getpid()}-", dir=final.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's folder is private; the cache folder follows the umask
        meta = build(tmp)
        write_json(tmp / META_FILE, {**meta, "format": fmt})
        if final.exists():  # an older format (or a folder someone emptied): move it aside, then replace it
            if _complete(final, fmt):  # another process finished the same build first
                shutil.rmtree(tmp)
                return False
            stale = Path(tempfile.mkdtemp(prefix=f".tmp-stale-{os.getpid()}-", dir=final.parent))
            os.replace(final, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not _complete(final, fmt):
                raise
            shutil.rmtree(tmp)  # lost a race to an identical build
            return False
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _complete(folder: Path, fmt: int) -> bool:
    meta = read_json(folder / META_FILE)
    return meta is not None and meta.get("format") == fmt


def _sweep(parent: Path) -> None:
    """Remove temporary folders whose builder process is gone (killed mid-build)."""
    for d in parent.glob(".tmp-*"):
        pid = d.name.split("-")[-2]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StoreRetriever:
    """What every retriever over a passage store shares: ranked rows (`rank_many`, the subclass's)
    made into Passages, and the corpus fields of the passages handed out (a PubMedQA "pmid")."""

    corpus: CorpusFile
    _store: PassageStore
    _extra: dict[str, dict[str, Any]]

    def rank_many(self, queries: list[str], k: int) -> list[tuple[Any, Any]]:
        raise NotImplementedError

    def search_many(self, queries: list[str], k: int) -> list[list[Passage]]:
        return [[self.passage(r, s) for r, s in zip(rows, scores)] for rows, scores in self.rank_many(queries, k)]

    def search(self, query: str, k: int) -> list[Passage]:
        return self.search_many([query], k)[0]

    def passage(self, row: int, score: float) -> Passage:
        c = self._store[row]
        if c.extra:
            self._extra[c.id] = c.extra
        return Passage(id=c.id, source=self.corpus.name, title=c.title, text=c.content, score=float(score))

    def extra(self, passage_id: str) -> dict[str, Any]:
        """The corpus line's other fields (e.g. {"pmid": ...}) of a passage this retriever returned."""
        return self._extra.get(passage_id, {})
