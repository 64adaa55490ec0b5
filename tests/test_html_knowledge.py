"""The knowledge a trace was given, in the report's trace viewer: where it went, in place.

A thinking insertion is a bordered, folding block inside the thinking at its offset, apart from
the model's own words; a prompt insertion a block before the question; the condition is in the
trace's header and the screened passages under the thinking. A corpus is untrusted text like
model output: a passage's markup shows literally and never runs. A sweep's insertions are stored
once per question, like its thinking (the largest budget's cover the smaller budgets').
"""
import json
from pathlib import Path

import pytest

from m1.reporting import html
from m1.reporting.report import report
from m1.runs import Run, Trace
from test_html_report import CHROMIUM, open_report, page_errors

BUDGETS = [32, 128, 256]
SCRIPT_IN_PASSAGE = "<script>alert('passage')</script>"
IMG_IN_PASSAGE = "<img src=x onerror=alert('img')>"
SCREENSHOT = Path("/tmp/m1_report_screenshot_knowledge.png")
OPTIONS = {"A": "Viral pneumonia", "B": "Mucormycosis", "C": "Sarcoidosis", "D": "Tuberculosis"}


def passage(pid, title, text, score):
    return {"id": pid, "source": pid.split("-")[0], "title": title, "text": text, "score": score}


# Two retrievals into the thinking: the second brings a passage that carries markup.
RETRIEVED = [
    [passage("pubmedqa-21645374", "Rhino-orbital mucormycosis", "Zygomycete hyphae invade vessels 🩺 early.", 11.25),
     passage("mesh-AB", "Mucorales", "Broad ribbon-like hyphae with right-angle branching.", 9.5)],
    [passage("medqa_train-0012", "A diabetic with sinusitis", "Black eschar " + SCRIPT_IN_PASSAGE, 8.0),
     passage("headqa_train-77", "Amphotericin", "Treat at once " + IMG_IN_PASSAGE, 7.75)],
]
GOLD = [passage("pubmedqa-99", "Explanation", "Ketoacidosis favours Mucorales; débridement and amphotericin.", 0.0)]
SCREENED = [{"id": "medqa_test-0001", "source": "medqa_test", "rule": "question overlap", "score": 0.93}]
AT = [40, 150]  # counted thinking tokens before each thinking insertion: 32 sees none, 128 one, 256 both
OWN = ["Let me think 🩺: a diabetic with facial pain and a black eschar. ",
       "Hyphae that branch at right angles point to mucor, not aspergillus. ",
       "So the answer is B, and treatment cannot wait."]
CUTS = {32: 20, 128: 30}  # how much of the next own piece each smaller budget keeps


def rendered(passages):
    return "\n[Knowledge]\n" + "\n\n".join(p["title"] + "\n" + p["text"] for p in passages) + "\n[/Knowledge]\n"


def thinking_sweep(qid, inline, filtered):
    """One question of a cut sweep with knowledge into the thinking. inline: the inserted text is
    part of trace.thinking (at char_at); else the thinking holds only the model's words and the
    insertion sits between them. filtered: each budget lists only its own insertions (at < budget)."""
    texts = [rendered(ps) for ps in RETRIEVED]
    thinking, insertions = "", []
    for k, own in enumerate(OWN):
        thinking += own
        if k < len(AT):
            insertions.append({"where": "thinking", "at": AT[k], "char_at": len(thinking), "tokens": 60 + k,
                               "query": f"{qid} query {k} <b>bold</b>", "text": texts[k], "passages": RETRIEVED[k]})
            thinking += texts[k] if inline else ""
    traces = []
    for budget in BUDGETS:
        mine = [x for x in insertions if x["at"] < budget]
        if budget == BUDGETS[-1]:
            text = thinking
        else:  # the largest budget's thinking, cut after its own insertions and a little more
            end = mine[-1]["char_at"] + (len(mine[-1]["text"]) if inline else 0) if mine else 0
            text = thinking[:end + CUTS[budget]]
        traces.append(trace(qid, budget, text, knowledge="retrieve", knowledge_where="thinking",
                            insertions=mine if filtered else insertions, screened=SCREENED,
                            knowledge_tokens=sum(x["tokens"] for x in mine)))
    return traces


