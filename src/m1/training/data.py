"""Reasoning traces -> token ids and labels, with the loss on the assistant's turn only.

Each record is rendered with the model's own chat template, exactly as `m1 eval` prompts
it: the user turn is the question, its lettered options (and an optional instruction);
the assistant turn is

    <|im_start|>think\\n{reasoning}\\n<|im_start|>answer\\nAnswer: {answer}<|im_end|>

(the m1 format of m1.thinking.formats; `<|im_end|>` is whatever ends a turn in the
template). Labels are -100 for every token that starts before the end of the rendered
prompt (system + user + assistant header), found from the tokenizer's character
offsets, so the mask never depends on searching ids for a header.

Packing puts whole examples into rows of at most max_length tokens (as few rows as
first-fit decreasing finds, balanced in length), with position ids restarting at 0 for each example:
transformers turns restarting position_ids (with no attention mask) into a
block-diagonal causal mask for sdpa/eager and into varlen boundaries for flash
attention, so packed examples never attend to one another; the first token of each
example is a prompt token, so no label crosses a boundary. With flash attention the
collator also lays a micro-batch's rows end to end (no padding at all).
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from m1.errors import M1Error, first_line
from m1.thinking.formats import FORMATS

IGNORE = -100
FMT = FORMATS["m1"]
# Field names seen in public reasoning-trace sets, mapped to ours (first present wins).
REASONING_KEYS = ("reasoning", "thinking", "Complex_CoT", "thinking_trajectories", "cot")
QUESTION_KEYS = ("question", "problem", "Question")


@dataclass(frozen=True)
class Example:
    """One tokenized example; `labels[i]` is IGNORE where no loss is taken."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False


@dataclass(frozen=True)
class Row:
    """One training row: one example, or several packed ones (their lengths in seq_lengths)."""

    input_ids: list[int]
    labels: list[int]
    seq_lengths: list[int]


# -- records ----------------------------------------------------------------------------------
def load_records(source: str, split: str = "train", limit: int | None = None) -> list[dict]:
    """Records from a local JSON / JSONL / Parquet file, or a Hugging Face dataset id."""
    path = Path(source).expanduser()
    if path.is_file():
        records = _read_file(path)
    elif path.exists() or source.startswith(("/", ".", "~")) or source.count("/") != 1 \
            or source.endswith((".json", ".jsonl", ".parquet")):
        raise M1Error(f"dataset not found: {source} (pass a .json/.jsonl/.parquet file or a hub id like UCSC-VLAA/m1K)")
    else:
        records = _read_hub(source, split)
    if not records:
        raise M1Error(f"dataset {source} has no records")
    return records[:limit] if limit else records


def _read_file(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            out = []
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise M1Error(f"{path} line {n}: not valid JSON ({e.msg}); fix or remove the line") from None
            return out
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict):  # {"data": [...]} or {"train": [...]}
                lists = [v for v in data.values() if isinstance(v, list)]
                if len(lists) != 1:
                    raise M1Error(f"{path}: expected a list of records (or one key holding it)")
                data = lists[0]
            return list(data)
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
    except json.JSONDecodeError as e:
        raise M1Error(f"{path} line {e.lineno}: not valid JSON ({e.msg}); fix the file") from None
    raise M1Error(f"dataset {path}: unsupported file type {suffix!r}; use .json, .jsonl or .parquet")


def _read_hub(name: str, split: str) -> list[dict]:
    try:
        import datasets
    except ImportError:
        raise M1Error(f"dataset {name} looks like a hub id, which needs `datasets`: pip install 'm1[train]'") from None
    try:
        return datasets.load_dataset(name, split=split).to_list()
    except Exception as e:  # network, auth, missing split: one line for the user
        first = first_line(e)
        raise M1Error(f"could not load dataset {name} (split {split}): {first}; check the id, your access "
                      "(huggingface-cli login) or pass a local file") from None


# -- rendering -----------------------------------------------------------------------------------
def user_text(record: dict, instruction: str | None = None) -> str:
    """Question, then "A. ...\\nB. ..." on their own lines, then the instruction (as m1 eval shows it)."""
    question = next((record[k] for k in QUESTION_KEYS if record.get(k)), None)
    if question is None:
        raise ValueError("no question field")
    options = record.get("options") or {}
    if isinstance(options, (list, tuple)):
        options = {chr(ord("A") + i): o for i, o in enumerate(options)}
    text = str(question).strip()
    if options:
        text += "\n" + "\n".join(f"{k}. {v}" for k, v in options.items())
    if instruction:
        text += "\n" + instruction
    return text


