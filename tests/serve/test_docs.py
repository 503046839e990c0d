"""/docs and /redoc work on a machine with no network (every script and style is served by the
server itself) and the OpenAPI schema behind them is usable: bearer auth (the Authorize button),
the served models as an enum, request examples that the real server accepts. The pages are
rendered in headless Chromium against a real `tunery serve` process on 127.0.0.1."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.browser import chromium_or_skip, dump_dom, ink_share, screenshot
from tests.serve.conftest import new_key, start_server

CONFIG = {"plans": {"pro": {"price_per_1k_texts": 0.5}}}
PREDICT = "/v1/models/{name}/predict"


@pytest.fixture(scope="module")
def docs_server(tiny_run, pair_run, tmp_path_factory):
    """One server with a single-text model (sentiment) and a text-pair model (nli)."""
    srv = start_server([f"sentiment={tiny_run}", f"nli={pair_run}"], cwd=tmp_path_factory.mktemp("docs"),
                       config=CONFIG)
    yield srv
    srv.stop()
    assert "Traceback" not in srv.output(), srv.output()[-3000:]


@pytest.fixture(scope="module")
def spec(docs_server) -> dict:
    r = httpx.get(docs_server.url + "/openapi.json")
    assert r.status_code == 200, r.text
    return r.json()


def _operations(spec: dict):
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            yield path, method, op


def test_schema_declares_bearer_auth_where_a_key_is_needed(spec):
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "bearerFormat": "tunery API key",
        "description": spec["components"]["securitySchemes"]["bearer"]["description"]}
    for path, method, op in _operations(spec):
        # the key is the security scheme, never a free-form header parameter
        assert "authorization" not in {p["name"].lower() for p in op.get("parameters", [])}, (method, path)
        if path.startswith("/v1/"):
            assert op["security"] == [{"bearer": []}], (method, path)
    assert spec["paths"]["/metrics"]["get"]["security"] == [{"bearer": []}, {}]  # optional there
    for path in ("/healthz", "/readyz"):
        assert "security" not in spec["paths"][path]["get"], path


def test_served_models_are_an_enum(spec):
    (name,) = [p for p in spec["paths"][PREDICT]["post"]["parameters"] if p["name"] == "name"]
    assert name["schema"]["enum"] == ["nli", "sentiment"]


def test_every_example_is_accepted_by_the_real_server(docs_server, spec):
    admin = new_key(docs_server, "docs-ops", admin=True)
    examples = spec["paths"][PREDICT]["post"]["requestBody"]["content"]["application/json"]["examples"]
    assert set(examples) == {"nli", "sentiment"}  # one per served model, in the shape it reads
    assert "pairs" in examples["nli"]["value"] and "pairs" not in examples["sentiment"]["value"]
    with docs_server.client(admin) as c:
        for model, example in examples.items():
            r = c.post(f"/v1/models/{model}/predict", json=example["value"])
            assert r.status_code == 200, (model, r.text)
            assert len(r.json()["predictions"]) == len(example["value"]["texts"])

        key_examples = spec["paths"]["/v1/keys"]["post"]["requestBody"]["content"]["application/json"]["examples"]
        assert key_examples
        for example in key_examples.values():
            r = c.post("/v1/keys", json=example["value"])
            assert r.status_code == 201, r.text
            created = r.json()["key"]
            r = httpx.post(docs_server.url + "/v1/models/sentiment/predict", json=examples["sentiment"]["value"],
                           headers={"Authorization": f"Bearer {created}"})
            assert r.status_code == 200, r.text


ASSET_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_only_assets_the_server_serves(docs_server, page):
    r = httpx.get(docs_server.url + page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "http://" not in r.text and "https://" not in r.text and "//cdn" not in r.text, r.text
    assets = re.findall(r'(?:src|href)="([^"]+)"', r.text)
    assert any(a.endswith(".js") for a in assets), r.text
    for asset in assets:
        assert asset.startswith("/docs/assets/"), asset
        got = httpx.get(docs_server.url + asset)
        assert got.status_code == 200, asset
        kind = ASSET_TYPES[asset[asset.rindex("."):]]
        assert got.headers["content-type"].startswith(kind), (asset, got.headers["content-type"])
        assert len(got.content) > 1000, asset
    assert httpx.get(docs_server.url + "/docs/oauth2-redirect").status_code == 200


def test_docs_render_in_headless_chromium(docs_server, tmp_path):
    """The machine that runs the tests has no network: a page that needed a CDN would be blank."""
    chromium_or_skip()
    dom = dump_dom(docs_server.url + "/docs")
    assert "swagger-ui" in dom and "opblock" in dom, dom[-3000:]
    assert re.search(r'class="btn authorize[^"]*"', dom), "no Authorize button in the rendered /docs"
    for path in ("/v1/models/{name}/predict", "/v1/keys", "/v1/usage", "/healthz"):
        assert path.replace("{", "").replace("}", "") in dom.replace("{", "").replace("}", "").replace(
            "\u200b", ""), path  # Swagger UI breaks long paths with zero-width spaces
    assert dom.count('class="opblock opblock-') >= 9, dom.count('class="opblock opblock-')

    png = screenshot(docs_server.url + "/docs", tmp_path / "docs.png", width=1280, height=1400)
    from PIL import Image

    with Image.open(png) as img:
        assert img.size == (1280, 1400)
    assert ink_share(png) > 0.05  # rendered operation blocks, not an empty white page
    assert ink_share(png, box=(0, 0, 1280, 200)) > 0.05  # the top bar and title came out

    redoc = dump_dom(docs_server.url + "/redoc")
    assert "Predict" in redoc and "/v1/models/" in redoc.replace("\u200b", ""), redoc[-3000:]
