"""The data-build config: one YAML (or JSON) file, one typed settings class per stage.

The file is read by m1's one config loader (m1.configfile), `key=value` overrides on top.
Relative paths in the file are relative to the file's own folder, so a config means
the same thing whatever directory `m1 data build` runs from. API keys never go in the
file: a teacher names the environment variable that holds its key (`api_key_env`).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import field
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from m1.config import Grader, NonNegative, Positive
from m1.configfile import CommaList, settings, to_plain
from m1.engine_options import check_options
from m1.errors import M1Error

# m1's prompt (question and lettered options follow); "{question}" is replaced, nothing else.
M1_PROMPT = "Return your final response within \\boxed{}. {question}"
STAGES = ("collect", "dedup", "difficulty", "distill", "validate", "domains", "select", "format")
if typing.TYPE_CHECKING:  # callers build these from plain strings; the model still takes only the choices
    DomainMethod = str
    Rubric = str
else:
    DomainMethod, Rubric = Literal["llm", "tfidf", "embedding"], Literal["full", "titles"]
Share = Annotated[float, Field(ge=0, le=1)]
Rate = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]


@settings
class SourceConfig:
    name: str  # becomes Item.source and the id prefix
    kind: str  # selfbiorag | headqa | pubmedqa | items (any file m1's loaders read)
    path: str | None = None  # a local file ...
    hub: str | None = None  # ... or a Hugging Face dataset id (needs `datasets` and hub access)
    hub_config: str | None = None
    split: str = "train"
    limit: int | None = None  # seeded sample, for trials
    shuffle: bool | None = None  # None: the global shuffle_options (PubMedQA: never, yes/no/maybe is a scale)


@settings
class CollectConfig:
    sources: tuple[SourceConfig, ...] = ()
    shuffle_options: bool = True


@settings
class DedupConfig:
    benchmarks: CommaList[str] | None = None  # None or [all]: every benchmark m1 knows that is present; []: none
    eval_files: CommaList[str] = ()  # more eval sets (any file m1's loaders read)
    data_dir: str | None = None  # where user-supplied benchmarks live (else $M1_DATA_DIR)
    ngram: Positive = 13
    ngram_overlap: Share = 0.5  # share of the shorter stem's n-grams found in one eval stem (see dedup.py)
    fuzzy_threshold: Annotated[float, Field(ge=0, le=100)] = 90.0  # RapidFuzz ratio, 0-100
    fuzzy_candidates: Positive = 8  # eval stems scored per pool stem (picked by shared word 3-grams)
    min_stem_tokens: NonNegative = 12  # shorter stems ("Which is true?") also need shared options to match
    within_pool: bool = True  # drop repeats inside the pool: same stem and options, or a near-duplicate stem


@settings
class ModelConfig:
    """One model that answers the pool to judge difficulty, through any m1 engine."""

    engine: str = "llamacpp"
    model: str | None = None
    options: dict = field(default_factory=dict)  # engine options, e.g. base_url for openai
    name: str | None = None  # label in the stored answers
    k: Positive = 1  # samples per question
    temperature: NonNegativeFloat = 0.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    max_tokens: Positive = 1024
    seed: int = 0

    @model_validator(mode="after")
    def _options(self) -> ModelConfig:
        check_options(self.engine, self.options, "options")
        return self


@settings
class DifficultyConfig:
    models: tuple[ModelConfig, ...] = ()
    rule: Literal["all_wrong", "pass_rate", "none"] = "all_wrong"  # all_wrong (m1's) | pass_rate | none
    max_pass_rate: Share = 0.0  # pass_rate: keep questions answered right at most this often
    grader: Grader = "strict"
    prompt: str = M1_PROMPT
    chunk_size: Positive = 32  # questions per engine call; answers are journaled after each


@settings
class TeacherConfig:
    """An OpenAI-compatible chat API. `params` go into the request body as given."""

    base_url: str = "http://127.0.0.1:8000/v1"
    model: str | None = None  # None: the first one the server lists
    api_key_env: str = "OPENAI_API_KEY"
    prompt: str = M1_PROMPT
    system: str | None = None
    params: dict = field(default_factory=lambda: {"temperature": 0.0, "max_tokens": 8192})
    concurrency: Positive = 8
    rpm: Rate | None = None  # requests per minute
    tpm: Rate | None = None  # tokens per minute (prompt estimate + max_tokens, corrected by usage)
    max_retries: NonNegative = 8
    timeout_s: Rate = 600.0
    backoff_s: NonNegativeFloat = 1.0
    backoff_max_s: NonNegativeFloat = 60.0
    cache: str | None = None  # SQLite file; None: <out_dir>/cache/teacher.sqlite
    price_in_per_mtok: NonNegativeFloat = 0.0  # for the cost total
    price_out_per_mtok: NonNegativeFloat = 0.0


@settings
class ValidateConfig:
    grader: Grader = "strict"
    require_reasoning: bool = True  # drop answers that came without any reasoning
    drop_truncated: bool = True  # drop answers cut by max_tokens


@settings
class DomainsConfig:
    method: DomainMethod = "tfidf"  # llm | tfidf | embedding
    teacher: TeacherConfig | None = None  # llm: None -> the distill teacher, short answers
    rubric: Rubric = "full"  # full (code, title, description) | titles (for small context windows)
    fallback: Literal["tfidf"] | None = "tfidf"  # what labels the llm's failures (None: leave them unlabelled)
    embedding_model: str | None = None  # a sentence-transformers folder or id


@settings
class SetConfig:
    name: str
    method: str = "domain"  # domain (m1K: domain, then source, then item) | random | all
    n: int | None = 1000
    input: str = "domains"  # the stage whose items are drawn from
    weighting: str = "uniform"  # domain method: uniform item draw (m1K) | long_trace (s1K: favour long traces)

    @model_validator(mode="after")
    def _check(self) -> SetConfig:
        check_set(self)
        return self


SET_METHODS = ("domain", "random", "all")
SET_WEIGHTINGS = ("uniform", "long_trace")
SET_INPUTS = ("distill", "validate", "domains")  # the stages whose items carry teacher traces


def check_set(s: SetConfig) -> None:
    """A select set's settings make sense together (m1.curation.selection draws it)."""
    if s.method not in SET_METHODS:
        raise M1Error(f'select set "{s.name}": method "{s.method}" unknown; choose one of {", ".join(SET_METHODS)}')
    if s.input not in SET_INPUTS:
        raise M1Error(f'select set "{s.name}": input "{s.input}" has no teacher traces; '
                      f'use one of {", ".join(SET_INPUTS)}')
    if s.method != "all" and (s.n is None or s.n < 1):
        raise M1Error(f'select set "{s.name}": method {s.method} needs n >= 1 (how many items)')
    if s.weighting not in SET_WEIGHTINGS:
        raise M1Error(f'select set "{s.name}": weighting "{s.weighting}" unknown; '
                      f'choose one of {", ".join(SET_WEIGHTINGS)}')
    if s.weighting != "uniform" and s.method != "domain":
        raise M1Error(f'select set "{s.name}": weighting {s.weighting} applies to method domain only')
    if s.method == "domain" and s.input != "domains":
        raise M1Error(f'select set "{s.name}": method domain needs input domains (items labelled with a domain)')


