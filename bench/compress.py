"""Compression benchmark: one run, five ways to serve it, on SST-2 dev, in one process.

    python bench/compress.py --run RUN               # a full-SST-2 MiniLM run (bench/sst2.py --full makes one)
    python bench/compress.py --run RUN --threads 1,2 --one-text 200
    python bench/compress.py --smoke                 # seconds: a tiny run on generated rows (figures mean nothing)

The systems, each loaded as `tunery.load` loads it:
  torch-fp32   the run itself, precision fp32;
  torch-bf16   the run itself, precision bf16 (weights cast once; emulated, slow, on CPUs without AVX512-BF16);
  onnx-fp32    `tunery compress RUN --to onnx`;
  int8         `tunery compress RUN --to int8` (dynamic; the attention's Q, K, V projections int8 where that
               passes the checks, the default --attention auto);
  int8-fp32-attention  `tunery compress RUN --to int8 --attention fp32` (those projections kept fp32);
  int8-static  `tunery compress RUN --to int8 --static` (QDQ, calibrated on 256 training rows).
For each: accuracy on the dev file (--data, default ../shared/data/sst2/dev.tsv: 872 rows, the
run's test split when it was trained with bench/sst2_full.yaml), file size of the weights or graph,
one-text latency (p50, p99 over --one-text texts, one at a time) and batch-32 throughput (texts/s
over the whole dev file), at each thread count of --threads (torch.set_num_threads for torch, the
ONNX Runtime session's intra-op threads for ONNX). Compressed runs that fail their checks are
recorded with the refusal's message. Target (issue 12): int8 >= 2x torch-fp32 throughput and
>= torch-bf16, at <= 0.5 point accuracy drop.

Prints one JSON object on stdout (logs on stderr) and writes it to bench/results/compress-<time>.json
unless --out is given.
"""

from __future__ import annotations

import argparse
import json
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
KINDS = {"onnx-fp32": {"to": "onnx"}, "int8": {"to": "int8"}, "int8-fp32-attention": {"to": "int8", "attention": "fp32"},
         "int8-static": {"to": "int8", "static": True}}


def compressed_runs(run: Path, out_dir: Path, data: Path | None) -> dict:
    """`compress_run` for each compressed kind: {kind: run path or {"refused": message}}."""
    from tunery.compress import CompressOptions, compress_run
    from tunery.errors import CompressionError

    made = {}
    for kind, opts in KINDS.items():
        t0 = time.perf_counter()
        try:
            made[kind] = compress_run(run, CompressOptions(max_drop=100.0, **opts), name=f"{run.name}-{kind}",
                                      output_dir=out_dir, data=data)
        except CompressionError as err:
            made[kind] = {"refused": str(err)}
        eprint(f"[compress] {kind}: {made[kind]} ({time.perf_counter() - t0:.0f} s)")
    return made


def measure(predictor, texts: list[str], labels, *, threads: int, one_text: int, batch: int = 32) -> dict:
    """Accuracy, one-text latency and batch throughput of a loaded predictor at `threads`."""
    import numpy as np
    import torch

    from tunery.compress.checks import latency

    torch.set_num_threads(threads)  # the ONNX session has its own, set when it was loaded
    scores = predictor.predict_scores(texts)
    names = predictor.label_names
    predicted = [names[k] for k in scores.argmax(axis=1)]
    accuracy = float(np.mean([p == str(y) for p, y in zip(predicted, labels)]))
    timing = latency(lambda t: predictor.score(t), texts, batch=batch, one_text_runs=one_text)
    return {"accuracy": accuracy, **timing}


