"""`m1 serve`: the flags, the config layering (as `m1 eval`), and uvicorn."""
from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys

from m1.errors import M1Error

# ServeConfig fields whose flag has another name (the others' flags share the field's name)
_FLAG_DESTS = {"forcing_rounds": "forcing"}
_FLAG_NAMES = {"forcing_rounds": "--forcing"}


def add_parser(sub) -> None:
    from m1.cli import _kv
    from m1.configfile import add_config_option
    from m1.serve.config import ServeConfig

    d = ServeConfig()
    s = sub.add_parser("serve", help="serve a model with exact thinking budgets behind an OpenAI-compatible API",
                       description="OpenAI's POST /v1/chat/completions (streaming and not), GET /v1/models, /health "
                       "and /metrics. A request's thinking budget comes from thinking_token_budget, "
                       "reasoning.max_tokens, thinking.budget_tokens, thinking_budget_tokens, reasoning_effort, ... "
                       "(README: Serving). Settings layer as in m1 eval: defaults < --config FILE < flags < key=value.")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="ServeConfig fields, e.g. effort.high=8192")
    add_config_option(s, "a file of ServeConfig fields")
    s.add_argument("--print-config", action="store_true", help="print the config as loaded (YAML) and serve nothing")
    s.add_argument("--engine", help=f"llamacpp | hf | openai | vllm (default {d.engine})")
    s.add_argument("--model", help="as m1 eval (default: the embedded SmolLM2-135M-Instruct)")
    s.add_argument("--base-url", action="append", help="openai engine: backend server URL(s); repeat for replicas")
    s.add_argument("--engine-opt", type=_kv, nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="engine option, e.g. n_slots=16")
    s.add_argument("--format", help="m1 | s1 | r1 | plain | auto (as m1 eval)")
    s.add_argument("--served-model-name", help="the name clients send as `model` (default: the model's)")
    s.add_argument("--budget", type=int, help=f"thinking tokens when a request names none (default {d.budget})")
    s.add_argument("--answer-max-tokens", type=int, help=f"default {d.answer_max_tokens}")
    s.add_argument("--forcing", type=int, help="budget-forcing rounds by default (default 0)")
    s.add_argument("--ignore-str", help=f"string appended when forcing (default {d.ignore_str})")
    s.add_argument("--min-thinking", type=int, help="replace an end of thinking before N tokens (default 0)")
    s.add_argument("--temperature", type=float, help=f"when a request gives none (default {d.temperature}: greedy)")
    s.add_argument("--top-p", type=float, help=f"default {d.top_p}")
    s.add_argument("--host", help=f"address to bind (default {d.host}: this machine only)")
    s.add_argument("--port", type=int, help=f"default {d.port}")
    s.add_argument("--api-key-env", metavar="VAR",
                   help="require Authorization: Bearer <the key in $VAR> (never the key itself on the command line)")
    s.add_argument("--max-thinking-budget", type=int, help=f"largest budget a request may ask (default "
                                                           f"{d.max_thinking_budget}; more gets 400)")
    s.add_argument("--max-queue", type=int, help=f"requests allowed to wait (default {d.max_queue}; more get 429)")
    s.add_argument("--max-body", type=int, help=f"largest request body in bytes (default {d.max_body}; more gets 413)")
    s.add_argument("--log-content", action="store_const", const=True,
                   help="log prompts and answers (off by default: patients' notes pass through)")
    s.set_defaults(func=cmd_serve)


def config_from_args(a: argparse.Namespace):
    from dataclasses import fields

    from m1.configfile import load_config, split_args
    from m1.serve.config import ServeConfig

    flags: dict[str | tuple[str, ...], object] = {}
    names = {f.name for f in fields(ServeConfig)}
    for name in names:
        value = getattr(a, _FLAG_DESTS.get(name, name), None)
        if value is not None and name not in ("engine_options", "format_overrides", "effort"):
            flags[name] = value
    late = []
    for k, v in a.engine_opt:
        if k.split(".")[0] in names:
            late.append(f"{k}={v if isinstance(v, str) else json.dumps(v)}")
        else:
            flags[("engine_options", k)] = v
    if a.base_url:
        flags[("engine_options", "base_url")] = ",".join(a.base_url)
    labels = {k: _FLAG_NAMES.get(k, "--" + k.replace("_", "-")) for k in flags if isinstance(k, str)}
    path, overrides = split_args(a.overrides, a.config_file, positional_file=False)
    return load_config(ServeConfig, path, overrides + late, flags=flags, labels=labels, what="serve config")


def cmd_serve(a: argparse.Namespace) -> int:
    cfg = config_from_args(a)
    if a.print_config:
        from m1.configfile import dump

        print(dump(cfg), end="")
        return 0
    try:
        import uvicorn

        from m1.serve import Service, make_app
    except ImportError as e:
        raise M1Error(f"m1 serve needs FastAPI and uvicorn ({e.name} is missing): pip install 'm1[serve]'") from None
    if cfg.api_key_env and not os.environ.get(cfg.api_key_env):  # before the model loads
        raise M1Error(f"--api-key-env {cfg.api_key_env}: that environment variable is empty or unset; "
                      "export the key there (it is never read from the command line)")
    with socket.socket() as s:  # a taken port is one line, before the model loads
        try:
            s.bind((cfg.host, cfg.port))
        except OSError as e:
            raise M1Error(f"cannot listen on {cfg.host}:{cfg.port} ({e.strerror}); pick another --port") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    service = Service(cfg)
    try:
        app = make_app(service)
        c = service.cfg
        print(f"m1 serve: {service.model_name} ({c.engine}, format {c.format}, default budget {c.budget}, "
              f"{service.running_limit} requests at once) on http://{c.host}:{c.port}/v1"
              + (f"; key from ${c.api_key_env}" if c.api_key_env else ""), file=sys.stderr, flush=True)
        uvicorn.run(app, host=c.host, port=c.port, log_level="warning", access_log=False)
    finally:
        service.close()
    return 0
