"""Real servers on one real PostgreSQL: two `tunery serve` processes (one of them with two workers)
share usage, quotas and idempotency exactly under concurrent load."""

from __future__ import annotations

import concurrent.futures
import itertools

from tests.pg import pg_server, pg_url  # noqa: F401  (fixtures)
from tests.serve.conftest import new_key, start_server, usage_rows

CONFIG = {"plans": {"pro": {}, "q": {"monthly_quota": 30, "quota_unit": "requests"}},
          "batching": {"max_batch_size": 16, "max_wait_ms": 5}}


def test_two_servers_on_one_postgres_bill_and_limit_exactly(tiny_run, tmp_path, pg_url):
    a = start_server([f"sentiment={tiny_run}"], cwd=tmp_path, config=CONFIG, db_url=pg_url)
    b = start_server([f"sentiment={tiny_run}"], cwd=tmp_path, config=CONFIG, db_url=pg_url, workers=2)
    try:
        key, limited = new_key(a, "acme"), new_key(a, "small", plan="q")
        servers = itertools.cycle([a, b])
        jobs = [(next(servers), key, f"text {i}", None) for i in range(60)]
        jobs += [(next(servers), limited, f"text {i}", None) for i in range(90)]
        jobs += [(next(servers), key, "same text", "retry-1") for _ in range(10)]

        def one(job):
            server, k, text, idem = job
            headers = {"Idempotency-Key": idem} if idem else {}
            with server.client(k) as c:
                r = c.post("/v1/models/sentiment/predict", json={"texts": [text]}, headers=headers)
            return r.status_code, (r.json().get("request_id") if r.status_code == 200 else None)

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            results = list(pool.map(one, jobs))
    finally:
        a.stop()
        b.stop()
    plain, small, retried = results[:60], results[60:150], results[150:]
    assert [code for code, _ in plain] == [200] * 60
    assert [code for code, _ in small].count(200) == 30 and [code for code, _ in small].count(429) == 60
    assert {code for code, _ in retried} == {200} and len({rid for _, rid in retried}) == 1
    acme = usage_rows(a, tenant="acme")
    assert len(acme) == 61  # 60 plain + the idempotent request once
    assert {rid for _, rid in plain + retried} == {r.request_id for r in acme}
    assert len(usage_rows(a, tenant="small")) == 30
