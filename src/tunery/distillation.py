"""What a distillation run adds to a training run (config `distill:`, set by `tunery distill`): the
transfer rows (augmented copies of the training texts, the user's unlabelled texts), the teacher's
logits for every training row, computed once and cached in the run directory (a resumed run reads
them back) and by text for the teacher (`tunery.logit_cache`: another run from the same teacher labels
only the texts no run labelled before), and the `Distiller` objective the training loop uses.

Augmentation (plain functions below): word masking, word dropout, contiguous n-gram sub-spans of at
least half the words (no external data), and, where asked, WordNet synonyms (Debian's wordnet-base,
as the synonym attack). The teacher labels every copy, so the student learns the teacher's function
around each example, not only at it. A masked word is written `MASK_SLOT` and each model reads its
own mask token there (`with_mask`): an mpnet teacher's tokenizer splits a MiniLM student's "[MASK]"
into the three pieces "[", "mask", "]", and would label text the student never sees.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import string
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tunery.attack.edits import case_like
from tunery.errors import ConfigError, DataError, RunError
from tunery.inference import Encoded, encode, quiet_transformers, resolve_device, resolve_precision, torch_logits
from tunery.logit_cache import cached_logits, teacher_folder

log = logging.getLogger(__name__)

CACHE = "teacher_logits.npy"
CACHE_KEY = "teacher_logits.json"


# -- augmentation (plain functions) ----------------------------------------------------------------
MASK_SLOT = "\ue000"  # a private-use character: where a word was masked, until a tokenizer's own mask is put in


def with_mask(texts: list[str], tokenizer) -> list[str]:
    """`texts` with every `MASK_SLOT` as `tokenizer`'s mask token (its unknown token if it has no mask)."""
    token = getattr(tokenizer, "mask_token", None) or getattr(tokenizer, "unk_token", None) or ""
    return [t.replace(MASK_SLOT, token) if MASK_SLOT in t else t for t in texts]


def _synonym_of(word: str, synonyms: Callable[[str], list[str]], rng: random.Random) -> str | None:
    """`word` with its letters replaced by a random synonym (punctuation around it and its case kept),
    or None where it has none."""
    core = word.strip(string.punctuation)
    if not core.isalpha():
        return None
    options = synonyms(core.lower())
    if not options:
        return None
    new = case_like(options[rng.randrange(len(options))], core)
    start = word.index(core)
    return word[:start] + new + word[start + len(core):]


