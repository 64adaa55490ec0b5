"""Reading what OpenAI-compatible servers put on the wire: generated ids and per-token
log-probabilities, in each server's spelling."""
from __future__ import annotations

import math

# One generated token as a server reports it: (id or None, text or None, top-k entries
# (id or None, text or None, logprob), the sampled token's own entry included).
Step = tuple[int | None, str | None, list[tuple[int | None, str | None, float]]]


def ids_from_choice(choice: dict) -> list[int] | None:
    """Generated ids, wherever this server puts them; None if it gives only text."""
    for key in ("token_ids", "response_token_ids", "output_token_ids", "output_ids"):
        if isinstance(choice.get(key), list):
            return [int(t) for t in choice[key]]
    lp = choice.get("logprobs") or {}
    toks = lp.get("tokens") if isinstance(lp, dict) else None
    if toks and all(isinstance(t, str) and t.startswith("token_id:") for t in toks):
        return [int(t.split(":", 1)[1]) for t in toks]
    content = lp.get("content") if isinstance(lp, dict) else None
    if content and all(isinstance(c, dict) and "id" in c for c in content):
        return [int(c["id"]) for c in content]
    return None


def text_of(token: object) -> str | None:
    """A special token as servers describe it: its text, or {"content": text}."""
    token = token.get("content") if isinstance(token, dict) else token
    return token if isinstance(token, str) and token else None


def split_token(token: object) -> tuple[int | None, str | None]:
    """vLLM's `return_tokens_as_token_ids` spells tokens "token_id:N"; others give their text."""
    if isinstance(token, str) and token.startswith("token_id:") and token[9:].lstrip("-").isdigit():
        return int(token[9:]), None
    return None, token if isinstance(token, str) else None


def completion_steps(lp: object) -> list[Step]:
    """Per-token log-probabilities of an OpenAI /v1/completions choice (vLLM, SGLang, others):
    `tokens`, `token_logprobs`, `top_logprobs` (a {token: logprob} per token), or a chat-style
    `content` list."""
    if not isinstance(lp, dict):
        return []
    steps: list[Step] = []
    content = lp.get("content")
    if isinstance(content, list):
        for c in content:
            if not isinstance(c, dict):
                return []
            tid, text = split_token(c.get("token"))
            entries = [(*split_token(t.get("token")), t.get("logprob")) for t in c.get("top_logprobs") or []
                       if isinstance(t, dict)]
            steps.append((tid, text, [*entries, (tid, text, c.get("logprob"))]))  # type: ignore[list-item]
        return steps
    tokens, tops, own = lp.get("tokens"), lp.get("top_logprobs"), lp.get("token_logprobs")
    if not isinstance(tokens, list):
        return []
    for i, token in enumerate(tokens):
        tid, text = split_token(token)
        top = tops[i] if isinstance(tops, list) and i < len(tops) and isinstance(tops[i], dict) else {}
        entries = [(*split_token(k), v) for k, v in top.items()]
        if isinstance(own, list) and i < len(own):
            entries.append((tid, text, own[i]))
        steps.append((tid, text, entries))  # type: ignore[arg-type]
    return steps


def llama_server_steps(probs: object) -> list[Step]:
    """llama-server's `completion_probabilities`: {id, token, logprob, top_logprobs: [...]} per
    token (older builds: {content, probs: [{tok_str, prob}]}, probabilities)."""
    if not isinstance(probs, list):
        return []
    steps: list[Step] = []
    for e in probs:
        if not isinstance(e, dict):
            return []
        if "top_logprobs" in e:
            entries = [(t.get("id"), t.get("token"), t.get("logprob")) for t in e["top_logprobs"] or []
                       if isinstance(t, dict)]
            entries.append((e.get("id"), e.get("token"), e.get("logprob")))
            steps.append((e.get("id"), e.get("token"), entries))  # type: ignore[arg-type]
        else:
            entries = [(None, t.get("tok_str"), math.log(t["prob"]) if t.get("prob", 0) > 0 else -math.inf)
                       for t in e.get("probs") or [] if isinstance(t, dict)]
            steps.append((None, e.get("content"), entries))  # type: ignore[arg-type]
    return steps
