"""The report page's data block, without a browser: a budget sweep's thinking stored once."""
import json

from m1.reporting.html import build_data, script_json

BUDGETS = [64, 128, 256, 512]


def record(qid, budget, thinking):
    return {"id": qid, "source": "medqa", "budget": budget, "gold": "A", "options": {"A": "x", "B": "y"},
            "prompt": f"<user>{qid}</user>", "thinking": thinking, "thinking_tokens": budget, "answer": "A",
            "outcome": "correct", "correct": True}


def sliced(full: str, units: int) -> str:
    """What JavaScript's String.slice(0, units) gives: units are UTF-16 code units."""
    return full.encode("utf-16-le")[: 2 * units].decode("utf-16-le")


def test_sweep_thinking_is_stored_once_and_sliced_back_exactly():
    words = "fever 🩺 renal naïve biopsy".split()
    records = []
    for q in range(10):
        sweep = [words[(q + i) % len(words)] for i in range(40)]
        records += [record(f"q{q}", b, " ".join(sweep[: 10 * (k + 1)])) for k, b in enumerate(BUDGETS)]
    records.append(record("q0", 1024, "a different path"))  # not a prefix of anything: kept whole
    data = build_data([{"name": "run", "records": records, "config": {}}], {})
    by_key = {(r["id"], r["budget"]): r["thinking"] for r in records}
    refs, referenced = 0, 0
    for t in data["traces"]:
        want = by_key[(data["questions"][t["q"]]["id"], t["budget"])]
        th = t["thinking"]
        if isinstance(th, dict):
            refs += 1
            referenced += len(script_json(want))
            anchor = data["traces"][th["prefix_of"]]
            assert isinstance(anchor["thinking"], str) and anchor["q"] == t["q"]
            assert sliced(anchor["thinking"], th["units"]) == want
        else:
            assert th == want
    assert refs == 10 * (len(BUDGETS) - 1)  # each question's longest sweep trace carries the text
    saved = len(script_json(build_data_without_sharing(records))) - len(script_json(data))
    assert saved > 0.8 * referenced  # the shorter texts are gone from the page, bar a small reference each


def build_data_without_sharing(records):
    """The same block with every thinking text kept whole (what the page held before)."""
    data = build_data([{"name": "run", "records": records, "config": {}}], {})
    by_key = {(r["id"], r["budget"]): r["thinking"] for r in records}
    for t in data["traces"]:
        t["thinking"] = by_key[(data["questions"][t["q"]]["id"], t["budget"])]
    return json.loads(json.dumps(data))
