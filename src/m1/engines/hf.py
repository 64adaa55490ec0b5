"""Hugging Face transformers on CPU or GPU: a local folder, a hub id, or a GGUF file.

Generation is our own decode loop over one KV cache for a left-padded batch, so each
request gets its own cap, stops and seeded sampler, and the ids we report are exactly
the ids we fed back. A GGUF file is dequantized by transformers (it needs `gguf`).
Option-letter log-probabilities (engines/probes.py) are read from the full logits of the answer
position's step, as in the llama.cpp engine.
"""
from __future__ import annotations

import hashlib
import inspect
from importlib import metadata
from pathlib import Path
from typing import Sequence

from m1.engines import probes
from m1.engines.base import BatchedSubmit, GenRequest, GenResult, StopMatcher
from m1.engines.tokenizers import HFTokenizer
from m1.errors import M1Error, first_line


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


class HFEngine(BatchedSubmit):
    name = "hf"

    def __init__(self, model: str, gguf_file: str | None = None, device: str = "auto", dtype: str = "auto",
                 batch_size: int = 8, trust_remote_code: bool = False):
        try:
            import torch
            import transformers
        except ImportError:
            raise M1Error("engine 'hf' needs torch and transformers: pip install 'm1[hf]'") from None
        if not model:
            raise M1Error("engine 'hf' needs a model: pass --model with a folder, a hub id or a .gguf file")
        self.torch = torch
        self.batch_size = batch_size
        self._start_queue(batch_size)
        self.source, self.gguf_file = resolve_model_source(model, gguf_file)
        self.device = _pick_device(torch, device)
        self.dtype = _pick_dtype(torch, dtype, self.device)
        load: dict[str, object] = {"trust_remote_code": trust_remote_code}
        if self.gguf_file:
            load["gguf_file"] = self.gguf_file
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.source, **load)
            # transformers renamed torch_dtype to dtype in 4.56
            key = "dtype" if _version(transformers.__version__) >= (4, 56) else "torch_dtype"
            self.model = transformers.AutoModelForCausalLM.from_pretrained(self.source, **{key: self.dtype}, **load)
        except (OSError, ValueError, ImportError) as e:
            first = first_line(e)
            raise M1Error(f"transformers could not load {model}: {first}") from None
        self.model.to(self.device).eval()
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        self.tok = HFTokenizer(self.tokenizer, model, eos if isinstance(eos, (list, tuple)) else
                               [eos] if eos is not None else [])
        if self.device.type == "cpu":
            realign_cpu_weights(self.model)
        # transformers renamed past_key_values to cache (5.x); use whichever this one has
        params = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self.model_name = model
        self._sha256: str | dict | None = None
        self._letter_ids: dict[tuple[str, ...], dict[str, tuple[int, ...]]] = {}

    # -- text <-> ids: one Hugging Face tokenizer wrapper for every engine (engines/tokenizers.py)
    def tokenize(self, text: str) -> list[int]:
        return self.tok.tokenize(text)

    def encode_prompt(self, text: str) -> list[int]:
        return self.tok.encode_prompt(text)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tok.detokenize(ids)

    def render_chat(self, messages: list[dict]) -> str:
        return self.tok.render_chat(messages)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return self.tok.eos_token_ids

    def describe(self) -> dict:
        if self._sha256 is None:
            self._sha256 = _weights_sha256(self.source, self.gguf_file)
        versions = {}
        for pkg in ("torch", "transformers", "gguf", "accelerate"):
            try:
                versions[pkg] = metadata.version(pkg)
            except metadata.PackageNotFoundError:
                pass
        return {"engine": self.name, "model": self.model_name, "gguf_file": self.gguf_file,
                "model_sha256": self._sha256, "device": str(self.device),
                "dtype": str(self.dtype).replace("torch.", ""), "batch_size": self.batch_size,
                "versions": versions}

    # -- generation -------------------------------------------------------------------
    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        for r in requests:
            if not r.prompt_ids:
                raise M1Error("empty prompt: a request needs at least one prompt token")
        results: list[GenResult] = []
        for start in range(0, len(requests), self.batch_size):
            results += self._generate_batch(requests[start:start + self.batch_size])
        return results

    def _generate_batch(self, reqs: Sequence[GenRequest]) -> list[GenResult]:
        torch = self.torch
        n = len(reqs)
        width = max(len(r.prompt_ids) for r in reqs)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        # Left padding: every row's next token lands in the same column.
        ids = torch.full((n, width), pad, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, r in enumerate(reqs):
            ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        matchers = [StopMatcher(r.stop_token_ids, r.stop_strings, self.detokenize) for r in reqs]
        gens = [_generator(torch, r) for r in reqs]
        out: list[list[int]] = [[] for _ in reqs]
        done: list[GenResult | None] = [None] * n
        # option-letter log-probabilities: (answer position, logprobs) once found, per request that asks
        found: list[tuple[int, dict[str, float]] | None] = [None] * n
        for r in reqs:
            if r.option_letters and tuple(r.option_letters) not in self._letter_ids:
                self._letter_ids[tuple(r.option_letters)] = probes.letter_token_ids(self.tokenize, r.option_letters)
        for i, r in enumerate(reqs):
            if r.max_new_tokens <= 0:
                done[i] = GenResult([], "", "length", 0)
        past, step_ids = None, ids
        with torch.inference_mode():
            while any(d is None for d in done):
                positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -step_ids.shape[1]:]
                res = self.model(input_ids=step_ids, attention_mask=mask, position_ids=positions,
                                 **{self._cache_arg: past}, use_cache=True, logits_to_keep=1)
                past = res.get(self._cache_arg)
                logits = res.logits[:, -1, :].float()
                nxt = []
                for i, r in enumerate(reqs):
                    if done[i] is not None:
                        nxt.append(pad)  # a finished row idles; its outputs are ignored
                        continue
                    tok = _pick(torch, logits[i], r, gens[i])
                    out[i].append(tok)
                    nxt.append(tok)
                    if r.option_letters and found[i] is None \
                            and probes.letter_of(self.detokenize([tok]), r.option_letters) is not None:
                        ids = self._letter_ids[tuple(r.option_letters)]
                        found[i] = (len(out[i]) - 1, probes.from_logits(logits[i].cpu().numpy(), ids))
                    stop = matchers[i].push(tok)
                    res = None
                    if stop is not None:
                        res = GenResult(out[i], self.detokenize(out[i]), "stop", matchers[i].stop_index, stop)
                    elif len(out[i]) >= r.max_new_tokens:
                        res = GenResult(out[i], self.detokenize(out[i]), "length", len(out[i]))
                    if res is not None:
                        letter_lp = found[i]
                        if letter_lp is not None and letter_lp[0] < res.stop_index:  # before the stop
                            res.option_position, res.option_logprobs = letter_lp
                        done[i] = res
                step_ids = torch.tensor(nxt, dtype=torch.long, device=self.device)[:, None]
                mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=self.device)], dim=1)
        return done  # type: ignore[return-value]

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
        if self.torch.cuda.is_available():
            self.torch.cuda.empty_cache()


