"""train.noise: perturbed copies of the training texts under their gold labels (train/noise.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tunery.attack.search import Text, stopwords
from tunery.train.noise import noisy_rows, noisy_text

TEXT = "The film was good and the cast did their best for Anna on a cold night"
SYN = {"film": ["movie"], "good": ["beneficial"], "cast": ["company"], "cold": ["chilly"], "night": ["dark"],
       "best": ["outdo"], "the": ["NO"], "anna": ["NO"], "and": ["NO"]}


def changed(a: str, b: str) -> list[tuple[str, str]]:
    return [(x, y) for x, y in zip(Text(a).current, Text(b).current) if x != y]


def test_typo_copies_change_their_share_of_words_and_repeat_by_seed():
    words = len(Text(TEXT).current)
    for seed in range(10):
        out = noisy_text(TEXT, np.random.default_rng(seed), typo_share=0.2, synonym_share=0)
        diff = changed(TEXT, out)
        assert 1 <= len(diff) <= round(0.2 * words)
        assert all(x.isalpha() and len(x) >= 2 for x, _ in diff)
        assert out == noisy_text(TEXT, np.random.default_rng(seed), typo_share=0.2, synonym_share=0)
    assert len({noisy_text(TEXT, np.random.default_rng(s), typo_share=0.2, synonym_share=0) for s in range(10)}) > 5


def test_synonym_copies_keep_stopwords_and_names():
    stop = stopwords()
    for seed in range(10):
        out = noisy_text(TEXT, np.random.default_rng(seed), typo_share=0, synonym_share=0.5,
                         synonyms=lambda w: SYN.get(w.lower(), []))
        diff = changed(TEXT, out)
        assert diff and all(x.lower() not in stop and x != "Anna" for x, _ in diff)
        assert all(y in SYN[x.lower()] or y.lower() in SYN[x.lower()] for x, y in diff)
        assert "NO" not in out


def test_rows_keep_labels_and_pairs_and_leave_unchangeable_texts_out():
    texts, pairs, labels = ["a truly great film", "a !", "a dull and lifeless plot"], ["p1", "p2", "p3"], [1, 0, 0]
    t, p, y = noisy_rows(texts, pairs, labels, copies=2, typo_share=0.3, synonym_share=0, seed=4)
    assert len(t) == 4  # "a !" has no word a typo may change: its copies would be the text itself
    assert p == ["p1", "p1", "p3", "p3"] and y == [1, 1, 0, 0]
    assert all(x not in texts for x in t)
    assert noisy_rows(texts, pairs, labels, copies=2, typo_share=0.3, synonym_share=0, seed=4) == (t, p, y)
    assert noisy_rows(texts, None, labels, copies=1, typo_share=0.3, synonym_share=0, seed=4)[1] is None


def test_copies_without_a_perturbation_are_refused_by_name():
    from tunery.config import config_from_dict

    with pytest.raises(Exception, match="train.noise.typo or train.noise.synonym"):
        config_from_dict({"data": {"train": "x.csv"}, "train": {"noise": {"copies": 2, "typo": 0}}})


def test_a_run_trains_on_its_noisy_copies_and_records_them(tmp_path, tiny_backbone):
    from tests.conftest import run_config
    from tunery import pipeline

    cfg = run_config(tmp_path, tiny_backbone, "noisy", epochs=1, noise={"copies": 1, "typo": 0.2})
    run = pipeline.train(cfg)
    training = json.loads((run / "metrics.json").read_text())["training"]
    assert 0.9 * training["n_train"] <= training["noisy_copies"] <= training["n_train"]
    assert training["samples_seen"] == training["n_train"] + training["noisy_copies"]  # one epoch over both
