"""Each task end to end through the real CLI: init, validate, train, evaluate, predict."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.conftest import fast_train, make_dataset
from tests.integration.helpers import cli, write_config

CASES = {
    # kind: (file name, label column, task, metric, minimum on test)
    "binary": ("reviews.csv", "label", "classification", "accuracy", 0.9),
    "multiclass": ("topics.jsonl", "category", "classification", "accuracy", 0.9),
    "multilabel": ("tags.csv", "tags", "multilabel", "micro_f1", 0.7),  # 0.74-0.8 by thread count (30 test rows)
    "regression": ("scores.parquet", "score", "regression", "pearson", 0.8),
}


def _write(df: pd.DataFrame, path):
    if path.suffix == ".jsonl":
        df.to_json(path, orient="records", lines=True)
    elif path.suffix == ".parquet":
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, index=False)


@pytest.mark.parametrize("kind", list(CASES))
def test_task_end_to_end_through_cli(kind, tmp_path, tiny_backbone):
    fname, label_col, task, metric, floor = CASES[kind]
    data = tmp_path / fname
    _write(make_dataset(kind, n=300), data)

    init = cli("init", str(data), "--output", "run.yaml", "--backbone", tiny_backbone, cwd=tmp_path)
    assert "wrote run.yaml" in init.stdout
    starter = (tmp_path / "run.yaml").read_text()
    assert f"label_column: {label_col}" in starter and f"type: {task}" in starter

    cli("validate", str(data), cwd=tmp_path)
    sets = ["--set", f"name={kind}"] + [f"--set=train.{k}={v}" for k, v in fast_train(epochs=12, early_stopping_patience=None).items()]
    # one task trains through a real `python -m tunery` process; the other commands run in-process
    trained = cli("train", "run.yaml", "--no-progress", *sets, cwd=tmp_path, process=kind == "binary")
    run = tmp_path / "runs" / kind
    assert f"runs/{kind}" in trained.stdout and "tunery predict" in trained.stdout

    for name in ("config.yaml", "tunery.json", "metrics.json", "report.html", "log.jsonl", "model"):
        assert (run / name).exists(), name
    assert not (tmp_path / "runs" / f"{kind}.partial").exists()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["task"] == task
    assert metrics["model"]["test"][metric] >= floor, metrics["model"]["test"]
    assert metrics["baseline"]["test"][metric] is not None

    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(run / "model")
    assert model.config.problem_type == {"classification": "single_label_classification",
                                         "multilabel": "multi_label_classification",
                                         "regression": "regression"}[task]

    evaluated = cli("evaluate", str(run), "--data", str(data), "--json", cwd=tmp_path)
    result = json.loads(evaluated.stdout)
    assert result["n"] == 300 and result["model"][metric] >= floor
    assert (run / "evaluations" / data.name.split(".")[0] / "report.html").exists()

    out = tmp_path / "predictions.jsonl"
    cli("predict", str(run), "--input", str(data), "--output", str(out), "--batch-rows", "64", cwd=tmp_path)
    preds = pd.read_json(out, lines=True)
    assert len(preds) == 300
    column = {"classification": "pred_label", "multilabel": "pred_labels", "regression": "pred_value"}[task]
    assert column in preds.columns
    meta = json.loads((run / "tunery.json").read_text())
    if task == "classification":
        assert (preds["pred_label"].astype(str) == preds[label_col].astype(str)).mean() >= floor
        prob_cols = [c for c in preds.columns if c.startswith("pred_prob_")]
        assert preds[prob_cols].sum(axis=1).round(4).eq(1.0).all()
    elif task == "multilabel":
        # the thresholds tuned on validation (per label, where tunery.json has them) are those prediction uses
        assert meta["threshold"] == metrics["threshold"] and meta["thresholds"] == metrics["thresholds"]
        decide = meta["thresholds"] if meta["thresholds"] is not None else meta["threshold"]
        chosen = preds[[f"pred_prob_{n}" for n in meta["label_names"]]].to_numpy() >= decide
        expected = ["|".join(n for n, c in zip(meta["label_names"], row) if c) for row in chosen]
        assert preds["pred_labels"].fillna("").astype(str).tolist() == expected
    else:
        # predictions are in the target's units, from tunery and from plain transformers alike
        import numpy as np
        import torch
        from transformers import AutoTokenizer

        err = (preds["pred_value"] - preds[label_col]).abs()
        assert err.mean() < 0.5 * preds[label_col].std()
        tok = AutoTokenizer.from_pretrained(run / "model")
        with torch.no_grad():
            raw = model(**tok(preds["text"][:8].tolist(), padding=True, return_tensors="pt")).logits[:, 0]
        assert np.allclose(raw.numpy(), preds["pred_value"][:8].to_numpy(), atol=1e-4)
