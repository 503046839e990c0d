"""The store, keys and metering on a real PostgreSQL server (see tests/pg.py for where it comes from).

The metering tests race several *processes*, each with its own Store and Meter (its own connection
pool and writer thread), the way `tunery serve --workers N` or several servers share one database.
"""

from __future__ import annotations

import multiprocessing
import random
import threading
import traceback
from collections import Counter
from datetime import date, datetime, timedelta, timezone

import pytest
from sqlalchemy import create_engine, func, select, text

from tests.pg import pg_server, pg_url  # noqa: F401  (fixtures)
from tunery.errors import RunError
from tunery.serve import metering
from tunery.serve.keys import authenticate, create_key, list_keys, revoke_key
from tunery.serve.settings import Plan, ServeConfig
from tunery.store import IdempotencyRow, QuotaCounterRow, Store, TenantRow, UsageRow

AT = datetime(2026, 11, 17, 12, 0, tzinfo=timezone.utc)
WORKERS = 4


@pytest.fixture
def store(pg_url):
    s = Store(pg_url)
    yield s
    s.close()


def _event(request_id: str, plan: Plan, *, tenant: str = "acme", key_id: str = "k1", at: datetime = AT,
           texts: int = 1, idem: str | None = None, response: dict | None = None) -> metering.UsageEvent:
    return metering.UsageEvent(
        tenant=tenant, key_id=key_id, model="m", model_ref="m@1", texts=texts, tokens=5 * texts, latency_ms=1.0,
        request_id=request_id, at=at, plan=plan, idempotency_key=idem, request_hash=f"h-{idem}" if idem else None,
        response=response,
    )


def _count(store: Store, *where, table=UsageRow) -> int:
    with store.read() as s:
        return s.scalar(select(func.count()).select_from(table).where(*where))


# -- the store ------------------------------------------------------------------------------------


def test_run_lifecycle_on_postgres(store):
    started = store.start_run(name="sst2", path="runs/sst2", config={"train": {"lr": 3e-5}}, task="classification")
    store.update_run("sst2", step=10, best_metric=0.8)
    store.finish_run("sst2", status="completed", metrics={"dev": {"accuracy": 0.9}})

    run = store.get_run("sst2")
    assert (run.status, run.attempts, run.task) == ("completed", 1, "classification")
    assert run.config == {"train": {"lr": 3e-5}} and run.metrics == {"dev": {"accuracy": 0.9}}
    assert run.progress == {"step": 10, "best_metric": 0.8}
    assert run.started_at == started.started_at and run.started_at.tzinfo is not None  # timestamptz round trip
    assert run.finished_at >= run.started_at
    assert [r.name for r in store.list_runs(status="completed")] == ["sst2"]


def test_model_registry_on_postgres(store):
    store.register_model("sentiment", run_path="runs/a", metrics={"f1": 0.8})
    store.register_model("sentiment", run_path="runs/b", alias="prod")
    store.set_alias("sentiment", "canary", 1)

    assert store.resolve_model("sentiment").version == 2
    assert store.resolve_model("sentiment@1").run_path == "runs/a"
    assert store.resolve_model("sentiment:prod").ref == "sentiment@2"
    assert store.resolve_model("sentiment:canary").metrics == {"f1": 0.8}
    with pytest.raises(RunError, match="no version 3"):
        store.resolve_model("sentiment@3")


