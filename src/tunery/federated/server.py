"""The server side of a federation: the body of the Flower ServerApp that `tunery federate` runs.

It never reads a client's data. It asks each connected client to describe its data (checks passed
or why not, task, label names, row count), builds the model for the federation's label set, runs
the chosen Flower strategy for `federated.rounds` rounds and writes the global model as a run
directory (model/, tunery.json, metrics.json, log.jsonl with one record per round, report.html)
into the `.partial` directory `tunery federate` claimed for it.

A `RecordingGrid` wraps Flower's Grid: it keeps clients that failed their data checks out of the
rounds, and records per round who was sent what, who answered, who failed or dropped, each
client's metrics, and the bytes each way.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
import traceback
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunery.config import RunConfig, config_from_dict
from tunery.errors import TuneryError

log = logging.getLogger(__name__)

ERROR_FILE = "federation-error.txt"  # in the run's .partial directory when the ServerApp fails
DESCRIBE = "query"  # Flower's message type for a question that is neither train nor evaluate


def federation_task(fed: dict):
    from tunery.tasks import get_task

    return get_task(fed["task"], label_mean=fed.get("label_mean", 0.0), label_scale=fed.get("label_scale", 1.0))


def merge_descriptions(cfg: RunConfig, described: dict[str, dict]) -> dict[str, Any]:
    """The federation's facts from the clients' descriptions (those that passed their checks):
    one task (they must agree), the union of their label names (or data.labels when given), the
    pooled mean and scale of a regression target."""
    from tunery.data.validate import _sort_names

    ok = {name: d for name, d in described.items() if d.get("ok")}
    tasks = defaultdict(list)
    for name, d in ok.items():
        tasks[d["task"]].append(name)
    if len(tasks) > 1:
        raise TuneryError("the clients' data are not of one task: " + "; ".join(
            f"{t}: {', '.join(sorted(names))}" for t, names in sorted(tasks.items()))
            + "; set task.type in the config, or fix the clients whose labels differ")
    (task,) = tasks
    fed: dict[str, Any] = {"task": task, "rows": {n: d["rows"] for n, d in ok.items()},
                           "columns": next(iter(ok.values()))["columns"]}
    if task == "regression":
        n = sum(d["rows"] for d in ok.values())
        mean = sum(d["label_sum"] for d in ok.values()) / n
        var = max(sum(d["label_sumsq"] for d in ok.values()) / n - mean * mean, 0.0) * n / max(n - 1, 1)
        fed.update(labels=[], label_mean=mean, label_scale=math.sqrt(var) or 1.0)
    else:
        fed["labels"] = list(cfg.data.labels) if cfg.data.labels else _sort_names(
            {label for d in ok.values() for label in d["labels"]})
    return fed


class RecordingGrid:
    """Flower's Grid, keeping `excluded` nodes out of the rounds and recording every exchange."""

    def __init__(self, grid, names: dict[int, str], excluded: set[int]) -> None:
        self.grid = grid
        self.names = names
        self.excluded = excluded
        self.rounds: dict[int, dict] = defaultdict(lambda: {"train": {}, "evaluate": {}, "bytes_sent": 0,
                                                            "bytes_received": 0})

    def __getattr__(self, name: str):
        return getattr(self.grid, name)

    def get_node_ids(self):
        return [n for n in self.grid.get_node_ids() if n not in self.excluded]

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        if not messages:
            return []
        kind = messages[0].metadata.message_type.split(".")[0]
        rnd = _round_of(messages[0])
        # a SecAgg+ round is four exchanges of train messages; one of them carries the training
        stage = _secagg_stage(messages[0].content)
        key = kind if stage in (None, "collect_masked_vectors") else f"{kind}-{stage}"
        rec = self.rounds[rnd]
        sent = {m.metadata.dst_node_id for m in messages}
        rec["bytes_sent"] += sum(_bytes(m.content) for m in messages)
        t0 = time.time()
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        rec[f"{key}_seconds"] = round(time.time() - t0, 2)
        sender = reply_sender(messages)
        got = set()
        for r in replies:
            node = sender(r)
            got.add(node)
            who = self.names.get(node, str(node))
            if r.has_error():
                rec[kind][who] = {"error": f"{stage}: {r.error.reason}" if key != kind else r.error.reason}
                continue
            rec["bytes_received"] += _bytes(r.content)
            if key == kind:
                rec[kind][who] = _metrics(r.content)
        for node in sent - got:
            rec[kind][self.names.get(node, str(node))] = {
                "error": f"no reply within {timeout} s (dropped)" + (f" at {stage}" if key != kind else "")}
        return replies


