"""tunery attack: the typo (DeepWordBug) and synonym (PWWS over WordNet) attacks, their constraints,
their seeding, the run they write into, and their errors.

The search is tested on a lexicon model whose fragility is known (one word decides the label), with
the real WordNet and the real sentence encoder where the recipe needs them; the plumbing on a tiny
trained run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tunery.attack import Attack, AttackError, SentenceEncoder, Settings, attack_run
from tunery.attack.edits import EDITS, NEIGHBOURS, typo, typos
from tunery.attack.search import stopwords

WEIGHTS = {"good": 3.0, "great": 3.0, "superb": 3.0, "film": 0.2, "the": 0.1, "bad": -3.0}


def lexicon(texts: list[str]) -> np.ndarray:
    """P(negative), P(positive) from word weights: 'good' alone makes a text positive."""
    z = np.array([sum(WEIGHTS.get(w.strip(".,!").lower(), 0.0) for w in t.split()) - 1.0 for t in texts])
    p = 1 / (1 + np.exp(-z))
    return np.stack([1 - p, p], axis=1)


def test_each_edit_is_one_edit_of_its_kind_and_repeats_by_seed():
    for seed in range(5):
        rng = np.random.default_rng(seed)
        swapped, deleted = typo("wonderful", "swap", rng), typo("wonderful", "delete", rng)
        inserted, keyed = typo("wonderful", "insert", rng), typo("wonderful", "keyboard", rng)
        assert sorted(swapped) == sorted("wonderful") and swapped != "wonderful"
        assert len(deleted) == 8 and len(inserted) == 10
        diff = [(a, b) for a, b in zip("wonderful", keyed) if a != b]
        assert len(keyed) == 9 and len(diff) == 1 and diff[0][1] in NEIGHBOURS[diff[0][0]]
    assert typos("Great", np.random.default_rng(1)) == typos("Great", np.random.default_rng(1))
    assert all(t[0].isupper() for t in typos("Great", np.random.default_rng(2)))  # case kept
    assert typo("a", "swap", np.random.default_rng(0)) is None and typo("on", "delete", np.random.default_rng(0)) is None
    with pytest.raises(ValueError, match="swap, delete, insert, keyboard"):
        typo("word", "flip", np.random.default_rng(0))
    assert EDITS == ("swap", "delete", "insert", "keyboard")


def test_typo_flips_the_fragile_prediction_within_its_share_and_budget():
    text = "the film was good and the cast did their best on the night"
    s = Settings(recipe="typo", max_share=0.2, seed=3)
    out = Attack(s, lexicon).run(text, 1)
    assert out.status == "succeeded" and out.perturbed_predicted == 0 and out.predicted == 1
    assert [c["from"] for c in out.changes] == ["good"]  # the one word that decides, found by leave-one-out
    assert out.changed <= max(1, int(0.2 * out.words)) and out.perturbed != text
    assert Attack(s, lexicon).run(text, 1).to_dict() == out.to_dict()  # the same seed, the same attack
    tight = Attack(Settings(recipe="typo", budget=3), lexicon).run(text, 1)
    assert tight.queries <= 3 and tight.status == "failed"  # the budget ran out before the edit
    wrong = Attack(s, lexicon).run("bad", 1)
    assert wrong.status == "skipped" and wrong.queries == 1  # already misclassified: not attacked


def test_typo_stops_at_the_share_of_words():
    text = "good great superb good great superb"  # needs many edits to flip
    out = Attack(Settings(recipe="typo", max_share=0.34), lexicon).run(text, 1)
    assert out.status == "failed" and out.changed == 2  # floor(0.34 * 6) = 2 words at most


@pytest.fixture(scope="module")
def encoder(tiny_backbone):
    return SentenceEncoder(tiny_backbone)


@pytest.fixture(scope="module")
def wordnet():
    from tunery.attack.wordnet import database_dir, reader

    try:
        return reader(str(database_dir()))
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"WordNet is not installed here ({e}); .ci/run installs it")


def test_synonym_flips_with_a_wordnet_synonym_and_keeps_its_constraints(encoder, wordnet):
    from tunery.attack.wordnet import synonyms

    text = "The film was good , and Paris was lovely ."
    s = Settings(recipe="synonym", max_share=0.25, min_similarity=0.5, seed=0)
    attack = Attack(s, lexicon, similarity=encoder.similarity, synonyms=lambda w: synonyms(w, wordnet))
    out = attack.run(text, 1)
    assert out.status == "succeeded" and out.perturbed_predicted == 0
    (change,) = out.changes
    assert change["from"] == "good" and change["to"] in synonyms("good", wordnet)
    stop = stopwords()
    assert all(c["from"].lower() not in stop and c["from"] != "Paris" for c in out.changes)
    assert out.similarity >= 0.5 and out.similarity == pytest.approx(float(encoder.similarity(text, [out.perturbed])[0]))
    assert attack.run(text, 1).to_dict() == out.to_dict()
    strict = Attack(Settings(recipe="synonym", min_similarity=0.9999), lexicon, similarity=encoder.similarity,
                    synonyms=lambda w: synonyms(w, wordnet)).run(text, 1)
    assert strict.status == "failed" and strict.changed == 0  # no synonym keeps the sentence that close


def test_entities_and_stopwords_are_never_candidates(encoder, wordnet):
    seen = []

    def spy(word):
        seen.append(word)
        return []

    Attack(Settings(recipe="synonym"), lexicon, similarity=encoder.similarity, synonyms=spy).run(
        "Good work by Smith and the team, very good", 1)
    assert "Smith" not in seen and not {"by", "and", "the", "very"} & set(seen) and "Good" in seen  # first word: kept


def test_missing_wordnet_names_the_install_command(tmp_path, monkeypatch):
    from tunery.attack.wordnet import WordNetMissing, database_dir

    monkeypatch.setenv("TUNERY_WORDNET", str(tmp_path / "none"))
    with pytest.raises(WordNetMissing, match="apt-get install wordnet-base"):
        database_dir()


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_backbone):
    from tests.conftest import run_config
    from tunery import pipeline

    tmp = tmp_path_factory.mktemp("attack")
    cfg = run_config(tmp, tiny_backbone, "attacked", epochs=8)
    return pipeline.train(cfg), tmp / "reviews.csv"


def test_attack_run_writes_its_figures_with_their_settings_into_the_run(run, tiny_backbone, wordnet):
    run_dir, data = run
    results = attack_run(run_dir, data, recipes=["typo", "synonym"], n=12, seed=1,
                         settings={"encoder": tiny_backbone, "min_similarity": 0.5})
    for recipe, r in results.items():
        assert r["settings"]["recipe"] == recipe and r["settings"]["max_share"] == 0.2 and r["n"] == 12
        assert 0 <= r["accuracy_under_attack"] <= r["clean_accuracy"] <= 1
        assert r["attacked"] == round(r["clean_accuracy"] * 12) and r["succeeded"] <= r["attacked"]
        lines = (run_dir / "attacks" / f"{recipe}.jsonl").read_text().splitlines()
        assert len(lines) == 12
    assert "min_similarity" in results["synonym"]["settings"] and "min_similarity" not in results["typo"]["settings"]
    stored = json.loads((run_dir / "robustness.json").read_text())
    assert stored == json.loads((run_dir / "metrics.json").read_text())["robustness"] == json.loads(json.dumps(results))
    again = attack_run(run_dir, data, recipes=["typo"], n=12, seed=1, settings={"encoder": tiny_backbone})
    assert again["typo"] | {"seconds": 0} == results["typo"] | {"seconds": 0}
    assert set(json.loads((run_dir / "robustness.json").read_text())) == {"typo", "synonym"}  # merged
    page = (run_dir / "report.html").read_text()
    assert page.count('<h2 id="robustness">Robustness</h2>') == 1  # refreshed, not added twice
    assert page.index('id="robustness"') < page.index("<h2>Configuration</h2>")
    assert "synonym on 12 texts" in page and "max_share 0.2" in page


def test_an_int8_onnx_run_is_attacked_through_its_own_backend(run, tmp_path):
    """`tunery attack` on a run from `tunery compress`: the queries go to ONNX Runtime (the int8
    graph), so the clean accuracy is the int8 model's and every perturbed prediction is its own."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import tunery
    from tunery.compress import CompressOptions, compress_run

    run_dir, data = run
    int8 = compress_run(run_dir, CompressOptions(to="int8"), output_dir=tmp_path)
    results = attack_run(int8, data, recipes=["typo"], n=10, seed=2)  # synonym queries the same way
    predictor = tunery.load(int8)
    assert predictor.meta["backend"] == "onnx"
    rows = [json.loads(line) for line in (int8 / "attacks" / "typo.jsonl").read_text().splitlines()]
    assert len(rows) == 10 and results["typo"]["n"] == 10
    clean = predictor.predict_scores([r["text"] for r in rows]).argmax(1)
    assert clean.tolist() == [r["predicted"] for r in rows]  # the int8 model's answers, not the torch run's
    assert results["typo"]["clean_accuracy"] == np.mean([c == r["label"] for c, r in zip(clean, rows)])
    flipped = [r for r in rows if r["status"] == "succeeded"]
    if flipped:
        after = predictor.predict_scores([r["perturbed"] for r in flipped]).argmax(1)
        assert after.tolist() == [r["perturbed_predicted"] for r in flipped]
    assert json.loads((int8 / "robustness.json").read_text()) == results