def test_concurrent_registrations_get_distinct_versions(store):
    """The unique (name, version) pair + retry, with real concurrent transactions."""
    barrier = threading.Barrier(8)
    versions: list[int] = []

    def register(i: int) -> None:
        barrier.wait(timeout=60)
        versions.append(store.register_model("m", run_path=f"runs/{i}").version)

    threads = [threading.Thread(target=register, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(versions) == list(range(1, 9))


# -- keys -------------------------------------------------------------------------------------------


def test_key_authenticates_until_revoked(store):
    key, info = create_key(store, tenant="acme", plan="pro", models=["sentiment"], note="ci")
    found = authenticate(store, key)
    assert found is not None and (found.key_id, found.tenant, found.plan, found.models) == (
        info.key_id, "acme", "pro", ["sentiment"])

    revoked = revoke_key(store, info.key_id)
    assert revoked.revoked_at is not None
    assert authenticate(store, key) is None
    assert revoke_key(store, key).revoked_at == revoked.revoked_at  # idempotent, full key accepted


def test_a_wrong_secret_or_unknown_key_is_refused(store):
    key, info = create_key(store, tenant="acme", plan="pro")
    assert authenticate(store, key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert authenticate(store, f"tny_{'0' * 12}_{key.split('_', 2)[2]}") is None
    assert authenticate(store, "not a key") is None


def test_concurrent_keys_for_a_new_tenant_make_one_tenant(store):
    """Two transactions insert the same new tenant: the loser retries and joins the winner's row."""
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def create() -> None:
        try:
            barrier.wait(timeout=60)
            create_key(store, tenant="newco", plan="free")
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=create) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert _count(store, TenantRow.name == "newco", table=TenantRow) == 1
    assert len(list_keys(store, tenant="newco")) == 6


# -- metering across processes ----------------------------------------------------------------------


def _run_workers(make_events, url: str, *args) -> tuple[list[tuple], int]:
    """WORKERS spawned processes, each with its own Store and Meter, submit ``make_events(worker,
    *args)`` together (a barrier lines them up), a few at a time. Returns every event's outcome as
    (request_id, idempotency_key, own response, status, used, retry_after, replayed response), and
    how many deadlocks PostgreSQL reported to them (each one aborts a group, which is retried)."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    start = ctx.Barrier(WORKERS)
    procs = [ctx.Process(target=_worker_main, args=(results, start, url, w, make_events, args), daemon=True)
             for w in range(WORKERS)]
    for p in procs:
        p.start()
    try:
        got = dict(results.get(timeout=120) for _ in procs)
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    failed = [r for r in got.values() if isinstance(r, str)]
    assert not failed, "a worker failed:\n" + "\n".join(failed)
    return [o for w in range(WORKERS) for o in got[w][0]], sum(got[w][1] for w in range(WORKERS))


def _worker_main(results, start, url: str, worker: int, make_events, args) -> None:
    try:
        from sqlalchemy import event

        store = Store(url)
        store._setup()
        deadlocks = []

        @event.listens_for(store._engine, "handle_error")
        def _count_deadlocks(ctx) -> None:
            if getattr(ctx.original_exception, "sqlstate", None) == "40P01":  # deadlock_detected
                deadlocks.append(1)

        meter = metering.Meter(store)
        meter.start()
        events = make_events(worker, *args)
        start.wait(timeout=120)
        try:
            outcomes = _submit_in_bursts(meter, events, seed=worker)
        finally:
            meter.stop()
            store.close()
        results.put((worker, (outcomes, len(deadlocks))))
    except BaseException:
        results.put((worker, traceback.format_exc()))


def _submit_in_bursts(meter: metering.Meter, events: list[metering.UsageEvent], seed: int) -> list:
    """Submit a few events at a time (so the meter's groups vary) and wait for each burst's outcomes."""
    rng, out, i = random.Random(seed), [], 0
    while i < len(events):
        burst = events[i:i + rng.randint(1, 8)]
        futures = [meter.submit(ev) for ev in burst]
        for ev, fut in zip(burst, futures):
            o = fut.result(timeout=60)
            out.append((ev.request_id, ev.idempotency_key, ev.response, o.status, o.used, o.retry_after, o.response))
        i += len(burst)
    return out


QUOTA_PLAN = Plan(monthly_quota=150, quota_unit="requests")


def _quota_events(worker: int, n: int) -> list[metering.UsageEvent]:
    return [_event(f"w{worker}-{i}", QUOTA_PLAN) for i in range(n)]


def test_quota_admits_exactly_q_requests_across_processes(store, pg_url):
    quota, per_worker = QUOTA_PLAN.monthly_quota, 120  # 480 requests race for 150
    create_key(store, tenant="acme", plan="free")  # the schema and the tenant exist before the servers start
    outcomes, _ = _run_workers(_quota_events, pg_url, per_worker)

    assert len(outcomes) == WORKERS * per_worker  # every request got an answer
    assert Counter(o[3] for o in outcomes) == {"billed": quota, "over_quota": WORKERS * per_worker - quota}
    # Each billed request saw the counter at a different value: 1..Q, no value twice, none skipped.
    assert sorted(o[4] for o in outcomes if o[3] == "billed") == list(range(1, quota + 1))
    assert all(o[5] and o[5] > 0 for o in outcomes if o[3] == "over_quota")  # Retry-After given
    assert _count(store, UsageRow.tenant == "acme") == quota
    assert metering.quota_used(store, "acme", QUOTA_PLAN, AT) == quota
    with store.read() as s:
        assert set(s.scalars(select(UsageRow.request_id))) == {o[0] for o in outcomes if o[3] == "billed"}


def _idempotent_events(worker: int, keys: list[str]) -> list[metering.UsageEvent]:
    order = list(keys)
    random.Random(100 + worker).shuffle(order)  # each process sends the keys in its own order
    return [_event(f"w{worker}-{k}", Plan(quota_unit="requests"), key_id="k-idem", idem=k,
                   response={"key": k, "answered_by": worker}) for k in order]


def test_an_idempotency_key_raced_by_processes_bills_once_and_all_get_one_response(store, pg_url):
    keys = [f"idem-{i}" for i in range(40)]
    create_key(store, tenant="acme", plan="pro")
    outcomes, _ = _run_workers(_idempotent_events, pg_url, keys)

    assert len(outcomes) == WORKERS * len(keys)
    assert Counter(o[3] for o in outcomes) == {"billed": len(keys), "replay": (WORKERS - 1) * len(keys)}
    assert Counter(o[1] for o in outcomes if o[3] == "billed") == Counter(keys)  # each key billed exactly once
    with store.read() as s:
        stored = {r.idempotency_key: r.response for r in s.scalars(select(IdempotencyRow))}
        assert sorted(s.scalars(select(UsageRow.idempotency_key))) == sorted(keys)
    assert sorted(stored) == sorted(keys)
    for key in keys:
        # What each submitter answers: its own response if it billed, else the replayed one.
        answers = [own if status == "billed" else replayed
                   for _, k, own, status, _, _, replayed in outcomes if k == key]
        assert len(answers) == WORKERS and all(a == stored[key] for a in answers), (key, answers)
    assert metering.quota_used(store, "acme", Plan(quota_unit="requests"), AT) == len(keys)


def _new_month_events(worker: int, months: int) -> list[metering.UsageEvent]:
    firsts = [datetime(2030 + m // 12, m % 12 + 1, 1, 0, 0, 1, tzinfo=timezone.utc) for m in range(months)]
    return [_event(f"w{worker}-{m}-{i}", Plan(quota_unit="requests"), at=at)
            for m, at in enumerate(firsts) for i in range(2)]


def test_the_first_requests_of_a_month_raced_by_processes_are_all_billed(store, pg_url):
    """Every process finds no counter for the month and several create it at once: none of them
    may take the other's fresh counter for an exhausted quota (the plan has no quota at all)."""
    months = 60
    create_key(store, tenant="acme", plan="pro")
    outcomes, _ = _run_workers(_new_month_events, pg_url, months)

    assert Counter(o[3] for o in outcomes) == {"billed": WORKERS * months * 2}
    with store.read() as s:
        counters = dict(s.execute(select(QuotaCounterRow.period, QuotaCounterRow.requests)).all())
    assert len(counters) == months and set(counters.values()) == {WORKERS * 2}


def _two_tenant_events(worker: int, n: int) -> list[metering.UsageEvent]:
    tenants = ["acme", "globex"] if worker % 2 else ["globex", "acme"]  # opposite orders
    return [_event(f"w{worker}-{i}", Plan(monthly_quota=10**6, quota_unit="requests"), tenant=tenants[i % 2],
                   key_id=f"k-{tenants[i % 2]}") for i in range(n)]


def test_groups_spanning_tenants_in_opposite_orders_do_not_deadlock(store, pg_url):
    """One group's transaction locks several tenants' counters; servers that take them in
    different orders must not deadlock (PostgreSQL would abort a group after deadlock_timeout)."""
    per_worker = 120
    create_key(store, tenant="acme", plan="pro")
    create_key(store, tenant="globex", plan="pro")
    outcomes, deadlocks = _run_workers(_two_tenant_events, pg_url, per_worker)

    assert deadlocks == 0
    assert Counter(o[3] for o in outcomes) == {"billed": WORKERS * per_worker}


# -- reports ----------------------------------------------------------------------------------------


def test_usage_report_groups_by_utc_day_and_prices_by_plan(store, pg_url):
    create_key(store, tenant="acme", plan="pro")  # 0.50 per 1k texts
    create_key(store, tenant="globex", plan="enterprise")  # 0.30 per 1k texts
    # The session time zone must not matter: UTC+9 puts 23:59 UTC on the next local day.
    engine = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{engine.url.database}" SET timezone TO \'Asia/Tokyo\''))
    engine.dispose()
    store.close()  # reconnect: the setting applies to new sessions
    with store.read() as s:
        assert s.scalar(text("SHOW timezone")) == "Asia/Tokyo"

    plan = Plan()
    midnight = datetime(2026, 4, 1, tzinfo=timezone.utc)
    metering.record(store, [
        _event("a1", plan, at=midnight - timedelta(microseconds=1), texts=1000),
        _event("a2", plan, at=datetime(2026, 4, 1, 1, 30, tzinfo=timezone(timedelta(hours=2))), texts=500),  # 23:30 UTC
        _event("a3", plan, at=midnight, texts=2),
        _event("a4", plan, at=midnight + timedelta(hours=23, minutes=59), texts=3),
        _event("g1", plan, tenant="globex", key_id="k2", at=midnight - timedelta(hours=12), texts=2000),
        _event("a5", plan, at=midnight + timedelta(days=1), texts=7),  # outside the range below
    ])

    rows = metering.usage_report(store, ServeConfig(), start=date(2026, 3, 31), end=date(2026, 4, 1))
    got = [(r["tenant"], r["day"], r["requests"], r["texts"], r["tokens"], r["plan"], r["cost"]) for r in rows]
    assert got == [
        ("acme", "2026-03-31", 2, 1500, 7500, "pro", pytest.approx(0.75)),
        ("acme", "2026-04-01", 2, 5, 25, "pro", pytest.approx(0.0025)),
        ("globex", "2026-03-31", 1, 2000, 10000, "enterprise", pytest.approx(0.6)),
    ]
    one_day = metering.usage_report(store, ServeConfig(), tenant="acme", start=date(2026, 4, 1), end=date(2026, 4, 1))
    assert [(r["day"], r["requests"]) for r in one_day] == [("2026-04-01", 2)]
