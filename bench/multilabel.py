"""Multi-label benchmark on CoNLL-2003: tunery against its TF-IDF baseline and a plain Hugging Face Trainer.

    python bench/multilabel.py                      # the whole given split (14,041 train sentences)
    python bench/multilabel.py --train-rows 3000    # a seeded subsample of train (valid and test stay whole)
    python bench/multilabel.py --validation-rows 500 --test-rows 1000   # seeded subsamples of valid / test too
    python bench/multilabel.py --skip-hf            # tunery and its baseline only
    python bench/multilabel.py --epochs 1           # epochs of both tunery and the Trainer (default: tunery's)
    python bench/multilabel.py --out my.json        # where the JSON goes
    python bench/multilabel.py --smoke              # seconds: does the benchmark still run? (figures mean nothing)

The data: each sentence of ../shared/data/conll2003/{train,valid,test}.txt (tokens joined by spaces,
-DOCSTART- lines dropped) labelled with the set of entity types it contains (PER, ORG, LOC, MISC);
a sentence with no entity has the empty label list [] (tunery's multilabel task and its baseline
both take [] as "no labels"; no "none" label is added, so macro-F1 averages the 4 entity types).

Three systems on the same split, each in a fresh process:
  tunery       `tunery.pipeline.train` with its defaults (backbone minilm-l6), validation = valid.txt,
               test = test.txt; its TF-IDF baseline comes in metrics.json (`baseline.test`);
  hf_trainer   `AutoModelForSequenceClassification(problem_type="multi_label_classification")` on the
               same backbone, `Trainer` defaults (batch 8, lr 5e-5, no evaluation), same epochs,
               trained on train.txt; predictions on test at sigmoid >= 0.5.
Prints one JSON object on stdout (logs go to stderr) and writes it to
bench/results/multilabel-<time>.json unless --out is given.
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

from sst2 import (captured_warnings, eprint, loadavg, run_part, smoke_backbone, start_result,  # noqa: E402
                  write_result)

REPO = BENCH_DIR.parent
DEFAULT_DATA = (REPO.parent / "shared" / "data" / "conll2003").resolve()
LABELS = ["PER", "ORG", "LOC", "MISC"]
SPLITS = {"train": "train.txt", "validation": "valid.txt", "test": "test.txt"}


# -- data ----------------------------------------------------------------------------------------
def conll_sentences(path: Path) -> list[dict]:
    """The sentences of one CoNLL-2003 file as {"text", "labels"}: tokens joined by single spaces,
    labels the sorted entity types (PER, ORG, LOC, MISC) of its B-/I- tags, [] when it has none.
    -DOCSTART- lines are dropped; a blank line ends a sentence."""
    rows: list[dict] = []
    tokens: list[str] = []
    types: set[str] = set()

    def flush() -> None:
        if tokens:
            rows.append({"text": " ".join(tokens), "labels": sorted(types, key=LABELS.index)})
        tokens.clear()
        types.clear()

    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                flush()
                continue
            if parts[0] == "-DOCSTART-":
                flush()
                continue
            tag = parts[-1]
            if tag != "O":
                kind = tag.split("-", 1)[-1]
                if kind not in LABELS:
                    raise ValueError(f"{path}:{n}: tag {tag!r} is not O or B-/I- of {', '.join(LABELS)}")
                types.add(kind)
            tokens.append(parts[0])
    flush()
    return rows


def conll_multilabel(data_dir: Path) -> dict[str, list[dict]]:
    """The given train / validation / test split of CoNLL-2003 as multi-label sentence sets."""
    data_dir = Path(data_dir)
    missing = [f for f in SPLITS.values() if not (data_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{data_dir}: {', '.join(missing)} missing; point --data-dir at the CoNLL-2003 "
                                f"folder holding {', '.join(SPLITS.values())}")
    return {split: conll_sentences(data_dir / name) for split, name in SPLITS.items()}


def subsample(rows: list[dict], n: int | None, seed: int) -> list[dict]:
    """A seeded sample of `n` rows in their original order (all rows when n is None or >= len)."""
    import random

    if n is None or n >= len(rows):
        return rows
    keep = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [rows[i] for i in keep]


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line]


def label_stats(rows: list[dict]) -> dict:
    counts = {k: sum(k in r["labels"] for r in rows) for k in LABELS}
    return {"rows": len(rows), "positives": counts, "no_label": sum(not r["labels"] for r in rows)}


SMOKE_NAMES = {"PER": ["John", "Mary", "Smith"], "ORG": ["Reuters", "Siemens", "UN"],
               "LOC": ["Paris", "Japan", "Berlin"], "MISC": ["English", "Olympic", "German"]}
SMOKE_FILL = ["the", "said", "on", "game", "won", "today", "after", "match"]


def smoke_rows(n: int, seed: int) -> list[dict]:
    """Generated CoNLL-shaped rows for --smoke: a name from a type's list puts that type in labels."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        types = [t for t in LABELS if rng.random() < 0.35]
        words = rng.sample(SMOKE_FILL, 4) + [rng.choice(SMOKE_NAMES[t]) for t in types]
        rng.shuffle(words)
        rows.append({"text": " ".join(words) + f" {i}", "labels": types})
    return rows


