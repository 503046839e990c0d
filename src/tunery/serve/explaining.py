"""What the server adds to `tunery.explain` for ``POST /v1/models/{name}/explain``: the caps on a
request, a time limit that stops a running explanation, and an executor of its own.

- **Caps** (``explain`` in the serve config): texts per request and words per text (413), IG's
  steps, LIME's and SHAP's samples and the batch options (422), each refused with the cap's name,
  the value and the fix. A method's default above a cap the operator lowered is lowered to the cap.
- **Time limit**: every model call an explanation makes goes through `Guarded`, which checks the
  request's `Budget` first; past ``explain.timeout_seconds`` (counted from admission, waiting for a
  worker included) the next call raises `ExplainTimeout`, so a stopped request frees its worker
  within one batch of model evaluations, and it is answered 504 and never billed.
- **Executor**: `Explainer` runs explanations on ``explain.workers`` threads of their own (never on a
  model's prediction thread) and refuses work past ``explain.max_queued_requests`` waiting requests
  (503). Threads of their own do not stop explanations from taking the cores predictions need: both
  are torch work on the same cores. So each explanation thread lowers its own scheduling priority
  by ``explain.nice`` (Linux: a thread has a nice value of its own, and the OpenMP threads torch
  starts for it inherit it); the kernel then runs an explanation only on CPU time predictions leave
  (nice 19 against 0: about 1.5 % of a core when both want it), and a prediction that arrives
  preempts it at once.
- **Gradients on the served model**: IG feeds the model embeddings it makes itself (no hooks on the
  model, weights that need no gradients), so it runs on the very model that serves predictions, at
  the same time as they run, with no copy of the weights.
- **Tokenizers**: a fast (Rust) tokenizer sets its truncation on every call, and a call from one
  thread while another thread's call runs fails ("Already borrowed"); explanations therefore
  tokenize with copies of their own, one per thread, never with the one predictions use.
"""

from __future__ import annotations

import concurrent.futures
import copy
import logging
import math
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from tunery.explain.methods import GRADIENT_METHODS, METHODS

log = logging.getLogger(__name__)

# option -> the serve config field that caps it (explain.<field>)
CAPPED_OPTIONS = {"steps": "max_steps", "samples": "max_samples", "batch": "max_batch",
                  "internal_batch_size": "max_batch"}
MAX_OPTION_VALUE = 1e12  # anything larger is no sensible count or width (and would overflow a float)


class CapError(Exception):
    """A request over one of the explain caps: (status, code, message)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class ExplainTimeout(Exception):
    """The request's time limit passed: the explanation stopped at its next model call."""


