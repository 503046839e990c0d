"""The attribution methods, each a plain function: (input, model function, options) -> one score per
word, the model evaluations it made, and what else it reports.

- ``ig``: Integrated Gradients (Captum's IntegratedGradients on the word embeddings) from the
  baseline `[CLS] [PAD]... [SEP]` (special tokens kept, every other token padding); its convergence
  delta is sum(attributions) - (f(x) - f(baseline)), so completeness is checked on every call.
  Needs gradients: transformers runs only.
- ``shap``: Kernel SHAP (Captum's KernelShap) over words present/absent, `samples` coalitions drawn
  by the Shapley kernel. Chosen over the shap package's Partition explainer because it runs on the
  same word-removal function as LIME, occlusion and the faithfulness metrics (so its words and its
  scores mean the same thing as theirs), and because Captum is already the IG engine; see
  docs/explain.md for the measured comparison of faithfulness per model evaluation.
- ``lime``: LIME (Captum's Lime) with LIME's own choices for text: a ridge surrogate, words removed
  at random, samples weighted by an exponential kernel of the cosine distance (LIME's text width 25
  on distances x100 is width 0.25 here).
- ``occlusion``: leave-one-out, the score drop when one word is removed: W + 1 evaluations, exact
  for single removals.

Every method is seeded (LIME and SHAP draw from a generator seeded per call, so the same call gives
the same explanation) and batched (`batch` model evaluations at once; IG's `internal_batch_size`
bounds the memory of its gradient pass).
"""

from __future__ import annotations

import numpy as np

from tunery.explain.target import Target, WordFunction, torch_target
from tunery.explain.words import WordTokens

METHODS = ("ig", "shap", "lime", "occlusion")
GRADIENT_METHODS = frozenset({"ig"})
# each method's options with their defaults; anything else is refused by name
OPTIONS: dict[str, dict[str, float | int]] = {
    "ig": {"steps": 50, "internal_batch_size": 50},
    "shap": {"samples": 200, "batch": 64},
    "lime": {"samples": 200, "batch": 64, "kernel_width": 0.25},
    "occlusion": {"batch": 64},
}


def occlusion(f: WordFunction, n_words: int, *, batch: int = 64, **_) -> tuple[np.ndarray, dict]:
    keep = np.ones((n_words + 1, n_words), dtype=bool)
    keep[np.arange(1, n_words + 1), np.arange(n_words)] = False
    scores = np.concatenate([f(keep[i : i + batch]) for i in range(0, len(keep), batch)])
    return scores[0] - scores[1:], {}


def _captum_words(method: str, f: WordFunction, n_words: int, *, samples: int, batch: int, seed: int,
                  kernel_width: float = 0.25) -> np.ndarray:
    """Captum's LIME or Kernel SHAP over the words, through an input of ones (word present) against
    a baseline of zeros (word removed): the perturbed inputs Captum makes are the keep masks."""
    import torch
    from captum.attr import KernelShap, Lime

    def forward(keep: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(f(keep.detach().cpu().numpy()))

    if method == "lime":
        from captum._utils.models.linear_model import SkLearnRidge
        from captum.attr._core.lime import get_exp_kernel_similarity_function

        explainer = Lime(forward, interpretable_model=SkLearnRidge(alpha=1.0),
                         similarity_func=get_exp_kernel_similarity_function("cosine", kernel_width))
    else:
        explainer = KernelShap(forward)
    ones = torch.ones((1, n_words), dtype=torch.float32)
    with torch.random.fork_rng(devices=[]):  # seeded per call, the caller's generator untouched
        torch.manual_seed(seed)
        attr = explainer.attribute(ones, baselines=torch.zeros_like(ones), feature_mask=torch.arange(n_words)[None],
                                   n_samples=int(samples), perturbations_per_eval=int(batch))
    return attr[0].detach().double().numpy()


def lime(f: WordFunction, n_words: int, *, samples: int = 200, batch: int = 64, kernel_width: float = 0.25,
         seed: int = 0, **_) -> tuple[np.ndarray, dict]:
    return _captum_words("lime", f, n_words, samples=samples, batch=batch, seed=seed, kernel_width=kernel_width), {}


def shap(f: WordFunction, n_words: int, *, samples: int = 200, batch: int = 64, seed: int = 0,
         **_) -> tuple[np.ndarray, dict]:
    return _captum_words("shap", f, n_words, samples=samples, batch=batch, seed=seed), {}


def integrated_gradients(predictor, tokens: WordTokens, target: Target, *, steps: int = 50,
                         internal_batch_size: int = 50, **_) -> tuple[np.ndarray, dict]:
    """Word attributions by IG, and {delta, baseline_score, evaluations}.

    Captum's IntegratedGradients on the output of the word-embedding layer, fed to the model as
    ``inputs_embeds``: the same attributions as LayerIntegratedGradients on that layer (positions
    and token types are added inside the model as before), without the two forward passes
    LayerIntegratedGradients makes to capture the layer's output for the input and the baseline, the
    hooks it puts on the model, or Captum's two passes for the delta (the caller has f(x), the
    prediction; f(baseline) is one pass at the start of the same path). The
    weights need no gradients (`tunery.load` freezes them): only the path's embeddings get them. The
    last layer runs at [CLS] only where the model allows (`tunery.cls_only`): the same attributions.
    """
    import torch
    from captum.attr import IntegratedGradients

    from tunery.cls_only import cls_only_last_layer

    model, task, meta = predictor.model, predictor.meta["task"], predictor.meta
    embed = model.get_input_embeddings()
    device = embed.weight.device  # the inputs go where the model is (a GPU run explains there)
    pad = predictor.tokenizer.pad_token_id or 0
    ids = torch.from_numpy(tokens.input_ids)[None].to(device)
    special = torch.from_numpy(tokens.special)[None].to(device)
    baseline = torch.where(special, ids, torch.full_like(ids, pad))
    types = (torch.from_numpy(tokens.token_type_ids)[None].to(device)
             if tokens.token_type_ids is not None else None)
    with torch.no_grad():
        x, base = embed(ids), embed(baseline)

    def forward(embeddings):
        n = embeddings.shape[0]
        kwargs = {"inputs_embeds": embeddings,
                  "attention_mask": torch.ones(embeddings.shape[:2], dtype=torch.long, device=device)}
        if types is not None:
            kwargs["token_type_ids"] = types.expand(n, -1)
        return torch_target(model(**kwargs).logits, task, target, meta)

    with cls_only_last_layer(model):  # the head reads [CLS] only: the same gradients for less compute
        attr = IntegratedGradients(forward).attribute(x, baselines=base, n_steps=int(steps),
                                                      internal_batch_size=int(internal_batch_size))
        with torch.no_grad():
            baseline_score = float(forward(base)[0])
    token_scores = attr[0].float().sum(-1).double().cpu().numpy()
    # `steps` points with gradients and the baseline (f(x) is the prediction, counted by the caller)
    return tokens.word_scores(token_scores), {"baseline_score": baseline_score, "evaluations": int(steps) + 1}
