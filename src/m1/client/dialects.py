"""How each kind of OpenAI-compatible server is spoken to: one small object per kind.

  vllm, sglang        /v1/completions with the prompt as token ids; the generated ids come back
                      (`return_token_ids`, or logprobs as `token_id:N`). Exact.
  llama-server        its native /completion with the prompt as token ids and `return_tokens`:
                      every sampled id, EOS and stop tokens included. Exact.
  llama-cpp-python    text only: /v1/completions takes no token-id prompt. The generated ids are
  generic             recovered by the engine from the returned text ("retokenized").

A dialect says how to send a request (`completion`), how to read one back (`read`), how to ask
the server for tokenization, its chat template, its EOS and its slots. It holds no connection:
every method is given the `Client` of the replica it talks to. Everything that differs between
server kinds lives here, so the engine has no branch on the kind.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m1.client import wire
from m1.client.http import Client, RequestFailed
from m1.engines import probes
from m1.engines.base import GenRequest
from m1.errors import M1Error


@dataclass
class Completion:
    """A completion as the engine needs it, whatever the server: exact ids where it gave them
    (else only `text`), why it ended, which stop it names, and per-token log-probabilities."""

    ids: list[int] | None
    text: str
    finish: str | None  # "stop" | "length" | None
    hint: Any = None  # the stop the server says fired (an id or a string), if it says
    steps: list[wire.Step] = field(default_factory=list)
    completion_tokens: int | None = None  # the server's own count (usage), where given
    prompt_evaluated: int | None = None  # prompt tokens it had to evaluate (not cached), where given


class Generic:
    """Any OpenAI-compatible server: text prompts on /v1/completions, no tokenizer endpoints."""

    kind = "generic"
    exact = False  # ids come back exactly as sampled
    prompt_ids = False  # the prompt goes as token ids (else as its text)
    prefix_cached = False  # finished requests' KV stays in a shared prefix cache
    default_capacity = 64  # requests worth keeping in flight when `concurrency` is not given
    top_k = 5  # log-probabilities per token asked for an option-letter probe (OpenAI's cap)

    def capacity(self, client: Client) -> int:
        return self.default_capacity

    def local_tokenizer(self, model: str) -> str | None:
        """A tokenizer file on this machine to use instead of the server's endpoints, if any."""
        return None

    def tokenize(self, client: Client, model: str, text: str, add_special: bool) -> list[int]:
        raise M1Error(f"the server at {client.base_url} has no tokenize endpoint m1 knows; "
                      "pass tokenizer=<HF tokenizer folder or the model's .gguf file>")

    def detokenize(self, client: Client, model: str, ids: list[int]) -> str:
        raise M1Error(f"the server at {client.base_url} has no detokenize endpoint m1 knows; "
                      "pass tokenizer=<HF tokenizer folder or the model's .gguf file>")

    def bos_id(self, client: Client, model: str) -> int | None:
        ids = self.tokenize(client, model, "", add_special=True)
        return ids[0] if ids else None

    def render_chat(self, client: Client, model: str, messages: list[dict]) -> str | None:
        return None

    def eos_text(self, client: Client) -> str | None:
        return None

    def describe(self, client: Client) -> dict:
        return {}

    def sampling(self, req: GenRequest) -> dict:
        greedy = req.temperature <= 0
        body: dict[str, Any] = {"temperature": 0.0 if greedy else float(req.temperature),
                                "top_p": 1.0 if greedy else float(req.top_p)}
        if req.seed is not None:
            body["seed"] = int(req.seed)
        return body

    def completion(self, model: str, req: GenRequest, prompt: list[int] | str, stops: list[str],
                   top_k: int | None) -> tuple[str, bool, dict]:
        """(path, at the server's root?, body) of the request for `req`."""
        body = {"model": model, "prompt": prompt, "max_tokens": req.max_new_tokens, "stop": stops or None,
                **self.sampling(req)}
        if top_k:
            body["logprobs"] = top_k
        return "/completions", False, body

    def read(self, resp: dict) -> Completion:
        choice = resp["choices"][0]
        return Completion(wire.ids_from_choice(choice), choice.get("text") or "", choice.get("finish_reason"),
                          choice.get("stop_reason", choice.get("matched_stop")),
                          wire.completion_steps(choice.get("logprobs")),
                          (resp.get("usage") or {}).get("completion_tokens"))


class LlamaCppPython(Generic):
    """llama-cpp-python's server: one request at a time, /extras/tokenize (which always adds BOS)."""

    kind = "llama-cpp-python"
    default_capacity = 2
    top_k = probes.TOP_K

    def __init__(self):
        self._bos: int | None | bool = False  # False: not asked yet

    def local_tokenizer(self, model):
        # its detokenize drops special tokens; on the same machine, read the served file's vocabulary
        return model if model.endswith(".gguf") and Path(model).is_file() else None

    def tokenize(self, client, model, text, add_special):
        ids = list(client.post("/extras/tokenize", {"input": text}, root=True)["tokens"])
        if add_special:
            return ids
        bos = self.bos_id(client, model)
        return ids[1:] if bos is not None and ids[:1] == [bos] else ids

    def bos_id(self, client, model):
        if self._bos is False:
            empty = client.post("/extras/tokenize", {"input": ""}, root=True)["tokens"]
            self._bos = empty[0] if empty else None
        return self._bos

    def detokenize(self, client, model, ids):
        return client.post("/extras/detokenize", {"tokens": ids}, root=True)["text"]

    def completion(self, model, req, prompt, stops, top_k):
        path, root, body = super().completion(model, req, prompt, stops, top_k)
        body.update(top_k=0, min_p=0.0, repeat_penalty=1.0)  # its defaults: top_k 40, min_p 0.05, 1.1
        return path, root, body


