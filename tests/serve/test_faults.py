"""Faults: SIGTERM drains in-flight requests and loses no usage; SIGKILL under load loses no usage
that a client saw acknowledged with a 200; a restarted server goes on with the same store."""

from __future__ import annotations

import concurrent.futures
import re
import signal
import threading
import time

import httpx
import pytest

from tests.serve.conftest import new_key, start_server, usage_rows

# A long batching window keeps requests in flight long enough to signal the server among them.
SLOW_BATCHES = {"batching": {"max_batch_size": 64, "max_wait_ms": 1500}, "plans": {"pro": {}}}


def _queued_texts(server) -> float:
    text = httpx.get(server.url + "/metrics", timeout=5).text
    match = re.search(r'tunery_queue_texts\{model="sentiment"\} ([0-9.]+)', text)
    return float(match.group(1)) if match else 0.0


def test_sigterm_drains_in_flight_requests_and_records_their_usage(tiny_run, tmp_path):
    server = start_server([f"sentiment={tiny_run}"], cwd=tmp_path, config=SLOW_BATCHES)
    key = new_key(server, "acme")
    n = 12

    def one(i):
        with server.client(key) as c:
            return c.post("/v1/models/sentiment/predict", json={"texts": [f"great {i}"]})

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(one, i) for i in range(n)]
        deadline = time.monotonic() + 30
        while _queued_texts(server) < n:  # every request is inside the server, waiting for its batch
            assert time.monotonic() < deadline, "requests never reached the batcher"
            time.sleep(0.02)
        server.proc.send_signal(signal.SIGTERM)
        responses = [f.result(timeout=60) for f in futures]
    assert [r.status_code for r in responses] == [200] * n
    assert server.proc.wait(60) in (0, -signal.SIGTERM)
    assert {r.request_id for r in usage_rows(server)} == {r.json()["request_id"] for r in responses}


def test_sigkill_under_load_loses_no_acknowledged_usage(tiny_run, tmp_path):
    config = {"batching": {"max_batch_size": 16, "max_wait_ms": 5}, "plans": {"pro": {}}}
    server = start_server([f"sentiment={tiny_run}"], cwd=tmp_path, config=config)
    key = new_key(server, "acme")
    acknowledged: list[str] = []
    failed = 0
    lock = threading.Lock()
    stop = threading.Event()

    def client(worker: int) -> None:
        nonlocal failed
        with server.client(key) as c:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    r = c.post("/v1/models/sentiment/predict", json={"texts": [f"lovely {worker} {i}"]})
                except httpx.HTTPError:
                    with lock:
                        failed += 1
                    if server.proc.poll() is not None:
                        return
                    continue
                if r.status_code == 200:
                    with lock:
                        acknowledged.append(r.json()["request_id"])

    threads = [threading.Thread(target=client, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(acknowledged) < 150 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(30)
    stop.set()
    for t in threads:
        t.join(30)
    recorded = {r.request_id for r in usage_rows(server)}
    assert len(acknowledged) >= 150
    assert set(acknowledged) <= recorded, f"{len(set(acknowledged) - recorded)} acknowledged requests unbilled"
    assert len(recorded) - len(acknowledged) <= 8  # at most the requests in flight when killed
    assert failed >= 1  # the kill really landed mid-load

    restarted = start_server([f"sentiment={tiny_run}"], cwd=tmp_path, config=config, db_url=server.db_url)
    with restarted.client(key) as c:
        assert c.post("/v1/models/sentiment/predict", json={"texts": ["again"]}).status_code == 200
    restarted.stop()
    assert len(usage_rows(server)) == len(recorded) + 1


@pytest.mark.parametrize("workers", [2])
def test_several_workers_share_one_store_exactly(tiny_run, tmp_path, workers):
    config = {"plans": {"pro": {}, "q": {"monthly_quota": 25, "quota_unit": "requests"}}}
    server = start_server([f"sentiment={tiny_run}"], cwd=tmp_path, config=config, workers=workers)
    try:
        key, limited = new_key(server, "acme"), new_key(server, "small", plan="q")

        def one(args):
            k, i = args
            with server.client(k) as c:
                return c.post("/v1/models/sentiment/predict", json={"texts": [f"text {i}"]}).status_code

        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            codes = list(pool.map(one, [(key, i) for i in range(40)] + [(limited, i) for i in range(60)]))
        assert codes[:40] == [200] * 40
        assert codes[40:].count(200) == 25 and codes[40:].count(429) == 35
        assert len(usage_rows(server, tenant="acme")) == 40
        assert len(usage_rows(server, tenant="small")) == 25
        admin = new_key(server, "ops", admin=True)  # the per-tenant series need an admin key
        metrics = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {admin}"}).text  # all workers
        assert re.search(r'tunery_usage_requests_total\{model="sentiment",tenant="acme"\} 40\.0', metrics), metrics[:2000]
    finally:
        server.stop()
