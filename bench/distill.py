"""Distillation benchmark: a student taught by a bigger teacher against the same student trained
directly, on the same files, in one run; and a 3-layer student of the MiniLM against the MiniLM.

    python bench/distill.py --datasets sst2 --teacher RUN            # a teacher run trained already
    python bench/distill.py --datasets sst2 --teacher RUN --direct RUN --layers 0   # the distilled run only
    python bench/distill.py --datasets rt                            # trains the teacher (mpnet-base) too
    python bench/distill.py --datasets rt --set distill.augment.copies=4 --set distill.alpha=0.3
    python bench/distill.py --smoke                                  # a tiny run of every part (figures mean nothing)

The data sets (the files every system reads, written once):
  sst2  full SST-2 train (67,349 rows; 2 % held out for validation, seed 42), tested on the 872-row dev set;
  rt    the quickstart's Rotten Tomatoes, 80/10/10 stratified (seed 42), as bench/auto.py splits it.
The parts, each a tunery run in its own process (`python -m tunery ...`):
  teacher    `tunery train` with model.backbone=--teacher-backbone (default mpnet-base), unless --teacher;
  direct     `tunery train` with the student backbone (default minilm-l6) and its default recipe;
  distilled  `tunery distill --teacher TEACHER --student minilm-l6` (plus --set overrides);
  layers     `tunery distill --teacher DIRECT --layers 3`: a 3-layer student of the direct MiniLM run; its
             throughput and the direct run's (texts/s, batches of 32, and one-text p50, at --threads) on the
             test file, measured in this process after training.
Targets (issue 12): distilled >= 0.910 on SST-2 dev and above direct on RT; the 3-layer student >= 1.8x
the MiniLM's throughput within 1.5 points.

Prints one JSON object on stdout (logs on stderr) and writes it to bench/results/distill-<time>.json
unless --out is given.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from auto import rt_splits, smoke_splits, write_splits  # noqa: E402
from sst2 import eprint, loadavg, read_tsv, smoke_backbone, start_result, write_result  # noqa: E402

REPO = BENCH_DIR.parent
SST2_DIR = (REPO.parent / "shared" / "data" / "sst2").resolve()


def sst2_files(folder: Path) -> dict[str, Path]:
    train = read_tsv(SST2_DIR / "train.tsv").rename(columns={"sentence": "text"})
    test = read_tsv(SST2_DIR / "dev.tsv").rename(columns={"sentence": "text"})
    from auto import _split

    fit, validation = _split(train, 0.02)
    return write_splits({"train": fit, "validation": validation, "test": test}, folder)


def tunery(args_: list[str], cwd: Path) -> tuple[int, float]:
    cmd = [sys.executable, "-m", "tunery", *map(str, args_)]
    eprint("[distill] $ " + " ".join(cmd))
    t0 = time.perf_counter()
    rc = subprocess.run(cmd, cwd=cwd, stdout=sys.stderr, stderr=sys.stderr).returncode
    return rc, round(time.perf_counter() - t0, 1)


def summary(run: Path, rc: int, wall: float) -> dict:
    if rc != 0 or not (run / "metrics.json").is_file():
        return {"exit_code": rc, "wall_s": wall, "failed": True}
    doc = json.loads((run / "metrics.json").read_text())
    test = (doc.get("model") or {}).get("test") or {}
    training = doc.get("training") or {}
    return {"exit_code": rc, "wall_s": wall, "run": str(run), "test_accuracy": test.get("accuracy"),
            "validation": training.get("best_validation"), "samples_per_s": training.get("samples_per_s"),
            "steps": training.get("steps"), "distillation": training.get("distillation")}


def overrides(name: str, out: Path, backbone: str, extra: list[str]) -> list[str]:
    """`tunery train` arguments naming the run, where it goes and its backbone."""
    return ["--set", f"name={name}", "--set", f"output_dir={out}", "--set", f"model.backbone={backbone}", *extra]


def write_config(files: dict, path: Path) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"data": {"train": str(files["train"]), "validation": str(files["validation"]),
                                             "test": str(files["test"]), "text_column": "text",
                                             "label_column": "label"},
                                    "train": {"progress": False}}))
    return path


def throughput(run: Path, texts: list[str], threads: int) -> dict:
    import tunery
    from tunery.compress.checks import latency

    predictor = tunery.load(run, batch_size=32, threads=threads)
    return latency(lambda t: predictor.score(t), texts, batch=32, one_text_runs=50)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="rt,sst2", help="comma-separated: rt, sst2 (default both)")
    ap.add_argument("--teacher", default=None, help="a trained teacher run (one data set only); default: train one")
    ap.add_argument("--teacher-backbone", default="mpnet-base")
    ap.add_argument("--teacher-set", action="append", default=[], metavar="KEY=VALUE",
                    help="override in the teacher's training run (e.g. train.epochs=1)")
    ap.add_argument("--direct", default=None, help="a trained direct run of the student (one data set only); "
                    "default: train one")
    ap.add_argument("--student", default="minilm-l6")
    ap.add_argument("--layers", type=int, default=3, help="depth of the layers student (0: skip that part)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override in the distilled run")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of every part (default: all cores)")
    ap.add_argument("--work-dir", default=None, help="where data and runs go (default: a temporary directory)")
    ap.add_argument("--out", default=None, help="JSON file (default bench/results/distill-<time>.json)")
    ap.add_argument("--smoke", action="store_true", help="the tiny test backbone on generated rows")
    args = ap.parse_args(argv)
    datasets = ["smoke"] if args.smoke else [d.strip() for d in args.datasets.split(",") if d.strip()]
    if (args.teacher or args.direct) and len(datasets) != 1:
        ap.error("--teacher and --direct fit one data set: give --datasets too")

    started = time.time()
    out, result = start_result("distill", "distill", args, argv)
    result["datasets"] = {}
    with tempfile.TemporaryDirectory(prefix="tunery-distill-") as tmp_s:
        work = Path(args.work_dir or tmp_s)
        os.environ.setdefault("TUNERY_HOME", str(work / "home"))
        teacher_backbone, student = args.teacher_backbone, args.student
        if args.smoke:
            teacher_backbone = student = smoke_backbone(work)
        threads = [] if args.threads is None else ["--set", f"train.num_threads={args.threads}"]
        quick = ["--set", "train.epochs=1"] if args.smoke else []
        for ds in datasets:
            folder = work / ds
            splits = smoke_splits() if ds == "smoke" else rt_splits() if ds == "rt" else None
            files = write_splits(splits, folder / "data") if splits is not None else sst2_files(folder / "data")
            config = write_config(files, folder / "base.yaml")
            runs = folder / "runs"
            entry: dict = {"files": {k: str(v) for k, v in files.items()}, "loadavg_before": loadavg()}
            if args.teacher:
                teacher = Path(args.teacher).resolve()
                entry["teacher"] = {"run": str(teacher), "trained_here": False}
            else:
                teacher = runs / "teacher"
                teacher_sets = [x for s in args.teacher_set for x in ("--set", s)]
                rc, wall = tunery(["train", config, "--no-progress",
                                   *overrides("teacher", runs, teacher_backbone, threads + quick + teacher_sets)],
                                  folder)
                entry["teacher"] = summary(teacher, rc, wall)
            result["datasets"][ds] = entry
            save_partial(result, out)
            if entry["teacher"].get("failed"):
                eprint(f"[distill] {ds}: the teacher failed (its log is above); skipping the data set's other parts")
                continue
            if args.direct:
                direct = Path(args.direct).resolve()
                entry["direct"] = {**summary(direct, 0, 0.0), "trained_here": False}
            else:
                direct = runs / "direct"
                rc, wall = tunery(["train", config, "--no-progress",
                                   *overrides("direct", runs, student, threads + quick)], folder)
                entry["direct"] = summary(direct, rc, wall)
                save_partial(result, out)
            distilled = runs / "distilled"
            sets = [x for s in args.set for x in ("--set", s)]
            rc, wall = tunery(["distill", "--teacher", teacher, "--student", student, "--name", "distilled",
                               "--output-dir", runs, "--no-progress", *threads, *quick, *sets], folder)
            entry["distilled"] = summary(distilled, rc, wall)
            save_partial(result, out)
            if args.layers and not entry["direct"].get("failed"):
                small = runs / f"direct-{args.layers}l"
                rc, wall = tunery(["distill", "--teacher", direct, "--layers", args.layers, "--name", small.name,
                                   "--output-dir", runs, "--no-progress", *threads, *quick], folder)
                entry["layers"] = summary(small, rc, wall)
                if not entry["layers"].get("failed"):
                    import pandas as pd

                    texts = pd.read_csv(files["test"])["text"].astype(str).tolist()
                    t = args.threads or os.cpu_count() or 1
                    entry["layers"]["speed"] = {"threads": t, "student": throughput(small, texts, t),
                                                "direct": throughput(direct, texts, t)}
                    s, d = entry["layers"]["speed"]["student"], entry["layers"]["speed"]["direct"]
                    entry["layers"]["throughput_ratio"] = round(s["texts_per_s"] / d["texts_per_s"], 3)
            entry["loadavg_after"] = loadavg()
            entry["targets"] = targets(ds, entry)
            save_partial(result, out)
    return write_result(result, None if args.smoke and not args.out else out, started)


def save_partial(result: dict, out: Path | None) -> None:
    """The result so far, written to `out` after every part (marked partial): a bench killed after
    hours of training keeps the figures of the parts that finished."""
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**result, "partial": True}, indent=2) + "\n", encoding="utf-8")


def targets(ds: str, e: dict) -> dict:
    """The issue's targets, where the parts ran."""
    acc = lambda part: (e.get(part) or {}).get("test_accuracy")  # noqa: E731
    out: dict = {}
    if acc("distilled") is not None and acc("direct") is not None:
        out["distilled_minus_direct_points"] = round(100 * (acc("distilled") - acc("direct")), 2)
        out["beats_direct"] = acc("distilled") > acc("direct")
    if ds == "sst2" and acc("distilled") is not None:
        out["sst2_at_least_0.910"] = acc("distilled") >= 0.910
    layers = e.get("layers") or {}
    if layers.get("throughput_ratio") is not None and acc("direct") is not None and acc("layers") is not None:
        drop = 100 * (acc("direct") - acc("layers"))
        out["layers_drop_points"] = round(drop, 2)
        out["layers_met"] = layers["throughput_ratio"] >= 1.8 and drop <= 1.5
    return out


if __name__ == "__main__":
    main()