def realign_cpu_weights(model) -> None:
    """Weights dequantized from a GGUF can sit at 32-byte alignment, which sends batched CPU
    matmuls down a path ~40x slower; fresh copies are aligned."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.clone()


def resolve_model_source(model: str, gguf_file: str | None) -> tuple[str, str | None]:
    """(folder or hub id, gguf file name) as from_pretrained wants them."""
    path = Path(model).expanduser()
    if model.endswith(".gguf"):
        if not path.is_file():
            raise M1Error(f"model file not found: {model} (pass --model with an existing .gguf file)")
        return str(path.parent), path.name
    if path.exists():
        if gguf_file and not (path / gguf_file).is_file():
            raise M1Error(f"GGUF file not found: {path / gguf_file} (check gguf_file)")
        return str(path), gguf_file
    if model.startswith(("/", ".", "~")) or model.count("/") > 1:
        raise M1Error(f"model folder not found: {model} (pass an existing folder, a .gguf file or a hub id)")
    return model, gguf_file  # a hub id: from_pretrained fetches it (or fails with a clear message)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:2] if p.isdigit())


def _pick_device(torch, device: str):
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _pick_dtype(torch, dtype: str, device):
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32  # half precision on CPU is slow and changes greedy choices


def _generator(torch, req: GenRequest):
    if req.temperature <= 0:
        return None
    g = torch.Generator()  # sampling happens on the CPU: same seed, same draws on any device
    if req.seed is None:
        g.seed()
    else:
        g.manual_seed(int(req.seed))
    return g


def _pick(torch, logits, req: GenRequest, gen) -> int:
    if gen is None:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.cpu().double() / req.temperature, dim=-1)
    if req.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        # keep the smallest prefix whose mass reaches top_p (at least one token)
        keep = int(torch.searchsorted(sorted_p.cumsum(0), torch.tensor(req.top_p, dtype=sorted_p.dtype))) + 1
        probs = torch.zeros_like(probs).scatter_(0, order[:keep], sorted_p[:keep])
        probs /= probs.sum()
    return int(torch.multinomial(probs, 1, generator=gen))


def _weights_sha256(source: str, gguf_file: str | None):
    folder = Path(source)
    if gguf_file:
        return _sha256(folder / gguf_file) if (folder / gguf_file).is_file() else None
    if not folder.is_dir():
        return None  # a hub id: the revision is the provenance, not a file hash
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pt"))
    return {p.name: _sha256(p) for p in files} or None
