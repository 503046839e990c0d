"""Explanations: word alignment (WordPiece, overlapping byte-level offsets, Chinese), IG completeness,
repeatable LIME/SHAP, a planted-word task every method must get right, faithfulness against random,
every task, the ONNX backend's methods, and clear errors. Tiny runs trained once for the module."""

from __future__ import annotations

import random

import numpy as np
import pytest

from tests.conftest import FILL, fast_train, make_dataset

pytest.importorskip("captum")

PLANT = "zorblax"  # several WordPiece tokens in MiniLM's vocabulary: attributions must add up to the word


DECOYS = ["quimble", "frandor", "blikket"]  # as rare as the planted word, in both classes: only the plant decides


def _planted(n: int = 320, seed: int = 0):
    """Label 'yes' exactly when the planted word is in the sentence, at a random place among 2-8
    filler words, half of which also hold a decoy word as rare as it."""
    import pandas as pd

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = rng.sample(FILL, rng.randint(2, 8))
        if rng.random() < 0.5:
            words.insert(rng.randrange(len(words) + 1), rng.choice(DECOYS))
        if i % 2:
            words.insert(rng.randrange(len(words) + 1), PLANT)
        rows.append({"text": " ".join(words), "label": "yes" if i % 2 else "no"})
    return pd.DataFrame(rows)


def _train(tmp, backbone, name: str, df, data_cfg: dict, **settings):
    from tunery.config import config_from_dict
    from tunery.pipeline import train

    data = tmp / f"{name}.csv"
    df.to_csv(data, index=False)
    cfg = config_from_dict({"name": name, "output_dir": str(tmp / "runs"), "data": {"train": str(data), **data_cfg},
                            "model": {"backbone": backbone}, "train": fast_train(**{"epochs": 6, **settings})})
    return train(cfg)


@pytest.fixture(scope="module")
def runs(tiny_backbone, tmp_path_factory):
    """The planted task on the real MiniLM (about 15 s): IG's baseline, [CLS] [PAD]... [SEP], is a
    neutral input only to a pretrained encoder (a tiny random BERT scores it anywhere, often like a
    full sentence, and IG then has nothing to attribute). The other tasks on the tiny BERT."""
    tmp = tmp_path_factory.mktemp("explain-runs")
    out = {"planted": _train(tmp, "minilm-l6", "planted", _planted(), {"text_column": "text", "label_column": "label"},
                             epochs=3, lr=1e-4)}
    out["multilabel"] = _train(tmp, tiny_backbone, "ml", make_dataset("multilabel"),
                               {"text_column": "text", "label_column": "tags"})
    out["regression"] = _train(tmp, tiny_backbone, "reg", make_dataset("regression"),
                               {"text_column": "text", "label_column": "score"})
    return out


@pytest.fixture(scope="module")
def planted(runs):
    import tunery

    model = tunery.load(runs["planted"])
    texts = _planted(12, seed=5)
    positives = texts[texts.label == "yes"].text.tolist()
    assert [p["label"] for p in model.predict(positives)] == ["yes"] * len(positives)  # the task is learnt
    return model, positives


# -- words ----------------------------------------------------------------------------------------
def _minilm_tokenizer():
    from transformers import AutoTokenizer

    from tunery.backbones import resolve_backbone

    return AutoTokenizer.from_pretrained(resolve_backbone("minilm-l6"))


def _check_alignment(tokens, text: str, pair: str | None = None):
    for w in tokens.words:
        assert (text if w.segment == 0 else pair)[w.start:w.end] == w.text
    # every token's characters are shared out in full, so attributions are conserved
    per_token = np.bincount(tokens.share_token, weights=tokens.share, minlength=len(tokens.input_ids))
    assert np.allclose(per_token[per_token > 0], 1.0)
    scores = np.random.default_rng(0).standard_normal(len(tokens.input_ids))
    assert np.isclose(tokens.word_scores(scores).sum(), scores[np.unique(tokens.share_token)].sum())


def test_wordpiece_subwords_sum_to_the_words_they_came_from():
    from tunery.explain.words import tokenize_words

    text = "Unbelievably, zorblax's plot!"
    tokens = tokenize_words(_minilm_tokenizer(), text, max_length=64)
    assert [w.text for w in tokens.words] == ["Unbelievably", ",", "zorblax's", "plot", "!"]
    _check_alignment(tokens, text)
    # zorblax's is several WordPiece tokens, all of them in that word; [CLS] and [SEP] in none
    word = [w.text for w in tokens.words].index("zorblax's")
    assert (tokens.token_word == word).sum() >= 3
    assert tokens.token_word[0] == -1 and tokens.token_word[-1] == -1
    ids, _ = tokens.keep(np.array([True, True, False, True, True]))
    assert len(ids) == len(tokens.input_ids) - (tokens.token_word == word).sum()


