"""The client side of a federation: what runs on a data owner's machine, inside its Flower SuperNode.

A client reads its own labelled file (the `data-path` of its node config), checks it with tunery's
data checks, and answers three kinds of message from the server:
- `describe` (query): whether its data passed the checks (else the reason: it sits the run out),
  the task, its label names and row count (regression: the sums for the pooled mean and scale);
  never a row of data;
- `train`: load the global weights, train `federated.local_steps` (or `local_epochs`) with tunery's
  training loop (FedProx's proximal term added when `mu` > 0), send back the trainable tensors;
- `evaluate`: score the global weights on its own validation split.

The federation's facts (label set, task, regression scaling) come with every message, so a client
maps its labels onto the federation's order even when it holds one class only (common under a
non-IID split). The model, the tokenised data and the prepared config are kept per process.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tunery.config import RunConfig, config_from_dict
from tunery.errors import DataError, TuneryError

log = logging.getLogger(__name__)


def client_config(cfg: RunConfig, data_path: str, fed: dict | None = None) -> RunConfig:
    """The federation's config as this client runs it: its own file as the only data (split into
    train and validation by data.validation_fraction, nothing held out as test) and, once the
    server has said it, the federation's label set."""
    data = cfg.data.model_copy(update={"train": data_path, "validation": None, "test": None, "test_fraction": 0.0,
                                       **({"labels": fed["labels"]} if fed and fed.get("labels") else {})})
    task = cfg.task.model_copy(update={"type": fed["task"]}) if fed else cfg.task
    return cfg.model_copy(update={"data": data, "task": task})


def describe(cfg: RunConfig, data_path: str) -> dict[str, Any]:
    """What the server may know of this client's data: passed the checks or why not, the task,
    the label names, the row count (regression: sum and sum of squares of the targets)."""
    from tunery.pipeline import prepare_run

    try:
        p = prepare_run(client_config(cfg, data_path), quiet=True, federated=True)
    except (DataError, TuneryError, OSError) as err:
        return {"ok": False, "error": str(err)}
    frame = p.data.train
    rows = len(frame) + len(p.data.validation)
    out: dict[str, Any] = {"ok": True, "task": p.data.task, "labels": list(p.data.label_names), "rows": rows,
                           "columns": {"text": p.data.text_column, "text_pair": p.data.text_pair_column,
                                       "label": p.data.label_column, "delimiter": p.data.label_delimiter},
                           "warnings": [f.message for f in p.report.warnings]}
    if p.data.task == "regression":
        y = [float(v) for v in list(frame["label"]) + list(p.data.validation["label"])]
        out.update(label_sum=float(sum(y)), label_sumsq=float(sum(v * v for v in y)))
    return out


@dataclass
class Client:
    """One client's prepared data and model, kept across the rounds of a run in its process."""

    key: str
    cfg: RunConfig
    prepared: object  # tunery.pipeline.Prepared
    model: object
    name: str


_CLIENTS: dict[str, Client] = {}


def get_client(cfg_json: str, data_path: str, fed: dict, name: str) -> Client:
    """The client for this run (built on its first message: data checked and tokenised, model built)."""
    from tunery.federated.server import federation_task
    from tunery.pipeline import _encode_split, build_model, prepare_run

    key = json.dumps([cfg_json, data_path, fed], sort_keys=True)
    if key in _CLIENTS:
        return _CLIENTS[key]
    cfg = client_config(config_from_dict(json.loads(cfg_json)), data_path, fed)
    # the federation's task: a regression target scaled by the pooled mean and spread, not this client's
    p = replace(prepare_run(cfg, quiet=True, federated=True), task=federation_task(fed))
    p.encoded = {split: _encode_split(p.tokenizer, getattr(p.data, split), cfg.data.max_length)
                 for split in ("train", "validation", "test")}
    model = build_model(p.backbone_path, p.task, list(fed.get("labels") or []), cfg)
    _CLIENTS[key] = Client(key, cfg, p, model, name)
    return _CLIENTS[key]


def local_steps(cfg: RunConfig, n_train: int) -> int:
    """Optimizer steps of one round: federated.local_steps, or local_epochs of this client's data."""
    fed, t = cfg.federated, cfg.train
    if fed.local_steps:
        return fed.local_steps
    per_epoch = math.ceil(math.ceil(n_train / t.batch_size) / t.grad_accum_steps)
    return max(1, math.ceil(fed.local_epochs * per_epoch))


def round_rate(train_cfg, server_round: int, rounds: int) -> tuple[float, float]:
    """(learning-rate factor, warm-up share) of a client's training in round `server_round` of `rounds`.
    The config's schedule spans the whole federation, as it spans a centralised run: each round trains at
    the constant rate the schedule gives where the round starts (linear: 1 - (r-1)/R; cosine; constant:
    1), and the warm-up (train.warmup_ratio of the run) happens in the first round. Restarting the
    schedule every round instead (warm-up, then decay to zero, each round) trains at half the rate on
    average and left SST-2 3 points further from centralised training (docs/benchmarks.md)."""
    progress = min(max(server_round - 1, 0) / max(rounds, 1), 1.0)
    if train_cfg.scheduler == "linear":
        factor = 1.0 - progress
    elif train_cfg.scheduler == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        factor = 1.0
    warmup = min(0.5, train_cfg.warmup_ratio * rounds) if server_round <= 1 else 0.0
    return factor, warmup


