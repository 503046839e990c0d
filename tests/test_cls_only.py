"""The last encoder layer computed at [CLS] only (cls_only.py): the same logits and gradients as
the full layer, with padding, LoRA and the mean-pooling layer; the layer restored after; the runs that
cannot use it train without it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tunery.cls_only import cls_only_last_layer, last_layer, matches_full_layer


def _model(backbone, labels=3, lora=False, mean_pooling=False, **kwargs):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=labels, **kwargs)
    if mean_pooling:
        from tunery.pooling import add_mean_pooling_layer

        add_mean_pooling_layer(model)
    if lora:
        from peft import LoraConfig, get_peft_model

        targets = ["query", "value"] if lora is True else lora
        model = get_peft_model(model, LoraConfig(r=4, target_modules=targets, lora_dropout=0.1, task_type="SEQ_CLS"))
    return model


def _batch(backbone):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(backbone)
    texts = ["good", "a much longer text than the first one, with padding after the short ones", "bad movie"]
    return dict(tok(texts, padding=True, return_tensors="pt"))


@pytest.mark.parametrize("lora,mean_pooling", [(False, False), (True, False), (False, True)])
def test_cls_only_gives_the_full_layers_logits_and_gradients(tiny_backbone, lora, mean_pooling):
    model = _model(tiny_backbone, lora=lora, mean_pooling=mean_pooling)
    batch, labels = _batch(tiny_backbone), torch.tensor([0, 1, 2])
    assert batch["attention_mask"].min() == 0  # padded rows: the mask is sliced to [CLS]'s row
    model.eval()  # no dropout: both passes see the same network

    def loss_and_grads():
        model.zero_grad()
        out = model(**batch, labels=labels)
        out.loss.backward()
        return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    full, full_grads = loss_and_grads()
    layer = last_layer(model)
    with cls_only_last_layer(model) as active:
        assert active and "forward" in vars(layer)
        short, short_grads = loss_and_grads()
    assert "forward" not in vars(layer)  # the class's forward again
    assert torch.allclose(full, short, atol=1e-5)
    assert set(full_grads) == set(short_grads)
    for name, grad in full_grads.items():
        assert torch.allclose(grad, short_grads[name], atol=1e-5, rtol=1e-4), name
    assert matches_full_layer(model, batch) < 1e-5


@pytest.mark.parametrize("lora,mean_pooling,attention", [(False, False, "sdpa"), (False, False, "eager"),
                                                        (["query", "value", "dense"], False, "sdpa"),
                                                        (False, True, "sdpa")])
def test_with_dropout_the_shortcut_draws_the_full_layers_random_numbers(tiny_backbone, lora, mean_pooling,
                                                                       attention):
    """In training, dropout on: the same seed gives the same logits and gradients with the shortcut as
    without it, and leaves the generator in the same state, so a seeded run trains along the same path.
    The LoRA case has adapters (with their own dropout) on the query and the dense layers, which see
    [CLS] alone in the shortcut."""
    model = _model(tiny_backbone, lora=lora, mean_pooling=mean_pooling, attn_implementation=attention,
                   hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2)
    batch, labels = _batch(tiny_backbone), torch.tensor([0, 1, 2])
    model.train()

    def step():
        model.zero_grad()
        torch.manual_seed(7)
        out = model(**batch, labels=labels)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return out.logits.detach(), grads, torch.rand(4)

    full, full_grads, full_next = step()
    with cls_only_last_layer(model) as active:
        assert active
        short, short_grads, short_next = step()
    assert torch.equal(full_next, short_next)  # the generator is where the full layer leaves it
    assert torch.allclose(full, short, atol=1e-5)
    assert set(full_grads) == set(short_grads)
    for name, grad in full_grads.items():
        assert torch.allclose(grad, short_grads[name], atol=1e-5, rtol=1e-4), name
    torch.manual_seed(7)
    other = model(**batch).logits.detach()
    assert not torch.allclose(other, model.eval()(**batch).logits.detach(), atol=1e-3)  # dropout was on
    assert all("forward" not in vars(m) for m in model.modules())  # every patched forward restored


def test_cls_only_stays_off_where_the_head_reads_more_than_cls(tiny_backbone):
    from transformers import AutoModelForTokenClassification

    tagger = AutoModelForTokenClassification.from_pretrained(tiny_backbone, num_labels=3)
    assert last_layer(tagger) is None and matches_full_layer(tagger, _batch(tiny_backbone)) is None
    with cls_only_last_layer(tagger) as active:
        assert not active
    with cls_only_last_layer(_model(tiny_backbone), enabled=False) as active:
        assert not active


def test_cls_only_is_restored_when_the_block_raises_and_when_blocks_nest(tiny_backbone):
    model = _model(tiny_backbone)
    layer = last_layer(model)
    with pytest.raises(RuntimeError), cls_only_last_layer(model):
        raise RuntimeError("a crash mid-training")
    assert "forward" not in vars(layer)
    with cls_only_last_layer(model):  # training evaluates through predict_scores, which enters again
        with cls_only_last_layer(model):
            installed = vars(layer)["forward"]
        assert vars(layer)["forward"] is installed  # the inner block leaving keeps the outer's shortcut
    assert "forward" not in vars(layer)


def test_predict_scores_uses_the_shortcut_and_gives_the_full_layers_scores(tiny_backbone):
    from transformers import AutoTokenizer

    from tunery.inference import collate, encode, predict_scores
    from tunery.tasks import get_task

    model, task = _model(tiny_backbone), get_task("classification")
    tok = AutoTokenizer.from_pretrained(tiny_backbone)
    data = encode(tok, ["good", "a longer bad text than that", "fine"] * 5, None, [0] * 15, max_length=32)
    calls = []
    hook = last_layer(model).register_forward_hook(lambda mod, args, out: calls.append(out.shape[1]))
    fast = predict_scores(model, task, data, batch_size=4, pad_id=tok.pad_token_id)
    assert calls and set(calls) == {1}  # the last layer returned [CLS] alone
    hook.remove()
    model.eval()
    with torch.no_grad():
        full = torch.softmax(model(**collate(data, np.arange(15), tok.pad_token_id)).logits, -1)
    assert np.allclose(fast, full.numpy(), atol=1e-5)


def test_training_records_whether_the_shortcut_ran(tiny_backbone, tmp_path):
    """On by default in training (its first-batch check passed, so metrics.json says it ran); a run that
    turns it off is recorded as such. With dropout on, the two runs of one seed train along the same
    path: the same weights to float rounding."""
    import json

    import pandas as pd
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    from tunery.config import TrainConfig, config_from_dict
    from tunery.pipeline import train

    assert TrainConfig().cls_only_last_layer is True
    rows = [("great fun", "pos"), ("awful mess", "neg"), ("loved it", "pos"), ("boring", "neg")] * 12
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(tmp_path / "d.csv", index=False)
    weights = {}
    for on in (True, False):
        cfg = config_from_dict({"name": f"cls-{on}", "output_dir": str(tmp_path / "runs"),
                                "data": {"train": str(tmp_path / "d.csv")}, "model": {"backbone": tiny_backbone},
                                "train": {"epochs": 1, "progress": False, "precision": "fp32",
                                          "cls_only_last_layer": on},
                                "evaluate": {"baseline": False, "explanations": 0}}, source="t")
        run = train(cfg)
        assert json.loads((run / "metrics.json").read_text())["training"]["cls_only_last_layer"] is on
        weights[on] = load_file(run / "model" / "model.safetensors")
    start = AutoModelForSequenceClassification.from_pretrained(tiny_backbone).state_dict()
    moved = max(float((weights[True][k] - start[k]).abs().max()) for k in start if k in weights[True])
    apart = max(float((weights[True][k] - weights[False][k]).abs().max()) for k in weights[True])
    assert moved > 1e-3 and apart < 1e-6, (moved, apart)
