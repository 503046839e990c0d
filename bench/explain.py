"""Explanation benchmark: every method's faithfulness and cost on one run's model, in one process,
and the served `/explain` beside `/predict`.

    python bench/explain.py --run RUN                 # a full-SST-2 MiniLM run (bench/sst2.py --full makes one)
    python bench/explain.py --run RUN --n 200 --threads 2 --served
    python bench/explain.py --smoke                   # seconds: a tiny run on generated rows (figures mean nothing)

Offline, on --n sentences sampled (seeded) from --data (default ../shared/data/sst2/dev.tsv), each
method as `tunery.load(RUN).explain` runs it, explaining the predicted class:
  ig          Integrated Gradients, 50 steps;   shap   Kernel SHAP (Captum), 200 samples;
  lime        LIME (Captum), 200 samples;       occlusion   leave-one-out;
  shap-partition  the shap package's Partition explainer over the same words (a text masker that
              deletes words, max_evals 200): measured beside Captum's Kernel SHAP to choose tunery's
              SHAP by faithfulness per model evaluation (issue 13); not a tunery method.
Per method: ERASER comprehensiveness and sufficiency (AOPC over 1/5/10/20/50 % of the words), the
Spearman correlation with leave-one-out, each beside the same figure for random rankings; ms and
model evaluations per explanation (faithfulness's own evaluations not counted).
Targets: IG (50 steps) <= 0.5 s per sentence on 2 cores; every method's comprehensiveness >= 2x random.

--served: `tunery serve RUN` in a subprocess; /explain (IG) p50/p99 at concurrency 4, and /predict
p99 idle and under that explain load. Target: /predict p99 under load <= 1.5x idle.

Prints one JSON object on stdout (logs on stderr) and writes it to bench/results/explain-<time>.json
unless --out is given.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from sst2 import eprint, loadavg, read_tsv, smoke_backbone, start_result, write_result, write_smoke_data  # noqa: E402

REPO = BENCH_DIR.parent
DEV = (REPO.parent / "shared" / "data" / "sst2" / "dev.tsv").resolve()
METHODS = ("ig", "shap", "lime", "occlusion", "shap-partition")


MASK = "\u2047"  # one punctuation character: one word to the splitter, removed before the model reads the text


class WordSplitter:
    """tunery's words as a tokenizer the shap package's Text masker takes (input_ids and offsets)."""

    def __call__(self, s, return_offsets_mapping=True):
        from tunery.explain.words import split_words

        words = split_words(s)
        out = {"input_ids": [w.text for w in words]}
        if return_offsets_mapping:
            out["offset_mapping"] = [(w.start, w.end) for w in words]
        return out


def shap_partition(predictor, text: str, *, max_evals: int = 200, seed: int = 0) -> dict:
    """The shap package's Partition explainer over tunery's words (masked words deleted), its values
    measured with tunery's own faithfulness functions on the same words: an Explanation-like dict."""
    import numpy as np
    import shap

    from tunery.explain.faithfulness import faithfulness
    from tunery.explain.methods import occlusion
    from tunery.explain.target import WordFunction, choose_target, pick
    from tunery.explain.words import tokenize_words
    from tunery.inference import encode

    started = time.perf_counter()
    tokens = tokenize_words(predictor.tokenizer, text, max_length=predictor.meta["max_length"])
    scores = predictor.encoded_scores(encode(predictor.tokenizer, [text], None, [None],
                                             max_length=predictor.meta["max_length"]))
    target = choose_target(predictor, scores[0], None)
    calls = [0]

    def model(strings):  # masked words come as MASK: deleted, as tunery's methods delete them
        strings = [" ".join(str(s).replace(MASK, " ").split()) for s in strings]
        calls[0] += len(strings)
        data = encode(predictor.tokenizer, strings, None, [None] * len(strings),
                      max_length=predictor.meta["max_length"])
        return pick(predictor.encoded_scores(data), target)

    masker = shap.maskers.Text(WordSplitter(), mask_token=MASK, collapse_mask_token=True)
    explainer = shap.explainers.Partition(model, masker, seed=seed)
    values = np.asarray(explainer([text], max_evals=max_evals, silent=True).values[0], dtype=float)
    seconds = time.perf_counter() - started
    n = len(tokens)
    if len(values) != n:  # a word past max_length: shap saw it, the model did not
        values = values[:n]
    f = WordFunction(predictor, tokens, target)
    full = float(pick(scores, target)[0])
    faith = faithfulness(f, full, values, occlusion(f, n)[0], seed=seed) if n else None
    return {"seconds": seconds, "evaluations": calls[0] + 1, "faithfulness": faith}