def _round_of(message) -> int:
    content = message.content
    for name in ("config", "fitins.config"):
        if name in content.config_records and "server-round" in content.config_records[name]:
            return int(content.config_records[name]["server-round"])
    group = message.metadata.group_id  # SecAgg+'s key exchanges name their round only here
    return int(group) if str(group).isdigit() else 0


def _secagg_stage(content) -> str | None:
    from tunery.federated.secagg import SECAGG_RECORD

    record = content.config_records.get(SECAGG_RECORD)
    return str(record["stage"]) if record is not None and "stage" in record else None


def _metrics(content) -> dict:
    """A reply's metrics: a legacy fit reply's (SecAgg+ rounds), else its MetricRecord."""
    legacy = content.config_records.get("fitres.metrics")
    if legacy is not None:
        return dict(legacy)
    return dict(next(iter(content.metric_records.values()), {}))


def reply_sender(messages):
    """reply -> the node it answers for. The SuperLink itself answers for a node it found offline,
    so the reply's source is the SuperLink: the message it replies to names the node."""
    to = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
    return lambda r: to.get(r.metadata.reply_to_message_id, r.metadata.src_node_id)


def _bytes(content) -> int:
    """Bytes of the tensors a message carries (SecAgg+'s masked vectors travel as config bytes)."""
    from tunery.federated.secagg import SECAGG_RECORD

    secagg = content.config_records.get(SECAGG_RECORD)
    return int(sum(a.count_bytes() for a in content.array_records.values())
               + (_config_bytes(secagg) if secagg is not None else 0))


def _config_bytes(record) -> int:
    """A ConfigRecord's payload bytes (flwr 1.32's ConfigRecord.count_bytes fails on an empty list)."""
    def size(v) -> int:
        if isinstance(v, (bytes, str)):
            return len(v.encode() if isinstance(v, str) else v)
        if isinstance(v, list):
            return sum(size(x) for x in v)
        return 8

    return sum(len(k) + size(v) for k, v in record.items())


def sampled_per_round(fed_cfg, n_clients: int) -> int:
    """Clients trained each round, as Flower samples them: fraction of those available, at least min_clients."""
    return min(n_clients, max(int(n_clients * fed_cfg.fraction), fed_cfg.min_clients))


def client_epsilon(noise: float, sample_rate: float, rounds: int, delta: float) -> float:
    """Client-level epsilon after `rounds` rounds of the sampled Gaussian mechanism (noise multiplier
    `noise`, each client in a round with probability `sample_rate`), by Opacus's RDP accountant. Flower
    samples a fixed number of clients without replacement; the Poisson analysis is the customary
    approximation of that (as in DP-FedAvg, McMahan et al., 2018)."""
    from opacus.accountants import RDPAccountant

    if rounds <= 0:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = [(noise, sample_rate, rounds)]
    return float(accountant.get_epsilon(delta))


