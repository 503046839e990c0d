"""What a backbone costs on this machine: a short measured probe, cached per machine.

`probe_cost(alias)` times a few training steps (forward, backward, AdamW step, as a tunery run
trains: the pooling `auto` chooses, word embeddings frozen, bf16 autocast where `precision: auto`
would use it) and a few inference batches on synthetic token ids, and returns seconds per 1,000
tokens of each. Results are cached in ``TUNERY_HOME/probe.json`` under a key of the machine (device,
CPU model or GPU name, torch threads, torch version, precision), so another machine, or this one
with another torch or thread count, measures again. `estimated_seconds` turns them into the time a
run of N training tokens takes: what `tunery auto` uses to choose the largest backbone a budget
affords.

The figures are rough (synthetic batches of one length; no data loading, evaluation or checkpoint
writing), meant to rank backbones and size budgets, not to promise a run time.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger(__name__)

PROBE_FILE = "probe.json"
# One probe batch: 8 texts of 64 tokens for training, 32 for inference; a warm-up step, then
# timed steps until MIN_SECONDS have passed (at least MIN_STEPS): about 20 s for mpnet-base on 2 cores.
TRAIN_BATCH, INFER_BATCH, SEQ_LEN = 8, 32, 64
MIN_STEPS, MIN_SECONDS = 2, 2.0


def machine_key() -> str:
    """The machine as the probe sees it: device, its model, torch threads, torch version, precision."""
    import torch

    from tunery.inference import resolve_device, resolve_precision

    if resolve_device("auto") == "cuda":
        device = f"cuda:{torch.cuda.get_device_name(0)}"
    else:
        device = f"cpu:{_cpu_model()}"
    return f"{device}|threads={torch.get_num_threads()}|torch={torch.__version__}|{resolve_precision('auto')}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_file() -> Path:
    from tunery.store import tunery_home

    return tunery_home() / PROBE_FILE


def _read_cache() -> dict:
    try:
        data = json.loads(_cache_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _key(alias: str) -> str:
    from tunery.backbones import SYNONYMS

    return SYNONYMS.get(alias.lower(), alias.lower())


def cached_cost(alias: str) -> dict | None:
    """The cached probe of `alias` on this machine, or None (nothing is measured here)."""
    return (_read_cache().get(machine_key()) or {}).get(_key(alias))


def _store(alias: str, result: dict) -> None:
    from filelock import FileLock

    path = _cache_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        data = _read_cache()
        data.setdefault(machine_key(), {})[_key(alias)] = result
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)


def probe_cost(alias: str, *, remeasure: bool = False) -> dict:
    """Seconds per 1,000 training tokens and per 1,000 inference tokens of backbone `alias` (an
    alias, directory or hub id) on this machine: {"train_s_per_1k_tokens", "infer_s_per_1k_tokens",
    "machine", "measured_at", ...}. Cached per machine; measured (a few seconds to half a minute)
    when not cached or when `remeasure`."""
    if not remeasure:
        cached = cached_cost(alias)
        if cached is not None:
            return cached
    result = _measure(alias)
    result |= {"machine": machine_key(), "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "load_avg": _load_avg(), "cpus": os.cpu_count()}
    _store(alias, result)
    return result


def _load_avg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # not on every platform
        return None


def busy_when_measured(cost: dict) -> bool:
    """Whether other work competed for the CPU while `cost` was measured (1-minute load average
    above the CPU count): its figures are then too high, and worth re-measuring on an idle machine."""
    load, cpus = cost.get("load_avg"), cost.get("cpus")
    return cost.get("device") == "cpu" and load is not None and bool(cpus) and load > cpus


def estimated_seconds(alias: str, n_train_tokens: int, epochs: float, *, n_eval_tokens: int = 0) -> float:
    """The probe's estimate of a run's compute time: `epochs` passes of training over
    `n_train_tokens` tokens, plus one inference pass over `n_eval_tokens` (the validation split) per
    epoch. Measures the backbone first when this machine has no probe of it."""
    cost = probe_cost(alias)
    per_epoch = n_train_tokens * cost["train_s_per_1k_tokens"] + n_eval_tokens * cost["infer_s_per_1k_tokens"]
    return per_epoch / 1000.0 * epochs


def _timed(step) -> float:
    """Seconds per call of `step` after one warm-up call, timed over at least MIN_STEPS calls and
    MIN_SECONDS."""
    import torch

    step()
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    n, start = 0, time.perf_counter()
    while n < MIN_STEPS or time.perf_counter() - start < MIN_SECONDS:
        step()
        n += 1
    sync()
    return (time.perf_counter() - start) / n


def _measure(alias: str) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification

    from tunery.backbones import resolve_backbone
    from tunery.pooling import add_mean_pooling_layer, resolve_pooling
    from tunery.inference import resolve_device, resolve_precision

    path = resolve_backbone(alias)
    device = resolve_device("auto")
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    pooling = resolve_pooling(path, "auto", model)
    if pooling == "mean":
        add_mean_pooling_layer(model)
    model.get_input_embeddings().requires_grad_(False)  # model.freeze_embeddings, the default
    model.to(device)
    bf16 = resolve_precision("auto") == "bf16"
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)

    def batch(n: int) -> dict:
        ids = torch.randint(1000, vocab, (n, SEQ_LEN), generator=gen)  # past the special tokens
        return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
                "labels": torch.randint(0, 2, (n,), generator=gen).to(device)}

    train_batch, infer_batch = batch(TRAIN_BATCH), batch(INFER_BATCH)
    infer_batch.pop("labels")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def train_step() -> None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = model(**train_batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def infer_step() -> None:
        with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            model(**infer_batch)

    model.train()
    train_s = _timed(train_step)
    model.eval()
    infer_s = _timed(infer_step)
    log.info("probe %s: %.3f s per training step of %d tokens, %.3f s per inference batch of %d tokens",
             alias, train_s, TRAIN_BATCH * SEQ_LEN, infer_s, INFER_BATCH * SEQ_LEN)
    return {
        "train_s_per_1k_tokens": round(train_s / (TRAIN_BATCH * SEQ_LEN) * 1000, 5),
        "infer_s_per_1k_tokens": round(infer_s / (INFER_BATCH * SEQ_LEN) * 1000, 5),
        "pooling": pooling,
        "precision": "bf16" if bf16 else "fp32",
        "device": device,
        "seq_len": SEQ_LEN,
    }
