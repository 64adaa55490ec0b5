"""Dense sweeps: the --budgets range syntax, and option-letter probes (engines/probes.py) on the
real embedded engine: the letter at each probe budget of a cut sweep equals an independent run's,
and the letters' log-probabilities come from the logits of the answer position."""
import argparse
import math

import pytest

from m1.config import MAX_BUDGETS, EvalConfig, parse_budgets
from m1.engines import probes
from m1.engines.base import GenRequest
from m1.errors import M1Error
from m1.grading import grade
from m1.thinking import BudgetController, ThinkingParams, get_format, sweep


# -- range syntax ------------------------------------------------------------------------
def test_range_syntax_includes_the_stop_on_the_grid():
    assert parse_budgets("32:512:32") == tuple(range(32, 513, 32))
    assert parse_budgets("32:100:32") == (32, 64, 96)  # 100 is off the grid
    assert parse_budgets("8:8:5") == (8,)


def test_ranges_mix_with_numbers_sorted_and_deduplicated():
    assert parse_budgets("16,32:512:32,1024") == (16, *range(32, 513, 32), 1024)
    assert parse_budgets(" 64, 8:32:8 ,16,,") == (8, 16, 24, 32, 64)
    assert parse_budgets([256, "8:16:8", 16]) == (8, 16, 256)  # a config file's list
    assert parse_budgets((64, 32)) == (32, 64)
    assert parse_budgets("0,64:128:64") == (0, 64, 128)  # 0: answer at once


@pytest.mark.parametrize("spec,message", [
    ("8:16:0", "step must be positive"),
    ("8:16:-8", "step must be positive"),
    ("64:32:8", "starts after it stops"),
    ("8:x:8", "whole number"),
    ("8:16:2.5", "whole number"),
    ("1.5", "whole number"),
    ("abc", "whole number"),
    ("8:16", "start:stop:step"),
    ("8:16:4:2", "start:stop:step"),
    ("-32:64:32", "0 or more"),
    ("-32", "0 or more"),
    ("1:5000:1", "more than 1000"),
    (f"1:{MAX_BUDGETS}:1,{MAX_BUDGETS + 1}", "more than 1000"),
    ("", "no budgets"),
    (" , ", "no budgets"),
    ([True], "whole number"),
])
def test_bad_budgets_are_one_line_errors(spec, message):
    with pytest.raises(M1Error, match=message) as e:
        parse_budgets(spec)
    assert "\n" not in str(e.value)


def test_config_takes_the_string_form_and_the_cli_the_same_parser():
    from m1.config import budgets_arg as _budgets

    # the string form, as config files may give it (the field is typed as the parsed tuple)
    assert EvalConfig(budgets="32:128:32").budgets == (32, 64, 96, 128)  # type: ignore[arg-type]
    assert EvalConfig.from_dict({"budgets": "16,32:64:32"}).budgets == (16, 32, 64)
    assert EvalConfig(budgets=(256, 32, 32)).budgets == (32, 256)
    with pytest.raises(M1Error, match="step must be positive"):
        EvalConfig(budgets="32:128:0")  # type: ignore[arg-type]
    assert _budgets("16,32:512:32,1024") == parse_budgets("16,32:512:32,1024")
    with pytest.raises(argparse.ArgumentTypeError, match="starts after it stops"):
        _budgets("64:32:8")


