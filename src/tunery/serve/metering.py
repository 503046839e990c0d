"""Usage metering, quotas and idempotency, with one guarantee:

    **A prediction or an explanation is acknowledged (HTTP 200) only after its usage event is
    committed to the store.**

Two usage units: predictions (texts and tokens, priced and counted against the plan's quota in its
``quota_unit``) and explanations (texts explained, priced per ``plan.explain.price_per_1k`` and
counted against ``plan.explain.monthly_quota``). An explanation event carries ``explanations`` (and
the model ``evaluations`` they cost) with texts and tokens 0, so each unit's quota and price see
only their own requests.

Each request hands its event to the ``Meter``, a single writer thread per server process that
commits whatever has queued up in one transaction (a group commit: one fsync for many requests),
then wakes the waiting requests. In that transaction, per event:

1. the ``Idempotency-Key`` (if any) is inserted with the response, under a savepoint; if the key
   already exists the event is dropped and the stored response is returned instead (counted once);
2. the tenant's counter for the month, locked at the start of the transaction (``SELECT ... FOR
   UPDATE`` on PostgreSQL, where it serialises concurrent servers; on SQLite ``BEGIN IMMEDIATE``
   serialises writers), is checked and bumped, so a quota of Q admits exactly Q units however many
   workers or processes race for it;
3. the usage event is inserted (all of the group's events in one statement).

Idempotency records are kept for ``idempotency_retention_hours`` (serve config, default 24 h): the
meter thread deletes older ones when it starts and then every ``retention / 24`` (at most hourly).
A retry within the window gets the stored response; one after it is a new request.

A request that fails anywhere (rate limit, quota, bad input, inference or store error, an
explanation past its time limit) commits nothing and is never billed. A SIGKILL can lose at most
events whose requests were never answered; SIGTERM lets uvicorn drain in-flight requests before the
meter stops. With SQLite the default ``synchronous=FULL`` fsyncs every commit, so an acknowledged
event also survives a power cut.
"""

from __future__ import annotations

import calendar
import concurrent.futures
import logging
import queue
import threading
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

from sqlalchemy import case, delete, func, insert, select
from sqlalchemy.exc import IntegrityError

from tunery.serve.settings import Plan, ServeConfig
from tunery.store import IdempotencyRow, QuotaCounterRow, Store, TenantRow, UsageRow

log = logging.getLogger(__name__)

_MAX_GROUP = 512
FIRST_DAY, LAST_DAY = date(1970, 1, 1), date(9999, 12, 30)  # days a usage report may start or end


def period_of(at: datetime) -> str:
    return f"{at.year:04d}-{at.month:02d}"


def seconds_to_next_period(at: datetime) -> int:
    days = calendar.monthrange(at.year, at.month)[1]
    start = datetime(at.year, at.month, 1, tzinfo=timezone.utc)
    return max(1, int((start + timedelta(days=days) - at).total_seconds()) + 1)


def quota_amount(plan: Plan, *, texts: int, tokens: int) -> int:
    return {"requests": 1, "texts": texts, "tokens": tokens}[plan.quota_unit]


@dataclass(frozen=True)
class UsageEvent:
    tenant: str
    key_id: str
    model: str
    model_ref: str
    texts: int
    tokens: int
    latency_ms: float
    request_id: str
    at: datetime
    plan: Plan
    idempotency_key: str | None = None
    request_hash: str | None = None
    response: dict[str, Any] | None = None  # stored for replays when idempotency_key is set
    explanations: int = 0  # an explanation request: the texts explained (then texts = tokens = 0)
    evaluations: int = 0  # the model evaluations those explanations cost

    @property
    def is_explanation(self) -> bool:
        return self.explanations > 0


@dataclass(frozen=True)
class Outcome:
    status: str  # "billed" | "over_quota" | "replay" | "conflict"
    response: dict[str, Any] | None = None  # the stored response, for "replay"
    retry_after: int | None = None  # for "over_quota"
    used: int | None = None