def test_byte_level_tokens_with_overlapping_offsets_map_to_one_word():
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    from tunery.explain.words import tokenize_words

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["the café was naïve and great", "the film was bad"] * 20, vocab_size=300,
                            min_frequency=1, special_tokens=["<s>", "</s>", "<pad>"])
    bpe._tokenizer.post_processor = TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                       special_tokens=[("<s>", 0), ("</s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>")
    text = "a ☕ café 漢字"
    tokens = tokenize_words(tok, text, max_length=64)
    assert [w.text for w in tokens.words] == ["a", "☕", "café", "漢", "字"]
    _check_alignment(tokens, text)
    # ☕ is three byte tokens with the same offsets (2, 3): all three belong to it
    assert (tokens.token_word == 1).sum() == 3 and (tokens.token_word == 3).sum() == 3


def test_chinese_text_is_explained_character_by_character():
    from tunery.explain.words import tokenize_words

    text, pair = "这家餐厅的菜很好吃，服务一般。", "Service: ok"
    tokens = tokenize_words(_minilm_tokenizer(), text, pair, max_length=64)
    assert [w.text for w in tokens.words if w.segment == 0] == list(text)
    assert [w.text for w in tokens.words if w.segment == 1] == ["Service", ":", "ok"]
    _check_alignment(tokens, text, pair)


def test_words_cut_off_by_max_length_are_left_out_and_said_so():
    from tunery.explain.words import tokenize_words

    tokens = tokenize_words(_minilm_tokenizer(), "one two three four five six seven", max_length=5)
    assert [w.text for w in tokens.words] == ["one", "two", "three"] and tokens.truncated


# -- methods ----------------------------------------------------------------------------------------
def test_ig_is_complete_within_its_reported_delta(planted):
    model, texts = planted
    for e in model.explain(texts[:3], method="ig", options={"steps": 200}):
        total = sum(w.score for w in e.words)
        # the delta is measured, and small: attributions account for the score's change from the baseline
        assert abs(total - (e.score - e.baseline_score) - e.delta) < 1e-6
        assert abs(e.delta) <= 0.02 * abs(e.score - e.baseline_score) + 1e-4
        assert e.evaluations == 1 + 200 + 1 and e.params == {"steps": 200, "internal_batch_size": 50}
    # the baseline's score is the model's on [CLS] [PAD]... [SEP], computed independently
    from tunery.explain.words import tokenize_words
    from tunery.inference import Encoded

    tokens = tokenize_words(model.tokenizer, texts[0], max_length=64)
    ids = np.where(tokens.special, tokens.input_ids, model.tokenizer.pad_token_id)
    base = model.encoded_scores(Encoded([ids.tolist()], None, [None]))[0, model.label_names.index("yes")]
    assert np.isclose(model.explain(texts[0], method="ig").baseline_score, base, atol=1e-5)


def test_ig_on_the_embeddings_equals_captums_layer_ig_on_the_embedding_layer(planted):
    """tunery feeds the path's embeddings as inputs_embeds (no capture passes, no hooks) and runs the
    last layer at [CLS] only; the attributions are the ones LayerIntegratedGradients gives on the
    word-embedding layer of the plain model."""
    import torch
    from captum.attr import LayerIntegratedGradients

    from tunery.cls_only import last_layer

    model, texts = planted
    assert last_layer(model.model) is not None  # the shortcut applies to this model, so it is compared
    e = model.explain(texts[1], method="ig", options={"steps": 32})
    from tunery.explain.words import tokenize_words

    tokens = tokenize_words(model.tokenizer, texts[1], max_length=64)
    ids = torch.from_numpy(tokens.input_ids)[None]
    base = torch.where(torch.from_numpy(tokens.special)[None], ids, model.tokenizer.pad_token_id)
    k = model.label_names.index(e.target)
    net = model.model
    attr = LayerIntegratedGradients(lambda i: torch.softmax(net(input_ids=i).logits, -1)[:, k],
                                    net.get_input_embeddings()).attribute(ids, baselines=base, n_steps=32)
    expected = tokens.word_scores(attr[0].sum(-1).double().numpy())
    assert [w.score for w in e.words] == pytest.approx(expected.tolist(), abs=1e-6)


@pytest.mark.parametrize("method", ["lime", "shap"])
def test_sampling_methods_repeat_exactly_for_the_same_seed(planted, method):
    model, texts = planted
    a = model.explain(texts[0], method=method, options={"samples": 60}, seed=3)
    b = model.explain(texts[0], method=method, options={"samples": 60}, seed=3)
    c = model.explain(texts[0], method=method, options={"samples": 60}, seed=4)
    assert [w.score for w in a.words] == [w.score for w in b.words]
    assert [w.score for w in a.words] != [w.score for w in c.words]
    assert a.params["seed"] == 3 and a.evaluations == 61


@pytest.mark.parametrize("method", ["ig", "shap", "lime", "occlusion"])
def test_every_method_ranks_the_planted_word_first(planted, method):
    model, texts = planted
    for e in model.explain(texts, method=method, target="yes"):
        assert e.target == "yes" and e.prediction["label"] == "yes"
        assert e.top(1)[0].text == PLANT, [(w.text, round(w.score, 4)) for w in e.words]


def test_ig_runs_in_the_models_own_precision(runs, planted):
    """A bf16 predictor (the default on CPUs with AVX512-BF16/AMX and on GPUs) explains in bf16:
    the same top word, its delta reported and still small beside the score's change."""
    import tunery

    fp32, texts = planted
    model = tunery.load(runs["planted"], precision="bf16")
    assert str(next(model.model.parameters()).dtype) == "torch.bfloat16"  # weights cast once at load
    e, f = model.explain(texts[0], method="ig", options={"steps": 32}), fp32.explain(texts[0], method="ig",
                                                                                   options={"steps": 32})
    assert e.top(1)[0].text == f.top(1)[0].text == PLANT
    assert abs(e.delta - f.delta) <= 0.05 * abs(f.score - f.baseline_score) + 0.01  # bf16 adds little to the gap
    assert [w.score for w in e.words] == pytest.approx([w.score for w in f.words], abs=0.05)


def test_load_puts_the_model_where_device_says(runs, planted):
    """`tunery.load(run, device=...)`: the CPU by default, the GPU for "auto" where torch sees one (the
    same helper the teacher labeller uses), the same predictions; a bad value, or "cuda" without a GPU,
    fails before the run loads, naming the choices."""
    import torch

    import tunery

    cpu, texts = planted
    model = tunery.load(runs["planted"], device="auto")
    assert next(model.model.parameters()).device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert next(cpu.model.parameters()).device.type == "cpu"
    assert [p["label"] for p in model.predict(texts)] == [p["label"] for p in cpu.predict(texts)]
    with pytest.raises(ValueError, match="give auto .* cpu or cuda"):
        tunery.load(runs["planted"], device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no GPU here"):
            tunery.load(runs["planted"], device="cuda")


def test_faithfulness_beats_random_rankings(planted):
    model, texts = planted
    for method in ("ig", "occlusion"):
        for e in model.explain(texts, method=method, faithfulness=True):
            f = e.faithfulness
            assert f["comprehensiveness"] >= 2 * f["random_comprehensiveness"] > 0
            assert f["sufficiency"] <= f["random_sufficiency"]
            assert f["evaluations"] > 0
    occl = model.explain(texts[0], method="occlusion", faithfulness=True)
    assert occl.faithfulness["loo_spearman"] == pytest.approx(1.0)  # occlusion is leave-one-out itself


def test_other_tasks_explain_their_label_or_value(runs):
    import tunery

    ml = tunery.load(runs["multilabel"])
    e = ml.explain("pizza goal the film was", method="occlusion", target="food")
    assert e.target == "food" and "labels" in e.prediction and len(e.words) == 5
    assert ml.explain("pizza goal the film", method="ig", target=1).target == ml.label_names[1]
    reg = tunery.load(runs["regression"])
    e = reg.explain("great superb the film", method="ig")
    assert e.target is None and "value" in e.prediction
    assert np.isclose(e.score, e.prediction["value"], atol=1e-4)


def test_an_onnx_run_explains_by_removal_and_refuses_gradients(runs, planted):
    pytest.importorskip("onnxruntime")
    import tunery
    from tunery.compress import CompressOptions, compress_run
    from tunery.errors import UnsupportedMethodError

    model, texts = planted
    onnx = tunery.load(compress_run(runs["planted"], CompressOptions(to="onnx")))
    with pytest.raises(UnsupportedMethodError, match="needs gradients.*shap, lime, occlusion"):
        onnx.explain(texts[0], method="ig")
    a, b = onnx.explain(texts[0], method="occlusion"), model.explain(texts[0], method="occlusion")
    np.testing.assert_allclose([w.score for w in a.words], [w.score for w in b.words], atol=1e-4)


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "gradcam"}, "method 'gradcam' is not one tunery has: choose one of ig, shap, lime, occlusion"),
    ({"method": "lime", "options": {"steps": 5}}, "option 'steps' is not one of lime's options"),
    ({"method": "ig", "options": {"steps": 0}}, "steps=0: must be above 0"),
    ({"method": "ig", "options": {"steps": 2.5}}, "steps=2.5: give a whole number"),
    ({"method": "ig", "target": "maybe"}, "target 'maybe' is not one of this model's labels: 'no', 'yes'"),
    ({"method": "ig", "target": 7}, "target 7: this model has labels 0..1"),
])
def test_bad_requests_say_what_to_give(planted, kwargs, match):
    from tunery.errors import ExplainError

    model, texts = planted
    with pytest.raises(ExplainError, match=match):
        model.explain(texts[0], **kwargs)


