"""The app in-process (FastAPI's TestClient), for failures that are hard to cause in a real server."""

from __future__ import annotations

import shutil
import time

from fastapi.testclient import TestClient

from tunery.serve import metering
from tunery.serve.app import create_app
from tunery.serve.keys import create_key
from tunery.store import Store


def _wait_ready(client: TestClient) -> None:
    deadline = time.monotonic() + 60
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.05)


def test_a_store_failure_answers_503_and_bills_nothing(tiny_run, monkeypatch):
    store = Store()
    key, _ = create_key(store, tenant="acme", plan="pro")
    with TestClient(create_app({"sentiment": tiny_run}, store=store)) as client:
        _wait_ready(client)

        def broken(*_args, **_kw):
            raise RuntimeError("database is gone")

        monkeypatch.setattr(metering, "record", broken)
        r = client.post("/v1/models/sentiment/predict", json={"texts": ["x"]},
                        headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "metering_unavailable"
    assert r.headers["Retry-After"] == "1"
    assert metering.usage_report(store, create_app({}, store=store).state.tunery.config) == []


def test_a_model_that_fails_to_load_is_reported_by_readyz(tiny_run, tmp_path):
    broken = tmp_path / "broken-run"
    shutil.copytree(tiny_run, broken)
    for weights in (broken / "model").glob("*.safetensors"):
        weights.write_bytes(b"not weights")
    store = Store()
    key, _ = create_key(store, tenant="acme", plan="pro")
    with TestClient(create_app({"sentiment": broken}, store=store)) as client:
        deadline = time.monotonic() + 60
        while (r := client.get("/readyz")).json()["error"]["code"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        predict = client.post("/v1/models/sentiment/predict", json={"texts": ["x"]},
                              headers={"Authorization": f"Bearer {key}"})
        alive = client.get("/healthz")
    assert r.status_code == 503 and r.json()["error"]["code"] == "load_failed"
    assert "failed to load" in r.json()["error"]["message"]
    assert predict.status_code == 503 and alive.status_code == 200


def test_predict_before_models_are_loaded_is_503_with_retry_after(tiny_run, monkeypatch):
    from tunery.serve import app as app_module

    monkeypatch.setattr(app_module, "_load_models", lambda state: None)  # never becomes ready
    store = Store()
    key, _ = create_key(store, tenant="acme", plan="pro")
    with TestClient(create_app({"sentiment": tiny_run}, store=store)) as client:
        r = client.post("/v1/models/sentiment/predict", json={"texts": ["x"]},
                        headers={"Authorization": f"Bearer {key}"})
        assert client.get("/readyz").status_code == 503
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"


def test_a_full_queue_answers_503_overloaded_and_bills_nothing(tiny_run):
    from tunery.serve.settings import ServeConfig

    store = Store()
    key, _ = create_key(store, tenant="acme", plan="pro")
    config = ServeConfig.model_validate({"batching": {"max_queue_texts": 2}})
    with TestClient(create_app({"sentiment": tiny_run}, store=store, config=config)) as client:
        _wait_ready(client)
        r = client.post("/v1/models/sentiment/predict", json={"texts": ["a", "b", "c"]},
                        headers={"Authorization": f"Bearer {key}"})
        ok = client.post("/v1/models/sentiment/predict", json={"texts": ["a", "b"]},
                         headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded"
    assert "max_queue_texts=2" in r.json()["error"]["message"] and r.headers["Retry-After"] == "1"
    assert ok.status_code == 200
    assert [row["requests"] for row in metering.usage_report(store, config)] == [1]


def test_with_several_workers_each_is_ready_before_it_accepts_requests(tiny_run):
    store = Store()
    with TestClient(create_app({"sentiment": tiny_run}, store=store, workers=2)) as client:
        first = client.get("/readyz")  # no waiting: startup itself loaded the models
    assert first.status_code == 200 and first.json()["models"] == ["sentiment"]
