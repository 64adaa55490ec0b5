"""Stage 8, format: SFT-ready records, one Parquet table per selected set.

Columns: id, source, domain, question, options, answer_letter, answer_text (the gold),
reasoning, answer (the teacher's final text, or "C. option text" with answer: letter),
prompt (the user message) and `text`, the whole training text in the m1 format inside
the tokenizer's chat template:

    <chat template up to the assistant turn> +
    <|im_start|>think\\n{reasoning}\\n<|im_start|>answer\\nAnswer: {answer}<|im_end|>

The delimiters come from m1.thinking.formats (the "m1" format), the same ones m1's
budget forcing uses at inference, so training and evaluation agree.
"""
from __future__ import annotations

from m1.curation.config import FormatConfig
from m1.curation.records import prompt_for, row_to_item
from m1.errors import M1Error
from m1.thinking.formats import get_format


def load_chat_renderer(tokenizer: str | None):
    """A callable messages -> prompt text, from the embedded GGUF, a .gguf file or an HF tokenizer."""
    from m1.engines.tokenizers import load_tokenizer
    from m1.models import embedded_model_path

    source = tokenizer or str(embedded_model_path())
    return load_tokenizer(source).render_chat, source


def format_rows(rows: list[dict], cfg: FormatConfig, render=None) -> list[dict]:
    if cfg.answer not in ("response", "letter"):
        raise M1Error(f'format.answer is "{cfg.answer}"; choose response (the teacher\'s text) or letter')
    if rows and "reasoning" not in rows[0]:
        raise M1Error("format: the selected rows carry no teacher reasoning; select from distill, validate or domains")
    if render is None:
        render, _ = load_chat_renderer(cfg.tokenizer)
    fmt = get_format("m1")
    out = []
    for r in rows:
        item = row_to_item(r)
        user = prompt_for(item, cfg.prompt)
        messages = [{"role": "user", "content": user}]
        if cfg.system:
            messages.insert(0, {"role": "system", "content": cfg.system})
        answer = r["response"].strip() if cfg.answer == "response" else f"{item.answer}. {item.options[item.answer]}"
        text = render(messages) + fmt.reply(r["reasoning"].strip(), answer) + (fmt.answer_end or "")
        out.append({"id": r["id"], "source": r["source"], "domain": r.get("domain", ""),
                    "question": r["question"], "options": r["options"], "answer_letter": r["answer"],
                    "answer_text": r["answer_text"], "reasoning": r["reasoning"], "answer": answer,
                    "prompt": user, "text": text})
    return out