class Meter:
    """The single writer of usage events in this process (see the module's docstring)."""

    def __init__(self, store: Store, *, idempotency_retention: timedelta | None = None) -> None:
        self.store = store
        self.retention = idempotency_retention
        # sweep 24 times per retention window, at most hourly, at least every 10 s
        self.sweep_every = (None if self.retention is None
                            else min(3600.0, max(10.0, self.retention.total_seconds() / 24)))
        self._next_sweep = 0.0
        self._queue: queue.Queue[tuple[UsageEvent, concurrent.futures.Future] | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tunery-meter", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Commit everything already submitted, then stop."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def submit(self, event: UsageEvent) -> concurrent.futures.Future:
        """A future that resolves to an Outcome once the event's transaction has committed."""
        if self._thread is None:
            raise RuntimeError("the meter is not running")
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((event, fut))
        return fut

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def _sweep_if_due(self) -> None:
        if self.retention is None or time.monotonic() < self._next_sweep:
            return
        self._next_sweep = time.monotonic() + self.sweep_every
        try:
            gone = sweep_idempotency(self.store, datetime.now(timezone.utc) - self.retention)
            if gone:
                log.info("deleted %d idempotency records older than %s", gone, self.retention)
        except Exception:  # the store is down: billing reports it; try again at the next sweep
            log.exception("the idempotency retention sweep failed")

    def _run(self) -> None:
        stopping = False
        while not stopping:
            self._sweep_if_due()
            try:
                first = self._queue.get(timeout=self.sweep_every)
            except queue.Empty:
                continue
            group = []
            if first is None:
                stopping = True
            else:
                group.append(first)
            while len(group) < _MAX_GROUP:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                else:
                    group.append(item)
            if group:
                self._commit(group)

    def _commit(self, group: list[tuple[UsageEvent, concurrent.futures.Future]]) -> None:
        for attempt in range(3):
            try:
                outcomes = record(self.store, [e for e, _ in group])
                break
            except Exception as e:  # the store failed: nothing of this group is billed or acknowledged
                if attempt == 2:
                    log.exception("usage could not be recorded for %d requests", len(group))
                    for _, fut in group:
                        fut.set_exception(e)
                    return
                time.sleep(0.05 * (attempt + 1))
        for (_, fut), outcome in zip(group, outcomes):
            fut.set_result(outcome)


def record(store: Store, events: list[UsageEvent]) -> list[Outcome]:
    """Bill ``events`` in one transaction (see the module docstring).

    The counters the group touches are locked first; each event is then checked against its
    counter in memory (exact: nobody else can change a locked counter), idempotency keys are claimed
    under a savepoint each, and at the end the counters are written once and the events inserted
    in one statement.
    """
    outcomes: list[Outcome] = []
    with store.transaction() as s:
        counters = _lock_counters(s, events)
        billed: list[dict[str, Any]] = []
        for ev in events:
            counter = counters[(ev.tenant, period_of(ev.at))]
            outcome = _charge(s, ev, counter)
            outcomes.append(outcome)
            if outcome.status == "billed":
                billed.append(dict(
                    created_at=ev.at, tenant=ev.tenant, key_id=ev.key_id, model=ev.model, model_ref=ev.model_ref,
                    texts=ev.texts, tokens=ev.tokens, latency_ms=ev.latency_ms, request_id=ev.request_id,
                    idempotency_key=ev.idempotency_key, explanations=ev.explanations, evaluations=ev.evaluations,
                ))  # fmt: skip
        if billed:
            s.execute(insert(UsageRow), billed)
    return outcomes


def _lock_counters(s, events: list[UsageEvent]) -> dict[tuple[str, str], QuotaCounterRow]:
    """Lock every quota counter the group may bump, in one global order and before anything else,
    creating missing ones at zero; returns them by (tenant, period).

    A group's transaction holds its row locks until it commits. Taken as the events come (this
    event's idempotency key, then its tenant's counter, then the next event's key...), two
    servers' groups on PostgreSQL can each hold what the other waits for: a deadlock, which costs
    ``deadlock_timeout`` (1 s) and an aborted, retried group, or failed requests after 3 tries.
    Holding every counter of the group, in sorted order, before claiming any idempotency key leaves
    no such cycle. (On SQLite, BEGIN IMMEDIATE already gave this transaction the whole database.)
    """
    counters: dict[tuple[str, str], QuotaCounterRow] = {}
    for tenant, period in sorted({(ev.tenant, period_of(ev.at)) for ev in events}):
        query = select(QuotaCounterRow).where(QuotaCounterRow.tenant == tenant, QuotaCounterRow.period == period)
        for _ in range(2):
            row = s.scalars(query.with_for_update()).one_or_none()
            if row is not None:
                break
            try:
                with s.begin_nested():
                    row = QuotaCounterRow(tenant=tenant, period=period, requests=0, texts=0, tokens=0,
                                          explanations=0)
                    s.add(row)
                    s.flush()
                break
            except IntegrityError:
                row = None  # another server created it first (and has committed): lock that row
        if row is None:
            raise RuntimeError(f"could not lock the quota counter of {tenant} for {period}")
        counters[(tenant, period)] = row
    return counters


def _charge(s, ev: UsageEvent, counter: QuotaCounterRow) -> Outcome:
    """Claim the event's idempotency key (if any) and add it to its locked counter, unless that
    would pass the quota. The counter is changed in memory; the session writes it at commit."""
    plan = ev.plan
    if ev.is_explanation:
        amount, used, quota = ev.explanations, counter.explanations, plan.explain.monthly_quota
    else:
        amount, used = quota_amount(plan, texts=ev.texts, tokens=ev.tokens), getattr(counter, plan.quota_unit)
        quota = plan.monthly_quota
    if quota is not None and used + amount > quota:
        if ev.idempotency_key is not None:  # a retry of a billed request gets its answer, not a 429
            stored = lookup_idempotent(s, ev.key_id, ev.idempotency_key)
            if stored is not None:
                return _replay_outcome(stored, ev)
        return Outcome("over_quota", retry_after=seconds_to_next_period(ev.at), used=used)
    if ev.idempotency_key is not None:
        try:
            with s.begin_nested():
                s.add(IdempotencyRow(
                    key_id=ev.key_id, idempotency_key=ev.idempotency_key,
                    request_hash=ev.request_hash or "", response=ev.response or {}, created_at=ev.at,
                ))  # fmt: skip
                s.flush()
        except IntegrityError:
            stored = lookup_idempotent(s, ev.key_id, ev.idempotency_key)
            assert stored is not None
            return _replay_outcome(stored, ev)
    if ev.is_explanation:
        counter.explanations += ev.explanations
    else:
        counter.requests += 1
        counter.texts += ev.texts
        counter.tokens += ev.tokens
    return Outcome("billed", used=used + amount)


def _replay_outcome(stored: IdempotencyRow, ev: UsageEvent) -> Outcome:
    if stored.request_hash != ev.request_hash:
        return Outcome("conflict")
    return Outcome("replay", response=dict(stored.response))


_UNIT_COLUMN = {"requests": QuotaCounterRow.requests, "texts": QuotaCounterRow.texts, "tokens": QuotaCounterRow.tokens}


def lookup_idempotent(s, key_id: str, idempotency_key: str) -> IdempotencyRow | None:
    return s.scalars(
        select(IdempotencyRow).where(
            IdempotencyRow.key_id == key_id, IdempotencyRow.idempotency_key == idempotency_key
        )
    ).one_or_none()


def sweep_idempotency(store: Store, older_than: datetime) -> int:
    """Delete the idempotency records created before ``older_than``; returns how many."""
    with store.transaction() as s:
        return s.execute(delete(IdempotencyRow).where(IdempotencyRow.created_at < older_than)).rowcount or 0


def find_idempotent(store: Store, key_id: str, idempotency_key: str) -> tuple[str, dict[str, Any]] | None:
    """(request hash, stored response) of an earlier request with this key, if any."""
    with store.read() as s:
        row = lookup_idempotent(s, key_id, idempotency_key)
        return None if row is None else (row.request_hash, dict(row.response))


def quota_used(store: Store, tenant: str, plan: Plan, at: datetime) -> int:
    """Units of the plan's quota the tenant has used this month (0 if none)."""
    with store.read() as s:
        value = s.scalar(
            select(_UNIT_COLUMN[plan.quota_unit]).where(
                QuotaCounterRow.tenant == tenant, QuotaCounterRow.period == period_of(at)
            )
        )
    return int(value or 0)


def explanations_used(store: Store, tenant: str, at: datetime) -> int:
    """Explanations the tenant has had this month (0 if none)."""
    with store.read() as s:
        value = s.scalar(
            select(QuotaCounterRow.explanations).where(
                QuotaCounterRow.tenant == tenant, QuotaCounterRow.period == period_of(at)
            )
        )
    return int(value or 0)


# ----------------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------------


def day_range_problem(start: date | None, end: date | None, start_name: str, end_name: str) -> str | None:
    """What is wrong with the day range ``[start, end]`` (each optional), named as the caller calls
    them; None if nothing."""
    for name, day in ((start_name, start), (end_name, end)):
        if day is not None and not FIRST_DAY <= day <= LAST_DAY:
            return (f"{name} {day} is outside the days a report covers, {FIRST_DAY} to {LAST_DAY}; "
                    f"leave {name} out for no bound")
    if start is not None and end is not None and end < start:
        return f"{end_name} {end} is before {start_name} {start}"
    return None


def _day(dialect: str):
    if dialect == "sqlite":
        return func.strftime("%Y-%m-%d", UsageRow.created_at)
    return func.to_char(func.timezone("UTC", UsageRow.created_at), "YYYY-MM-DD")


def usage_report(
    store: Store, config: ServeConfig, *, tenant: str | None = None, start: date | None = None,
    end: date | None = None, explanations: bool = False,
) -> list[dict[str, Any]]:
    """Totals per tenant, model and UTC day in ``[start, end]`` (inclusive days), with the cost
    under each tenant's current plan. Rows sorted by tenant, day, model.

    ``requests``, ``texts`` and ``tokens`` are predictions'; with ``explanations``, the rows also
    have ``explain_requests``, ``explanations`` and ``evaluations`` (model evaluations spent
    explaining). ``cost`` is both units' either way."""
    problem = day_range_problem(start, end, "--from", "--to")
    if problem is not None:
        raise ValueError(problem)
    day = _day(store.dialect).label("day")
    query = (
        select(
            UsageRow.tenant, day, UsageRow.model, UsageRow.model_ref,
            func.sum(case((UsageRow.explanations == 0, 1), else_=0)), func.sum(UsageRow.texts),
            func.sum(UsageRow.tokens), func.sum(case((UsageRow.explanations > 0, 1), else_=0)),
            func.sum(UsageRow.explanations), func.sum(UsageRow.evaluations),
        )  # fmt: skip
        .group_by(UsageRow.tenant, day, UsageRow.model, UsageRow.model_ref)
        .order_by(UsageRow.tenant, day, UsageRow.model, UsageRow.model_ref)
    )
    if tenant is not None:
        query = query.where(UsageRow.tenant == tenant)
    if start is not None:
        query = query.where(UsageRow.created_at >= datetime(start.year, start.month, start.day, tzinfo=timezone.utc))
    if end is not None:
        after = end + timedelta(days=1)
        query = query.where(UsageRow.created_at < datetime(after.year, after.month, after.day, tzinfo=timezone.utc))
    with store.read() as s:
        plans = dict(s.execute(select(TenantRow.name, TenantRow.plan)).all())
        rows = s.execute(query).all()
    out = []
    for t, d, model, ref, requests, texts, tokens, explain_requests, n_explanations, evaluations in rows:
        plan_name = plans.get(t)
        plan = config.plans.get(plan_name) if plan_name else None
        texts, tokens, n_explanations = int(texts or 0), int(tokens or 0), int(n_explanations or 0)
        out.append({
            "tenant": t, "day": d, "model": model, "model_ref": ref, "plan": plan_name,
            "requests": int(requests or 0), "texts": texts, "tokens": tokens,
            **({"explain_requests": int(explain_requests or 0), "explanations": n_explanations,
                "evaluations": int(evaluations or 0)} if explanations else {}),
            "cost": round(plan.cost(texts, tokens, n_explanations), 6) if plan else None,
            "currency": config.currency,
        })  # fmt: skip
    return out
