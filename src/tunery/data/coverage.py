"""How much of a dataset's text a backbone's vocabulary covers.

A backbone meets text in a language it was not trained on in two ways: its tokenizer maps what it
does not know to [UNK] (BERT WordPiece on Chinese: two tokens in three), or it splits the text into
pieces it has no meaning for (an English vocabulary on Cyrillic). `measure` counts the first on a
bounded sample of texts with the backbone's own tokenizer, and the writing systems (Unicode
scripts) of the texts' letters for the second, to set against the languages the catalog lists for
the backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import regex

SAMPLE_TEXTS = 2000  # texts measured per file: about a second with a fast tokenizer
SAMPLE_CHARS = 2000  # characters measured per text
# Thresholds on the share of [UNK] tokens, from measurements with minilm-l6 on ../shared/data:
# SST-2 (English) 0.00 % of tokens, every Chinese set 64-66 % (waimai10k 66 %, ChnSentiCorp 64 %).
# A text with one unknown token in 20 already loses words that may carry its label: warn at 5 %.
# At 25 % every fourth token is blank to the model, which then trails a TF-IDF baseline that reads
# the characters themselves (waimai10k: 0.74 vs 0.85 accuracy): an error unless overridden.
UNK_WARNING = 0.05
UNK_ERROR = 0.25
# Letters in scripts the backbone's languages do not use: warn from this share.
SCRIPT_WARNING = 0.05

# Scripts told apart (by Unicode's Script property); letters of any other script count as "Other".
SCRIPTS = ("Latin", "Han", "Hiragana", "Katakana", "Hangul", "Cyrillic", "Greek", "Arabic", "Hebrew",
           "Devanagari", "Bengali", "Tamil", "Telugu", "Thai", "Georgian", "Armenian", "Ethiopic")
_SCRIPT_RE = {s: regex.compile(rf"\p{{Script={s}}}") for s in SCRIPTS}
_LETTER_RE = regex.compile(r"\p{L}")
# Language codes (as the catalog lists them) -> the scripts they are written in.
LANGUAGE_SCRIPTS = {
    **{code: {"Latin"} for code in ("en", "fr", "de", "es", "it", "pt", "nl", "sv", "da", "no", "fi",
                                    "pl", "cs", "ro", "hu", "tr", "id", "vi", "ca", "et", "lv", "lt")},
    "zh": {"Han"}, "ja": {"Han", "Hiragana", "Katakana"}, "ko": {"Hangul", "Han"},
    "ru": {"Cyrillic"}, "uk": {"Cyrillic"}, "bg": {"Cyrillic"}, "sr": {"Cyrillic", "Latin"},
    "el": {"Greek"}, "ar": {"Arabic"}, "fa": {"Arabic"}, "ur": {"Arabic"}, "he": {"Hebrew"},
    "hi": {"Devanagari"}, "mr": {"Devanagari"}, "bn": {"Bengali"}, "ta": {"Tamil"}, "te": {"Telugu"},
    "th": {"Thai"}, "ka": {"Georgian"}, "hy": {"Armenian"}, "am": {"Ethiopic"},
}
MULTILINGUAL = {"multilingual", "multi", "*"}
LANGUAGE_WORDS = {"Han": "Chinese", "Hiragana": "Japanese", "Katakana": "Japanese", "Hangul": "Korean",
                  "Cyrillic": "Russian and other Cyrillic-script languages", "Arabic": "Arabic-script languages",
                  "Greek": "Greek", "Hebrew": "Hebrew", "Devanagari": "Hindi and other Devanagari languages",
                  "Thai": "Thai", "Latin": "Latin-script languages"}
# A backbone to suggest, by the text's main script: hub ids (cached once online, then offline).
SUGGESTED = {"Han": "bert-base-chinese"}
MULTILINGUAL_SUGGESTION = "xlm-roberta-base"


@dataclass(frozen=True)
class Coverage:
    """Vocabulary coverage of one file's texts (a sample of them)."""

    texts: int  # texts measured
    tokens: int
    unk_tokens: int
    unk_texts: int  # texts with at least one [UNK]
    unk_rows: tuple[int, ...]  # 1-based rows of those texts (of the sample)
    scripts: dict[str, float]  # share of letters per script, largest first
    backbone_languages: str | None  # None: the backbone is not in the catalog
    uncovered: dict[str, float]  # scripts (share of letters) the backbone's languages do not use

    @property
    def unk_token_share(self) -> float:
        return self.unk_tokens / self.tokens if self.tokens else 0.0

    @property
    def unk_text_share(self) -> float:
        return self.unk_texts / self.texts if self.texts else 0.0

    @property
    def uncovered_share(self) -> float:
        return float(sum(self.uncovered.values()))

    def details(self) -> dict:
        return {"unk_token_share": round(self.unk_token_share, 4), "unk_text_share": round(self.unk_text_share, 4),
                "scripts": self.scripts, "backbone_languages": self.backbone_languages,
                "sample_texts": self.texts}


