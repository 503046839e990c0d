"""Greedy model soups: the weights of several runs averaged into one model, kept when validation
says the average is at least as good.

Wortsman et al., "Model soups: averaging weights of multiple fine-tuned models improves accuracy
without increasing inference time" (ICML 2022): runs fine-tuned from one pretrained checkpoint with
different recipes land in one basin of the loss, so their average is a model of its own, often better
than the best of them, and it costs what one model costs to serve. The greedy soup adds runs in order
of their validation score and keeps each only if the average's validation score does not drop, so it
is never worse than the best run on validation.

Runs mix when they are single-label classification runs of one backbone, fully fine-tuned, with one
pooling and one set of labels: the same architecture, parameter for parameter (`check_mixable`).
`tunery auto` searches only such recipes. Multi-label (thresholds tuned per model) and regression
(its target scaling folded into each saved head) are not souped.

`average` and `greedy_soup` are plain functions; `soup_run` writes the soup as a normal run
directory (metrics beside the baseline, report, store record) that every command takes.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from tunery.errors import RunError

log = logging.getLogger(__name__)
T = TypeVar("T")
WEIGHTS = "model.safetensors"
SOUP_MAX = 10  # ingredients tried at most: one validation pass each


def average(states: Sequence[dict]) -> dict:
    """The element-wise mean of state dicts with the same keys (floats averaged in float32, in the
    first one's dtype; integer buffers taken from the first)."""
    import torch

    if not states:
        raise ValueError("average of no state dicts")
    out = {}
    for key, first in states[0].items():
        if torch.is_floating_point(first):
            total = torch.zeros_like(first, dtype=torch.float32)
            for s in states:
                total += s[key].to(torch.float32)
            out[key] = (total / len(states)).to(first.dtype)
        else:
            out[key] = first.clone()
    return out


def greedy_soup(ranked: Sequence[T], score: Callable[[list[T]], float], *,
                greater_is_better: bool = True) -> tuple[list[T], float, list[tuple[T, float, bool]]]:
    """Wortsman et al.'s greedy soup. `ranked`: the ingredients, best first; `score(members)`: the
    validation score of the average of `members`. Returns the members kept, their score, and each
    ingredient with the score of the soup with it and whether it was kept (the first: alone, kept)."""
    members = [ranked[0]]
    best = score(members)
    tried = [(ranked[0], best, True)]
    for candidate in ranked[1:]:
        value = score([*members, candidate])
        keep = value >= best if greater_is_better else value <= best
        tried.append((candidate, value, keep))
        if keep:
            members.append(candidate)
            best = value
    return members, best, tried


def check_mixable(metas: Sequence[dict], configs: Sequence[dict]) -> None:
    """RunError unless the runs have one architecture: single-label classification, one backbone,
    full fine-tuning, one pooling, the same labels."""
    first, cfg0 = metas[0], configs[0]
    for meta, cfg in zip(metas, configs):
        why = None
        if meta.get("task") != "classification":
            why = f"its task is {meta.get('task')} (only single-label classification runs are souped)"
        elif meta.get("backend", "transformers") != "transformers" or meta.get("method") != "full":
            why = f"it is a {meta.get('backend') or meta.get('method')} run (only fully fine-tuned models mix)"
        elif meta.get("backbone") != first.get("backbone"):
            why = f"its backbone is {meta.get('backbone')}, not {first.get('backbone')}"
        elif meta.get("label_names") != first.get("label_names"):
            why = "its labels differ"
        elif cfg.get("model", {}).get("pooling") != cfg0.get("model", {}).get("pooling"):
            why = f"its pooling is {cfg.get('model', {}).get('pooling')}, not {cfg0.get('model', {}).get('pooling')}"
        if why:
            raise RunError(f"run {meta.get('name')!r} cannot join a soup with {first.get('name')!r}: {why}")


def soup_run(runs: Sequence[str | Path], *, name: str, output_dir: str | Path, store=None) -> tuple[Path | None, dict]:
    """The greedy soup of `runs` (completed runs, best on validation first), written as the run
    `output_dir/name` when it holds two or more of them; (None, info) when no second run improves
    on the first (nothing is written). `info`: the members, each ingredient's soup score, the first
    run's and the soup's validation score."""
    import json

    import torch
    from safetensors.torch import load_file

    from tunery import pipeline
    from tunery.config import load_config, save_config
    from tunery.evaluate.metrics import default_metric, greater_is_better
    from tunery.rundir import META, write_json
    from tunery.inference import predict_scores, resolve_precision

    started = time.time()
    runs = [Path(r) for r in runs]
    if len(runs) < 2:
        raise RunError(f"a soup needs two runs or more, got {len(runs)}")
    metas = [json.loads((r / META).read_text()) for r in runs]
    configs = [load_config(r / "config.yaml").to_dict() for r in runs]
    check_mixable(metas, configs)
    cfg = load_config(runs[0] / "config.yaml")
    cfg = cfg.model_copy(update={"name": name, "output_dir": str(output_dir)})
    p = pipeline.prepare_run(cfg, quiet=True)  # the same data and split the runs trained on
    model = pipeline.preflight(p)  # the architecture, and the tokenised splits in p.encoded
    metric = cfg.train.metric or default_metric(p.data.task)
    y_val = p.task.y_true(p.encoded["validation"].labels, len(p.data.label_names))
    if not len(y_val):
        raise RunError(f"run {runs[0].name!r} has no validation split: a soup is chosen on validation")
    metric_fn = pipeline.make_metric_fn(p.data.task, y_val, list(p.data.label_names), metric,
                                        pipeline.threshold_decision(p.data.task, y_val, fixed=0.5, per_label=False))
    bf16 = resolve_precision(cfg.train.precision) == "bf16"

    def load_weights(state: dict) -> None:
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if not k.endswith("position_ids")]:
            raise RunError(f"the saved weights of the soup's runs do not fit {cfg.model.backbone!r}: missing "
                           f"{missing[:3]}, unexpected {unexpected[:3]}")

    # Each run's weights are read once: the soup's float32 sum is kept for the members so far (greedy
    # tries prefix + one more), so trying n ingredients reads n files, not n^2 / 2.
    sums: dict[tuple, dict] = {}

    def summed(members: list[Path]) -> dict:
        key = tuple(members)
        if key not in sums:
            add = load_file(str(members[-1] / "model" / WEIGHTS))
            prev = summed(members[:-1]) if len(members) > 1 else None
            for stale in [k for k in sums if k != key[:-1]]:  # only the prefix is built on
                del sums[stale]
            sums[key] = {k: (v.to(torch.float32) + prev[k] if prev is not None and torch.is_floating_point(v)
                             else v.to(torch.float32) if torch.is_floating_point(v) else v) for k, v in add.items()}
        return sums[key]

    def mean_of(members: list[Path]) -> dict:
        return {k: v / len(members) if torch.is_floating_point(v) else v for k, v in summed(members).items()}

    def score(members: list[Path]) -> float:
        load_weights(mean_of(members))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            scores = predict_scores(model, p.task, p.encoded["validation"], batch_size=cfg.train.eval_batch_size,
                                    pad_id=p.tokenizer.pad_token_id or 0)
        return float(metric_fn(scores)[metric])

    members, value, tried = greedy_soup(runs, score, greater_is_better=greater_is_better(metric))
    first = tried[0][1]
    info = {"members": [m.name for m in members], "metric": metric, "first_validation": first,
            "soup_validation": value, "tried": [{"run": r.name, "validation": v, "kept": k} for r, v, k in tried],
            "method": "greedy soup (Wortsman et al. 2022): uniform weight average, ingredients added best first, "
                      "each kept only if validation does not drop"}
    log.info("soup %s: %s of %d runs; validation %s %.4f (the best run alone %.4f)", name,
             "+".join(info["members"]), len(runs), metric, value, first)
    if len(members) < 2:
        return None, info
    load_weights(mean_of(members))

    with pipeline.new_run(cfg, task=p.data.task, backbone=cfg.model.backbone, store=store) as run:
        work = run.work
        p.cfg = run.cfg
        save_config(run.cfg, work / "config.yaml")
        write_json(work / "data_report.json", p.report.to_dict())
        shutil.copy2(runs[0] / "data_digest.json", work / "data_digest.json")
        training = {"soup": info, "steps": 0, "total_steps": 0, "best_step": 0, "best_validation": value,
                    "best_validation_loss": None,
                    "selection": {"metric": metric, "tie_break": "none", "threshold": "none"},
                    "stopped_early": False, "samples_seen": 0, "train_seconds": round(time.time() - started, 2),
                    "samples_per_s": 0.0}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # scored as the runs were
            final, run.metrics = pipeline.score_and_write(p, model, work, p.encoded, training, started=started)
    return final, info
