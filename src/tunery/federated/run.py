"""`tunery federate CONFIG`: a federated run on one machine, with real Flower processes.

The clients' files are `federated.client_data`, or data.train split by `federated.partition` into
`<output_dir>/<name>-clients/` (what each client's machine would hold). One SuperLink and one
SuperNode per client start on 127.0.0.1; `flwr run` submits tunery's app; the ServerApp writes
the global model into the run's `.partial` directory, claimed and recorded here like any run.

The server's copy of the config names no client file: data.train reads "held by the clients"
and federated.client_data is dropped, so the ServerApp has nothing of theirs to open.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from tunery.config import RunConfig
from tunery.errors import ConfigError, TuneryError

log = logging.getLogger(__name__)

HELD_BY_CLIENTS = "(held by the clients)"


def resolve_federated(cfg: RunConfig) -> RunConfig:
    """The config as the federation runs it: a name, the backbone's learning rate, model.method
    from federated.updates (lora: adapters and head are what is trained and sent; full: everything),
    no TF-IDF baseline (it would need the clients' text in one place)."""
    from tunery.pipeline import _default_name, resolve_defaults

    if cfg.federated is None:
        raise ConfigError("the config has no federated: section; add one, e.g. federated: {clients: 3}")
    method = "lora" if cfg.federated.updates == "lora" else "full"
    if cfg.model.method != method and "method" in cfg.model.model_fields_set:
        raise ConfigError(f"federated.updates {cfg.federated.updates} trains model.method {method}, but the config "
                          f"sets model.method {cfg.model.method}: remove model.method or set federated.updates "
                          f"{'full' if cfg.model.method == 'full' else 'lora'}")
    model = cfg.model.model_copy(update={"method": method})
    rate_set = cfg.train.lr is not None
    # the method first: the default learning rate depends on it
    cfg = resolve_defaults(cfg.model_copy(update={"name": cfg.name or _default_name(cfg), "model": model}))
    if method == "lora" and not rate_set:
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"lr": cfg.train.lr * lr_scale(cfg)})})
    if method == "lora" and "target_modules" not in cfg.model.lora.model_fields_set:
        targets = lean_lora_targets(cfg.model.backbone)
        if targets:  # every byte of an update crosses the network each round
            model = model.model_copy(update={"lora": model.lora.model_copy(update={"target_modules": targets})})
    return cfg.model_copy(update={"model": model, "evaluate": cfg.evaluate.model_copy(update={"baseline": False})})


# The default scale of a federation's LoRA rate is capped here: measured up to 8 (8e-3 for MiniLM's
# adapters, 4 clients): IID still gained, Dirichlet(0.5) already lost ground in the early rounds.
LR_SCALE_MAX = 8.0


def lr_scale(cfg: RunConfig) -> float:
    """What a federation multiplies the default LoRA rate by: federated.lr_scale, or the clients trained
    per round up to LR_SCALE_MAX. FedAvg's global step is the mean of K clients' local trajectories, and
    with IID clients that mean moves like one trajectory of a K-times batch, which needs a K-times rate
    (the linear scaling rule, Goyal et al., 2017). Measured in-process on SST-2 (8,000 rows, MiniLM, 4
    clients, 4 rounds of 1 local epoch; centralised LoRA 0.844 dev): IID 0.813 at 1x, 0.823 at 2x, 0.830
    at 4x, 0.835 at 8x; Dirichlet(0.5) 0.818 at 1x, 0.827 at 4x, 0.825 at 8x (0.745 after round 1,
    against 0.803 at 4x). The rule's K, not the best of those, is the default (docs/benchmarks.md)."""
    from tunery.federated.server import sampled_per_round

    fed = cfg.federated
    if fed.lr_scale is not None:
        return fed.lr_scale
    return float(min(sampled_per_round(fed, fed.n_clients), LR_SCALE_MAX))


# LoRA's own choice (Hu et al., 2021: the query and value projections), by model type: peft's table, and
# the architectures it lacks
_LEAN_TARGETS = {"mpnet": ["q", "v"], "distilbert": ["q_lin", "v_lin"]}