def make_strategy(fed_cfg, n_clients: int):
    """The Flower strategy of `federated.strategy`; with dp_noise, FedAvg/FedProx with equal weights
    (the noise is calibrated to a plain mean) inside Flower's server-side fixed-clipping DP wrapper."""
    from flwr.serverapp import strategy as S

    # fraction_evaluate 0: each client scores the global model it receives before training on it (one
    # ClientApp process per round, not two); the final model is scored by one evaluate phase at the end
    common = dict(fraction_train=fed_cfg.fraction, fraction_evaluate=0.0, min_train_nodes=fed_cfg.min_clients,
                  min_evaluate_nodes=fed_cfg.min_clients, min_available_nodes=fed_cfg.min_clients)
    name = fed_cfg.strategy
    if fed_cfg.dp_noise:
        common["weighted_by_key"] = "dp-weight"  # every client 1: the sensitivity of the mean is clip / m
        inner = S.FedProx(proximal_mu=fed_cfg.mu, **common) if name == "fedprox" else S.FedAvg(**common)
        return S.DifferentialPrivacyServerSideFixedClipping(
            inner, noise_multiplier=fed_cfg.dp_noise, clipping_norm=fed_cfg.dp_clip,
            num_sampled_clients=sampled_per_round(fed_cfg, n_clients))
    if name == "fedavg":
        return S.FedAvg(**common)
    if name == "fedprox":
        return S.FedProx(proximal_mu=fed_cfg.mu, **common)
    if name == "fedavgm":
        return S.FedAvgM(server_learning_rate=fed_cfg.server_step, server_momentum=fed_cfg.server_momentum, **common)
    if name == "fedadam":
        return S.FedAdam(eta=fed_cfg.server_step, **common)
    if name == "trimmed_mean":
        return S.FedTrimmedAvg(beta=fed_cfg.trim, **common)
    if name == "krum":
        return S.Krum(num_malicious_nodes=fed_cfg.krum_malicious, **common)
    raise TuneryError(f"federated.strategy {name!r} is unknown")


def run_server(grid, context) -> None:
    """The ServerApp's body. A failure is written to the run directory for `tunery federate`."""
    work = Path(str(context.run_config["run-dir"]))
    try:
        _serve(grid, context, work)
    except BaseException as err:  # noqa: BLE001 - reported to the orchestrator, then raised for Flower
        if work.is_dir():
            (work / ERROR_FILE).write_text(f"{type(err).__name__}: {err}\n\n{traceback.format_exc()}",
                                           encoding="utf-8")
        raise


def _describe_all(grid, cfg: RunConfig, cfg_json: str, expected: int, timeout: float) -> tuple[dict, dict]:
    """Wait for the expected clients (at most `timeout` s, at least min_clients), ask each to
    describe its data. Returns ({node: name}, {name: description})."""
    from flwr.app import ConfigRecord, Message, RecordDict

    deadline = time.time() + timeout
    while len(list(grid.get_node_ids())) < expected and time.time() < deadline:
        time.sleep(0.5)
    nodes = list(grid.get_node_ids())
    if len(nodes) < cfg.federated.min_clients:
        raise TuneryError(f"{len(nodes)} clients connected within federated.round_timeout {timeout:g} s; "
                          f"federated.min_clients is {cfg.federated.min_clients}: start more clients")
    msgs = [Message(RecordDict({"config": ConfigRecord({"config": cfg_json})}), dst_node_id=n,
                    message_type=DESCRIBE) for n in nodes]
    replies = list(grid.send_and_receive(msgs, timeout=timeout))
    sender = reply_sender(msgs)
    names: dict[int, str] = {}
    described: dict[str, dict] = {}
    for r in replies:
        node = sender(r)
        if r.has_error():
            names[node] = f"node-{node}"
            described[names[node]] = {"ok": False, "error": r.error.reason}
            continue
        d = json.loads(str(r.content["description"]["json"]))
        name = d.get("name") or f"node-{node}"
        if name in described:
            name = f"{name}-{node}"
        names[node] = name
        described[name] = d
    for node in set(nodes) - set(names):
        names[node] = f"node-{node}"
        described[names[node]] = {"ok": False, "error": "no answer to describe (dropped)"}
    return names, described


