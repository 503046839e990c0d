"""Record-level differential privacy (train.dp, DP-SGD on Opacus): per-row clipping and calibrated
noise in the loop's optimizer step, the accountant's epsilon in the log and metrics.json, LoRA, an
exact resume, and the settings it refuses."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from tests.conftest import make_dataset, run_config
from tunery import pipeline
from tunery.config import DPConfig, TrainConfig, config_from_dict
from tunery.errors import ConfigError


def _model_and_batch(backbone: str, rows: int = 8, length: int = 12):
    """The tiny BERT without dropout (a row's gradient is then a function of the row alone) and a
    batch of `rows` unpadded rows."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=2, hidden_dropout_prob=0.0,
                                                               attention_probs_dropout_prob=0.0)
    model.get_input_embeddings().weight.requires_grad_(False)  # model.freeze_embeddings, the default
    model.train()
    ids = torch.randint(1000, 2000, (rows, length))
    labels = torch.arange(rows) % 2
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, labels


def _private(model, noise: float, clip: float, rows: int):
    """PrivateTraining over SGD at lr 0: the step leaves the noisy, clipped mean gradient in p.grad."""
    from tunery.train.dp import PrivateTraining

    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    return PrivateTraining(model, optimizer, DPConfig(noise_multiplier=noise, max_grad_norm=clip),
                           batch_size=rows, accum_steps=1, n_train=10 * rows)


def test_each_rows_gradient_is_clipped_before_the_mean(tiny_backbone):
    rows, clip = 8, 1e-3
    model, batch, labels = _model_and_batch(tiny_backbone, rows)
    plain = copy.deepcopy(model)  # the same weights, without Opacus's hooks
    dp = _private(model, noise=1e-6, clip=clip, rows=rows)
    torch.nn.functional.cross_entropy(dp.model(**batch).logits, labels).backward()
    dp.check(rows)
    params = dp.params
    per_row = [p.grad_sample.detach().clone() for p in params]
    # Opacus's per-row gradients are the gradients of each row's own loss: row 0 alone, without Opacus
    # (this also covers BERT's position embeddings, looked up once per batch and broadcast)
    alone = torch.autograd.grad(torch.nn.functional.cross_entropy(
        plain(**{k: v[:1] for k, v in batch.items()}).logits, labels[:1]),
        [p for p in plain.parameters() if p.requires_grad])
    for g, a in zip(per_row, alone):
        torch.testing.assert_close(g[0], a, rtol=1e-4, atol=1e-6)
    norms = torch.stack([g.reshape(rows, -1).norm(dim=1) for g in per_row], dim=1).norm(dim=1)
    assert (norms > 100 * clip).all()  # every row is clipped at this bound
    # a term of the weights alone (FedProx's proximal term) is added after the noise, unclipped
    dp.step(1, extra=[torch.full_like(p, 0.25) for p in params])
    grad = [p.grad.detach() - 0.25 for p in params]
    # the step's gradient is the mean of the clipped rows (noise std 1e-9 here) ...
    factor = (clip / (norms + 1e-6)).clamp(max=1.0)
    for g, rows_g in zip(grad, per_row):
        torch.testing.assert_close(g, torch.einsum("i,i...->...", factor, rows_g) / rows, rtol=1e-3, atol=1e-7)
    # ... so its norm is at most max_grad_norm, far below the unclipped mean's
    total = torch.cat([g.flatten() for g in grad]).norm()
    assert total <= clip * (1 + 1e-3)
    unclipped = torch.cat([g.mean(dim=0).flatten() for g in per_row]).norm()
    assert unclipped > 10 * total
    dp.close()
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())
    assert not model._forward_pre_hooks and not model.bert.embeddings.position_embeddings._forward_pre_hooks


def test_the_noise_has_std_noise_multiplier_times_clip_over_batch(tiny_backbone):
    rows, noise, clip = 8, 50.0, 0.5
    model, batch, labels = _model_and_batch(tiny_backbone, rows)
    dp = _private(model, noise=noise, clip=clip, rows=rows)
    torch.manual_seed(1)
    torch.nn.functional.cross_entropy(dp.model(**batch).logits, labels).backward()
    dp.check(rows)
    dp.step(1)
    grad = torch.cat([p.grad.flatten() for p in dp.params])  # the signal: norm <= clip / rows, nothing beside
    assert grad.numel() > 20_000
    assert grad.std().item() == pytest.approx(noise * clip / rows, rel=0.03)
    assert abs(grad.mean().item()) < 0.05 * noise * clip / rows
    dp.close()


