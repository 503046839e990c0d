"""The real server (uvicorn on 127.0.0.1, started by `tunery serve`) with the tiny model: metering,
quotas, idempotency, auth, limits, batching and metrics. One server per module, one tenant per test."""

from __future__ import annotations

import concurrent.futures
import re
import uuid

import httpx
import pytest

from tests.serve.conftest import new_key, start_server, usage_rows

CONFIG = {
    "plans": {
        "pro": {"price_per_1k_texts": 0.5},
        "quota10": {"monthly_quota": 10, "quota_unit": "requests"},
        "slow": {"rate_limit": 0.2, "burst": 2},
        "paced": {"rate_limit": 2, "burst": 1},
    },
    "limits": {"max_texts_per_request": 8, "max_chars_per_text": 200, "max_body_bytes": 64 * 1024},
    "batching": {"max_batch_size": 16, "max_wait_ms": 10},
    "precision": "fp32",  # the predictions are compared with the fp32 model loaded here
}


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    srv = start_server([f"sentiment={tiny_run}"], cwd=tmp_path_factory.mktemp("server"), config=CONFIG)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def expected(tiny_run):
    """What the model itself says, loaded in this process: the server must say the same."""
    from tunery.predict import load

    return load(tiny_run)


def tenant() -> str:
    return "t" + uuid.uuid4().hex[:10]


def predict(client: httpx.Client, texts, **kw) -> httpx.Response:
    return client.post("/v1/models/sentiment/predict", json={"texts": texts}, **kw)


def texts_for(i: int) -> list[str]:
    words = ["great", "awful", "lovely", "boring", "superb", "dreadful"]
    return [f"{words[(i + j) % 6]} film {i} {j}" for j in range(i % 4 + 1)]


# -- predictions and metering under concurrency ---------------------------------------------------


def test_concurrent_mixed_requests_each_get_their_own_predictions(server, expected):
    key = new_key(server, tenant())

    def one(i):
        with server.client(key) as c:
            r = predict(c, texts_for(i))
            assert r.status_code == 200, r.text
            return i, r.json()

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(one, range(60)))
    for i, body in results:
        want = expected.predict(texts_for(i))
        got = body["predictions"]
        assert [p["label"] for p in got] == [w["label"] for w in want]
        for p, w in zip(got, want):
            assert p["probabilities"] == pytest.approx(w["probabilities"], abs=1e-4)


def test_n_requests_from_m_clients_make_exactly_n_usage_events(server):
    name = tenant()
    key = new_key(server, name)
    n, m = 48, 8

    def one(i):
        with server.client(key) as c:
            r = predict(c, texts_for(i))
        assert r.status_code == 200, r.text
        return r.json()

    with concurrent.futures.ThreadPoolExecutor(m) as pool:
        bodies = list(pool.map(one, range(n)))
    rows = usage_rows(server, tenant=name)
    assert len(rows) == n
    assert {r.request_id for r in rows} == {b["request_id"] for b in bodies}
    assert sum(r.texts for r in rows) == sum(len(texts_for(i)) for i in range(n))
    assert sum(r.tokens for r in rows) == sum(b["usage"]["tokens"] for b in bodies)


def test_quota_of_q_requests_admits_exactly_q(server):
    name = tenant()
    key = new_key(server, name, plan="quota10")

    def one(i):
        with server.client(key) as c:
            return predict(c, [f"text {i}"])

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(one, range(30)))
    codes = [r.status_code for r in responses]
    assert codes.count(200) == 10 and codes.count(429) == 20
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["code"] == "quota_exceeded"
    assert "monthly quota of 10 requests" in refused.json()["error"]["message"]
    assert int(refused.headers["Retry-After"]) > 0
    assert len(usage_rows(server, tenant=name)) == 10


def test_retried_idempotent_request_returns_the_same_response_and_counts_once(server):
    name = tenant()
    key = new_key(server, name)
    headers = {"Idempotency-Key": "order-42"}
    with server.client(key) as c:
        first = predict(c, ["great film"], headers=headers)
        again = predict(c, ["great film"], headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    assert len(usage_rows(server, tenant=name)) == 1


def test_concurrent_duplicates_of_an_idempotent_request_count_once(server):
    name = tenant()
    key = new_key(server, name)

    def one(_):
        with server.client(key) as c:
            return predict(c, ["lovely story"], headers={"Idempotency-Key": "same"})

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(one, range(8)))
    assert {r.status_code for r in responses} == {200}
    assert len({r.json()["request_id"] for r in responses}) == 1
    assert len(usage_rows(server, tenant=name)) == 1