def train_round(client: Client, start: dict, *, server_round: int, partition: int, fault: str | None = None,
                dp_steps: int = 0) -> tuple[dict, dict]:
    """Train from the global tensors `start`; returns (the tensors to send, metrics). With train.dp
    (record-level DP-SGD), `dp_steps` is this client's private steps in the run's earlier rounds: the
    metrics carry the epsilon of all its steps so far (`dp-epsilon`, for train.dp.delta) and their count."""
    from tunery.evaluate.metrics import default_metric, greater_is_better
    from tunery.federated.weights import faulty_update, load_trainable, proximal_term, trainable_state
    from tunery.pipeline import make_metric_fn, threshold_decision
    from tunery.train.loop import Trainer

    cfg, p, model = client.cfg, client.prepared, client.model
    scored = evaluate_round(client, start)  # the global model as received, on this client's validation rows
    load_trainable(model, start)
    enc = p.encoded
    n_labels = len(p.data.label_names)
    steps = local_steps(cfg, len(enc["train"]))
    # The run's schedule spans the federation (round_rate); a seed of its own per round and client (data
    # order, dropout).
    factor, warmup = round_rate(cfg.train, server_round, cfg.federated.rounds)
    t = cfg.train.model_copy(update={"max_steps": steps, "eval_every_steps": steps, "checkpoint_every_steps": steps,
                                     "progress": False, "scheduler": "constant", "warmup_ratio": warmup,
                                     "lr": cfg.train.lr * factor,
                                     "head_lr": cfg.train.head_lr * factor if cfg.train.head_lr else None,
                                     "early_stopping_patience": None, "ema_decay": None,
                                     "seed": (cfg.train.seed + 7919 * server_round + 104729 * partition) % 2**31})
    metric = cfg.train.metric or default_metric(p.data.task)
    y_val = p.task.y_true(enc["validation"].labels, n_labels)
    decision = threshold_decision(p.data.task, y_val, fixed=cfg.task.problem_threshold, per_label=False)
    mu = cfg.federated.mu if cfg.federated.strategy == "fedprox" else 0.0
    anchor = {k: v.clone() for k, v in start.items()}
    regularizer = (lambda m: proximal_term(m, anchor, mu)) if mu > 0 else None
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tunery-federated-") as work:
        trainer = Trainer(model, p.task, t, n_labels=n_labels, pad_id=p.tokenizer.pad_token_id or 0, workdir=Path(work),
                          metric=metric, greater_is_better=greater_is_better(metric),
                          metric_fn=make_metric_fn(p.data.task, y_val, list(p.data.label_names), metric, decision),
                          callbacks=[], regularizer=regularizer)
        state = trainer.fit(enc["train"], enc["validation"])
        losses = [r["loss"] for r in _records(Path(work) / "log.jsonl") if "loss" in r and "split" not in r]
    client.model = trainer.model
    sent = trainable_state(trainer.model)
    if fault:
        sent = faulty_update(sent, {k: v.float() for k, v in start.items()}, fault, seed=t.seed)
    metrics = {"num-examples": len(enc["train"]), "dp-weight": 1.0, "eval-examples": scored["num-examples"],
               "eval-metric": scored["eval-metric"], "eval-loss": scored["eval-loss"],
               "train-loss": float(sum(losses) / max(len(losses), 1)),
               "steps": float(state.step), "train-seconds": round(time.perf_counter() - t0, 3)}
    if trainer.dp_report:  # the record-level privacy this client's rows have spent over the whole run
        from tunery.train.dp import epsilon

        steps_so_far = dp_steps + int(state.step)
        metrics.update({"dp-steps": steps_so_far, "dp-epsilon": epsilon(
            cfg.train.dp.noise_multiplier, trainer.dp_report["sample_rate"], steps_so_far, cfg.train.dp.delta)})
    return sent, metrics


def _records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def evaluate_round(client: Client, weights: dict) -> dict:
    """The global weights scored on this client's validation split."""
    from tunery.evaluate.metrics import compute_metrics, default_metric, metric_value, validation_loss
    from tunery.federated.weights import load_trainable
    from tunery.inference import predict_scores

    cfg, p, model = client.cfg, client.prepared, client.model
    load_trainable(model, weights)
    enc = p.encoded["validation"]
    n_labels = len(p.data.label_names)
    metric = cfg.train.metric or default_metric(p.data.task)
    if not len(enc):
        return {"num-examples": 0, "dp-weight": 1.0, "eval-loss": float("nan"), "eval-metric": float("nan")}
    scores = predict_scores(model, p.task, enc, batch_size=cfg.train.eval_batch_size,
                            pad_id=p.tokenizer.pad_token_id or 0)
    y = p.task.y_true(enc.labels, n_labels)
    m = compute_metrics(p.data.task, y, scores, list(p.data.label_names), threshold=cfg.task.problem_threshold)
    return {"num-examples": len(enc), "dp-weight": 1.0, "eval-loss": float(validation_loss(p.data.task, y, scores)),
            "eval-metric": float(metric_value(m, metric))}