class VLLM(Generic):
    """vLLM: token-id prompts, ids back, a shared prefix cache, hundreds of sequences per batch."""

    kind = "vllm"
    exact = prompt_ids = prefix_cached = True
    default_capacity = 256  # vLLM's and SGLang's max_num_seqs / max_running_requests on a GPU
    top_k = probes.TOP_K

    def tokenize(self, client, model, text, add_special):
        out = client.post("/tokenize", {"model": model, "prompt": text, "add_special_tokens": add_special}, root=True)
        return list(out["tokens"])

    def detokenize(self, client, model, ids):
        return client.post("/detokenize", {"model": model, "tokens": ids}, root=True)["prompt"]

    def render_chat(self, client, model, messages):
        out = client.probe("POST", "/tokenize", {"model": model, "messages": messages, "add_generation_prompt": True,
                                                 "add_special_tokens": False})
        return self.detokenize(client, model, out["tokens"]) if out and "tokens" in out else None

    def eos_text(self, client):
        return wire.text_of((client.probe("GET", "/tokenizer_info") or {}).get("eos_token"))

    def describe(self, client):
        return {"server_version": (client.probe("GET", "/version") or {}).get("version")}

    def completion(self, model, req, prompt, stops, top_k):
        body = {"model": model, "prompt": prompt, "max_tokens": req.max_new_tokens, "stop": stops,
                "stop_token_ids": list(req.stop_token_ids), "skip_special_tokens": False,
                "spaces_between_special_tokens": False, "return_token_ids": True, **self.sampling(req)}
        body.update(self.keep_stop())
        if top_k:
            body["logprobs"] = top_k
        return "/completions", False, body

    def keep_stop(self) -> dict:
        # the stop stays in the text; older vLLM gives ids only through logprobs as token_id:N
        return {"include_stop_str_in_output": True, "logprobs": 0, "return_tokens_as_token_ids": True}


class SGLang(VLLM):
    kind = "sglang"

    def describe(self, client):
        return {}

    def keep_stop(self):
        return {"no_stop_trim": True}  # SGLang's name for keeping the stop


class LlamaServer(Generic):
    """llama.cpp's llama-server: its native /completion, a prompt cache per slot (not shared)."""

    kind = "llama-server"
    exact = prompt_ids = True
    default_capacity = 8
    top_k = probes.TOP_K

    def __init__(self):
        self._props: dict[str, dict] = {}

    def props(self, client: Client) -> dict:
        if client.root not in self._props:
            self._props[client.root] = client.probe("GET", "/props") or {}
        return self._props[client.root]

    def capacity(self, client):
        slots = self.props(client).get("total_slots")
        return slots if isinstance(slots, int) and slots > 0 else self.default_capacity

    def tokenize(self, client, model, text, add_special):
        out = client.post("/tokenize", {"content": text, "add_special": add_special, "parse_special": True}, root=True)
        return [t["id"] if isinstance(t, dict) else t for t in out["tokens"]]

    def detokenize(self, client, model, ids):
        return client.post("/detokenize", {"tokens": ids}, root=True)["content"]

    def render_chat(self, client, model, messages):
        out = client.probe("POST", "/apply-template", {"messages": messages})
        return out["prompt"] if out and "prompt" in out else None

    def eos_text(self, client):
        return wire.text_of(self.props(client).get("eos_token"))

    def describe(self, client):
        return {"server_build": self.props(client).get("build_info")}

    def completion(self, model, req, prompt, stops, top_k):
        body = {"prompt": prompt, "n_predict": req.max_new_tokens, "stop": stops, "return_tokens": True,
                "cache_prompt": True,
                # only temperature and top_p shape sampling, as in the other engines
                "top_k": 0, "min_p": 0.0, "typical_p": 1.0, "repeat_penalty": 1.0, **self.sampling(req)}
        if top_k:  # top_logprobs of every generated token, from the full distribution
            body.update(n_probs=top_k, post_sampling_probs=False)
        return "/completion", True, body

    def read(self, resp):
        ids = resp.get("tokens") or [p["id"] for p in resp.get("completion_probabilities") or []]
        stop_type = resp.get("stop_type")
        hint = resp.get("stopping_word") or (ids[-1] if stop_type == "eos" and ids else None)
        evaluated = (resp.get("timings") or {}).get("prompt_n")
        return Completion(list(ids) or None,  # a build without return_tokens: only text came back
                          resp.get("content", ""), "length" if stop_type in ("limit", "none", None) else "stop",
                          hint, wire.llama_server_steps(resp.get("completion_probabilities")), None,
                          evaluated if isinstance(evaluated, int) else None)


DIALECTS: dict[str, type[Generic]] = {d.kind: d for d in (VLLM, SGLang, LlamaServer, LlamaCppPython, Generic)}
SERVERS = tuple(DIALECTS)
_OWNERS = {"vllm": "vllm", "sglang": "sglang", "llamacpp": "llama-server"}  # /v1/models owned_by


def detect(client: Client, owner: str | None) -> str:
    """The kind of server behind `client`: from /v1/models' owned_by, else by the endpoints it has."""
    if owner in _OWNERS:
        return _OWNERS[owner]
    props = client.probe("GET", "/props")
    if props and "default_generation_settings" in props:
        return "llama-server"
    if client.probe("POST", "/extras/tokenize", {"input": "a"}) is not None:
        return "llama-cpp-python"
    return "generic"


def refused(e: RequestFailed) -> bool:
    """A server's HTTP error (not a timeout or a lost connection): it does not do what was asked."""
    return e.cause.isdigit()
