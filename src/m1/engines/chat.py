"""Rendering a model's own chat template (Jinja, as Hugging Face tokenizers do)."""
from __future__ import annotations

from datetime import datetime


def render_template(template: str | None, messages: list[dict], bos_token: str = "", eos_token: str = "") -> str:
    """Render `messages` with `template`, ending ready for the assistant's turn.

    A model without a template (a base model) gets plain "Question ... Answer:" text,
    which is what such a model can continue.
    """
    if not template:
        parts = [m["content"] for m in messages if m["role"] != "assistant"]
        return "\n\n".join(parts) + "\n\nAnswer: "
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template).render(messages=messages, add_generation_prompt=True,
                                            bos_token=bos_token, eos_token=eos_token)
