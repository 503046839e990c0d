"""report.html's Explanations (issue 13): the most confident mistakes and a few correct predictions of
the test split, each with its words coloured by attribution (Integrated Gradients; occlusion where
there are no gradients or no Captum); a report is written whatever explaining does. One tiny run
trained for the module; the rest reuse its model."""

from __future__ import annotations

import logging
import re
import sys
import types

import numpy as np
import pytest

from tests.conftest import fast_train, make_dataset

COLOURED = re.compile(r'<mark style="background:rgba\(')


@pytest.fixture(scope="module")
def run(tiny_backbone, tmp_path_factory):
    """A tiny binary run with one label in five flipped: its test split has mistakes to explain."""
    from tunery.config import config_from_dict
    from tunery.pipeline import train

    tmp = tmp_path_factory.mktemp("explain-report")
    df = make_dataset("binary", n=200)
    flip = df.index % 5 == 0
    df.loc[flip, "label"] = df.loc[flip, "label"].map({"positive": "negative", "negative": "positive"})
    df.to_csv(tmp / "reviews.csv", index=False)
    cfg = config_from_dict({"name": "explained", "output_dir": str(tmp / "runs"),
                            "data": {"train": str(tmp / "reviews.csv")},
                            "model": {"backbone": tiny_backbone}, "train": fast_train(epochs=2),
                            "evaluate": {"explanations": 4}})  # 3 mistakes and 1 correct prediction
    return train(cfg)


@pytest.fixture(scope="module")
def model(run):
    import tunery

    return tunery.load(run)


def _section(html: str) -> str:
    assert '<h2 id="explanations">Explanations</h2>' in html
    return html.split('<h2 id="explanations">Explanations</h2>')[1].split("<h2>")[0]


def test_run_report_explains_mistakes_and_correct_predictions(run):
    html = (run / "report.html").read_text(encoding="utf-8")
    section = _section(html)
    assert "Integrated Gradients" in section and "<b>test</b> split" in section
    assert "the label the model <b>predicted</b>" in section  # a mistake explains what it said, and says so
    items = re.findall(r'<div class="tx-item tx-(mistake|correct)">(.*?)</div></div></div>', section, re.S)
    kinds = [k for k, _ in items]
    assert kinds == ["mistake"] * 3 + ["correct"]
    for kind, body in items:
        assert body.count("<mark ") >= 6 and COLOURED.search(body), body  # each word a mark, coloured by its score
        true, pred = re.search(r"true <b>(\w+)</b> · predicted <b>(\w+)</b>", body).groups()
        assert (true != pred) == (kind == "mistake")
        # the explained label is the predicted one, the mistake's too
        assert re.search(rf"explained: {pred} [01]\.\d{{4}} by ig", body), body
        assert re.search(r"row \d+ in <span", body)  # traced to the user's file
    assert "completeness gap" in section and re.search(r"4 explanations in \d+\.\d s", section)
    assert ".tx-expl" in html.split("</style>")[0]  # the explanations' style, in the page's head


def _examples(model):
    df = make_dataset("binary", n=12, seed=3)
    texts = df["review"].tolist()
    y = (df["label"] == "positive").to_numpy(dtype=int)
    y[:3] = 1 - y[:3]  # some mistakes, whatever the model learnt
    return texts, y, model.predict_scores(texts)


def test_without_captum_the_report_explains_by_occlusion(model, monkeypatch):
    from tunery.evaluate.report import render_report
    from tunery.pipeline import report_explanations

    monkeypatch.setitem(sys.modules, "captum", None)  # `import captum...` raises ImportError
    monkeypatch.delitem(sys.modules, "captum.attr", raising=False)
    texts, y, scores = _examples(model)
    section = report_explanations(model, "test", texts, None, y, scores, n=4, threshold=0.5)
    assert section["method"] == "occlusion" and "pip install 'tunery[explain]'" in section["note"]
    assert {it["explanation"].method for it in section["items"]} == {"occlusion"}
    html = render_report(title="t", run_info={}, task="classification", label_names=model.label_names,
                         metrics={}, baseline=None, predictions={}, explanations=section)
    part = _section(html)
    assert "leave-one-out occlusion" in part and "pip install &#x27;tunery[explain]&#x27;" in part
    assert COLOURED.search(part)


