"""`tunery explain RUN --evaluate`: every method's faithfulness on the user's own model and texts,
with its cost, in one table (compare methods within one model: AOPC ranges differ between models)."""

from __future__ import annotations

import numpy as np

from tunery.explain.core import explain
from tunery.explain.methods import METHODS, GRADIENT_METHODS

FIGURES = ("comprehensiveness", "sufficiency", "loo_spearman")


def runnable_methods(predictor, methods=None) -> list[str]:
    """The methods asked for (default: all) that this backend can run."""
    wanted = list(methods or METHODS)
    if not getattr(predictor, "supports_gradients", False):
        wanted = [m for m in wanted if m not in GRADIENT_METHODS]
    return wanted


def evaluate_methods(predictor, texts: list[str], pairs: list[str] | None = None, *, methods=None, seed: int = 0,
                     options: dict | None = None, on_text=None) -> dict:
    """Per method: the mean of each faithfulness figure and of random's over `texts` (texts without
    words are skipped), ms and model evaluations per explanation (faithfulness's own evaluations
    not counted). `options`: {method: {option: value}}."""
    out: dict = {"texts": len(texts), "seed": seed, "methods": {}}
    for method in runnable_methods(predictor, methods):
        rows, seconds, evaluations = [], 0.0, 0
        for i, text in enumerate(texts):
            e = explain(predictor, [text], [pairs[i]] if pairs else None, method=method,
                        options=(options or {}).get(method), seed=seed, with_faithfulness=True)[0]
            seconds += e.seconds
            evaluations += e.evaluations
            if e.faithfulness:
                rows.append(e.faithfulness)
            if on_text:
                on_text(method, i + 1)
        summary = {"explained": len(rows), "ms_per_explanation": 1000 * seconds / max(1, len(texts)),
                   "evaluations_per_explanation": evaluations / max(1, len(texts)),
                   "params": e.params if texts else {}}
        for name in FIGURES:
            for key in (name, f"random_{name}"):
                values = [r[key] for r in rows if r.get(key) is not None]
                summary[key] = float(np.mean(values)) if values else None
        comp, rand = summary["comprehensiveness"], summary["random_comprehensiveness"]
        summary["comprehensiveness_vs_random"] = comp / rand if comp is not None and rand else None
        out["methods"][method] = summary
    return out
