"""POST /v1/models/{name}/explain: the explanation and its cost, exact billing as its own usage unit
(priced, quota'd and rate-limited apart from predictions), the caps (413/422 naming the cap), the
time limit (504, nothing billed, the worker freed), its own executor (a stuck explanation leaves
predictions answering), ONNX runs refusing gradients by name, and bad inputs -> 4xx. In-process
(FastAPI's TestClient) on the tiny BERT run; the schemathesis fuzzing is in test_fuzz.py."""

from __future__ import annotations

import math
import threading
import time
import uuid

import pytest
from fastapi.testclient import TestClient

from tunery.serve import explaining, metering
from tunery.serve.app import create_app
from tunery.serve.keys import create_key
from tunery.serve.settings import Plan, ServeConfig
from tunery.store import QuotaCounterRow, Store

pytest.importorskip("captum")

CONFIG = {
    "plans": {
        "pro": {"explain": {"rate_limit": None}},
        "priced": {"price_per_1k_texts": 1.0, "explain": {"price_per_1k": 10.0, "rate_limit": None}},
        "quota3": {"monthly_quota": 1000, "explain": {"monthly_quota": 3, "rate_limit": None}},
        "slow": {"rate_limit": None, "explain": {"rate_limit": 0.001, "burst": 2}},
    },
    "limits": {"max_texts_per_request": 16, "max_chars_per_text": 2000},
    # nice 0: the test machine runs other tests beside this one, and at the default nice 19 an explanation
    # would only get the CPU they leave (the priority itself: test_explanation_threads_..._lower_priority)
    "explain": {"max_texts_per_request": 4, "max_words_per_text": 40, "max_steps": 64, "max_samples": 300,
                "max_batch": 128, "timeout_seconds": 60, "nice": 0},
}
TEXTS = ["a great film with superb acting", "terrible plot and awful music"]


def _wait_ready(client: TestClient) -> None:
    deadline = time.monotonic() + 120
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.05)


