"""SST-2 benchmark: tunery against a plain Hugging Face Trainer, in the same run.

    python bench/sst2.py                       # slice anchor: 3,000 seeded SST-2 train rows, 1 epoch each
    python bench/sst2.py --slice-rows 1500     # a smaller slice
    python bench/sst2.py --full                # slice anchor, then a full SST-2 run with tunery
    python bench/sst2.py --full --skip-slice   # the full run only
    python bench/sst2.py --full --skip-slice --full-rows 30000 --set model.backbone=mpnet-base
                                               # a larger backbone on a 30k-row sample of train
    python bench/sst2.py --out my.json         # also choose where the JSON goes
    python bench/sst2.py --smoke               # seconds: does the benchmark still run? (figures mean nothing)

Prints one JSON object on stdout (everything else goes to stderr) and writes it to
bench/results/sst2-<timestamp>.json unless --out is given. See bench/README.md for what each
figure means.

The anchor: the same slice of SST-2 train is trained for 1 epoch by
  (a) `transformers.Trainer` with its defaults (batch 32, lr 5e-5, fp32, random batches with
      dynamic padding, AdamW with the Trainer's default optimizer) and
  (b) tunery with its own `TrainConfig()` defaults (only epochs, the validation hold-out, progress
      and the baseline are set),
both then scored on the 872-row SST-2 dev set. Throughput is training samples per second of
training time; ratios > 1 mean tunery is faster.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import os
import platform
import sys
import tempfile
import time
import warnings
from datetime import datetime
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DEFAULT_DATA = (REPO.parent / "shared" / "data" / "sst2").resolve()
DEFAULT_CONFIG = BENCH_DIR / "sst2_full.yaml"
RESULTS = BENCH_DIR / "results"


def eprint(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


# -- environment ---------------------------------------------------------------------------------
def machine_info() -> dict:
    import accelerate
    import torch
    import transformers

    cpu_model, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu_model is None:
                cpu_model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    relevant = ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"]
    info = {
        "cpu_model": cpu_model or platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "cpu_flags": {f: f in flags for f in relevant},
        "torch_num_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
    }
    try:
        import tunery

        info["tunery"] = tunery.__version__
    except Exception:  # noqa: BLE001 - informational only
        pass
    return info


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


@contextlib.contextmanager
def captured_warnings(sink: list[str]):
    """Collect Python warnings and WARNING+ log records from transformers/accelerate/tunery into
    `sink` (deduplicated), while still letting them through to stderr."""

    class _Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            msg = f"[{record.name}] {record.getMessage()}"
            if msg not in sink:
                sink.append(msg)

    handler = _Handler(level=logging.WARNING)
    loggers = [logging.getLogger(n) for n in ("transformers", "accelerate", "tunery")]
    for lg in loggers:
        lg.addHandler(handler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for w in caught:
                msg = f"[{w.category.__name__}] {w.message}"
                if msg not in sink:
                    sink.append(msg)
                eprint(f"warning: {msg}")
            for lg in loggers:
                lg.removeHandler(handler)


# -- data ----------------------------------------------------------------------------------------
def read_tsv(path: Path):
    import pandas as pd

    return pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, keep_default_na=False, encoding="utf-8")


def take_slice(train_path: Path, rows: int, seed: int):
    """A fixed, seeded sample of `rows` training rows (same rows for the same file, rows and seed)."""
    df = read_tsv(train_path)
    if rows > len(df):
        raise SystemExit(f"--slice-rows {rows} exceeds the {len(df)} rows of {train_path}")
    return df.sample(n=rows, random_state=seed).reset_index(drop=True)


SMOKE_WORDS = {1: ["great", "wonderful", "superb", "lovely"], 0: ["awful", "boring", "dreadful", "bad"]}
SMOKE_FILL = ["the", "film", "was", "plot", "acting", "really", "quite", "story"]


def write_smoke_data(folder: Path, *, train_rows: int, dev_rows: int) -> Path:
    """A seeded, SST-2-shaped stand-in (train.tsv, dev.tsv: sentence, label 0/1) for --smoke:
    no shared data needed, and a word decides the label, so even a tiny model learns something."""
    import random

    import pandas as pd

    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train_rows), ("dev", dev_rows)):
        labels = [i % 2 for i in range(rows)]
        sentences = [" ".join([rng.choice(SMOKE_WORDS[y])] + rng.sample(SMOKE_FILL, 4)) + f" {i}"
                     for i, y in enumerate(labels)]
        write_tsv(pd.DataFrame({"sentence": sentences, "label": labels}), folder / f"{name}.tsv")
    return folder


def smoke_backbone(folder: Path) -> str:
    """The tiny random BERT the tests use (tunery.testing): loads and trains in about a second."""
    from tunery.testing import tiny_backbone

    return tiny_backbone(folder / "tiny-bert")


def write_tsv(df, path: Path) -> None:
    if df["sentence"].astype(str).str.contains("\t").any():
        raise SystemExit("a sentence contains a tab; cannot write an unquoted TSV")
    # Plain lines, as in the GLUE file: no quoting, so a '"' stays a plain character.
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("sentence\tlabel\n")
        f.writelines(f"{t}\t{int(y)}\n" for t, y in zip(df["sentence"].astype(str), df["label"]))


# -- (a) plain Hugging Face Trainer ---------------------------------------------------------------
def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX): only there does bf16 pay."""
    flags = machine_info()["cpu_flags"]
    return bool(flags.get("avx512_bf16") or flags.get("amx_bf16"))