def sample_positions(n: int, size: int = SAMPLE_TEXTS) -> np.ndarray:
    """Up to `size` positions of `n`, spread evenly over the file (the same ones every time)."""
    if n <= size:
        return np.arange(n)
    return np.linspace(0, n - 1, size).round().astype(np.int64)


def script_shares(texts: list[str]) -> dict[str, float]:
    """Share of the letters per Unicode script (largest first); "Other" for scripts not listed."""
    joined = "".join(texts)
    letters = len(_LETTER_RE.findall(joined))
    if not letters:
        return {}
    counts = {s: len(r.findall(joined)) for s, r in _SCRIPT_RE.items()}
    counts["Other"] = max(letters - sum(counts.values()), 0)
    return {s: round(c / letters, 4) for s, c in sorted(counts.items(), key=lambda kv: -kv[1]) if c}


def covered_scripts(languages: str | None) -> set[str] | None:
    """The scripts a backbone's languages ("en", "en,de", "multilingual") are written in; None when
    unknown or multilingual (anything goes)."""
    if not languages:
        return None
    codes = {c.strip().lower() for c in languages.replace(";", ",").split(",") if c.strip()}
    if codes & MULTILINGUAL or not codes <= set(LANGUAGE_SCRIPTS):
        return None
    return set().union(*(LANGUAGE_SCRIPTS[c] for c in codes))


def measure(tokenizer, texts: list[str], rows: np.ndarray, languages: str | None) -> Coverage:
    """Coverage of `texts` (already sampled; `rows` their 1-based row numbers) by `tokenizer`,
    judged against the backbone's `languages` (None: not in the catalog)."""
    texts = [t[:SAMPLE_CHARS] for t in texts]
    unk_id = getattr(tokenizer, "unk_token_id", None)
    n_tokens = n_unk = 0
    unk_rows: list[int] = []
    if texts:
        ids = tokenizer(texts, truncation=False)["input_ids"]
        special = getattr(tokenizer, "num_special_tokens_to_add", lambda pair=False: 0)(False)  # [CLS], [SEP]
        for row, x in zip(rows, ids):
            n_tokens += max(len(x) - special, 0)
            if unk_id is not None:
                k = sum(1 for i in x if i == unk_id)
                if k:
                    n_unk += k
                    unk_rows.append(int(row))
    scripts = script_shares(texts)
    allowed = covered_scripts(languages)
    uncovered = {} if allowed is None else {s: v for s, v in scripts.items() if s not in allowed and s != "Other"}
    return Coverage(len(texts), n_tokens, n_unk, len(unk_rows), tuple(unk_rows), scripts, languages, uncovered)


def describe_scripts(scripts: dict[str, float], limit: int = 3) -> str:
    """ "Han 98%, Latin 2%": the main scripts, leaving out those under half a percent."""
    shown = [(s, v) for i, (s, v) in enumerate(scripts.items()) if i < limit and (i == 0 or v >= 0.005)]
    return ", ".join(f"{s} {100 * v:.0f}%" for s, v in shown) or "no letters"


def suggestion(cov: Coverage) -> str:
    """The fix: a backbone that covers the text's main script, or the baseline."""
    main = next((s for s in (cov.uncovered or cov.scripts) if s != "Other"), None)
    specific = SUGGESTED.get(main or "")
    lang = LANGUAGE_WORDS.get(main or "")
    which = f"a backbone pretrained on {lang}" if lang else "a backbone whose vocabulary covers this text"
    example = (f"model.backbone: {specific} (a hub id), a multilingual one such as {MULTILINGUAL_SUGGESTION}, "
               if specific else f"model.backbone: {MULTILINGUAL_SUGGESTION} (a multilingual hub id), ")
    return (f"use {which}, e.g. {example}or a local directory holding one; or rely on the TF-IDF baseline "
            f"the run reports beside the model (it needs no vocabulary)")
