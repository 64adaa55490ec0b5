"""report.html in a real headless Chromium: loads clean, filters, search, trace view,
cross-budget comparison, 10,000 traces stay fast, and model output never becomes markup; the
analyses' sections (contents, text, folded tables, figures) and their links into the viewer.

Chromium is driven over the DevTools protocol on a pipe (--remote-debugging-pipe: fd 3
in, fd 4 out, NUL-terminated JSON), so no websocket library is needed.
"""
import base64
import fcntl
import json
import os
import random
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from m1.reporting import cli_report

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason="needs Debian's chromium (apt-get install chromium)")

# Without the networking flags Chromium waits on services it cannot reach on a closed network.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--mute-audio", "--remote-debugging-pipe"]

BUDGETS = [64, 128, 256, 512, 1024]
SCRIPT_IN_THINKING = "<script>alert(1)</script>"
IMG_IN_ANSWER = "<img src=x onerror=alert(1)>"
BREAKOUT_IN_PROMPT = "</script><script>alert(2)</script><!--"
HANDLER_IN_OPTION = "<b onmouseover=alert(3)>bold</b> &amp; \u2028line"
NEEDLE = "zygomycosisneedle"  # in the thinking of exactly one trace
SCREENSHOT = Path("/tmp/m1_report_screenshot.png")


# ---------------------------------------------------------------- synthetic runs

def make_records(n_questions, sources, seed, inject=False):
    rnd = random.Random(seed)
    words = ("patient presents with fever cough likely diagnosis consider differential renal hepatic "
             "biopsy shows granulomas therefore the answer is most consistent with 🩺 naïve").split()
    records = []
    for source in sources:
        for qi in range(n_questions):
            qid = f"{source}-{qi:04d}"
            gold = "ABCD"[qi % 4]
            options = {L: f"option {L} for {qid}" for L in "ABCD"}
            stem = f"Question {qid}: A {20 + qi % 60}-year-old " + " ".join(rnd.choice(words) for _ in range(25)) + "?"
            if inject and qi == 7:
                stem += " " + BREAKOUT_IN_PROMPT
                options["B"] = HANDLER_IN_OPTION
            prompt = "<|im_start|>user\n" + stem + "\n" + "\n".join(f"{L}. {t}" for L, t in options.items()) + \
                "\n<|im_end|>\n<|im_start|>assistant\n"
            sweep = [rnd.choice(words) for _ in range(12 * len(BUDGETS))]
            for b, budget in enumerate(BUDGETS):
                n_tok = min(budget, rnd.randint(10, 900))
                # As in a cut sweep: the thinking at a budget is a prefix of the one at the next.
                thinking = f"[{qid}] " + " ".join(sweep[: 12 * (b + 1)])
                answer = f"The answer is \\boxed{{{rnd.choice('ABCD')}}}"
                if inject and qi == 7:
                    thinking += " " + SCRIPT_IN_THINKING
                    answer += " " + IMG_IN_ANSWER
                if inject and qi == 3 and budget == 256 and source == sources[0]:
                    thinking += " " + NEEDLE
                outcome = rnd.choice(["correct", "wrong", "wrong", "unparsed"])
                letter = None if outcome == "unparsed" else (gold if outcome == "correct" else "ABCD"[(qi + 1) % 4])
                records.append({
                    "id": qid, "source": source, "budget": budget, "gold": gold, "options": options,
                    "prompt": prompt, "prompt_tokens": 120, "thinking": thinking, "thinking_tokens": n_tok,
                    "thinking_ended": "budget" if n_tok == budget else "natural", "hit_budget": n_tok == budget,
                    "forcing_rounds": 0, "forced_at": [],
                    "think_finish_reasons": ["length" if n_tok == budget else "stop"],
                    "answer_prefix": "<answer>\n", "answer": answer, "answer_tokens": 9, "answer_finish_reason": "stop",
                    "graded_text": answer, "letter": letter, "outcome": outcome, "rule": "boxed" if letter else "none",
                    "correct": outcome == "correct"})
    return records


