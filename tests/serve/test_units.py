"""Serving parts without a server: the token bucket, plans, keys, the meter and the batcher."""

from __future__ import annotations

import asyncio
import concurrent.futures
from datetime import date, datetime, timezone

import numpy as np
import pytest

from tunery.errors import ConfigError, RunError
from tunery.serve import metering
from tunery.serve.auth import Bucket, RateLimiter, bearer_token, take
from tunery.serve.batching import Batcher
from tunery.serve.keys import authenticate, create_key, list_keys, revoke_key
from tunery.serve.settings import Plan, ServeConfig, load_serve_config
from tunery.store import Store

AT = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)


# -- token bucket ---------------------------------------------------------------------------------


def test_bucket_admits_a_burst_then_refills_at_the_rate():
    bucket = Bucket(tokens=3, updated=0.0)
    assert [take(bucket, 0.0, rate=2, size=3) for _ in range(3)] == [0, 0, 0]
    assert take(bucket, 0.0, rate=2, size=3) == pytest.approx(0.5)  # 1 token at 2/s
    assert take(bucket, 0.5, rate=2, size=3) == 0


def test_bucket_never_holds_more_than_its_size():
    bucket = Bucket(tokens=0, updated=0.0)
    take(bucket, 1000.0, rate=5, size=2, cost=0)
    assert bucket.tokens == 2


def test_rate_limiter_splits_the_rate_between_workers():
    limiter = RateLimiter(share=2)
    admitted = sum(limiter.check("k", 0.0, rate=10, size=10) == 0 for _ in range(20))
    assert admitted == 5  # burst 10 shared by 2 workers


def test_rate_limiter_retry_after_is_whole_seconds():
    limiter = RateLimiter()
    assert limiter.check("k", 0.0, rate=0.25, size=1) == 0
    assert limiter.check("k", 0.0, rate=0.25, size=1) == 4


