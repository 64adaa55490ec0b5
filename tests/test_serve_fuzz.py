"""`m1 serve` fuzzed from the OpenAPI document it publishes (schemathesis, on Hypothesis): valid
and invalid requests of every shape get an answer below 500, within a timeout (no hang), and the
server keeps serving. The server is small on purpose (budgets of at most 8 tokens, answers of 4),
so that every valid request the fuzzer makes runs in well under a second."""
from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, settings  # noqa: E402

from test_serve import Served  # noqa: E402


@pytest.fixture(scope="module")
def small_server():
    s = Served(["--budget", "4", "--max-thinking-budget", "8", "--answer-max-tokens", "4", "--max-queue", "8",
                "--engine-opt", "n_slots=2", "ctx_per_slot=1024", "--max-body", "65536"])
    yield s
    s.stop()


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_request_gets_a_5xx_or_hangs(small_server, mode):
    """Bodies that fit the published schema (positive) and bodies that break it (negative)."""
    from hypothesis import given
    from schemathesis.generation import GenerationMode

    schema = schemathesis.openapi.from_url(small_server.url + "/openapi.json")
    chat = schema["/v1/chat/completions"]["POST"]
    seen: dict[int, int] = {}

    @given(case=chat.as_strategy(generation_mode=GenerationMode(mode)))
    # derandomize: the same examples every run (a CI that fails by chance proves nothing); turn it
    # off, with more examples, for a wider search
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True)
    def one(case):
        if mode == "positive" and isinstance(case.body, dict):
            case.body["model"] = "smollm2-135m"  # the one model served: past the 404, into generation
        response = case.call(base_url=small_server.url, timeout=60)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code < 500, response.text
        if response.status_code >= 400:
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and "Traceback" not in response.text

    one()
    assert sum(seen.values()) >= 20
    if mode == "positive":
        assert seen.get(200, 0) >= 10  # the fuzzer reached generation, not only the checks
    assert small_server.proc.poll() is None  # still serving