@pytest.fixture(scope="module")
def onnx_run(tiny_run, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from tunery.compress import CompressOptions, compress_run

    out = tmp_path_factory.mktemp("explain-onnx")
    return compress_run(tiny_run, CompressOptions(to="onnx"), name="sentiment-onnx", output_dir=out,
                        store=Store(f"sqlite:///{out / 'compress.db'}"))


@pytest.fixture(scope="module")
def served(tiny_run, onnx_run, tmp_path_factory):
    """One app serving the tiny run (sentiment) and its ONNX compression (onnx), with its store."""
    store = Store(f"sqlite:///{tmp_path_factory.mktemp('explain-store') / 'serve.db'}")
    config = ServeConfig.model_validate(CONFIG)
    app = create_app({"sentiment": tiny_run, "onnx": onnx_run}, store=store, config=config)
    with TestClient(app) as client:
        _wait_ready(client)
        yield client, store, app


def _client(served, plan: str = "pro") -> tuple[TestClient, dict, str]:
    client, store, _ = served
    tenant = f"t{uuid.uuid4().hex[:10]}"
    key, _ = create_key(store, tenant=tenant, plan=plan, known_plans=list(CONFIG["plans"]))
    return client, {"Authorization": f"Bearer {key}"}, tenant


def _usage(served, tenant: str) -> list[dict]:
    client, store, app = served
    return metering.usage_report(store, app.state.tunery.config, tenant=tenant, explanations=True)


# -- the explanation ----------------------------------------------------------------------------


def test_ig_explains_each_word_with_offsets_prediction_params_delta_and_cost(served):
    client, headers, tenant = _client(served)
    r = client.post("/v1/models/sentiment/explain", headers=headers,
                    json={"texts": TEXTS, "method": "ig", "options": {"steps": 16}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "sentiment" and body["method"] == "ig" and r.headers["X-Request-ID"] == body["request_id"]
    assert len(body["explanations"]) == 2
    predicted = client.post("/v1/models/sentiment/predict", headers=headers, json={"texts": TEXTS}).json()
    for text, e, p in zip(TEXTS, body["explanations"], predicted["predictions"]):
        assert e["text"] == text and e["method"] == "ig" and not e["truncated"]
        assert [w["text"] for w in e["words"]] == text.split()
        assert all(text[w["start"]:w["end"]] == w["text"] and w["segment"] == 0 for w in e["words"])
        assert all(isinstance(w["score"], float) for w in e["words"])
        assert e["prediction"]["label"] == p["label"] == e["target"]
        assert math.isclose(e["score"], p["probabilities"][p["label"]], abs_tol=1e-4)
        assert e["params"] == {"steps": 16, "internal_batch_size": 50}
        assert isinstance(e["delta"], float) and isinstance(e["baseline_score"], float)
        assert e["evaluations"] == 16 + 1 + 1  # the steps, the baseline, the prediction
        assert e["faithfulness"] is None
    assert body["usage"] == {"explanations": 2, "evaluations": 36}
    (row,) = _usage(served, tenant)
    assert (row["explain_requests"], row["explanations"], row["evaluations"]) == (1, 2, 36)
    assert (row["requests"], row["texts"]) == (1, 2)  # the prediction, counted apart


def test_removal_methods_target_seed_and_faithfulness(served):
    client, headers, tenant = _client(served)
    body = {"texts": TEXTS[:1], "method": "lime", "target": "negative", "seed": 7, "options": {"samples": 40},
            "faithfulness": True}
    first = client.post("/v1/models/sentiment/explain", headers=headers, json=body).json()
    again = client.post("/v1/models/sentiment/explain", headers=headers, json=body).json()
    (e,) = first["explanations"]
    assert e["target"] == "negative" and e["params"] == {"samples": 40, "batch": 64, "kernel_width": 0.25, "seed": 7}
    assert [w["score"] for w in e["words"]] == [w["score"] for w in again["explanations"][0]["words"]]
    faith = e["faithfulness"]
    assert {"comprehensiveness", "sufficiency", "loo_spearman", "random_comprehensiveness", "evaluations"} <= set(faith)
    assert first["usage"]["evaluations"] == e["evaluations"] + faith["evaluations"]
    occlusion = client.post("/v1/models/sentiment/explain", headers=headers,
                            json={"texts": TEXTS[:1], "method": "occlusion", "target": 1}).json()
    n = len(TEXTS[0].split())
    assert occlusion["explanations"][0]["evaluations"] == 1 + n + 1 and occlusion["explanations"][0]["delta"] is None
    assert sum(r["evaluations"] for r in _usage(served, tenant)) == 2 * first["usage"]["evaluations"] + n + 2


def test_pairs_are_explained_with_their_segment(pair_run, tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'pairs.db'}")
    key, _ = create_key(store, tenant="acme", plan="enterprise")
    config = ServeConfig.model_validate({"explain": {"nice": 0}})  # see CONFIG
    with TestClient(create_app({"nli": pair_run}, store=store, config=config)) as client:
        _wait_ready(client)
        headers = {"Authorization": f"Bearer {key}"}
        r = client.post("/v1/models/nli/explain", headers=headers,
                        json={"texts": ["good film"], "pairs": ["or not"], "method": "occlusion"})
        alone = client.post("/v1/models/nli/explain", headers=headers, json={"texts": ["x"], "method": "occlusion"})
    assert r.status_code == 200, r.text
    words = r.json()["explanations"][0]["words"]
    assert [(w["text"], w["segment"]) for w in words] == [("good", 0), ("film", 0), ("or", 1), ("not", 1)]
    assert r.json()["explanations"][0]["pair"] == "or not"
    assert alone.status_code == 422 and alone.json()["error"]["code"] == "pairs_required"


# -- billing, quota, rate limit ---------------------------------------------------------------------


def test_explanations_are_billed_exactly_once_and_priced_apart_from_predictions(served):
    client, headers, tenant = _client(served, "priced")
    assert client.post("/v1/models/sentiment/predict", headers=headers, json={"texts": TEXTS}).status_code == 200
    body = {"texts": TEXTS, "method": "occlusion"}
    first = client.post("/v1/models/sentiment/explain", headers={**headers, "Idempotency-Key": "e-1"}, json=body)
    retry = client.post("/v1/models/sentiment/explain", headers={**headers, "Idempotency-Key": "e-1"}, json=body)
    assert first.status_code == retry.status_code == 200
    assert retry.headers["Idempotent-Replayed"] == "true" and retry.json() == first.json()
    other = client.post("/v1/models/sentiment/explain", headers={**headers, "Idempotency-Key": "e-1"},
                        json={**body, "method": "shap", "options": {"samples": 20}})
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"
    assert client.post("/v1/models/sentiment/explain", headers=headers,
                       json={"texts": TEXTS[:1], "method": "occlusion"}).status_code == 200
    usage = client.get("/v1/usage", headers=headers).json()
    (row,) = usage["rows"]
    assert (row["requests"], row["texts"], row["explain_requests"], row["explanations"]) == (1, 2, 2, 3)
    # 2 texts at 1.00 per 1k, 3 explanations at 10.00 per 1k
    assert row["cost"] == pytest.approx(2 * 0.001 + 3 * 0.01) and usage["totals"]["explanations"] == 3
    assert usage["totals"]["evaluations"] == row["evaluations"] > 0


def test_the_explanation_quota_admits_exactly_q_and_leaves_predictions_alone(served):
    client, headers, tenant = _client(served, "quota3")
    codes = [client.post("/v1/models/sentiment/explain", headers=headers,
                         json={"texts": TEXTS[:n], "method": "occlusion"}) for n in (2, 2, 1, 1)]
    assert [r.status_code for r in codes] == [200, 429, 200, 429]
    refused = codes[1].json()["error"]
    assert refused["code"] == "quota_exceeded" and "3 explanations" in refused["message"]
    assert int(codes[1].headers["Retry-After"]) >= 1
    assert client.post("/v1/models/sentiment/predict", headers=headers, json={"texts": TEXTS}).status_code == 200
    _, store, _ = served
    with store.read() as s:
        counter = s.query(QuotaCounterRow).filter_by(tenant=tenant).one()
        assert (counter.explanations, counter.requests, counter.texts) == (3, 1, 2)
    assert sum(r["explanations"] for r in _usage(served, tenant)) == 3


def test_the_explanation_rate_limit_is_its_own(served):
    client, headers, tenant = _client(served, "slow")
    body = {"texts": TEXTS[:1], "method": "occlusion"}
    codes = [client.post("/v1/models/sentiment/explain", headers=headers, json=body) for _ in range(3)]
    assert [r.status_code for r in codes] == [200, 200, 429]
    error = codes[2].json()["error"]
    assert error["code"] == "rate_limited" and "explanation rate limit" in error["message"]
    assert int(codes[2].headers["Retry-After"]) >= 1
    assert all(client.post("/v1/models/sentiment/predict", headers=headers, json={"texts": TEXTS}).status_code == 200
               for _ in range(3))  # predictions spend their own bucket (unlimited on this plan)
    assert sum(r["explain_requests"] for r in _usage(served, tenant)) == 2


# -- caps and bad inputs --------------------------------------------------------------------------

LONG = " ".join(f"w{i}" for i in range(41))


@pytest.mark.parametrize("body, status, code, words", [
    ({"texts": ["a"] * 5, "method": "occlusion"}, 413, "too_many_texts", "explain.max_texts_per_request=4"),
    ({"texts": ["ok", LONG], "method": "occlusion"}, 413, "too_many_words", "texts[1] has 41 words"),
    ({"texts": ["x"], "method": "ig", "options": {"steps": 65}}, 422, "option_too_large", "explain.max_steps=64"),
    ({"texts": ["x"], "method": "shap", "options": {"samples": 301}}, 422, "option_too_large",
     "explain.max_samples=300"),
    ({"texts": ["x"], "method": "lime", "options": {"batch": 129}}, 422, "option_too_large", "explain.max_batch=128"),
    ({"texts": ["x"], "method": "ig", "options": {"samples": 5}}, 422, "invalid_option", "not one of ig's options"),
    ({"texts": ["x"], "method": "ig", "options": {"steps": 0}}, 422, "invalid_option", "must be above 0"),
    ({"texts": ["x"], "method": "ig", "options": {"steps": 2.5}}, 422, "invalid_option", "whole number"),
    ({"texts": ["x"], "method": "ig", "options": {"steps": True}}, 422, "invalid_request", "options.steps"),
    ({"texts": ["x"], "method": "ig", "options": {"steps": 1e300}}, 422, "invalid_option", "finite number"),
    ({"texts": ["x"], "method": "gradcam"}, 422, "invalid_request", "method"),
    ({"texts": ["x"]}, 422, "invalid_request", "method: Field required"),
    ({"texts": [], "method": "ig"}, 422, "invalid_request", "texts"),
    ({"texts": ["x"], "method": "ig", "target": "maybe"}, 422, "invalid_target", "'negative', 'positive'"),
    ({"texts": ["x"], "method": "ig", "target": 5}, 422, "invalid_target", "labels 0..1"),
    ({"texts": ["x"], "method": "ig", "target": 1.5}, 422, "invalid_request", "target"),
    ({"texts": ["x"], "method": "ig", "seed": -1}, 422, "invalid_request", "seed"),
    ({"texts": ["x"], "pairs": ["y"], "method": "ig"}, 422, "pairs_not_supported", "single texts"),
    ({"texts": ["x" * 2001], "method": "ig"}, 422, "text_too_long", "max_chars_per_text=2000"),
    ({"texts": ["x"], "method": "ig", "extra": 1}, 422, "invalid_request", "extra"),
])
def test_caps_and_bad_inputs_get_a_4xx_that_names_the_problem_and_bill_nothing(served, body, status, code, words):
    client, headers, tenant = _client(served)
    r = client.post("/v1/models/sentiment/explain", headers=headers, json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code and words in r.json()["error"]["message"], r.text
    assert _usage(served, tenant) == []


@pytest.mark.parametrize("raw", [b'{"texts": ["x"], "method": "ig", "options": {"steps": NaN}}',
                                 b'{"texts": ["x"], "method": "ig", "target": "\\ud800"}',
                                 b'{"texts": ["x"], "method": "ig", "options": {"\\ud800": 1}}',
                                 b'{"texts": ["x"], "method": "ig"'])
def test_malformed_explain_bodies_get_a_4xx(served, raw):
    client, headers, tenant = _client(served)
    r = client.post("/v1/models/sentiment/explain", headers={**headers, "Content-Type": "application/json"},
                    content=raw)
    assert 400 <= r.status_code < 500 and r.json()["error"]["message"], r.text


def test_keys_and_models_are_checked_as_for_predictions(served):
    client, headers, _ = _client(served)
    body = {"texts": ["x"], "method": "occlusion"}
    assert client.post("/v1/models/sentiment/explain", json=body).status_code == 401
    assert client.post("/v1/models/nope/explain", headers=headers, json=body).json()["error"]["code"] == "unknown_model"


def test_a_default_above_a_lowered_cap_is_lowered_to_it():
    caps = ServeConfig.model_validate({"explain": {"max_steps": 20, "max_samples": 30}}).explain
    assert explaining.check_options("ig", {}, caps)["steps"] == 20
    assert explaining.check_options("shap", {"batch": 8}, caps) == {"samples": 30, "batch": 8}


# -- backends -------------------------------------------------------------------------------------


def test_an_onnx_run_refuses_gradients_naming_the_methods_that_work(served):
    client, headers, tenant = _client(served)
    r = client.post("/v1/models/onnx/explain", headers=headers, json={"texts": TEXTS[:1], "method": "ig"})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "method_not_supported" and error["methods"] == ["shap", "lime", "occlusion"]
    assert "needs gradients" in error["message"] and "shap, lime, occlusion" in error["message"]
    ok = client.post("/v1/models/onnx/explain", headers=headers, json={"texts": TEXTS[:1], "method": "occlusion"})
    ref = client.post("/v1/models/sentiment/explain", headers=headers, json={"texts": TEXTS[:1], "method": "occlusion"})
    assert ok.status_code == 200
    assert [w["score"] for w in ok.json()["explanations"][0]["words"]] == pytest.approx(
        [w["score"] for w in ref.json()["explanations"][0]["words"]], abs=1e-4)
    models = {m["name"]: m["explain"] for m in client.get("/v1/models", headers=headers).json()["models"]}
    assert models["onnx"]["methods"] == ["shap", "lime", "occlusion"]
    assert models["sentiment"]["methods"] == ["ig", "shap", "lime", "occlusion"]
    assert models["sentiment"]["max_steps"] == 64
    assert sum(r["explanations"] for r in _usage(served, tenant)) == 2


def test_ig_beside_predictions_leaves_them_unchanged(served):
    client, headers, _ = _client(served)
    _, _, app = served
    served_model = app.state.tunery.models["sentiment"].predictor.model
    expected = client.post("/v1/models/sentiment/predict", headers=headers, json={"texts": TEXTS}).json()
    results, stop = [], threading.Event()

    def predict_meanwhile():
        while not stop.is_set():
            results.append(client.post("/v1/models/sentiment/predict", headers=headers, json={"texts": TEXTS}).json())

    thread = threading.Thread(target=predict_meanwhile)
    thread.start()
    try:
        for _ in range(3):
            r = client.post("/v1/models/sentiment/explain", headers=headers,
                            json={"texts": TEXTS, "method": "ig", "options": {"steps": 64, "internal_batch_size": 4}})
            assert r.status_code == 200
    finally:
        stop.set()
        thread.join()
    def probabilities(response):
        return [p["probabilities"][name] for p in response["predictions"] for name in sorted(p["probabilities"])]

    assert results and all(probabilities(r) == pytest.approx(probabilities(expected), abs=1e-5) for r in results)
    assert not served_model.get_input_embeddings()._forward_hooks  # IG puts no hooks on the served model
    assert not any(p.requires_grad for p in served_model.parameters())  # nor gradients on its weights


# -- executor and time limit ----------------------------------------------------------------------


@pytest.fixture
def tight(tiny_run, tmp_path, request):
    """An app with one explainer thread, no waiting room and the time limit of the test's marker
    (``@pytest.mark.parametrize("tight", [seconds], indirect=True)``)."""
    store = Store(f"sqlite:///{tmp_path / 'tight.db'}")
    key, _ = create_key(store, tenant="acme", plan="enterprise")
    config = ServeConfig.model_validate({"explain": {"workers": 1, "max_queued_requests": 0, "nice": 0,
                                                     "timeout_seconds": request.param}})
    app = create_app({"sentiment": tiny_run}, store=store, config=config)
    with TestClient(app) as client:
        _wait_ready(client)
        yield client, {"Authorization": f"Bearer {key}"}, app, store


@pytest.mark.parametrize("tight", [60], indirect=True)
def test_a_stuck_explanation_leaves_predictions_answering_and_fills_the_queue(tight, monkeypatch):
    client, headers, app, store = tight
    release, entered = threading.Event(), threading.Event()
    original = explaining.Guarded.encoded_scores

    def stuck(self, data):
        entered.set()
        release.wait(30)
        return original(self, data)

    monkeypatch.setattr(explaining.Guarded, "encoded_scores", stuck)
    first: list = []
    thread = threading.Thread(target=lambda: first.append(client.post(
        "/v1/models/sentiment/explain", headers=headers, json={"texts": ["slow one"], "method": "occlusion"})))
    thread.start()
    try:
        assert entered.wait(30)
        started = time.monotonic()
        r = client.post("/v1/models/sentiment/predict", headers=headers, json={"texts": TEXTS})
        assert r.status_code == 200 and time.monotonic() - started < 5
        busy = client.post("/v1/models/sentiment/explain", headers=headers,
                           json={"texts": ["x"], "method": "occlusion"})
        assert busy.status_code == 503 and busy.json()["error"]["code"] == "overloaded"
        assert "explain.max_queued_requests=0" in busy.json()["error"]["message"] and busy.headers["Retry-After"]
    finally:
        release.set()
        thread.join(60)
    assert first[0].status_code == 200, first[0].text
    rows = metering.usage_report(store, ServeConfig(), explanations=True)
    assert [(r["requests"], r["explain_requests"]) for r in rows] == [(1, 1)]


@pytest.mark.parametrize("tight", [1], indirect=True)
def test_the_time_limit_answers_504_bills_nothing_and_frees_the_worker(tight, monkeypatch):
    client, headers, app, store = tight
    calls = []
    original = explaining.Guarded.encoded_scores

    def slow(self, data):
        calls.append(time.monotonic())
        time.sleep(0.2)
        return original(self, data)

    monkeypatch.setattr(explaining.Guarded, "encoded_scores", slow)
    started = time.monotonic()
    r = client.post("/v1/models/sentiment/explain", headers=headers,
                    json={"texts": [LONG[:60]], "method": "occlusion", "options": {"batch": 1}})
    assert r.status_code == 504, r.text
    assert r.json()["error"]["code"] == "explain_timeout" and time.monotonic() - started < 3
    assert "explain.timeout_seconds=1" in r.json()["error"]["message"] and "nothing was billed" in r.json()["error"]["message"]
    explainer = app.state.tunery.explainer
    deadline = time.monotonic() + 5
    while explainer.in_flight:
        assert time.monotonic() < deadline, "the stopped explanation still holds its worker"
        time.sleep(0.02)
    n = len(calls)
    time.sleep(0.5)
    assert len(calls) == n and n < 10  # it stopped at its next model call, well before its ~20
    monkeypatch.setattr(explaining.Guarded, "encoded_scores", original)
    assert client.post("/v1/models/sentiment/explain", headers=headers,
                       json={"texts": ["x"], "method": "occlusion"}).status_code == 200
    assert [r["explain_requests"] for r in metering.usage_report(store, ServeConfig(), explanations=True)] == [1]


# -- metering and settings without a server -------------------------------------------------------


def _event(i: int, plan: Plan, *, explanations: int = 0, texts: int = 0):
    from datetime import datetime, timezone

    return metering.UsageEvent(tenant="acme", key_id="k1", model="m", model_ref="m@1", texts=texts, tokens=5 * texts,
                               latency_ms=1.0, request_id=f"r{i}", at=datetime(2026, 11, 3, tzinfo=timezone.utc),
                               plan=plan, explanations=explanations, evaluations=10 * explanations)


def test_explanation_quota_counts_explanations_only():
    store = Store()
    plan = Plan.model_validate({"monthly_quota": 2, "quota_unit": "requests", "explain": {"monthly_quota": 5}})
    outcomes = metering.record(store, [_event(0, plan, explanations=3), _event(1, plan, texts=4),
                                       _event(2, plan, explanations=3), _event(3, plan, explanations=2),
                                       _event(4, plan, texts=1), _event(5, plan, texts=1)])
    assert [o.status for o in outcomes] == ["billed", "billed", "over_quota", "billed", "billed", "over_quota"]
    create_key(store, tenant="acme", plan="pro")
    (row,) = metering.usage_report(store, ServeConfig(), explanations=True)
    assert (row["requests"], row["texts"], row["explain_requests"], row["explanations"], row["evaluations"]) == \
        (2, 5, 2, 5, 50)
    assert row["cost"] == pytest.approx(5 * 0.0005 + 5 * 0.005)  # pro: 0.50 per 1k texts, 5.00 per 1k explanations
    (plain,) = metering.usage_report(store, ServeConfig())  # the shape `tunery usage report` prints
    assert "explanations" not in plain and plain["cost"] == row["cost"] and plain["requests"] == 2


def test_plans_configure_explanations_and_refuse_unknown_keys(tmp_path):
    from tunery.errors import ConfigError
    from tunery.serve.settings import load_serve_config

    path = tmp_path / "serve.yaml"
    path.write_text("plans:\n  p: {explain: {price_per_1k: 2, monthly_quota: 9, rate_limit: 3}}\n"
                    "explain: {max_steps: 10, timeout_seconds: 5}\n")
    config = load_serve_config(path)
    assert config.plans["p"].explain.cost(1000) == 2 and config.plans["p"].explain.bucket_size == 3
    assert (config.explain.max_steps, config.explain.timeout_seconds, config.explain.workers) == (10, 5, 1)
    assert Plan().explain.rate_limit == 1.0  # a plan that says nothing of explanations: 1 request/s
    path.write_text("plans:\n  p: {explain: {price_per_1000: 2}}\n")
    with pytest.raises(ConfigError, match="price_per_1000"):
        load_serve_config(path)


def test_the_request_methods_are_the_cores():
    from typing import get_args

    from tunery.explain.methods import METHODS
    from tunery.serve.app import ExplainRequest

    assert get_args(ExplainRequest.model_fields["method"].annotation) == METHODS


def test_explanations_tokenize_with_copies_of_their_own(served):
    """A fast tokenizer called from two threads at once fails ("Already borrowed"): the predictions'
    tokenizer is never the one an explanation uses."""
    _, _, app = served
    predictor = app.state.tunery.models["sentiment"].predictor
    guarded = explaining.Guarded(predictor, explaining.Budget(10))
    assert guarded.tokenizer is not predictor.tokenizer and guarded.tokenizer is explaining.own_tokenizer(predictor)
    other: list = []
    thread = threading.Thread(target=lambda: other.append(explaining.own_tokenizer(predictor)))
    thread.start()
    thread.join()
    assert other[0] is not guarded.tokenizer
    assert guarded.tokenizer("a b").input_ids == predictor.tokenizer("a b").input_ids


def test_methods_for_each_backend():
    from types import SimpleNamespace

    assert explaining.methods_for(SimpleNamespace(supports_gradients=True)) == ["ig", "shap", "lime", "occlusion"]
    assert explaining.methods_for(SimpleNamespace(supports_gradients=False)) == ["shap", "lime", "occlusion"]
    assert explaining.methods_for(SimpleNamespace(explainable=False, supports_gradients=False)) == []


def test_openapi_documents_the_endpoint_and_metrics_count_explanations(served):
    client, headers, tenant = _client(served)
    spec = client.get("/openapi.json").json()
    op = spec["paths"]["/v1/models/{name}/explain"]["post"]
    body = op["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/ExplainRequest"}
    assert set(body["examples"]) == {"onnx", "sentiment"}
    assert body["examples"]["onnx"]["value"]["method"] == "occlusion" and body["examples"]["sentiment"]["value"]["method"] == "ig"
    for example in body["examples"].values():  # each example works on its model as it is
        name = "onnx" if example["value"]["method"] == "occlusion" else "sentiment"
        assert client.post(f"/v1/models/{name}/explain", headers=headers, json=example["value"]).status_code == 200
    assert op["responses"]["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ExplainResponse"}
    assert {"413", "422", "429", "503", "504"} <= set(op["responses"])
    assert spec["components"]["schemas"]["ExplainRequest"]["properties"]["method"]["enum"] == ["ig", "shap", "lime", "occlusion"]
    _, store, _ = served
    admin, _ = create_key(store, tenant=f"ops{uuid.uuid4().hex[:6]}", plan="pro", admin=True)
    text = client.get("/metrics", headers={"Authorization": f"Bearer {admin}"}).text
    assert f'tunery_usage_explanations_total{{model="onnx",tenant="{tenant}"}} 1.0' in text
    assert "tunery_explain_requests 0.0" in text
    assert "tunery_usage_explanations" not in client.get("/metrics").text  # tenants: admin only


def _nice_of_threads() -> dict[int, int]:
    """Each thread of this process: its nice value (field 19 of /proc/self/task/TID/stat)."""
    import os

    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                out[int(tid)] = int(f.read().rsplit(")", 1)[1].split()[16])
        except OSError:  # the thread ended meanwhile
            pass
    return out


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_explanation_threads_and_the_torch_threads_they_start_run_at_a_lower_priority():
    import os

    import torch

    before = _nice_of_threads()
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    explainer = explaining.Explainer(1, 4, nice=19)
    try:
        def work():
            a = torch.randn(512, 512)
            for _ in range(20):  # large enough that torch runs it on its OpenMP threads
                a = torch.tanh(a @ a)
            return threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

        with torch.inference_mode():
            tid, nice = explainer.executor.submit(work).result()
        after = _nice_of_threads()
    finally:
        explainer.shutdown()
    assert nice == min(19, own + 19) and after[tid] == nice
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own  # the server's own threads keep theirs
    started = {t: n for t, n in after.items() if t not in before and t != tid}
    if torch.get_num_threads() > 1:  # the OpenMP team the explanation thread started inherits its priority
        assert started and set(started.values()) == {nice}, started
    assert explaining.lower_priority(0) is None
