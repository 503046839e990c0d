"""Shared fixtures: a tiny random BERT, small learnable datasets, an isolated store per test."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]

# Under pytest-xdist (`make test`: one worker per core) each worker, and every process it starts, gets
# its share of the cores: torch's default of every core per process would run 2 x 2 threads on 2
# cores, and OpenMP threads that wait for each other spin (tests ran many times slower).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
# The CLI's rich consoles take their width when tunery.cli is first imported, which under xdist may be
# outside any CliRunner call that sets COLUMNS: one width for the session, wide enough for its tables.
os.environ["COLUMNS"] = "200"
if _WORKERS > 1:
    _SHARE = str(max(1, (os.cpu_count() or 1) // _WORKERS))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, _SHARE)
    if "torch" in sys.modules:  # imported before this file: its thread pool is already sized
        sys.modules["torch"].set_num_threads(int(_SHARE))
# Reports without their plots (about a second of matplotlib a run, in every process a test starts): the
# tests of the figures themselves turn them back on (tests/test_evaluate_report.py, test_report_newcomer.py).
os.environ.setdefault("TUNERY_REPORT_FIGURES", "0")
SHARED_DATA = Path(os.environ.get("TUNERY_SHARED_DATA", REPO.parent / "shared" / "data"))

POS = ["great", "wonderful", "excellent", "lovely", "superb", "brilliant"]
NEG = ["awful", "terrible", "bad", "horrible", "dreadful", "boring"]
FILL = ["the", "film", "was", "plot", "acting", "really", "quite", "story", "a", "and"]
TOPICS = {"sports": ["goal", "match", "team", "score"], "food": ["pizza", "pasta", "salad", "soup"],
          "tech": ["laptop", "phone", "code", "chip"]}


def _sentence(rng: random.Random, words: list[str], n_fill: int = 4) -> str:
    # Signal words lead, in fixed slots: a 2-layer random BERT learns that in a few epochs.
    return " ".join(words + rng.sample(FILL, n_fill))


def make_dataset(kind: str, n: int = 240, seed: int = 0) -> pd.DataFrame:
    """Small datasets a tiny model learns in a few epochs."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        if kind == "binary":
            y = i % 2
            rows.append({"review": _sentence(rng, [rng.choice(POS if y else NEG)]) + f" {i}",
                         "label": "positive" if y else "negative"})
        elif kind == "multiclass":
            topic = list(TOPICS)[i % 3]
            rows.append({"text": _sentence(rng, [rng.choice(TOPICS[topic])]) + f" {i}", "category": topic})
        elif kind == "multilabel":
            chosen = [t for t in TOPICS if rng.random() < 0.5] or [list(TOPICS)[i % 3]]
            slots = [rng.choice(TOPICS[t]) if t in chosen else rng.choice(FILL) for t in TOPICS]
            rows.append({"text": _sentence(rng, slots) + f" {i}",
                         "tags": "|".join(chosen)})
        elif kind == "regression":
            slots = [rng.choice(POS) if rng.random() < 0.5 else rng.choice(FILL) for _ in range(3)]
            k = sum(w in POS for w in slots)
            rows.append({"text": _sentence(rng, slots) + f" {i}", "score": float(k) + rng.random() * 0.2})
        else:
            raise ValueError(kind)
    return pd.DataFrame(rows)


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> str:
    from tunery.testing import tiny_backbone as make

    return make(tmp_path_factory.mktemp("backbone") / "tiny-bert")


@pytest.fixture(scope="session")
def st_backbone(tiny_backbone, tmp_path_factory) -> str:
    """The tiny BERT dressed as a sentence-transformers checkpoint that pools by mean, as
    all-MiniLM-L6-v2 is: `model.pooling: auto` gives it the mean-pooling layer."""
    import json
    import shutil

    path = tmp_path_factory.mktemp("backbone") / "tiny-st"
    shutil.copytree(tiny_backbone, path)
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True}))
    return str(path)


@pytest.fixture(scope="session", autouse=True)
def session_store(tmp_path_factory):
    """A store for fixtures wider than one test, never the developer's own ./.tunery."""
    old = os.environ.get("TUNERY_HOME")
    os.environ["TUNERY_HOME"] = str(tmp_path_factory.mktemp("session-store"))
    os.environ.pop("TUNERY_DB_URL", None)
    yield
    if old is None:
        os.environ.pop("TUNERY_HOME", None)
    else:
        os.environ["TUNERY_HOME"] = old


@pytest.fixture(autouse=True)
def isolated_store(tmp_path, monkeypatch):
    """Each test gets its own store and working directory."""
    monkeypatch.setenv("TUNERY_HOME", str(tmp_path / ".tunery"))
    monkeypatch.delenv("TUNERY_DB_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_config(tmp_path, backbone, name, *, model=None, **train):
    """A RunConfig training `backbone` on the binary toy reviews (written once per test) with
    fast_train settings; `model` and `train` override."""
    from tunery.config import config_from_dict

    data = tmp_path / "reviews.csv"
    if not data.exists():
        make_dataset("binary", n=240).to_csv(data, index=False)
    return config_from_dict({"name": name, "output_dir": str(tmp_path / "runs"), "data": {"train": str(data)},
                             "model": {"backbone": backbone, **(model or {})}, "train": fast_train(**train)})


def fast_train(**extra) -> dict:
    """Training settings that make the tiny model learn the toy data in seconds."""
    cfg = {"epochs": 4, "batch_size": 16, "lr": 5e-3, "warmup_ratio": 0.1, "progress": False, "seed": 0,
           "early_stopping_patience": None,
           "precision": "fp32"}
    cfg.update(extra)
    return cfg


# Test files whose fixtures train real models or run studies, scheduled first: with `--dist loadfile`
# xdist hands out files in collection order, so the long ones start at once and the two workers end
# together instead of one finishing a long file alone at the end.
LONG_FIRST = ("test_multilabel_bench.py", "test_quality.py", "test_federated.py", "test_tune.py", "test_bench_smoke.py", "test_auto.py", "test_bench_smoke_serve.py",
              "test_distill.py", "test_compress.py", "test_explain.py", "test_resume.py", "test_server_postgres.py", "test_faults.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FIRST)))  # stable: the rest keep their order
