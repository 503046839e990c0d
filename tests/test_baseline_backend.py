"""The TF-IDF baseline as a run of its own (`tunery baseline`, backend "tfidf"): saved without
pickle, loaded with identical scores, and accepted wherever a run is (predict, evaluate, the
registry, tunery.load, TextClassifier, serve). No transformer is trained here."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import make_dataset
from tests.integration.helpers import cli

KINDS = {"binary": ("classification", "review", "label"), "multiclass": ("classification", "text", "category"),
         "multilabel": ("multilabel", "text", "tags"), "regression": ("regression", "text", "score")}


def _arrays(kind: str, df: pd.DataFrame):
    """Texts, the data contract's labels and n_labels for a make_dataset frame."""
    _, text, label = KINDS[kind]
    texts = df[text].tolist()
    if kind == "regression":
        return texts, df[label].to_numpy(float), 0
    if kind == "multilabel":
        names = sorted({t for v in df[label] for t in v.split("|")})
        return texts, np.array([[int(n in v.split("|")) for n in names] for v in df[label]]), len(names)
    names = sorted(set(df[label]))
    return texts, np.array([names.index(v) for v in df[label]]), len(names) + 1  # one class never seen


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_saved_model_scores_exactly_as_the_fitted_one_without_unpickling(kind, tmp_path, monkeypatch):
    from tunery.evaluate.baseline import SETTINGS_FILE, WEIGHTS_FILE, TfidfModel

    texts, y, n_labels = _arrays(kind, make_dataset(kind, n=200, seed=1))
    if kind == "multilabel":
        y = np.c_[y, np.zeros(len(y), int)]  # a label never on: a constant head
        n_labels += 1
    model = TfidfModel.fit(KINDS[kind][0], texts[:160], y[:160], n_labels=n_labels, seed=0)
    model.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([SETTINGS_FILE, WEIGHTS_FILE])

    def no_pickle(*_a, **_k):
        raise AssertionError("loading a tfidf model unpickled something")

    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "Unpickler", no_pickle)
    loaded = TfidfModel.load(tmp_path)
    held_out = texts[160:] + ["words it never saw", "", "电影很好看"]
    before, after = model.scores(held_out), loaded.scores(held_out)
    assert before.shape == after.shape and before.dtype == after.dtype
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-6)
    # the analyzers are sklearn's own, rebuilt from the saved settings: same n-grams, same columns
    for a, b in zip(model.views, loaded.views):
        assert a.build_analyzer()("It's GREAT, really") == b.build_analyzer()("It's GREAT, really")
        assert (a.transform(held_out) != b.transform(held_out)).nnz == 0


def _fit_run(tmp, kind: str, name: str, store, **extra):
    from tunery.config import config_from_dict
    from tunery.pipeline import train_baseline

    _, text, label = KINDS[kind]
    data = tmp / f"{name}.csv"
    make_dataset(kind, n=240).to_csv(data, index=False)
    return train_baseline(config_from_dict({"name": name, "output_dir": str(tmp / "runs"), "data": {
        "train": str(data), "text_column": text, "label_column": label}, **extra}), store=store)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from tunery.store import Store

    tmp = tmp_path_factory.mktemp("tfidf-runs")
    store = Store(f"sqlite:///{tmp / 'runs.db'}")  # the module's own: each test has its own default store
    runs = {kind: _fit_run(tmp, kind, f"tfidf-{kind}", store) for kind in ("binary", "multilabel", "regression")}
    yield {**runs, "store": store}
    store.close()


@pytest.mark.parametrize("kind", ["binary", "multilabel", "regression"])
def test_a_tfidf_run_is_complete_and_reloads_with_the_metrics_it_reported(runs, kind):
    """tunery.load(run) scores the test split exactly as the fitted model did: metrics.json's test
    figures come back, multi-label with the thresholds tuned on validation (tunery.json)."""
    import tunery
    from tunery.config import load_config
    from tunery.evaluate.metrics import compute_metrics
    from tunery.pipeline import prepare_data
    from tunery.predict_tfidf import TfidfPredictor
    from tunery.rundir import is_complete

    run = runs[kind]
    assert is_complete(run)
    for name in ("config.yaml", "data_report.json", "metrics.json", "report.html", "tunery.json"):
        assert (run / name).is_file(), name
    meta = json.loads((run / "tunery.json").read_text())
    doc = json.loads((run / "metrics.json").read_text())
    assert meta["backend"] == "tfidf" and doc["baseline"] is None and doc["training"]["backend"] == "tfidf"
    assert set(doc["model"]) == {"validation", "test"}
    assert "TF-IDF baseline" in (run / "report.html").read_text()

    predictor = tunery.load(run)
    assert isinstance(predictor, TfidfPredictor)
    test = prepare_data(load_config(run / "config.yaml"), quiet=True).data.test
    y = predictor.task.y_true(test["label"].tolist(), len(predictor.label_names))
    scores = predictor.predict_scores(test["text"].tolist())
    if kind == "multilabel":
        assert doc["training"]["selection"]["threshold"] == "tuned per evaluation"
        assert predictor.threshold == (meta["thresholds"] or meta["threshold"])
    again = compute_metrics(meta["task"], y, scores, predictor.label_names, threshold=predictor.threshold)
    assert json.loads(json.dumps(again, default=str)) == doc["model"]["test"]