# -- scoring --------------------------------------------------------------------------------------
def f1_scores(rows: list[dict], predicted: list[list[str]]) -> dict:
    import numpy as np
    from sklearn.metrics import f1_score

    y = np.array([[k in r["labels"] for k in LABELS] for r in rows], dtype=int)
    p = np.array([[k in ps for k in LABELS] for ps in predicted], dtype=int)
    per = f1_score(y, p, average=None, zero_division=0)
    return {"micro_f1": round(float(f1_score(y, p, average="micro", zero_division=0)), 4),
            "macro_f1": round(float(f1_score(y, p, average="macro", zero_division=0)), 4),
            "per_label_f1": {k: round(float(v), 4) for k, v in zip(LABELS, per)}}


# -- (a) plain Hugging Face Trainer ---------------------------------------------------------------
def run_hf_trainer(train_rows: list[dict], test_rows: list[dict], backbone: str, workdir: Path, *,
                   epochs: float, max_length: int = 128) -> dict:
    import numpy as np
    import torch
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                              Trainer, TrainingArguments)

    def targets(rows):
        return [[float(k in r["labels"]) for k in LABELS] for r in rows]

    class _Rows(torch.utils.data.Dataset):
        def __init__(self, enc, labels):
            self.enc, self.labels = enc, labels

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, i):
            item = {k: v[i] for k, v in self.enc.items()}
            item["labels"] = self.labels[i]
            return item

    def collate(features):  # the padding collator, with the float label vectors stacked beside it
        labels = torch.tensor([f.pop("labels") for f in features], dtype=torch.float)
        return pad(features) | {"labels": labels}

    t_wall = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    pad = DataCollatorWithPadding(tokenizer)
    tok = lambda rows: tokenizer([r["text"] for r in rows], truncation=True, max_length=max_length)  # noqa: E731
    train_ds, test_ds = _Rows(tok(train_rows), targets(train_rows)), _Rows(tok(test_rows), targets(test_rows))
    model = AutoModelForSequenceClassification.from_pretrained(
        backbone, num_labels=len(LABELS), problem_type="multi_label_classification",
        id2label=dict(enumerate(LABELS)), label2id={k: i for i, k in enumerate(LABELS)})
    args = TrainingArguments(output_dir=str(workdir), num_train_epochs=epochs, report_to=[], save_strategy="no",
                             logging_steps=100, seed=42)
    trainer = Trainer(model=model, args=args, train_dataset=train_ds,
                      data_collator=collate, processing_class=tokenizer)
    t_train = time.perf_counter()
    out = trainer.train()
    train_s = time.perf_counter() - t_train
    probs = 1 / (1 + np.exp(-trainer.predict(test_ds).predictions))
    predicted = [[k for k, on in zip(LABELS, row) if on] for row in probs >= 0.5]
    return {"n_train": len(train_ds), "n_test": len(test_ds), "steps": int(out.global_step),
            "train_seconds": round(train_s, 2), "wall_s": round(time.perf_counter() - t_wall, 2),
            "train_loss": round(float(out.metrics.get("train_loss", float("nan"))), 4),
            "test": f1_scores(test_rows, predicted), "threshold": 0.5,
            "settings": {"epochs": epochs, "batch_size": args.per_device_train_batch_size, "lr": args.learning_rate,
                         "lr_scheduler": str(args.lr_scheduler_type), "warmup_steps": args.warmup_steps,
                         "weight_decay": args.weight_decay, "max_length": max_length}}


