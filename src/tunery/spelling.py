"""Typo correction in front of the model (`model.correct_typos`): word recognition as a defence
against misspellings (Pruthi, Dhingra and Lipton, 2019, "Combating Adversarial Misspellings with
Robust Word Recognition").

A typo attack (DeepWordBug, `tunery attack --recipe typo`) swaps, deletes, inserts or substitutes one
character of a word: a word the model knows becomes word pieces it rarely saw with that meaning.
Embedding-space adversarial training cannot undo that (the tokens themselves change); a corrector
can. At training time the run keeps a lexicon: the words of its training texts with their counts,
and the whole-word entries of the backbone's vocabulary. Every text the model reads afterwards
(validation and test during training, predict, serve, evaluate, attack; torch and ONNX runs) first
has each Latin-letter word that is not in the lexicon replaced by the most frequent lexicon word one
edit away (Damerau-Levenshtein: one swap of neighbours, deletion, insertion or substitution), keeping
its capitalisation; a word with no such neighbour stays as written.

Plain functions and one small class. pyspellchecker and symspellpy do the same lookup but ship
English frequency lists, not the run's own words; the part needed here is twenty lines.
"""

from __future__ import annotations

import functools
import json
import re
import string
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from tunery.attack.edits import case_like

LEXICON_FILE = "lexicon.json"  # in the run's model/ directory, beside the tokenizer
WORD = re.compile(r"[A-Za-z]+")
LETTERS = string.ascii_lowercase
MIN_LENGTH = 3  # shorter words have too many neighbours one edit away to guess from


def word_counts(texts: Iterable[str]) -> Counter:
    """Lower-case Latin-letter words of `texts` with how often each appears."""
    counts: Counter = Counter()
    for text in texts:
        counts.update(w.lower() for w in WORD.findall(text))
    return counts


def vocabulary_words(tokenizer) -> set[str]:
    """The whole-word entries of a tokenizer's vocabulary, lower-case letters only: WordPiece
    ("film", not "##s"), byte-level BPE ("Ġfilm") and SentencePiece ("▁film")."""
    out = set()
    for token in tokenizer.get_vocab():
        if token.startswith("##"):
            continue
        word = token.lstrip("Ġ▁")
        if WORD.fullmatch(word):  # special tokens ([CLS], <s>) are not letters only
            out.add(word.lower())
    return out


def edits1(word: str) -> set[str]:
    """Every string one Damerau-Levenshtein edit from `word` (lower-case letters)."""
    splits = [(word[:i], word[i:]) for i in range(len(word) + 1)]
    deletes = [a + b[1:] for a, b in splits if b]
    swaps = [a + b[1] + b[0] + b[2:] for a, b in splits if len(b) > 1]
    replaces = [a + c + b[1:] for a, b in splits if b for c in LETTERS]
    inserts = [a + c + b for a, b in splits for c in LETTERS]
    return set(deletes + swaps + replaces + inserts)


class Speller:
    """Corrects words outside `counts` (word -> frequency) to their most frequent neighbour in it."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts
        self._word = functools.lru_cache(maxsize=65536)(self._correct_word)

    def _correct_word(self, word: str) -> str:
        lower = word.lower()
        if len(lower) < MIN_LENGTH or lower in self.counts:
            return word
        candidates = [c for c in edits1(lower) if c in self.counts]
        if not candidates:
            return word
        best = max(candidates, key=lambda c: (self.counts[c], c))  # ties: the same word every time
        return case_like(best, word)

    def correct(self, text: str) -> str:
        """`text` with its misspelt words corrected (everything else as it was)."""
        return WORD.sub(lambda m: self._word(m.group()), text)

    def correct_all(self, texts: list[str] | None) -> list[str] | None:
        return None if texts is None else [self.correct(t) for t in texts]


def as_read(speller: Speller | None, texts: list[str], pairs: list[str] | None):
    """`texts` and `pairs` as a model behind `speller` reads them (as they are without one)."""
    if speller is None:
        return texts, pairs
    return speller.correct_all(texts), speller.correct_all(pairs)


def build_lexicon(texts: Iterable[str], tokenizer) -> dict[str, int]:
    """The training texts' word counts, and the tokenizer's whole words (count 1 where the texts
    lack them: a word the backbone knows is never "corrected" away)."""
    counts = word_counts(texts)
    for word in vocabulary_words(tokenizer) - counts.keys():
        counts[word] = 1
    return dict(sorted(counts.items()))


def save_lexicon(counts: dict[str, int], model_dir: Path) -> dict:
    """Write the lexicon beside the model; what tunery.json records of it."""
    (model_dir / LEXICON_FILE).write_text(json.dumps({"words": counts}, ensure_ascii=False), encoding="utf-8")
    return {"file": f"model/{LEXICON_FILE}", "words": len(counts)}


def read_speller(run_dir: Path, meta: dict) -> Speller | None:
    """The run's Speller, or None when it was trained without `model.correct_typos`."""
    info = meta.get("typo_correction")
    if not info:
        return None
    path = run_dir / info.get("file", f"model/{LEXICON_FILE}")
    try:
        counts = json.loads(path.read_text(encoding="utf-8"))["words"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        from tunery.errors import RunError

        raise RunError(f"{path}: the run corrects typos (tunery.json 'typo_correction') but its lexicon cannot be "
                       f"read ({err}); copy the run again from its source, or retrain it") from None
    return Speller(counts)
