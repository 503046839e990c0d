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
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["adversarial"] == {
        **adv, "steps": 3, "step_size": None}  # the resolved config: PGD's and FreeLB's settings at their defaults
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


# -- PGD, FreeLB, R-Drop ---------------------------------------------------------------------------


def _batch(tiny_backbone):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_backbone)
    batch = tok(["a wonderful film", "the plot was dreadful and boring", "fine"], padding=True, return_tensors="pt")
    return batch, torch.tensor([1, 0, 1])


def _losses(model, batch, labels):
    """loss_fn and backward for EmbeddingAdversary.step, recording every loss backward received."""
    seen: list[float] = []

    def loss_fn():
        return model(**batch, labels=labels).loss

    def backward(value):
        seen.append(float(value.detach()))
        value.backward()

    return loss_fn, backward, seen


def test_the_ball_projection_and_the_ascent_step():
    from tunery.train.adversarial import ascend, project

    delta = torch.randn(2, 3, 4)
    norms = delta.flatten(1).norm(dim=1)
    radius = torch.tensor([float(norms[0]) / 2, float(norms[1]) * 2])
    out = project(delta, radius)
    assert out.flatten(1).norm(dim=1)[0] == pytest.approx(float(radius[0]), rel=1e-5)
    assert torch.equal(out[1], delta[1])  # inside its ball: unchanged
    active = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.float32)
    grad = torch.randn(2, 3, 4)
    moved = ascend(torch.zeros(2, 3, 4), grad, torch.tensor([0.5, 2.0]), active)
    assert moved.flatten(1).norm(dim=1).tolist() == pytest.approx([0.5, 2.0], rel=1e-5)
    assert (moved[0, 2] == 0).all() and (moved[1, 1:] == 0).all()  # padding never moves


@pytest.mark.parametrize("freeze", [True, False])
def test_pgd_stays_in_its_ball_and_its_perturbation_raises_the_loss(tiny_backbone, freeze):
    model = _tiny_model(tiny_backbone, freeze=freeze)
    batch, labels = _batch(tiny_backbone)
    adversary = EmbeddingAdversary(model.get_input_embeddings(), 0.05, method="pgd", steps=4).attach()
    loss_fn, backward, seen = _losses(model, batch, labels)
    backward(loss_fn())  # the clean pass, as the loop runs it
    params_after_clean = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert adversary.step(loss_fn, backward, batch["attention_mask"]) is None
    assert len(seen) == 2 and seen[1] > seen[0]  # clean, then the strongest perturbation: a higher loss
    norms = adversary.last_delta_norms
    assert (norms <= 0.05 + 1e-5).all() and (norms > 0.05 * 0.99).all()  # it climbs to the edge of its ball
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(grads) == len(params_after_clean) and any(not torch.equal(a, b) for a, b in zip(grads, params_after_clean))
    assert adversary.passes_per_step == 5 and not adversary.replaces_clean_pass
    with torch.no_grad():  # outside the step the embeddings are clean again
        assert model(**batch, labels=labels).loss.item() == pytest.approx(seen[0], rel=1e-6)
    adversary.detach()


def test_pgd_ascends_further_than_one_step_of_the_same_size(tiny_backbone):
    """K projected steps find a perturbation at least as harmful as FGM's single step to the edge."""
    model = _tiny_model(tiny_backbone, freeze=True)
    batch, labels = _batch(tiny_backbone)
    found = {}
    for steps, step_size in ((1, 0.05), (6, 0.02)):
        adversary = EmbeddingAdversary(model.get_input_embeddings(), 0.05, method="pgd", steps=steps,
                                       step_size=step_size).attach()
        loss_fn, backward, seen = _losses(model, batch, labels)
        backward(loss_fn())
        adversary.step(loss_fn, backward, batch["attention_mask"])
        adversary.detach()
        model.zero_grad()
        found[steps] = seen[1]
    assert found[6] >= found[1] - 1e-6


