"""Which multi-label training defaults? Each variant against the others on three real multi-label sets.

    python bench/multilabel_ablation.py                      # every set, every variant, seed 42
    python bench/multilabel_ablation.py --sets pos --variants bce,asl --seeds 1,2
    python bench/multilabel_ablation.py --smoke              # seconds: does it still run? (figures mean nothing)

The sets, all from ../shared/data/conll2003 (the given train / valid / test files, seeded subsamples of
2,000 / 1,000 / 2,000 sentences):
  entities   the entity types a sentence contains (PER, ORG, LOC, MISC; 10-35 % positive each), as in
             bench/multilabel.py;
  rare       the same, with MISC and ORG made rare in train only (MISC kept on 2.5 % of the train rows,
             ORG on 5 %), the case where plain binary cross-entropy collapses onto "never";
  pos        18 labels "the sentence contains a word tagged X" for Penn tags from VBD (34 % of sentences)
             down to EX (1 %): many labels, most of them rare, like the 28-emotion sets users bring.
Every variant is tunery's defaults (minilm-l6, 3 epochs, thresholds tuned at each evaluation) with the
overrides named in VARIANTS; each run is a fresh process (bench/multilabel.py's worker). The table
compares validation and test micro/macro-F1 and each set's rarest labels' F1, beside tunery's own TF-IDF
baseline of the same run. Writes bench/results/multilabel-ablation-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import multilabel  # noqa: E402
from sst2 import eprint, run_part, smoke_backbone, start_result, write_result  # noqa: E402

POS_TAGS = ["VBD", "VB", "VBN", "RB", "VBG", "VBZ", "PRP$", "VBP", "MD", "NNPS", "RP", "WP", "WDT", "WRB",
            "JJR", "JJS", "RBR", "EX"]
RARE_KEEP = {"MISC": 0.025, "ORG": 0.05}  # share of train rows that keep the label (the rest are dropped)

# name -> train config overrides. "defaults..." are tunery's defaults as they are; every other variant
# pins epochs (3) and head_lr (the backbone's lr) unless it names them, so that the data-size
# defaults (pipeline.resolve_task_defaults) do not blur what each variant changes.
PINNED = {"epochs": 3, "head_lr": None}
VARIANTS: dict[str, dict] = {
    "defaults": {},
    "defaults+asl": {"multilabel_loss": "asl", "pos_weight_max": None},
    "defaults-pos_weight": {"pos_weight_max": None},
    "bce+pw10": {"pos_weight_max": 10.0, "label_prior_bias": False},
    "bce": {"pos_weight_max": None, "label_prior_bias": False},
    "focal": {"pos_weight_max": None, "multilabel_loss": "focal", "label_prior_bias": False},
    "asl": {"pos_weight_max": None, "multilabel_loss": "asl", "label_prior_bias": False},
    "bce+pw10+prior": {"pos_weight_max": 10.0, "label_prior_bias": True},
    "bce+pw10+prior+head_lr1e-3": {"pos_weight_max": 10.0, "label_prior_bias": True, "head_lr": 1e-3},
    "bce+pw10+head_lr1e-3": {"pos_weight_max": 10.0, "label_prior_bias": False, "head_lr": 1e-3},
    "asl+prior+head_lr1e-3": {"pos_weight_max": None, "multilabel_loss": "asl", "label_prior_bias": True,
                              "head_lr": 1e-3},
    "bce+pw10+prior+head_lr1e-3+10ep": {"pos_weight_max": 10.0, "label_prior_bias": True, "head_lr": 1e-3,
                                        "epochs": 10},
}


def pos_sentences(path: Path) -> list[dict]:
    """CoNLL-2003 sentences labelled with the POS_TAGS among their words' tags."""
    rows, tokens, tags = [], [], set()
    with open(path, encoding="utf-8") as f:
        for line in list(f) + [""]:
            parts = line.split()
            if not parts or parts[0] == "-DOCSTART-":
                if tokens:
                    rows.append({"text": " ".join(tokens), "labels": [t for t in POS_TAGS if t in tags]})
                tokens, tags = [], set()
                continue
            tokens.append(parts[0])
            tags.add(parts[1])
    return rows


def make_rare(rows: list[dict], seed: int) -> list[dict]:
    """`rows` with the labels of RARE_KEEP kept on at most that share of them: rows holding a label
    beyond its quota are dropped (not relabelled: a relabelled row would be a wrong label)."""
    rng = random.Random(seed)
    order = list(range(len(rows)))
    rng.shuffle(order)
    quota = {k: int(share * len(rows)) for k, share in RARE_KEEP.items()}
    keep = []
    for i in order:
        held = [k for k in RARE_KEEP if k in rows[i]["labels"]]
        if all(quota[k] > 0 for k in held):
            for k in held:
                quota[k] -= 1
            keep.append(i)
    return [rows[i] for i in sorted(keep)]


def build_set(name: str, data_dir: Path, n: dict, seed: int) -> tuple[dict[str, list[dict]], list[str]]:
    if name == "pos":
        split = {k: pos_sentences(data_dir / f) for k, f in multilabel.SPLITS.items()}
        labels = POS_TAGS
    else:
        split = multilabel.conll_multilabel(data_dir)
        labels = multilabel.LABELS
    out = {k: multilabel.subsample(v, n[k], seed) for k, v in split.items()}
    if name == "rare":
        out["train"] = multilabel.subsample(make_rare(split["train"], seed), n["train"], seed)
    return out, labels