def test_a_backend_without_gradients_explains_by_occlusion(model, monkeypatch):
    from tunery.pipeline import report_explanations

    monkeypatch.setattr(model, "supports_gradients", False, raising=False)  # as an ONNX run
    monkeypatch.setitem(model.meta, "backend", "onnx")
    texts, y, scores = _examples(model)
    section = report_explanations(model, "test", texts, None, y, scores, n=3, threshold=0.5)
    assert section["method"] == "occlusion" and "onnx run has no gradients" in section["note"]
    assert len(section["items"]) == 3


def test_a_failing_integrated_gradients_falls_back_to_occlusion(model, monkeypatch, caplog):
    import tunery.explain.methods as M
    from tunery.pipeline import report_explanations

    def broken(*a, **k):
        raise RuntimeError("no embeddings here")

    monkeypatch.setattr(M, "integrated_gradients", broken)
    texts, y, scores = _examples(model)
    with caplog.at_level(logging.WARNING, logger="tunery.pipeline"):
        section = report_explanations(model, "test", texts, None, y, scores, n=3, threshold=0.5)
    assert section["method"] == "occlusion" and "no embeddings here" in section["note"]
    assert "Integrated Gradients failed" in caplog.text


def test_report_is_written_without_the_section_when_explaining_fails(run, monkeypatch, caplog):
    import tunery.explain
    from tunery.pipeline import evaluate_run

    def broken(*a, **k):
        raise RuntimeError("explainer exploded")

    monkeypatch.setattr(tunery.explain, "explain", broken)
    with caplog.at_level(logging.WARNING, logger="tunery.pipeline"):
        result = evaluate_run(run)
    html = (run / "evaluations" / "test" / "report.html").read_text(encoding="utf-8")
    assert "Most confident mistakes" in html and 'id="explanations"' not in html
    assert "report.html has no explanations" in caplog.text and "explainer exploded" in caplog.text
    assert result["n"] > 0


def test_nothing_is_explained_for_a_tfidf_run_or_with_explanations_0(model):
    from tunery.pipeline import report_explanations

    texts, y, scores = _examples(model)
    tfidf = types.SimpleNamespace(explainable=False, meta={"task": "classification", "backend": "tfidf"})
    assert report_explanations(tfidf, "test", texts, None, y, scores, n=8, threshold=0.5) is None

    def never():
        raise AssertionError("no predictor is built when nothing is to be explained")

    assert report_explanations(never, "test", texts, None, y, scores, n=0, threshold=0.5) is None


def test_a_long_text_is_shown_as_far_as_the_model_read_it(model):
    from tunery.pipeline import report_explanations

    long = " ".join(["great film"] * 400)  # far past max_length 128
    scores = model.predict_scores([long])
    section = report_explanations(model, "test", [long], None, np.array([1]), scores, n=1, threshold=0.5)
    e = section["items"][0]["explanation"]
    assert e.truncated and e.text.endswith(" …") and len(e.text) < len(long) / 3
    assert e.text[:-2] == long[:len(e.text) - 2] and max(w.end for w in e.words) == len(e.text) - 2


# -- which examples ---------------------------------------------------------------------------------
def test_examples_are_mistakes_first_then_correct_ones_from_each_class():
    from tunery.evaluate.errors import examples_to_explain

    y = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 0])
    P = np.full((10, 3), 0.1)
    pred = [1, 0, 0, 1, 1, 2, 2, 2, 2, 0]
    conf = [0.9, 0.8, 0.7, 0.6, 0.75, 0.85, 0.95, 0.65, 0.7, 0.5]
    P[np.arange(10), pred] = conf
    out = examples_to_explain("classification", [f"t{i}" for i in range(10)], y, P, ["a", "b", "c"], n=8)
    kinds = [e["kind"] for e in out]
    assert kinds == ["mistake"] * 2 + ["correct"] * 6  # 2 mistakes only: the other slots go to correct ones
    assert [e["index"] for e in out[:2]] == [0, 5] and [e["target"] for e in out[:2]] == ["b", "c"]
    # correct ones: the most confident of each predicted class in turn (c 0.95, a 0.8, b 0.75, ...)
    assert [e["index"] for e in out[2:]] == [6, 1, 4, 8, 2, 3]
    assert all(e["target"] == e["predicted"] == e["true"] for e in out[2:])
    assert len(examples_to_explain("classification", ["x"] * 10, y, P, ["a", "b", "c"], n=3)) == 3
    assert examples_to_explain("classification", ["x"] * 10, y, P, ["a", "b", "c"], n=0) == []


