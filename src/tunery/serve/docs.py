"""The API's own documentation: /docs (Swagger UI) and /redoc, with every asset served by the
server itself from files installed with it (the fastapi-offline package ships Swagger UI 5 and
ReDoc), so both pages work on a machine with no network; the bearer security scheme that gives
Swagger UI its Authorize button; and request examples built from the models actually served, so
that "Try it out" sends a body the model accepts."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.security import HTTPBearer
from fastapi_offline import FastAPIOffline

from tunery.rundir import read_meta

log = logging.getLogger(__name__)

ASSETS_URL = "/docs/assets"  # swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js, favicon.png

bearer = HTTPBearer(
    auto_error=False,  # the app answers a missing or unknown key itself, in its own error shape
    scheme_name="bearer",
    bearerFormat="tunery API key",
    description="An API key from `tunery keys create` (admin endpoints need `--admin`), sent as "
    "`Authorization: Bearer <key>`.",
)

SINGLE_TEXTS = {"texts": ["The food arrived hot and on time, great value.",
                          "Cold noodles and a rude driver; never again."]}
TEXT_PAIRS = {"texts": ["A man is playing a guitar on stage.", "A man is playing a guitar on stage."],
              "pairs": ["Someone is making music.", "The stage is empty."]}


def offline_app(**kwargs: Any) -> FastAPI:
    """A FastAPI app whose /docs and /redoc load their scripts and styles from ``ASSETS_URL``
    (this server) instead of a CDN."""
    return FastAPIOffline(static_url=ASSETS_URL,
                          swagger_ui_parameters={"validatorUrl": None},  # no call to swagger.io
                          **kwargs)


def takes_pairs(path: Path) -> bool:
    """Whether the run at ``path`` reads text pairs, from its tunery.json. A run whose metadata
    cannot be read counts as single-text here; loading it reports the problem (/readyz)."""
    try:
        meta = read_meta(Path(path))
    except (OSError, ValueError) as err:
        log.debug("no metadata for the docs examples of %s: %s", path, err)
        return False
    return isinstance(meta, dict) and bool(meta.get("text_pair_column"))


def predict_examples(pairs_by_model: dict[str, bool]) -> dict[str, dict]:
    """OpenAPI examples of a predict body, one per served model (named after it), each of the
    shape that model accepts: single texts, or texts with their pairs."""
    return {
        name: {"summary": f"{name}: " + ("text pairs" if pairs else "single texts"),
               "value": TEXT_PAIRS if pairs else SINGLE_TEXTS}
        for name, pairs in sorted(pairs_by_model.items())
    }


def run_kind(path: Path) -> str:
    """What explanations the run at ``path`` can give, from its tunery.json: "gradients" (a
    transformers run: every method), "removal" (an ONNX run: no IG) or "none" (no tokens: a TF-IDF
    baseline); "gradients" when the metadata cannot be read."""
    try:
        meta = read_meta(Path(path))
    except (OSError, ValueError) as err:
        log.debug("no metadata for the docs examples of %s: %s", path, err)
        return "gradients"
    backend = meta.get("backend") if isinstance(meta, dict) else None
    pairs = isinstance(meta, dict) and bool(meta.get("text_pair_column"))
    kind = {"onnx": "removal", "tfidf": "none"}.get(backend or "", "gradients")
    return kind + ("+pairs" if pairs else "")


def explain_examples(kinds: dict[str, str]) -> dict[str, dict]:
    """OpenAPI examples of an explain body, one per served model, in the shape it reads and with a
    method its backend runs (IG where there are gradients, else occlusion)."""
    out = {}
    for name, kind in sorted(kinds.items()):
        pairs = kind.endswith("+pairs")
        source = TEXT_PAIRS if pairs else SINGLE_TEXTS
        value: dict[str, Any] = {"texts": source["texts"][:1]}
        if pairs:
            value["pairs"] = source["pairs"][:1]
        if kind.startswith("gradients"):
            value.update(method="ig", options={"steps": 32})
        else:
            value["method"] = "occlusion"
        out[name] = {"summary": f"{name}: {value['method']}" + (" on a text pair" if pairs else ""), "value": value}
    return out


def key_examples(plans: list[str]) -> dict[str, dict]:
    """An OpenAPI example of a new key's body: a key for every served model, on a plan of this
    server's config."""
    value: dict[str, Any] = {"tenant": "acme", "note": "created from /docs"}
    if plans:
        value["plan"] = sorted(plans)[0]
    return {"tenant key": {"summary": "a key for tenant 'acme', for every served model", "value": value}}
