"""vLLM in process: the fast path on a GPU.

Requests go straight to vLLM's scheduler (`LLM.llm_engine`: `add_request`, then `step`
until they finish), so every request that is ready is in vLLM's continuous batch at once
and a finished sequence's place is taken at the next step, exactly as `vllm serve` does.
vLLM reports the ids it generated, so budgets stay exact. It is an optional extra
(`pip install 'm1[vllm]'`) and is imported only when this engine is built. Option-letter
log-probabilities (engines/probes.py) come from vLLM's logprobs: the top `probes.TOP_K` tokens of the
answer position (raw model distribution) plus the sampled one.
"""
from __future__ import annotations

import heapq
import itertools
from importlib import metadata
from typing import Sequence

from m1.engines import probes
from m1.engines.base import OPEN_PER_REQUEST_WITH_PREFIX_CACHE, GenRequest, GenResult, SteppedEngine
from m1.engines.stops import locate_stop
from m1.engines.tokenizers import HFTokenizer
from m1.errors import M1Error


def build_sampling_kwargs(req: GenRequest) -> dict:
    """`SamplingParams` keyword arguments for one request (pure: testable without vLLM)."""
    greedy = req.temperature <= 0
    extra = {"logprobs": probes.TOP_K} if req.option_letters else {}  # option-letter log-probabilities
    return {
        **extra,
        "n": 1,
        "max_tokens": req.max_new_tokens,
        "temperature": 0.0 if greedy else float(req.temperature),
        "top_p": 1.0 if greedy else float(req.top_p),
        # vLLM's own defaults, spelled out: only temperature and top_p shape sampling,
        # as in the other engines.
        "top_k": -1,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "seed": req.seed,
        "stop_token_ids": list(req.stop_token_ids),
        "stop": list(req.stop_strings),
        # Keep the text faithful to the ids: the stop string stays in, special tokens
        # are rendered, and no spaces are invented around them.
        "include_stop_str_in_output": True,
        "skip_special_tokens": False,
        "spaces_between_special_tokens": False,
        "detokenize": True,  # stop strings are matched on text
    }