def test_the_run_records_like_any_run_and_registers(runs, tmp_path):
    import tunery
    from tunery.api import TextClassifier

    run = runs["binary"]
    record = runs["store"].get_run(run.name)  # recorded in the store it was fitted with
    assert record.status == "completed" and record.backbone == "tfidf" and record.task == "classification"

    cli("models", "register", str(run), "--name", "senti", cwd=tmp_path)  # this test's store
    out = tunery.load("senti@1").predict(["a wonderful film", "a dreadful film"])
    assert [o["label"] for o in out] == ["positive", "negative"]
    clf = TextClassifier.load("senti")
    assert clf.classes_ == ["negative", "positive"] and clf.predict("superb acting") == ["positive"]


def test_cli_baseline_predict_and_evaluate(tmp_path):
    data = tmp_path / "reviews.csv"
    make_dataset("binary", n=240).to_csv(data, index=False)
    make_dataset("binary", n=40, seed=7).to_csv(tmp_path / "held-out.csv", index=False)
    done = cli("baseline", "reviews.csv", "--name", "tfidf-cli", "--set", "data.test=held-out.csv", cwd=tmp_path)
    run = tmp_path / "runs" / "tfidf-cli"
    assert str(run.relative_to(tmp_path)) in done.stdout and (run / "tunery.json").is_file()
    saved = yaml.safe_load((run / "config.yaml").read_text())["data"]
    assert saved["test"] == str(tmp_path / "held-out.csv")  # absolute: the run re-reads it from anywhere

    cli("predict", "tfidf-cli", "-i", str(data), "-o", "out.csv", cwd=tmp_path)
    out = pd.read_csv(tmp_path / "out.csv")
    assert {"pred_label", "pred_score", "pred_prob_positive"} <= set(out.columns)
    assert (out["pred_label"] == out["label"]).mean() > 0.9

    evaluated = cli("evaluate", "tfidf-cli", cwd=tmp_path)
    assert "this run is the TF-IDF baseline" in evaluated.stdout
    result = json.loads((run / "evaluations" / "test" / "metrics.json").read_text())
    assert result["baseline"] is None and result["baseline_note"] == "this run is the TF-IDF baseline"
    assert "verdict" not in result and result["model"]["accuracy"] > 0.9

    # a config works as well, with --set; a name in use is refused, nothing written
    (tmp_path / "cfg.yaml").write_text(f"data:\n  train: {data}\n")
    cli("baseline", "cfg.yaml", "--set", "output_dir=other", "--name", "from-config", cwd=tmp_path)
    assert (tmp_path / "other" / "from-config" / "model" / "tfidf.safetensors").is_file()
    taken = cli("baseline", str(data), "--name", "tfidf-cli", cwd=tmp_path, expect=1)
    assert "already exists" in taken.stderr


def test_a_failed_fit_leaves_nothing(tmp_path):
    from tunery.store import Store

    data = tmp_path / "few.csv"
    pd.DataFrame({"text": ["good", "bad"], "label": ["pos", "neg"]}).to_csv(data, index=False)
    failed = cli("baseline", str(data), "--name", "few", cwd=tmp_path, expect=1)
    assert "error:" in failed.stderr
    fine = tmp_path / "fine.csv"
    make_dataset("binary", n=120).to_csv(fine, index=False)
    bad_metric = cli("baseline", str(fine), "--name", "m", "--set", "train.metric=acuracy", cwd=tmp_path, expect=1)
    assert "did you mean 'accuracy'" in bad_metric.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert Store().list_runs() == []


def _copy(run, tmp_path):
    import shutil

    target = tmp_path / run.name
    shutil.copytree(run, target)
    return target


