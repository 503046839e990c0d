"""FGM adversarial training on the word embeddings (train/adversarial.py)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from tests.conftest import run_config
from tunery import pipeline
from tunery.train.adversarial import EmbeddingAdversary, fgm_perturbation


def test_each_text_moves_along_its_own_gradient_by_epsilon_times_its_embedding_norm():
    grad = torch.zeros(3, 4, 5)
    grad[0, 1] = torch.arange(5.0)
    grad[1, :3] = 1e-3 * torch.randn(3, 5)  # tiny gradients still give a full-size step
    embeds = torch.randn(3, 4, 5)
    delta = fgm_perturbation(grad, embeds, 0.5)
    norms = delta.flatten(1).norm(dim=1).tolist()
    # the norm counts only the tokens with a gradient: row 0 token 1, row 1 tokens 0-2 (3 is padding)
    assert norms[0] == pytest.approx(0.5 * float(embeds[0, 1].norm()), rel=1e-5)
    assert norms[1] == pytest.approx(0.5 * float(embeds[1, :3].norm()), rel=1e-5)
    assert norms[2] == 0  # no gradient at all: no move, no NaN
    cos = float(torch.nn.functional.cosine_similarity(delta[0].flatten(), grad[0].flatten(), dim=0))
    assert cos == pytest.approx(1.0, abs=1e-6)
    assert (delta[0, [0, 2, 3]] == 0).all() and (delta[1, 3] == 0).all()
    # scale-free: the same relative move for embeddings ten times larger
    assert float(fgm_perturbation(grad, 10 * embeds, 0.5).flatten(1).norm(dim=1)[0]) == pytest.approx(10 * norms[0], rel=1e-5)


def _tiny_model(tiny_backbone, *, freeze: bool):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_backbone, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model.get_input_embeddings().weight.requires_grad_(not freeze)
    return model.train()


@pytest.mark.parametrize("freeze", [True, False])
def test_the_perturbation_raises_the_loss_with_frozen_or_trainable_embeddings(tiny_backbone, freeze):
    from transformers import AutoTokenizer

    model = _tiny_model(tiny_backbone, freeze=freeze)
    tok = AutoTokenizer.from_pretrained(tiny_backbone)
    batch = tok(["a wonderful film", "the plot was dreadful and boring"], padding=True, return_tensors="pt")
    labels = torch.tensor([1, 0])
    adversary = EmbeddingAdversary(model.get_input_embeddings(), epsilon=0.01).attach()
    clean = model(**batch, labels=labels).loss
    clean.backward()
    emb_grad = model.get_input_embeddings().weight.grad
    assert (emb_grad is None) == freeze  # frozen embeddings stay frozen
    with adversary.perturbed():
        adv = model(**batch, labels=labels).loss
    # To first order the loss rises by epsilon * ||g|| per text: it must rise.
    assert float(adv.detach()) > float(clean.detach())
    again = model(**batch, labels=labels).loss  # outside the block the embeddings are clean again
    assert float(again.detach()) == pytest.approx(float(clean.detach()), rel=1e-6)
    captured = adversary._clean
    with torch.no_grad():  # inference is never captured
        logits = model.eval()(**batch).logits
    assert adversary._clean is captured
    adversary.detach()
    with torch.no_grad():  # ... nor perturbed: the same logits as with no adversary at all
        assert torch.allclose(model(**batch).logits, logits, atol=1e-6)
    assert not model.get_input_embeddings()._forward_hooks
    with pytest.raises(RuntimeError, match="clean forward and backward"):
        with adversary.perturbed():
            pass


def test_fgm_training_learns_and_saves_a_plain_model(tmp_path, tiny_backbone):
    from transformers import AutoModelForSequenceClassification

    adv = {"method": "fgm", "epsilon": 0.05}
    run = pipeline.train(run_config(tmp_path, tiny_backbone, "fgm", adversarial=adv, epochs=8))
    m = json.loads((run / "metrics.json").read_text())
    # It learned: the kept checkpoint is right on 23 of 24 validation rows, and on test (24 rows,
    # chance 0.5) it makes at most 4 mistakes. Two checkpoints tie at 0.958 on validation; since
    # issue 10 the tie goes to the lower validation loss (the later one, 0.875 on test), where the
    # first one (at least 0.9 on test) was kept before: a floor of 0.9 on test judged that choice.
    assert m["training"]["best_validation"] >= 0.9
    assert m["model"]["test"]["accuracy"] >= 0.8
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["adversarial"] == adv
    model = AutoModelForSequenceClassification.from_pretrained(run / "model")  # a plain model
    assert model.config.num_hidden_layers == 2


def test_a_run_that_fails_mid_training_leaves_no_hook_on_the_model(tmp_path, tiny_backbone, monkeypatch):
    from tunery.train.callbacks import Callback

    attached = []
    attach = EmbeddingAdversary.attach

    def spy(self):
        attached.append(self)
        return attach(self)

    class Boom(Callback):
        def on_step(self, state) -> None:
            if state.step == 2:
                raise RuntimeError("boom")

    monkeypatch.setattr(EmbeddingAdversary, "attach", spy)
    with pytest.raises(RuntimeError, match="boom"):
        pipeline.train(run_config(tmp_path, tiny_backbone, "boom", adversarial={"method": "fgm"}), callbacks=[Boom()])
    (adversary,) = attached
    assert not adversary.embeddings._forward_hooks and adversary._clean is None


def test_fgm_training_is_seeded_and_changes_the_updates(tmp_path, tiny_backbone):
    from safetensors.torch import load_file

    adv = {"method": "fgm", "epsilon": 0.05}
    a, b, plain = (pipeline.train(run_config(tmp_path, tiny_backbone, name, max_steps=6, **extra))
                   for name, extra in (("a", {"adversarial": adv}), ("b", {"adversarial": adv}), ("plain", {})))
    wa, wb, wp = (load_file(r / "model" / "model.safetensors") for r in (a, b, plain))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # the adversarial pass adds no unseeded randomness
    assert any(not torch.allclose(wa[k], wp[k]) for k in wa)  # and it did change training


def test_an_unknown_adversarial_method_names_the_valid_ones(tmp_path, tiny_backbone):
    from tunery.errors import ConfigError

    with pytest.raises(ConfigError, match="fgm"):
        run_config(tmp_path, tiny_backbone, "typo", adversarial={"method": "fgsm"})
