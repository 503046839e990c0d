"""Prometheus metrics for one app. Each app has its own registry (several apps may live in one test
process); with several workers, ``PROMETHEUS_MULTIPROC_DIR`` makes /metrics sum over all of them."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


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

    def render(self) -> bytes:
        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
