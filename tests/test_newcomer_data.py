"""What a new user meets in the data: a backbone that cannot read the language, validate's opening
summary, names for integer labels, evaluate's checks of the file evaluated, and messages about a
DataFrame given to fit (issue 9, slice A)."""

from __future__ import annotations

import json
import logging
import random

import pandas as pd
import pytest

from tests.conftest import SHARED_DATA, fast_train, make_dataset
from tests.integration.helpers import cli, write_config
from tunery.config import DataConfig, TaskConfig, config_from_dict
from tunery.data.validate import Source, data_sources, prepare
from tunery.errors import ConfigError, DataError

HAN = "很快好吃味道足量大没有送水送餐慢服务态度差评价一般还不错下次再来菜品新鲜价格实惠包装精美"
NAMES = {0: "negative", 1: "positive"}


@pytest.fixture(scope="module")
def tokenizer():
    from tunery.backbones import resolve_backbone
    from tunery.pipeline import load_tokenizer

    return load_tokenizer(resolve_backbone("minilm-l6"))


def _chinese(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = random.Random(seed)
    return pd.DataFrame({"review": ["".join(rng.sample(HAN, 8)) for _ in range(n)],
                         "label": [i % 2 for i in range(n)]})


def _vocabulary(report):
    return [f for f in report.findings if f.code == "vocabulary"]


# --- vocabulary coverage ------------------------------------------------------------------------


def test_chinese_text_on_an_english_backbone_is_a_vocabulary_error(tmp_path, tokenizer):
    path = tmp_path / "waimai.csv"
    _chinese().to_csv(path, index=False)
    data, report = prepare(DataConfig(train=str(path)), TaskConfig(), tokenizer=tokenizer, backbone="minilm-l6")
    assert data is None and not report.ok
    [f] = _vocabulary(report)
    assert f.severity == "error" and f.file == str(path)
    d = f.details
    assert set(d) >= {"unk_token_share", "unk_text_share", "scripts", "backbone_languages"}
    assert d["unk_token_share"] > 0.25 and d["unk_text_share"] == 1.0
    assert next(iter(d["scripts"])) == "Han" and d["backbone_languages"] == "en"
    # the fix: a backbone that covers the language (hub id or directory), the baseline, or the override
    for part in ("[UNK]", "Han 100%", "covers en", "bert-base-chinese", "xlm-roberta-base", "local directory",
                 "TF-IDF baseline", "data.allow_vocabulary_mismatch: true"):
        assert part in f.message, part
    assert report.to_dict()["findings"][-1]["details"]["backbone_languages"] == "en"


def test_allow_vocabulary_mismatch_turns_the_error_into_a_warning(tmp_path, tokenizer):
    path = tmp_path / "waimai.csv"
    _chinese().to_csv(path, index=False)
    cfg = DataConfig(train=str(path), allow_vocabulary_mismatch=True)
    data, report = prepare(cfg, TaskConfig(), tokenizer=tokenizer, backbone="minilm-l6")
    assert data is not None and report.ok
    [f] = _vocabulary(report)
    assert f.severity == "warning" and "allow_vocabulary_mismatch is true" in f.message


def test_english_text_has_no_vocabulary_finding_and_its_coverage_is_in_the_summary(tmp_path, tokenizer):
    path = tmp_path / "reviews.csv"
    make_dataset("binary", n=80).to_csv(path, index=False)
    _, report = prepare(DataConfig(train=str(path)), TaskConfig(), tokenizer=tokenizer, backbone="minilm-l6")
    assert report.ok and not _vocabulary(report)
    cov = report.summary["vocabulary"][str(path)]
    assert cov["unk_token_share"] == 0 and cov["scripts"] == {"Latin": 1.0}


def test_a_few_unknown_words_are_a_warning(tmp_path, tokenizer):
    rng = random.Random(1)
    df = make_dataset("binary", n=80)
    df["review"] = [f"{t} {''.join(rng.sample(HAN, 2))}" for t in df["review"]]  # 1 unknown in ~8 tokens
    path = tmp_path / "mixed.csv"
    df.to_csv(path, index=False)
    data, report = prepare(DataConfig(train=str(path)), TaskConfig(), tokenizer=tokenizer, backbone="minilm-l6")
    [f] = _vocabulary(report)
    assert data is not None and f.severity == "warning"
    assert 0.05 <= f.details["unk_token_share"] < 0.25


def test_a_script_the_backbone_was_not_trained_on_is_a_warning_even_without_unk(tmp_path, tokenizer):
    # MiniLM's vocabulary holds Cyrillic letters (no [UNK]), but it has learned no Russian
    words = ["привет", "фильм", "хороший", "плохой", "сюжет", "очень", "скучный", "актёр"]
    rng = random.Random(2)
    path = tmp_path / "ru.csv"
    pd.DataFrame({"text": [" ".join(rng.sample(words, 4)) for _ in range(40)],
                  "label": ["a", "b"] * 20}).to_csv(path, index=False)
    _, report = prepare(DataConfig(train=str(path)), TaskConfig(), tokenizer=tokenizer, backbone="minilm-l6")
    [f] = _vocabulary(report)
    assert f.severity == "warning" and f.details["unk_token_share"] < 0.05
    assert "Cyrillic" in f.message and "xlm-roberta-base" in f.message
    # a backbone outside the catalog (a local directory) is judged by its [UNK] share alone
    _, report = prepare(DataConfig(train=str(path)), TaskConfig(), tokenizer=tokenizer, backbone="/models/mine")
    assert not _vocabulary(report)
    assert report.summary["vocabulary"][str(path)]["backbone_languages"] is None


def test_coverage_is_measured_on_a_bounded_sample(tmp_path, tokenizer):
    from tunery.data.coverage import SAMPLE_TEXTS

    df = make_dataset("binary", n=SAMPLE_TEXTS + 1000)
    path = tmp_path / "big.csv"
    df.to_csv(path, index=False)
    _, report = prepare(DataConfig(train=str(path), test_fraction=0.05), TaskConfig(), tokenizer=tokenizer,
                        backbone="minilm-l6")
    assert report.summary["vocabulary"][str(path)]["sample_texts"] == SAMPLE_TEXTS


def test_training_refuses_text_its_backbone_cannot_read_unless_allowed(tmp_path, tiny_backbone):
    from tunery.pipeline import prepare_run, train

    path = tmp_path / "waimai.csv"
    _chinese().to_csv(path, index=False)
    tree = {"name": "zh", "output_dir": str(tmp_path / "runs"), "data": {"train": str(path)},
            "model": {"backbone": tiny_backbone}, "train": fast_train()}
    with pytest.raises(DataError, match=r"\[UNK\].*not in tunery's catalog"):
        train(config_from_dict(tree))
    assert not (tmp_path / "runs" / "zh").exists()
    tree["data"]["allow_vocabulary_mismatch"] = True
    assert prepare_run(config_from_dict(tree)).report.ok


def test_validate_opens_with_a_short_summary_then_the_findings(tmp_path):
    path = tmp_path / "waimai.csv"
    _chinese(n=60).to_csv(path, index=False)
    proc = cli("validate", str(path), cwd=tmp_path, expect=1)
    lines = proc.stdout.splitlines()
    assert lines[0] == f"train: {path} (60 rows)"
    assert "task_inferred" not in proc.stdout and "label_names:" not in proc.stdout  # no raw dump
    text = "\n".join(lines)
    summary, findings = text.split("\n\n", 1)
    assert "task: classification (inferred) · columns: text 'review' · label 'label'" in summary
    assert "classes (train, 2): 0 30 · 1 30" in summary
    assert "text length (waimai.csv): median" in summary and "p95" in summary
    assert "vocabulary (waimai.csv):" in summary and "[UNK] tokens" in summary and "Han 100%" in summary
    assert findings.startswith("error [vocabulary]") and findings.splitlines()[-1].startswith("FAILED: 1 error")


def test_validate_summary_shows_the_splits_of_clean_data(tmp_path):
    path = tmp_path / "reviews.csv"
    make_dataset("binary", n=100).to_csv(path, index=False)
    proc = cli("validate", str(path), cwd=tmp_path)
    assert "splits: train 80 · validation 10 · test 10" in proc.stdout
    assert "classes (train, 2): negative 40 · positive 40" in proc.stdout
    assert "0.0% [UNK] tokens" in proc.stdout and proc.stdout.splitlines()[-1].startswith("OK")


@pytest.mark.slow
def test_validate_reports_waimai10k_coverage_with_the_minilm(tmp_path):
    path = SHARED_DATA / "waimai10k" / "waimai_10k.csv"
    if not path.is_file():
        pytest.skip(f"{path} is missing (the shared data set)")
    proc = cli("validate", str(path), "--json", cwd=tmp_path, expect=1)
    report = json.loads(proc.stdout)
    [f] = [f for f in report["findings"] if f["code"] == "vocabulary"]
    assert f["severity"] == "error" and f["details"]["unk_token_share"] > 0.5
    assert next(iter(f["details"]["scripts"])) == "Han"


@pytest.mark.slow
def test_validate_finds_no_coverage_problem_on_sst2(tmp_path):
    path = SHARED_DATA / "sst2" / "dev.tsv"
    if not path.is_file():
        pytest.skip(f"{path} is missing (the shared data set)")
    proc = cli("validate", str(path), "--json", cwd=tmp_path)
    report = json.loads(proc.stdout)
    assert not [f for f in report["findings"] if f["code"] == "vocabulary"]
    assert report["summary"]["vocabulary"][str(path)]["unk_token_share"] < 0.01


# --- label names --------------------------------------------------------------------------------


def test_label_names_keys_may_be_int_or_str_and_bad_names_are_config_errors():
    cfg = config_from_dict({"data": {"train": "x.csv", "label_names": {0: "negative", "1": "positive"}}})
    assert cfg.data.label_names == {"0": "negative", "1": "positive"}
    for names, says in [({0: "a", 1: "a"}, "same name 'a'"), ({0: "a", "0": "b"}, "named twice"),
                        ({0: ""}, "non-empty text")]:
        with pytest.raises(ConfigError, match=rf"run.yaml: data.label_names: .*{says}"):
            config_from_dict({"data": {"train": "x.csv", "label_names": names}}, source="run.yaml")


def test_label_names_apply_while_the_data_is_prepared(tmp_path):
    path = tmp_path / "ints.csv"
    df = make_dataset("binary", n=60).assign(label=lambda d: (d["label"] == "positive").astype(int))
    df.to_csv(path, index=False)
    data, report = prepare(DataConfig(train=str(path), label_names=NAMES), TaskConfig())
    assert data.label_names == ["negative", "positive"]
    assert report.summary["label_counts"]["train"] == {"negative": 24, "positive": 24}


def test_a_label_value_with_no_name_is_an_error_naming_its_rows(tmp_path):
    path = tmp_path / "ints.csv"
    pd.DataFrame({"text": [f"t {i}" for i in range(20)], "label": [0, 1] * 9 + [2, 2]}).to_csv(path, index=False)
    data, report = prepare(DataConfig(train=str(path), label_names=NAMES), TaskConfig())
    [f] = report.errors
    assert data is None and f.code == "bad_label" and f.rows == (19, 20)
    assert "have no name in data.label_names ('2')" in f.message
    assert "give them a name in data.label_names" in f.message


@pytest.mark.parametrize("kind, task", [("regression", "auto"), ("multilabel", "auto"), ("binary", "regression")])
def test_label_names_for_a_task_they_do_not_apply_to_are_an_error(tmp_path, kind, task):
    path = tmp_path / "d.csv"
    df = make_dataset(kind, n=40)
    if kind == "binary":
        df["label"] = [i % 2 for i in range(len(df))]
    df.to_csv(path, index=False)
    data, report = prepare(DataConfig(train=str(path), label_names=NAMES), TaskConfig(type=task))
    [f] = [f for f in report.errors if f.code == "label_names"]
    assert data is None and f.message.startswith("data.label_names: names apply to the values of a "
                                                 "classification")
    assert "remove data.label_names" in f.message


@pytest.fixture(scope="module")
def named_run(tiny_backbone, tmp_path_factory):
    """One tiny run on 0/1 labels named by data.label_names; its training file has a duplicate row."""
    from tunery.pipeline import train

    tmp = tmp_path_factory.mktemp("named")
    df = make_dataset("binary", n=160).assign(label=lambda d: (d["label"] == "positive").astype(int))
    df = pd.concat([df, df.iloc[[3]]], ignore_index=True)  # a data warning (duplicate) in training
    path = tmp / "ints.csv"
    df.to_csv(path, index=False)
    cfg = config_from_dict({"name": "named", "output_dir": str(tmp / "runs"),
                            "data": {"train": str(path), "label_names": NAMES},
                            "model": {"backbone": tiny_backbone}, "train": fast_train(epochs=2)})
    return train(cfg), df


def test_label_names_show_in_cli_predict_api_and_report(named_run, tmp_path):
    import tunery
    from tunery.api import TextClassifier

    run, df = named_run
    src = tmp_path / "in.csv"
    df[["review"]].head(20).to_csv(src, index=False)
    cli("predict", str(run), "--input", str(src), "--output", str(tmp_path / "out.csv"), cwd=tmp_path)
    out = pd.read_csv(tmp_path / "out.csv")
    assert set(out["pred_label"]) <= {"negative", "positive"}
    assert {"pred_prob_negative", "pred_prob_positive"} <= set(out.columns)
    [p] = tunery.load(run).predict(["a wonderful film"])
    assert p["label"] in NAMES.values()
    assert set(TextClassifier.load(run).predict(["awful", "lovely"])) <= set(NAMES.values())
    assert json.loads((run / "tunery.json").read_text())["label_names"] == ["negative", "positive"]
    html = (run / "report.html").read_text(encoding="utf-8")
    assert ">negative<" in html and ">positive<" in html


def test_label_names_show_in_the_http_api(named_run):
    from fastapi.testclient import TestClient

    from tunery.serve.app import create_app
    from tunery.serve.keys import create_key
    from tunery.store import Store

    run, _ = named_run
    store = Store()
    key, _ = create_key(store, tenant="acme", plan="pro")
    with TestClient(create_app({"sentiment": run}, store=store)) as client:
        for _ in range(600):
            if client.get("/readyz").status_code == 200:
                break
            import time

            time.sleep(0.05)
        r = client.post("/v1/models/sentiment/predict", json={"texts": ["a wonderful film", "awful"]},
                        headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    assert {p["label"] for p in r.json()["predictions"]} <= set(NAMES.values())


# --- evaluate --data checks only the file evaluated ---------------------------------------------


def test_evaluate_on_a_new_file_checks_that_file_not_the_training_data(named_run, tmp_path, caplog):
    from tunery.pipeline import evaluate_run

    run, df = named_run
    new = tmp_path / "new.csv"
    fresh = make_dataset("binary", n=30, seed=5).assign(label=lambda d: (d["label"] == "positive").astype(int))
    fresh.to_csv(new, index=False)
    with caplog.at_level(logging.WARNING):
        result = evaluate_run(run, data=new)
    assert "duplicate" not in caplog.text and "ints.csv" not in caplog.text  # the training file's warning
    assert result["n"] == 30 and set(result["model"]["per_class"]) == {"negative", "positive"}

    caplog.clear()
    pd.concat([fresh, fresh.iloc[[0]]]).to_csv(new, index=False)
    with caplog.at_level(logging.WARNING):
        evaluate_run(run, data=new)
    assert f"{new}: 1 row repeat" in caplog.text and "ints.csv" not in caplog.text

    pd.DataFrame({"review": ["x", "y"], "label": [0, 7]}).to_csv(new, index=False)
    with pytest.raises(DataError, match=r"never seen in training \('7'\) at row 2"):
        evaluate_run(run, data=new)


def test_evaluate_cli_prints_only_the_evaluated_files_warnings(named_run, tmp_path):
    run, _ = named_run
    new = tmp_path / "new.csv"
    make_dataset("binary", n=20, seed=6).assign(label=lambda d: (d["label"] == "positive").astype(int)).to_csv(
        new, index=False)
    proc = cli("evaluate", str(run), "--data", str(new), cwd=tmp_path)
    assert "repeat an earlier row" not in proc.stderr + proc.stdout


# --- a DataFrame given to fit -------------------------------------------------------------------


def test_messages_name_a_dataframe_and_its_index_labels(tmp_path):
    path = tmp_path / "copy.parquet"
    df = make_dataset("binary", n=40)
    df.loc[5, "label"] = None
    df.index = [f"r{i}" for i in range(100, 140)]
    df.reset_index(drop=True).to_parquet(path)
    with data_sources({str(path): Source("the DataFrame given to fit (train)", df.index.tolist())}):
        _, report = prepare(DataConfig(train=str(path)), TaskConfig())
    [f] = report.errors
    assert f.message.startswith("the DataFrame given to fit (train): 1 missing labels in column 'label' at "
                                "index label r105;")
    assert "copy.parquet" not in f.message and f.rows == (6,)
    _, report = prepare(DataConfig(train=str(path)), TaskConfig())  # outside the block: the file again
    assert report.errors[0].message.startswith(f"{path}: 1 missing labels")


def test_fit_names_the_dataframe_and_its_index_labels_in_warnings_and_errors(tiny_backbone, tmp_path, caplog):
    from tunery.api import TextClassifier
    from tunery.train.callbacks import Callback

    df = make_dataset("binary", n=80)
    df = pd.concat([df, df.iloc[[2]]])
    df.index = range(1000, 1000 + len(df))

    class Stop(Callback):
        def on_train_begin(self, state, n_train):
            raise RuntimeError("stop here: the data checks are done")

    clf = TextClassifier(backbone=tiny_backbone, output_dir=tmp_path / "runs", **fast_train())
    with caplog.at_level(logging.WARNING), pytest.raises(RuntimeError, match="stop here"):
        clf.fit(df, text="review", label="label", callbacks=[Stop()], progress=False)
    assert "the DataFrame given to fit (train): 1 row repeat an earlier row's text and label exactly, at " \
           "index label 1080" in caplog.text
    assert ".parquet" not in caplog.text

    bad = df.copy()
    bad.loc[1007, "review"] = ""
    with pytest.raises(DataError, match=r"the DataFrame given to fit \(train\): 1 empty or missing texts in "
                                        r"column 'review' at index label 1007;"):
        TextClassifier(backbone=tiny_backbone, output_dir=tmp_path / "runs", **fast_train()).fit(
            bad, text="review", label="label", progress=False)


def test_validate_config_label_names_and_vocabulary_from_a_config(tmp_path):
    path = tmp_path / "waimai.csv"
    _chinese().to_csv(path, index=False)
    config = write_config(tmp_path / "run.yaml", {"data": {
        "train": str(path), "label_names": {0: "差评", 1: "好评"}, "allow_vocabulary_mismatch": True}})
    proc = cli("validate", str(path), "--config", str(config), cwd=tmp_path)
    assert "classes (train, 2): 差评 24 · 好评 24" in proc.stdout
    assert "warning [vocabulary]" in proc.stdout