class Budget:
    """A request's time limit; `stop()` ends it at once (the request was given up)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.admitted = time.monotonic()
        self.until = self.admitted + seconds
        self.started: float | None = None  # when a worker took the request
        self._stopped = False

    def stop(self) -> None:
        self._stopped = True

    def remaining(self) -> float:
        return max(0.0, self.until - time.monotonic())

    def check(self) -> None:
        if self._stopped or time.monotonic() > self.until:
            raise ExplainTimeout()


class _GuardedModel:
    """A torch model whose every call checks the budget first (IG's forward passes)."""

    def __init__(self, model, budget: Budget) -> None:
        self._model, self._budget = model, budget

    def __call__(self, *args, **kwargs):
        self._budget.check()
        return self._model(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._model, name)


class Guarded:
    """A predictor as `tunery.explain.explain` sees it: the served one, with each model call checked
    against the budget (IG's passes included) and ``tokenizer`` this thread's copy."""

    def __init__(self, predictor, budget: Budget, tokenizer=None) -> None:
        self._predictor, self._budget = predictor, budget
        self.tokenizer = tokenizer if tokenizer is not None else own_tokenizer(predictor)

    @property
    def model(self):
        return _GuardedModel(self._predictor.model, self._budget)

    def encoded_scores(self, data):
        self._budget.check()
        return self._predictor.encoded_scores(data)

    def __getattr__(self, name: str):
        return getattr(self._predictor, name)


_local = threading.local()


def own_tokenizer(predictor):
    """This thread's copy of ``predictor``'s tokenizer (made on first use; see the module)."""
    copies = getattr(_local, "tokenizers", None)
    if copies is None:
        copies = _local.tokenizers = {}
    entry = copies.get(id(predictor))
    if entry is None or entry[0] is not predictor:
        entry = copies[id(predictor)] = (predictor, copy.deepcopy(predictor.tokenizer))
    return entry[1]


_counting: dict[int, tuple[Any, Any, threading.Lock]] = {}
_counting_lock = threading.Lock()


def _counting_tokenizer(predictor) -> tuple[Any, threading.Lock]:
    """One more copy of ``predictor``'s tokenizer, for counting words before admission (from the
    request threads, one at a time under its lock)."""
    with _counting_lock:
        entry = _counting.get(id(predictor))
        if entry is None or entry[0] is not predictor:
            entry = _counting[id(predictor)] = (predictor, copy.deepcopy(predictor.tokenizer), threading.Lock())
    return entry[1], entry[2]


def methods_for(predictor) -> list[str]:
    """The explanation methods this predictor's backend can run."""
    if not getattr(predictor, "explainable", True):
        return []
    if getattr(predictor, "supports_gradients", False):
        return list(METHODS)
    return [m for m in METHODS if m not in GRADIENT_METHODS]


def check_options(method: str, given: dict[str, Any], caps) -> dict[str, Any]:
    """The method's options (its defaults updated by ``given``) within the caps.

    Raises CapError (422) for a given value over its cap, ExplainError (from the core) for an
    unknown name or a value that is not a positive number."""
    from tunery.explain.core import resolve_options

    for name, value in given.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and (
                not math.isfinite(value) or abs(value) > MAX_OPTION_VALUE):
            raise CapError(422, "invalid_option", f"option {name}={value!r} is not a usable number: give a finite "
                           f"number of at most {MAX_OPTION_VALUE:g}")
    options = resolve_options(method, given)
    for name, field in CAPPED_OPTIONS.items():
        if name not in options:
            continue
        cap = getattr(caps, field)
        if options[name] <= cap:
            continue
        if name not in given:  # the method's default is above a cap the operator lowered
            options[name] = cap
            continue
        fix = {"steps": "fewer steps (the response's 'delta', IG's completeness gap, tells whether more would help)",
               "samples": "fewer samples", "batch": "a smaller batch",
               "internal_batch_size": "a smaller internal_batch_size"}[name]
        raise CapError(422, "option_too_large", f"option {name}={given[name]:g} is above this server's cap "
                       f"explain.{field}={cap}: ask for {fix}, at most {cap}")
    return options


def count_words(predictor, texts: list[str], pairs: list[str] | None, caps) -> list[int]:
    """The words each text (with its pair) has as the model reads it (after truncation to the run's
    max_length); CapError (413) for the first text over ``explain.max_words_per_text``."""
    from tunery.explain.words import tokenize_words

    tokenizer, lock = _counting_tokenizer(predictor)
    counts = []
    for i, text in enumerate(texts):
        with lock:
            n = len(tokenize_words(tokenizer, text, pairs[i] if pairs else None, max_length=predictor.meta["max_length"]))
        if n > caps.max_words_per_text:
            with_pair = " with its pair" if pairs else ""
            raise CapError(413, "too_many_words", f"texts[{i}]{with_pair} has {n} words as the model reads it; "
                           f"the limit is explain.max_words_per_text={caps.max_words_per_text}: explain a shorter "
                           "passage (split the text, or send the sentences that matter)")
        counts.append(n)
    return counts


@dataclass
class Job:
    """One explain request as a worker runs it."""

    predictor: Any
    texts: list[str]
    pairs: list[str] | None
    method: str
    target: Any
    options: dict[str, Any]
    seed: int
    faithfulness: bool
    budget: Budget


def run(job: Job) -> list[dict]:
    """The explanations of ``job``, as JSON-ready dicts (non-finite numbers as null)."""
    from tunery.explain.core import explain

    job.budget.started = time.monotonic()
    job.budget.check()  # it may have waited past its time limit
    guarded = Guarded(job.predictor, job.budget)
    out = explain(guarded, job.texts, job.pairs, method=job.method, target=job.target, options=job.options,
                  seed=job.seed, with_faithfulness=job.faithfulness)
    return [_finite(e.to_dict()) for e in out]


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def lower_priority(nice: int) -> int | None:
    """Raise the calling thread's nice value by ``nice`` (at most to 19); the value it now has, or None
    where threads have no priority of their own (not Linux) or the kernel refused."""
    if nice <= 0 or not hasattr(os, "setpriority") or not sys.platform.startswith("linux"):
        return None
    tid = threading.get_native_id()  # Linux: PRIO_PROCESS with a thread id sets that thread alone
    try:
        value = min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice)
        os.setpriority(os.PRIO_PROCESS, tid, value)
    except OSError as e:
        log.warning("explanation thread: could not lower its priority (nice +%d): %s", nice, e)
        return None
    return value


class Explainer:
    """The explanation executor of one server process (shared by its models), with its queue bound."""

    def __init__(self, workers: int, max_queued: int, nice: int = 0) -> None:
        self.workers, self.max_queued = workers, max_queued
        self.executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="tunery-explain",
                                                              initializer=lower_priority, initargs=(nice,))
        self._lock = threading.Lock()
        self._in_flight = 0  # requests submitted and not finished (running or waiting)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return max(0, self._in_flight - self.workers)

    def admit(self) -> bool:
        """Take a place for one more request; False when ``max_queued`` requests already wait."""
        with self._lock:
            if self._in_flight >= self.workers + self.max_queued:
                return False
            self._in_flight += 1
            return True

    def submit(self, job: Job) -> concurrent.futures.Future:
        """Run ``job`` on a worker (after `admit`); the place is given back when it is done."""
        future = self.executor.submit(run, job)
        future.add_done_callback(self._release)
        return future

    def release_unused(self) -> None:
        """Give back a place taken by `admit` for a request that submitted nothing."""
        self._release(None)

    def _release(self, _future) -> None:
        with self._lock:
            self._in_flight -= 1

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
