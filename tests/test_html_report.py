"""report.html in a real headless Chromium: loads clean, filters, search, trace view,
cross-budget comparison, 10,000 traces stay fast, and model output never becomes markup.

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


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("html_report")
    # Two runs, 10,000 traces: alpha 2 benchmarks x 800 questions x 5 budgets, beta 400 x 5.
    alpha = make_records(800, ["medqa", "pubmedqa"], seed=1, inject=True)
    beta = make_records(400, ["medqa"], seed=2)
    write_run(tmp / "runs" / "alpha", alpha)
    write_run(tmp / "runs" / "beta", beta, forcing_rounds=2)
    out = tmp / "report"
    args = type("Args", (), {"runs": [str(tmp / "runs" / "alpha"), str(tmp / "runs" / "beta")], "out": str(out)})
    assert cli_report.main(args) == 0
    html_file = out / "report.html"

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
        b.tmp, b.html_file, b.records, b.runs = tmp, html_file, alpha + beta, {"alpha": alpha, "beta": beta}
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
    assert page.wait_js("Array.from(document.images).filter((i) => i.complete && i.naturalWidth > 0).length") == 3
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
