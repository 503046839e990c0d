"""Federated benchmark (issue 15): an SST-2 slice split across clients, each federation on real Flower
processes (`tunery federate`: a SuperLink and one SuperNode per client on 127.0.0.1), beside
centralised fine-tuning on the same rows, all scored on SST-2 dev, in one run.

    python bench/federated.py                       # 8,000 rows, 4 clients, 4 rounds of 1 local epoch
    python bench/federated.py --runs central-lora,iid-fedavg,dir-fedprox --rounds 3
    python bench/federated.py --smoke               # the tiny backbone on generated rows; figures mean nothing

Runs (--runs picks some; default all):
- central-lora, central-full: tunery train on the whole slice, LoRA (on the adapters a federation
  trains by default: query and value) or full fine-tuning, for as many epochs as a client trains its
  share over all rounds (rounds x local epochs);
- iid-fedavg, iid-fedavgm, iid-fedprox, iid-fedadam: the slice shuffled into equal clients, LoRA updates;
- dir-fedavg, dir-fedavgm, dir-fedprox, dir-fedadam: split by a Dirichlet(alpha) over labels (non-IID), LoRA updates;
- iid-fedavg-full: full-model updates (bytes against LoRA's);
- iid-fedavg-dp: record-level DP-SGD in every client (train.dp), its epsilon;
- iid-fedavg-secagg: Flower's SecAgg+ (the server sees only the sum), its cost in time and bytes.

A federated client trains on its rows less data.validation_fraction (its own validation rows, which
score the global model each round), as the centralised runs do on the slice. Every run uses tunery's
defaults otherwise (backbone learning rates, batch 32); --set applies overrides to all.

Targets: IID within 1 point of centralised, alpha 0.5 within 3 points with the best strategy, LoRA
updates >= 100x fewer bytes than full (each compared with centralised training of the same kind).

Prints one JSON object on stdout (logs on stderr) and writes it to bench/results/federated-<time>.json
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

from sst2 import (DEFAULT_DATA, eprint, loadavg, read_tsv, smoke_backbone, start_result, take_slice,  # noqa: E402
                  write_result, write_smoke_data, write_tsv)

RUNS = {
    "central-lora": {"central": "lora"},
    "central-full": {"central": "full"},
    "iid-fedavg": {"federated.partition": "iid", "federated.strategy": "fedavg"},
    "iid-fedavgm": {"federated.partition": "iid", "federated.strategy": "fedavgm"},
    "iid-fedprox": {"federated.partition": "iid", "federated.strategy": "fedprox"},
    "iid-fedadam": {"federated.partition": "iid", "federated.strategy": "fedadam"},
    "dir-fedavg": {"federated.partition": "dirichlet", "federated.strategy": "fedavg"},
    "dir-fedavgm": {"federated.partition": "dirichlet", "federated.strategy": "fedavgm"},
    "dir-fedprox": {"federated.partition": "dirichlet", "federated.strategy": "fedprox"},
    "dir-fedadam": {"federated.partition": "dirichlet", "federated.strategy": "fedadam"},
    "iid-fedavg-full": {"federated.partition": "iid", "federated.updates": "full"},
    "iid-fedavg-dp": {"federated.partition": "iid", "train.dp.noise_multiplier": 1.0, "train.dp.max_grad_norm": 1.0},
    "iid-fedavg-secagg": {"federated.partition": "iid", "federated.secure_aggregation": True},
}


def base_tree(train_file: Path, runs_dir: Path, name: str, args, backbone: str | None) -> dict:
    tree = {"name": name, "output_dir": str(runs_dir),
            "data": {"train": str(train_file), "text_column": "sentence", "label_column": "label"},
            "train": {"progress": False, "seed": args.seed},
            "evaluate": {"baseline": False, "explanations": 0}}
    if backbone:
        tree["model"] = {"backbone": backbone}
    return tree


def run_one(name: str, train_file: Path, dev, runs_dir: Path, args, backbone: str | None) -> dict:
    from tunery.config import apply_overrides, config_from_dict

    spec = dict(RUNS[name])
    tree = base_tree(train_file, runs_dir, f"bench-{name}", args, backbone)
    t0 = time.perf_counter()
    if "central" in spec:
        from tunery.pipeline import train

        from tunery.federated.run import lean_lora_targets

        tree["model"] = {**tree.get("model", {}), "method": spec.pop("central")}
        if tree["model"]["method"] == "lora":  # the adapters a federation trains by default
            tree["model"]["lora"] = {"target_modules": lean_lora_targets(backbone or "minilm-l6")}
        tree["data"]["test_fraction"] = 0.0
        tree["train"]["epochs"] = args.rounds * args.local_epochs
        apply_overrides(tree, list(args.set))
        run_dir = Path(train(config_from_dict(tree, source="bench/federated.py")))
        entry = {"kind": "centralised", "method": tree["model"]["method"]}
    else:
        from tunery.federated.run import federate
        from tunery.store import Store

        tree["federated"] = {"clients": args.clients, "rounds": args.rounds, "local_epochs": args.local_epochs,
                             "alpha": args.alpha, "round_timeout": 3600}
        apply_overrides(tree, [f"{k}={v}" for k, v in spec.items()] + list(args.set))
        run_dir = Path(federate(config_from_dict(tree, source="bench/federated.py"),
                                store=Store(f"sqlite:///{runs_dir / 'bench.db'}")))
        entry = federated_figures(run_dir)
    entry["wall_s"] = round(time.perf_counter() - t0, 1)
    import yaml

    entry["lr"] = yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["lr"]  # the rate it trained at
    entry["dev_accuracy"] = dev_accuracy(run_dir, dev)
    entry["run_dir"] = str(run_dir)
    return entry


def federated_figures(run_dir: Path) -> dict:
    m = json.loads((run_dir / "metrics.json").read_text())["federated"]
    rounds = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    trained = [r for r in rounds if r["round"] >= 1]
    out = {"kind": "federated", "strategy": m["strategy"], "updates": m["updates"], "rows": m["rows"],
           "update_bytes": m["update_bytes"], "tensor_bytes": m["tensor_bytes"],
           "bytes_per_round": {"sent": [r["bytes_sent"] for r in trained],
                               "received": [r["bytes_received"] for r in trained]},
           "bytes_sent": m["bytes_sent"], "bytes_received": m["bytes_received"],
           "validation_per_round": [r["eval_metric"] for r in rounds],
           "train_seconds_per_round": [r["train_seconds"] for r in trained], "dropped": m["dropped"],
           "federation_wall_s": m["wall_seconds"], "kept_round": m.get("kept_round", m["rounds"])}
    if m.get("record_dp"):
        out["record_dp"] = m["record_dp"]
    if m.get("secure_aggregation"):
        out["secure_aggregation"] = m["secure_aggregation"]
    return out


def dev_accuracy(run_dir: Path, dev) -> float:
    import tunery

    predictor = tunery.load(run_dir)
    labels = [str(p["label"]) for p in predictor.predict(dev["sentence"].astype(str).tolist())]
    return round(sum(a == str(b) for a, b in zip(labels, dev["label"])) / len(dev), 4)


def summary(rows: dict, clients: int) -> dict:
    def points(a: str, b: str) -> float | None:
        if a in rows and b in rows:
            return round(100 * (rows[a]["dev_accuracy"] - rows[b]["dev_accuracy"]), 2)
        return None

    out: dict = {"dev_accuracy": {k: v["dev_accuracy"] for k, v in rows.items()}}
    for part in ("iid", "dir"):
        fed = {k: v for k, v in rows.items() if k.startswith(part) and v.get("updates") == "lora"
               and "record_dp" not in v and "secure_aggregation" not in v}
        if fed and "central-lora" in rows:
            best = max(fed, key=lambda k: fed[k]["dev_accuracy"])
            out[f"{part}_best"] = best
            out[f"{part}_best_points_vs_central_lora"] = points(best, "central-lora")
    if "iid-fedavg-full" in rows and "central-full" in rows:
        out["iid_full_points_vs_central_full"] = points("iid-fedavg-full", "central-full")
    lora = next((v for k, v in rows.items() if v.get("updates") == "lora"), None)
    full = rows.get("iid-fedavg-full")
    if lora and full:
        out["full_over_lora_bytes"] = round(full["update_bytes"] / lora["update_bytes"], 1)
    if "iid-fedavg-dp" in rows:
        out["dp_epsilon"] = rows["iid-fedavg-dp"]["record_dp"]["epsilon"]
        out["dp_points_vs_iid_fedavg"] = points("iid-fedavg-dp", "iid-fedavg")
    if "iid-fedavg-secagg" in rows and "iid-fedavg" in rows:
        out["secagg_wall_vs_iid_fedavg"] = round(rows["iid-fedavg-secagg"]["wall_s"] / rows["iid-fedavg"]["wall_s"], 2)
        out["secagg_points_vs_iid_fedavg"] = points("iid-fedavg-secagg", "iid-fedavg")
    iid, dirichlet = out.get("iid_best_points_vs_central_lora"), out.get("dir_best_points_vs_central_lora")
    out["targets"] = {"iid_within_1_point": None if iid is None else iid >= -1.0,
                      "dirichlet_within_3_points": None if dirichlet is None else dirichlet >= -3.0,
                      "lora_100x_fewer_bytes": None if "full_over_lora_bytes" not in out
                      else out["full_over_lora_bytes"] >= 100}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA), help=f"SST-2 directory (default {DEFAULT_DATA})")
    ap.add_argument("--rows", type=int, default=8000, help="training rows, a seeded sample of train (default 8000)")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--local-epochs", type=float, default=1.0)
    ap.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration of the dir-* runs (default 0.5)")
    ap.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated (default {','.join(RUNS)})")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every run")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", default=None, help="JSON file (default bench/results/federated-<time>.json)")
    ap.add_argument("--smoke", action="store_true", help="the tiny backbone on generated rows; figures mean nothing")
    args = ap.parse_args(argv)
    names = [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = [r for r in names if r not in RUNS]
    if unknown or not names:
        ap.error(f"--runs: {', '.join(unknown) or '(none)'} not among {', '.join(RUNS)}")

    started = time.time()
    out, result = start_result("federated", "federated", args, argv)
    with tempfile.TemporaryDirectory(prefix="tunery-federated-bench-") as tmp_s:
        tmp = Path(tmp_s)
        os.environ["TUNERY_HOME"] = str(tmp / "home")  # a throwaway store: the bench's runs are not the user's
        os.environ.pop("TUNERY_DB_URL", None)
        backbone = None
        if args.smoke:
            backbone = smoke_backbone(tmp)
            data_dir = write_smoke_data(tmp / "data", train_rows=96, dev_rows=16)
            args.rows, args.clients, args.rounds = 96, 2, 1
            train_file = data_dir / "train.tsv"
        else:
            data_dir = Path(args.data_dir)
            train_file = tmp / "slice.tsv"
            write_tsv(take_slice(data_dir / "train.tsv", args.rows, args.seed), train_file)
        dev = read_tsv(data_dir / "dev.tsv")
        result["settings"] = {"rows": args.rows, "clients": args.clients, "rounds": args.rounds,
                              "local_epochs": args.local_epochs, "alpha": args.alpha, "overrides": args.set,
                              "seed": args.seed, "data": str(data_dir), "dev_rows": len(dev)}
        result["loadavg_before"] = loadavg()
        rows = {}
        for name in names:
            eprint(f"[{name}] ...")
            rows[name] = run_one(name, train_file, dev, tmp / "runs", args, backbone)
            eprint(f"[{name}] dev accuracy {rows[name]['dev_accuracy']:.4f} in {rows[name]['wall_s']:.0f} s")
            result["runs"] = rows
            if out is not None:  # a long bench: what is done so far survives a crash of a later run
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        result["summary"] = summary(rows, args.clients)
        result["loadavg_after"] = loadavg()
    return write_result(result, out, started)


if __name__ == "__main__":
    main()
