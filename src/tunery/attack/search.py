"""The attacks: which words to edit, in which order, and when to stop.

Both recipes are black-box and greedy, as their papers are (TextAttack's recipes of the same names
were the reference; TextAttack itself does not run offline, see tunery/attack/__init__.py):

- **typo** (DeepWordBug, Gao et al., 2018): words ranked by leave-one-out importance (how much the
  true label's probability falls when the word is deleted), then in that order each word is
  replaced by the misspelling (swap, delete, insert, keyboard neighbour) that lowers that
  probability most, if any does, until the prediction changes.
- **synonym** (PWWS, Ren et al., 2019, "Generating Natural Language Adversarial Examples through
  Probability Weighted Word Saliency"): for every word that may change, the WordNet synonym that
  lowers the true label's probability most (among those that keep the sentence similar enough),
  then words ranked by softmax(leave-one-out saliency) x that fall, and substituted in that order
  until the prediction changes.

Constraints, checked on every candidate: at most `max_share` of the text's words changed (at least
one); `synonym` leaves stopwords (scikit-learn's English list) and named entities (here: capitalised
words that do not start the text; lower-cased corpora such as SST-2 have none) untouched, and keeps
the cosine similarity of the sentence embeddings (mean-pooled `encoder`, by default the packaged
all-MiniLM-L6-v2, a sentence-similarity model, whatever model is attacked, so that figures of two
models are comparable) at or above `min_similarity`; `budget` caps the model queries per text.

Only texts the model classifies correctly are attacked (a wrong prediction is already a failure
under attack, and counts so in the accuracy under attack).
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field

import numpy as np

from tunery.attack.edits import case_like, typos
from tunery.explain.words import Word, split_words

RECIPES = ("typo", "synonym")


@dataclass(frozen=True)
class Settings:
    """An attack's recipe and constraints: printed and stored with every figure it gives."""

    recipe: str
    max_share: float = 0.2
    budget: int | None = None
    min_similarity: float = 0.8
    max_candidates: int = 30
    typos_per_edit: int = 1
    encoder: str = "minilm-l6"
    seed: int = 0

    def describe(self) -> dict:
        d = asdict(self)
        if self.recipe == "typo":  # similarity and synonyms do not apply to misspellings
            for key in ("min_similarity", "max_candidates", "encoder"):
                d.pop(key)
        else:
            d.pop("typos_per_edit")
        return d


@dataclass
class Outcome:
    """One text's attack: what it was, what it became, and what that cost."""

    text: str
    label: int
    predicted: int
    score: float  # the true label's probability before
    perturbed: str | None = None
    perturbed_predicted: int | None = None
    perturbed_score: float | None = None
    status: str = "skipped"  # succeeded | failed | skipped (already misclassified)
    queries: int = 0
    changed: int = 0
    words: int = 0
    changes: list[dict] = field(default_factory=list)  # {"from", "to", "start", "end"}
    similarity: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class Text:
    """A text as its words and the characters between them; words replaced by index."""

    def __init__(self, text: str) -> None:
        self.words: list[Word] = split_words(text)
        ends = [0] + [w.end for w in self.words]
        self.gaps = [text[ends[i]:w.start] for i, w in enumerate(self.words)] + [text[ends[-1]:]]
        self.current = [w.text for w in self.words]

    def render(self, replace: dict[int, str] | None = None) -> str:
        replace = replace or {}
        parts = [self.gaps[0]]
        for i, word in enumerate(self.current):
            parts += [replace.get(i, word), self.gaps[i + 1]]
        return "".join(parts)


@functools.lru_cache(maxsize=1)
def stopwords() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


def may_change(text: Text, i: int, recipe: str, stop: frozenset[str]) -> bool:
    """Whether word i may be edited: letters only and, for synonyms, not a stopword nor a named entity."""
    word = text.words[i].text
    if not word.isalpha():
        return False
    if recipe == "typo":
        return len(word) >= 2
    if word.lower() in stop:
        return False
    return not (word[:1].isupper() and i > 0)  # a capitalised word inside the text: a name, kept


