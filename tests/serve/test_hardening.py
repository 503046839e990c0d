"""The server against hostile and careless clients (issue 8), on the real server (uvicorn on
127.0.0.1, started by `tunery serve`): bounded metric labels, tenant figures for admins only, header
limits and memory, slow and idle connections, date ranges, the revocation race, JSON errors below
the app, idempotency retention and the order of the rate and quota checks.

The server runs under tests/serve/hooked_serve.py: an open-file limit of 256, as a small host might
have, and a gate on key authentication that lets a test revoke a key while one is in flight."""

from __future__ import annotations

import concurrent.futures
import json
import random
import re
import select
import socket
import string
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.serve.conftest import new_key, start_server

HERE = Path(__file__).parent
NOFILE = 256  # the server's open-file limit; max_connections defaults to it less 128

CONFIG = {
    "plans": {
        "pro": {},
        "tight": {"monthly_quota": 3, "quota_unit": "texts", "rate_limit": 0.001, "burst": 2},
    },
    "limits": {"max_header_bytes": 16384, "max_headers": 50},
    "connections": {"header_timeout_seconds": 1, "body_timeout_seconds": 1},
    "auth_cache_seconds": 60,  # long, so a wrongly cached key would stay for the whole test
    "precision": "fp32",
}


@pytest.fixture(scope="module")
def gate(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("auth-gate")


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory, gate):
    srv = start_server([f"sentiment={tiny_run}", f"other={tiny_run}"], cwd=tmp_path_factory.mktemp("hardening"),
                       config=CONFIG, launcher=[str(HERE / "hooked_serve.py")],
                       env={"TUNERY_TEST_AUTH_GATE": str(gate), "TUNERY_TEST_NOFILE": str(NOFILE)})
    yield srv
    srv.stop()


def tenant() -> str:
    return "t" + uuid.uuid4().hex[:10]


