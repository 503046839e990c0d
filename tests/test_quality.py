"""Real quality, not only shapes: the packaged MiniLM fine-tuned on 2,000 SST-2 rows must beat the
TF-IDF baseline trained on the same rows, on the 872-row dev set."""

from __future__ import annotations

import csv
import json

import pandas as pd
import pytest

from tests.conftest import SHARED_DATA
from tunery import pipeline
from tunery.config import config_from_dict

SST2 = SHARED_DATA / "sst2"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (SST2 / "dev.tsv").exists(), reason=f"no SST-2 at {SST2}")]


def test_minilm_beats_the_tfidf_baseline_on_sst2_dev(tmp_path):
    train = pd.read_csv(SST2 / "train.tsv", sep="\t", quoting=csv.QUOTE_NONE).sample(n=2000, random_state=0)
    train.to_csv(tmp_path / "train2000.csv", index=False)
    cfg = config_from_dict({"name": "sst2-2000", "output_dir": str(tmp_path / "runs"),
                            "data": {"train": str(tmp_path / "train2000.csv"), "test": str(SST2 / "dev.tsv"),
                                     "validation_fraction": 0.1, "max_length": 64},
                            "model": {"backbone": "minilm-l6"},
                            # no word-by-word explanations in report.html: up to 30 s that move no metric
                            "evaluate": {"explanations": 0},
                            "train": {"epochs": 2, "progress": False}})  # lr: the backbone's default
    run = pipeline.train(cfg)
    m = json.loads((run / "metrics.json").read_text())
    model, baseline = m["model"]["test"], m["baseline"]["test"]
    assert model["n"] == 872
    print(f"SST-2 dev, 1,800 training rows: model {model['accuracy']:.4f}, baseline {baseline['accuracy']:.4f}")
    assert model["accuracy"] > baseline["accuracy"]
    assert model["accuracy"] >= 0.80