def augment_text(text: str, rng: random.Random, *, mask_token: str, mask_prob: float, drop_prob: float,
                 span_prob: float, synonym_prob: float = 0.0,
                 synonyms: Callable[[str], list[str]] | None = None) -> str:
    """One changed copy of `text`: maybe a contiguous sub-span of at least half its words, then each
    word dropped with `drop_prob`, masked with `mask_prob`, or replaced by a random synonym (from
    `synonyms(word)`, where it has one) with `synonym_prob` (at least one word is kept)."""
    words = text.split()
    if len(words) >= 4 and rng.random() < span_prob:
        length = rng.randint((len(words) + 1) // 2, len(words) - 1)
        start = rng.randint(0, len(words) - length)
        words = words[start : start + length]
    out = []
    for w in words:
        r = rng.random()
        if r < drop_prob:
            continue
        if r < drop_prob + mask_prob:
            out.append(mask_token)
        elif r < drop_prob + mask_prob + synonym_prob and synonyms is not None:
            out.append(_synonym_of(w, synonyms, rng) or w)
        else:
            out.append(w)
    return " ".join(out) if out else words[rng.randrange(len(words))] if words else text


def augmented_rows(texts: list[str], pairs: list[str] | None, *, copies: int, seed: int, mask_token: str,
                   mask_prob: float, drop_prob: float, span_prob: float, synonym_prob: float = 0.0,
                   synonyms: Callable[[str], list[str]] | None = None,
                   joins: int = 0) -> tuple[list[str], list[str] | None]:
    """`copies` augmented versions of each text (its pair, when there is one, kept as it is), then
    `joins` copies of it followed by another text drawn at random (single texts only), without
    duplicates of each other or of the originals. Copy k of row i draws from its own seed (`seed`, i, k;
    a joined copy from (`seed`, i, "join", k)), so a run with more copies holds a run's fewer copies,
    and the teacher-logit cache labels only the new ones."""
    if joins and pairs is not None:
        raise ValueError("joined copies are for single-text tasks; this one reads text pairs")
    seen = set(zip(texts, pairs or [None] * len(texts)))
    out_t: list[str] = []
    out_p: list[str] | None = [] if pairs is not None else None
    for i, text in enumerate(texts):
        pair = pairs[i] if pairs is not None else None
        for k in range(copies):
            rng = random.Random(f"{seed}:{i}:{k}")
            new = augment_text(text, rng, mask_token=mask_token, mask_prob=mask_prob, drop_prob=drop_prob,
                               span_prob=span_prob, synonym_prob=synonym_prob, synonyms=synonyms)
            if (new, pair) in seen:
                continue
            seen.add((new, pair))
            out_t.append(new)
            if out_p is not None:
                out_p.append(pair)
        for k in range(joins if len(texts) > 1 else 0):
            rng = random.Random(f"{seed}:{i}:join:{k}")
            other = rng.randrange(len(texts) - 1)
            new = f"{text} {texts[other + (other >= i)]}"  # any text but this one
            if (new, None) not in seen:
                seen.add((new, None))
                out_t.append(new)
    return out_t, out_p


def read_unlabelled(path: str, column: str | None, default_column: str) -> list[str]:
    """Texts of an unlabelled file: one per line for .txt, else the column `column` (default: the
    training text column, else the only text-like column) of a table tunery reads."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"distill.unlabelled {path!r}: no such file; give a file of texts (--unlabelled FILE)")
    if p.suffix == ".txt":
        return [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    from tunery.data.load import read_table

    df = read_table(p)
    name = column or (default_column if default_column in df.columns else None)
    if name is None:
        texts = [c for c in df.columns if df[c].dtype == object]
        if len(texts) != 1:
            raise DataError(f"{path}: which column holds the texts? columns: {', '.join(map(str, df.columns))}; "
                            "set distill.unlabelled_column (--set distill.unlabelled_column=NAME)")
        name = texts[0]
    if name not in df.columns:
        raise DataError(f"{path}: no column {name!r} (columns: {', '.join(map(str, df.columns))}); set "
                        "distill.unlabelled_column")
    return [t for t in df[name].dropna().astype(str).tolist() if t.strip()]


# -- the teacher -------------------------------------------------------------------------------------
def teacher_run(ref: str) -> tuple[Path, dict]:
    """The teacher's run directory and tunery.json; RunError unless it is a completed run with a
    torch or ONNX model."""
    from tunery.refs import find_run
    from tunery.rundir import read_meta

    run = find_run(ref)
    meta = read_meta(run)
    if meta.get("backend", "transformers") not in ("transformers", "onnx"):
        raise RunError(f"distill.teacher {ref!r}: a {meta['backend']} run cannot teach (its scores are not "
                       "logits); give a transformer run")
    return run, meta


def teacher_labeller(run: Path, meta: dict, *, batch_size: int | None = None):
    """`label(texts, pairs)`: the teacher's logits (N, C), read with its own tokenizer, mask token and
    max_length; the model (and torch) is loaded at the first call (not at all when the cache holds every
    row) and once. A torch teacher runs where `resolve_device("auto")` says: the GPU where there is one
    (batches of 512 rows; 64 on a CPU), in bf16 where bf16 is fast (`resolve_precision("auto")`): soft
    labels do not need fp32's last digits, and an mpnet-base teacher labels 2-3x faster on AVX512-BF16.
    An ONNX teacher runs on the CPU (ONNX Runtime's CPU provider)."""
    import functools

    @functools.cache
    def loaded():
        from transformers import AutoTokenizer

        quiet_transformers()
        tokenizer = AutoTokenizer.from_pretrained(run / "model")
        pad = tokenizer.pad_token_id or 0
        if meta.get("backend") == "onnx":
            from tunery.predict_onnx import ONNX_FILE, onnx_logits, open_session

            session = open_session(run / "model" / ONNX_FILE)
            return tokenizer, lambda enc: onnx_logits(session, enc, batch_size=batch_size or 64, pad_id=pad)
        from transformers import AutoModelForSequenceClassification

        device = resolve_device("auto")
        size = batch_size or (512 if device == "cuda" else 64)
        model = AutoModelForSequenceClassification.from_pretrained(run / "model").to(device)
        precision = resolve_precision("auto")
        return tokenizer, lambda enc: torch_logits(model, enc, batch_size=size, pad_id=pad, precision=precision)

    def label(texts: list[str], pairs: list[str] | None) -> np.ndarray:
        tokenizer, logits_of = loaded()
        return logits_of(encode(tokenizer, with_mask(texts, tokenizer), pairs, [None] * len(texts),
                                max_length=meta["max_length"]))

    return label


def _same_vocabulary(a, b) -> bool:
    return type(a).__name__ == type(b).__name__ and a.get_vocab() == b.get_vocab()


def _cached_logits(work: Path, key: str, compute) -> np.ndarray:
    """The teacher's logits from `work`'s cache when it was made for `key`, else computed and cached
    (a resumed run does not pay the teacher's pass twice)."""
    path, key_path = work / CACHE, work / CACHE_KEY
    try:
        if json.loads(key_path.read_text())["key"] == key:
            return np.load(path)
    except (OSError, ValueError, KeyError):
        pass
    logits = compute()
    np.save(path, logits)
    key_path.write_text(json.dumps({"key": key}))
    return logits


def prepare(p, model, work: Path, train: Encoded) -> tuple[Encoded, object, dict]:
    """For the prepared run `p` (its config's `distill:` set) and the student `model`: the training
    split with the transfer rows appended (no gold label: placeholder labels), the `Distiller`, and a
    summary for metrics.json."""
    from tunery.train.distill import Distiller

    cfg, d = p.cfg, p.cfg.distill
    if cfg.model.method == "lora":
        raise ConfigError("distill with model.method: lora is not supported; use model.method: full")
    if cfg.train.adversarial.method != "none":
        raise ConfigError("distill with train.adversarial is not supported: leave one of them out")
    if cfg.train.rdrop:
        raise ConfigError("distill with train.rdrop is not supported: set train.rdrop: 0")
    if cfg.train.dp.noise_multiplier:
        raise ConfigError("distill with train.dp (DP-SGD) is not supported: the teacher, trained on the same rows "
                          "without it, would pass them on through its soft labels; set train.dp.noise_multiplier: 0")
    run, meta = teacher_run(d.teacher)
    label_names = list(p.data.label_names)
    if meta["task"] != p.data.task or (p.data.task != "regression" and list(meta["label_names"]) != label_names):
        raise ConfigError(f"distill.teacher {d.teacher!r} is a {meta['task']} model of labels {meta['label_names']}; "
                          f"this run is {p.data.task} with labels {label_names}: the teacher must have the same task "
                          "and labels, in the same order")
    frame = p.data.train
    texts = frame["text"].astype(str).tolist()
    pairs = frame["text_pair"].astype(str).tolist() if "text_pair" in frame else None
    extra_t: list[str] = []
    extra_p: list[str] | None = [] if pairs is not None else None
    if d.augment.copies or d.augment.joins:
        a = d.augment
        synonyms = None
        if a.synonym_prob:
            from tunery.attack.wordnet import synonym_source

            synonyms = synonym_source()  # WordNetMissing names the install
        seed = cfg.train.seed if a.seed is None else a.seed
        try:
            extra_t, extra_p = augmented_rows(texts, pairs, copies=a.copies, seed=seed,
                                              mask_token=MASK_SLOT, mask_prob=a.mask_prob, drop_prob=a.drop_prob,
                                              span_prob=a.span_prob, synonym_prob=a.synonym_prob, synonyms=synonyms,
                                              joins=a.joins)
        except ValueError as err:  # the one rule it checks: joins need single texts
            raise ConfigError(f"distill.augment.joins: {err}; set distill.augment.joins: 0") from None
    n_unlabelled = 0
    if d.unlabelled:
        if pairs is not None:
            raise ConfigError("distill.unlabelled is for single-text tasks; this run reads text pairs")
        more = read_unlabelled(d.unlabelled, d.unlabelled_column, p.data.text_column)
        n_unlabelled = len(more)
        extra_t += more
    all_t = texts + extra_t
    all_p = None if pairs is None else pairs + (extra_p or [])
    from tunery.store.home import tunery_home

    shared = teacher_folder(tunery_home(), run, meta.get("created_at"))
    # the run's own cache is keyed by the same teacher identity as the shared one (its folder's name), not a path
    key = hashlib.sha256(json.dumps([shared.name, all_t, all_p]).encode()).hexdigest()
    logits = _cached_logits(work, key, lambda: cached_logits(shared, all_t, all_p, teacher_labeller(run, meta)))
    task = p.task
    if p.data.task == "regression":  # the teacher's head outputs raw values; the student learns normalised ones
        logits = (logits - task.mean) / task.scale
    # labels of rows without gold (the loss ignores them): a valid value of the task's label
    placeholder = float(task.mean) if p.data.task == "regression" else [] if p.data.task == "multilabel" else 0
    from tunery.spelling import as_read

    extra_t, extra_p = as_read(p.speller, extra_t, extra_p)  # as predict will give them (model.correct_typos)
    extra = encode(p.tokenizer, with_mask(extra_t, p.tokenizer), extra_p, [placeholder] * len(extra_t), max_length=cfg.data.max_length) \
        if extra_t else Encoded([], [] if train.token_type_ids is not None else None, [])
    joined = train.extended(extra)

    teacher_model, mapping = None, None
    want = d.intermediate
    if want != "off":
        teacher_model, mapping, why = _intermediate_teacher(run, meta, model, p.tokenizer)
        if teacher_model is None and want == "on":
            raise ConfigError(f"distill.intermediate: on, but {why}; set distill.intermediate: auto or off")
        if teacher_model is None:
            log.info("distillation on logits only: %s", why)
    distiller = Distiller(logits, n_gold=len(texts), alpha=d.alpha, temperature=d.temperature,
                          problem_type=task.problem_type, teacher=teacher_model, mapping=mapping,
                          hidden_weight=d.hidden_weight, attention_weight=d.attention_weight)
    info = {"teacher": {"run": run.name, "path": str(run.resolve()), "backbone": meta.get("backbone")},
            "alpha": d.alpha, "temperature": d.temperature, "gold_rows": len(texts),
            "augmented_rows": len(extra_t) - n_unlabelled, "augment": d.augment.model_dump(),
            "unlabelled_rows": n_unlabelled,
            "intermediate": teacher_model is not None, "layer_map": mapping, "layers": d.layers}
    return joined, distiller, info


def _intermediate_teacher(run: Path, meta: dict, student, student_tokenizer):
    """(teacher model in eval mode, layer map, None) when teacher and student read the same token ids
    with the same hidden size and heads, else (None, None, why). Both models switch to eager attention,
    which returns attention maps."""
    if meta.get("backend", "transformers") != "transformers":
        return None, None, "the teacher is an ONNX run (no hidden states)"
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run / "model")
    if not _same_vocabulary(tokenizer, student_tokenizer):
        return None, None, "teacher and student tokenizers differ"
    teacher = AutoModelForSequenceClassification.from_pretrained(run / "model", attn_implementation="eager").eval()
    tc, sc = teacher.config, student.config
    if (tc.hidden_size, tc.num_attention_heads) != (sc.hidden_size, sc.num_attention_heads):
        return None, None, (f"hidden sizes differ (teacher {tc.hidden_size} x {tc.num_attention_heads} heads, student "
                            f"{sc.hidden_size} x {sc.num_attention_heads})")
    for p_ in teacher.parameters():
        p_.requires_grad_(False)
    if hasattr(student, "set_attn_implementation"):
        student.set_attn_implementation("eager")
    else:
        student.config._attn_implementation = "eager"
    from tunery.train.distill import layer_map

    return teacher, layer_map(sc.num_hidden_layers, tc.num_hidden_layers), None