@pytest.mark.parametrize("header, token", [
    ("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None), ("Bearer", None), ("", None), (None, None),
])
def test_bearer_token(header, token):
    assert bearer_token(header) == token


# -- plans and settings ---------------------------------------------------------------------------


def test_plan_cost_counts_texts_and_tokens():
    plan = Plan(price_per_1k_texts=0.5, price_per_1k_tokens=0.01)
    assert plan.cost(2000, 10_000) == pytest.approx(1.0 + 0.1)


def test_serve_config_rejects_unknown_keys_with_the_place(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text("plans:\n  pro: {montly_quota: 5}\n")
    with pytest.raises(ConfigError, match=r"unknown key .plans.pro.montly_quota. \(did you mean .plans.pro.monthly_quota.\?\)"):
        load_serve_config(path)


def test_serve_config_missing_file_names_it(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_serve_config(tmp_path / "nope.yaml")


def test_unknown_plan_names_the_defined_ones():
    with pytest.raises(ConfigError, match="free, pro"):
        create_key(Store(), tenant="acme", plan="gold", known_plans=["free", "pro"])


def test_seconds_to_next_period_reaches_the_first_of_next_month():
    assert metering.seconds_to_next_period(datetime(2026, 12, 31, 23, 59, 0, tzinfo=timezone.utc)) == 61


# -- keys ----------------------------------------------------------------------------------------


def test_key_is_stored_only_as_a_hash():
    store = Store()
    key, info = create_key(store, tenant="acme", plan="pro")
    with store.read() as s:
        from sqlalchemy import text

        dump = " ".join(str(v) for row in s.execute(text("SELECT * FROM api_keys")) for v in row)
    assert key.split("_")[-1] not in dump and info.key_id in dump


def test_authenticate_accepts_the_key_and_rejects_a_changed_one():
    store = Store()
    key, info = create_key(store, tenant="acme", plan="pro", models=["sentiment"])
    assert authenticate(store, key).key_id == info.key_id
    assert authenticate(store, key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert authenticate(store, "tny_000000000000_" + "x" * 43) is None
    assert authenticate(store, "garbage") is None


def test_revoked_key_no_longer_authenticates():
    store = Store()
    key, info = create_key(store, tenant="acme", plan="pro")
    revoke_key(store, info.key_id)
    assert authenticate(store, key) is None
    assert list_keys(store)[0].revoked_at is not None


def test_new_tenant_needs_a_plan_and_a_known_one():
    store = Store()
    with pytest.raises(RunError, match="--plan"):
        create_key(store, tenant="newco")
    with pytest.raises(ConfigError, match="did you mean 'pro'"):
        create_key(store, tenant="newco", plan="por", known_plans=["free", "pro"])


def test_key_scope_limits_models():
    store = Store()
    key, _ = create_key(store, tenant="acme", plan="pro", models=["a"])
    info = authenticate(store, key)
    assert info.allows("a") and not info.allows("b")


# -- metering ------------------------------------------------------------------------------------


def _event(i: int, plan: Plan, *, tenant: str = "acme", idem: str | None = None, texts: int = 1,
           at: datetime = AT) -> metering.UsageEvent:
    return metering.UsageEvent(
        tenant=tenant, key_id="k1", model="m", model_ref="m@1", texts=texts, tokens=5 * texts, latency_ms=1.0,
        request_id=f"r{i}", at=at, plan=plan, idempotency_key=idem, request_hash="h" if idem else None,
        response={"request_id": f"r{i}"} if idem else None,
    )


def test_quota_admits_exactly_q_units():
    store = Store()
    plan = Plan(monthly_quota=7)
    outcomes = metering.record(store, [_event(i, plan, texts=2) for i in range(6)])
    assert [o.status for o in outcomes] == ["billed"] * 3 + ["over_quota"] * 3
    assert metering.quota_used(store, "acme", plan, AT) == 6


def test_quota_is_per_month():
    store = Store()
    plan = Plan(monthly_quota=1)
    later = datetime(2026, 12, 1, tzinfo=timezone.utc)
    outcomes = metering.record(store, [_event(0, plan), _event(1, plan), _event(2, plan, at=later)])
    assert [o.status for o in outcomes] == ["billed", "over_quota", "billed"]


def test_idempotent_event_bills_once_and_replays_the_first_response():
    store = Store()
    plan = Plan()
    first, second = metering.record(store, [_event(0, plan, idem="abc"), _event(1, plan, idem="abc")])
    assert first.status == "billed"
    assert second.status == "replay" and second.response == {"request_id": "r0"}
    assert len(metering.usage_report(store, ServeConfig())) == 1


def test_meter_commits_concurrent_submissions_in_groups():
    store = Store()
    meter = metering.Meter(store)
    meter.start()
    plan = Plan(monthly_quota=50, quota_unit="requests")
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(lambda i: meter.submit(_event(i, plan)).result(timeout=30), range(80)))
    meter.stop()
    assert sum(o.status == "billed" for o in outcomes) == 50
    assert metering.usage_report(store, ServeConfig())[0]["requests"] == 50


def test_usage_report_groups_by_day_and_prices_by_plan():
    store = Store()
    create_key(store, tenant="acme", plan="pro")
    plan = Plan()
    day1, day2 = datetime(2026, 11, 1, 23, 59, tzinfo=timezone.utc), datetime(2026, 11, 2, 0, 1, tzinfo=timezone.utc)
    metering.record(store, [_event(0, plan, at=day1, texts=1000), _event(1, plan, at=day2), _event(2, plan, at=day2)])
    rows = metering.usage_report(store, ServeConfig(), tenant="acme", start=date(2026, 11, 1), end=date(2026, 11, 2))
    assert [(r["day"], r["requests"], r["texts"]) for r in rows] == [("2026-11-01", 1, 1000), ("2026-11-02", 2, 2)]
    assert rows[0]["cost"] == pytest.approx(0.5)  # pro: 0.50 per 1k texts
    only_second = metering.usage_report(store, ServeConfig(), start=date(2026, 11, 2), end=date(2026, 11, 2))
    assert [r["requests"] for r in only_second] == [2]


# -- batching ------------------------------------------------------------------------------------


def test_batcher_coalesces_concurrent_requests_and_returns_each_its_own():
    calls = []

    def score(texts, pairs):
        calls.append(len(texts))
        values = np.array([float(t.split()[-1]) for t in texts])
        return values, np.full(len(texts), 3)

    async def main():
        batcher = Batcher(score, max_batch_size=64, max_wait_ms=50)
        await batcher.start()
        requests = [[f"text {i * 10 + j}" for j in range(i % 3 + 1)] for i in range(20)]
        results = await asyncio.gather(*(batcher.submit(r) for r in requests))
        await batcher.stop()
        return requests, results

    requests, results = asyncio.run(main())
    for texts, (scores, tokens) in zip(requests, results):
        assert scores.tolist() == [float(t.split()[-1]) for t in texts]
        assert tokens.tolist() == [3] * len(texts)
    assert len(calls) < 20 and sum(calls) == sum(len(r) for r in requests)


def test_batcher_respects_the_max_batch_size():
    sizes = []

    def score(texts, pairs):
        sizes.append(len(texts))
        return np.zeros(len(texts)), np.zeros(len(texts), dtype=int)

    async def main():
        batcher = Batcher(score, max_batch_size=4, max_wait_ms=20)
        await batcher.start()
        await asyncio.gather(*(batcher.submit(["x"]) for _ in range(12)))
        await batcher.stop()

    asyncio.run(main())
    assert max(sizes) <= 4 and sum(sizes) == 12


def test_batcher_passes_an_inference_error_to_every_caller_of_the_batch():
    def score(texts, pairs):
        raise RuntimeError("boom")

    async def main():
        batcher = Batcher(score, max_batch_size=8, max_wait_ms=20)
        await batcher.start()
        results = await asyncio.gather(*(batcher.submit(["x"]) for _ in range(3)), return_exceptions=True)
        await batcher.stop()
        return results

    assert all(isinstance(r, RuntimeError) for r in asyncio.run(main()))


# -- key cache -------------------------------------------------------------------------------------


def test_key_cache_trusts_a_key_for_its_ttl_only():
    from tunery.serve.auth import KeyCache

    cache, info = KeyCache(ttl=2), object()
    cache.put("tny_secret", info, now=10.0, generation=cache.generation())
    assert cache.get("tny_secret", now=11.9) is info
    assert cache.get("tny_secret", now=12.1) is None
    assert "tny_secret" not in repr(cache._entries)


def test_key_cache_drops_a_revoked_key_and_can_be_off():
    from types import SimpleNamespace

    from tunery.serve.auth import KeyCache

    cache = KeyCache(ttl=60)
    cache.put("a", SimpleNamespace(key_id="k1"), now=0.0, generation=cache.generation())
    cache.drop("k1")
    assert cache.get("a", now=0.0) is None
    off = KeyCache(ttl=0)
    off.put("a", SimpleNamespace(key_id="k1"), now=0.0, generation=off.generation())
    assert off.get("a", now=0.0) is None