def offline(predictor, texts: list[str], methods: list[str], seed: int) -> dict:
    """Per method: mean faithfulness figures beside random's, ms and evaluations per explanation."""
    import numpy as np

    from tunery.explain.evaluate import FIGURES, evaluate_methods

    tunery_methods = [m for m in methods if m != "shap-partition"]
    t0 = time.perf_counter()
    result = evaluate_methods(predictor, texts, methods=tunery_methods, seed=seed)["methods"]
    eprint(f"[explain] tunery methods: {time.perf_counter() - t0:.0f} s")
    if "shap-partition" in methods:
        rows = [shap_partition(predictor, t, seed=seed) for t in texts]
        faith = [r["faithfulness"] for r in rows if r["faithfulness"]]
        entry = {"explained": len(faith), "ms_per_explanation": 1000 * float(np.mean([r["seconds"] for r in rows])),
                 "evaluations_per_explanation": float(np.mean([r["evaluations"] for r in rows])),
                 "params": {"max_evals": 200, "masker": "shap.maskers.Text over tunery's words, deleted"}}
        for name in FIGURES:
            for key in (name, f"random_{name}"):
                values = [r[key] for r in faith if r.get(key) is not None]
                entry[key] = float(np.mean(values)) if values else None
        entry["comprehensiveness_vs_random"] = (entry["comprehensiveness"] / entry["random_comprehensiveness"]
                                                if entry["random_comprehensiveness"] else None)
        result["shap-partition"] = entry
    for entry in result.values():
        evals = entry["evaluations_per_explanation"]
        entry["comprehensiveness_per_100_evaluations"] = (100 * entry["comprehensiveness"] / evals
                                                          if entry["comprehensiveness"] is not None and evals else None)
    return result


