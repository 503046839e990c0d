"""The naive anchor of bench/serve.py: the model behind FastAPI the way a first attempt would serve it.

    python bench/naive_server.py RUN_DIR --port 8001 [--host 127.0.0.1] [--name NAME]

One uvicorn worker. `POST /v1/models/{name}/predict` with `{"texts": [...]}` is a plain `def`
endpoint, so FastAPI runs it in its threadpool (up to 40 threads at once), and each request calls
a transformers `pipeline("text-classification", model=RUN_DIR/model, top_k=None)` once on that
request's texts: no batching across requests, no API keys, no metering, no limits. The response
has the shape of tunery's (`model`, `model_ref`, `request_id`, `predictions` with `label`, `score`
and `probabilities`, `usage`); `usage.tokens` is not counted here and is 0.

`/readyz` answers 200 as soon as the server listens: the model is loaded (and run once) before.
"""

import argparse
import logging
import uuid
from pathlib import Path

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[str] = Field(..., min_length=1)


def build_app(run_dir: Path, name: str) -> FastAPI:
    from transformers import pipeline

    logging.getLogger("transformers").setLevel(logging.ERROR)
    classifier = pipeline("text-classification", model=str(run_dir / "model"), top_k=None)
    classifier(["warm up"])  # first call pays for lazy initialisation, as tunery's loader does

    app = FastAPI(title="naive anchor")
    model_ref = str(run_dir)

    @app.get("/readyz")
    def readyz() -> dict:
        return {"status": "ready", "models": [name]}

    @app.post("/v1/models/{model}/predict")
    def predict(model: str, body: PredictRequest) -> dict:
        out = classifier(body.texts)  # one list of {label, score} per text, best first
        predictions = [{"label": ranked[0]["label"], "score": float(ranked[0]["score"]),
                        "probabilities": {r["label"]: float(r["score"]) for r in ranked}} for ranked in out]
        return {"model": model, "model_ref": model_ref, "request_id": uuid.uuid4().hex,
                "predictions": predictions, "usage": {"texts": len(body.texts), "tokens": 0}}

    return app


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", help="a tunery run directory (its model/ is served)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--name", default=None, help="served model name (default: the run directory's name)")
    args = ap.parse_args(argv)

    import uvicorn

    run_dir = Path(args.run_dir).resolve()
    app = build_app(run_dir, args.name or run_dir.name)
    # The same uvicorn settings as `tunery serve` with one worker.
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="warning",
                timeout_graceful_shutdown=60, proxy_headers=False)


if __name__ == "__main__":
    main()