def test_lora_dp_sgd_run_learns_reports_epsilon_and_saves_a_plain_model(tmp_path, st_backbone):
    # DP-SGD needs many rows per step for its signal to stand above the noise: 1000 toy reviews (800 to
    # train), batches of 64, LoRA on the mean-pooled tiny BERT (few trainable weights, a head that sees
    # the words from the start). Full fine-tuning of the random 2-layer model stays at chance under this
    # noise on such data (docs/privacy.md); the resume test below trains it.
    import tunery
    from opacus.accountants import RDPAccountant
    from transformers import AutoModelForSequenceClassification

    data = make_dataset("binary", n=1000)
    data.to_csv(tmp_path / "reviews.csv", index=False)
    cfg = run_config(tmp_path, st_backbone, "private", model={"method": "lora", "lora": {"r": 4}}, epochs=4,
                     batch_size=64, lr=2e-2, log_every_steps=5,
                     dp={"noise_multiplier": 0.5, "max_grad_norm": 1.0, "delta": 1e-3})
    run = pipeline.train(cfg)
    m = json.loads((run / "metrics.json").read_text())
    dp = m["training"]["dp"]
    n_train = m["training"]["n_train"]
    assert dp["sample_rate"] == pytest.approx(64 / n_train)
    assert dp["steps"] == m["training"]["steps"] == 4 * -(-n_train // 64)
    accountant = RDPAccountant()
    for _ in range(dp["steps"]):
        accountant.step(noise_multiplier=0.5, sample_rate=64 / n_train)
    assert dp["epsilon"] == pytest.approx(accountant.get_epsilon(1e-3), rel=1e-9)
    assert dp["accountant"] == "rdp" and dp["outside_guarantee"] == []
    assert m["training"]["precision"] == "fp32"
    assert m["model"]["test"]["accuracy"] > 0.7, m["model"]["test"]  # chance: 0.5
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    eps = [r["epsilon"] for r in log if "split" not in r]
    assert eps == sorted(eps) and eps[-1] == pytest.approx(dp["epsilon"])
    # the saved model is plain: LoRA merged, no Opacus `_module.` prefixes; it loads and predicts
    model = AutoModelForSequenceClassification.from_pretrained(run / "model")
    assert not any("lora" in k or "_module" in k for k in model.state_dict())
    predicted = [p["label"] for p in tunery.load(run).predict(data["review"][:200].tolist())]
    assert (data["label"][:200] == predicted).mean() > 0.7


def test_dp_sgd_resumes_exactly_with_virtual_steps(tmp_path, tiny_backbone):
    """Interrupted after a checkpoint and resumed: the same noise, weights, log and metrics as a straight
    run; with accumulation (a short last window), EMA and early stopping armed."""
    from safetensors.torch import load_file

    from tunery.train.callbacks import Callback

    train = dict(epochs=2, batch_size=10, lr=5e-3, grad_accum_steps=3, eval_every_steps=4, log_every_steps=3,
                 ema_decay=0.9, early_stopping_patience=5, dp={"noise_multiplier": 0.7, "max_grad_norm": 0.5})
    straight = pipeline.train(run_config(tmp_path, tiny_backbone, "straight", **train))

    class Kill(Callback):
        def on_step(self, state) -> None:
            if state.step == 6:  # two steps past the checkpoint of step 4
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pipeline.train(run_config(tmp_path, tiny_backbone, "killed", **train), callbacks=[Kill()])
    saved = torch.load(tmp_path / "runs" / "killed.partial" / "checkpoints" / "last" / "trainer.pt", weights_only=False)
    assert saved["state"]["step"] == 4  # resumed from there, not from the start
    resumed = pipeline.resume("runs/killed")
    a, b = (json.loads((r / "metrics.json").read_text()) for r in (straight, resumed))
    assert a["model"] == b["model"] and a["training"]["dp"] == b["training"]["dp"]
    # 192 training rows: 20 batches of 10 an epoch (the last of 2 rows), 6 steps of 3 and a short one of 2
    assert a["training"]["steps"] == b["training"]["steps"] == 2 * 7

    def records(run):
        return [{k: v for k, v in json.loads(line).items() if k not in ("samples_per_s", "eval_seconds")}
                for line in (run / "log.jsonl").read_text().splitlines()]

    assert records(straight) == records(resumed)
    wa, wb = (load_file(r / "model" / "model.safetensors") for r in (straight, resumed))
    assert all((wa[k] == wb[k]).all() for k in wa)


@pytest.mark.parametrize("train, message", [
    ({"adversarial": {"method": "fgm"}}, r"dp.noise_multiplier: 1.0 with adversarial.method: fgm .* set "
                                         r"train.adversarial.method: none or train.dp.noise_multiplier: 0"),
    ({"rdrop": 0.5}, r"with rdrop: 0.5 is not supported .* set train.rdrop: 0"),
    ({"noise": {"copies": 2}}, r"each text would train as 3 rows.* set train.noise.copies: 0"),
    ({"precision": "bf16"}, r"set train.precision: fp32 or auto"),
    ({"dp": {"noise_multiplier": -1}}, r"train.dp.noise_multiplier: Input should be greater than or equal to 0"),
    ({"dp": {"noise_multiplier": 1.0, "max_grad_norm": 0}}, r"train.dp.max_grad_norm: Input should be greater than 0"),
    ({"dp": {"noise_multiplier": 1.0, "delta": 1}}, r"train.dp.delta: Input should be less than 1"),
], ids=["adversarial", "rdrop", "noise-copies", "bf16", "negative-noise", "zero-clip", "delta"])
def test_settings_dp_sgd_cannot_honour_are_refused(train, message):
    tree = {"data": {"train": "x.csv"}, "train": {"dp": {"noise_multiplier": 1.0}, **train}}
    with pytest.raises(ConfigError, match=message):
        config_from_dict(tree)


def test_distillation_with_dp_sgd_is_refused():
    with pytest.raises(ConfigError, match=r"^config: train.dp.noise_multiplier: 1.0 with distill.teacher is not "
                                          r"supported .* set train.dp.noise_multiplier: 0$"):
        config_from_dict({"data": {"train": "x.csv"}, "train": {"dp": {"noise_multiplier": 1.0}},
                          "distill": {"teacher": "runs/big"}})


def test_dp_is_off_by_default_and_allows_what_it_can_honour():
    assert TrainConfig().dp.noise_multiplier == 0
    cfg = config_from_dict({"data": {"train": "x.csv"}, "train": {
        "dp": {"noise_multiplier": 1.0}, "grad_accum_steps": 4, "ema_decay": 0.99, "precision": "auto"}})
    assert cfg.train.dp == DPConfig(noise_multiplier=1.0)