def targets(methods: dict) -> dict:
    ig = methods.get("ig")
    return {
        "ig_ms_per_sentence": ig["ms_per_explanation"] if ig else None,
        "ig_within_500ms": bool(ig and ig["ms_per_explanation"] <= 500),
        "comprehensiveness_2x_random": {m: bool(e["comprehensiveness_vs_random"] is not None
                                                and e["comprehensiveness_vs_random"] >= 2)
                                        for m, e in methods.items()},
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="the run to explain (path, name or registry name)")
    ap.add_argument("--data", default=str(DEV), help=f"TSV/CSV with a sentence column (default {DEV})")
    ap.add_argument("--n", type=int, default=200, help="sentences sampled from --data (default 200)")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated (default {','.join(METHODS)})")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                    help="the model's precision, as `tunery.load` takes it (default auto: bf16 on CPUs with "
                         "AVX512-BF16/AMX, else fp32)")
    ap.add_argument("--served", action="store_true", help="also measure the served /explain and /predict")
    ap.add_argument("--explain-nice", type=int, default=None,
                    help="--served: the serve config's explain.nice (default: its default, 19)")
    ap.add_argument("--seconds", type=float, default=30, help="--served: seconds per measured load (default 30)")
    ap.add_argument("--out", default=None, help="JSON file (default bench/results/explain-<time>.json)")
    ap.add_argument("--smoke", action="store_true", help="a tiny run trained on generated rows; figures mean nothing")
    args = ap.parse_args(argv)
    if not args.smoke and not args.run:
        ap.error("give --run RUN (a full-SST-2 MiniLM run), or --smoke")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        ap.error(f"--methods: {', '.join(unknown)} not among {', '.join(METHODS)}")
    if "shap-partition" in methods and importlib.util.find_spec("shap") is None:
        ap.error("--methods shap-partition needs the shap package: pip install shap (or leave it out of --methods)")

    import numpy as np
    import pandas as pd
    import torch

    import tunery

    torch.set_num_threads(args.threads)
    started = time.time()
    out, result = start_result("explain", "explain", args, argv)
    with tempfile.TemporaryDirectory(prefix="tunery-explain-") as tmp_s:
        tmp = Path(tmp_s)
        os.environ.setdefault("TUNERY_HOME", str(tmp / "home"))
        if args.smoke:
            run, data = _smoke_run(tmp)
            args.n = min(args.n, 6)
        else:
            run, data = tunery.load(args.run).run_dir, Path(args.data)
        df = read_tsv(data) if data.suffix == ".tsv" else pd.read_csv(data)
        texts = df["sentence"].astype(str).tolist()
        if len(texts) > args.n:
            texts = [texts[i] for i in np.sort(np.random.default_rng(args.seed).choice(len(texts), args.n, False))]
        predictor = tunery.load(run, threads=args.threads, precision=args.precision)
        result.update({"run": str(run), "data": str(data), "texts": len(texts), "threads": args.threads,
                       "precision": predictor.precision,
                       "words_per_text": float(np.mean([len(t.split()) for t in texts])),
                       "loadavg_before": loadavg()})
        result["methods"] = offline(predictor, texts, methods, args.seed)
        result["targets"] = targets(result["methods"])
        if args.served:
            result["served"] = served(run, texts, tmp, seconds=args.seconds, smoke=args.smoke,
                                      nice=args.explain_nice)
        result["loadavg_after"] = loadavg()
    return write_result(result, None if args.smoke and not args.out else out, started)