def test_examples_of_multilabel_and_regression_runs():
    from tunery.evaluate.errors import examples_to_explain

    Y = np.array([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0]])
    P = np.array([[0.9, 0.2], [0.1, 0.3], [0.8, 0.7], [0.2, 0.1], [0.95, 0.05]])
    out = examples_to_explain("multilabel", list("abcde"), Y, P, ["x", "y"], n=4, threshold=0.5)
    assert [(e["kind"], e["index"], e["target"]) for e in out][0] == ("mistake", 1, "y")  # the missed label
    correct = [e for e in out if e["kind"] == "correct"]
    assert correct and correct[0]["index"] == 4 and correct[0]["target"] == "x"
    assert all(e["predicted"] == e["true"] for e in correct)

    y = np.linspace(0, 10, 40)
    p = y + np.where(np.arange(40) % 7 == 0, 3.0, np.random.default_rng(0).uniform(0, 0.05, 40))
    out = examples_to_explain("regression", [str(i) for i in range(40)], y, p, [], n=8)
    assert [e["kind"] for e in out] == ["mistake"] * 5 + ["correct"] * 3
    assert all(e["target"] is None for e in out) and all(e["error"] < 0.1 for e in out[5:])
    values = [e["true"] for e in out[5:]]
    assert values == sorted(values) and values[-1] - values[0] > 5  # spread over the target's range


@pytest.mark.parametrize("task", ["multilabel", "regression"])
def test_multilabel_and_regression_reports_explain_their_targets(tiny_backbone, task, monkeypatch):
    """An untrained head on the tiny BERT is enough: what is explained, and that the page renders."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import tunery.explain.methods as M
    from tunery.evaluate.report import render_report
    from tunery.pipeline import report_explanations
    from tunery.predict import Predictor

    names = ["sports", "food", "tech"] if task == "multilabel" else []
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_backbone, num_labels=len(names) or 1,
        problem_type="multi_label_classification" if names else "regression").eval()
    meta = {"task": task, "label_names": names, "max_length": 32, "text_column": "text", "threshold": 0.5}
    predictor = Predictor(model, AutoTokenizer.from_pretrained(tiny_backbone), meta)
    texts = [f"the goal and pizza {i}" for i in range(10)]
    scores = predictor.predict_scores(texts)
    if task == "multilabel":
        y = (scores >= 0.5).astype(int)
        y[:3, 0] = 1 - y[:3, 0]  # three mistakes on "sports"
    else:
        y = scores + np.where(np.arange(10) < 3, 2.0, 0.01)
    monkeypatch.setitem(M.OPTIONS["ig"], "steps", 8)  # fewer IG steps: this test checks targets, not IG
    section = report_explanations(predictor, "test", texts, None, y, scores, n=4, threshold=0.5)
    kinds = [it["kind"] for it in section["items"]]
    assert kinds == ["mistake"] * 3 + ["correct"] and section["method"] == "ig"
    assert section["items"][0]["explanation"].params["steps"] == 8
    targets = [it["explanation"].target for it in section["items"]]
    if task == "multilabel":
        assert targets[:3] == ["sports"] * 3  # the label it was wrong about
        assert all(t == names[int(np.argmax(scores[it["index"]]))] for t, it in zip(targets[3:], section["items"][3:]))
    else:
        assert targets == [None] * 4
        assert all(abs(it["explanation"].score - scores[it["index"]]) < 1e-4 for it in section["items"])
    html = render_report(title="t", run_info={}, task=task, label_names=names, metrics={}, baseline=None,
                         predictions={}, explanations=section)
    part = _section(html)
    assert part.count("<mark ") >= 2 + 4 * 5 and len(COLOURED.findall(part)) >= 2 + 4  # the legend, 5 words each
    assert ("Largest errors" in part and "Closest predictions" in part) if task == "regression" else \
        "most confidently wrong about" in part