def stats(rows: list[dict], labels: list[str]) -> dict:
    return {"rows": len(rows), "positives": {k: sum(k in r["labels"] for r in rows) for k in labels}}


def summarise(res: dict, rarest: list[str]) -> dict:
    def part(p: dict) -> dict:
        per = p.get("per_label_f1") or {}
        return {"micro_f1": p.get("micro_f1"), "macro_f1": p.get("macro_f1"),
                "rarest_f1": {k: per.get(k) for k in rarest}}

    return {"validation": part(res["validation"]), "test": part(res["test"]),
            "baseline_test": part(res["baseline"]["test"]), "best_step": res["best_step"], "steps": res["steps"],
            "train_seconds": res["train_seconds"], "thresholds": res.get("thresholds")}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(multilabel.DEFAULT_DATA))
    ap.add_argument("--sets", default="pos,rare,entities", help="comma-separated: entities, rare, pos")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads per run (default: all cores; 1 on a shared machine, where threads spin-wait)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated of: {', '.join(VARIANTS)}")
    ap.add_argument("--seeds", default="42", help="comma-separated training and subsample seeds")
    ap.add_argument("--rows", default="2000,1000,2000", help="train,validation,test subsample sizes")
    ap.add_argument("--out", default=None)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    sets, variants = args.sets.split(","), args.variants.split(",")
    bad = [v for v in variants if v not in VARIANTS] + [s for s in sets if s not in ("entities", "rare", "pos")]
    if bad:
        ap.error(f"unknown set or variant: {', '.join(bad)}")
    n = dict(zip(("train", "validation", "test"), (int(x) for x in args.rows.split(","))))
    started = time.time()
    out, result = start_result("multilabel-ablation", "multilabel-ablation", args, argv)
    result["variants"] = {v: VARIANTS[v] for v in variants}
    result["runs"] = []
    with tempfile.TemporaryDirectory(prefix="tunery-ablation-") as tmp_s:
        tmp = Path(tmp_s)
        os.environ.setdefault("TUNERY_HOME", str(tmp / "home"))
        backbone = smoke_backbone(tmp) if args.smoke else None
        for seed in (int(s) for s in args.seeds.split(",")):
            for set_name in sets:
                if args.smoke:
                    split = {k: multilabel.smoke_rows(m, i) for i, (k, m) in enumerate((("train", 64),
                             ("validation", 32), ("test", 32)))}
                    labels = multilabel.LABELS
                else:
                    split, labels = build_set(set_name, Path(args.data_dir), n, seed)
                counts = stats(split["train"], labels)["positives"]
                rarest = sorted(labels, key=counts.get)[:3]
                files = {k: multilabel.write_jsonl(v, tmp / "data" / f"{set_name}-{seed}-{k}.jsonl")
                         for k, v in split.items()}
                for variant in variants:
                    cfg = multilabel.tunery_config(files, tmp / "runs", epochs=1 if args.smoke else None,
                                                   backbone=backbone)
                    cfg["name"] = f"{set_name}-{variant}-{seed}"
                    cfg["train"].update(({} if variant.startswith("defaults") else PINNED) | VARIANTS[variant], seed=seed)
                    if args.threads:
                        cfg["train"]["num_threads"] = args.threads
                    eprint(f"[ablation] {cfg['name']} ...")
                    res = run_part("tunery", {"config": cfg}, tmp, script=multilabel.__file__)
                    row = {"set": set_name, "variant": variant, "seed": seed, "train_stats": counts,
                           **summarise(res, rarest)}
                    result["runs"].append(row)
                    eprint(f"[ablation] {cfg['name']}: val micro/macro {row['validation']['micro_f1']}/"
                           f"{row['validation']['macro_f1']} test {row['test']['micro_f1']}/{row['test']['macro_f1']}"
                           f" (baseline {row['baseline_test']['micro_f1']}/{row['baseline_test']['macro_f1']})")
                    if out is not None:  # partial results survive a stopped run
                        out.write_text(json.dumps(result, indent=1))
    result["table"] = table(result["runs"])
    return write_result(result, out, started)


def table(runs: list[dict]) -> list[dict]:
    """Per variant: the mean over sets and seeds of validation and test macro-F1, and its per-set test figures."""
    out = []
    for variant in dict.fromkeys(r["variant"] for r in runs):
        mine = [r for r in runs if r["variant"] == variant]
        mean = lambda xs: round(sum(xs) / len(xs), 4)  # noqa: E731
        out.append({"variant": variant,
                    "validation_macro_f1": mean([r["validation"]["macro_f1"] for r in mine]),
                    "test_macro_f1": mean([r["test"]["macro_f1"] for r in mine]),
                    "test_micro_f1": mean([r["test"]["micro_f1"] for r in mine]),
                    "per_set_test_macro_f1": {f"{r['set']}/{r['seed']}": r["test"]["macro_f1"] for r in mine}})
    return out


if __name__ == "__main__":
    main()