def test_damaged_files_are_refused_naming_the_file(runs, tmp_path):
    from safetensors.numpy import load_file, save_file

    import tunery
    from tunery.errors import RunError

    run = _copy(runs["binary"], tmp_path)
    weights, settings = run / "model" / "tfidf.safetensors", run / "model" / "tfidf.json"
    tensors = load_file(str(weights))

    tensors["coef"] = tensors["coef"][:, :-1]  # one feature short: shapes that disagree
    save_file(tensors, str(weights))
    with pytest.raises(RunError, match=r"tfidf\.safetensors: tensor 'coef' has shape \(1, \d+\), but tfidf\.json"):
        tunery.load(run)

    weights.unlink()
    with pytest.raises(RunError, match=r"tfidf\.safetensors: missing"):
        tunery.load(run)
    failed = cli("predict", str(run), "-i", "x.csv", "-o", "y.csv", cwd=tmp_path, expect=1)
    assert "tfidf.safetensors: missing" in failed.stderr

    run = _copy(runs["binary"], tmp_path / "again")
    settings = run / "model" / "tfidf.json"
    doc = json.loads(settings.read_text())
    doc["views"][0]["vocabulary"][next(iter(doc["views"][0]["vocabulary"]))] = 10 ** 9
    settings.write_text(json.dumps(doc))
    with pytest.raises(RunError, match=r"tfidf\.json: views\[0\] vocabulary does not map its n-grams to columns"):
        tunery.load(run)
    doc["views"][0]["vocabulary"] = json.loads((runs["binary"] / "model" / "tfidf.json").read_text())[
        "views"][0]["vocabulary"]
    doc["views"][0]["params"]["token_pattern"] = "(unclosed"
    settings.write_text(json.dumps(doc))
    with pytest.raises(RunError, match=r"tfidf\.json: its settings do not score a text"):
        tunery.load(run)
    settings.write_text("{not json")
    with pytest.raises(RunError, match=r"tfidf\.json: cannot be read"):
        tunery.load(run)

    meta = json.loads((run / "tunery.json").read_text())
    (run / "tunery.json").write_text(json.dumps({**meta, "backend": "tensorrt"}))
    with pytest.raises(RunError, match=r"tunery\.json: backend 'tensorrt' is not one this tunery loads"):
        tunery.load(run)
    (run / "tunery.json").write_text(json.dumps({**meta, "backend": "onnx"}))  # a backend, but no graph here
    with pytest.raises(RunError, match=r"backend 'onnx' but .*model\.onnx is missing"):
        tunery.load(run)


def test_text_pairs_are_read_joined_and_tokens_are_counted_as_documented():
    from tunery.evaluate.baseline import TfidfModel
    from tunery.predict import PredictInputError
    from tunery.predict_tfidf import TfidfPredictor, count_tokens

    assert count_tokens("The film was great, really.") == 7  # 5 words, 2 punctuation marks
    assert count_tokens("这部电影很好看") == 7  # one per CJK character
    assert count_tokens("") == 0

    texts = ["is it good", "is it bad"] * 20
    pairs = ["yes good", "no bad"] * 20
    model = TfidfModel.fit("classification", [f"{a} [SEP] {b}" for a, b in zip(texts, pairs)],
                           np.array([1, 0] * 20), n_labels=2)
    meta = {"task": "classification", "label_names": ["no", "yes"], "max_length": None,
            "text_column": "q", "text_pair_column": "a"}
    predictor = TfidfPredictor(model, None, meta)
    scores, tokens = predictor.score(["is it good"], ["yes good"])
    assert scores.argmax(axis=1).tolist() == [1] and tokens.tolist() == [3 + 2]
    with pytest.raises(PredictInputError, match="reads text pairs"):
        predictor.score(["is it good"])
    empty, none = predictor.score([], [])
    assert empty.shape == (0, 2) and none.shape == (0,)


def test_serve_meters_a_tfidf_model_from_the_registry(runs, tmp_path):
    """`tunery serve` (a real process) serves a registered tfidf run; usage is billed in the
    documented tokens."""
    from tests.serve.conftest import new_key, start_server, usage_rows
    from tunery.predict_tfidf import count_tokens
    from tunery.store import Store

    db_url = f"sqlite:///{tmp_path / 'serve.db'}"
    store = Store(db_url)
    try:
        store.register_model("senti", run_path=str(runs["binary"]), run_name=runs["binary"].name)
    finally:
        store.close()
    server = start_server(["senti"], cwd=tmp_path, db_url=db_url)
    try:
        key = new_key(server)
        texts = ["a wonderful film, really", "dreadful"]
        with server.client(key) as client:
            r = client.post("/v1/models/senti/predict", json={"texts": texts})
        assert r.status_code == 200, r.text
        body = r.json()
        assert [p["label"] for p in body["predictions"]] == ["positive", "negative"]
        assert body["usage"] == {"texts": 2, "tokens": sum(map(count_tokens, texts))}
        rows = usage_rows(server)
        assert [(u.model_ref, u.tokens) for u in rows] == [("senti@1", sum(map(count_tokens, texts)))]
    finally:
        server.stop()