def trace(qid, budget, thinking, **knowledge):
    stem = f"Question {qid}: a diabetic has facial pain and a black eschar. What is it?"
    prompt = knowledge.pop("prompt_head", "") + stem + "\n" + "\n".join(f"{k}. {v}" for k, v in OPTIONS.items())
    return Trace(id=qid, source="medqa", budget=budget, gold="B", options=OPTIONS, question=stem,
                 prompt="<|im_start|>user\n" + prompt + "<|im_end|>\n<|im_start|>assistant\n",
                 thinking=thinking, thinking_tokens=min(budget, 200), answer="The answer is B.", graded_text="B",
                 letter="B", outcome="correct", correct=True, **knowledge)


def prompt_run_traces():
    text = rendered(GOLD)
    ins = {"where": "prompt", "at": None, "char_at": None, "tokens": 25, "query": None, "text": text,
           "passages": GOLD}
    return [trace("gold-q", b, "Ketoacidosis and an eschar: mucor. The answer is B.", knowledge="gold",
                  knowledge_where="prompt", insertions=[ins], knowledge_tokens=25, prompt_head=text)
            for b in BUDGETS]


def make_report(tmp: Path, filtered=True):
    think = Run(tmp / "runs" / "retrieve", {"budgets": BUDGETS, "knowledge": "retrieve", "knowledge_where": "thinking",
                                            "knowledge_counted": False},
                thinking_sweep("inline-q", True, filtered) + thinking_sweep("between-q", False, filtered))
    gold = Run(tmp / "runs" / "gold", {"budgets": BUDGETS, "knowledge": "gold", "knowledge_where": "prompt"},
               prompt_run_traces())
    report([think, gold], tmp / "report", analyses=[])  # the viewer only: the analyses have their own tests
    page = (tmp / "report" / "report.html").read_text()
    return {"think": think, "gold": gold}, page_data(page), page


def page_data(page: str) -> dict:
    start = page.index('id="m1-data">') + len('id="m1-data">')
    return json.loads(page[start:page.index("</script>", start)])


def units(text, n):
    """The first n UTF-16 code units of text (what JavaScript's slice(0, n) gives)."""
    return text.encode("utf-16-le")[:2 * n].decode("utf-16-le")


def resolved(data, t, key):
    """A trace's field as the page reads it: its own, its question's, or a prefix of a longer one's."""
    v = t[key] if key in t else data["questions"][t["q"]][key]
    if isinstance(v, dict) and "prefix_of" in v:
        full = data["traces"][v["prefix_of"]][key]
        return full[:v["items"]] if "items" in v else units(full, v["units"])
    return v


def shown_traces(data):
    for t in data["traces"]:
        q = data["questions"][t["q"]]
        yield (data["runs"][q["run"]]["name"], q["id"], t["budget"]), t


# ---------------------------------------------------------------- the page's data

def test_page_data_places_each_insertion_where_it_went(tmp_path):
    runs, data, _ = make_report(tmp_path)
    by_key = {(r.name, t.id, t.budget): t for r in runs.values() for t in r.traces}
    seen = 0
    for key, t in shown_traces(data):
        source = by_key[key]
        shown = resolved(data, t, "insertions") or []
        assert len(shown) == len(source.insertions or [])  # each budget: exactly its own insertions
        for x, want in zip(shown, source.insertions or []):
            host = resolved(data, t, "thinking" if want["where"] == "thinking" else "prompt")
            before = units(host, x["units"])
            inserted = host.encode("utf-16-le")[2 * x["units"]:2 * (x["units"] + x["inline"])].decode("utf-16-le") \
                if x["inline"] else x["text"]
            assert inserted == want["text"]
            if want["where"] == "thinking":
                assert before == source.thinking[:want["char_at"]]
            else:  # before the question, after the chat markup
                assert before == "<|im_start|>user\n" and source.question in host[len(before) + len(inserted):]
            assert [p["id"] for p in x["passages"]] == [p["id"] for p in want["passages"]]
            assert (x["at"], x["tokens"], x["query"]) == (want["at"], want["tokens"], want["query"])
            seen += 1
        assert resolved(data, t, "screened") == source.screened
        assert (t["knowledge"], t["knowledge_where"]) == (source.knowledge, source.knowledge_where)
    assert seen == 2 * (0 + 1 + 2) + 3  # two thinking sweeps, one prompt sweep


