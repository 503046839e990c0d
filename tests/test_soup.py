"""Greedy model soups (soup.py): the averaging and the greedy rule as plain functions; then a soup of
real tiny runs written as a run directory that loads, predicts and is recorded like any run."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import run_config
from tunery.errors import RunError
from tunery.soup import average, check_mixable, greedy_soup


def test_average_is_the_elementwise_mean_and_keeps_integer_buffers():
    a = {"w": torch.tensor([1.0, 2.0]), "h": torch.tensor([0.0], dtype=torch.bfloat16), "ids": torch.tensor([0, 1])}
    b = {"w": torch.tensor([3.0, 6.0]), "h": torch.tensor([1.0], dtype=torch.bfloat16), "ids": torch.tensor([5, 5])}
    out = average([a, b])
    assert torch.equal(out["w"], torch.tensor([2.0, 4.0]))
    assert out["h"].dtype == torch.bfloat16 and float(out["h"]) == 0.5
    assert torch.equal(out["ids"], torch.tensor([0, 1]))
    assert torch.equal(average([a])["w"], a["w"])


def test_greedy_soup_keeps_an_ingredient_only_where_validation_does_not_drop():
    quality = {"a": 0.80, "b": 0.78, "c": 0.60, "d": 0.79}

    def score(members):  # a soup scores the mean of its members, plus 0.02 for mixing two or more
        return sum(quality[m] for m in members) / len(members) + (0.02 if len(members) > 1 else 0.0)

    members, value, tried = greedy_soup(["a", "b", "c", "d"], score)
    assert members == ["a", "b", "d"] and value == pytest.approx(0.81)
    assert [(m, k) for m, _, k in tried] == [("a", True), ("b", True), ("c", False), ("d", True)]
    # lower is better: the same rule, the other way
    members, _, _ = greedy_soup(["x", "y"], lambda ms: {("x",): 0.3, ("x", "y"): 0.4}[tuple(ms)],
                                greater_is_better=False)
    assert members == ["x"]


def test_runs_that_do_not_share_an_architecture_are_refused():
    base = {"name": "a", "task": "classification", "method": "full", "backbone": "b", "label_names": ["n", "p"]}
    cfg = {"model": {"pooling": "mean"}}
    check_mixable([base, {**base, "name": "b"}], [cfg, cfg])
    for change, why in (({"task": "regression"}, "task is regression"), ({"method": "lora"}, "lora run"),
                        ({"backbone": "other"}, "backbone is other"), ({"label_names": ["x", "y"]}, "labels differ")):
        with pytest.raises(RunError, match=why):
            check_mixable([base, {**base, "name": "b", **change}], [cfg, cfg])
    with pytest.raises(RunError, match="pooling is cls"):
        check_mixable([base, {**base, "name": "b"}], [cfg, {"model": {"pooling": "cls"}}])


def test_a_soup_of_runs_is_a_run_that_loads_predicts_and_is_recorded(tiny_backbone, tmp_path):
    """A run souped with itself is itself (the average of equal weights): kept, since validation does
    not drop, and its metrics equal the run's; a second, different run joins only if validation holds."""
    import tunery
    from tunery import pipeline
    from tunery.soup import soup_run
    from tunery.store import Store

    a = pipeline.train(run_config(tmp_path, tiny_backbone, "a", epochs=3))
    b = pipeline.train(run_config(tmp_path, tiny_backbone, "b", epochs=2, lr=2e-3))
    run, info = soup_run([a, a], name="aa", output_dir=tmp_path / "runs")
    assert run is not None and info["members"] == ["a", "a"]
    got, want = (json.loads((r / "metrics.json").read_text()) for r in (run, a))
    assert got["model"]["validation"]["accuracy"] == pytest.approx(want["model"]["validation"]["accuracy"])
    assert got["training"]["soup"]["members"] == ["a", "a"] and got["baseline"] is not None
    assert tunery.load(run).predict(["great film", "awful plot"]) == tunery.load(a).predict(["great film", "awful plot"])
    assert Store().get_run("aa").status == "completed"
    assert "greedy soup of 2 runs" in (run / "report.html").read_text()

    run, info = soup_run([a, b], name="ab", output_dir=tmp_path / "runs")
    assert [t["run"] for t in info["tried"]] == ["a", "b"]
    kept = info["tried"][1]["kept"]
    assert (run is not None) == kept and info["soup_validation"] >= info["first_validation"]
    assert (tmp_path / "runs" / "ab").exists() == kept
