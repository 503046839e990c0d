"""The naive anchor of bench/serve.py: the model behind FastAPI the way a first attempt would serve it.

    python bench/naive_server.py RUN_DIR --port 8001 [--host 127.0.0.1] [--name NAME]
    python bench/naive_server.py --smoke [--out FILE]   # seconds: serve a tiny model, send a few requests

bench/serve.py starts it and measures it; on its own it only serves (or, with --smoke, checks that it
still serves: a model of the tiny random test backbone in a temporary directory, a few requests over
HTTP on 127.0.0.1, one JSON object on stdout; the figures mean nothing).

One uvicorn worker. `POST /v1/models/{name}/predict` with `{"texts": [...]}` is a plain `def`
endpoint, so FastAPI runs it in its threadpool (up to 40 threads at once), and each request calls
a transformers `pipeline("text-classification", model=RUN_DIR/model, top_k=None)` once on that
request's texts: no batching across requests, no API keys, no metering, no limits. The response
has the shape of tunery's (`model`, `model_ref`, `request_id`, `predictions` with `label`, `score`
and `probabilities`, `usage`); `usage.tokens` is not counted here and is 0.

`/readyz` answers 200 as soon as the server listens: the model is loaded (and run once) before.
"""

import argparse
import json
import logging
import tempfile
import threading
import time
import urllib.request
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


def smoke_model(folder: Path) -> Path:
    """A run-shaped directory (RUN/model) holding an untrained 2-label classifier on the tiny test backbone."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tunery.testing import tiny_backbone

    backbone = tiny_backbone(folder / "tiny-bert")
    run_dir = folder / "smoke-run"
    model = AutoModelForSequenceClassification.from_pretrained(
        backbone, num_labels=2, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    model.save_pretrained(run_dir / "model")
    AutoTokenizer.from_pretrained(backbone).save_pretrained(run_dir / "model")
    return run_dir


def smoke(args) -> dict:
    """Serve a tiny model in this process (uvicorn in a thread), send `args.requests` requests, stop."""
    import socket

    import uvicorn

    with tempfile.TemporaryDirectory(prefix="tunery-naive-smoke-") as tmp:
        run_dir = smoke_model(Path(tmp))
        name = args.name or run_dir.name
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(build_app(run_dir, name), host="127.0.0.1", port=port,
                                               access_log=False, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            for _ in range(600):  # at most 60 s to start listening
                if server.started or not thread.is_alive():
                    break
                time.sleep(0.1)
            if not server.started:
                raise SystemExit("the naive server did not start; its log is above")
            base = f"http://127.0.0.1:{port}"
            with urllib.request.urlopen(f"{base}/readyz", timeout=30) as r:
                ready = r.status == 200
            latencies, labels = [], set()
            for i in range(args.requests):
                body = json.dumps({"texts": [f"a great film {i}"]}).encode()
                req = urllib.request.Request(f"{base}/v1/models/{name}/predict", data=body,
                                             headers={"Content-Type": "application/json"})
                t0 = time.perf_counter()
                with urllib.request.urlopen(req, timeout=30) as r:
                    answer = json.loads(r.read())
                latencies.append(1000 * (time.perf_counter() - t0))
                preds = answer.get("predictions") or []
                if len(preds) != 1 or set(preds[0].get("probabilities", {})) != {"negative", "positive"}:
                    raise SystemExit(f"unexpected answer from the naive server: {answer}")
                labels.add(preds[0]["label"])
        finally:
            server.should_exit = True
            thread.join(30)
    latencies.sort()
    return {"benchmark": "naive_server", "smoke": True, "ready": ready, "requests": args.requests,
            "ok": len(latencies), "labels_seen": sorted(labels),
            "latency_ms": {"p50": round(latencies[len(latencies) // 2], 2), "max": round(latencies[-1], 2)}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", nargs="?", help="a tunery run directory (its model/ is served)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--name", default=None, help="served model name (default: the run directory's name)")
    ap.add_argument("--smoke", action="store_true",
                    help="check that it still serves: a tiny model, a few requests, one JSON object on stdout")
    ap.add_argument("--requests", type=int, default=5, help="requests sent with --smoke (default 5)")
    ap.add_argument("--out", default=None, help="with --smoke: also write the JSON here")
    args = ap.parse_args(argv)
    if args.smoke:
        from sst2 import write_result  # bench/ is on sys.path when this file runs as a script

        if args.requests < 1:
            ap.error("--requests must be at least 1")
        started = time.time()
        write_result(smoke(args), Path(args.out) if args.out else None, started)
        return
    if args.run_dir is None:
        ap.error("give RUN_DIR (or --smoke)")

    import uvicorn

    run_dir = Path(args.run_dir).resolve()
    app = build_app(run_dir, args.name or run_dir.name)
    # The same uvicorn settings as `tunery serve` with one worker.
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="warning",
                timeout_graceful_shutdown=60, proxy_headers=False)


if __name__ == "__main__":
    main()