def test_freelb_climbs_inside_its_ball_averages_k_passes_and_repeats_by_seed(tiny_backbone):
    model = _tiny_model(tiny_backbone, freeze=True)
    batch, labels = _batch(tiny_backbone)
    runs = []
    for seed, step in ((3, 10), (3, 10), (3, 11)):
        model.zero_grad()
        adversary = EmbeddingAdversary(model.get_input_embeddings(), 0.1, method="freelb", steps=3, seed=seed).attach()
        assert adversary.replaces_clean_pass and adversary.passes_per_step == 3
        loss_fn, backward, seen = _losses(model, batch, labels)
        mean = adversary.step(loss_fn, backward, batch["attention_mask"], step)
        adversary.detach()
        assert len(seen) == 3 and mean == pytest.approx(3 * sum(seen) / 3, rel=1e-5)  # backward got loss / K
        assert seen[-1] > seen[0]  # each pass climbs
        assert (adversary.last_delta_norms <= 0.1 + 1e-5).all()
        runs.append((seen, [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (a, ga), (b, gb), (c, _) = runs
    assert a == b and all(torch.equal(x, y) for x, y in zip(ga, gb))  # same seed and step: the same step
    assert a != c  # another step draws another start


@pytest.mark.parametrize("problem_type, shape", [("single_label_classification", (4, 3)),
                                                 ("multi_label_classification", (4, 5)), ("regression", (4, 1))])
def test_rdrop_divergence_is_zero_for_identical_passes_and_positive_otherwise(problem_type, shape):
    from tunery.train.adversarial import rdrop_divergence, rdrop_loss

    torch.manual_seed(0)
    a = torch.randn(shape)
    assert float(rdrop_divergence(a, a.clone(), problem_type)) == pytest.approx(0.0, abs=1e-7)
    b = a + torch.randn(shape)
    d = float(rdrop_divergence(a, b, problem_type))
    assert d > 0 and d == pytest.approx(float(rdrop_divergence(b, a, problem_type)), rel=1e-5)  # symmetric
    labels = {"single_label_classification": torch.tensor([0, 1, 2, 0]),
              "multi_label_classification": (torch.rand(shape) > 0.5).float(),
              "regression": torch.randn(4)}[problem_type]

    def task(z):
        if problem_type == "single_label_classification":
            return torch.nn.functional.cross_entropy(z, labels)
        if problem_type == "multi_label_classification":
            return torch.nn.functional.binary_cross_entropy_with_logits(z, labels)
        return torch.nn.functional.mse_loss(z.squeeze(-1), labels)

    same = rdrop_loss(torch.cat([a, a]), task, 4.0, problem_type)
    assert float(same) == pytest.approx(float(task(a)), rel=1e-6)  # identical passes: the plain loss
    assert float(rdrop_loss(torch.cat([a, b]), task, 4.0, problem_type)) == pytest.approx(
        0.5 * (float(task(a)) + float(task(b))) + 2.0 * d, rel=1e-5)


@pytest.mark.parametrize("objective", [{"adversarial": {"method": "pgd", "epsilon": 0.02, "steps": 2}},
                                       {"adversarial": {"method": "freelb", "epsilon": 0.05, "steps": 2}},
                                       {"rdrop": 1.0}], ids=["pgd", "freelb", "rdrop"])
def test_each_robust_objective_learns_and_records_its_cost(tmp_path, tiny_backbone, objective):
    # that each repeats exactly is tested by tests/integration/test_resume.py (killed and resumed = straight)
    run = pipeline.train(run_config(tmp_path, tiny_backbone, "a", epochs=8, **objective))
    m = json.loads((run / "metrics.json").read_text())
    assert m["training"]["best_validation"] >= 0.9 and m["model"]["test"]["accuracy"] >= 0.8
    passes = {"pgd": 3, "freelb": 2}.get(objective.get("adversarial", {}).get("method"), 2)
    assert m["training"]["passes_per_step"] == passes and m["training"]["seconds_per_step"] > 0
    logged = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert all(r["passes_per_step"] == passes for r in logged if "lr" in r)  # the training records


@pytest.mark.parametrize("train, message", [
    ({"rdrop": 1.0, "adversarial": {"method": "pgd"}}, "train.rdrop: 0 or train.adversarial.method: none"),
    ({"adversarial": {"method": "pgd", "steps": 0}}, "steps"),
    ({"adversarial": {"method": "freelb", "step_size": 2}}, "step_size"),
    ({"rdrop": -1}, "rdrop"),
])
def test_bad_robustness_settings_name_the_setting(tmp_path, tiny_backbone, train, message):
    from tunery.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        run_config(tmp_path, tiny_backbone, "bad", **train)