def lean_lora_targets(backbone: str) -> list[str] | None:
    """A federation's default LoRA targets: the attention's query and value projections of the
    backbone's architecture (an update about 9x smaller than tunery's centralised default of every
    dense layer, for MiniLM about 170x smaller than the full model's); None where unknown."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
    from transformers import AutoConfig

    from tunery.backbones import resolve_backbone

    try:
        model_type = AutoConfig.from_pretrained(resolve_backbone(backbone)).model_type
    except (OSError, ValueError):
        return None
    targets = _LEAN_TARGETS.get(model_type) or TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
    return list(targets) if targets else None


def server_config(cfg: RunConfig, n_clients: int) -> RunConfig:
    """The config the ServerApp gets: no client file in it."""
    data = cfg.data.model_copy(update={"train": HELD_BY_CLIENTS, "validation": None})
    fed = cfg.federated.model_copy(update={"client_data": None, "clients": n_clients})
    return cfg.model_copy(update={"data": data, "federated": fed})


def client_files(cfg: RunConfig) -> list[tuple[str, str]]:
    """(name, file) of each client: federated.client_data, or data.train partitioned."""
    from tunery.federated.partition import partition_file

    fc = cfg.federated
    if fc.client_data:
        for path in fc.client_data:
            if not Path(path).is_file():
                raise ConfigError(f"federated.client_data: {path} is not a file")
        return [(f"client-{i}", str(Path(p).resolve())) for i, p in enumerate(fc.client_data)]
    folder = Path(cfg.output_dir) / f"{cfg.name}-clients"
    paths, _ = partition_file(cfg, folder)
    return [(f"client-{i}", str(p.resolve())) for i, p in enumerate(paths)]


def federate(cfg: RunConfig, *, store=None, faults: dict[str, str] | None = None, listen: str | None = None
             ) -> Path:
    """Run the federation of `cfg` on this machine; returns the completed run directory. With
    `listen` (HOST:PORT), start only the SuperLink there and wait for the clients to join from
    their machines (`tunery federate CONFIG --client ...`)."""
    from tunery.federated.deploy import LocalFederation, write_app
    from tunery.federated.server import ERROR_FILE
    from tunery.pipeline import new_run
    from tunery.rundir import META

    cfg = resolve_federated(cfg)
    fc = cfg.federated
    clients = client_files(cfg) if listen is None else []
    unknown = set(faults or {}) - {name for name, _ in clients}
    if unknown:
        raise ConfigError(f"--fault names {', '.join(sorted(unknown))}: the clients are "
                          f"{', '.join(n for n, _ in clients)}")
    n_clients = len(clients) if listen is None else fc.n_clients
    scfg = server_config(cfg, n_clients)
    threads = max(1, (os.cpu_count() or 1) // max(len(clients), 1))
    timeout = fc.round_timeout * (2 * fc.rounds + 1) + 300
    with new_run(scfg, task=cfg.task.type, backbone=cfg.model.backbone, store=store) as run:
        flower = run.work / "flower"
        app = write_app(flower / "app", {"config": json.dumps(run.cfg.to_dict()), "run-dir": str(run.work.resolve())})
        federation = LocalFederation(flower, clients, faults=dict(faults or {}), threads=threads, fleet=listen)
        kept_logs = Path(scfg.output_dir) / f"{run.cfg.name}-federation-logs"  # a failed run's directory goes
        try:
            federation.start()
            if listen:
                log.warning("SuperLink listening on %s: start each client with `tunery federate --client --data FILE "
                            "--superlink %s`", listen, listen)
            status = federation.run(app, timeout)
            error = run.work / ERROR_FILE
            if error.exists():
                raise TuneryError(f"the federated run failed on the server: {error.read_text().splitlines()[0]} "
                                  f"(Flower's logs: {kept_logs})")
            if status.get("status") != "finished:completed" or not (run.work / META).exists():
                raise TuneryError(f"the federated run ended {status.get('status')}: "
                                  f"{status.get('status-details', '')} (Flower's logs: {kept_logs})")
        except BaseException:
            federation.close()
            shutil.copytree(flower / "logs", kept_logs, dirs_exist_ok=True)
            if (run.work / ERROR_FILE).exists():  # the server's traceback beside Flower's logs
                shutil.copy2(run.work / ERROR_FILE, kept_logs / ERROR_FILE)
            raise
        finally:
            federation.close()
            for home in flower.glob("*"):  # Flower's state and unpacked apps; the logs stay
                if home.name not in ("logs", "app"):
                    shutil.rmtree(home, ignore_errors=True)
        metrics = json.loads((run.work / "metrics.json").read_text(encoding="utf-8"))
        kept = ("final_eval_metric", "kept_round", "kept_eval_metric", "rounds", "strategy")
        run.metrics = {"federated": {k: metrics["federated"][k] for k in kept}}
    from tunery.store import Store

    final = Path(scfg.output_dir) / run.cfg.name
    (store or Store()).update_run(run.cfg.name, task=metrics["task"])
    return final
