"""m1.configfile: the one config loader of `m1 eval`, `m1 data` and `m1 train` (no model is run)."""
import json
from dataclasses import field
from pathlib import Path

import pytest
import yaml

from m1.cli import main
from m1.config import EvalConfig
from m1.configfile import CommaList, dump, load_config, settings, split_args
from m1.errors import M1Error

ROOT = Path(__file__).resolve().parents[1]
TRAIN_CPU = ROOT / "configs" / "train" / "example_cpu.yaml"


@settings
class Inner:
    name: str
    size: int = 1


@settings
class Box:
    count: int = 3
    rate: float = 0.5
    label: str = "x"
    enabled: bool = False
    sizes: CommaList[int] = (1, 2)
    tags: CommaList[str] = ()
    options: dict = field(default_factory=dict)
    cap: int | None = None
    note: str | None = None
    resume: bool | str = False
    grader: str = "strict"
    inner: Inner = Inner("a")
    items: tuple[Inner, ...] = ()


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def one_line_error(capsys, argv: list[str]) -> str:
    """Runs `m1 ARGV` as a user would: exit 2 and one line on stderr, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("m1: error: ")
    return err


def printed(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0
    return yaml.safe_load(capsys.readouterr().out)


# ---- the loader on its own ----

def test_types_from_file_and_overrides(tmp_path):
    p = write(tmp_path, "count: 4\nrate: 1e-5\nenabled: yes\nsizes: [3, 4]\ntags: a, b\noptions: {k: 1}\n"
                        "inner: {name: b}\nitems: [{name: i, size: 2}]\n")
    b = load_config(Box, p, [])
    assert (b.count, b.rate, b.enabled, b.sizes, b.tags) == (4, 1e-5, True, (3, 4), ("a", "b"))
    assert b.options == {"k": 1} and b.inner == Inner("b") and b.items == (Inner("i", 2),)
    b = load_config(Box, p, ["count=5", "rate=2e-4", "label=a: b", "sizes=7,8", "sizes=[9]", "cap=10",
                             "options.n_slots=4", "options.deep.er=x", "inner.size=6", "items.0.name=j",
                             "note=", "resume=out/ckpt-4", "grader=m1", "tags=[]", "enabled=false"])
    assert (b.count, b.rate, b.label, b.sizes, b.cap, b.note) == (5, 2e-4, "a: b", (9,), 10, None)
    assert b.options == {"k": 1, "n_slots": 4, "deep": {"er": "x"}}
    assert b.inner == Inner("b", 6) and b.items == (Inner("j", 2),)
    assert (b.resume, b.grader, b.tags, b.enabled) == ("out/ckpt-4", "m1", (), False)
    assert load_config(Box, None, ["resume=true", 'label="null"', "cap=null"]).resume is True
    assert load_config(Box, None, ['label="null"']).label == "null"
    assert load_config(Box, None, []) == Box()


def test_json_files_and_flags(tmp_path):
    p = write(tmp_path, json.dumps({"count": 2, "options": {"a": 1}}), "c.json")
    b = load_config(Box, p, ["count=9"], flags={"count": 7, ("options", "b.c"): 2, "label": "flag"})
    assert (b.count, b.label, b.options) == (9, "flag", {"a": 1, "b.c": 2})  # key=value last


@pytest.mark.parametrize("text, overrides, message", [
    ("", ["cont=1"], r"^command line: unknown setting 'cont'; did you mean 'count'\? \(known: count, rate,"),
    ("inner: {nme: b}\n", [],
     r"c\.yaml: unknown setting 'inner\.nme'; did you mean 'inner\.name'\? \(known in inner: name, size\)"),
    ("sizes: abc\n", [], r"^.*c\.yaml: sizes: expected list of integers, got 'abc'$"),
    ("", ["sizes=[1, x]"], r"^command line: sizes: expected list of integers, got '\[1, x\]'$"),
    ("count: [1]\n", [], r"c\.yaml: count: expected integer, got \[1\]$"),
    ("", ["enabled=maybe"], "enabled: expected true or false, got 'maybe'"),
    ("", ["cap=none"], "cap: expected integer or null, got 'none'"),
    ("", ["rate=fast"], "rate: expected number, got 'fast'"),
    ("label: [a]\n", [], "label: expected string, got"),
    ("items: [{size: 2}]\n", [], r"c\.yaml: items\.0\.name is required"),
    ("", ["items.0.name=j"], r"items\.0\.name: there is no list at items to index"),
    ("items: [{name: a}]\n", ["items.3.name=j"], "items is a list of 1 item"),
    ("", ["count"], r"'count' is not key=value \(e\.g\. seed=1\)"),
    ("", ["9x=1"], "is not a setting name"),
    ("- a\n", [], "the top level must be a mapping"),
    ("a: 1\nb: c: d\n", [], r"c\.yaml line 2: not valid YAML"),
])
def test_bad_input_is_one_line(tmp_path, text, overrides, message):
    with pytest.raises(M1Error, match=message) as e:
        load_config(Box, write(tmp_path, text), overrides)
    assert "\n" not in str(e.value)


def test_missing_and_bad_json_file(tmp_path):
    with pytest.raises(M1Error, match="box config not found: .*nope.yaml; give the path"):
        load_config(Box, tmp_path / "nope.yaml", [], what="box config")
    with pytest.raises(M1Error, match=r"c\.json line 2: not valid JSON"):
        load_config(Box, write(tmp_path, '{"count": 1,\n}', "c.json"), [])


def test_split_args():
    assert split_args(["c.yaml", "a=1"]) == ("c.yaml", ["a=1"])
    assert split_args(["a=1"]) == (None, ["a=1"])
    assert split_args(["a=1"], ["c.yaml", "b=2"]) == ("c.yaml", ["a=1", "b=2"])
    assert split_args(["runs/lr=1/x.yaml"]) == ("runs/lr=1/x.yaml", [])  # not a key: a file


def test_dump_loads_back(tmp_path):
    b = Box(rate=1e-5, tags=("a",), options={"x": [1]}, items=(Inner("i"),), note="a: b", resume="r")
    assert load_config(Box, write(tmp_path, dump(b)), []) == b


# ---- m1 eval ----

def test_eval_precedence_defaults_file_flags_overrides(tmp_path, capsys):
    p = write(tmp_path, "limit: 5\nseed: 4\nbudgets: [16, 32]\ntemperature: 0.5\nengine_options: {n_slots: 2}\n"
                        "method: independent\n")
    d = printed(capsys, ["eval", "--config", str(p), "--print-config"])
    assert (d["limit"], d["seed"], d["budgets"], d["temperature"], d["method"]) == (5, 4, [16, 32], 0.5, "independent")
    assert d["top_p"] == 1.0 and d["engine"] == "llamacpp"  # defaults where the file says nothing
    d = printed(capsys, ["eval", "--config", str(p), "seed=9", "top_p=0.9", "engine_options.n_threads=1",
                         "--limit", "7", "--seed", "8", "--budgets", "64", "--engine-opt", "n_batch=32",
                         "--think-end", "</t>", "--print-config"])
    assert (d["limit"], d["seed"], d["budgets"], d["top_p"]) == (7, 9, [64], 0.9)  # flag > file; key=value > flag
    assert d["engine_options"] == {"n_slots": 2, "n_threads": 1, "n_batch": 32}
    assert d["format_overrides"] == {"think_end": "</t>"} and d["temperature"] == 0.5
    # --limit 0 is "all"; key=value pairs typed after --engine-opt are settings, not engine options
    d = printed(capsys, ["eval", "--limit", "0", "--engine-opt", "n_slots=3", "seed=2", "budgets=16,32:64:32",
                         "--print-config"])
    assert d["limit"] is None and d["seed"] == 2 and d["engine_options"] == {"n_slots": 3}
    assert d["budgets"] == [16, 32, 64]


def test_eval_print_config_round_trip(tmp_path, capsys):
    argv = ["--model", "m.gguf", "--budgets", "32,64", "--engine-opt", "n_slots=4", "--system-prompt", "Be brief.",
            "temperature=0.6", "instruction=Answer: with a letter", "format_overrides.think_start=<t>"]
    assert main(["eval", *argv, "--print-config"]) == 0
    text = capsys.readouterr().out
    saved = write(tmp_path, text, "saved.yaml")
    again = main(["eval", "--config", str(saved), "--print-config"])
    assert again == 0 and capsys.readouterr().out == text
    from m1.cli import build_parser, config_from_args

    cfg = config_from_args(build_parser().parse_args(["eval", *argv]))
    assert load_config(EvalConfig, saved, []) == cfg
    assert cfg.instruction == "Answer: with a letter" and cfg.engine_options == {"n_slots": 4}


@pytest.mark.parametrize("args, message", [
    (["limt=3"], "command line: unknown setting 'limt'; did you mean 'limit'?"),
    (["budgets=abc"], "command line: budgets: budget must be a whole number, got 'abc'"),
    (["seed=x"], "command line: seed: expected integer, got 'x'"),
    (["temperature"], "'temperature' is not key=value"),
    (["--config", "{tmp}/missing.yaml"], "eval config not found: "),
    (["--config", "{tmp}/bad.yaml"], "bad.yaml line 2: not valid YAML"),
    (["--config", "{tmp}/list.yaml"], "list.yaml line 3: not valid YAML"),
    (["--config", "{tmp}/typo.yaml"], "typo.yaml: unknown setting 'temprature'; did you mean 'temperature'?"),
    (["--config", "{tmp}/type.yaml"], "type.yaml: limit: expected integer or null, got 'many'"),
    (["--config", "{tmp}/range.yaml"], "range.yaml: top_p is 2; it must be <= 1"),
    (["--top-p", "0", "--knowledge", "oracle"], "command line: --top-p is 0.0; it must be > 0"),
    (["--knowledge", "oracle"], "command line: --knowledge must be one of none, gold, gold-background,"),
    (["--engine", "vlm"], "command line: --engine must be one of llamacpp, hf, openai, vllm, got 'vlm'"),
    (["--limit", "-2"], "command line: --limit is -2; it must be >= 0"),
    (["--config", "{tmp}/range.yaml", "top_p=0.5", "--knowledge-k", "0"], "command line: --knowledge-k is 0"),
    (["--config", "{tmp}/range.yaml", "top_p=0.5", "knowledge_k=0"], "command line: knowledge_k is 0"),
    (["--config", "{tmp}/typo.yaml", "other.yaml"], "'other.yaml' is not key=value"),
])
def test_eval_bad_config_input_exits_2_with_one_line(tmp_path, capsys, args, message):
    write(tmp_path, "limit: 3\nbudgets: [1, 2]: 3\n", "bad.yaml")
    write(tmp_path, "limit: 3\nbudgets: [1, 2\n", "list.yaml")  # YAML finds it at the end
    write(tmp_path, "temprature: 0.5\n", "typo.yaml")
    write(tmp_path, "limit: many\n", "type.yaml")
    write(tmp_path, "top_p: 2\n", "range.yaml")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert message in one_line_error(capsys, ["eval", *args, "--print-config"])


# ---- m1 data ----

DATA = """out_dir: out
seed: 1
collect:
  sources:
    - {name: medqa, kind: selfbiorag, path: qs.jsonl, limit: 8}
