"""m1 train: config loading, resolution, the shipped configs and the launch commands (no model)."""
import argparse
import sys
from pathlib import Path

import pytest

from m1.errors import M1Error
from m1.training.config import TrainConfig, load_config
from m1.training.launch import build_command

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "train"


def write(tmp_path, text: str) -> Path:
    p = tmp_path / "t.yaml"
    p.write_text(text)
    return p


def test_defaults_are_the_paper_recipe():
    c = TrainConfig()
    assert (c.learning_rate, c.num_train_epochs, c.global_batch_size, c.weight_decay) == (1e-5, 5, 16, 1e-4)
    assert (c.warmup_ratio, c.lr_scheduler_type, c.adam_beta1, c.adam_beta2) == (0.05, "cosine", 0.9, 0.95)
    assert c.max_length == 32768 and not c.packing and not c.lora


def test_yaml_then_overrides_with_types(tmp_path):
    p = write(tmp_path, "model: m\ndataset: d.jsonl\noutput_dir: o\nlearning_rate: 1e-5\npacking: yes\n"
                        "lora_target_modules: [q_proj, v_proj]\n")
    c = load_config(p, ["learning_rate=2e-4", "max_steps=3", "lora=true", "instruction=Think.", "save_steps=null",
                        "lora_target_modules=q_proj,k_proj"])
    assert c.learning_rate == 2e-4 and isinstance(c.learning_rate, float)  # YAML reads 1e-5 as a string
    assert c.max_steps == 3 and c.packing is True and c.lora is True and c.instruction == "Think."
    assert c.save_steps is None and c.lora_target_modules == ("q_proj", "k_proj")
    assert load_config(p, ["resume=true"]).resume is True
    assert load_config(p, ["resume=out/checkpoint-4"]).resume == "out/checkpoint-4"


def test_unknown_key_names_it(tmp_path):
    with pytest.raises(M1Error, match=r"t\.yaml: unknown setting 'learnig_rate'; did you mean 'learning_rate'\?"):
        load_config(write(tmp_path, "learnig_rate: 1e-5\n"))
    with pytest.raises(M1Error, match="command line: unknown setting 'epochs'"):
        load_config(None, ["epochs=3"])


@pytest.mark.parametrize("override, match", [
    ("max_steps=two", "command line: max_steps: expected integer, got 'two'"),
    ("packing=maybe", "command line: packing: expected true or false, got 'maybe'"),
    ("save_steps=none", "save_steps: expected integer or null, got 'none'"),
    ("dtype=fp8", "command line: dtype must be one of auto, bfloat16, float16, float32, got 'fp8'"),
    ("learning_rate=-1", r"command line: learning_rate is -1; it must be > 0"),
    ("warmup_ratio=1", r"command line: warmup_ratio is 1; it must be < 1"),
    ("lora_target_modules=[1, [2]]", r"lora_target_modules: expected list of strings, got '\[1, \[2\]\]'"),
    ("max_length", "not key=value"),
])
def test_bad_values_are_one_line_errors(override, match):
    with pytest.raises(M1Error, match=match):
        load_config(None, [override])


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(M1Error, match="line 2: not valid YAML"):
        load_config(write(tmp_path, "a: 1\nb: c: d\n"))
    with pytest.raises(M1Error, match="train config not found"):
        load_config(tmp_path / "nope.yaml")


def test_resolve_derives_accumulation_and_precision():
    c = TrainConfig(model="m", dataset="d", output_dir="o", per_device_batch_size=1)
    cpu = c.resolve(world_size=1, cuda=False, bf16_ok=False, flash_attn=False)
    assert (cpu.gradient_accumulation_steps, cpu.dtype, cpu.bf16, cpu.attn_implementation) == \
        (16, "float32", False, "sdpa")
    gpu = c.resolve(world_size=8, cuda=True, bf16_ok=True, flash_attn=True)
    assert (gpu.gradient_accumulation_steps, gpu.dtype, gpu.bf16, gpu.attn_implementation) == \
        (2, "bfloat16", True, "flash_attention_2")
    assert gpu.resolve(world_size=8, cuda=True, bf16_ok=True, flash_attn=True) == gpu  # idempotent
    with pytest.raises(M1Error, match="not a multiple"):
        TrainConfig(model="m", dataset="d", output_dir="o", per_device_batch_size=3).resolve(1, False, False, False)
    with pytest.raises(M1Error, match="gradient_accumulation_steps=4 disagrees"):
        TrainConfig(model="m", dataset="d", output_dir="o", gradient_accumulation_steps=4).resolve(
            1, False, False, False)
    with pytest.raises(M1Error, match="no bf16 GPU"):
        TrainConfig(model="m", dataset="d", output_dir="o", bf16=True).resolve(1, False, False, False)
    with pytest.raises(M1Error, match="dataset is not set"):
        TrainConfig(model="m", output_dir="o").resolve(1, False, False, False)