def _serve(grid, context, work: Path) -> None:
    from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

    from tunery.evaluate.metrics import default_metric, greater_is_better
    from tunery.federated.weights import load_trainable, state_bytes, trainable_state
    from tunery.pipeline import build_model, load_tokenizer, resolve_task_defaults
    from tunery.backbones import resolve_backbone

    started = time.time()
    cfg_json = str(context.run_config["config"])
    cfg = config_from_dict(json.loads(cfg_json))
    fc = cfg.federated
    expected = fc.n_clients
    names, described = _describe_all(grid, cfg, cfg_json, expected, fc.round_timeout)
    sat_out = {name: d["error"] for name, d in described.items() if not d.get("ok")}
    for name, why in sat_out.items():
        log.warning("client %s sits this run out: %s", name, why)
    ok_nodes = [n for n, name in names.items() if described[name].get("ok")]
    if len(ok_nodes) < fc.min_clients:
        raise TuneryError(f"{len(ok_nodes)} clients passed their data checks, federated.min_clients is "
                          f"{fc.min_clients}: " + "; ".join(f"{n}: {w}" for n, w in sat_out.items()))
    fed = merge_descriptions(cfg, described)
    cfg = resolve_task_defaults(cfg, fed["task"], sum(fed["rows"].values()))
    cfg_json = json.dumps(cfg.to_dict())
    fed_json = json.dumps({k: v for k, v in fed.items() if k not in ("rows", "columns")})
    seed = cfg.train.seed if fc.seed is None else fc.seed
    random.seed(seed)  # Flower samples each round's clients with the random module

    backbone_path = resolve_backbone(cfg.model.backbone)
    task = federation_task(fed)
    model = build_model(backbone_path, task, fed["labels"], cfg)
    initial = trainable_state(model)
    recording = RecordingGrid(grid, names, excluded={n for n in names if n not in ok_nodes})
    strategy = None if fc.secure_aggregation else make_strategy(fc, len(ok_nodes))  # SecAgg+ drives its own
    config = ConfigRecord({"config": cfg_json, "federation": fed_json})
    log_path = work / "log.jsonl"

    m = sampled_per_round(fc, len(ok_nodes))
    dp = None
    if fc.dp_noise:
        dp = {"level": "client", "noise_multiplier": fc.dp_noise, "clipping_norm": fc.dp_clip, "delta": fc.dp_delta,
              "clients_per_round": m, "sample_rate": m / len(ok_nodes),
              "noise_std": fc.dp_noise * fc.dp_clip / m, "accountant": "RDP (Opacus), sampled Gaussian mechanism"}

    def write_record(rnd: int, scored: dict, extra: dict | None = None) -> dict:
        """Round `rnd`'s record: its training (round 0: none) and the scores of the global model it
        gave (`scored`: the replies that carry them), written once that model has been scored."""
        record = {"round": rnd, "time": round(time.time() - started, 2),
                  **_round_summary(recording.rounds[rnd] if rnd else None, scored, extra)}
        if dp:
            record["epsilon"] = client_epsilon(fc.dp_noise, dp["sample_rate"], rnd, fc.dp_delta)
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        return record

    metric = cfg.train.metric or default_metric(fed["task"])
    best = BestRound(greater_is_better(metric))
    unscored: dict[int, ArrayRecord] = {}  # the model of a round, until the next round's clients score it

    def after_round(rnd: int, arrays) -> None:
        if rnd:  # round rnd's clients scored the model of round rnd - 1 before training on it
            enough_updates(rnd, recording.rounds[rnd]["train"], fc.min_clients)
            record = write_record(rnd - 1, recording.rounds[rnd]["train"])
            best.offer(rnd - 1, record["eval_metric"], unscored.pop(rnd - 1, None))
        unscored[rnd] = arrays
        return None

    if fc.secure_aggregation:
        from tunery.federated.secagg import secure_rounds

        final_arrays = ArrayRecord(torch_state_dict=secure_rounds(
            recording, context, fc, initial, lambda r: {"config": cfg_json, "federation": fed_json, "server-round": r},
            ok_nodes, {n: fed["rows"][names[n]] for n in ok_nodes}, after_round))
    else:
        final_arrays = strategy.start(grid=recording, initial_arrays=ArrayRecord(torch_state_dict=initial),
                                      num_rounds=fc.rounds, timeout=fc.round_timeout, train_config=config,
                                      evaluate_fn=after_round).arrays
    last = fc.rounds + 1  # the final model, scored by every client still connected
    final_config = ConfigRecord({"config": cfg_json, "federation": fed_json, "server-round": last})
    recording.send_and_receive([Message(RecordDict({"arrays": final_arrays, "config": final_config}), dst_node_id=n,
                                        message_type=MessageType.EVALUATE) for n in recording.get_node_ids()],
                               timeout=fc.round_timeout)
    final_record = write_record(fc.rounds, recording.rounds[last]["evaluate"], recording.rounds[last])
    best.offer(fc.rounds, final_record["eval_metric"], final_arrays)
    kept = best.round if fc.keep == "best" and best.round is not None else fc.rounds
    load_trainable(model, (best.arrays if kept != fc.rounds else final_arrays).to_torch_state_dict())
    rounds = [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines()] if log_path.exists() else []
    summary = {
        "strategy": fc.strategy, "updates": fc.updates, "rounds": fc.rounds, "clients": sorted(described),
        "trained": sorted(names[n] for n in ok_nodes), "sat_out": sat_out,
        "rows": fed["rows"], "update_bytes": ArrayRecord(torch_state_dict=initial).count_bytes(),
        "tensor_bytes": state_bytes(initial),
        "bytes_sent": sum(r["bytes_sent"] for r in rounds), "bytes_received": sum(r["bytes_received"] for r in rounds),
        "dropped": sorted({c for r in rounds for c in r["dropped"]}),
        "evaluation": "each round's global model is scored by the clients on their own validation rows: by the "
                      "next round's clients before they train on it, the final one by every client still connected",
        "final_eval_metric": rounds[-1]["eval_metric"] if rounds else None,
        "keep": fc.keep, "kept_round": kept,
        "kept_eval_metric": next((r["eval_metric"] for r in rounds if r["round"] == kept), None),
        "wall_seconds": round(time.time() - started, 2), "seed": seed,
        "dp": dp and {**dp, "epsilon": client_epsilon(fc.dp_noise, dp["sample_rate"], fc.rounds, fc.dp_delta)},
        "record_dp": _record_dp(cfg, rounds),
        "secure_aggregation": fc.secure_aggregation and {
            "protocol": "SecAgg+ (Flower's SecAggPlusWorkflow and secaggplus_mod)",
            "threshold": fc.secagg_threshold or "a majority of each round's sampled clients",
            "clip": fc.secagg_clip, "quantization_steps": 2 ** 22},
    }
    write_federated_run(work, cfg, fed, model, load_tokenizer(backbone_path), backbone_path, summary, rounds)


