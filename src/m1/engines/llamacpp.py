"""The embedded default engine: llama.cpp in process, any GGUF file.

Several sequences share each decode step (one llama.cpp context, one KV-cache slot
per sequence). A slot keeps its KV cache after a request ends, and the next request
goes to the slot whose cached tokens share the longest prefix with its prompt, so the
answer phase after a long thinking phase only evaluates the few new tokens.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from m1.engines import probes
from m1.engines.base import FinishReason, GenRequest, GenResult, SteppedEngine, StopMatcher, common_prefix
from m1.errors import M1Error
from m1.models import embedded_model_path as embedded_model_path  # defined in m1.models; tests and bench import it here
from m1.models import resolve_model


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class _Queued:
    request: GenRequest
    token: object  # handed back with the result
    prompt: list[int]  # the prompt as a list, for prefix comparisons
    order: int


@dataclass
class _LetterLogprobs:
    """A request's option-letter log-probabilities (engines/probes.py): filled at the answer position."""

    letters: tuple[str, ...]
    ids: dict[str, tuple[int, ...]]  # each letter's single-token spellings
    position: int | None = None
    logprobs: dict[str, float] | None = None


@dataclass
class _Active:
    token: object
    request: GenRequest
    to_feed: list[int]  # tokens still to evaluate before sampling
    matcher: StopMatcher
    rng: np.random.Generator | None
    generated: list[int] = field(default_factory=list)
    letter_logprobs: _LetterLogprobs | None = None


# ggml's CPU backend serves K-quant matrix products (Q4_K, Q6_K, ...) of 8 rows or more
# with a tiled kernel and smaller ones with per-row dot products; the two round
# differently, so with K-quant weights (Qwen2.5's Q4_K_M mixes: ffn_down is Q6_K) a
# sequence's tokens would depend on how many rows its batch mates add. ggml reads this
# switch once per process, at its first product, so it is set before anything is
# computed; a value the user set is kept (and recorded by describe()). Measured: the
# plain kernels cost no speed here (bench numbers in the README).
TILED_MM = "GGML_CPU_TILED_MM"


def _llama_cpp():
    os.environ.setdefault(TILED_MM, "0")
    try:
        import llama_cpp
    except ImportError:
        raise M1Error("llama-cpp-python is not installed: pip install llama-cpp-python") from None
    return llama_cpp


class GGUFTokenizer:
    """A GGUF model's tokenizer and chat template through llama.cpp.

    With `vocab_only` no weights are loaded: what the openai engine uses to build
    prompts for a server that serves the same file.
    """

    def __init__(self, path: str | Path, vocab_only: bool = False, verbose: bool = False):
        lc = self._lc = _llama_cpp()
        self.path = Path(path)
        if not self.path.is_file():
            raise M1Error(f"model file not found: {self.path} (pass --model PATH to a .gguf file)")
        # llama.cpp keeps one process-wide log callback; it must outlive every engine.
        lc.llama_log_set(_log_callback(lc, verbose), ctypes.c_void_p(0))
        lc.llama_backend_init()
        params = lc.llama_model_default_params()
        params.vocab_only = vocab_only
        if hasattr(params, "use_extra_bufts"):
            # Runtime weight repacking (ggml's CPU "extra buffers") crashed multi-token
            # decodes on an AVX-512 machine of ours; the plain kernels are exact everywhere.
            params.use_extra_bufts = False
        self._model = lc.llama_model_load_from_file(str(self.path).encode(), params)
        if not self._model:
            raise M1Error(f"llama.cpp could not load {self.path}: is it a GGUF model file?")
        self._vocab = lc.llama_model_get_vocab(self._model)
        self.n_vocab = lc.llama_vocab_n_tokens(self._vocab)
        self._pieces: dict[int, bytes] = {}

    def tokenize(self, text: str) -> list[int]:
        data = text.encode("utf-8")
        n_max = len(data) + 8  # never fewer bytes than tokens
        buf = (self._lc.llama_token * n_max)()
        n = self._lc.llama_tokenize(self._vocab, data, len(data), buf, n_max, False, True)
        return list(buf[:n])

    def encode_prompt(self, text: str) -> list[int]:
        ids = self.tokenize(text)
        bos = self._lc.llama_vocab_bos(self._vocab)
        if self._lc.llama_vocab_get_add_bos(self._vocab) and bos >= 0 and (not ids or ids[0] != bos):
            ids = [bos] + ids
        return ids

    def _piece(self, token: int) -> bytes:
        if token not in self._pieces:
            buf = ctypes.create_string_buffer(64)
            n = self._lc.llama_token_to_piece(self._vocab, token, buf, 64, 0, True)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = self._lc.llama_token_to_piece(self._vocab, token, buf, -n, 0, True)
            self._pieces[token] = buf.raw[:n]
        return self._pieces[token]

    def detokenize(self, ids: Sequence[int]) -> str:
        return b"".join(self._piece(t) for t in ids).decode("utf-8", errors="replace")

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        lc, v = self._lc, self._vocab
        return tuple(dict.fromkeys(t for t in (lc.llama_vocab_eos(v), lc.llama_vocab_eot(v)) if t >= 0))

    @property
    def bos_token_id(self) -> int | None:
        bos = self._lc.llama_vocab_bos(self._vocab)
        return bos if bos >= 0 and self._lc.llama_vocab_get_add_bos(self._vocab) else None

    def _meta(self, key: str) -> str | None:
        size = 1 << 16
        buf = ctypes.create_string_buffer(size)
        n = self._lc.llama_model_meta_val_str(self._model, key.encode(), buf, size)
        if n < 0:
            return None
        if n >= size:
            buf = ctypes.create_string_buffer(n + 1)
            self._lc.llama_model_meta_val_str(self._model, key.encode(), buf, n + 1)
        return buf.value.decode("utf-8", errors="replace")

    def render_chat(self, messages: list[dict]) -> str:
        from m1.engines.chat import render_template

        lc, v = self._lc, self._vocab
        bos, eos = lc.llama_vocab_bos(v), lc.llama_vocab_eos(v)
        return render_template(self._meta("tokenizer.chat_template"), messages,
                               bos_token=self.detokenize([bos]) if bos >= 0 else "",
                               eos_token=self.detokenize([eos]) if eos >= 0 else "")

    def close(self) -> None:
        if getattr(self, "_model", None):
            self._lc.llama_model_free(self._model)
            self._model = None

    def __del__(self):
        try:
            self.close()
        except (TypeError, AttributeError):  # at interpreter exit llama_cpp may be torn down first
            pass


