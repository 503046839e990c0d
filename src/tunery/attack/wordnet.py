"""WordNet synonyms for the `synonym` attack, read offline from Debian's `wordnet-base` package.

Princeton WordNet 3.0 comes from a registry, not from NLTK's downloader (which needs the internet):
`apt-get install wordnet-base` puts its database under /usr/share/wordnet. NLTK's WordNet reader
(`nltk`, from PyPI) reads that database but also wants the `lexnames` file, which the Debian package
does not ship; it is WordNet's fixed list of its 45 lexicographer files, so tunery writes it into a
folder of its own under TUNERY_HOME beside copies of the Debian files (NLTK refuses links that
lead out of the folder it reads), and reads from there.
`TUNERY_WORDNET` names another WordNet 3.0 database folder.
"""

from __future__ import annotations

import functools
import os
import shutil
import warnings
from pathlib import Path

from tunery.errors import TuneryError

DEBIAN_WORDNET = Path("/usr/share/wordnet")
INSTALL = "apt-get install wordnet-base (Princeton WordNet 3.0) and pip install nltk"
FILES = [f"{kind}.{pos}" for kind in ("data", "index") for pos in ("noun", "verb", "adj", "adv")] + [
    f"{pos}.exc" for pos in ("noun", "verb", "adj", "adv")]
LEXNAMES = ["adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
            "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling",
            "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object", "noun.person",
            "noun.phenomenon", "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation",
            "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition",
            "verb.communication", "verb.competition", "verb.consumption", "verb.contact", "verb.creation",
            "verb.emotion", "verb.motion", "verb.perception", "verb.possession", "verb.social", "verb.stative",
            "verb.weather", "adj.ppl"]
_SYNTACTIC_CATEGORY = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}


class WordNetMissing(TuneryError):
    """WordNet or NLTK is not installed: the message names the install command."""


def lexnames_text() -> str:
    return "".join(f"{i:02d}\t{name}\t{_SYNTACTIC_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES))


def database_dir(source: Path | None = None, home: Path | None = None) -> Path:
    """A folder NLTK's reader opens: `source`'s files (default TUNERY_WORDNET, else Debian's) linked
    beside a `lexnames` file, made once under `home` (default TUNERY_HOME/wordnet)."""
    from tunery.store import tunery_home

    source = Path(source or os.environ.get("TUNERY_WORDNET") or DEBIAN_WORDNET)
    missing = [f for f in FILES if not (source / f).is_file()]
    if missing:
        raise WordNetMissing(f"WordNet 3.0 is not installed at {source} (missing {', '.join(missing[:3])}"
                             f"{'...' if len(missing) > 3 else ''}): {INSTALL}, or set TUNERY_WORDNET to its folder")
    if (source / "lexnames").is_file():
        return source
    target = Path(home or tunery_home()) / "wordnet"
    target.mkdir(parents=True, exist_ok=True)
    for name in FILES:  # copies, not links: NLTK refuses files that resolve outside the folder it reads
        copy = target / name
        if not copy.exists():
            tmp = target / f"{name}.{os.getpid()}.tmp"
            shutil.copyfile(source / name, tmp)
            tmp.replace(copy)  # atomic: a reader never sees half a file
    lexnames = target / "lexnames"
    if not lexnames.exists():
        tmp = target / f"lexnames.{os.getpid()}.tmp"
        tmp.write_text(lexnames_text())
        tmp.replace(lexnames)
    return target


@functools.lru_cache(maxsize=2)
def reader(folder: str):
    """NLTK's WordNet reader on `folder` (see `database_dir`)."""
    try:
        import nltk.data
        from nltk.corpus.reader.wordnet import WordNetCorpusReader
    except ImportError:
        raise WordNetMissing(f"the synonym attack reads WordNet with NLTK, which is not installed: {INSTALL}") from None
    # NLTK (3.9+) opens corpus files only under its data paths: authorise the folder
    if folder not in nltk.data.path:
        nltk.data.path.append(folder)
    class Reader(WordNetCorpusReader):
        def map_wn(self, version="wordnet"):
            # NLTK maps synsets to its own downloaded "wordnet" corpus for the multilingual (OMW)
            # functions, loading that corpus through its downloader's paths; we use English WordNet
            # 3.0 alone, so there is nothing to map
            return None

    with warnings.catch_warnings():  # "multilingual functions are not available": Open Multilingual WordNet
        warnings.simplefilter("ignore", UserWarning)
        return Reader(folder, None)


def synonym_source():
    """`synonyms` on the WordNet under TUNERY_HOME, as a function of the word (cached per word): what
    the synonym attack and train.noise draw from. WordNetMissing names the install."""
    import functools

    wordnet = reader(str(database_dir()))
    return functools.lru_cache(maxsize=None)(lambda word: synonyms(word, wordnet))


def synonyms(word: str, wordnet) -> list[str]:
    """Single-word WordNet synonyms of `word` (all its senses, any part of speech, through WordNet's
    own lemmatiser), in WordNet's order, lower-case, without the word itself."""
    lower = word.lower()
    same = {lower} | {wordnet.morphy(lower, pos) for pos in ("n", "v", "a", "r")}  # "films": not "film"
    out: dict[str, None] = {}
    for synset in wordnet.synsets(lower):
        for lemma in synset.lemma_names():
            name = lemma.lower()
            if name not in same and name.isalpha():
                out.setdefault(name, None)
    return list(out)