def test_insertions_of_a_sweep_are_stored_once(tmp_path):
    """Each passage's text is in the data block once per question that was given it: the largest
    budget's insertions cover the smaller budgets', the inserted text is not repeated beside the
    thinking that holds it, nor a passage's text beside the inserted text that holds it."""
    _, data, page = make_report(tmp_path)
    block = page[page.index('id="m1-data">'):]
    for p in RETRIEVED[0]:
        assert block.count(json.dumps(p["text"])[1:-1]) == 2  # inline-q and between-q
    assert block.count(json.dumps(GOLD[0]["text"])[1:-1]) == 1  # in the prompt
    refs = [t["insertions"] for _, t in shown_traces(data) if isinstance(t.get("insertions"), dict)]
    assert len(refs) == 2 + 2  # each thinking sweep's 128 (32 has none), the prompt sweep's two smaller
    assert sum(isinstance(t.get("screened"), dict) for _, t in shown_traces(data)) == 2 * 2


def test_a_trace_shows_only_the_insertions_before_its_budget(tmp_path):
    """Whether a run lists each budget's own insertions or the largest budget's on every trace,
    the page is the same: an insertion at or past a budget belongs to a larger one."""
    _, filtered, _ = make_report(tmp_path / "a")
    _, full, _ = make_report(tmp_path / "b", filtered=False)
    for data in (filtered, full):
        for key in ("generated", "runs", "images"):
            data.pop(key)
    assert filtered == full


def test_runs_without_knowledge_carry_none(tmp_path):
    run = Run(tmp_path / "plain", {"budgets": [64]}, [trace("q", 64, "plain thinking")])
    report([run], tmp_path / "report", analyses=[])
    (t,) = page_data((tmp_path / "report" / "report.html").read_text())["traces"]
    assert t["insertions"] is None and t["knowledge"] == "none" and t["screened"] is None


# ---------------------------------------------------------------- in a real browser

