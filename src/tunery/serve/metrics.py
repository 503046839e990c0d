"""Prometheus metrics for one app. Each app has its own registry (several apps may live in one test
process); with several workers, ``PROMETHEUS_MULTIPROC_DIR`` makes /metrics sum over all of them.

Label values are never what a client typed: ``model`` is a served model's name or ``-``, ``endpoint``
a route template, ``status`` the status code; so the number of series is bounded by the server's own
configuration, whatever requests arrive. The per-tenant series (``TENANT_METRICS``) tell who the
customers are and how much they use: ``render(tenants=False)`` leaves them out (see app.py: only an
admin key gets them)."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TENANT_METRICS = frozenset({"tunery_usage_texts", "tunery_usage_tokens", "tunery_usage_requests",
                            "tunery_usage_explanations"})
OTHER = "-"  # the model label of requests for no served model (unknown names, other endpoints)


class _Without:
    """A registry's families less some (what ``generate_latest`` reads: anything with ``collect``)."""

    def __init__(self, registry, names: frozenset[str]) -> None:
        self.registry, self.names = registry, names

    def collect(self):
        return (family for family in self.registry.collect() if family.name not in self.names)


class Metrics:
    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        registry = None if self.multiprocess else CollectorRegistry()
        self.registry = registry
        kw = {"registry": registry} if registry is not None else {"registry": None}
        self.requests = Counter("tunery_requests", "HTTP requests by model, endpoint and status",
                                ["model", "endpoint", "status"], **kw)
        self.latency = Histogram("tunery_request_seconds", "Request latency by model, endpoint and status",
                                 ["model", "endpoint", "status"], buckets=LATENCY_BUCKETS, **kw)
        self.batch_size = Histogram("tunery_batch_size", "Texts per forward pass", ["model"],
                                    buckets=BATCH_BUCKETS, **kw)
        self.batch_seconds = Histogram("tunery_batch_seconds", "Inference time per batch", ["model"],
                                       buckets=LATENCY_BUCKETS, **kw)
        gauge_kw = {**kw, "multiprocess_mode": "livesum"} if self.multiprocess else kw
        self.queue_depth = Gauge("tunery_queue_texts", "Texts waiting for a batch", ["model"], **gauge_kw)
        self.usage_texts = Counter("tunery_usage_texts", "Billed texts", ["tenant", "model"], **kw)
        self.usage_tokens = Counter("tunery_usage_tokens", "Billed tokens", ["tenant", "model"], **kw)
        self.usage_requests = Counter("tunery_usage_requests", "Billed requests", ["tenant", "model"], **kw)
        self.usage_explanations = Counter("tunery_usage_explanations", "Billed explanations (texts explained)",
                                          ["tenant", "model"], **kw)
        self.explain_in_flight = Gauge("tunery_explain_requests", "Explain requests running or waiting for an "
                                       "explainer", **gauge_kw)

    def render(self, *, tenants: bool = False) -> bytes:
        """The exposition text; the per-tenant series only with ``tenants``."""
        registry = self.registry
        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry if tenants else _Without(registry, TENANT_METRICS))