class Attack:
    """One recipe with its settings over a scoring function. `probabilities(texts)` gives (N, C)
    class probabilities; `similarity(a, texts)` the cosine of `a`'s embedding with each text's (synonym);
    `synonyms(word)` WordNet's single-word synonyms (synonym). The constructor only stores."""

    def __init__(self, settings: Settings, probabilities, *, similarity=None, synonyms=None) -> None:
        self.settings = settings
        self.probabilities = probabilities
        self.similarity = similarity
        self.synonyms = synonyms
        self._stop = stopwords()

    def run(self, text: str, label: int) -> Outcome:
        s = self.settings
        rng = np.random.default_rng([s.seed, len(text), sum(map(ord, text)) % 2**31])  # per text, repeatable
        state = {"queries": 0}

        def score(texts: list[str]) -> np.ndarray | None:
            """Probabilities of `texts`, cut to what the query budget has left (None: nothing left)."""
            if s.budget is not None:
                texts = texts[: max(0, s.budget - state["queries"])]
            if not texts:
                return None
            state["queries"] += len(texts)
            return np.asarray(self.probabilities(texts), dtype=np.float64)

        first = score([text])
        out = Outcome(text=text, label=label, predicted=int(np.argmax(first[0])), score=float(first[0, label]))
        doc = Text(text)
        out.words = len(doc.words)
        if out.predicted != label:
            out.queries = state["queries"]
            return out
        allowed = [i for i in range(len(doc.words)) if may_change(doc, i, s.recipe, self._stop)]
        max_changes = max(1, int(np.floor(s.max_share * len(doc.words))))
        out.status = "failed"
        if allowed:
            # leave-one-out importance: how much the true label's probability falls without the word
            dropped = score([doc.render({i: ""}) for i in allowed])
            if dropped is not None:
                n = len(dropped)
                importance = out.score - dropped[:, label]
                allowed = allowed[:n]
                if s.recipe == "typo":
                    self._typo(doc, allowed, importance, label, max_changes, out, score, rng)
                else:
                    self._pwws(doc, allowed, importance, label, max_changes, out, score)
        out.queries = state["queries"]
        if out.status == "succeeded" and self.similarity is not None and out.similarity is None:
            out.similarity = float(self.similarity(text, [out.perturbed])[0])
        return out

    def _apply(self, doc: Text, i: int, new: str, probs: np.ndarray, label: int, out: Outcome) -> bool:
        """Keep a replacement; True when the prediction has changed."""
        out.changes.append({"from": doc.current[i], "to": new, "start": doc.words[i].start, "end": doc.words[i].end})
        doc.current[i] = new
        out.changed += 1
        out.perturbed = doc.render()
        out.perturbed_predicted, out.perturbed_score = int(np.argmax(probs)), float(probs[label])
        if out.perturbed_predicted != label:
            out.status = "succeeded"
            return True
        return False

    def _typo(self, doc, allowed, importance, label, max_changes, out, score, rng) -> None:
        current = out.score
        for j in np.argsort(-importance, kind="stable"):
            if out.changed >= max_changes:
                return
            i = allowed[j]
            candidates = typos(doc.current[i], rng, self.settings.typos_per_edit)
            if not candidates:
                continue
            probs = score([doc.render({i: c}) for c in candidates])
            if probs is None:  # the query budget is spent
                return
            best = int(np.argmin(probs[:, label]))
            if probs[best, label] < current:
                current = float(probs[best, label])
                if self._apply(doc, i, candidates[best], probs[best], label, out):
                    return

    def _pwws(self, doc, allowed, saliency, label, max_changes, out, score) -> None:
        s = self.settings
        original = doc.render()
        best: dict[int, tuple[str, float]] = {}  # word -> (its best synonym, the fall it gives)
        for i in allowed:
            candidates = self.synonyms(doc.current[i])[: s.max_candidates]
            candidates = [case_like(c, doc.current[i]) for c in candidates]
            if not candidates:
                continue
            texts = [doc.render({i: c}) for c in candidates]
            keep = np.asarray(self.similarity(original, texts)) >= s.min_similarity
            texts = [t for t, k in zip(texts, keep) if k]
            candidates = [c for c, k in zip(candidates, keep) if k]
            if not texts:
                continue
            probs = score(texts)
            if probs is None:
                break
            k = int(np.argmin(probs[:, label]))
            best[i] = (candidates[k], out.score - float(probs[k, label]))
        if not best:
            return
        words = list(best)
        sal = np.array([saliency[allowed.index(i)] for i in words])
        weight = np.exp(sal - sal.max())
        weight /= weight.sum()
        order = np.argsort(-(weight * np.array([best[i][1] for i in words])), kind="stable")
        for j in order:
            if out.changed >= max_changes:
                return
            i = words[j]
            candidate = doc.render({i: best[i][0]})
            similarity = float(self.similarity(original, [candidate])[0])
            if similarity < s.min_similarity:  # the substitutions together drift too far
                continue
            probs = score([candidate])
            if probs is None:
                return
            out.similarity = similarity
            if self._apply(doc, i, best[i][0], probs[0], label, out):
                return

