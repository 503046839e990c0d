"""Character edits in the style of DeepWordBug (Gao et al., 2018, "Black-box Generation of
Adversarial Text Sequences to Evade Deep Learning Classifiers"): swap two neighbouring letters,
delete a letter, insert a letter, or substitute a letter with a neighbour on a QWERTY keyboard.
Plain functions of a word and a seeded generator: the same seed gives the same edits."""

from __future__ import annotations

import numpy as np

ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
EDITS = ("swap", "delete", "insert", "keyboard")


def _neighbours() -> dict[str, str]:
    """Each letter's neighbours on a QWERTY keyboard (same row and the rows above and below)."""
    where = {c: (r, i) for r, row in enumerate(ROWS) for i, c in enumerate(row)}
    out = {}
    for c, (r, i) in where.items():
        near = [d for d, (r2, i2) in where.items() if d != c and abs(r2 - r) <= 1 and abs(i2 - i) <= 1]
        out[c] = "".join(sorted(near))
    return out


NEIGHBOURS = _neighbours()


def case_like(new: str, old: str) -> str:
    return new.upper() if old.isupper() and len(old) > 1 else (new[:1].upper() + new[1:] if old[:1].isupper() else new)


def typo(word: str, edit: str, rng: np.random.Generator) -> str | None:
    """`word` with one edit at a random position (None where the edit cannot apply: a one-letter
    word cannot have two letters swapped). Case follows the word."""
    low = word.lower()
    n = len(low)
    if edit == "swap":
        spots = [i for i in range(n - 1) if low[i] != low[i + 1]]
        if not spots:
            return None
        i = int(rng.choice(spots))
        new = low[:i] + low[i + 1] + low[i] + low[i + 2:]
    elif edit == "delete":
        if n < 3:  # "a" -> "", "on" -> "o": no longer a misspelling of the word
            return None
        i = int(rng.integers(n))
        new = low[:i] + low[i + 1:]
    elif edit == "insert":
        i = int(rng.integers(n + 1))
        near = NEIGHBOURS.get(low[min(i, n - 1)], "abcdefghijklmnopqrstuvwxyz")
        new = low[:i] + near[int(rng.integers(len(near)))] + low[i:]
    elif edit == "keyboard":
        spots = [i for i in range(n) if low[i] in NEIGHBOURS]
        if not spots:
            return None
        i = int(rng.choice(spots))
        near = NEIGHBOURS[low[i]]
        new = low[:i] + near[int(rng.integers(len(near)))] + low[i + 1:]
    else:
        raise ValueError(f"unknown edit {edit!r}: one of {', '.join(EDITS)}")
    return None if new == low else case_like(new, word)


def typos(word: str, rng: np.random.Generator, per_edit: int = 1) -> list[str]:
    """Distinct misspellings of `word`: `per_edit` of each kind of edit, in EDITS' order."""
    out: dict[str, None] = {}
    for edit in EDITS:
        for _ in range(per_edit):
            new = typo(word, edit, rng)
            if new is not None and new != word:
                out.setdefault(new, None)
    return list(out)
