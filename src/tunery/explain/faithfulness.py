"""How true an explanation is to the model, measured on the model itself (ERASER, DeYoung et al.
2020, section 4.2; the metric code is ours: ferret, the benchmark of explainers, pins old
numpy/shap).

- comprehensiveness: f(x) - f(x without its top-k% words), averaged over k in BINS (AOPC). Higher
  is better: removing the words the explanation ranks first should lower the score most.
- sufficiency: f(x) - f(only the top-k% words), averaged the same way. Lower is better: the top
  words alone should keep the score.
- loo_spearman: rank correlation with leave-one-out occlusion (which is exact for removing one word).
Each comes with the same figure for random rankings of the words, so a number means something on
its own model. AOPC ranges differ between models: compare methods within one model.

k% of W words is rounded up to at least one word, so that on short texts the 1% and 5% bins
remove one word rather than none.
"""

from __future__ import annotations

import math

import numpy as np

BINS = (0.01, 0.05, 0.10, 0.20, 0.50)
RANDOM_DRAWS = 3


def top_counts(n_words: int, bins=BINS) -> list[int]:
    return [min(n_words, max(1, math.ceil(b * n_words))) for b in bins]


def aopc_masks(ranking: np.ndarray, n_words: int, bins=BINS) -> tuple[np.ndarray, np.ndarray]:
    """Keep masks (len(bins), W) without the top-k words (comprehensiveness) and with only them
    (sufficiency), for a ranking of word indices, most important first."""
    ks = top_counts(n_words, bins)
    without = np.ones((len(ks), n_words), dtype=bool)
    only = np.zeros((len(ks), n_words), dtype=bool)
    for row, k in enumerate(ks):
        without[row, ranking[:k]] = False
        only[row, ranking[:k]] = True
    return without, only


def aopc(f, full_score: float, ranking: np.ndarray, n_words: int, bins=BINS) -> tuple[float, float]:
    """(comprehensiveness, sufficiency) of one ranking, in 2 * len(bins) model evaluations."""
    without, only = aopc_masks(ranking, n_words, bins)
    scores = f(np.concatenate([without, only]))
    n = len(without)
    return float(np.mean(full_score - scores[:n])), float(np.mean(full_score - scores[n:]))


def ranking(scores: np.ndarray) -> np.ndarray:
    """Word indices by attribution, highest first (ties in text order)."""
    return np.argsort(-np.asarray(scores, dtype=float), kind="stable")


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation, None where it is undefined (fewer than 2 words, a constant side)."""
    from scipy.stats import spearmanr

    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def faithfulness(f, full_score: float, scores: np.ndarray, loo: np.ndarray, *, seed: int = 0,
                 draws: int = RANDOM_DRAWS) -> dict:
    """The explanation's comprehensiveness, sufficiency and LOO correlation, each beside the mean of
    `draws` random rankings' (seeded)."""
    n = len(scores)
    comp, suff = aopc(f, full_score, ranking(scores), n)
    rng = np.random.default_rng(seed)
    randoms = [aopc(f, full_score, rng.permutation(n), n) for _ in range(draws)]
    random_loo = [spearman(rng.standard_normal(n), loo) for _ in range(draws)]
    random_loo = [r for r in random_loo if r is not None]
    return {
        "comprehensiveness": comp,
        "sufficiency": suff,
        "loo_spearman": spearman(scores, loo),
        "random_comprehensiveness": float(np.mean([c for c, _ in randoms])),
        "random_sufficiency": float(np.mean([s for _, s in randoms])),
        "random_loo_spearman": float(np.mean(random_loo)) if random_loo else None,
    }