def test_an_empty_text_has_no_words_to_explain(planted):
    model, _ = planted
    e = model.explain("", method="lime")
    assert e.words == [] and 0 <= e.score <= 1


# -- the command line ---------------------------------------------------------------------------------
def test_cli_explains_texts_in_colour_json_and_html(runs, tmp_path):
    import json

    from tests.integration.helpers import cli

    run = str(runs["planted"])
    shown = cli("explain", run, "--text", "the film zorblax was", "--method", "occlusion", "--faithfulness",
                cwd=tmp_path).stdout
    assert "predicted yes" in shown and "top words: zorblax" in shown and "comprehensiveness" in shown
    got = json.loads(cli("explain", run, "--text", "zorblax the plot", "--text", "the plot", "--json", "--method",
                         "lime", "--option", "samples=40", "--seed", "2", cwd=tmp_path).stdout)
    assert [e["method"] for e in got] == ["lime", "lime"] and got[0]["params"]["samples"] == 40
    assert got[0]["words"][0] == {"text": "zorblax", "start": 0, "end": 7, "segment": 0, "score": got[0]["words"][0]["score"]}
    cli("explain", run, "--text", "a zorblax <b>story</b>", "--html", "page.html", cwd=tmp_path)
    page = (tmp_path / "page.html").read_text()
    # one mark per word (a, zorblax, <, b, >, story, <, /, b, >), each titled with its score; the legend's are not
    assert page.count('" title="') == 10 and "&lt;" in page and "<b>story" not in page


