"""The scikit-learn-like Python API and tunery.load."""

from __future__ import annotations

import numpy as np
import pytest

import tunery
from tests.conftest import fast_train, make_dataset


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, tiny_backbone):
    out = tmp_path_factory.mktemp("api")
    df = make_dataset("binary", n=240)
    clf = tunery.TextClassifier(backbone=tiny_backbone, output_dir=out / "runs", name="api",
                                **fast_train(epochs=5))
    return clf.fit(df, text="review", label="label"), df


def test_fit_returns_self_and_writes_a_run(fitted):
    clf, _ = fitted
    assert isinstance(clf, tunery.TextClassifier)
    assert (clf.run_dir_ / "tunery.json").is_file()
    assert clf.classes_ == ["negative", "positive"]


def test_predict_gives_labels_and_probabilities(fitted):
    clf, df = fitted
    labels = clf.predict(df["review"][:50])
    assert (np.array(labels) == df["label"][:50].to_numpy()).mean() >= 0.9
    proba = clf.predict_proba(["great the film was", "awful the film was"])
    assert proba.shape == (2, 2) and np.allclose(proba.sum(axis=1), 1)
    assert proba[0, 1] > proba[1, 1]


def test_evaluate_on_a_dataframe_shows_the_baseline(fitted):
    clf, df = fitted
    result = clf.evaluate(df.head(60))
    assert result["n"] == 60
    assert result["model"]["accuracy"] >= 0.9
    assert "accuracy" in result["baseline"]


def test_save_and_load_round_trip(fitted, tmp_path):
    clf, _ = fitted
    saved = clf.save(tmp_path / "copy")
    assert not (saved / "checkpoints").exists()
    again = tunery.TextClassifier.load(saved)
    assert again.predict(["superb the film was"]) == clf.predict(["superb the film was"])
    predictor = tunery.load(saved)
    one = predictor.predict("dreadful the plot was")
    assert one["label"] == "negative" and set(one["probabilities"]) == {"negative", "positive"}


def test_unknown_option_names_the_closest(tiny_backbone):
    with pytest.raises(TypeError, match="did you mean 'epochs'"):
        tunery.TextClassifier(backbone=tiny_backbone, epoch=3).fit(make_dataset("binary"))


def test_predict_before_fit_says_what_to_do():
    with pytest.raises(RuntimeError, match="not fitted"):
        tunery.TextClassifier().predict(["x"])


def test_import_is_light():
    import subprocess
    import sys

    code = "import sys, tunery; print('torch' in sys.modules, 'transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.split() == ["False", "False"]