# -- (b) tunery (and its baseline) ----------------------------------------------------------------
def evaluations(run_dir: Path, metric: str) -> list[dict]:
    """The validation evaluations of a run (log.jsonl): step and the selection metric."""
    path = run_dir / "log.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if rec.get("split") == "validation" and metric in rec:
            out.append({"step": rec["step"], metric: rec[metric]})
    return out


def tunery_summary(run_dir: Path, wall_s: float) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    tr = metrics["training"]
    model, base = metrics.get("model") or {}, metrics.get("baseline") or {}
    selection = tr.get("selection") or {"metric": metrics.get("metric"), "threshold": None}
    evals = evaluations(run_dir, selection["metric"])

    def pick(part: dict) -> dict:
        out = {k: round(float(part[k]), 4) for k in ("micro_f1", "macro_f1") if k in part}
        per = part.get("per_class") or {}
        rows = per.items() if isinstance(per, dict) else ((r.get("label"), r) for r in per)
        f1s = {str(k): round(float(v["f1"]), 4) for k, v in rows if isinstance(v, dict) and v.get("f1") is not None}
        if f1s:
            out["per_label_f1"] = f1s
        return out

    return {"run_dir": str(run_dir), "n_train": tr["n_train"], "n_validation": tr["n_validation"],
            "n_test": tr["n_test"], "steps": tr["steps"], "best_step": tr["best_step"],
            "stopped_early": tr["stopped_early"], "train_seconds": tr["train_seconds"],
            "wall_s": round(wall_s, 2), "selection": selection, "evaluations": evals,
            "threshold": metrics.get("threshold"), "thresholds": metrics.get("thresholds"),
            "test": pick(model.get("test") or {}), "validation": pick(model.get("validation") or {}),
            "baseline": {"test": pick(base.get("test") or {})}}


def tunery_config(files: dict[str, Path], runs_dir: Path, *, epochs: float | None, backbone: str | None) -> dict:
    config = {"name": "conll-multilabel", "output_dir": str(runs_dir),
              "data": {"train": str(files["train"]), "validation": str(files["validation"]),
                       "test": str(files["test"]), "text_column": "text", "label_column": "labels"},
              "task": {"type": "multilabel"}, "train": {"progress": False}}
    if epochs is not None:
        config["train"]["epochs"] = epochs
    if backbone is not None:  # --smoke: the tiny test backbone (else tunery's default, minilm-l6)
        config["model"] = {"backbone": backbone}
    return config


def worker(kind: str, spec_file: str, out_file: str) -> None:
    import contextlib

    spec = json.loads(Path(spec_file).read_text())
    sink: list[str] = []
    with captured_warnings(sink), contextlib.redirect_stdout(sys.stderr):
        if kind == "hf":
            res = run_hf_trainer(read_jsonl(spec["train"]), read_jsonl(spec["test"]), spec["backbone"],
                                 Path(spec["workdir"]), epochs=spec["epochs"])
        else:
            from tunery import pipeline
            from tunery.config import config_from_dict

            cfg = config_from_dict(spec["config"], source="bench/multilabel.py config")
            t0 = time.perf_counter()
            run_dir = Path(pipeline.train(cfg))
            res = tunery_summary(run_dir, time.perf_counter() - t0)
    res["warnings"] = sink
    Path(out_file).write_text(json.dumps(res))