# A request waits for the busy slot that holds its context when that saves evaluating more
# than this many tokens elsewhere (the answers of a question after its thinking).
AFFINITY_MARGIN = 16


class LlamaCppEngine(SteppedEngine, GGUFTokenizer):
    """Continuous batching over `n_slots` KV-cache slots.

    Requests are admitted into free slots between decode steps. A request goes to the
    slot whose cache shares the longest prefix with it, and waits for a busy slot whose
    cache shares much more than any free one (so the answers after a thinking phase run
    one after another in its slot, each evaluating only its few new tokens)."""

    name = "llamacpp"

    def __init__(self, model: str | None = None, n_slots: int = 8, ctx_per_slot: int = 4096,
                 n_batch: int = 512, n_threads: int | None = None, verbose: bool = False,
                 batch_invariant: bool = False):
        super().__init__(resolve_model(model), verbose=verbose)  # a file, or a name `m1 models` lists
        lc = self._lc
        self.n_slots, self.n_batch, self.batch_invariant = n_slots, n_batch, batch_invariant
        self.ctx_per_slot = ctx_per_slot
        params = lc.llama_context_default_params()
        params.n_ctx = n_slots * ctx_per_slot
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = n_slots
        # One KV stream per slot and no flash attention: a sequence's numbers then do not
        # depend on where its cells sit or on how its prompt was split into batches, so
        # reusing a cached prefix gives the same tokens as evaluating it afresh.
        params.kv_unified = False
        params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
        params.n_threads = params.n_threads_batch = n_threads or os.cpu_count() or 1
        self._ctx = lc.llama_init_from_model(self._model, params)
        if not self._ctx:
            raise M1Error(f"llama.cpp could not create a context of {params.n_ctx} tokens; "
                          "lower ctx_per_slot or n_slots")
        self._mem = lc.llama_get_memory(self._ctx)
        self._batch = lc.llama_batch_init(n_batch, 0, 1)
        self._slot_tokens: list[list[int]] = [[] for _ in range(n_slots)]  # what each slot's KV holds
        self._pending: list[_Queued] = []
        self._active: dict[int, _Active] = {}
        self._order = 0
        self._letter_ids: dict[tuple[str, ...], dict[str, tuple[int, ...]]] = {}
        self._start_queue(n_slots)
        self._sha256: str | None = None
        # llamafile's sgemm serves multi-row matmuls, vec_dot single rows: the two round
        # differently, so with it compiled in a sequence's tokens depend on its batch mates.
        self.llamafile = b"LLAMAFILE = 1" in lc.llama_print_system_info()

    def describe(self) -> dict:
        if self._sha256 is None:
            self._sha256 = file_sha256(self.path)
        return {"engine": self.name, "model": str(self.path), "model_sha256": self._sha256,
                "llama_cpp_python": getattr(self._lc, "__version__", "?"),
                "n_slots": self.n_slots, "capacity": self.capacity, "ctx_per_slot": self.ctx_per_slot,
                "batch_invariant": self.batch_invariant, "llamafile_kernels": self.llamafile,
                "tiled_kquant_kernels": os.environ.get(TILED_MM) != "0"}

    # -- generation (all on the worker thread, see SteppedEngine) ------------------------
    def check_request(self, r: GenRequest) -> None:
        if len(r.prompt_ids) + r.max_new_tokens > self.ctx_per_slot:
            raise M1Error(f"a request needs {len(r.prompt_ids) + r.max_new_tokens} tokens of context but a slot "
                          f"holds {self.ctx_per_slot}; raise --engine-opt ctx_per_slot=N or lower the budget")
        if not r.prompt_ids:
            raise M1Error("empty prompt")

    def _advance(self, new):
        for req, token in new:
            self._pending.append(_Queued(req, token, list(req.prompt_ids), self._order))
            self._order += 1
        self._admit()
        finished: list[tuple[object, GenResult]] = []
        if not self._active:
            return finished
        # llama.cpp's CPU kernels round differently when other sequences share the
        # batch, so a greedy near-tie can flip with batch composition. Batch-invariant
        # mode decodes each sequence on its own: slower, but reproducible whatever runs
        # beside it (what exact comparisons between sweep methods need).
        active = self._active
        groups = [[s] for s in list(active)] if self.batch_invariant else [list(active)]
        for group in groups:
            for slot, state in self._step({s: active[s] for s in group}):
                done = self._finish(slot, state)
                if done is not None:
                    finished.append(done)
        self.meter.set(len(active))
        return finished

    def clear_cache(self) -> None:
        """Forget every slot's cached prefix (between measurements; call with nothing in flight)."""
        def clear():
            for slot in range(self.n_slots):
                self._lc.llama_memory_seq_rm(self._mem, slot, 0, -1)
                self._slot_tokens[slot].clear()
        self._worker.submit(clear).result()

    def _abandon(self) -> None:
        self._pending.clear()
        self._active.clear()
        self.meter.set(0)

    def _drop(self, gone) -> None:
        # The slot's cache keeps what was evaluated (_slot_tokens says what): a later request
        # sharing that prefix still reuses it.
        self._pending = [q for q in self._pending if q.token not in gone]
        for slot in [s for s, st in self._active.items() if st.token in gone]:
            del self._active[slot]
        self.meter.set(len(self._active))

    def _progress(self, sent):
        return {st.token: st.generated[sent[st.token]:] for st in self._active.values()
                if st.token in sent and len(st.generated) > sent[st.token]}

    def _admit(self) -> None:
        """Fill free slots: the (slot, request) pair sharing the longest cached prefix first,
        then the request of lowest priority (GenRequest.priority), then the oldest."""
        free = [s for s in range(self.n_slots) if s not in self._active]
        while free and self._pending:
            best = None
            for q in self._pending:
                shared, here = max((common_prefix(self._slot_tokens[s], q.prompt), -s) for s in free)
                here = -here
                elsewhere = max((common_prefix(self._slot_tokens[t], q.prompt) for t in self._active), default=0)
                if elsewhere > shared + AFFINITY_MARGIN:
                    continue  # its context is in a busy slot: wait for it
                if best is None or (shared, -q.request.priority, -q.order) > \
                        (best[0], -best[2].request.priority, -best[2].order):
                    best = (shared, here, q)
            if best is None:
                break
            shared, slot, q = best
            self._pending.remove(q)
            free.remove(slot)
            self._active[slot] = self._start(slot, q, shared)
        self.meter.set(len(self._active))

    def _start(self, slot: int, q: _Queued, shared: int) -> _Active:
        req = q.request
        # Keep at least the last prompt token to evaluate: its logits start generation.
        keep = min(shared, len(q.prompt) - 1)
        self._lc.llama_memory_seq_rm(self._mem, slot, keep, -1)
        del self._slot_tokens[slot][keep:]
        rng = np.random.default_rng(req.seed) if req.temperature > 0 else None
        matcher = StopMatcher(req.stop_token_ids, req.stop_strings, self.detokenize)
        self.meter.count(context=len(q.prompt) - keep, requests=1)
        letter_lp = None
        if req.option_letters:
            letters = tuple(req.option_letters)
            if letters not in self._letter_ids:
                self._letter_ids[letters] = probes.letter_token_ids(self.tokenize, letters)
            letter_lp = _LetterLogprobs(letters, self._letter_ids[letters])
        return _Active(q.token, req, q.prompt[keep:], matcher, rng, letter_logprobs=letter_lp)

    def _step(self, active: dict[int, _Active]):
        """One llama_decode over every active slot; yields (slot, state) that sampled a token."""
        b, lc = self._batch, self._lc
        b.n_tokens = 0
        sampling: list[tuple[int, int]] = []  # (slot, batch row)
        room = self.n_batch
        # Slots that are generating need one row each; give them priority over prompts.
        order = sorted(active, key=lambda s: len(active[s].to_feed))
        for slot in order:
            st = active[slot]
            take = st.to_feed[:room]
            if not take:
                continue
            for tok in take:
                pos = len(self._slot_tokens[slot])
                i = b.n_tokens
                b.token[i], b.pos[i], b.n_seq_id[i] = tok, pos, 1
                b.seq_id[i][0] = slot
                b.logits[i] = 0
                self._slot_tokens[slot].append(tok)
                b.n_tokens += 1
            del st.to_feed[: len(take)]
            room -= len(take)
            if not st.to_feed:
                b.logits[b.n_tokens - 1] = 1
                sampling.append((slot, b.n_tokens - 1))
            if room == 0:
                break
        rc = lc.llama_decode(self._ctx, b)
        if rc != 0:
            raise M1Error(f"llama.cpp decode failed (code {rc}): the KV cache is full; "
                          "lower n_slots or raise ctx_per_slot")
        for slot, row in sampling:
            st = active[slot]
            logits = np.ctypeslib.as_array(lc.llama_get_logits_ith(self._ctx, row), shape=(self.n_vocab,))
            tok = _sample(logits, st.request, st.rng)
            st.generated.append(tok)
            letter_lp = st.letter_logprobs
            # Only requests that ask for option-letter log-probabilities do anything more, and only
            # until the answer position is found: reading this step's logits changes nothing decoded.
            if letter_lp is not None and letter_lp.position is None and probes.letter_of(
                    self._piece(tok).decode("utf-8", errors="replace"), letter_lp.letters) is not None:
                letter_lp.position = len(st.generated) - 1
                letter_lp.logprobs = probes.from_logits(logits, letter_lp.ids)
            self.meter.count(generated=1)
            yield slot, st

    def _finish(self, slot: int, st: _Active) -> tuple[object, GenResult] | None:
        tok = st.generated[-1]
        stop = st.matcher.push(tok)
        reason: FinishReason
        if stop is not None:
            reason, idx = "stop", st.matcher.stop_index
        elif len(st.generated) >= st.request.max_new_tokens:
            reason, idx = "length", len(st.generated)
        else:
            st.to_feed.append(tok)
            return None
        del self._active[slot]
        letter_lp = st.letter_logprobs
        found = letter_lp is not None and letter_lp.position is not None and letter_lp.position < idx
        return st.token, GenResult(token_ids=list(st.generated), text=self.detokenize(st.generated),
                                   finish_reason=reason, stop_index=idx, matched_stop=stop,
                                   option_logprobs=letter_lp.logprobs if found and letter_lp else None,
                                   option_position=letter_lp.position if found and letter_lp else None)

    def close(self) -> None:
        if getattr(self, "_ctx", None):
            self._close_worker()
            self._lc.llama_batch_free(self._batch)
            self._lc.llama_free(self._ctx)
            self._ctx = None
        super().close()


_LOG_CALLBACKS: dict[bool, object] = {}


def _log_callback(lc, verbose: bool):
    if verbose not in _LOG_CALLBACKS:
        def log(level, text, user_data):  # noqa: ARG001
            if verbose:
                os.write(2, text)

        _LOG_CALLBACKS[verbose] = lc.llama_log_callback(log)
    return _LOG_CALLBACKS[verbose]


def _sample(logits: np.ndarray, req: GenRequest, rng: np.random.Generator | None) -> int:
    if rng is None:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / req.temperature
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    if req.top_p < 1.0:
        order = np.argsort(-probs)
        keep = order[: int(np.searchsorted(np.cumsum(probs[order]), req.top_p)) + 1]
        mask = np.zeros_like(probs)
        mask[keep] = probs[keep]
        probs = mask / mask.sum()
    return int(rng.choice(len(probs), p=probs))