def assistant_text(record: dict) -> str:
    """The m1 trace: think delimiter, reasoning, answer delimiter, "Answer: ..."."""
    reasoning = next((record[k] for k in REASONING_KEYS if record.get(k)), None)
    if reasoning is None:
        raise ValueError(f"no reasoning field (one of {', '.join(REASONING_KEYS)})")
    if isinstance(reasoning, (list, tuple)):  # s1K-style list of steps
        reasoning = "\n".join(map(str, reasoning))
    answer = record.get("answer")
    if answer is None or answer == "":
        raise ValueError("no answer field")
    answer = str(answer).strip()
    letter = record.get("answer_idx")
    if letter and not answer.startswith(str(letter)):
        answer = f"{letter}. {answer}"  # the grader reads "Answer: D. ..." as D
    return FMT.reply(str(reasoning).strip(), answer)


def render(record: dict, tokenizer, instruction: str | None = None,
           system_prompt: str | None = None) -> tuple[str, str]:
    """(prompt, full text): the prompt ends with the assistant header; full adds the turn and its end."""
    if "text" in record and not any(record.get(k) for k in REASONING_KEYS):
        text = str(record["text"]).rstrip()  # as below: the turn ends with its end token
        return _split_rendered(text, tokenizer), text
    messages = [{"role": "user", "content": user_text(record, instruction)}]
    if system_prompt:
        messages.insert(0, {"role": "system", "content": system_prompt})
    reply = assistant_text(record)
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": reply}], tokenize=False)
    if not full.startswith(prompt) or reply not in full[len(prompt):]:
        raise M1Error("the chat template does not render the assistant turn after its own generation prompt "
                      "(e.g. it drops reasoning from past turns); train with records that carry a rendered `text`")
    # Keep the turn up to and including its end token; drop the template's trailing newline.
    end = full.index(reply, len(prompt)) + len(reply)
    return prompt, full[:end] + full[end:].rstrip()


def _split_rendered(text: str, tokenizer) -> str:
    """The prompt part of an already-rendered `text`: up to the last assistant header."""
    header = assistant_header(tokenizer)
    at = text.rfind(header)
    if at < 0:
        raise ValueError(f"rendered text has no assistant header {header!r}")
    return text[:at + len(header)]


@functools.lru_cache(maxsize=4)  # asked once per record with a rendered `text`; the answer is the tokenizer's
def assistant_header(tokenizer) -> str:
    """What the template adds for add_generation_prompt, e.g. "<|im_start|>assistant\\n"."""
    m = [{"role": "user", "content": "x"}]
    with_header = tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
    without = tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=False)
    if not with_header.startswith(without) or with_header == without:
        raise M1Error("cannot find the assistant header of this chat template")
    return with_header[len(without):]