def test_idempotency_key_reused_for_another_request_is_refused(server):
    key = new_key(server, tenant())
    with server.client(key) as c:
        assert predict(c, ["one"], headers={"Idempotency-Key": "k"}).status_code == 200
        r = predict(c, ["two"], headers={"Idempotency-Key": "k"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "idempotency_key_reused"


# -- keys, scopes, admin ---------------------------------------------------------------------------


def test_missing_unknown_and_revoked_keys_get_401(server):
    from tunery.serve.keys import revoke_key

    key = new_key(server, tenant())
    assert httpx.post(server.url + "/v1/models/sentiment/predict", json={"texts": ["x"]}).status_code == 401
    with server.client("tny_000000000000_" + "a" * 43) as c:
        r = predict(c, ["x"])
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_key"
    store = server.store()
    revoke_key(store, key)
    store.close()
    with server.client(key) as c:
        assert predict(c, ["x"]).status_code == 401


def test_model_outside_the_keys_scope_gets_403(server):
    key = new_key(server, tenant(), models=["other-model"])
    with server.client(key) as c:
        r = predict(c, ["x"])
        listed = c.get("/v1/models").json()["models"]
    assert r.status_code == 403 and "other-model" in r.json()["error"]["message"]
    assert listed == []


def test_admin_endpoints_need_an_admin_key(server):
    user = new_key(server, tenant())
    admin = new_key(server, "ops", admin=True)
    with server.client(user) as c:
        assert c.get("/v1/keys").status_code == 403
    with server.client(admin) as c:
        created = c.post("/v1/keys", json={"tenant": tenant(), "plan": "pro", "models": ["sentiment"]})
        assert created.status_code == 201, created.text
        new = created.json()
        assert any(k["key_id"] == new["key_id"] for k in c.get("/v1/keys").json()["keys"])
    with server.client(new["key"]) as c:
        assert predict(c, ["fine"]).status_code == 200
    with server.client(admin) as c:
        assert c.delete(f"/v1/keys/{new['key_id']}").status_code == 200
    with server.client(new["key"]) as c:
        assert predict(c, ["fine"]).status_code == 401


def test_usage_endpoint_shows_a_tenant_only_its_own_usage(server):
    a, b = tenant(), tenant()
    key_a, key_b = new_key(server, a), new_key(server, b)
    with server.client(key_a) as c:
        predict(c, ["one", "two"])
        usage = c.get("/v1/usage").json()
        assert c.get("/v1/usage", params={"tenant": b}).status_code == 403
    with server.client(key_b) as c:
        predict(c, ["three"])
    assert [(r["tenant"], r["texts"]) for r in usage["rows"]] == [(a, 2)]
    assert usage["totals"]["cost"] == pytest.approx(0.001)  # 2 texts at 0.50 per 1k


# -- limits -----------------------------------------------------------------------------------------


def test_rate_limit_answers_429_with_retry_after_and_bills_nothing_refused(server):
    name = tenant()
    key = new_key(server, name, plan="slow")
    with server.client(key) as c:
        codes = [predict(c, ["x"]) for _ in range(4)]
    assert [r.status_code for r in codes] == [200, 200, 429, 429]
    assert codes[2].json()["error"]["code"] == "rate_limited" and int(codes[2].headers["Retry-After"]) >= 1
    assert len(usage_rows(server, tenant=name)) == 2


@pytest.mark.parametrize("body, status, words", [
    ({"texts": [f"t{i}" for i in range(9)]}, 413, "max_texts_per_request=8"),
    ({"texts": ["x" * 201]}, 422, "max_chars_per_text=200"),
    ({"texts": []}, 422, "texts"),
    ({"texts": "just a string"}, 422, "texts"),
    ({"texts": [1, 2]}, 422, "texts.0"),
    ({"texts": ["x"], "extra": 1}, 422, "extra"),
    ({"texts": ["x"], "pairs": ["y"]}, 422, "single texts"),
    ({}, 422, "texts"),
])
def test_bad_bodies_get_a_4xx_that_names_the_problem(server, body, status, words):
    name = tenant()
    key = new_key(server, name)
    with server.client(key) as c:
        r = c.post("/v1/models/sentiment/predict", json=body)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"]
    assert usage_rows(server, tenant=name) == []


@pytest.mark.parametrize("raw, status, code", [
    (b'{"texts": ["unterminated', 400, "invalid_json"),
    (b'{"texts": ["caf\xe9"]}', 400, "invalid_encoding"),
    (b'{"texts": ["\\ud800"]}', 422, "invalid_text"),
    (b"[1, 2, 3]", 422, "invalid_request"),
    (b"", 422, "invalid_request"),
])
def test_malformed_bodies_get_a_4xx(server, raw, status, code):
    key = new_key(server, tenant())
    with server.client(key) as c:
        r = c.post("/v1/models/sentiment/predict", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


def test_huge_body_gets_413_before_it_is_read(server):
    key = new_key(server, tenant())
    with server.client(key) as c:
        r = c.post("/v1/models/sentiment/predict", content=b'{"texts": ["' + b"x" * 200_000 + b'"]}',
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "max_body_bytes=65536" in r.json()["error"]["message"]


@pytest.mark.parametrize("path, headers, status", [
    ("/v1/models/nope/predict", {}, 404),
    ("/v1/models/sentiment/predict", {"Idempotency-Key": "white space"}, 422),
    ("/v1/models/sentiment/predict", {"Authorization": "Basic abc"}, 401),
])
def test_unknown_model_and_bad_headers_get_a_4xx(server, path, headers, status):
    key = new_key(server, tenant())
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}", **headers}) as c:
        r = c.post(path, json={"texts": ["x"]})
    assert r.status_code == status, r.text
    assert r.json()["error"]["message"]


def test_server_keeps_serving_after_bad_input(server):
    key = new_key(server, tenant())
    with server.client(key) as c:
        for raw in (b"\x00\xff", b"{", b'{"texts": null}'):
            c.post("/v1/models/sentiment/predict", content=raw, headers={"Content-Type": "application/json"})
        assert predict(c, ["still here"]).status_code == 200
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}


# -- ops ----------------------------------------------------------------------------------------------


def test_readyz_lists_the_models(server):
    assert httpx.get(server.url + "/readyz").json() == {"status": "ready", "models": ["sentiment"]}


def test_models_endpoint_describes_the_model(server, tiny_run):
    with server.client(new_key(server, tenant())) as c:
        (model,) = c.get("/v1/models").json()["models"]
    assert model["labels"] == ["negative", "positive"] and model["task"] == "classification"
    assert model["model_ref"] == str(tiny_run) and model["max_texts_per_request"] == 8


def test_metrics_expose_requests_batches_queue_and_usage(server):
    name = tenant()
    with server.client(new_key(server, name)) as c:
        predict(c, ["a", "b"])
    admin = new_key(server, tenant(), admin=True)
    text = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {admin}"}).text  # tenants: admin only
    assert re.search(r'tunery_requests_total\{endpoint="/v1/models/\{name\}/predict",model="sentiment",status="200"\} \d', text)
    assert 'tunery_request_seconds_bucket{' in text
    assert 'tunery_batch_size_count{model="sentiment"}' in text
    assert 'tunery_queue_texts{model="sentiment"}' in text
    assert f'tunery_usage_texts_total{{model="sentiment",tenant="{name}"}} 2.0' in text


def test_openapi_docs_are_served(server):
    assert httpx.get(server.url + "/docs").status_code == 200
    spec = httpx.get(server.url + "/openapi.json").json()
    assert "/v1/models/{name}/predict" in spec["paths"]


def test_pair_model_takes_pairs_and_refuses_texts_alone(pair_run, tmp_path):
    from tunery.predict import load

    server = start_server([f"nli={pair_run}"], cwd=tmp_path, config={"precision": "fp32"})
    try:
        with server.client(new_key(server, tenant())) as c:
            ok = c.post("/v1/models/nli/predict", json={"texts": ["great film", "awful plot"],
                                                        "pairs": ["and so on", "or not"]})
            alone = c.post("/v1/models/nli/predict", json={"texts": ["great film"]})
            uneven = c.post("/v1/models/nli/predict", json={"texts": ["a", "b"], "pairs": ["c"]})
            assert c.get("/v1/models").json()["models"][0]["text_pairs"] is True
    finally:
        server.stop()
    want = load(pair_run).predict(["great film", "awful plot"], ["and so on", "or not"])
    assert ok.status_code == 200, ok.text
    assert [p["label"] for p in ok.json()["predictions"]] == [w["label"] for w in want]
    assert alone.status_code == 422 and alone.json()["error"]["code"] == "pairs_required"
    assert uneven.status_code == 422 and "one pair per text" in uneven.json()["error"]["message"]


# -- the Python client --------------------------------------------------------------------------------


def test_client_predicts_one_text_or_many(server, expected):
    import tunery

    with tunery.Client(server.url, new_key(server, tenant())) as client:
        one = client.predict("great film")
        many = client.predict(["great film", "awful plot"], model="sentiment")
    assert one["label"] == expected.predict("great film")["label"]
    assert [p["label"] for p in many] == [p["label"] for p in expected.predict(["great film", "awful plot"])]


def test_client_raises_the_servers_error(server):
    import tunery

    with tunery.Client(server.url, "tny_000000000000_" + "a" * 43) as client:
        with pytest.raises(tunery.ApiError, match="invalid_key") as info:
            client.predict(["x"], model="sentiment")
    assert info.value.status == 401


def test_client_retries_after_429_and_is_billed_once_per_call(server):
    import tunery

    name = tenant()
    with tunery.Client(server.url, new_key(server, name, plan="paced"), retries=5) as client:
        results = [client.predict(["x"], model="sentiment") for _ in range(3)]  # burst 1: two must wait
    assert len(results) == 3
    assert len(usage_rows(server, tenant=name)) == 3
