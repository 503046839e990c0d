import numpy as np
import pytest

from tunery.evaluate.baseline import baseline_metrics, baseline_scores

_WORDS = {
    "sport": ["goal", "match", "team", "score", "league"],
    "tech": ["laptop", "software", "chip", "code", "server"],
    "food": ["pasta", "recipe", "spicy", "bread", "soup"],
}
_FILL = ["the", "a", "today", "really", "was", "very", "new", "and"]


def _corpus(n, seed, classes=("sport", "tech", "food")):
    rng = np.random.default_rng(seed)
    texts, y = [], []
    for i in range(n):
        c = i % len(classes)
        words = list(rng.choice(_WORDS[classes[c]], 2)) + list(rng.choice(_FILL, 4))
        rng.shuffle(words)
        texts.append(" ".join(words))
        y.append(c)
    return texts, np.array(y)


def test_classification_baseline_beats_chance():
    tr, ytr = _corpus(150, 0)
    te, yte = _corpus(60, 1)
    m = baseline_metrics("classification", tr, ytr, {"test": (te, yte)},
                         label_names=["sport", "tech", "food"])
    assert m["test"]["accuracy"] > 0.9  # chance is 1/3


def test_binary_baseline_beats_chance():
    tr, ytr = _corpus(100, 0, classes=("sport", "tech"))
    te, yte = _corpus(40, 1, classes=("sport", "tech"))
    s = baseline_scores("classification", tr, ytr, {"test": te}, n_labels=2)["test"]
    assert s.shape == (40, 2)
    assert ((s.argmax(1)) == yte).mean() > 0.9


def test_class_missing_from_train_keeps_full_probability_shape():
    tr, ytr = _corpus(90, 0, classes=("sport", "tech"))  # ids 0, 1 only
    te, _ = _corpus(20, 1)
    s = baseline_scores("classification", tr, ytr, {"test": te}, n_labels=3)["test"]
    assert s.shape == (20, 3)
    assert np.allclose(s.sum(axis=1), 1.0)
    assert np.all(s[:, 2] == 0.0)


def test_single_class_train_gives_constant_probabilities():
    s = baseline_scores("classification", ["a b", "b c"], np.array([1, 1]), {"v": ["a"]},
                        n_labels=3)["v"]
    assert s.tolist() == [[0.0, 1.0, 0.0]]


def test_multilabel_baseline_beats_chance_and_handles_constant_label():
    tr, ytr = _corpus(150, 0)
    te, yte = _corpus(60, 1)
    # labels: is_sport, is_food, never (constant 0 in train)
    Ytr = np.stack([ytr == 0, ytr == 2, np.zeros_like(ytr)], axis=1).astype(int)
    Yte = np.stack([yte == 0, yte == 2, np.zeros_like(yte)], axis=1).astype(int)
    eval_data = {"validation": (te, Yte), "test": (te, Yte)}
    m = baseline_metrics("multilabel", tr, Ytr, eval_data, label_names=["sport", "food", "never"])
    assert m["test"]["micro_f1"] > 0.9
    assert m["test"]["per_class"]["never"]["support"] == 0


def test_regression_baseline_tracks_the_target():
    rng = np.random.default_rng(0)
    def make(n):
        k = rng.integers(0, 4, n)
        texts = [" ".join(["good"] * int(i) + list(rng.choice(_FILL, 3))) for i in k]
        return texts, k.astype(float)
    tr, ytr = make(200)
    te, yte = make(60)
    m = baseline_metrics("regression", tr, ytr, {"test": (te, yte)}, label_names=[])
    assert m["test"]["pearson"] > 0.9


def test_unknown_task_is_rejected():
    with pytest.raises(ValueError, match="task"):
        baseline_scores("ranking", ["a b"], [1], {"t": ["a"]}, n_labels=1)
