"""`GET /metrics`: Prometheus text from prometheus-client, one registry per server. Counts and
timings only: no prompt, answer or key ever becomes a label."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from m1.engines.base import LoadMeter

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self, meter: LoadMeter, waiting, in_flight):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("m1_requests", "Chat requests answered, by HTTP status", ["status"], registry=r)
        self.tokens = Counter("m1_tokens", "Tokens: prompt, thinking (forced ignore strings included), answer",
                              ["kind"], registry=r)
        self.exhausted = Counter("m1_budget_exhausted", "Requests whose thinking the budget cut", registry=r)
        self.seconds = Histogram("m1_request_seconds", "Time from admission to the last token", registry=r,
                                 buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))
        self.first_token = Histogram("m1_first_token_seconds", "Time to the first streamed token", registry=r,
                                     buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        Gauge("m1_requests_in_flight", "Requests admitted and not finished", registry=r).set_function(in_flight)
        Gauge("m1_queue_depth", "Requests waiting for a place among the running ones",
              registry=r).set_function(waiting)
        Gauge("m1_engine_occupancy", "Engine requests in flight over its capacity",
              registry=r).set_function(lambda: meter.in_flight / max(meter.capacity, 1))
        Gauge("m1_engine_capacity", "Requests the engine runs at once", registry=r).set_function(lambda: meter.capacity)
        # cumulative, for occupancy over any interval: d(busy) / (capacity * dt) (engines/base.py LoadMeter)
        Gauge("m1_engine_busy_request_seconds", "Integral of engine requests in flight over time (request-seconds)",
              registry=r).set_function(lambda: meter.reading().busy)
        Gauge("m1_engine_generated_tokens", "Tokens the engine generated since the server started",
              registry=r).set_function(lambda: meter.generated)

    def text(self) -> bytes:
        return generate_latest(self.registry)
