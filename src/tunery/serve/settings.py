"""Serving settings: plans (price, monthly quota, rate limit, of predictions and of explanations), request
and connection limits, batching, the explain endpoint's executor and caps.

They come from a YAML file (``tunery serve --config serve.yaml``, or ``TUNERY_SERVE_CONFIG``) and
default to the values below, so a server runs with no file at all. The same file is read by
``tunery keys create`` (a key's plan must exist) and ``tunery usage report`` (the cost of usage).

.. code-block:: yaml

    currency: USD
    plans:
      free: {monthly_quota: 1000, rate_limit: 2, burst: 10,
             explain: {monthly_quota: 100, rate_limit: 0.2, burst: 2}}
      pro:  {price_per_1k_texts: 0.50, monthly_quota: 1000000, rate_limit: 50, burst: 100,
             explain: {price_per_1k: 5.0, monthly_quota: 100000, rate_limit: 5, burst: 10}}
    limits: {max_texts_per_request: 256, max_chars_per_text: 20000, max_body_bytes: 4194304,
             max_header_bytes: 65536, max_headers: 100}
    explain: {workers: 1, nice: 19, max_queued_requests: 16, timeout_seconds: 30, max_texts_per_request: 8,
              max_words_per_text: 256, max_steps: 200, max_samples: 1000, max_batch: 256}
    connections: {header_timeout_seconds: 10, body_timeout_seconds: 30, keep_alive_seconds: 5,
                  max_connections: null}
    batching: {max_batch_size: 32, max_wait_ms: 0, inference_batch_size: 8}
    precision: auto
    threads: null            # inference threads per server process (default: one per core)
    auth_cache_seconds: 2
    idempotency_retention_hours: 24
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tunery.config import format_errors, read_yaml_mapping
from tunery.errors import ConfigError

ENV_CONFIG = "TUNERY_SERVE_CONFIG"


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExplainPlan(_Part):
    """What a plan allows of ``POST /v1/models/{name}/explain``: explanations (one per text explained)
    are their own usage unit, priced, counted against a monthly quota and rate-limited apart from
    predictions. A plan that says nothing of explanations gets this default: no charge, no quota,
    1 request/s per key (burst 1)."""

    price_per_1k: float = Field(0.0, ge=0, description="price per 1,000 explanations (texts explained)")
    monthly_quota: int | None = Field(
        None, ge=0, description="explanations per tenant and calendar month (UTC); none: unlimited"
    )
    rate_limit: float | None = Field(1.0, gt=0, description="explain requests per second per key; none: unlimited")
    burst: int | None = Field(None, ge=1, description="token bucket size; default: the rate rounded up")

    @property
    def bucket_size(self) -> float:
        return float(self.burst or max(1, math.ceil(self.rate_limit or 1)))

    def cost(self, explanations: int) -> float:
        return explanations / 1000 * self.price_per_1k


class Plan(_Part):
    price_per_1k_texts: float = Field(0.0, ge=0)
    price_per_1k_tokens: float = Field(0.0, ge=0)
    monthly_quota: int | None = Field(None, ge=0, description="per tenant and calendar month (UTC); none: unlimited")
    quota_unit: Literal["texts", "tokens", "requests"] = "texts"
    rate_limit: float | None = Field(None, gt=0, description="requests per second per key; none: unlimited")
    burst: int | None = Field(None, ge=1, description="token bucket size; default: the rate rounded up")
    explain: ExplainPlan = Field(default_factory=ExplainPlan, description="explanations: price, quota, rate")

    @property
    def bucket_size(self) -> float:
        return float(self.burst or max(1, math.ceil(self.rate_limit or 1)))

    def cost(self, texts: int, tokens: int, explanations: int = 0) -> float:
        return (texts / 1000 * self.price_per_1k_texts + tokens / 1000 * self.price_per_1k_tokens
                + self.explain.cost(explanations))


class Limits(_Part):
    max_texts_per_request: int = Field(256, ge=1)
    max_chars_per_text: int = Field(20_000, ge=1)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_header_bytes: int = Field(
        64 * 1024, ge=4096, description="the request line and headers together (the URL included); more: 431"
    )
    max_headers: int = Field(100, ge=8, description="header fields per request; more: 431")


class Connections(_Part):
    """How long a client may take and how many may be connected (per server process)."""

    header_timeout_seconds: float = Field(
        10.0, gt=0, description="from connecting (or from the first byte of the next request on a kept-alive "
        "connection) to the end of the request's headers; slower: 408 and the connection is closed"
    )
    body_timeout_seconds: float = Field(
        30.0, gt=0, description="from the end of the headers to the end of the body; slower: 408 and closed"
    )
    keep_alive_seconds: float = Field(5.0, gt=0, description="an idle kept-alive connection is closed after this")
    max_connections: int | None = Field(
        None, ge=1, description="open connections per process; a new one past it closes the connection that has "
        "waited longest for its request headers (else itself). Default: the open-file limit less 128, "
        "at most 4096"
    )

    def connection_limit(self) -> int:
        if self.max_connections is not None:
            return self.max_connections
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return 4096
        return max(16, min(4096, soft - 128))


class Batching(_Part):
    max_batch_size: int = Field(32, ge=1, description="texts taken from the queue at once")
    max_wait_ms: float = Field(
        0.0, ge=0, description="how long the first request waits for company; 0: batch what is queued "
        "(requests arriving during a forward pass form the next batch)"
    )
    inference_batch_size: int = Field(
        8, ge=1, description="texts per forward pass within a batch, longest first: less padding"
    )
    max_queue_texts: int = Field(
        2048, ge=1, description="texts waiting per model beyond which requests get 503 (overloaded)"
    )


class Explain(_Part):
    """``POST /v1/models/{name}/explain``: its executor, time limit and caps (per server process).
    Explanations run on their own threads, never on the prediction batcher's, at a lower scheduling
    priority (``nice``), so that they run on the CPU time predictions leave."""

    workers: int = Field(1, ge=1, description="explanation threads per server process, shared by the models")
    nice: int = Field(
        19, ge=0, le=19, description="how much lower the explanation threads' scheduling priority is than the "
        "server's (Linux nice, 19: explanations only use CPU that predictions leave; 0: equal shares)"
    )
    max_queued_requests: int = Field(
        16, ge=0, description="explain requests waiting for a free worker beyond which requests get 503 (overloaded)"
    )
    timeout_seconds: float = Field(
        30.0, gt=0, description="per request, from admission (waiting included) to the last word: slower "
        "requests are stopped and answered 504 explain_timeout, and nothing is billed"
    )
    max_texts_per_request: int = Field(8, ge=1, description="texts per explain request; more: 413")
    max_words_per_text: int = Field(
        256, ge=1, description="words explained per text (after truncation to the run's max_length); more: 413"
    )
    max_steps: int = Field(200, ge=1, description="IG's steps (option 'steps'); more: 422")
    max_samples: int = Field(1000, ge=1, description="LIME's and SHAP's samples (option 'samples'); more: 422")
    max_batch: int = Field(
        256, ge=1, description="model evaluations at once (options 'batch', 'internal_batch_size'); more: 422"
    )


def _default_plans() -> dict[str, Plan]:
    return {
        "free": Plan(monthly_quota=1_000, rate_limit=2, burst=10,
                     explain=ExplainPlan(monthly_quota=100, rate_limit=0.2, burst=2)),
        "pro": Plan(price_per_1k_texts=0.50, monthly_quota=1_000_000, rate_limit=50, burst=100,
                    explain=ExplainPlan(price_per_1k=5.0, monthly_quota=100_000, rate_limit=5, burst=10)),
        "enterprise": Plan(price_per_1k_texts=0.30,
                           explain=ExplainPlan(price_per_1k=3.0, rate_limit=None, burst=None)),
    }


class ServeConfig(_Part):
    currency: str = "USD"
    plans: dict[str, Plan] = Field(default_factory=_default_plans)
    limits: Limits = Field(default_factory=Limits)
    connections: Connections = Field(default_factory=Connections)
    batching: Batching = Field(default_factory=Batching)
    explain: Explain = Field(default_factory=Explain)
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="inference precision; auto: bf16 where the hardware runs it fast (as training)"
    )
    threads: int | None = Field(
        None, ge=1, description="intra-op threads for inference in each server process (torch's process-wide "
        "setting; an ONNX run's session); none: the engine's default, one per core"
    )
    auth_cache_seconds: float = Field(
        2.0, ge=0, description="how long a checked key is trusted before it is read again; a revocation "
        "reaches other processes within this time (0: read the key on every request)"
    )
    idempotency_retention_hours: float = Field(
        24.0, gt=0, description="how long a response stored under an Idempotency-Key is kept for retries; "
        "older ones are deleted (a retry after that is a new, billed request)"
    )

    @model_validator(mode="after")
    def _check(self) -> ServeConfig:
        if not self.plans:
            raise ValueError("plans is empty: define at least one plan")
        return self


def load_serve_config(path: str | Path | None = None) -> ServeConfig:
    """The file at ``path``, else at ``$TUNERY_SERVE_CONFIG``, else the defaults."""
    path = path or os.environ.get(ENV_CONFIG)
    if not path:
        return ServeConfig()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"serve config {path} does not exist (given by --config or {ENV_CONFIG})")
    tree = read_yaml_mapping(path, "plans, limits, connections, batching, explain, currency")
    try:
        return ServeConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(format_errors(e, str(path), root=ServeConfig)) from None