def address(server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def proc_status(server, field: str) -> int:
    """A figure in kB from /proc/PID/status of the server process (VmRSS, VmHWM)."""
    text = Path(f"/proc/{server.proc.pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


def read_response(sock: socket.socket, timeout: float = 20) -> bytes:
    """Everything the server sends until it closes (or ``timeout`` passes)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError, socket.timeout):
        pass
    return data


def wait_closed(sock: socket.socket, timeout: float) -> tuple[bool, bytes]:
    """(whether the server closed the connection within ``timeout``, what it sent before)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    except (TimeoutError, socket.timeout):
        return False, data
    return True, data


def parse(raw: bytes) -> tuple[int, dict[str, str], dict | None]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, json.loads(body) if headers.get("content-type") == "application/json" else None


def raw_request(server, data: bytes) -> tuple[int, dict[str, str], dict | None]:
    with socket.create_connection(address(server), timeout=20) as sock:
        sock.sendall(data)
        return parse(read_response(sock))


def send_until_answered(sock: socket.socket, chunks, limit: int) -> tuple[int, bytes]:
    """Send chunks until the server answers (or closes) or ``limit`` bytes went out; returns
    (bytes sent, what came back so far)."""
    sent = 0
    for chunk in chunks:
        if select.select([sock], [], [], 0)[0]:
            break
        try:
            sock.sendall(chunk)
        except OSError:  # the server closed the connection
            break
        sent += len(chunk)
        if sent >= limit:
            break
    sock.setblocking(True)
    if select.select([sock], [], [], 0.5)[0]:
        return sent, read_response(sock, timeout=5)
    return sent, b""


def metrics(server, key: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(server.url + "/metrics", headers=headers, timeout=30).text


# -- metrics ---------------------------------------------------------------------------------------


def test_metric_labels_stay_bounded_under_2000_random_model_names(server):
    rng = random.Random(8)
    alphabet = string.ascii_letters + string.digits
    names = ["".join(rng.choices(alphabet, k=4000)) + "%00%0A%22" for _ in range(2000)]
    httpx.post(server.url + "/v1/models/sentiment/predict", json={"texts": ["warm"]})  # the series exist
    before = metrics(server)

    def hit(batch: list[str]) -> list[int]:
        with httpx.Client(base_url=server.url, timeout=60) as c:  # no key: 401 for every one
            return [c.post(f"/v1/models/{n}/predict", json={"texts": ["x"]}).status_code for n in batch]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        codes = [code for batch in pool.map(hit, [names[i::4] for i in range(4)]) for code in batch]
    assert set(codes) == {401}
    after = metrics(server)
    series = lambda text: {line.rsplit(" ", 1)[0] for line in text.splitlines() if line.startswith("tunery_requests_total{")}  # noqa: E731
    assert len(series(after) - series(before)) <= 2, sorted(series(after) - series(before))[:5]
    assert len(after) < len(before) + 10_000, (len(before), len(after))
    assert "\x00" not in after and names[0][:50] not in after
    assert 'tunery_requests_total{endpoint="/v1/models/{name}/predict",model="-",status="401"} ' in after


def test_metrics_show_tenants_only_to_an_admin_key(server):
    name = tenant()
    key, admin = new_key(server, name), new_key(server, tenant(), admin=True)
    with server.client(key) as c:
        assert c.post("/v1/models/sentiment/predict", json={"texts": ["a", "b"]}).status_code == 200
    for anonymous in (metrics(server), metrics(server, key)):  # no key, or a tenant's key
        assert name not in anonymous and "tenant=" not in anonymous and "tunery_usage" not in anonymous
        assert 'tunery_batch_size_count{model="sentiment"}' in anonymous
    assert f'tunery_usage_texts_total{{model="sentiment",tenant="{name}"}} 2.0' in metrics(server, admin)
    r = httpx.get(server.url + "/metrics", headers={"Authorization": "Bearer tny_wrong"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_key"


# -- headers ---------------------------------------------------------------------------------------


def test_oversized_or_too_many_headers_get_431_json(server):
    key = new_key(server, tenant())
    head = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key.encode() + b"\r\n"
    status, headers, body = raw_request(server, head + b"X-Big: " + b"a" * 20_000 + b"\r\n\r\n")
    assert (status, body["error"]["code"]) == (431, "header_too_large"), body
    assert "limits.max_header_bytes=16384" in body["error"]["message"] and headers["connection"] == "close"
    status, _, body = raw_request(server, head + b"Authorization: Bearer " + b"k" * 1_000_000 + b"\r\n\r\n")
    assert (status, body["error"]["code"]) == (431, "header_too_large")
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(60))
    status, _, body = raw_request(server, head + many + b"\r\n")
    assert (status, body["error"]["code"]) == (431, "too_many_headers") and "limits.max_headers=50" in body["error"]["message"]
    status, _, body = raw_request(server, head + b"\r\n")  # the same request within the limits
    assert status == 200 and body["models"]


def test_unfinished_huge_headers_leave_server_memory_bounded(server):
    """12 connections each sending an endless header (no key): each is answered 431 and closed after
    max_header_bytes, so the server does not keep what they send (on main it kept all of it)."""
    per_connection = 16 * 1024 * 1024
    chunk = b"a" * 65536
    rss_before, peak_before = proc_status(server, "VmRSS"), proc_status(server, "VmHWM")
    socks = [socket.create_connection(address(server), timeout=30) for _ in range(12)]

    def attack(sock: socket.socket) -> tuple[int, bytes]:
        sock.sendall(b"POST /v1/models/sentiment/predict HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        return send_until_answered(sock, iter(lambda: chunk, None), per_connection)

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(attack, socks))
    grown_mb = (proc_status(server, "VmRSS") - rss_before) / 1024  # the connections are still open here
    peak_mb = (proc_status(server, "VmHWM") - peak_before) / 1024
    for sock in socks:
        sock.close()
    sent_mb = sum(sent for sent, _ in results) / 2**20
    print(f"12 unfinished headers: {sent_mb:.1f} MB sent; server RSS +{grown_mb:.1f} MB, peak +{peak_mb:.1f} MB")
    assert grown_mb < 48 and peak_mb < 48, f"the server grew {grown_mb:.0f} MB (peak +{peak_mb:.0f} MB) for {sent_mb:.0f} MB sent"
    answers = [parse(raw) for _, raw in results if raw]
    assert answers and all(status == 431 and body["error"]["code"] == "header_too_large" for status, _, body in answers)
    assert httpx.get(server.url + "/healthz").status_code == 200


# -- errors below the app ----------------------------------------------------------------------------


def test_protocol_errors_below_the_app_are_json(server):
    for bad in (b"X-Bad: a\x00b", b"X\x80Bad: v", b"X Bad: v"):  # a NUL in a value, bad bytes in a name
        status, _, body = raw_request(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + bad + b"\r\n\r\n")
        assert (status, body["error"]["code"]) == (400, "invalid_http"), body
    status, _, body = raw_request(server, b"NOT HTTP AT ALL\r\n\r\n")
    assert (status, body["error"]["code"]) == (400, "invalid_http")
    with socket.create_connection(address(server), timeout=30) as sock:  # a 20 MB URL
        sock.sendall(b"GET /v1/models?q=")
        sent, raw = send_until_answered(sock, iter(lambda: b"a" * 65536, None), 20 * 1024 * 1024)
    status, _, body = parse(raw)
    assert (status, body["error"]["code"]) == (431, "header_too_large") and sent < 20 * 1024 * 1024


def test_unknown_model_404_lists_only_the_models_of_the_key(server):
    key = new_key(server, tenant(), models=["sentiment"])
    with server.client(key) as c:
        r = c.post("/v1/models/nope/predict", json={"texts": ["x"]})
    message = r.json()["error"]["message"]
    assert r.status_code == 404 and "sentiment" in message and "other" not in message, message


# -- slow and idle connections -----------------------------------------------------------------------


def test_slow_and_idle_connections_are_dropped_while_normal_clients_get_answers(server):
    """200 idle sockets (past the connection bound, and with the server's open-file limit of 256,
    past what it could hold), 30 trickling a header, 10 trickling a body: well-behaved clients still
    get 200s, and every slow connection is closed by the server (408 for those that sent something)."""
    key = new_key(server, tenant())
    where = address(server)
    idle = [socket.create_connection(where, timeout=30) for _ in range(200)]
    heads = [socket.create_connection(where, timeout=30) for _ in range(30)]
    bodies = [socket.create_connection(where, timeout=30) for _ in range(10)]
    for s in heads:
        s.sendall(b"POST /v1/models/sentiment/predict HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    for s in bodies:
        s.sendall(b"POST /v1/models/sentiment/predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key.encode()
                  + b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
    stop = threading.Event()

    def trickle() -> None:
        slow = heads + bodies
        while slow and not stop.is_set():
            answered = set(select.select(slow, [], [], 0)[0])  # stop sending once the server has answered
            slow = [s for s in slow if s not in answered]
            for s in slow:
                try:
                    s.send(b"a")
                except OSError:
                    pass
            stop.wait(0.2)

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        codes = []
        for i in range(20):  # a new connection each time: it has to be accepted among the slow ones
            r = httpx.post(server.url + "/v1/models/sentiment/predict", json={"texts": [f"fine {i}"]},
                           headers={"Authorization": f"Bearer {key}"}, timeout=30)
            codes.append(r.status_code)
        assert codes == [200] * 20
        answers = {}
        for name, group in (("idle", idle), ("head", heads), ("body", bodies)):
            for s in group:
                closed, raw = wait_closed(s, timeout=30)  # a bound for a 1 s timeout, not a timing
                assert closed, f"a {name} connection was still open after 30 s"
                answers.setdefault(name, []).append(parse(raw) if raw else None)
    finally:
        stop.set()
        trickler.join(5)
        for s in idle + heads + bodies:
            s.close()
    assert all(a is None for a in answers["idle"])  # an idle connection is closed without a word
    head_codes = {a[2]["error"]["code"] for a in answers["head"] if a}
    body_codes = {a[2]["error"]["code"] for a in answers["body"] if a}
    assert head_codes == {"header_timeout"} and body_codes == {"body_timeout"}, (head_codes, body_codes)
    assert httpx.get(server.url + "/healthz").status_code == 200


# -- usage dates ---------------------------------------------------------------------------------------


def test_usage_dates_out_of_range_get_422_and_the_connection_lives(server):
    with server.client(new_key(server, tenant())) as c:
        r = c.get("/v1/usage", params={"to": "9999-12-31"})
        assert r.status_code == 422, r.text
        message = r.json()["error"]["message"]
        assert "'to' 9999-12-31" in message and "1970-01-01 to 9999-12-30" in message
        assert c.get("/v1/usage", params={"from": "0001-01-01"}).status_code == 422
        assert c.get("/v1/usage", params={"from": "2026-02-01", "to": "2026-01-01"}).status_code == 422
        assert c.get("/v1/usage", params={"to": "9999-12-30"}).status_code == 200  # same connection


def test_cli_usage_report_with_an_impossible_day_is_a_message(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from tunery.cli import app

    monkeypatch.setenv("TUNERY_DB_URL", f"sqlite:///{tmp_path / 'usage.db'}")
    result = CliRunner().invoke(app, ["usage", "report", "--to", "9999-12-31"])
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit), repr(result.exception)
    output = result.output
    assert "--to 9999-12-31" in output and "9999-12-30" in output and "Traceback" not in output, output


# -- the key cache --------------------------------------------------------------------------------


def test_a_revocation_is_not_undone_by_an_authentication_in_flight(server, gate):
    """The authentication of a request reads the key (valid), then waits (the test's gate) while the
    key is revoked through DELETE /v1/keys; when it goes on, it must not put the key back in the
    cache: the next request with the key gets 401 (on main: 200 for the cache's 60 s here)."""
    admin, key = new_key(server, tenant(), admin=True), new_key(server, tenant())
    for f in ("read", "go"):
        (gate / f).unlink(missing_ok=True)
    (gate / "armed").write_text(key)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(lambda: httpx.get(server.url + "/v1/models", timeout=60,
                                                  headers={"Authorization": f"Bearer {key}"}))
        deadline = time.monotonic() + 60
        while not (gate / "read").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (gate / "read").exists(), "the authentication never reached the gate"
        with server.client(admin) as c:
            assert c.delete(f"/v1/keys/{key.split('_')[1]}").status_code == 200
        (gate / "go").touch()
        assert in_flight.result().status_code == 200  # it was checked before the revocation
    with server.client(key) as c:
        r = c.get("/v1/models")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_key"


def test_key_cache_ignores_an_insertion_older_than_a_revocation():
    from types import SimpleNamespace

    from tunery.serve.auth import KeyCache

    cache, info = KeyCache(ttl=60), SimpleNamespace(key_id="k1")
    generation = cache.generation()  # an authentication starts
    cache.drop("k1")  # the key is revoked meanwhile
    assert cache.put("tok", info, 0.0, generation) is False and cache.get("tok", 0.0) is None
    assert cache.put("tok", info, 0.0, cache.generation()) is True and cache.get("tok", 0.0) is info


# -- metering: rate tokens and idempotency retention ----------------------------------------------------


def test_a_request_refused_for_its_quota_spends_no_rate_token(server):
    """Plan tight: 3 texts a month, a bucket of 2 requests refilled at one per 1000 s."""
    with server.client(new_key(server, tenant(), plan="tight")) as c:
        send = lambda n: c.post("/v1/models/sentiment/predict", json={"texts": ["x"] * n})  # noqa: E731
        assert send(2).status_code == 200  # token 1 of 2; 2 of 3 texts
        r = send(2)  # 4 texts > 3: refused for the quota, before its rate token is spent
        assert r.status_code == 429 and r.json()["error"]["code"] == "quota_exceeded"
        r = send(1)  # token 2 of 2 is still there (on main: spent by the refused request)
        assert r.status_code == 200, r.text
        r = send(1)
        assert r.status_code == 429 and r.json()["error"]["code"] in ("rate_limited", "quota_exceeded")


def test_rate_limiter_refund_gives_back_one_token():
    from tunery.serve.auth import RateLimiter

    limiter = RateLimiter()
    assert limiter.check("k", 0.0, rate=0.001, size=1) == 0
    assert limiter.check("k", 0.0, rate=0.001, size=1, spend=False) > 0  # looking spends nothing
    limiter.refund("k", rate=0.001, size=1)
    assert limiter.check("k", 0.0, rate=0.001, size=1) == 0


def test_idempotency_records_older_than_the_retention_are_swept(tmp_path):
    from datetime import datetime, timedelta, timezone

    from sqlalchemy import select

    from tunery.serve import metering
    from tunery.serve.settings import ServeConfig
    from tunery.store import IdempotencyRow, Store

    assert ServeConfig().idempotency_retention_hours == 24
    store = Store(f"sqlite:///{tmp_path / 'idem.db'}")
    now = datetime.now(timezone.utc)
    with store.transaction() as s:
        for key, age in (("old", timedelta(hours=25)), ("new", timedelta(hours=23))):
            s.add(IdempotencyRow(key_id="k", idempotency_key=key, request_hash="h", response={}, created_at=now - age))
    meter = metering.Meter(store, idempotency_retention=timedelta(hours=24))
    meter.start()  # the meter thread sweeps when it starts, then every retention / 24
    meter.stop()
    with store.read() as s:
        kept = sorted(s.scalars(select(IdempotencyRow.idempotency_key)))
    store.close()
    assert kept == ["new"]