@pytest.fixture(scope="module")
def kpage(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    tmp = tmp_path_factory.mktemp("html_knowledge")
    runs, data, _ = make_report(tmp)
    b = open_report(tmp, tmp / "report" / "report.html")
    b.runs = {run.name: [t.to_json() for t in run.traces] for run in runs.values()}
    try:
        yield b
    finally:
        b.close()


def open_trace(b, run, qid, budget):
    b.js(f"""(() => {{ const set = (id, v) => {{ const e = document.getElementById(id); e.value = v;
        e.dispatchEvent(new Event("change")); }};
        document.getElementById('tab-traces').click();
        set("f-run", {json.dumps(run)}); set("f-budget", "{budget}"); set("f-search", {json.dumps(qid)}); }})()""")
    b.wait_js("document.getElementById('count').dataset.n === '1'")
    b.click("#list .row")
    b.wait_js(f"document.getElementById('d-title').textContent === {json.dumps(f'{qid} · budget {budget}')}")


# The thinking block, piece by piece: ["own", text] for the model's words, ["ins", at, inserted text, pids].
PIECES = """Array.from(document.getElementById('d-thinking').childNodes).map((n) =>
    n.nodeType === Node.TEXT_NODE ? ["own", n.textContent]
    : ["ins", n.dataset.at, n.querySelector('.ins-text').textContent,
       Array.from(n.querySelectorAll('.pid')).map((e) => e.textContent)])"""


@pytest.mark.parametrize("qid", ["inline-q", "between-q"])
def test_thinking_insertions_sit_in_place(kpage, qid):
    b = kpage
    open_trace(b, "0", qid, 256)
    want = next(t for t in b.runs["retrieve"] if t["id"] == qid and t["budget"] == 256)
    pieces = b.js(PIECES)
    assert [p[0] for p in pieces] == ["own", "ins", "own", "ins", "own"]
    assert [p[1] for p in pieces[0::2]] == OWN  # the model's own words, untouched, around the blocks
    for p, x in zip(pieces[1::2], want["insertions"]):
        assert p[1:] == [str(x["at"]), x["text"], [q["id"] for q in x["passages"]]]
    # Set apart: the block is drawn with a border of its own, and it folds.
    assert b.js("getComputedStyle(document.querySelector('#d-thinking details.ins')).borderLeftWidth") == "4px"
    assert b.js("document.querySelector('#d-thinking details.ins').open") is True
    b.click("#d-thinking details.ins summary")
    b.wait_js("!document.querySelector('#d-thinking details.ins').open")
    assert b.js("document.getElementById('d-knowledge').textContent") == "knowledge retrieve in the thinking"
    note = b.js("document.querySelector('#d-thinking').previousElementSibling.textContent")
    assert note == ("Thinking · 2 insertions · 121 tokens inserted, not counted against the budget · "
                    "200 thinking tokens of the model's")
    assert b.js("Array.from(document.querySelectorAll('#d-screened li')).map((e) => e.textContent)") == \
        ["medqa_test-0001 medqa_test · rule question overlap · score 0.930"]
    assert page_errors(b) == []


def test_a_smaller_budget_shows_its_own_insertions(kpage):
    b = kpage
    open_trace(b, "0", "inline-q", 128)
    assert [p[0] for p in b.js(PIECES)] == ["own", "ins", "own"]
    assert b.js("document.querySelector('#d-thinking details.ins').dataset.at") == "40"
    open_trace(b, "0", "inline-q", 32)
    assert b.js("document.querySelectorAll('#d-thinking details.ins').length") == 0
    assert b.js("document.getElementById('d-thinking').textContent") == OWN[0][:20]
    # Across budgets, the blocks are folded in each column.
    b.click("#btn-compare")
    b.wait_js("!!document.getElementById('compare')")
    assert b.js("Array.from(document.querySelectorAll('#compare .c-thinking')).map((c) =>"
                " c.querySelectorAll('details.ins:not([open])').length)") == [0, 1, 2]


def test_prompt_insertion_is_a_block_before_the_question(kpage):
    b = kpage
    open_trace(b, "1", "gold-q", 128)
    kids = b.js("Array.from(document.getElementById('d-prompt').childNodes).map((n) =>"
                " n.nodeType === Node.TEXT_NODE ? n.textContent : 'BLOCK ' + n.dataset.where)")
    assert kids[0] == "<|im_start|>user\n" and kids[1] == "BLOCK prompt" and kids[2].startswith("Question gold-q")
    assert b.js("document.querySelector('#d-prompt details.ins .ins-text').textContent") == rendered(GOLD)
    assert b.js("document.getElementById('d-knowledge').textContent") == "knowledge gold in the prompt"
    assert b.js("document.querySelector('#d-prompt').previousElementSibling.textContent") == \
        "Prompt · 25 knowledge tokens before the question"
    assert b.js("document.getElementById('d-screened')") is None  # nothing screened: no section
    assert page_errors(b) == []


def test_a_passage_search_finds_the_traces_given_it(kpage):
    b = kpage
    b.js("""(() => { for (const id of ["f-run", "f-budget", "f-search"]) { const e = document.getElementById(id);
        e.value = id === "f-search" ? "right-angle branching" : ""; e.dispatchEvent(new Event("change")); } })()""")
    assert b.js("document.getElementById('count').dataset.n") == "4"  # two questions at 128 and 256


def test_markup_in_a_passage_shows_as_text_and_never_runs(kpage):
    b = kpage
    open_trace(b, "0", "between-q", 256)
    block = b.js("document.querySelectorAll('#d-thinking details.ins')[1].textContent")
    assert SCRIPT_IN_PASSAGE in block and IMG_IN_PASSAGE in block and "query: between-q query 1 <b>bold</b>" in block
    assert b.js("document.querySelectorAll('img[src=x], [onerror], #detail .query b, #detail script').length") == 0
    assert b.js("document.scripts.length") == 2  # the data block and the page's own script
    assert b.js("window.__m1_alerts") == [] and b.js("window.__m1_csp") == []
    assert page_errors(b) == []
    raw = b.html_file.read_text()
    assert SCRIPT_IN_PASSAGE not in raw and IMG_IN_PASSAGE not in raw
    # For a person to look at: the viewer with an insertion open in the thinking.
    b.js("document.getElementById('d-thinking').previousElementSibling.scrollIntoView({block: 'start'})")
    b.screenshot(b.tmp / "knowledge.png")
    SCREENSHOT.write_bytes((b.tmp / "knowledge.png").read_bytes())


def test_a_malformed_insertion_still_renders():
    """A run written by another version, or edited by hand, still gives a page: what cannot be
    placed goes at the end of its text, and what is not an insertion is left out."""
    rec = {"budget": 64, "thinking": "short 🩺", "prompt": "p", "question": "",
           "insertions": ["junk", {"where": "thinking", "at": "?", "char_at": 10_000, "text": 5},
                          {"text": "in the prompt?"}, {"where": "thinking", "at": 64, "char_at": 0, "text": "late"}]}
    beyond, unplaced = html.page_insertions(rec) or []
    assert (beyond["where"], beyond["units"], beyond["inline"], beyond["text"]) == ("thinking", 8, 0, "")
    assert (unplaced["where"], unplaced["units"], unplaced["text"]) == ("prompt", 0, "in the prompt?")
    assert html.page_insertions({"insertions": "not a list"}) is None