class VLLMEngine(SteppedEngine):
    name = "vllm"

    def __init__(self, model: str, tensor_parallel_size: int = 1, dtype: str = "auto",
                 gpu_memory_utilization: float = 0.9, max_model_len: int | None = None,
                 max_num_seqs: int = 256, enable_prefix_caching: bool = True,
                 trust_remote_code: bool = False):
        try:
            import vllm
        except ImportError:
            raise M1Error("engine 'vllm' needs vLLM, which is not installed: pip install 'm1[vllm]' "
                          "(a GPU machine), or use --engine llamacpp / hf") from None
        if not model:
            raise M1Error("engine 'vllm' needs a model: pass --model with a hub id or a local folder")
        self._vllm = vllm
        self.model = model
        self.options = {"tensor_parallel_size": tensor_parallel_size, "dtype": dtype,
                        "gpu_memory_utilization": gpu_memory_utilization, "max_model_len": max_model_len,
                        "max_num_seqs": max_num_seqs, "enable_prefix_caching": enable_prefix_caching}
        try:
            # Prefix caching: the answers after a thinking phase reuse its KV blocks.
            self._llm = vllm.LLM(model=model, tensor_parallel_size=tensor_parallel_size, dtype=dtype,
                                 gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                                 max_num_seqs=max_num_seqs, enable_prefix_caching=enable_prefix_caching,
                                 trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise M1Error(f"vLLM could not load {model}: {first}; check the model id or path") from None
        extra_eos: list[int] = []
        try:  # instruct models often end turns on a second id listed in generation_config
            from transformers import GenerationConfig

            eos = GenerationConfig.from_pretrained(model).eos_token_id
            extra_eos = eos if isinstance(eos, list) else [eos] if eos is not None else []
        except Exception:
            pass
        self.tok = HFTokenizer(self._llm.get_tokenizer(), model, extra_eos)
        self._running: dict[str, tuple[object, GenRequest]] = {}  # vLLM request id -> (token, request)
        self._partial: dict[str, list[int]] = {}  # running request id -> ids generated so far
        # Requests past max_num_seqs wait here, not in vLLM's first-come queue, so that the
        # lowest GenRequest.priority starts first; with prefix caching a paused question
        # costs nothing, so more questions are kept started than run (base.open_questions).
        self._waiting: list[tuple[int, int, object, GenRequest]] = []
        self.open_questions = max_num_seqs * (OPEN_PER_REQUEST_WITH_PREFIX_CACHE if enable_prefix_caching else 1)
        self._ids = itertools.count()
        self._letter_ids: dict[tuple[str, ...], dict[str, tuple[int, ...]]] = {}
        self._start_queue(max_num_seqs)

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
        versions = {}
        for pkg in ("vllm", "torch", "transformers"):
            try:
                versions[pkg] = metadata.version(pkg)
            except metadata.PackageNotFoundError:
                pass
        return {"engine": self.name, "model": self.model, **self.options, "versions": versions}

    # -- generation (on the worker thread, see SteppedEngine) --------------------------
    def _advance(self, new):
        engine = self._llm.llm_engine
        for req, token in new:
            heapq.heappush(self._waiting, (req.priority, next(self._ids), token, req))
        while self._waiting and len(self._running) < self.capacity:
            _, n, token, req = heapq.heappop(self._waiting)
            rid = f"m1-{n}"
            self._running[rid] = (token, req)
            engine.add_request(rid, {"prompt_token_ids": list(req.prompt_ids)},
                               self._vllm.SamplingParams(**build_sampling_kwargs(req)))
        self.meter.set(min(len(self._running), self.capacity))
        finished: list[tuple[object, GenResult]] = []
        if not self._running:
            return finished
        for out in engine.step():
            if out.request_id not in self._running:
                continue
            if not out.finished:
                self._partial[out.request_id] = out.outputs[0].token_ids  # cumulative (for streaming)
                continue
            self._partial.pop(out.request_id, None)
            token, req = self._running.pop(out.request_id)
            letters = tuple(req.option_letters)
            if letters and letters not in self._letter_ids:
                self._letter_ids[letters] = probes.letter_token_ids(self.tokenize, letters)
            result = to_result(out.outputs[0], req, self.detokenize, self._letter_ids.get(letters))
            self.meter.count(generated=len(result.token_ids), requests=1)
            finished.append((token, result))
        self.meter.set(min(len(self._running), self.capacity))
        return finished

    def _abandon(self) -> None:
        if self._running and self._llm is not None:
            self._llm.llm_engine.abort_request(list(self._running))
        self._running.clear()
        self._waiting.clear()
        self._partial.clear()
        self.meter.set(0)

    def _drop(self, gone) -> None:
        rids = [rid for rid, (token, _) in self._running.items() if token in gone]
        if rids and self._llm is not None:
            self._llm.llm_engine.abort_request(rids)  # frees its KV blocks at once
        for rid in rids:
            del self._running[rid]
            self._partial.pop(rid, None)
        self._waiting = [w for w in self._waiting if w[2] not in gone]
        heapq.heapify(self._waiting)

    def _progress(self, sent):
        out = {}
        for rid, (token, _) in self._running.items():
            ids = self._partial.get(rid)
            if token in sent and ids is not None and len(ids) > sent[token]:
                out[token] = list(ids[sent[token]:])
        return out

    def close(self) -> None:
        self._close_worker()
        self._llm = None


def to_result(out, req: GenRequest, detokenize, letter_ids: probes.LetterIds | None = None) -> GenResult:
    """Map a vLLM `CompletionOutput` to a GenResult (ids are vLLM's own: exact); with
    `letter_ids` (the request's option letters' token ids) their log-probabilities from `out.logprobs`."""
    ids = list(out.token_ids)
    if out.finish_reason != "stop":  # "length" (or "abort": treated as a cut-off)
        result = GenResult(ids, out.text, "length", len(ids))
    else:
        reason = out.stop_reason  # int: a stop token id; str: a stop string; None: EOS
        if reason is None:
            reason = ids[-1] if ids else None
        idx = locate_stop(ids, reason, detokenize) if reason is not None else None
        if idx is None:  # cannot happen with include_stop_str_in_output; stay safe
            idx = max(len(ids) - 1, 0)
        result = GenResult(ids, out.text, "stop", idx, matched_stop=reason)
    if req.option_letters and letter_ids is not None and getattr(out, "logprobs", None):
        pos = probes.find_position((detokenize([t]) for t in ids), req.option_letters, result.stop_index)
        if pos is not None and pos < len(out.logprobs) and out.logprobs[pos]:
            top = out.logprobs[pos]  # {token id: Logprob}: the top-k and the sampled token
            got = probes.from_top(((int(t), None, getattr(lp, "logprob", lp)) for t, lp in top.items()), letter_ids)
            result.option_position, result.option_logprobs = pos, got
    return result
