"""Words of a text with their character offsets, and the map from a tokenizer's subword tokens to
them, so that an explanation speaks of the words a person wrote whatever the tokenizer.

A word is a run of letters and digits (with inner apostrophes: "don't"), one punctuation mark, or
one CJK character (Chinese and Japanese are written without spaces; their tokenizers split them
into characters too). Tokens are mapped to words by their character offsets, so WordPiece,
SentencePiece (whose offsets include the space before a word) and byte-level BPE (whose offsets can
overlap, several tokens sharing one character) all map back to the text. A token that overlaps
several words gives each the share of its characters it covers.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

import numpy as np

from tunery.errors import ExplainError

# Hiragana and Katakana, CJK ideographs (with extension A) and compatibility ideographs: one word a
# character. Hangul is written with spaces, so its syllables stay words of letters.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
WORD = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+(?:['\u2019][^\W{_CJK}]+)*|[^\w\s]")


@dataclass(frozen=True)
class Word:
    """One word of the input: its text, [start, end) character offsets in its text, and which text
    (0: the text, 1: the pair of a pair model)."""

    text: str
    start: int
    end: int
    segment: int = 0


def split_words(text: str, segment: int = 0) -> list[Word]:
    return [Word(m.group(), m.start(), m.end(), segment) for m in WORD.finditer(text)]


@dataclass
class WordTokens:
    """One tokenised input with its words.

    token_word[t]: the word token t belongs to when words are removed (the one it overlaps most),
    -1 for special tokens and tokens outside every word. (share_token, share_word, share) list,
    sparsely, the fraction of each token's characters in each word it overlaps: a token's
    attribution is split between its words by these fractions."""

    words: list[Word]
    input_ids: np.ndarray
    token_type_ids: np.ndarray | None
    token_word: np.ndarray
    share_token: np.ndarray
    share_word: np.ndarray
    share: np.ndarray
    special: np.ndarray  # bool (T,): tokens the tokenizer added ([CLS], [SEP], <s>, ...), in neither text
    truncated: bool  # words past max_length were cut off and are not explained

    def __len__(self) -> int:
        return len(self.words)

    def word_scores(self, token_scores: np.ndarray) -> np.ndarray:
        """Per-token scores (T,) summed to words (W,) by each token's shares."""
        return np.bincount(self.share_word, weights=token_scores[self.share_token] * self.share,
                           minlength=len(self.words))

    def keep(self, keep_words: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Token ids (and segment ids) with the tokens of every word where `keep_words` is False
        deleted; special tokens and tokens outside words stay."""
        keep_words = np.asarray(keep_words, dtype=bool)
        kept = (self.token_word < 0) | keep_words[np.maximum(self.token_word, 0)]
        types = self.token_type_ids[kept] if self.token_type_ids is not None else None
        return self.input_ids[kept], types


def tokenize_words(tokenizer, text: str, pair: str | None = None, *, max_length: int) -> WordTokens:
    """`text` (and `pair`) tokenised as the model reads them, with the map from tokens to words."""
    if not getattr(tokenizer, "is_fast", False):
        raise ExplainError(f"tokenizer {type(tokenizer).__name__} gives no character offsets, which explanations need to "
                        "map subword tokens back to words; use a backbone with a fast (Rust) tokenizer")
    with_types = pair is not None and "token_type_ids" in getattr(tokenizer, "model_input_names", [])
    enc = tokenizer(text, pair, truncation=True, max_length=max_length, return_offsets_mapping=True,
                    return_token_type_ids=with_types, return_attention_mask=False)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    offsets = enc["offset_mapping"]
    sequence = enc.sequence_ids()
    # the tokens the tokenizer added ([CLS], [SEP], <s>...): in no text (an [UNK] is in one, at its offsets)
    special = np.asarray([seg is None for seg in sequence], dtype=bool)
    texts = [text] if pair is None else [text, pair]
    all_words = [split_words(t, seg) for seg, t in enumerate(texts)]
    starts = [[w.start for w in ws] for ws in all_words]
    ends = [[w.end for w in ws] for ws in all_words]

    best: list[tuple[int, int] | None] = [None] * len(ids)  # per token: (segment, word) it overlaps most
    pairs: list[tuple[int, tuple[int, int], float]] = []  # (token, (segment, word), share)
    for t, ((s, e), seg) in enumerate(zip(offsets, sequence)):
        if seg is None or special[t] or e <= s:
            continue
        ws = all_words[seg]
        i = bisect.bisect_right(ends[seg], s)  # the first word ending after the token starts
        overlaps = []
        while i < len(ws) and starts[seg][i] < e:
            overlap = min(e, ws[i].end) - max(s, ws[i].start)
            if overlap > 0:
                overlaps.append((i, overlap))
            i += 1
        total = sum(o for _, o in overlaps)
        pairs.extend((t, (seg, i), o / total) for i, o in overlaps)
        if overlaps:
            best[t] = (seg, max(overlaps, key=lambda x: x[1])[0])

    # the words that got tokens (the rest were truncated away), numbered: the text's, then the pair's
    used = {key for _, key, _ in pairs}
    kept = sorted(used)
    index = {key: n for n, key in enumerate(kept)}
    words = [all_words[seg][i] for seg, i in kept]
    token_word = np.asarray([index[b] if b is not None else -1 for b in best], dtype=np.int64)
    share_token = np.asarray([p[0] for p in pairs], dtype=np.int64)
    share_word = np.asarray([index[p[1]] for p in pairs], dtype=np.int64)
    share = np.asarray([p[2] for p in pairs], dtype=np.float64)
    types = np.asarray(enc["token_type_ids"], dtype=np.int64) if with_types else None
    truncated = len(words) < sum(len(ws) for ws in all_words)
    return WordTokens(words, ids, types, token_word, share_token, share_word, share, special, truncated)
