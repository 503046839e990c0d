"""Explanations of a loaded model's predictions: which words drove the score, by one method, with
its cost and, on request, its measured faithfulness.

`explain(predictor, texts)` is what `tunery.load(RUN).explain(...)`, `tunery explain` and the
server's `/explain` call. The predictor is duck-typed (this package does not import predict.py):
it gives `meta`, `label_names`, `threshold`, `task`, `tokenizer`, `inputs(texts, pairs)` (the texts
as its model reads them), `encoded_scores(Encoded)`, and for gradient methods `model` and
`supports_gradients`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from tunery.errors import ExplainError, UnsupportedMethodError
from tunery.explain import methods as M
from tunery.explain.faithfulness import faithfulness as measure_faithfulness
from tunery.explain.target import WordFunction, choose_target, pick
from tunery.explain.words import tokenize_words


@dataclass
class WordScore:
    text: str
    start: int  # character offsets [start, end) in the text (segment 0) or the pair (segment 1)
    end: int
    segment: int
    score: float


@dataclass
class Explanation:
    """One input's explanation. `score` is the explained number: the target's probability
    (classification) or the value (regression); each word's `score` is its attribution to it."""

    text: str
    pair: str | None
    method: str
    target: str | None
    prediction: dict
    score: float
    words: list[WordScore]
    params: dict
    evaluations: int  # model evaluations (forward passes of one input; IG's with gradients)
    seconds: float  # the explanation's wall time, without the faithfulness measurement
    delta: float | None = None  # IG: sum(word scores) - (score - baseline_score)
    baseline_score: float | None = None
    truncated: bool = False
    faithfulness: dict | None = field(default=None)

    def to_dict(self) -> dict:
        return asdict(self)

    def top(self, k: int = 5) -> list[WordScore]:
        return sorted(self.words, key=lambda w: -w.score)[:k]


def resolve_options(method: str, options: dict | None) -> dict:
    """The method's options: its defaults, updated by `options`; unknown names and values that are
    not positive numbers are refused by name."""
    if method not in M.METHODS:
        raise ExplainError(f"method {method!r} is not one tunery has: choose one of {', '.join(M.METHODS)}")
    defaults = M.OPTIONS[method]
    given = dict(options or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        valid = ", ".join(defaults) or "none"
        raise ExplainError(f"option {unknown[0]!r} is not one of {method}'s options ({valid})")
    out = dict(defaults)
    for name, value in given.items():
        kind = type(defaults[name])
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
            raise ExplainError(f"option {name}={value!r}: give {'a whole number' if kind is int else 'a number'}")
        if value <= 0:
            raise ExplainError(f"option {name}={value!r}: must be above 0")
        out[name] = kind(value)
    return out


def check_method(predictor, method: str) -> None:
    """ExplainError for an unknown method, UnsupportedMethodError for one this backend cannot run."""
    if method not in M.METHODS:
        raise ExplainError(f"method {method!r} is not one tunery has: choose one of {', '.join(M.METHODS)}")
    if not getattr(predictor, "explainable", True):
        raise UnsupportedMethodError(f"a {predictor.meta.get('backend', 'transformers')} run has no tokens to explain: "
                                     "explanations need a transformer run (or its ONNX compression)")
    if method in M.GRADIENT_METHODS and not getattr(predictor, "supports_gradients", False):
        runnable = ", ".join(m for m in M.METHODS if m not in M.GRADIENT_METHODS)
        raise UnsupportedMethodError(f"method {method!r} needs gradients, which a {predictor.meta.get('backend')} run "
                                     f"does not have; methods that work here: {runnable} (or explain the "
                                     "original transformers run)")


def explain(predictor, texts: list[str], pairs: list[str] | None = None, *, method: str = "ig", target=None,
            options: dict | None = None, seed: int = 0, with_faithfulness: bool = False) -> list[Explanation]:
    """One Explanation per text (see Explanation). `target`: a label name or index (default: the
    predicted class, the top label for multi-label; regression explains its value). `options`: the
    method's (methods.OPTIONS). `seed` makes LIME and SHAP repeatable. `with_faithfulness` adds
    comprehensiveness, sufficiency and LOO correlation, each beside random's (more evaluations)."""
    check_method(predictor, method)
    opts = resolve_options(method, options)
    texts, pairs = predictor.inputs(texts, pairs)  # the text its model reads (model.correct_typos: corrected)
    return [_explain_one(predictor, text, pairs[i] if pairs else None, method, target, opts, seed, with_faithfulness)
            for i, text in enumerate(texts)]


def _explain_one(predictor, text: str, pair: str | None, method: str, target, opts: dict, seed: int,
                 with_faithfulness: bool) -> Explanation:
    started = time.perf_counter()
    tokens = tokenize_words(predictor.tokenizer, text, pair, max_length=predictor.meta["max_length"])
    n = len(tokens)
    scores = predictor.encoded_scores(_single(tokens))[0]
    tgt = choose_target(predictor, scores, target)
    f = WordFunction(predictor, tokens, tgt)
    full = float(pick(scores[None], tgt)[0])
    extra: dict = {}
    if n == 0:
        attributions = np.zeros(0)
    elif method == "ig":
        attributions, extra = M.integrated_gradients(predictor, tokens, tgt, **opts)
    else:
        attributions, extra = getattr(M, method)(f, n, seed=seed, **opts)
    evaluations = 1 + f.evaluations + extra.pop("evaluations", 0)  # 1: the prediction itself
    seconds = time.perf_counter() - started  # the explanation's own cost, without its faithfulness
    faith = None
    if with_faithfulness and n:
        before, started = f.evaluations, time.perf_counter()
        loo = attributions if method == "occlusion" else M.occlusion(f, n)[0]
        faith = measure_faithfulness(f, full, attributions, loo, seed=seed)
        faith["evaluations"] = f.evaluations - before
        faith["seconds"] = time.perf_counter() - started
    decoded = predictor.task.decode(scores[None], predictor.label_names, threshold=predictor.threshold)[0]
    params = {**opts, **({"seed": seed} if method in ("lime", "shap") else {})}
    return Explanation(
        text=text, pair=pair, method=method, target=tgt.name, prediction=decoded, score=full,
        words=[WordScore(w.text, w.start, w.end, w.segment, float(s)) for w, s in zip(tokens.words, attributions)],
        params=params, evaluations=int(evaluations), seconds=seconds,
        delta=_delta(extra, attributions, full), baseline_score=extra.get("baseline_score"),
        truncated=tokens.truncated, faithfulness=faith)


def _delta(extra: dict, attributions: np.ndarray, full: float) -> float | None:
    """IG's completeness gap on the words: sum(word scores) - (f(x) - f(baseline))."""
    if "baseline_score" not in extra:
        return None
    return float(attributions.sum() - (full - extra["baseline_score"]))


def _single(tokens):
    from tunery.inference import Encoded

    types = [tokens.token_type_ids.tolist()] if tokens.token_type_ids is not None else None
    return Encoded([tokens.input_ids.tolist()], types, [None])
