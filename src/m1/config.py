"""The evaluation config: resolved once, saved with every run."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields

from m1.errors import M1Error

M1_INSTRUCTION = "Return your final response within \\boxed{}."
# Engine options that only decide how the work is scheduled, never what is computed: a run
# resumed with other values (more requests in flight, other replicas) continues the same run.
SCHEDULING_OPTIONS = ("n_slots", "n_threads", "n_batch", "concurrency", "base_url", "timeout",
                      "skip_unreachable", "max_num_seqs", "batch_size", "api_key_env")


@dataclass(frozen=True)
class EvalConfig:
    """Everything that decides what an evaluation computes.

    The defaults are the embedded main job: SmolLM2-135M on a seeded 50-question
    sample of MedQA-USMLE at four small budgets, a few minutes on a laptop CPU.
    `format` and the other fields are resolved here, once; the resolved values are
    what a run saves and what its folder name hashes.
    """

    benchmark: str = "medqa"  # one name or several, comma-separated
    suite: str | None = None  # e.g. "m1": the paper's ten sources, those present
    data_dir: str | None = None  # where benchmarks m1 does not ship are looked for
    data: str | None = None  # a user file instead of a registered benchmark
    limit: int | None = 50
    seed: int = 0
    engine: str = "llamacpp"
    model: str | None = None  # None: the embedded SmolLM2-135M-Instruct
    engine_options: dict = field(default_factory=dict)
    # "auto": plain for the embedded SmolLM2, which was never trained on m1's think/answer
    # delimiters (it ends its turn at once inside them), m1 for any model you name.
    format: str = "auto"
    format_overrides: dict = field(default_factory=dict)
    budgets: tuple[int, ...] = (32, 64, 128, 256)
    answer_max_tokens: int = 64
    forcing_rounds: int = 0
    ignore_str: str = "Wait"
    temperature: float = 0.0
    top_p: float = 1.0
    method: str = "cut"  # or "independent"
    instruction: str = M1_INSTRUCTION
    system_prompt: str | None = None

    def __post_init__(self):
        if self.format == "auto":
            embedded = self.engine == "llamacpp" and self.model is None
            object.__setattr__(self, "format", "plain" if embedded else "m1")
        budgets = tuple(int(b) for b in self.budgets)
        object.__setattr__(self, "budgets", budgets)
        if not budgets:
            raise M1Error("no budgets given: pass --budgets 128,256,...")
        bad = [b for b in budgets if b <= 0]
        if bad:
            raise M1Error(f"--budgets: every budget must be a positive number of tokens, got {bad[0]}")
        if self.limit is not None and self.limit <= 0:
            raise M1Error(f"--limit must be positive, got {self.limit}")
        if self.method not in ("cut", "independent"):
            raise M1Error(f"--method must be 'cut' or 'independent', got {self.method!r}")
        if not self.temperature >= 0:
            raise M1Error(f"--temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise M1Error(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.answer_max_tokens <= 0:
            raise M1Error(f"--answer-max-tokens must be positive, got {self.answer_max_tokens}")
        if self.forcing_rounds < 0:
            raise M1Error(f"--forcing must be >= 0 rounds, got {self.forcing_rounds}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["budgets"] = list(self.budgets)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> EvalConfig:
        names = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k != "chunk_size"}  # gone: questions now flow one by one
        unknown = set(d) - names
        if unknown:
            raise M1Error(f"config: unknown field(s) {sorted(unknown)}; known: {sorted(names)}")
        return cls(**d)

    @staticmethod
    def identity(d: dict) -> dict:
        """The part of a config dict that decides results: all but scheduling options and
        fields that no longer mean anything (chunk_size, in runs written before pipelines)."""
        d = {k: v for k, v in d.items() if k != "chunk_size"}
        d["engine_options"] = {k: v for k, v in (d.get("engine_options") or {}).items()
                               if k not in SCHEDULING_OPTIONS}
        return d

    def fingerprint(self) -> str:
        """Short hash of everything that changes results (so a rerun finds its folder)."""
        blob = json.dumps(self.identity(self.to_dict()), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:8]