def write_run(folder: Path, records, **cfg):
    folder.mkdir(parents=True)
    config = {"benchmark": "medqa", "engine": "llamacpp", "model": None, "format": "m1", "budgets": BUDGETS,
              "forcing_rounds": 0, "temperature": 0.0, "method": "cut", **cfg}
    (folder / "config.json").write_text(json.dumps({"config": config, "environment": {}}))
    with open(folder / "traces.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------- a small DevTools client

class Browser:
    # set by the fixture that opens the report page
    tmp: Path
    html_file: Path
    records: list[dict]
    runs: dict[str, list[dict]]

    def __init__(self, profile: Path, log: Path):
        cmd_r, self.cmd_w = os.pipe()  # we write commands, Chromium reads fd 3
        self.res_r, res_w = os.pipe()  # Chromium writes fd 4, we read
        # Park the child's ends above 3/4 so the dup2s below cannot overwrite each other.
        hi_in = fcntl.fcntl(cmd_r, fcntl.F_DUPFD_CLOEXEC, 100)
        hi_out = fcntl.fcntl(res_w, fcntl.F_DUPFD_CLOEXEC, 100)
        os.close(cmd_r)
        os.close(res_w)

        def child():
            os.dup2(hi_in, 3)  # dup2 leaves 3 and 4 inheritable; the originals close on exec
            os.dup2(hi_out, 4)

        self.log = open(log, "wb")
        self.proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
                                     preexec_fn=child, close_fds=False)
        os.close(hi_in)
        os.close(hi_out)
        self.buf, self.next_id, self.session = b"", 0, None
        self.events: list[dict] = []

    def _recv(self, deadline):
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.res_r], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self.res_r, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method, params=None, timeout=60, browser_level=False):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if self.session and not browser_level:
            msg["sessionId"] = self.session
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self.cmd_w, data):]
        deadline = time.monotonic() + timeout
        while True:
            m = self._recv(deadline)
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m["result"]
            self.events.append(m)

    def wait_event(self, method, timeout=60):
        deadline = time.monotonic() + timeout
        while True:
            for i, m in enumerate(self.events):
                if m.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._recv(deadline))

    def js(self, expr):
        res = self.send("Runtime.evaluate", {"expression": expr, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in res:
            raise AssertionError(f"page JS failed: {res['exceptionDetails']}")
        return res["result"].get("value")

    def wait_js(self, expr, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expr)
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {expr}")

    def click(self, selector):
        """A real mouse click at the element's centre (not element.click())."""
        box = self.js(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
                      "e.scrollIntoView({block: 'nearest'});"
                      "const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent",
                      {"type": kind, "x": box[0], "y": box[1], "button": "left", "clickCount": 1})

    def screenshot(self, path: Path):
        data = base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"])
        path.write_bytes(data)
        return data

    def close(self):
        try:
            self.send("Browser.close", browser_level=True, timeout=10)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.cmd_w)
        os.close(self.res_r)
        self.log.close()


# Runs before any page script: records alerts and CSP violations instead of showing them.
WATCH = """
window.__m1_alerts = []; window.__m1_csp = [];
for (const name of ["alert", "confirm", "prompt"]) window[name] = (m) => { window.__m1_alerts.push(String(m)); };
document.addEventListener("securitypolicyviolation", (e) => window.__m1_csp.push(e.violatedDirective));
"""


def open_report(tmp: Path, html_file: Path) -> Browser:
    """A headless Chromium with html_file loaded, alerts and CSP violations recorded (WATCH)."""
    b = Browser(tmp / "profile", tmp / "chromium.log")
    try:
        target = b.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        b.session = b.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            b.send(f"{domain}.enable")
        b.send("Emulation.setDeviceMetricsOverride",
               {"width": 1440, "height": 900, "deviceScaleFactor": 1, "mobile": False})
        b.send("Page.addScriptToEvaluateOnNewDocument", {"source": WATCH})
        b.send("Page.navigate", {"url": html_file.as_uri()})
        b.wait_event("Page.loadEventFired")
    except BaseException:
        b.close()
        raise
    b.tmp, b.html_file = tmp, html_file
    return b


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("html_report")
    # Two runs, 10,000 traces: alpha 2 benchmarks x 800 questions x 5 budgets, beta 400 x 5.
    # They differ only in forcing_rounds, so the report has a forcing section with links.
    alpha = make_records(800, ["medqa", "pubmedqa"], seed=1, inject=True)
    beta = make_records(400, ["medqa"], seed=2)
    write_run(tmp / "runs" / "alpha", alpha)
    write_run(tmp / "runs" / "beta", beta, forcing_rounds=2)
    out = tmp / "report"
    args = type("Args", (), {"runs": [str(tmp / "runs" / "alpha"), str(tmp / "runs" / "beta")], "out": str(out),
                             "grader": None})
    assert cli_report.main(args) == 0
    b = open_report(tmp, out / "report.html")
    b.records, b.runs = alpha + beta, {"alpha": alpha, "beta": beta}
    try:
        yield b
    finally:
        b.close()


def reset(b):
    b.js("""(() => { for (const id of ["f-run", "f-source", "f-budget", "f-outcome", "f-search"]) {
        const e = document.getElementById(id); e.value = "";
        e.dispatchEvent(new Event("change")); } })()""")
    b.js("document.getElementById('tab-traces').click()")


def set_filter(b, fid, value):
    """Set a filter as a user would and return [visible count, milliseconds the filter took]."""
    return b.js(f"""(() => {{ const e = document.getElementById({json.dumps(fid)}); e.value = {json.dumps(value)};
        const t0 = performance.now(); e.dispatchEvent(new Event("change"));
        return [Number(document.getElementById("count").dataset.n), performance.now() - t0]; }})()""")


def page_errors(b):
    bad = [m for m in b.events if m.get("method") in ("Runtime.exceptionThrown", "Page.javascriptDialogOpening")]
    bad += [m for m in b.events if m.get("method") == "Log.entryAdded" and m["params"]["entry"]["level"] == "error"]
    bad += [m for m in b.events
            if m.get("method") == "Runtime.consoleAPICalled" and m["params"]["type"] in ("error", "assert")]
    return bad


# ---------------------------------------------------------------- tests

def test_page_loads_clean(page):
    assert page.js("document.getElementById('count').dataset.n") == "10000"
    assert page.js("document.querySelectorAll('#metrics tbody tr').length") == 3 * len(BUDGETS)
    # Every image decodes: the three plots, then the sections' figures.
    n_images = page.js("document.images.length")
    assert page.wait_js("Array.from(document.images).filter((i) => i.complete && i.naturalWidth > 0).length") \
        == n_images
    assert page.js("document.querySelectorAll('#s-plots img').length") == 3
    # The analyses that apply to these runs, each a section, each in the contents.
    keys = page.js("Array.from(document.querySelectorAll('section.section')).map((s) => s.dataset.key)")
    assert {"scaling", "forcing"} <= set(keys)
    assert n_images == 3 + page.js("document.querySelectorAll('section.section img').length") > 3
    toc = page.js("Array.from(document.querySelectorAll('#toc a')).map((a) => a.textContent)")
    titles = page.js("Array.from(document.querySelectorAll('section.section h2')).map((h) => h.textContent)")
    assert toc == ["Runs", "Accuracy by benchmark and budget", "Plots", *titles]
    assert page.js("document.title").startswith("m1 report")
    assert page.js("window.__m1_csp") == []
    assert page_errors(page) == []


def test_filters_change_visible_count(page):
    reset(page)
    n, _ = set_filter(page, "f-budget", "256")
    assert n == 2000
    n, _ = set_filter(page, "f-run", "1")  # beta
    assert n == 400
    n, _ = set_filter(page, "f-outcome", "correct")
    expected = sum(r["outcome"] == "correct" and r["budget"] == 256 for r in page.records[8000:])
    assert n == expected
    reset(page)
    n, _ = set_filter(page, "f-source", "pubmedqa")
    assert n == 4000
    n, _ = set_filter(page, "f-outcome", "unparsed")
    assert n == sum(r["source"] == "pubmedqa" and r["outcome"] == "unparsed" for r in page.records)
    # Only the rows in view are in the DOM, whatever the count.
    assert 0 < page.js("document.querySelectorAll('#list .row').length") < 100


def test_filtering_10k_traces_is_fast(page):
    reset(page)
    timings = [set_filter(page, "f-budget", "512")[1], set_filter(page, "f-budget", "")[1],
               set_filter(page, "f-outcome", "wrong")[1]]
    # A search that matches nothing scans every text (and the first one builds the index).
    n, ms = set_filter(page, "f-search", "no such words anywhere")
    assert n == 0
    timings.append(ms)
    n, ms = set_filter(page, "f-search", "granulomas biopsy")
    assert n > 0
    timings.append(ms)
    assert max(timings) < 1000, timings
    # Scrolling far down the virtual list renders the rows there.
    page.js("(() => { const l = document.getElementById('list'); l.scrollTop = l.scrollHeight / 2; })()")
    page.wait_js("Array.from(document.querySelectorAll('#list .row')).some((r) => parseInt(r.style.top) > 1000)")


def test_search_finds_known_trace_and_opens_it(page):
    reset(page)
    # Typed: the input event filters after a short pause.
    page.js(f"(() => {{ const e = document.getElementById('f-search'); e.value = {json.dumps(NEEDLE.upper())};"
            " e.dispatchEvent(new Event('input')); })()")
    page.wait_js("document.getElementById('count').dataset.n === '1'")
    rec = next(r for r in page.records if NEEDLE in r["thinking"])
    assert page.js("document.querySelector('#list .row .id').textContent") == rec["id"]
    page.click("#list .row")
    page.wait_js("!!document.getElementById('d-thinking')")
    assert page.js("document.getElementById('d-thinking').textContent") == rec["thinking"]
    assert page.js("document.getElementById('d-title').textContent") == f"{rec['id']} · budget 256"
    stats = page.js("document.querySelector('#detail .stats').textContent")
    assert f"gold {rec['gold']}" in stats and f"thinking ended {rec['thinking_ended']}" in stats
    assert f"thinking tok {rec['thinking_tokens']} / 256" in stats
    assert page.js("document.getElementById('d-answer').textContent") == rec["answer_prefix"] + rec["answer"]


def test_compare_shows_question_at_each_budget(page):
    reset(page)
    set_filter(page, "f-search", "question medqa-0005:")
    page.click("#list .row")
    page.wait_js("!!document.getElementById('btn-compare')")
    page.click("#btn-compare")
    page.wait_js("!!document.getElementById('compare')")
    # medqa-0005 is in both runs: a row of five budgets for each.
    cells = page.js("Array.from(document.querySelectorAll('#compare .cmp-cell')).map((c) => Number(c.dataset.budget))")
    assert cells == BUDGETS * 2
    runs = page.js("Array.from(document.querySelectorAll('#compare .cmp-run')).map((e) => e.textContent)")
    assert runs == ["alpha", "beta"]
    shown = page.js("Array.from(document.querySelectorAll('#compare .c-thinking')).map((e) => e.textContent)")
    want = [r["thinking"] for name in ("alpha", "beta") for b in BUDGETS
            for r in page.runs[name] if r["id"] == "medqa-0005" and r["budget"] == b]
    assert shown == want  # lower budgets are stored as prefixes of the longest and sliced back exactly


def test_forcing_links_open_the_question_forcing_turned_wrong(page):
    """The forcing section links each question right without forcing and wrong with it; a click
    opens that trace in the viewer: its run and benchmark in the list, the row in view, selected."""
    page.click("#tab-summary")
    links = page.js("JSON.parse(document.getElementById('m1-data').textContent)"
                    ".sections.find((s) => s.key === 'forcing').links")
    assert len(links) > 20 and all(link["run"] == "beta" and link["trace"] is not None for link in links)
    sel = "section[data-key=forcing] ul.links"
    assert page.js(f"document.querySelectorAll('{sel} li').length") == 20  # the rest behind "show all"
    link = links[2]
    assert page.js(f"document.querySelectorAll('{sel} li')[2].textContent") == \
        f"beta · {link['source']} · {link['id']} · budget {link['budget']} — {link['why']}"
    page.click(f"{sel} li:nth-child(3) button.tlink")
    page.wait_js("!document.getElementById('traces').classList.contains('hidden')")
    assert page.js("document.getElementById('summary').classList.contains('hidden')")
    assert page.js("document.getElementById('d-title').textContent") == f"{link['id']} · budget {link['budget']}"
    assert page.js("document.getElementById('d-where').textContent") == f"{link['source']} · beta"
    key = (link["source"], link["id"], link["budget"])
    forced = next(r for r in page.runs["beta"] if (r["source"], r["id"], r["budget"]) == key)
    base = next(r for r in page.runs["alpha"] if (r["source"], r["id"], r["budget"]) == key)
    assert base["correct"] and not forced["correct"]
    assert page.js("document.getElementById('d-thinking').textContent") == forced["thinking"]
    # The list shows beta's medqa traces, scrolled so that the selected row is in view.
    assert [page.js(f"document.getElementById('{f}').value") for f in ("f-run", "f-source", "f-budget")] == \
        ["1", "medqa", ""]
    assert page.js("document.getElementById('count').dataset.n") == "2000"
    page.wait_js(f"(() => {{ const r = document.querySelector('#list .row.sel'); if (!r) return false;"
                 f" const a = r.getBoundingClientRect(), l = document.getElementById('list').getBoundingClientRect();"
                 f" return Number(r.dataset.idx) === {link['trace']} && a.top >= l.top && a.bottom <= l.bottom; }})()")
    assert page_errors(page) == []


def test_injected_markup_shows_as_text(page):
    reset(page)
    set_filter(page, "f-search", "medqa-0007: alert(2)")
    page.click("#list .row")
    page.wait_js("!!document.getElementById('d-thinking')")
    assert SCRIPT_IN_THINKING in page.js("document.getElementById('d-thinking').textContent")
    assert IMG_IN_ANSWER in page.js("document.getElementById('d-answer').textContent")
    assert BREAKOUT_IN_PROMPT in page.js("document.getElementById('d-prompt').textContent")
    assert HANDLER_IN_OPTION in page.js("document.querySelector('#detail ol.opts').textContent")
    page.click("#btn-compare")
    page.wait_js("!!document.getElementById('compare')")
    assert page.js("document.querySelectorAll('#compare .c-thinking')[0].textContent").endswith(SCRIPT_IN_THINKING)
    page.click("#btn-back")
    # Nothing was parsed as markup: no injected elements, handlers, scripts or dialogs.
    assert page.js("document.querySelectorAll('img[src=x], [onerror], [onmouseover]').length") == 0
    assert page.js("document.scripts.length") == 2  # the data block and the page's own script
    assert page.js("window.__m1_alerts") == []
    assert page.js("window.__m1_csp") == []
    assert page_errors(page) == []
    # And the file itself never holds the payloads raw: the JSON block escapes < > &.
    raw = page.html_file.read_text()
    for payload in (SCRIPT_IN_THINKING, IMG_IN_ANSWER, BREAKOUT_IN_PROMPT, "\u2028"):
        assert payload not in raw


def test_screenshot(page):
    """The trace viewer with the injection trace open, saved for a person to look at."""
    data = page.screenshot(page.tmp / "report.png")
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    shutil.copy(page.tmp / "report.png", SCREENSHOT)
    page.click("#btn-compare")
    page.wait_js("!!document.getElementById('compare')")
    page.screenshot(page.tmp / "compare.png")
    shutil.copy(page.tmp / "compare.png", SCREENSHOT.with_name("m1_report_screenshot_compare.png"))
    page.click("#tab-summary")
    page.screenshot(page.tmp / "summary.png")
    shutil.copy(page.tmp / "summary.png", SCREENSHOT.with_name("m1_report_screenshot_summary.png"))
    assert page_errors(page) == []


# ---------------------------------------------------------------- the analyses' sections

PROBE_TITLE = "Probe " + SCRIPT_IN_THINKING + " & co"
PARAGRAPHS = ["First paragraph, with " + SCRIPT_IN_THINKING + ".",
              "Second, on two lines:\nline two " + IMG_IN_ANSWER,
              "Third " + BREAKOUT_IN_PROMPT]
CAPTION = "A dense sweep " + HANDLER_IN_OPTION
DENSE = 64  # budgets in the dense table: folded after 20 rows
N_LINKS = 25


def probe(runs):
    """An analysis built for the test: markup in every string, a long table, a figure, links."""
    from matplotlib.figure import Figure

    from m1.reporting.sections import Section, Table, TraceLink

    names = [r.name for r in runs]
    assert names == ["a/x", "b/x"]  # two folders named x: the report tells them apart
    dense = [{"budget": 32 * (i + 1), "accuracy": i / (DENSE - 1), "n": 100 + i, "note": ""} for i in range(DENSE)]
    dense[0]["note"] = IMG_IN_ANSWER
    dense[1]["accuracy"] = None
    dense[2]["accuracy"] = float("nan")
    small = [{"run": name, "delta": 0.25 * k - 0.1, "p": 1e-5} for k, name in enumerate(names)]
    fig = Figure(figsize=(4, 3))
    fig.subplots().plot([32 * (i + 1) for i in range(DENSE)], [i / DENSE for i in range(DENSE)])
    links = [TraceLink("b/x", "medqa", "medqa-0003", 256, "the second x " + IMG_IN_ANSWER),
             TraceLink("a/x", "medqa", "medqa-0003", 256, "the first x"),
             TraceLink("a/x", "medqa", "no-such-question", 64, "not in the runs")]
    links += [TraceLink("a/x", "medqa", f"medqa-{i:04d}", 64, f"filler {i}") for i in range(N_LINKS - len(links))]
    return Section("probe", PROBE_TITLE, "\n\n".join(PARAGRAPHS[:2]) + "\n \n\n" + PARAGRAPHS[2],
                   [Table("probe_dense", ["budget", "accuracy", "n", "note"], dense, CAPTION),
                    Table("probe_small", ["run", "delta", "p"], small)],
                   {"probe_fig": fig}, links)


def second(runs):
    from m1.reporting.sections import Section

    return Section("second", "Second section", "Only text.")


@pytest.fixture(scope="module")
def sections_page(tmp_path_factory):
    from m1.reporting.report import report
    from m1.runs import Run

    tmp = tmp_path_factory.mktemp("html_sections")
    runs = {}
    for parent, seed in (("a", 3), ("b", 4)):
        runs[f"{parent}/x"] = make_records(30, ["medqa"], seed=seed, inject=True)
        write_run(tmp / "runs" / parent / "x", runs[f"{parent}/x"])
    out = tmp / "report"
    rep = report([Run.load(tmp / "runs" / p / "x") for p in "ab"], out, analyses=[probe, lambda runs: None, second])
    assert [s.key for s in rep.sections] == ["probe", "second"]
    b = open_report(tmp, out / "report.html")
    b.runs = runs
    try:
        yield b
    finally:
        b.close()


def texts(b, selector):
    return b.js(f"Array.from(document.querySelectorAll({json.dumps(selector)})).map((e) => e.textContent)")


def test_sections_load_clean_with_contents(sections_page):
    b = sections_page
    assert texts(b, "#toc a") == ["Runs", "Accuracy by benchmark and budget", "Plots", PROBE_TITLE, "Second section"]
    assert texts(b, "section.section h2") == [PROBE_TITLE, "Second section"]
    assert texts(b, "section[data-key=second] p") == ["Only text."]
    assert b.wait_js("(() => { const i = document.querySelector('section[data-key=probe] .plots img');"
                     " return i.complete && i.naturalWidth > 0; })()")
    assert texts(b, "section[data-key=probe] figcaption") == ["probe_fig"]
    # The contents link scrolls to its section.
    b.click("#toc a.sec:nth-of-type(5)")
    b.wait_js("Math.abs(document.querySelector('section[data-key=second]').getBoundingClientRect().top) < 2"
              " || window.scrollY + window.innerHeight >= document.documentElement.scrollHeight - 1")
    assert b.js("window.scrollY") > 0
    assert b.js("window.__m1_csp") == [] and b.js("window.__m1_alerts") == []
    assert page_errors(b) == []


def test_section_markup_shows_as_text(sections_page):
    b = sections_page
    assert texts(b, "section[data-key=probe] > p") == PARAGRAPHS
    assert texts(b, "section[data-key=probe] .caption") == [CAPTION]
    assert IMG_IN_ANSWER in texts(b, "[data-name=probe_dense] tbody tr:first-child td")
    assert texts(b, "section[data-key=probe] ul.links li .why")[0] == " — the second x " + IMG_IN_ANSWER
    assert b.js("document.querySelectorAll('img[src=x], [onerror], [onmouseover], b, section script').length") == 0
    assert b.js("document.scripts.length") == 2
    assert b.js("window.__m1_alerts") == [] and b.js("window.__m1_csp") == []
    raw = b.html_file.read_text()
    for payload in (SCRIPT_IN_THINKING, IMG_IN_ANSWER, BREAKOUT_IN_PROMPT, "\u2028"):
        assert payload not in raw


def test_section_table_formats_and_folds(sections_page):
    b = sections_page
    dense = "[data-name=probe_dense]"
    assert texts(b, f"{dense} th") == ["budget", "accuracy", "n", "note"]
    rows = b.js(f"Array.from(document.querySelectorAll('{dense} tbody tr'))"
                ".map((tr) => Array.from(tr.cells).map((c) => c.textContent))")
    assert len(rows) == 20
    assert rows[0][:3] == ["32", "0.000", "100"]  # ints as they are, floats to 3 decimals (0.0 too)
    assert rows[1][1] == "–" and rows[2][1] == "–"  # None and NaN
    assert rows[3][1] == f"{3 / 63:.3f}"
    assert texts(b, "[data-name=probe_small] tbody tr:first-child td") == ["a/x", "-0.100", "1.0e-5"]
    button = f"{dense} button.more"
    assert b.js(f"document.querySelector('{button}').textContent") == f"show all {DENSE} rows"
    b.click(button)
    b.wait_js(f"document.querySelectorAll('{dense} tbody tr').length === {DENSE}")
    last = b.js(f"Array.from(document.querySelector('{dense} tbody tr:last-child').cells).map((c) => c.textContent)")
    assert last == [str(32 * DENSE), "1.000", str(100 + DENSE - 1), ""]  # 1.0 is still a float
    assert b.js(f"document.querySelector('{button}').textContent") == "show the first 20 rows"
    b.click(button)
    b.wait_js(f"document.querySelectorAll('{dense} tbody tr').length === 20")
    # The links fold the same way.
    links = "section[data-key=probe] ul.links"
    assert b.js(f"document.querySelectorAll('{links} li').length") == 20
    b.click("section[data-key=probe] > button.more")
    b.wait_js(f"document.querySelectorAll('{links} li').length === {N_LINKS}")
    assert page_errors(b) == []


def test_section_link_opens_the_trace_in_its_run(sections_page):
    b = sections_page
    b.click("#tab-summary")
    items = texts(b, "section[data-key=probe] ul.links li")
    assert items[2] == "a/x · medqa · no-such-question · budget 64 (not in this report) — not in the runs"
    assert b.js("document.querySelectorAll('section[data-key=probe] ul.links li')[2]"
                ".querySelector('button')") is None
    for n, run in ((1, "b/x"), (2, "a/x")):  # the same question and budget in both runs (0: a/x, 1: b/x)
        b.click("#tab-summary")
        b.click(f"section[data-key=probe] ul.links li:nth-child({n}) button.tlink")
        b.wait_js("!document.getElementById('traces').classList.contains('hidden')")
        assert b.js("document.getElementById('d-title').textContent") == "medqa-0003 · budget 256"
        assert b.js("document.getElementById('d-where').textContent") == f"medqa · {run}"
        rec = next(r for r in b.runs[run] if r["id"] == "medqa-0003" and r["budget"] == 256)
        assert b.js("document.getElementById('d-thinking').textContent") == rec["thinking"]
        assert b.js("document.getElementById('f-run').value") == str(["a/x", "b/x"].index(run))
        assert b.js("document.querySelector('#list .row.sel .id').textContent") == "medqa-0003"
        assert b.js("document.getElementById('d-from').firstChild.textContent").startswith(f"From “{PROBE_TITLE}”: ")
    # Back to the section, scrolled to the link that was followed.
    b.click("#btn-from")
    b.wait_js("!document.getElementById('summary').classList.contains('hidden')")
    assert b.js("document.activeElement.textContent") == "a/x · medqa · medqa-0003 · budget 256"
    assert b.js("(() => { const r = document.activeElement.getBoundingClientRect();"
                " return r.top >= 0 && r.bottom <= window.innerHeight; })()")
    assert page_errors(b) == []


def test_trace_fields_come_from_the_payload(sections_page):
    """The detail view shows the stats build_data lists, in its order and with its labels:
    nothing about Trace's fields is written in the page's script."""
    b = sections_page
    b.click("#tab-traces")
    b.click("#list .row")
    b.wait_js("!!document.getElementById('d-thinking')")
    stats = b.js("JSON.parse(document.getElementById('m1-data').textContent).detail.stats")
    shown = texts(b, "#detail .stats > span")
    assert [s.split(" ")[0] for s in shown] == [s["label"].split(" ")[0] for s in stats]
    assert all(text.startswith(s["label"] + " ") for text, s in zip(shown, stats))
    assert "grader strict" in shown  # a field the old hard-coded list left to "Other fields"
    assert {"hit budget yes", "hit budget no"} & set(shown)  # a bool field reads yes/no
    assert texts(b, "#detail .sect") == ["Options", "Prompt", "Thinking", "Answer", "Graded text"]
    assert b.js("document.querySelector('#detail pre:not([id])')") is None  # no "Other fields"
    # The probe section, saved for a person to look at.
    b.click("#tab-summary")
    b.js("document.querySelector('section[data-key=probe]').scrollIntoView()")
    b.screenshot(b.tmp / "sections.png")
    shutil.copy(b.tmp / "sections.png", SCREENSHOT.with_name("m1_report_screenshot_sections.png"))