# -- tokenizing and masking ---------------------------------------------------------------------
def tokenize(prompt: str, full: str, tokenizer, max_length: int) -> Example:
    """ids of `full`, labels IGNORE for every token that starts inside `prompt`."""
    enc = tokenizer(full, add_special_tokens=True, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    if ids and tokenizer.eos_token_id is not None and ids[-1] == tokenizer.eos_token_id \
            and tuple(offsets[-1]) == (0, 0):
        ids, offsets = ids[:-1], offsets[:-1]  # a tokenizer that appends EOS itself; the turn already ends
    cut = len(prompt)
    # (0, 0) offsets are special tokens the tokenizer added itself (BOS): prompt side too.
    labels = [tok if start >= cut and end > start else IGNORE for tok, (start, end) in zip(ids, offsets)]
    truncated = len(ids) > max_length
    return Example(ids[:max_length], labels[:max_length], truncated)


def build_examples(records: Iterable[dict], tokenizer, max_length: int, instruction: str | None = None,
                   system_prompt: str | None = None, source: str = "dataset") -> list[Example]:
    out = []
    for n, record in enumerate(records):
        try:
            prompt, full = render(record, tokenizer, instruction, system_prompt)
        except (ValueError, TypeError, AttributeError) as e:
            raise M1Error(f"{source} record {n}: {e}; each record needs question/options/reasoning/answer "
                          "or a rendered `text`") from None
        ex = tokenize(prompt, full, tokenizer, max_length)
        if any(label != IGNORE for label in ex.labels):  # a prompt that fills max_length teaches nothing
            out.append(ex)
    if not out:
        raise M1Error(f"{source}: no example keeps an assistant token within max_length={max_length}; raise max_length")
    return out


# -- packing ---------------------------------------------------------------------------------
def pack(examples: Sequence[Example], max_length: int) -> list[Row]:
    """Whole examples into as few rows of at most max_length tokens as first-fit decreasing
    finds, then spread evenly over that many rows (longest first, each into the lightest
    row): the same number of steps, but rows of similar length, so a batch of rows pads
    little even when the last first-fit row would have been nearly empty."""
    sizes = [len(e.input_ids) for e in examples]
    order = sorted(range(len(examples)), key=lambda i: -sizes[i])
    rows = _first_fit(order, sizes, max_length)
    balanced: list[list[int]] = [[] for _ in rows]
    load = [0] * len(rows)
    for i in order:
        j = min(range(len(rows)), key=lambda r: load[r])
        if load[j] + sizes[i] > max_length:  # the lightest row is full, so every row is: keep first-fit
            balanced = rows
            break
        balanced[j].append(i)
        load[j] += sizes[i]
    return [Row([t for i in row for t in examples[i].input_ids], [t for i in row for t in examples[i].labels],
                [sizes[i] for i in row]) for row in balanced if row]


def _first_fit(order: list[int], sizes: list[int], max_length: int) -> list[list[int]]:
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        slot = next((r for r, free in enumerate(room) if free >= sizes[i]), None)
        if slot is None:
            rows.append([])
            room.append(max_length)
            slot = len(rows) - 1
        rows[slot].append(i)
        room[slot] -= sizes[i]
    return rows


def unpacked(examples: Sequence[Example]) -> list[Row]:
    return [Row(e.input_ids, e.labels, [len(e.input_ids)]) for e in examples]


def position_ids(seq_lengths: Sequence[int]) -> list[int]:
    return [p for n in seq_lengths for p in range(n)]


@dataclass
class Collator:
    """Rows -> one batch.

    Unpacked: right padding + attention mask, as usual.
    Packed: no attention mask; position_ids restart at every example, which transformers
    turns into a block-diagonal causal mask (sdpa, eager) or varlen flash attention, so
    examples stay independent.
      flatten=False  rows stay rows, padded to the longest; the padding is one more
                     "example" with its own positions (and no labels). Attention cost
                     and the dense mask stay bounded by max_length: right for sdpa/eager.
      flatten=True   the micro-batch's rows are laid end to end in ONE sequence, no
                     padding at all (TRL's padding-free packing). Only for flash
                     attention: sdpa would build a dense (rows x max_length)^2 mask.
    """

    pad_token_id: int
    packed: bool = False
    flatten: bool = False

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        if self.packed and self.flatten:
            flat_ids = [t for r in rows for t in r["input_ids"]]
            flat_labels = [t for r in rows for t in r["labels"]]
            flat_pos = position_ids([n for r in rows for n in r["seq_lengths"]])
            return {"input_ids": torch.tensor([flat_ids]), "labels": torch.tensor([flat_labels]),
                    "position_ids": torch.tensor([flat_pos])}
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        pos = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
            if self.packed:
                pos[i] = torch.tensor(position_ids(list(r["seq_lengths"]) + ([width - n] if width > n else [])))
        if self.packed:
            return {"input_ids": ids, "labels": labels, "position_ids": pos}
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def padding_share(rows: Sequence[Row], batch_size: int, flatten: bool = False) -> float:
    """Fraction of pad tokens in batches of `batch_size` consecutive rows as Collator builds them."""
    if flatten:
        return 0.0  # rows laid end to end: nothing to pad
    pad = total = 0
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        width = max(len(r.input_ids) for r in batch)
        total += width * len(batch)
        pad += sum(width - len(r.input_ids) for r in batch)
    return pad / total if total else 0.0