class BestRound:
    """The round whose global model scored best on the clients' validation rows (the first of equals;
    round 0, the untrained model, and rounds without a score are not candidates), and its tensors."""

    def __init__(self, greater: bool) -> None:
        self.greater = greater
        self.round: int | None = None
        self.score: float | None = None
        self.arrays = None

    def offer(self, rnd: int, score: float | None, arrays) -> None:
        if rnd < 1 or arrays is None or score is None or math.isnan(score):
            return
        if self.score is None or (score > self.score if self.greater else score < self.score):
            self.round, self.score, self.arrays = rnd, score, arrays


def _record_dp(cfg: RunConfig, rounds: list[dict]) -> dict | None:
    """train.dp (DP-SGD in each client): each client's epsilon over all its private steps of the run."""
    if not cfg.train.dp.noise_multiplier:
        return None
    last = {c: v["dp_epsilon"] for r in rounds for c, v in r.get("per_client", {}).items()
            if v.get("dp_epsilon") is not None}
    return {"noise_multiplier": cfg.train.dp.noise_multiplier, "max_grad_norm": cfg.train.dp.max_grad_norm,
            "delta": cfg.train.dp.delta, "epsilon_per_client": last, "epsilon": max(last.values(), default=None)}


def enough_updates(rnd: int, replies: dict[str, dict], min_clients: int) -> None:
    """Raise unless at least `min_clients` of round `rnd`'s clients sent an update: a round that
    every client failed would otherwise leave the global model as it was and the run going on as if
    it had trained (a round with enough of them completes, and the others are named as dropped)."""
    answered = [c for c, v in replies.items() if "error" not in v]
    if len(answered) >= min_clients:
        return
    failed = "; ".join(f"{c}: {v['error']}" for c, v in sorted(replies.items()) if "error" in v)
    raise TuneryError(f"round {rnd}: {len(answered)} of {len(replies)} clients sent an update, fewer than "
                      f"federated.min_clients {min_clients}, so the round cannot complete: {failed or 'no replies'}; "
                      f"each client's own log says why")