def served(run: Path, texts: list[str], tmp: Path, *, seconds: float, smoke: bool, nice: int | None = None) -> dict:
    """`tunery serve RUN` (one worker, default serve settings, the enterprise plan: no rate limit) loaded
    by bench/serve.py's closed-loop client, each load from a process of its own:
      1. /predict alone, concurrency 1 (one text per request): the idle p50/p99;
      2. /explain (IG, 50 steps) alone, concurrency 4: p50/p99 and explanations per second;
      3. both at once: the /explain load starts first and outlasts the /predict load.
    Target: /predict p99 under the explain load <= 1.5x its idle p99."""
    import concurrent.futures
    import json

    from serve import PLAN, TENANT, Server, run_worker

    from tunery.serve.keys import create_key
    from tunery.serve.settings import load_serve_config
    from tunery.store import Store

    # A throwaway store: the key and the usage go to a fresh SQLite file, never to a configured database.
    os.environ["TUNERY_HOME"] = str(tmp / "serve-home")
    for var in ("TUNERY_DB_URL", "TUNERY_SERVE_CONFIG"):
        os.environ.pop(var, None)
    serve_config = tmp / "serve.yaml"
    # the defaults (what a user gets), but for explain.nice where --explain-nice sets it (JSON is YAML)
    serve_config.write_text(json.dumps({"explain": {"nice": nice}} if nice is not None else {}) + "\n")
    cfg = load_serve_config(serve_config)
    key, _ = create_key(Store(), tenant=TENANT, plan=PLAN, known_plans=list(cfg.plans))
    name = Path(run).name
    seconds = 1.5 if smoke else seconds
    settings = {"explain": cfg.explain.model_dump(mode="json"), "threads": cfg.threads, "plan": PLAN,
                "predict_concurrency": 1, "explain_concurrency": 4, "explain_body": {"method": "ig"},
                "seconds_per_load": seconds, "texts": f"the {len(texts)} bench sentences, cycled"}

    def load(path: str, concurrency: int, secs: float, part: str, body: dict | None = None,
             warmup: int | None = None) -> dict:
        folder = tmp / part
        folder.mkdir(exist_ok=True)
        spec = {"server": part, "host": "127.0.0.1", "port": server.port, "base_url": server.base_url,
                "path": f"/v1/models/{name}/{path}", "model": name, "key": key, "texts": texts,
                "levels": [concurrency], "requests": 10**9, "seconds": secs, "warmup": warmup,
                "server_pid": server.proc.pid, "scrape_metrics": False}
        if body:
            spec |= {"body": body, "expect": "explanations"}
        level = run_worker("load", spec, folder)["levels"][0]
        return {k: level[k] for k in ("requests", "ok", "errors", "elapsed_s", "requests_per_s", "latency_ms",
                                      "server_cpu_pct", "other_cpu_pct", "steal_pct")
                } | ({"failure_samples": level["failure_samples"]} if "failure_samples" in level else {})

    server = Server("tunery", Path(run), serve_config, tmp)
    out: dict = {"settings": settings, "command": "python " + " ".join(server.cmd[1:])}
    eprint(f"[served] starting: {' '.join(server.cmd)}")
    out["ready_after_s"] = round(server.start(), 2)
    try:
        ig = settings["explain_body"]
        out["predict_idle"] = load("predict", 1, seconds, "predict-idle", warmup=20)
        eprint(f"[served] /predict idle: {out['predict_idle']['latency_ms']}")
        out["explain_alone"] = load("explain", 4, seconds, "explain-alone", ig, warmup=4)
        eprint(f"[served] /explain c=4: {out['explain_alone']['latency_ms']}")
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            # the explain load's warm-up (4 requests) and margin on both sides of the predict load
            margin = 2 if smoke else 10  # seconds of explain load on each side of the predict load
            background = pool.submit(load, "explain", 4, seconds + 2 * margin, "explain-loaded", ig, 4)
            time.sleep(margin)
            out["predict_under_explain_load"] = load("predict", 1, seconds, "predict-loaded", warmup=20)
            out["explain_during"] = background.result()
        eprint(f"[served] /predict under load: {out['predict_under_explain_load']['latency_ms']}")
    finally:
        out["exit_code"] = server.stop()
    idle, loaded = out["predict_idle"]["latency_ms"]["p99"], out["predict_under_explain_load"]["latency_ms"]["p99"]
    ratio = loaded / idle if idle and loaded else None
    out["targets"] = {"predict_p99_ratio": round(ratio, 3) if ratio else None,
                      "predict_p99_within_1_5x": bool(ratio is not None and ratio <= 1.5),
                      "explain_p50_ms": out["explain_alone"]["latency_ms"]["p50"],
                      "explain_p99_ms": out["explain_alone"]["latency_ms"]["p99"]}
    (tmp / "served.json").write_text(json.dumps(out))
    return out


def _smoke_run(tmp: Path) -> tuple[Path, Path]:
    """A tiny BERT trained briefly on generated SST-2-shaped rows: the run and its dev file."""
    from tunery.config import config_from_dict
    from tunery.pipeline import train

    data_dir = write_smoke_data(tmp / "data", train_rows=120, dev_rows=16)
    cfg = config_from_dict({"name": "smoke", "output_dir": str(tmp / "src"),
                            "data": {"train": str(data_dir / "train.tsv"), "test": str(data_dir / "dev.tsv"),
                                     "text_column": "sentence", "label_column": "label"},
                            "model": {"backbone": smoke_backbone(tmp)},
                            "train": {"epochs": 2, "batch_size": 16, "lr": 5e-3, "progress": False, "precision": "fp32"}})
    return train(cfg), data_dir / "dev.tsv"


if __name__ == "__main__":
    main()
