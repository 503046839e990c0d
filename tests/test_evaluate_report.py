import re

import numpy as np
import pytest

from tunery.evaluate.metrics import compute_metrics
from tunery.evaluate.report import write_report

EVIL = "<script>alert('x')</script>"


def _case(task, rng):
    n = 40
    texts = [f"example {i}" for i in range(n)]
    texts[0] = EVIL
    if task == "classification":
        names = ["neg", "pos"]
        y = rng.integers(0, 2, n)
        y[0] = 0
        p1 = np.clip(0.7 * y + 0.3 * rng.random(n), 0, 1)
        p1[0] = 0.99  # confident mistake: its text must show up escaped
        scores = np.stack([1 - p1, p1], axis=1)
    elif task == "multilabel":
        names = ["a", "b", "c"]
        y = (rng.random((n, 3)) < 0.4).astype(int)
        scores = np.clip(0.6 * y + 0.4 * rng.random((n, 3)), 0, 1)
        y[0], scores[0] = [0, 0, 0], [0.99, 0.1, 0.1]
    else:
        names = []
        y = rng.normal(size=n)
        scores = y + 0.3 * rng.normal(size=n)
        scores[0] = y[0] + 10
    return names, texts, y, scores


def _write(tmp_path, task):
    rng = np.random.default_rng(0)
    names, texts, y, scores = _case(task, rng)
    metrics = {s: compute_metrics(task, y, scores, names) for s in ("validation", "test")}
    base_scores = scores[::-1].copy() if task != "regression" else np.zeros_like(scores)
    baseline = {s: compute_metrics(task, y, base_scores, names) for s in ("validation", "test")}
    history = [{"step": s, "epoch": s / 10, "loss": 1 / s, "lr": 1e-4} for s in range(1, 20)]
    history += [{"step": s, "split": "validation", "loss": 1 / s, **metrics["validation"]}
                for s in (10, 19)]
    path = tmp_path / "run" / "report.html"
    write_report(path, title="My <run>", run_info={"backbone": "minilm-l6", "data": {"train": "t.csv"},
                                                   "train_seconds": 12.5},
                 task=task, label_names=names, metrics=metrics, baseline=baseline,
                 predictions={s: (texts, y, scores) for s in ("validation", "test")},
                 history=history)
    return path.read_text(encoding="utf-8"), metrics


@pytest.fixture(scope="module", autouse=True)
def _figures_on():
    """This file tests the figures: draw them (tests/conftest.py turns them off elsewhere)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNERY_REPORT_FIGURES", "1")
        yield


@pytest.fixture(scope="module", params=["classification", "multilabel", "regression"])
def report(request, tmp_path_factory):
    """(task, html, metrics) of one report per task, shared by the tests below."""
    html, metrics = _write(tmp_path_factory.mktemp(request.param), request.param)
    return request.param, html, metrics


def test_report_is_written_with_numbers_and_embedded_images(report):
    task, html, metrics = report
    key = {"classification": "accuracy", "multilabel": "micro_f1", "regression": "rmse"}[task]
    assert f"{metrics['test'][key]:.4f}" in html
    assert "minilm-l6" in html and "baseline" in html
    images = re.findall(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+"', html)
    assert len(images) >= 3  # training curves + a figure per split


def test_report_has_no_external_references(report):
    _, html, _ = report
    assert not re.search(r"https?://", html)
    assert not re.search(r'(src|href)="(?!data:)', html)


def test_report_escapes_user_text(report):
    _, html, _ = report
    assert "<script>" not in html
    assert "&lt;script&gt;" in html  # the confident mistake's text, shown escaped
    assert "My &lt;run&gt;" in html


def test_report_has_the_figures_of_its_task(report):
    task, html, _ = report
    alts = {"classification": ["confusion matrix", "reliability", "ROC and PR curves"],
            "multilabel": ["F1 per label"], "regression": ["predicted vs true"]}[task]
    for alt in alts:
        assert f'alt="{alt}, test"' in html
    assert 'alt="training curves"' in html


def test_baseline_difference_is_shown(report):
    task, html, _ = report
    assert "Δ model − baseline" in html


def test_report_lists_mistakes(report):
    task, html, _ = report
    assert ("Largest errors" if task == "regression" else "Most confident mistakes") in html
    assert html.index("&lt;script&gt;") > html.index("mistakes" if task != "regression" else "errors")


def test_report_without_baseline_or_history(tmp_path):
    rng = np.random.default_rng(1)
    names, texts, y, scores = _case("classification", rng)
    path = tmp_path / "r.html"
    write_report(path, title="t", run_info={}, task="classification", label_names=names,
                 metrics={"test": compute_metrics("classification", y, scores, names)},
                 baseline=None, predictions={"test": (texts, y, scores)}, n_errors=0)
    html = path.read_text(encoding="utf-8")
    assert "No baseline" in html and "Most confident mistakes" not in html
    assert not list(tmp_path.glob(".r.html.*"))  # no temp file left behind


def test_a_report_without_figures_keeps_its_numbers_and_says_why(monkeypatch):
    from tunery.evaluate.report import render_report

    rng = np.random.default_rng(0)
    names, texts, y, scores = _case("classification", rng)
    m = compute_metrics("classification", y, scores, names)
    kwargs = dict(title="t", run_info={}, task="classification", label_names=names, metrics={"test": m},
                  baseline=None, predictions={"test": (texts, y, scores)},
                  history=[{"step": s, "loss": 1 / s} for s in range(1, 5)])
    for html in (render_report(**kwargs, figures=False),  # evaluate.figures: false
                 (monkeypatch.setenv("TUNERY_REPORT_FIGURES", "0"), render_report(**kwargs))[1]):
        assert "<img" not in html and "Figures not drawn" in html
        assert f"{m['accuracy']:.4f}" in html and "Most confident mistakes" in html
    monkeypatch.setenv("TUNERY_REPORT_FIGURES", "1")
    assert "<img" in render_report(**kwargs)