def _round_summary(rec: dict | None, scored: dict, extra: dict | None = None) -> dict:
    """A round's log record from what the RecordingGrid saw: `rec` the round's exchanges (None for
    round 0, the initial model), `scored` the replies carrying the scores of the model it gave,
    `extra` the exchanges of the final evaluation (the last round)."""
    def weighted(part: dict, key: str, by: str) -> float | None:
        rows = [(v[by], v[key]) for v in part.values() if "error" not in v and key in v and v.get(by)]
        n = sum(w for w, _ in rows)
        return float(sum(w * x for w, x in rows) / n) if n else None

    train = rec["train"] if rec else {}
    by = "eval-examples" if any("eval-examples" in v for v in scored.values()) else "num-examples"
    failed = {c: v["error"] for part in (train, (extra or {}).get("evaluate", {})) for c, v in part.items()
              if "error" in v}
    parts = [p for p in (rec, extra) if p]
    return {"train_loss": weighted(train, "train-loss", "num-examples"),
            "eval_metric": weighted(scored, "eval-metric", by), "eval_loss": weighted(scored, "eval-loss", by),
            "clients_trained": sorted(c for c, v in train.items() if "error" not in v),
            "dropped": sorted(failed), "errors": failed,
            "per_client": {c: {"train_loss": train.get(c, {}).get("train-loss"),
                               "train_rows": train.get(c, {}).get("num-examples"),
                               "train_seconds": train.get(c, {}).get("train-seconds"),
                               "dp_epsilon": train.get(c, {}).get("dp-epsilon"),
                               "eval_metric": scored.get(c, {}).get("eval-metric"),
                               "eval_loss": scored.get(c, {}).get("eval-loss")}
                           for c in sorted(set(train) | set(scored)) if c not in failed and "error" not in
                           scored.get(c, {})},
            "bytes_sent": sum(p["bytes_sent"] for p in parts), "bytes_received": sum(p["bytes_received"] for p in parts),
            "train_seconds": rec.get("train_seconds") if rec else None,
            "evaluate_seconds": extra.get("evaluate_seconds") if extra else None}


def write_federated_run(work: Path, cfg: RunConfig, fed: dict, model, tokenizer, backbone_path: str, summary: dict,
                        rounds: list[dict]) -> None:
    """The global model as a run directory (loads with tunery.load, serves, registers): model/
    (LoRA merged in, plain transformers), metrics.json, report.html, tunery.json last."""
    import torch

    from tunery import __version__
    from tunery.config import save_config
    from tunery.evaluate.metrics import default_metric
    from tunery.federated.report import write_report
    from tunery.pipeline import _fold_scaling
    from tunery.pooling import model_pooling
    from tunery.rundir import META, follow_umask, write_json

    task = fed["task"]
    metric = cfg.train.metric or default_metric(task)
    model_dir = work / "model"
    to_save = model.merge_and_unload() if cfg.model.method == "lora" else model
    to_save = to_save.to(torch.float32)
    if task == "regression":
        _fold_scaling(to_save, fed["label_mean"], fed["label_scale"])
    to_save.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    follow_umask(model_dir)
    save_config(cfg, work / "config.yaml")
    meta = {"tunery_version": __version__, "name": cfg.name, "task": task, "label_names": fed["labels"],
            "threshold": cfg.task.problem_threshold, "thresholds": None, "label_mean": 0.0, "label_scale": 1.0,
            "backbone": cfg.model.backbone, "backbone_path": backbone_path, "method": cfg.model.method,
            "text_column": fed["columns"]["text"], "text_pair_column": fed["columns"]["text_pair"],
            "label_column": fed["columns"]["label"], "label_delimiter": fed["columns"]["delimiter"],
            "max_length": cfg.data.max_length, "metric": metric, "pooling": model_pooling(to_save),
            "federated": True, "created_at": datetime.now(timezone.utc).isoformat()}
    metrics = {"task": task, "metric": metric, "threshold": cfg.task.problem_threshold, "model": {},
               "baseline": None, "federated": summary,
               "training": {"federated": True, "rounds": summary["rounds"], "wall_seconds": summary["wall_seconds"],
                            "n_train": sum(summary["rows"].values())}}
    write_json(work / "metrics.json", metrics)
    write_report(work / "report.html", cfg, meta, summary, rounds)
    write_json(work / META, meta)