def test_cli_rejects_a_bad_range_in_one_line(capsys):
    from m1.cli import main

    with pytest.raises(SystemExit) as e:
        main(["eval", "--budgets", "32:512:0"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--budgets" in err and "step must be positive" in err


# -- probe arithmetic -----------------------------------------------------------------
def test_answer_position_is_the_first_token_naming_a_letter():
    letters = ("A", "B", "C", "D")
    assert [probes.letter_of(t, letters) for t in [" C", "C", "(B", " **D**", "A.", " a", "Answer", " E", "\n"]] \
        == ["C", "C", "B", "D", "A", None, None, None, None]
    assert probes.find_position([" The", " answer", " is", " (", "B", ")"], letters, 6) == 4
    assert probes.find_position([" The", " answer", " is", " B"], letters, 3) is None  # only in the stop


def test_letter_logprobs_sum_both_spellings():
    import numpy as np

    logits = np.array([2.0, 1.0, 0.5, -1.0, 3.0])
    ids = {"A": (0, 1), "B": (2,), "C": ()}
    got = probes.from_logits(logits, ids)
    norm = math.log(np.exp(logits).sum())
    assert got["A"] == pytest.approx(math.log(math.exp(2) + math.exp(1)) - norm)
    assert got["B"] == pytest.approx(0.5 - norm) and "C" not in got  # no single-token spelling
    # top-k: by id where the server gives ids (the sampled token listed twice counts once), else by text
    top = [(0, " A", -1.0), (2, "B", -2.0), (0, " A", -1.0), (9, "A", -0.5)]
    assert probes.from_top(top, ids) == {"A": pytest.approx(-1.0), "B": pytest.approx(-2.0)}
    by_text = [(None, " A", -1.0), (None, "A", -2.0), (None, "(B", -0.1)]
    assert probes.from_top(by_text, ids) == {"A": pytest.approx(math.log(math.exp(-1) + math.exp(-2)))}


# -- the real embedded engine ---------------------------------------------------------------
def keys(items):
    return [it.id for it in items]


def letters(items):
    return [tuple(it.options) for it in items]


def bare_letter(engine, ans) -> str | None:
    """The generated letter when the answer position's token is a bare letter ("C" or " C")."""
    text = engine.detokenize([ans.ids[ans.option_position]])
    return text.strip() if text.strip() in ans.option_logprobs and text.lstrip(" ") == text.strip() else None


def check_probe(engine, ans, options):
    if ans.option_position is None:
        assert ans.option_logprobs is None
        return False
    lp = ans.option_logprobs
    assert set(lp) == set(options)  # in process: every letter, from the full distribution
    assert all(math.isfinite(v) and v <= 0 for v in lp.values())
    assert sum(math.exp(v) for v in lp.values()) <= 1 + 1e-9  # disjoint events
    assert 0 <= ans.option_position < len(ans.ids)
    before = [engine.detokenize([t]) for t in ans.ids[: ans.option_position]]
    assert all(probes.letter_of(t, options) is None for t in before)  # the first one
    generated = bare_letter(engine, ans)
    if generated is not None:  # greedy: the argmax letter is the one generated
        assert max(lp, key=lp.get) == generated
    return True


def test_dense_cut_sweep_probes_equal_independent_runs(engine, prompts, medqa_items):
    """Each probe budget of one long think cut at B (prefix reused, short answer phases) gives
    the answer, the letter and the letter log-probabilities of a run made at B from scratch."""
    ctl = BudgetController(engine, get_format("plain"), ThinkingParams(budget=48, answer_max_tokens=8))
    budgets = parse_budgets("8:48:8")
    n = 4
    cut = sweep(ctl, prompts[:n], keys(medqa_items)[:n], budgets, "cut", letters(medqa_items)[:n])
    ind = sweep(ctl, prompts[:n], keys(medqa_items)[:n], budgets, "independent", letters(medqa_items)[:n])
    probed = 0
    for b in budgets:
        for item, (t1, a1), (t2, a2) in zip(medqa_items, zip(*cut[b]), zip(*ind[b])):
            assert (t1.ids, t1.ended) == (t2.ids, t2.ended) and len(t1.ids) <= b
            assert len(a1.ids) <= 8 and (a1.ids, a1.prefix) == (a2.ids, a2.prefix)
            g1, g2 = (grade(a.prefix.rsplit("\n", 1)[-1] + a.text, item) for a in (a1, a2))
            assert g1.letter == g2.letter
            assert (a1.option_position, a1.option_logprobs) == (a2.option_position, a2.option_logprobs)
            probed += check_probe(engine, a1, tuple(item.options))
    assert probed >= 4, "the embedded model names a letter after most budget cuts"


def test_probes_change_nothing_that_is_generated(engine, prompts, medqa_items):
    """The same tokens with and without a probe, batched or alone (batch invariance kept); a
    request without option letters gets none."""
    fmt = get_format("m1")
    ctl = BudgetController(engine, fmt, ThinkingParams(budget=16, answer_max_tokens=12))
    asked = [GenRequest(tuple(ctl.think_prompt(p)) + tuple(engine.tokenize(fmt.answer_forced)), 12,
                        stop_token_ids=engine.eos_token_ids, option_letters=tuple(it.options))
             for p, it in zip(prompts, medqa_items)]
    plain = [GenRequest(r.prompt_ids, r.max_new_tokens, r.stop_token_ids) for r in asked]
    mixed = [r if i % 2 else p for i, (r, p) in enumerate(zip(asked, plain))]
    together = engine.generate(asked)
    alone = [engine.generate([r])[0] for r in asked]
    without = engine.generate(plain)
    half = engine.generate(mixed)
    for a, b, c, d, m in zip(together, alone, without, half, mixed):
        assert a.token_ids == b.token_ids == c.token_ids == d.token_ids
        assert (a.option_position, a.option_logprobs) == (b.option_position, b.option_logprobs)
        assert c.option_logprobs is None and c.option_position is None
        if m.option_letters:
            assert (d.option_position, d.option_logprobs) == (a.option_position, a.option_logprobs)
        else:
            assert d.option_logprobs is None
    found = [r for r in together if r.option_logprobs is not None]
    assert found, "after 'Final Answer:' the embedded model names a letter"
    for r, req in zip(together, asked):
        if r.option_logprobs is not None:
            assert r.option_position < r.stop_index
            assert set(r.option_logprobs) == set(req.option_letters)


def test_m1_format_answers_carry_the_probe(engine, prompts, medqa_items):
    ctl = BudgetController(engine, get_format("m1"), ThinkingParams(budget=24, answer_max_tokens=16))
    out = sweep(ctl, prompts, keys(medqa_items), [24], "cut", letters(medqa_items))
    probed = sum(check_probe(engine, a, tuple(it.options)) for a, it in zip(out[24][1], medqa_items))
    assert probed >= 1  # SmolLM2 often ends its turn at once after "<|im_start|>answer\n": no letter, no probe
    # no option letters: no probe
    plain = sweep(ctl, prompts[:2], keys(medqa_items)[:2], [24], "cut")
    assert all(a.option_logprobs is None for a in plain[24][1])