def size_of(run: Path) -> int:
    model = run / "model"
    return sum(f.stat().st_size for f in model.iterdir() if f.suffix in (".onnx", ".safetensors", ".bin"))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="the run to compress (path, name or registry name)")
    ap.add_argument("--data", default=str(DEV), help=f"labelled TSV/CSV with sentence,label (default {DEV})")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--one-text", type=int, default=200, help="texts timed one at a time (default 200)")
    ap.add_argument("--work-dir", default=None, help="where the compressed runs go (default: a temporary directory)")
    ap.add_argument("--out", default=None, help="JSON file (default bench/results/compress-<time>.json)")
    ap.add_argument("--smoke", action="store_true", help="a tiny run trained on generated rows; figures mean nothing")
    args = ap.parse_args(argv)
    if not args.smoke and not args.run:
        ap.error("give --run RUN (a full-SST-2 MiniLM run), or --smoke")
    threads = [int(t) for t in args.threads.split(",")]

    import pandas as pd

    import tunery

    started = time.time()
    out, result = start_result("compress", "compress", args, argv)
    with tempfile.TemporaryDirectory(prefix="tunery-compress-") as tmp_s:
        tmp = Path(tmp_s)
        os.environ.setdefault("TUNERY_HOME", str(tmp / "home"))
        work = Path(args.work_dir) if args.work_dir else tmp / "runs"
        if args.smoke:
            run, data = _smoke_run(tmp)
            args.one_text = min(args.one_text, 10)
        else:
            run, data = tunery.load(args.run).run_dir, Path(args.data)
        df = read_tsv(data) if data.suffix == ".tsv" else pd.read_csv(data)
        column = "sentence" if "sentence" in df else "text"  # GLUE's name, or a run's own (bench/distill.py's files)
        texts, labels = df[column].astype(str).tolist(), df["label"].tolist()
        result.update({"run": str(run), "data": str(data), "rows": len(texts), "threads": threads,
                       "loadavg_before": loadavg()})
        made = compressed_runs(run, work, data)
        systems = {"torch-fp32": (run, "fp32"), "torch-bf16": (run, "bf16"),
                   **{k: (v, None) for k, v in made.items() if isinstance(v, Path)}}
        result["refused"] = {k: v["refused"] for k, v in made.items() if not isinstance(v, Path)}
        result["systems"] = {}
        for name, (path, precision) in systems.items():
            entry = {"size_bytes": size_of(path)}
            if precision is None:
                doc = json.loads((path / "metrics.json").read_text())
                entry["checks"] = {k: doc["compression"][k] for k in ("drop_points", "agreement", "parity_fp32",
                                                                     "quantization", "graph")}
            for t in threads:
                predictor = tunery.load(path, precision=precision or "fp32", batch_size=32, threads=t)
                entry[f"threads_{t}"] = measure(predictor, texts, labels, threads=t, one_text=args.one_text)
                eprint(f"[compress] {name} @ {t} threads: {entry[f'threads_{t}']}")
            result["systems"][name] = entry
        result["loadavg_after"] = loadavg()
        result["summary"] = _summary(result, threads)
    return write_result(result, None if args.smoke and not args.out else out, started)


def _summary(result: dict, threads: list[int]) -> dict:
    """Per thread count: each system's throughput and accuracy relative to torch-fp32, and whether
    int8 meets the target (>= 2x torch-fp32 and >= torch-bf16 throughput, <= 0.5 point drop)."""
    out = {}
    s = result["systems"]
    for t in threads:
        key = f"threads_{t}"
        base = s["torch-fp32"][key]
        row = {name: {"speedup": e[key]["texts_per_s"] / base["texts_per_s"],
                      "accuracy_drop_points": 100 * (base["accuracy"] - e[key]["accuracy"]),
                      "one_text_ms_p50": e[key]["one_text_ms_p50"]} for name, e in s.items()}
        if "int8" in s:
            i8 = s["int8"][key]
            row["int8_meets_target"] = bool(i8["texts_per_s"] >= 2 * base["texts_per_s"]
                                            and i8["texts_per_s"] >= s["torch-bf16"][key]["texts_per_s"]
                                            and 100 * (base["accuracy"] - i8["accuracy"]) <= 0.5)
        out[key] = row
    return out


def _smoke_run(tmp: Path) -> tuple[Path, Path]:
    """A tiny BERT trained briefly on generated SST-2-shaped rows (bench/sst2.py's smoke data), its
    test split the generated dev file: the run and that file."""
    from tunery.config import config_from_dict
    from tunery.pipeline import train

    data_dir = write_smoke_data(tmp / "data", train_rows=160, dev_rows=32)
    cfg = config_from_dict({"name": "smoke", "output_dir": str(tmp / "src"),
                            "data": {"train": str(data_dir / "train.tsv"), "test": str(data_dir / "dev.tsv"),
                                     "text_column": "sentence", "label_column": "label"},
                            "model": {"backbone": smoke_backbone(tmp)},
                            "train": {"epochs": 4, "batch_size": 16, "lr": 5e-3, "progress": False, "precision": "fp32"}})
    return train(cfg), data_dir / "dev.tsv"


if __name__ == "__main__":
    main()