def compare(result: dict) -> dict:
    tu, base = result["tunery"]["test"], result["tunery"]["baseline"]["test"]
    hf = (result.get("hf_trainer") or {}).get("test") or {}
    out = {}
    for k in ("micro_f1", "macro_f1"):
        out[k] = {"tunery": tu.get(k), "baseline": base.get(k), "hf_trainer": hf.get(k),
                  "tunery_minus_baseline": round(tu[k] - base[k], 4) if k in tu and k in base else None,
                  "tunery_minus_hf_trainer": round(tu[k] - hf[k], 4) if k in tu and k in hf else None}
    if hf:
        out["ratio_wall_hf_over_tunery"] = round(result["hf_trainer"]["wall_s"] / result["tunery"]["wall_s"], 3)
    delta = out["macro_f1"]["tunery_minus_baseline"]
    out["target"] = {"rule": "tunery macro-F1 >= baseline macro-F1 + 0.05 on test",
                     "met": bool(delta is not None and delta >= 0.05 - 1e-9)}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA), help=f"CoNLL-2003 folder (default {DEFAULT_DATA})")
    ap.add_argument("--train-rows", type=int, default=None, help="seeded subsample of train (default: all)")
    ap.add_argument("--validation-rows", type=int, default=None,
                    help="seeded subsample of valid.txt (default: all; tunery evaluates on it every epoch)")
    ap.add_argument("--test-rows", type=int, default=None, help="seeded subsample of test.txt (default: all)")
    ap.add_argument("--seed", type=int, default=42, help="seed of the subsample (default 42)")
    ap.add_argument("--epochs", type=float, default=None,
                    help="epochs of tunery and the Trainer (default: tunery's default, which the Trainer uses too)")
    ap.add_argument("--skip-hf", action="store_true", help="tunery and its baseline only")
    ap.add_argument("--skip-tunery", action="store_true", help="the Trainer only (its figures do not depend on "
                                                                "tunery's defaults, so it can run once for several tunery runs)")
    ap.add_argument("--out", default=None, help="JSON file (default bench/results/multilabel-<time>.json; "
                                                 "none with --smoke)")
    ap.add_argument("--smoke", action="store_true", help="seconds: generated rows, the tiny test backbone, "
                                                          "a temporary directory; the figures mean nothing")
    args = ap.parse_args(argv)
    if args.skip_hf and args.skip_tunery:
        ap.error("--skip-hf and --skip-tunery leave nothing to run")
    for flag in ("train_rows", "validation_rows", "test_rows"):
        if getattr(args, flag) is not None and getattr(args, flag) < 10:
            ap.error(f"--{flag.replace('_', '-')} must be at least 10")

    started = time.time()
    out, result = start_result("multilabel-conll2003", "multilabel", args, argv)
    with tempfile.TemporaryDirectory(prefix="tunery-bench-") as tmp_s:
        tmp = Path(tmp_s)
        os.environ.setdefault("TUNERY_HOME", str(tmp / "home"))
        if args.smoke:
            backbone = smoke_backbone(tmp)
            result["backbone"] = {"alias": "tiny random BERT (tunery.testing, --smoke)", "path": backbone}
            split = {"train": smoke_rows(96, 0), "validation": smoke_rows(32, 1), "test": smoke_rows(32, 2)}
            epochs = args.epochs or 1
        else:
            from tunery.backbones import resolve_backbone

            backbone = resolve_backbone("minilm-l6")
            result["backbone"] = {"alias": "minilm-l6", "path": backbone}
            split = conll_multilabel(Path(args.data_dir))
            epochs = args.epochs
        for part, n in (("train", args.train_rows), ("validation", args.validation_rows), ("test", args.test_rows)):
            split[part] = subsample(split[part], n, args.seed)
        files = {k: write_jsonl(v, tmp / "data" / f"{k}.jsonl") for k, v in split.items()}
        result["data"] = {"source": "generated (--smoke)" if args.smoke else str(args.data_dir), "labels": LABELS,
                          "empty_label_set": "[] (no 'none' label)", "train_rows": args.train_rows,
                          "validation_rows": args.validation_rows, "test_rows": args.test_rows,
                          "seed": args.seed, **{k: label_stats(v) for k, v in split.items()}}
        result["loadavg_before"] = loadavg()
        if not args.skip_tunery:
            eprint(f"[multilabel] tunery (defaults) on {len(split['train'])} train rows ...")
            cfg = tunery_config(files, tmp / "runs", epochs=epochs, backbone=backbone if args.smoke else None)
            result["tunery"] = run_part("tunery", {"config": cfg}, tmp, script=__file__)
            result["loadavg_between"] = loadavg()
        if not args.skip_hf:
            hf_epochs = epochs if epochs is not None else _tunery_default_epochs()
            eprint(f"[multilabel] transformers.Trainer on the same {len(split['train'])} rows, {hf_epochs} epochs ...")
            result["hf_trainer"] = run_part("hf", {"train": str(files["train"]), "test": str(files["test"]),
                                                   "backbone": backbone, "workdir": str(tmp / "hf"),
                                                   "epochs": hf_epochs}, tmp, script=__file__)
            result["loadavg_after"] = loadavg()
        if "tunery" in result:
            result["comparison"] = compare(result)
    return write_result(result, out, started)


def _tunery_default_epochs() -> float:
    from tunery.config import TrainConfig

    return float(TrainConfig.model_fields["epochs"].default)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--_worker":
        worker(*sys.argv[2:])
    else:
        main()