@settings
class SelectConfig:
    sets: tuple[SetConfig, ...] = (SetConfig("m1k", "domain", 1000), SetConfig("m23k", "all", None))

    @model_validator(mode="after")
    def _names(self) -> SelectConfig:
        names = [s.name for s in self.sets]
        if not names or len(set(names)) != len(names) or "data" in names:
            raise M1Error(f"select.sets names {names}: give at least one set, each with its own name (not 'data')")
        return self


@settings
class FormatConfig:
    tokenizer: str | None = None  # None: the embedded SmolLM2's; a .gguf file or an HF tokenizer folder/id
    prompt: str = M1_PROMPT
    system: str | None = None
    answer: Literal["response", "letter"] = "response"  # the teacher's final text | "C. option text"


@settings
class DataConfig:
    out_dir: str
    seed: int = 0
    collect: CollectConfig = CollectConfig()
    dedup: DedupConfig = DedupConfig()
    difficulty: DifficultyConfig = DifficultyConfig()
    distill: TeacherConfig = TeacherConfig()
    validate: ValidateConfig = ValidateConfig()
    domains: DomainsConfig = DomainsConfig()
    select: SelectConfig = SelectConfig()
    format: FormatConfig = FormatConfig()

    def section(self, stage: str) -> dict:
        """The settings a stage depends on (what its skip check hashes)."""
        out = {"seed": self.seed, stage: to_plain(getattr(self, stage))}
        if stage == "domains" and self.domains.method == "llm" and self.domains.teacher is None:
            out["distill"] = to_plain(self.distill)  # the labeller is the distill teacher
        return out

    @property
    def teacher_cache(self) -> Path:
        return Path(self.distill.cache) if self.distill.cache else Path(self.out_dir) / "cache" / "teacher.sqlite"


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> DataConfig:
    """The data config from its file and `key=value` overrides (dotted: dedup.ngram=8), through
    m1's one config loader (m1.configfile)."""
    from m1.configfile import build, gather

    path = Path(path)
    layers = gather(DataConfig, path, overrides, what="data config")
    layers.data.setdefault("out_dir", f"runs/data/{path.stem}")
    cfg = build(DataConfig, layers)  # late stages' settings are checked here, not after hours of teacher calls
    return resolve_paths(cfg, path.parent, layers.from_cli)


def resolve_paths(cfg: DataConfig, base: Path,
                  from_cli: typing.Callable[[str], bool] = lambda key: False) -> DataConfig:
    """Paths relative to the config file's folder (those given on the command line: to the current
    one); hub ids and absent tokenizer names stay as they are."""

    def p(x: str | None, key: str) -> str | None:
        folder = Path.cwd() if from_cli(key) else base
        return None if x is None else str((folder / Path(x).expanduser()).resolve())

    rep = dataclasses.replace
    sources = tuple(rep(s, path=p(s.path, f"collect.sources.{i}.path")) for i, s in enumerate(cfg.collect.sources))
    tok = cfg.format.tokenizer
    if tok is not None and ((Path.cwd() if from_cli("format.tokenizer") else base) / tok).exists():
        tok = p(tok, "format.tokenizer")
    return rep(cfg, out_dir=p(cfg.out_dir, "out_dir"),
               collect=rep(cfg.collect, sources=sources),
               dedup=rep(cfg.dedup, eval_files=tuple(p(f, f"dedup.eval_files.{i}") or f
                                                     for i, f in enumerate(cfg.dedup.eval_files)),
                         data_dir=p(cfg.dedup.data_dir, "dedup.data_dir")),
               distill=rep(cfg.distill, cache=p(cfg.distill.cache, "distill.cache")),
               format=rep(cfg.format, tokenizer=tok))