def run_hf_trainer(slice_df, dev_df, backbone: str, workdir: Path, *, max_length: int = 128,
                   tuned: bool = False) -> dict:
    """The Trainer with its defaults, or `tuned`: what a user who knows it sets on a CPU, batches of
    similar length (train_sampling_strategy="group_by_length"), use_cpu, and bf16 where the CPU has it
    natively (on a CPU without it bf16 is emulated and slower than fp32, so it stays off)."""
    import numpy as np
    import torch
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                              Trainer, TrainingArguments)

    class _Rows(torch.utils.data.Dataset):
        def __init__(self, enc, labels):
            self.enc, self.labels = enc, list(labels)

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, i):
            item = {k: v[i] for k, v in self.enc.items()}
            item["labels"] = int(self.labels[i])
            return item

    t_wall = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    tok = lambda df: tokenizer(df["sentence"].astype(str).tolist(), truncation=True, max_length=max_length)  # noqa: E731
    train_ds = _Rows(tok(slice_df), slice_df["label"])
    dev_ds = _Rows(tok(dev_df), dev_df["label"])
    model = AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=2)
    tuning = {"train_sampling_strategy": "group_by_length", "use_cpu": True, "bf16": native_bf16()} if tuned else {}
    args = TrainingArguments(output_dir=str(workdir), per_device_train_batch_size=32, learning_rate=5e-5,
                             num_train_epochs=1, report_to=[], save_strategy="no", logging_steps=50, seed=42, **tuning)
    trainer = Trainer(model=model, args=args, train_dataset=train_ds,
                      data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer)
    t_train = time.perf_counter()
    train_output = trainer.train()
    train_wall = time.perf_counter() - t_train
    # transformers 5 samples evaluation batches with LengthGroupedSampler too under group_by_length
    # (Trainer._get_eval_sampler), seeded but shuffled: predictions come back out of the dataset's
    # order and score ~0.5 against the labels. Predict in order, as a user scoring a file must.
    sampling, args.train_sampling_strategy = args.train_sampling_strategy, "random"
    t_pred = time.perf_counter()
    pred = trainer.predict(dev_ds)
    predict_s = time.perf_counter() - t_pred
    acc = float((np.argmax(pred.predictions, axis=-1) == np.asarray(dev_df["label"])).mean())
    m = train_output.metrics
    return {
        "n_train": len(train_ds),
        "samples_per_s": round(float(m["train_samples_per_second"]), 2),
        "train_runtime_s": round(float(m["train_runtime"]), 2),
        "train_call_wall_s": round(train_wall, 2),
        "samples_per_s_wall": round(len(train_ds) / train_wall, 2),
        "predict_s": round(predict_s, 2),
        "wall_s": round(time.perf_counter() - t_wall, 2),
        "train_loss": round(float(m.get("train_loss", float("nan"))), 4),
        "steps": int(train_output.global_step),
        "dev_accuracy": round(acc, 4),
        "settings": {"batch_size": args.per_device_train_batch_size, "lr": args.learning_rate,
                     "optim": str(args.optim), "weight_decay": args.weight_decay,
                     "warmup_steps": args.warmup_steps, "lr_scheduler": str(args.lr_scheduler_type),
                     "train_sampling_strategy": sampling,
                     "bf16": args.bf16, "fp16": args.fp16, "max_length": max_length,
                     "device": str(args.device)},
    }