def test_the_cli_prints_each_figure_beside_its_constraints(run, tiny_backbone, tmp_path):
    from tests.integration.helpers import cli

    run_dir, data = run
    shown = cli("attack", str(run_dir), "--data", str(data), "--recipe", "typo", "--n", "6", cwd=tmp_path).stdout
    assert "typo on 6 texts (max_share 0.2, budget None, typos_per_edit 1, seed 0)" in shown
    assert "accuracy under attack" in shown and "robustness.json" in shown


@pytest.mark.parametrize("args, message", [
    (["--recipe", "leet"], "choose typo, synonym or all"),
    (["--max-share", "0"], "max_share 0.0"),
    (["--budget", "1"], "budget 1: an attack needs at least 2 model queries"),
    (["--min-similarity", "2"], "min_similarity 2.0"),
])
def test_bad_settings_say_what_to_give(run, tmp_path, args, message):
    from tests.integration.helpers import cli

    run_dir, data = run
    proc = cli("attack", str(run_dir), "--data", str(data), *args, cwd=tmp_path, expect=1)
    assert message in proc.stderr


def test_only_single_label_classification_is_attacked(tmp_path, tiny_backbone):
    from tests.conftest import make_dataset, run_config
    from tunery import pipeline

    make_dataset("regression", n=120).to_csv(tmp_path / "reviews.csv", index=False)
    run_dir = pipeline.train(run_config(tmp_path, tiny_backbone, "values", epochs=1))
    with pytest.raises(AttackError, match="regression model"):
        attack_run(run_dir, tmp_path / "reviews.csv", recipes=["typo"], n=4)
