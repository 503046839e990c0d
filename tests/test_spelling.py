"""model.correct_typos: the corrector as functions (every DeepWordBug edit of a known word is undone,
known and short words are left alone), and a run that corrects: its lexicon is kept, predict reads a
misspelt text as the clean one, a run without it does not, and the typo attack flips fewer texts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import NEG, POS, fast_train, make_dataset


def test_every_typo_edit_of_a_known_word_is_undone_and_known_words_stay():
    from tunery.attack.edits import EDITS, typo
    from tunery.spelling import Speller

    counts = {"wonderful": 5, "terrible": 4, "boring": 3, "bring": 1, "film": 9, "the": 30}
    speller = Speller(counts)
    rng = np.random.default_rng(0)
    for word in ("wonderful", "terrible", "Boring"):
        for edit in EDITS:
            for _ in range(5):
                wrong = typo(word, edit, rng)
                if wrong is None or wrong.lower() in counts:
                    continue
                assert speller.correct(f"a {wrong} film!") == f"a {word} film!", (word, edit, wrong)
    # the most frequent neighbour wins: "borin" is one edit from "boring" (3) and none from "bring"
    assert speller.correct("borin") == "boring" and speller.correct("brng") == "bring"
    assert speller.correct("THE FLIM") == "THE FILM"  # case kept
    # known words, words of under three letters, numbers and non-Latin text are left as written
    assert speller.correct("bring the 42 xq filmz? 电影") == "bring the 42 xq film? 电影"
    assert speller.correct("zzzzzz") == "zzzzzz"  # no neighbour: as written


def test_the_lexicon_holds_the_training_words_and_the_backbones_whole_words(tiny_backbone):
    from tunery.pipeline import load_tokenizer
    from tunery.spelling import build_lexicon, vocabulary_words

    tokenizer = load_tokenizer(tiny_backbone)
    vocab = vocabulary_words(tokenizer)
    assert vocab and all(w.isalpha() and w.islower() for w in vocab)
    assert not any(t.startswith("##") for t in vocab) and "cls" not in vocab
    counts = build_lexicon(["Great great FILM", "zorbly film"], tokenizer)
    assert counts["great"] >= 2 and counts["zorbly"] == 1 and counts["film"] >= 2
    assert set(vocab) <= set(counts)


@pytest.fixture(scope="module")
def runs(tiny_backbone, tmp_path_factory):
    """The same tiny sentiment model trained with and without model.correct_typos."""
    from tunery.config import config_from_dict
    from tunery.pipeline import train
    from tunery.store import Store

    tmp = tmp_path_factory.mktemp("spelling")
    store = Store(f"sqlite:///{tmp / 'runs.db'}")
    make_dataset("binary", n=600, seed=1).to_csv(tmp / "train.csv", index=False)
    out = {}
    for name, correct in (("plain", False), ("correcting", True)):
        cfg = config_from_dict({"name": name, "output_dir": str(tmp / "runs"),
                                "data": {"train": str(tmp / "train.csv"), "text_column": "review",
                                         "label_column": "label"},
                                "model": {"backbone": tiny_backbone, "correct_typos": correct},
                                "train": fast_train(epochs=6), "evaluate": {"baseline": False}})
        out[name] = train(cfg, store=store)
    out["store"] = store
    yield out
    store.close()


def test_a_correcting_run_reads_a_misspelt_text_as_the_clean_one(runs):
    from tunery.predict import load

    meta = json.loads((runs["correcting"] / "tunery.json").read_text())
    assert meta["typo_correction"]["file"] == "model/lexicon.json" and meta["typo_correction"]["words"] > 20
    assert "typo_correction" not in json.loads((runs["plain"] / "tunery.json").read_text())
    clean = [f"{w} film story the quite" for w in POS[:3] + NEG[:3]]  # the signal word leads, as in training
    wrong = [t.replace("wonderful", "wondreful").replace("excellent", "excelent").replace("great", "graet")
             .replace("awful", "awfull").replace("terrible", "terrihle").replace("bad ", "bda ") for t in clean]
    assert all(a != b for a, b in zip(clean, wrong))
    correcting, plain = load(runs["correcting"]), load(runs["plain"])
    assert np.allclose(correcting.predict_scores(wrong), correcting.predict_scores(clean), atol=1e-6)
    truth = [1, 1, 1, 0, 0, 0]
    assert (plain.predict_scores(clean).argmax(1) == truth).all()  # the model learned the words...
    moved = np.abs(plain.predict_scores(wrong) - plain.predict_scores(clean))[:, 0]
    assert moved.max() > 0.05  # ...and misspelt, they are other tokens to a model that does not correct
    explanation = correcting.explain("wondreful film story", method="occlusion")
    assert explanation.text == "wonderful film story" and "wonderful" in [w.text for w in explanation.words]


def test_the_typo_attack_flips_fewer_texts_of_a_correcting_run(runs, tmp_path):
    from tunery.attack.run import attack_run

    data = make_dataset("binary", n=40, seed=9)
    data.to_csv(tmp_path / "attack.csv", index=False)
    success = {}
    for name in ("plain", "correcting"):
        report = attack_run(runs[name], tmp_path / "attack.csv", recipes=["typo"], n=40, seed=0)
        success[name] = report["typo"]["attack_success_rate"]
    assert success["correcting"] < success["plain"], success


def test_an_onnx_run_of_a_correcting_model_corrects_too(runs):
    pytest.importorskip("onnxruntime")
    from tunery.compress import CompressOptions, compress_run
    from tunery.predict import load

    new = compress_run(runs["correcting"], CompressOptions(to="onnx"), store=runs["store"])
    onnx = load(new)
    assert type(onnx).__name__ == "OnnxPredictor" and onnx.speller is not None
    assert (new / "model" / "lexicon.json").is_file()
    assert np.allclose(onnx.predict_scores(["wondreful film story"]), onnx.predict_scores(["wonderful film story"]),
                       atol=1e-6)