def test_saved_config_loads_back(tmp_path):
    c = TrainConfig(model="m", dataset="d", output_dir="o", lora=True).resolve(2, False, False, False)
    path = c.save(tmp_path / "train_config.yaml", extra={"world_size": 2})
    assert load_config(path) == c


@pytest.mark.parametrize("name", ["example_cpu.yaml", "m1k_qwen7b.yaml"])
def test_shipped_training_configs_load(name):
    c = load_config(CONFIGS / name)
    c.check_complete()
    if name == "m1k_qwen7b.yaml":
        r = c.resolve(world_size=8, cuda=True, bf16_ok=True, flash_attn=True)
        assert (r.learning_rate, r.num_train_epochs, r.gradient_accumulation_steps, r.max_length) == (1e-5, 5, 2, 32768)
        assert (r.dtype, r.bf16, r.attn_implementation) == ("float32", True, "flash_attention_2")


@pytest.mark.parametrize("name, kind", [("accelerate_fsdp.yaml", "FSDP"), ("accelerate_zero3.yaml", "DEEPSPEED")])
def test_shipped_accelerate_configs(name, kind):
    import yaml

    d = yaml.safe_load((CONFIGS / name).read_text())
    assert d["distributed_type"] == kind and d["mixed_precision"] == "bf16"
    if kind == "FSDP":
        f = d["fsdp_config"]
        assert f["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        assert f["fsdp_transformer_layer_cls_to_wrap"] == "Qwen2DecoderLayer"
        assert f["fsdp_reshard_after_forward"] is True and f["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    else:
        assert d["deepspeed_config"]["zero_stage"] == 3 and d["deepspeed_config"]["zero3_save_16bit_model"]


def test_launch_commands():
    assert build_command("c.yaml", ["max_steps=2"]) == \
        [sys.executable, "-m", "m1.training.run", "c.yaml", "max_steps=2"]
    t = build_command("c.yaml", [], "torchrun", 4)
    assert Path(t[0]).name == "torchrun"
    assert t[1:] == ["--standalone", "--nproc_per_node=4", "-m", "m1.training.run", "c.yaml"]
    fsdp = str(CONFIGS / "accelerate_fsdp.yaml")
    a = build_command("c.yaml", ["lora=true"], "accelerate", 8, fsdp)
    assert Path(a[0]).name == "accelerate" and a[1:] == \
        ["launch", "--config_file", fsdp, "--num_processes", "8", "-m", "m1.training.run", "c.yaml", "lora=true"]
    with pytest.raises(M1Error, match="unknown launcher"):
        build_command("c.yaml", [], "slurm")
    with pytest.raises(M1Error, match="--nproc needs"):
        build_command("c.yaml", [], "none", 2)
    with pytest.raises(M1Error, match="accelerate config not found"):
        build_command("c.yaml", [], "accelerate", 2, "missing.yaml")


def test_cli_dry_run_prints_config_and_command(capsys):
    from m1.training import cli

    parser = argparse.ArgumentParser(prog="m1")
    cli.add_parser(parser.add_subparsers(dest="command"))
    a = parser.parse_args(["train", str(CONFIGS / "example_cpu.yaml"), "max_steps=1", "--launcher", "torchrun",
                           "--nproc", "2", "--dry-run"])
    assert a.func(a) == 0
    out = capsys.readouterr().out
    assert "max_steps: 1" in out and "--nproc_per_node=2 -m m1.training.run" in out
    bad = parser.parse_args(["train", str(CONFIGS / "example_cpu.yaml"), "max_step=1", "--dry-run"])
    with pytest.raises(M1Error, match="did you mean 'max_steps'"):
        bad.func(bad)


def test_run_module_reports_config_errors_in_one_line(tmp_path, capsys):
    from m1.training import run

    assert run.main([str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert run.main([]) == 2 and run.main(["--help"]) == 0