def test_cli_explains_a_file_and_evaluates_the_methods(runs, tmp_path):
    import json

    from tests.integration.helpers import cli

    run = str(runs["planted"])
    _planted(8, seed=9).to_csv(tmp_path / "texts.csv", index=False)
    cli("explain", run, "--input", "texts.csv", "--output", "out.jsonl", "--method", "occlusion", "--limit", "5",
        cwd=tmp_path)
    lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(lines) == 5 and all(e["method"] == "occlusion" for e in lines)
    cli("explain", run, "--input", "texts.csv", "--output", "out.html", "--method", "ig", cwd=tmp_path)
    assert (tmp_path / "out.html").read_text().count('class="tx-expl"') == 8
    table = cli("explain", run, "--evaluate", "--data", "texts.csv", "--n", "4", "--methods", "ig,occlusion",
                cwd=tmp_path).stdout
    assert "faithfulness on 4 texts" in table and "ig" in table and "occlusion" in table
    doc = json.loads(cli("explain", run, "--evaluate", "--data", "texts.csv", "--n", "3", "--methods", "occlusion",
                         "--json", cwd=tmp_path).stdout)
    occl = doc["methods"]["occlusion"]
    assert doc["texts"] == 3 and occl["loo_spearman"] == pytest.approx(1.0) and occl["evaluations_per_explanation"] > 1


@pytest.mark.parametrize("args, message", [
    (["--text", "x", "--input", "f.csv"], "give one of --text TEXT, --input FILE --output FILE, or --evaluate"),
    ([], "give one of --text TEXT"),
    (["--input", "texts.csv"], "--input needs --output FILE (.jsonl, .json or .html)"),
    (["--input", "texts.csv", "--output", "x.txt"], "--output x.txt: give a .jsonl, .json or .html file"),
    (["--text", "x", "--option", "steps"], "--option 'steps': write KEY=VALUE"),
    (["--text", "x", "--option", "samples=5"], "option 'samples' is not one of ig's options (steps, internal_batch_size)"),
    (["--text", "x", "--method", "deeplift"], "method 'deeplift' is not one tunery has"),
    (["--evaluate"], "--evaluate needs --data FILE"),
    (["--input", "texts.csv", "--output", "o.jsonl", "--text-column", "body"], "no column 'body'"),
])
def test_cli_bad_flags_say_what_to_do(runs, tmp_path, args, message):
    from tests.integration.helpers import cli

    _planted(4).to_csv(tmp_path / "texts.csv", index=False)
    proc = cli("explain", str(runs["planted"]), *args, cwd=tmp_path, expect=None)
    assert proc.returncode != 0 and message in " ".join((proc.stdout + proc.stderr).split()), proc.stderr
