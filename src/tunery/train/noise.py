"""Noisy copies of the training texts (`train.noise`): each training text again, with a share of its
words given a typo (the DeepWordBug edits `tunery attack --recipe typo` searches over) and/or
replaced by a random WordNet synonym (the substitutions of `--recipe synonym`), under the text's own
gold label. Random, label-preserving perturbation of the training data is the classic defence
against character- and word-level attacks (Pruthi et al., 2019; Wei and Zou, 2019, EDA): the model
sees misspelt and reworded text while it learns, which embedding-space adversaries (FGM, PGD,
FreeLB) cannot show it, since a typo changes the tokens, not the embeddings of the same tokens.

Plain functions of the texts and a seed: the same seed gives the same copies, so a resumed run
trains on the rows it started with. Validation and test splits are never changed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tunery.attack.edits import EDITS, case_like, typo
from tunery.attack.search import Text, may_change, stopwords


def noisy_text(text: str, rng: np.random.Generator, *, typo_share: float, synonym_share: float,
               synonyms: Callable[[str], list[str]] | None = None) -> str:
    """One perturbed copy of `text`: about `synonym_share` of its words (at least one, where any may
    change) replaced by a random synonym, then `typo_share` of the words not replaced given one
    random typo. Words that may not change stay (see tunery.attack.search.may_change)."""
    doc, stop = Text(text), stopwords()
    replace: dict[int, str] = {}
    if synonym_share and synonyms is not None:
        allowed = [i for i in range(len(doc.current)) if may_change(doc, i, "synonym", stop)]
        for i in _pick(allowed, synonym_share, rng):
            options = synonyms(doc.current[i])
            if options:
                replace[i] = case_like(options[int(rng.integers(len(options)))], doc.current[i])
    if typo_share:
        allowed = [i for i in range(len(doc.current)) if i not in replace and may_change(doc, i, "typo", stop)]
        for i in _pick(allowed, typo_share, rng):
            new = typo(doc.current[i], EDITS[int(rng.integers(len(EDITS)))], rng)
            if new is not None:
                replace[i] = new
    return doc.render(replace)


def noisy_rows(texts: list[str], pairs: list[str] | None, labels: list, *, copies: int, typo_share: float,
               synonym_share: float, seed: int, synonyms: Callable[[str], list[str]] | None = None
               ) -> tuple[list[str], list[str] | None, list]:
    """`copies` perturbed copies of each row (the pair kept as it is), with the row's label; a copy
    that came out unchanged (no word could change) is left out."""
    rng = np.random.default_rng(seed)
    out_t: list[str] = []
    out_p: list[str] | None = [] if pairs is not None else None
    out_l: list = []
    for i, text in enumerate(texts):
        for _ in range(copies):
            new = noisy_text(text, rng, typo_share=typo_share, synonym_share=synonym_share, synonyms=synonyms)
            if new == text:
                continue
            out_t.append(new)
            out_l.append(labels[i])
            if out_p is not None:
                out_p.append(pairs[i])
    return out_t, out_p, out_l


def _pick(allowed: list[int], share: float, rng: np.random.Generator) -> list[int]:
    if not allowed:
        return []
    k = min(len(allowed), max(1, round(share * len(allowed))))
    return sorted(int(i) for i in rng.choice(allowed, size=k, replace=False))