dedup: {ngram: 10, benchmarks: [medqa]}
"""


def test_data_precedence_and_paths(tmp_path, capsys, monkeypatch):
    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    p = write(cfg_dir, DATA)
    monkeypatch.chdir(tmp_path)
    d = printed(capsys, ["data", "build", str(p), "--print-config"])
    assert d["seed"] == 1 and d["dedup"]["ngram"] == 10 and d["dedup"]["fuzzy_threshold"] == 90.0
    assert d["out_dir"] == str(cfg_dir / "out")  # relative to the file's folder
    assert d["collect"]["sources"][0]["path"] == str(cfg_dir / "qs.jsonl")
    d = printed(capsys, ["data", "build", "--config", str(p), "seed=2", "dedup.ngram=8", "out_dir=elsewhere",
                         "collect.sources.0.limit=3", "--print-config"])
    assert (d["seed"], d["dedup"]["ngram"], d["dedup"]["benchmarks"]) == (2, 8, ["medqa"])
    assert d["collect"]["sources"][0]["limit"] == 3 and d["collect"]["sources"][0]["path"] == str(cfg_dir / "qs.jsonl")
    assert d["out_dir"] == str(tmp_path / "elsewhere")  # given on the command line: relative to where it runs
    # the legacy positional CONFIG takes the same pairs
    assert printed(capsys, ["data", "dedup", str(p), "dedup.ngram=7", "--print-config"])["dedup"]["ngram"] == 7
    # round trip
    text = yaml.safe_dump(d, sort_keys=False)
    saved = write(tmp_path, text, "saved.yaml")
    assert printed(capsys, ["data", "build", "--config", str(saved), "--print-config"]) == d


@pytest.mark.parametrize("text, args, message", [
    (DATA, ["dedup.ngrams=3"], "command line: unknown setting 'dedup.ngrams'; did you mean 'dedup.ngram'?"),
    (DATA + "validate: {grader: strict, drop_truncated: perhaps}\n", [],
     "c.yaml: validate.drop_truncated: expected true or false, got 'perhaps'"),
    (DATA, ["distill.api_key=sk-1"], "api_key must not be written in a config"),
    (DATA, ["collect.sources.4.limit=1"], "collect.sources is a list of 1 item(s)"),
    (DATA, ["seed"], "'seed' is not key=value"),
    ("dedup: {ngram: 1\n", [], "c.yaml line 2: not valid YAML"),
])
def test_data_bad_config_input_exits_2_with_one_line(tmp_path, capsys, text, args, message):
    p = write(tmp_path, text)
    assert message in one_line_error(capsys, ["data", "build", "--config", str(p), *args, "--print-config"])


def test_data_needs_a_config_file(capsys, tmp_path):
    assert "m1 data build needs a config file" in one_line_error(capsys, ["data", "build", "seed=1"])
    assert "data config not found" in one_line_error(capsys, ["data", "build", str(tmp_path / "no.yaml")])


# ---- m1 train ----

def test_train_precedence_and_round_trip(tmp_path, capsys):
    d = printed(capsys, ["train", "--config", str(TRAIN_CPU), "--print-config"])
    assert (d["max_steps"], d["learning_rate"], d["weight_decay"]) == (4, 1e-4, 1e-4)  # file, file, default
    d = printed(capsys, ["train", str(TRAIN_CPU), "max_steps=2", "learning_rate=3e-5", "lora_target_modules=q_proj",
                         "--print-config"])
    assert (d["max_steps"], d["learning_rate"], d["lora_target_modules"]) == (2, 3e-5, ["q_proj"])
    d = printed(capsys, ["train", "--config", str(TRAIN_CPU), "max_steps=3", "--print-config"])
    assert d["max_steps"] == 3
    saved = write(tmp_path, yaml.safe_dump(d, sort_keys=False), "saved.yaml")
    assert printed(capsys, ["train", "--config", str(saved), "--print-config"]) == d


@pytest.mark.parametrize("args, message", [
    (["--config", str(TRAIN_CPU), "max_step=1"], "command line: unknown setting 'max_step'; did you mean 'max_steps'?"),
    (["--config", str(TRAIN_CPU), "packing=maybe"], "packing: expected true or false, got 'maybe'"),
    (["--config", str(TRAIN_CPU), "dtype=fp8"], "dtype must be one of auto, bfloat16, float16, float32, got 'fp8'"),
    (["--config", str(TRAIN_CPU), "lora"], "'lora' is not key=value"),
    (["--config", "missing.yaml"], "train config not found: missing.yaml"),
    (["max_steps=1"], "m1 train needs a config file"),
])
def test_train_bad_config_input_exits_2_with_one_line(capsys, args, message):
    assert message in one_line_error(capsys, ["train", *args, "--dry-run"])


def test_a_budget_range_in_yaml_stays_a_range(tmp_path, capsys):
    # YAML 1.1 (PyYAML's default) reads 8:16:8 as the base-60 number 29768.
    from m1.configfile import read_file

    p = write(tmp_path, "budgets: 8:16:8\nlearning: 1e-5\n", "r.yaml")
    assert read_file(p) == {"budgets": "8:16:8", "learning": 1e-5}
    p = write(tmp_path, "budgets: 8:16:8\n", "b.yaml")
    d = printed(capsys, ["eval", "--config", str(p), "--print-config"])
    assert d["budgets"] == [8, 16]


# ---- run identity: pinned with the config code before it moved to pydantic ----

DATA_DIR = ROOT / "tests" / "data"


def _eval(*argv):
    from m1.cli import build_parser, config_from_args

    return config_from_args(build_parser().parse_args(["eval", *argv]))


def _saved(name: str) -> dict:
    return json.loads((DATA_DIR / name).read_text())["config"]


PINNED = {  # name: (config, fingerprint, sha256 of its comparison key without seed and knowledge)
    "default": (lambda: EvalConfig().resolved(), "96c0bae4", "b504d3dc8fbe"),
    "openai": (lambda: EvalConfig(
        engine="openai", model="gpt-x", budgets=(16, 32, 64), temperature=0.6, top_p=0.95, format="m1",
        engine_options={"base_url": "http://h:1/v1", "concurrency": 4, "tokenizer": "Q/x", "timeout": 30},
        forcing_rounds=2, seed=3, limit=None, format_overrides={"think_end": "</t>"}), "798a411c", "3286ed0d9099"),
    "knowledge": (lambda: EvalConfig(knowledge="retrieve", knowledge_where="thinking", knowledge_k=2,
                                     knowledge_at="1/16,1/4", budgets=(0, 8, 16), min_thinking=16, format="plain"),
                  "28e578cd", "f98998c68cd0"),
    "adaptive": (lambda: EvalConfig(budgets=(256,), adaptive="stable=3,every=64", format="m1", model="qwen"),
                 "1ab97389", "6077d90312aa"),
    "independent": (lambda: EvalConfig(method="independent", grader="m1", budgets="32:128:32",  # type: ignore[arg-type]
                                       format="s1", ignore_str="Hmm", system_prompt="Be brief.", instruction="x"),
                    "3e279605", "3378f47df6ee"),
    "schema1": (lambda: EvalConfig.from_dict(_saved("run_schema1/config.json")), "96c0bae4", "b504d3dc8fbe"),
    "knowledge_json": (lambda: EvalConfig.from_dict(_saved("run_config_knowledge.json")), "65aed3d0", "86c5e4ce4bd2"),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_run_identity_is_unchanged(name):
    import hashlib

    make, fingerprint, key = PINNED[name]
    cfg = make()
    assert cfg.fingerprint() == fingerprint  # the run folder's name: old runs resume
    comparison = EvalConfig.comparison_key(cfg.to_dict(), ["seed", "knowledge"])
    assert hashlib.sha256(comparison.encode()).hexdigest()[:12] == key


def test_run_identity_through_the_command_line(tmp_path):
    import hashlib

    p = write(tmp_path, "budgets: 8:16:8\ntemperature: 0\nlimit: 0\nengine_options: {n_slots: 2, ctx_per_slot: 2048}\n"
                        "format: m1\n")
    cfg = _eval("--config", str(p), "seed=2", "engine_options.n_threads=1", "--engine-opt", "n_batch=64")
    assert cfg.fingerprint() == "94556ca5"
    key = EvalConfig.comparison_key(cfg.to_dict(), ["seed", "knowledge"])
    assert hashlib.sha256(key.encode()).hexdigest()[:12] == "c5f16606687d"
    partial = EvalConfig.comparison_key({"budgets": [32, 64], "chunk_size": 8})  # a run saved before most fields
    assert hashlib.sha256(partial.encode()).hexdigest()[:12] == "b539cf600159"


@pytest.mark.parametrize("name", ["run_schema1/config.json", "run_config_knowledge.json"])
def test_old_run_configs_load_and_keep_their_identity(name, capsys):
    saved = _saved(name)
    cfg = _eval("--config", str(DATA_DIR / name))  # a run folder's config.json, as --config reads it
    assert EvalConfig.identity(cfg.to_dict()) == EvalConfig.identity(saved)
    assert cfg == EvalConfig.from_dict(saved)


# ---- the typed settings agree with the registries they name ----

def test_choices_match_the_registries():
    import dataclasses
    import typing

    from m1.config import Engine, Format, Grader, Knowledge
    from m1.engine_options import ENGINE_OPTIONS
    from m1.engines import ENGINES, engine_options
    from m1.grading import GRADERS
    from m1.knowledge.conditions import CONDITIONS
    from m1.thinking.formats import FORMATS

    assert typing.get_args(Engine) == ENGINES and set(ENGINE_OPTIONS) == set(ENGINES)
    assert set(typing.get_args(Format)) == {"auto", *FORMATS}
    assert set(typing.get_args(Grader)) == set(GRADERS) and typing.get_args(Knowledge) == CONDITIONS
    for name, options in ENGINE_OPTIONS.items():  # every option each engine takes, and no other
        assert [f.name for f in dataclasses.fields(options)] == engine_options(name), name


@pytest.mark.parametrize("kwargs, message", [
    ({"engine_options": {"n_slots": 0}}, "engine_options (llamacpp): n_slots is 0; it must be > 0"),
    ({"engine": "openai", "engine_options": {"server": "tgi"}}, "server: unknown server kind 'tgi'"),
    ({"engine": "hf", "model": "m", "engine_options": {"dtype": "fp8"}}, "dtype must be one of auto, float32,"),
    ({"top_p": 0}, "EvalConfig: top_p is 0; it must be > 0"),
    ({"format": "r2"}, "EvalConfig: format must be one of auto, m1, s1, r1, plain, got 'r2'"),
    ({"temperature": float("nan")}, "EvalConfig: temperature: expected number, got nan"),
    ({"budgets": "8,x"}, "EvalConfig: budgets: budget must be a whole number, got 'x'"),
])
def test_a_config_built_in_code_fails_in_one_line(kwargs, message):
    with pytest.raises(M1Error) as e:
        EvalConfig(**kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_replace_and_asdict_still_check_and_copy():
    import dataclasses

    cfg = EvalConfig(budgets=(64,), limit=0)
    assert cfg.limit is None and dataclasses.asdict(cfg)["budgets"] == (64,)
    assert dataclasses.replace(cfg, budgets="8:16:8").budgets == (8, 16)  # type: ignore[arg-type]
    with pytest.raises(M1Error, match="answer_max_tokens is 0"):
        dataclasses.replace(cfg, answer_max_tokens=0)


def test_data_config_checks_in_one_line(tmp_path):
    from m1.curation.config import load_config as load_data

    bad = write(tmp_path, "out_dir: x\ndifficulty: {models: [{engine: openai, options: {timeout: 0}}]}\n")
    with pytest.raises(M1Error, match=r"c\.yaml: options \(openai\): timeout is 0; it must be > 0"):
        load_data(bad)
    bad = write(tmp_path, "out_dir: x\ndomains: {method: bert}\n")
    with pytest.raises(M1Error, match=r"c\.yaml: domains\.method must be one of llm, tfidf, embedding, got 'bert'"):
        load_data(bad)
    with pytest.raises(M1Error, match=r"command line: dedup\.ngram_overlap is 2; it must be <= 1"):
        load_data(write(tmp_path, "out_dir: x\n"), ["dedup.ngram_overlap=2"])
    assert load_data(write(tmp_path, "out_dir: x\ndedup:\n  benchmarks: medqa, pubmedqa\n")).dedup.benchmarks == \
        ("medqa", "pubmedqa")