# -- model FLOPs utilisation -------------------------------------------------------------------------
def gemm_peak(dtype_name: str, max_n: int = 2048, reps: int = 3) -> float:
    """FLOP/s of the best of `reps` square matrix products in this process (torch's threads), the size
    doubled from 256 while a product takes under 0.2 s (up to max_n): a CPU without native bf16 takes
    seconds for one bf16 product of 1024 (emulated), so its peak is measured at a smaller size."""
    import torch

    dtype = getattr(torch, dtype_name)
    n = 256
    while True:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        t0 = time.perf_counter()
        torch.matmul(a, b)  # also the warm-up
        if time.perf_counter() - t0 > 0.2 or n >= max_n:
            break
        n *= 2
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def training_flops_per_sample(slice_df, backbone: str, max_length: int = 128, extra_layers: int = 0) -> float:
    """Model FLOPs of one training sample, fwd + bwd, on its real tokens (no padding): 6 N t for the
    non-embedding weights N over t tokens, plus attention's scores and mix, 12 L d t^2 (Kaplan et al.,
    2020; Chinchilla's count), averaged over the slice's rows. `extra_layers` counts transformer layers
    the trained model has beyond the backbone's (tunery's mean-pooling layer, pooling.py), each the size
    of the backbone's last."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(backbone)
    lengths = [len(ids) for ids in tokenizer(slice_df["sentence"].astype(str).tolist(), truncation=True,
                                             max_length=max_length)["input_ids"]]
    config = AutoConfig.from_pretrained(backbone)
    model = AutoModel.from_pretrained(backbone)
    n = sum(p.numel() for name, p in model.named_parameters() if "embeddings" not in name)
    n += extra_layers * sum(p.numel() for p in model.encoder.layer[-1].parameters())
    layers, d = config.num_hidden_layers + extra_layers, config.hidden_size
    return sum(6 * n * t + 12 * layers * d * t * t for t in lengths) / len(lengths)


def mfu_figures(slice_df, backbone: str, samples_per_s: dict, extra_layers: dict | None = None) -> dict:
    """Model FLOPs per second of each run over the GEMM peaks measured now, in this process: fp32 and
    bf16 (the issue's yardstick; on a CPU without native bf16 its peak is below fp32's). Each run's
    FLOPs are those of the model it trains (`extra_layers`: run -> layers added to the backbone)."""
    layers_of = {run: (extra_layers or {}).get(run, 0) for run in samples_per_s}
    by_layers = {k: training_flops_per_sample(slice_df, backbone, extra_layers=k) for k in set(layers_of.values())}
    per_sample = {run: by_layers[k] for run, k in layers_of.items()}
    peaks = {"fp32": gemm_peak("float32"), "bf16": gemm_peak("bfloat16")}
    out = {"flops_per_sample": {run: round(f) for run, f in per_sample.items()},
           "gemm_peak_gflops": {k: round(v / 1e9, 1) for k, v in peaks.items()},
           "model_gflops_per_s": {}, "mfu_vs_fp32_peak": {}, "mfu_vs_bf16_peak": {}}
    for run, sps in samples_per_s.items():
        flops = sps * per_sample[run]
        out["model_gflops_per_s"][run] = round(flops / 1e9, 1)
        out["mfu_vs_fp32_peak"][run] = round(flops / peaks["fp32"], 3)
        out["mfu_vs_bf16_peak"][run] = round(flops / peaks["bf16"], 3)
    return out


# -- (b) tunery -----------------------------------------------------------------------------------
def tunery_summary(run_dir: Path, wall_s: float) -> dict:
    import yaml

    metrics = json.loads((run_dir / "metrics.json").read_text())
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    tr = metrics["training"]
    test = (metrics.get("model") or {}).get("test") or {}
    val = (metrics.get("model") or {}).get("validation") or {}
    base = ((metrics.get("baseline") or {}).get("test") or {}).get("accuracy")
    t = cfg["train"]
    return {
        "run_dir": str(run_dir),
        "n_train": tr["n_train"],
        "n_validation": tr["n_validation"],
        "n_test": tr["n_test"],
        "split": tr.get("split"),
        "samples_per_s": tr["samples_per_s"],
        "train_seconds": tr["train_seconds"],
        "samples_seen": tr["samples_seen"],
        "precision": tr.get("precision", t.get("precision")),
        "pooling": tr.get("pooling", "cls"),
        "threads": tr.get("threads"),
        "steps": tr["steps"],
        "best_step": tr["best_step"],
        "stopped_early": tr["stopped_early"],
        "pipeline_wall_s": tr["wall_seconds"],
        "wall_s": round(wall_s, 2),
        "dev_accuracy": round(float(test["accuracy"]), 4) if "accuracy" in test else None,
        "validation_accuracy": round(float(val["accuracy"]), 4) if "accuracy" in val else None,
        "baseline_dev_accuracy": round(float(base), 4) if base is not None else None,
        "settings": {k: t[k] for k in ("epochs", "batch_size", "lr", "weight_decay", "warmup_ratio", "scheduler",
                                       "precision", "group_by_length", "eval_every_steps", "grad_clip",
                                       "num_threads")}
                    | {"freeze_embeddings": cfg["model"]["freeze_embeddings"], "method": cfg["model"]["method"],
                       "max_length": cfg["data"]["max_length"],
                       "validation_fraction": cfg["data"]["validation_fraction"]},
    }


def run_tunery(cfg) -> tuple[Path, float]:
    from tunery import pipeline

    t0 = time.perf_counter()
    run_dir = pipeline.train(cfg)
    return Path(run_dir), time.perf_counter() - t0


def slice_tunery_config(train_file: Path, dev_file: Path, runs_dir: Path, name: str, *,
                        validation_fraction: float, backbone: str | None = None) -> dict:
    # tunery's own TrainConfig() defaults; only what a 1-epoch slice run needs is set here.
    config = {
        "name": name,
        "output_dir": str(runs_dir),
        "data": {"train": str(train_file), "test": str(dev_file), "text_column": "sentence",
                 "label_column": "label", "validation_fraction": validation_fraction},
        "train": {"epochs": 1, "progress": False},
        "evaluate": {"baseline": False},
    }
    if backbone is not None:  # --smoke: the tiny test backbone (else tunery's default, MiniLM)
        config["model"] = {"backbone": backbone}
    return config


# -- isolation: every training runs in its own fresh interpreter -----------------------------------
# Accelerate's AcceleratorState is a process-wide singleton: once the HF Trainer has set it up
# (fp32), tunery's Accelerator(mixed_precision="bf16") in the same process raises. A fresh process
# per part also keeps the comparison fair (no warm allocator, no logging settings leaking across).
def start_result(benchmark: str, stem: str, args, argv) -> tuple[Path | None, dict]:
    """Where a benchmark's JSON goes (--out; none for --smoke; else bench/results/<stem>-<time>.json)
    and the opening fields of its result: name, smoke, start time, argv, machine."""
    out = (Path(args.out) if args.out else None if args.smoke
           else RESULTS / f"{stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json")
    return out, {"benchmark": benchmark, "smoke": args.smoke, "started": datetime.now().isoformat(timespec="seconds"),
                 "argv": sys.argv[1:] if argv is None else argv, "machine": machine_info()}


def run_part(kind: str, spec: dict, tmp: Path, *, script: str = __file__) -> dict:
    """Run `script --_worker kind SPEC OUT` in a fresh process; its result JSON (the worker writes OUT)."""
    import subprocess

    spec_file, out_file = tmp / f"{kind}-spec.json", tmp / f"{kind}-result.json"
    spec_file.write_text(json.dumps(spec))
    out_file.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(script).resolve()), "--_worker", kind, str(spec_file), str(out_file)]
    proc = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr, env=os.environ.copy())
    if proc.returncode != 0:
        raise SystemExit(f"{kind} part failed (exit {proc.returncode}); its log is above")
    return json.loads(out_file.read_text())


def worker(kind: str, spec_file: str, out_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    sink: list[str] = []
    with captured_warnings(sink), contextlib.redirect_stdout(sys.stderr):
        if kind in ("hf", "hf_tuned"):
            import pandas as pd  # noqa: F401

            res = run_hf_trainer(read_tsv(Path(spec["train"])), read_tsv(Path(spec["dev"])), spec["backbone"],
                                 Path(spec["workdir"]), tuned=kind == "hf_tuned")
        else:
            from tunery.config import config_from_dict

            # Import what tunery imports lazily, so its wall time excludes imports like the Trainer's.
            import accelerate  # noqa: F401
            import transformers  # noqa: F401
            from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: F401

            cfg = config_from_dict(spec["config"], source=spec.get("source", "bench config"))
            run_dir, wall = run_tunery(cfg)
            res = tunery_summary(run_dir, wall)
    res["warnings"] = sink
    Path(out_file).write_text(json.dumps(res))


# -- the parts ------------------------------------------------------------------------------------
def bench_slice(args, backbone: str, tmp: Path) -> dict:
    import torch

    data_dir = Path(args.data_dir)
    slice_df = take_slice(data_dir / "train.tsv", args.slice_rows, args.slice_seed)
    dev_df = read_tsv(data_dir / "dev.tsv")
    slice_file = tmp / f"sst2-slice-{args.slice_rows}.tsv"
    write_tsv(slice_df, slice_file)
    result: dict = {"rows": args.slice_rows, "seed": args.slice_seed, "dev_rows": len(dev_df),
                    "label_counts": {str(k): int(v) for k, v in slice_df["label"].value_counts().sort_index().items()},
                    "torch_num_threads": torch.get_num_threads(), "loadavg_before": loadavg()}

    eprint(f"[slice] (a) transformers.Trainer on {len(slice_df)} rows, 1 epoch ...")
    result["hf_trainer"] = run_part("hf", {"train": str(slice_file), "dev": str(data_dir / "dev.tsv"),
                                           "backbone": backbone, "workdir": str(tmp / "hf")}, tmp)
    result["loadavg_between"] = loadavg()

    eprint("[slice] (a') the tuned Trainer (group_by_length, use_cpu, bf16 if native) on the same rows ...")
    result["hf_trainer_tuned"] = run_part("hf_tuned", {"train": str(slice_file), "dev": str(data_dir / "dev.tsv"),
                                                       "backbone": backbone, "workdir": str(tmp / "hf-tuned")}, tmp)
    eprint(f"[slice] (b) tunery on the same {len(slice_df)} rows (validation held out from them), 1 epoch ...")
    cfg = slice_tunery_config(slice_file, data_dir / "dev.tsv", tmp / "runs", f"slice-{args.slice_rows}",
                              validation_fraction=args.slice_validation_fraction,
                              backbone=backbone if args.smoke else None)
    if args.slice_set:  # a variant of tunery's slice run (what one change gives), recorded in the result
        from tunery.config import apply_overrides

        apply_overrides(cfg, list(args.slice_set))
        result["slice_overrides"] = list(args.slice_set)
    result["tunery"] = run_part("tunery", {"config": cfg, "source": "bench/sst2.py slice config"}, tmp)
    result["loadavg_after"] = loadavg()

    hf, tu, tuned = result["hf_trainer"], result["tunery"], result["hf_trainer_tuned"]
    result["ratio_samples_per_s"] = round(tu["samples_per_s"] / hf["samples_per_s"], 3)
    result["ratio_samples_per_s_vs_tuned"] = round(tu["samples_per_s"] / tuned["samples_per_s"], 3)
    result["dev_accuracy_delta_vs_tuned"] = (round(tu["dev_accuracy"] - tuned["dev_accuracy"], 4)
                                             if tu["dev_accuracy"] is not None else None)
    result["mfu"] = mfu_figures(slice_df, backbone, {"hf_trainer": hf["samples_per_s"],
                                                     "hf_trainer_tuned": tuned["samples_per_s"],
                                                     "tunery": tu["samples_per_s"]},
                                {"tunery": 1 if tu.get("pooling") == "mean" else 0})
    result["ratio_wall"] = round(hf["wall_s"] / tu["wall_s"], 3)
    result["dev_accuracy_delta"] = (round(tu["dev_accuracy"] - hf["dev_accuracy"], 4)
                                    if tu["dev_accuracy"] is not None else None)
    result["note"] = (f"tunery holds out {tu['n_validation']} of the {args.slice_rows} slice rows for validation "
                      f"(data.validation_fraction={args.slice_validation_fraction}) and trains on {tu['n_train']}; "
                      f"the Trainer trains on all {hf['n_train']}. samples/s is per training sample in both.")
    return result


def bench_full(args, runs_dir: Path, tmp: Path, *, backbone: str | None = None) -> dict:
    from tunery.config import load_config

    name = f"sst2-full-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    smoke = []
    if args.smoke:  # the same config file, on the generated data with the tiny backbone, 1 epoch
        data_dir = Path(args.data_dir)
        smoke = [f"data.train={data_dir / 'train.tsv'}", f"data.test={data_dir / 'dev.tsv'}",
                 f"model.backbone={backbone}", "data.validation_fraction=0.2", "train.epochs=1"]
    if args.full_rows:  # a seeded sample of train instead of all of it (time), said so in the result
        sample = tmp / "full-train.tsv"
        write_tsv(take_slice(Path(args.data_dir) / "train.tsv", args.full_rows, args.slice_seed), sample)
        smoke.append(f"data.train={sample}")
    overrides = [f"name={name}", f"output_dir={runs_dir}", *smoke, *args.set]
    cfg = load_config(Path(args.config).resolve(), overrides)  # validated here: errors before any work
    eprint(f"[full] tunery on {cfg.data.train} (config {args.config}) -> {runs_dir / name} ...")
    result: dict = {"config": str(args.config), "overrides": overrides, "train_rows": args.full_rows or "all",
                    "loadavg_before": loadavg()}
    result["tunery"] = run_part("full", {"config": cfg.to_dict(), "source": str(args.config)}, tmp)
    result["loadavg_after"] = loadavg()
    return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slice-rows", type=int, default=None, help="rows in the fixed slice (default 3000; 64 with --smoke)")
    ap.add_argument("--slice-seed", type=int, default=42, help="seed of the slice sample (default 42)")
    ap.add_argument("--slice-validation-fraction", type=float, default=0.05,
                    help="tunery's validation hold-out from the slice (default 0.05)")
    ap.add_argument("--slice-set", action="append", default=[], metavar="KEY=VALUE",
                    help="override in tunery's slice run, e.g. --slice-set model.pooling=cls (repeatable)")
    ap.add_argument("--full", action="store_true", help="also run full SST-2 with tunery (hours on a CPU)")
    ap.add_argument("--skip-slice", action="store_true", help="with --full: skip the slice anchor")
    ap.add_argument("--full-rows", type=int, default=None,
                    help="with --full: train on a seeded sample of this many SST-2 train rows (--slice-seed) "
                         "instead of all 67,349, when the time does not allow the whole set")
    ap.add_argument("--config", default=str(DEFAULT_CONFIG), help="tunery config of the full run")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override in the full run's config, e.g. --set train.lr=3e-5 (repeatable)")
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA), help=f"SST-2 directory (default {DEFAULT_DATA})")
    ap.add_argument("--runs-dir", default=str(RESULTS / "runs"),
                    help="where the full run's directory goes (default bench/results/runs)")
    ap.add_argument("--out", default=None,
                    help="JSON file to write (default bench/results/sst2-<time>.json; none with --smoke)")
    ap.add_argument("--smoke", action="store_true",
                    help="a check that the benchmark still runs, in seconds: every part (slice and --full) on "
                         "generated SST-2-shaped rows with the tiny random test backbone, all in a temporary "
                         "directory; the figures mean nothing")
    args = ap.parse_args(argv)
    if args.skip_slice and not args.full and not args.smoke:
        ap.error("--skip-slice only makes sense with --full")
    if args.slice_rows is None:
        args.slice_rows = 64 if args.smoke else 3000
    if args.slice_rows < 2:
        ap.error("--slice-rows must be at least 2")

    started = time.time()
    out, result = start_result("sst2", "sst2", args, argv)
    with tempfile.TemporaryDirectory(prefix="tunery-bench-") as tmp_s:
        tmp = Path(tmp_s)
        # The tunery store (runs table) goes to a throwaway home, not the repository's .tunery/.
        os.environ.setdefault("TUNERY_HOME", str(tmp / "home"))
        if args.smoke:
            backbone = smoke_backbone(tmp)
            result["backbone"] = {"alias": "tiny random BERT (tunery.testing, --smoke)", "path": backbone}
            args.data_dir = str(write_smoke_data(tmp / "data", train_rows=args.slice_rows, dev_rows=32))
            args.runs_dir = str(tmp / "full-runs")
            args.full = True
        else:
            from tunery.backbones import resolve_backbone

            backbone = resolve_backbone("minilm-l6")
            result["backbone"] = {"alias": "minilm-l6", "path": backbone}
        if not args.skip_slice:
            result["slice"] = bench_slice(args, backbone, tmp)
        if args.full:
            result["full"] = bench_full(args, Path(args.runs_dir).resolve(), tmp, backbone=backbone)
    return write_result(result, out, started)


def write_result(result: dict, out: Path | None, started: float) -> dict:
    """Stamp the wall time, write the JSON to `out` (unless None) and print it on stdout (the
    benchmarks' contract)."""
    result["total_wall_s"] = round(time.time() - started, 1)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        eprint(f"wrote {out}")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--_worker":
        worker(*sys.argv[2:])
    else:
        main()
