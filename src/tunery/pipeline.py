"""One training run end to end: validate data, fine-tune, evaluate beside a baseline, write the
run directory atomically, record it in the store.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import math
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from tunery import __version__
from tunery.backbones import resolve_backbone
from tunery.config import NAME_MAX_BYTES, RunConfig, load_config, save_config
from tunery.errors import ConfigError, RunError
from tunery.pooling import add_mean_pooling_layer, model_pooling, resolve_pooling
from tunery.refs import find_resumable
from tunery.rundir import META, final_dir, follow_umask, partial_dir, write_json
from tunery.tasks import Task, get_task
from tunery.inference import Encoded, encode, quiet_transformers
from tunery.train.callbacks import Callback, LoggingCallback

log = logging.getLogger(__name__)


def load_tokenizer(backbone: str):
    from transformers import AutoTokenizer

    quiet_transformers()
    return AutoTokenizer.from_pretrained(backbone)


def build_model(backbone_path: str, task: Task, label_names: list[str], cfg: RunConfig):
    """The pretrained backbone with a fresh head for `task`; LoRA adapters when asked."""
    import torch
    from transformers import AutoModelForSequenceClassification

    quiet_transformers()
    kwargs: dict = {"num_labels": task.num_outputs(label_names), "problem_type": task.problem_type}
    if label_names:
        kwargs["id2label"] = dict(enumerate(label_names))
        kwargs["label2id"] = {n: i for i, n in enumerate(label_names)}
    if cfg.model.classifier_dropout is not None:
        kwargs["classifier_dropout"] = cfg.model.classifier_dropout
    torch.manual_seed(cfg.train.seed)  # the new head's initialisation is part of the seed
    model = AutoModelForSequenceClassification.from_pretrained(backbone_path, **kwargs)
    # a model continued from a tunery run may have its pooling layer already
    if resolve_pooling(backbone_path, cfg.model.pooling, model) == "mean" and model_pooling(model) != "mean":
        add_mean_pooling_layer(model)
    if cfg.distill.layers:  # a student built from its backbone's (the teacher's) lower layers
        from tunery.train.distill import student_from_teacher

        try:
            model = student_from_teacher(model, cfg.distill.layers)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if cfg.model.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    if cfg.model.freeze_layers:
        from tunery.layers import freeze_lower_layers

        freeze_lower_layers(model, cfg.model.freeze_layers, lora=cfg.model.method == "lora")
    if cfg.model.method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        lora = cfg.model.lora
        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=lora.r, lora_alpha=lora.alpha,
                                                 lora_dropout=lora.dropout,
                                                 target_modules=list(lora.target_modules)))
    return model


def _file_digest(path: str | None) -> str | None:
    if not path or not Path(path).is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _texts(frame) -> list[str]:
    """Texts as shown in reports and fed to the baseline (pairs joined)."""
    texts = frame["text"].astype(str).tolist()
    if "text_pair" in frame:
        texts = [f"{a} [SEP] {b}" for a, b in zip(texts, frame["text_pair"].astype(str))]
    return texts


def _encode_split(tokenizer, frame, max_length: int, speller=None) -> Encoded:
    """A split's rows as tokens, through the run's typo corrector when it has one (model.correct_typos):
    the model reads what predict will give it."""
    from tunery.spelling import as_read

    texts, pairs = as_read(speller, frame["text"].astype(str).tolist(),
                           frame["text_pair"].astype(str).tolist() if "text_pair" in frame else None)
    return encode(tokenizer, texts, pairs, frame["label"].tolist(), max_length=max_length)


def _with_noisy_copies(p, train: Encoded) -> tuple[Encoded, int]:
    """The training split with `train.noise` copies of its rows appended (train/noise.py), and how many."""
    from tunery.attack.wordnet import synonym_source
    from tunery.spelling import as_read
    from tunery.train.noise import noisy_rows

    n = p.cfg.train.noise
    frame = p.data.train
    texts = frame["text"].astype(str).tolist()
    pairs = frame["text_pair"].astype(str).tolist() if "text_pair" in frame else None
    extra_t, extra_p, extra_l = noisy_rows(texts, pairs, frame["label"].tolist(), copies=n.copies, typo_share=n.typo,
                                           synonym_share=n.synonym, seed=p.cfg.train.seed,
                                           synonyms=synonym_source() if n.synonym else None)
    extra_t, extra_p = as_read(p.speller, extra_t, extra_p)  # as the model will read them: typos it can undo, undone
    extra = encode(p.tokenizer, extra_t, extra_p, extra_l, max_length=p.cfg.data.max_length)
    return train.extended(extra), len(extra)


@dataclass
class Prepared:
    """Everything a run needs before training starts."""

    cfg: RunConfig
    backbone_path: str
    tokenizer: object
    data: object  # tunery.data.validate.PreparedData
    report: object  # tunery.data.validate.ValidationReport
    task: Task
    encoded: dict[str, Encoded] | None = None  # the tokenised splits, filled by preflight
    speller: object | None = None  # tunery.spelling.Speller with model.correct_typos, else None


def prepare_run(cfg: RunConfig, *, quiet: bool = False, federated: bool = False) -> Prepared:
    """Resolve the backbone, read and validate the data. Raises DataError on any error, having
    written nothing. The data warnings are logged unless `quiet` (the data was checked before).
    `federated`: the data is one client's share of a federation (see data.validate.prepare)."""
    from tunery.data.validate import prepare

    backbone_path = resolve_backbone(cfg.model.backbone)
    tokenizer = load_tokenizer(backbone_path)
    data, report = prepare(cfg.data, cfg.task, tokenizer=tokenizer, backbone=cfg.model.backbone, federated=federated)
    report.raise_for_errors()
    for finding in report.warnings:
        log.log(logging.DEBUG if quiet else logging.WARNING, "%s", finding.message)
    labels = data.train["label"].astype(float) if data.task == "regression" else None
    task = get_task(data.task,
                    label_mean=float(labels.mean()) if labels is not None else 0.0,
                    label_scale=float(labels.std() or 1.0) if labels is not None and len(labels) > 1 else 1.0)
    speller = None
    if cfg.model.correct_typos:
        if federated:
            raise ConfigError("model.correct_typos is not supported in a federated run (the lexicon would be built "
                              "from every client's words); set model.correct_typos: false")
        from tunery.spelling import Speller, build_lexicon

        frame = data.train
        words = frame["text"].astype(str).tolist() + (frame["text_pair"].astype(str).tolist()
                                                      if "text_pair" in frame else [])
        speller = Speller(build_lexicon(words, tokenizer))
    return Prepared(cfg, backbone_path, tokenizer, data, report, task, speller=speller)


def preflight(p: Prepared):
    """Every check that can fail before training, done before anything is written: the selection
    metric exists for the task, max_length fits the backbone, the model (and LoRA) builds, the
    splits tokenise (into `p.encoded`). Returns the model."""
    import difflib

    from tunery.evaluate.metrics import metric_names

    metric = p.cfg.train.metric
    valid = metric_names(p.data.task)
    if metric and metric not in valid and not metric.startswith("per_class."):
        close = difflib.get_close_matches(metric, valid, n=1)
        raise ConfigError(f"train.metric {metric!r} is not a {p.data.task} metric"
                          + (f" (did you mean {close[0]!r}?)" if close else "")
                          + f"; valid: {', '.join(valid)}, or per_class.<label>.f1")
    try:
        model = build_model(p.backbone_path, p.task, list(p.data.label_names), p.cfg)
    except ValueError as err:  # PEFT: a LoRA target module the backbone does not have
        raise ConfigError(f"cannot build the model from {p.cfg.model.backbone!r}: {err}") from None
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and p.cfg.data.max_length > limit:
        raise ConfigError(f"data.max_length {p.cfg.data.max_length} is more than backbone "
                          f"{p.cfg.model.backbone!r} takes ({limit} tokens); set data.max_length <= {limit}")
    p.encoded = {split: _encode_split(p.tokenizer, getattr(p.data, split), p.cfg.data.max_length, p.speller)
                 for split in ("train", "validation", "test")}
    return model


# LoRA's adapters start from zero and are few: they learn best at about 10x the peak rate of full
# fine-tuning (Hu et al., 2021, used 4e-4 to 5e-4 for RoBERTa-base). Measured with bench/federated.py
# (SST-2, 8,000 rows, MiniLM, adapters on query and value, dev accuracy): 1e-4 (the full rate) 0.795
# after 4 epochs; 1e-3 0.848 and 3e-3 0.828 after 3.
LORA_LR_FACTOR = 10.0


def resolve_defaults(cfg: RunConfig) -> RunConfig:
    """Fill defaults that depend on other settings, so config.yaml records what really ran: the
    learning rate is the backbone's recommended one, LORA_LR_FACTOR times it for LoRA."""
    from tunery.backbones import recommended_lr

    if cfg.train.lr is None:
        lr = recommended_lr(cfg.model.backbone) * (LORA_LR_FACTOR if cfg.model.method == "lora" else 1.0)
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"lr": lr})})
    return cfg


# Multi-label defaults, chosen by bench/multilabel_ablation.py (docs/benchmarks.md): the new head learns at
# 10x the backbone's rate, and small training sets get more epochs (early stopping still ends a run
# that stops improving): at least MULTILABEL_MIN_STEPS optimizer steps, at most MULTILABEL_MAX_EPOCHS.
MULTILABEL_HEAD_LR_FACTOR = 10.0
MULTILABEL_MIN_STEPS = 1000
MULTILABEL_MAX_EPOCHS = 10


def resolve_task_defaults(cfg: RunConfig, task: str, n_train: int) -> RunConfig:
    """Fill the defaults that depend on the task and the data size (known once the data is read),
    leaving alone whatever the config sets itself, so config.yaml records what really ran."""
    t = cfg.train
    if task != "multilabel":
        return cfg
    update: dict = {}
    if "head_lr" not in t.model_fields_set and t.head_lr is None and t.lr is not None:
        update["head_lr"] = MULTILABEL_HEAD_LR_FACTOR * t.lr
    if "epochs" not in t.model_fields_set and t.max_steps is None and n_train > 0:
        steps_per_epoch = math.ceil(math.ceil(n_train / t.batch_size) / t.grad_accum_steps)
        epochs = min(float(MULTILABEL_MAX_EPOCHS), max(t.epochs, math.ceil(MULTILABEL_MIN_STEPS / steps_per_epoch)))
        if epochs != t.epochs:
            update["epochs"] = float(epochs)
    return cfg.model_copy(update={"train": t.model_copy(update=update)}) if update else cfg


def _default_name(cfg: RunConfig) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    # room for the stamp and a "-NN" that tells apart runs started in the same second
    room = NAME_MAX_BYTES - len(stamp) - 4
    stem = Path(cfg.data.train).name.split(".")[0].encode("utf-8")[:room].decode("utf-8", errors="ignore")
    stem = "".join(c for c in stem if c.isprintable() and c != "\\") or "run"
    return f"{stem}-{stamp}"


def _check_output_dir(out: Path) -> None:
    """Fail at once, before the data is read, when runs cannot be written under `out` (a file, a
    read-only or virtual file system such as /proc, no permission). Leaves nothing behind."""
    missing = []
    existing = out
    while not existing.exists() and existing != existing.parent:
        missing.append(existing)
        existing = existing.parent
    fix = "set output_dir to a directory you can write (--set output_dir=runs)"
    if not existing.is_dir():
        raise ConfigError(f"output_dir {str(out)!r}: {str(existing)!r} is a file, not a directory; {fix}")
    made: list[Path] = []
    try:
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:  # another run (a parallel trial) made it since we looked: shared
                if not d.is_dir():
                    raise
                continue
            made.append(d)
        tempfile.TemporaryDirectory(dir=out, prefix=".tunery-probe-").cleanup()
    except OSError as err:
        raise ConfigError(f"output_dir {str(out)!r}: cannot create runs there ({err.strerror}: "
                          f"{err.filename or out}); {fix}") from None
    finally:
        for d in reversed(made):
            try:
                d.rmdir()
            except OSError:  # a parallel run has put its own directory there meanwhile: it stays
                pass


def _name_in_use(store, name: str, final: Path) -> str | None:
    """Why `name` cannot be used for a new run, or None."""
    if final.exists():
        return (f"run directory {final} already exists; choose another name (name: ... or --set name=...) "
                "or remove it")
    try:
        record = store.get_run(name)
    except RunError:
        record = None
    if record is not None and record.status == "running":
        return (f"run {name!r} is being trained by another process (pid {record.pid} on {record.host}, "
                f"{record.path}); wait for it or choose another name (--set name=...)")
    if partial_dir(final).exists():
        return (f"an interrupted run {name!r} exists at {partial_dir(final)}, or another `tunery train` is "
                f"starting it; continue it with `tunery train --resume {partial_dir(final)}`, remove that "
                "directory, or choose another name (--set name=...)")
    if record is not None:
        return (f"a run named {name!r} is already recorded ({record.status}, {record.path}); "
                "choose another name (name: ... or --set name=...)")
    return None


def _claim(store, cfg: RunConfig, *, fresh_name: bool) -> tuple[RunConfig, Path, list[Path]]:
    """Create the run's .partial directory; mkdir is atomic, so of two runs started with one name
    only one gets it. A default name takes a "-2", "-3"... suffix instead. Returns the config
    (with the name used), the directory and the output directories created for it."""
    out = Path(cfg.output_dir)
    made = [d for d in (out, *out.parents) if not d.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"output_dir {str(out)!r}: cannot create it ({err.strerror}); set output_dir to a "
                          "directory you can write (--set output_dir=runs)") from None
    for attempt in range(1, 100 if fresh_name else 2):
        name = cfg.name if attempt == 1 else f"{cfg.name}-{attempt}"
        final = out / name
        why = _name_in_use(store, name, final)
        if why is None:
            try:
                partial_dir(final).mkdir()
                return cfg.model_copy(update={"name": name}), partial_dir(final), made
            except FileExistsError:
                why = _name_in_use(store, name, final) or f"{partial_dir(final)} was just created by another run"
        if not fresh_name:
            _remove_created(made)
            raise RunError(why)
    _remove_created(made)
    raise RunError(f"no free run name from {cfg.name!r} in {out}; set one with --set name=...")


def _remove_created(dirs: list[Path]) -> None:
    for d in sorted(dirs, key=lambda d: len(d.parts), reverse=True):
        try:
            d.rmdir()
        except OSError:  # not empty: another run uses it now
            pass


@dataclass
class NewRun:
    """A run directory being written by `new_run`: its config (with the name used), the .partial
    directory to write into, and the metrics to record when it completes."""

    cfg: RunConfig
    work: Path
    metrics: dict | None = None


@contextlib.contextmanager
def new_run(cfg: RunConfig, *, task: str, backbone: str, store=None, fresh_name: bool = False):
    """Write a run that needs no training loop (a compressed model, a soup, the TF-IDF baseline):
    check the name, claim ``output_dir/name.partial`` (a fresh default name takes a "-2"... suffix),
    record the run, and yield a `NewRun` to write into. When the block ends the caller's files are
    in place (tunery.json last) and the directory becomes ``output_dir/name``, recorded completed
    with ``NewRun.metrics``. On any failure nothing is kept: the directory, the output directories
    made for it and the record are removed, and an OSError becomes a RunError naming the cause."""
    from tunery.store import Store

    store = store or Store()
    final = Path(cfg.output_dir) / cfg.name
    if not fresh_name and (why := _name_in_use(store, cfg.name, final)):
        raise RunError(why)
    _check_output_dir(Path(cfg.output_dir))
    cfg, work, made = _claim(store, cfg, fresh_name=fresh_name)
    final = work.parent / cfg.name
    run = NewRun(cfg, work)
    try:
        store.start_run(name=cfg.name, path=str(work.resolve()), config=cfg.to_dict(), task=task, backbone=backbone,
                        new=True)
        yield run
        if work.exists():  # the caller may have renamed it itself (score_and_write does)
            work.rename(final)
    except BaseException as err:
        shutil.rmtree(work, ignore_errors=True)
        _remove_created(made)
        try:
            store.delete_run(cfg.name)
        except Exception as store_err:  # noqa: BLE001 - the store may sit on the same full disk
            log.warning("could not remove the record of run %r: %s", cfg.name, store_err)
        if isinstance(err, OSError):
            raise RunError(f"cannot write run {cfg.name!r} in {work.parent}: {_os_reason(err)}; nothing was "
                           "kept") from err
        raise
    store.update_run(cfg.name, path=str(final.resolve()))
    store.finish_run(cfg.name, status="completed", metrics=run.metrics)


def train(cfg: RunConfig, *, callbacks: list[Callback] | None = None, store=None) -> Path:
    """Train a new run from `cfg`; returns the completed run directory.

    Everything that can be checked is checked before anything is written; a run that fails before
    its first checkpoint leaves nothing behind (no directory, no record); one that fails later
    keeps its .partial directory for `resume`."""
    fresh_name = cfg.name is None
    cfg = resolve_defaults(cfg.model_copy(update={"name": cfg.name or _default_name(cfg)}))
    final = Path(cfg.output_dir) / cfg.name
    from tunery.store import Store

    store = store or Store()
    if not fresh_name and (why := _name_in_use(store, cfg.name, final)):
        raise RunError(why)
    _check_output_dir(Path(cfg.output_dir))
    prepared = prepare_run(cfg)  # nothing is written before the data passed validation
    cfg = resolve_task_defaults(cfg, prepared.data.task, len(prepared.data.train))
    prepared = replace(prepared, cfg=cfg)
    model = preflight(prepared)
    # Record the pooling `auto` chose (it may depend on the hub cache): a resume rebuilds this model.
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"pooling": model_pooling(model)})})
    cfg, work, made = _claim(store, cfg, fresh_name=fresh_name)
    prepared = replace(prepared, cfg=cfg)
    try:
        save_config(cfg, work / "config.yaml")
        write_json(work / "data_report.json", prepared.report.to_dict())
        write_json(work / "data_digest.json", {k: _file_digest(getattr(cfg.data, k))
                                               for k in ("train", "validation", "test")})
        store.start_run(name=cfg.name, path=str(work.resolve()), config=cfg.to_dict(), task=prepared.data.task,
                        backbone=cfg.model.backbone, new=True)
    except BaseException as err:
        shutil.rmtree(work, ignore_errors=True)
        _remove_created(made)
        if isinstance(err, OSError):
            raise RunError(f"cannot write run {cfg.name!r} in {work.parent}: {_os_reason(err)}; nothing was "
                           "kept") from err
        raise
    return _run(prepared, model, work, resume=False, callbacks=callbacks, store=store, made=made)


def _os_reason(err: OSError) -> str:
    """What went wrong and what to do, for an OSError raised while writing a run."""
    where = f" ({err.filename})" if err.filename else ""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device{where}; free some space"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{err.strerror}{where}; make the directory writable or set output_dir elsewhere"
    return f"{err.strerror or err}{where}"


def changed_data(run_dir: Path, cfg: RunConfig) -> list[str]:
    """The data files of a run whose content differs from when it was trained."""
    path = run_dir / "data_digest.json"
    if not path.exists():
        return []
    saved = json.loads(path.read_text())
    return [getattr(cfg.data, key) for key, digest in saved.items()
            if digest and _file_digest(getattr(cfg.data, key)) not in (None, digest)]


def resume(ref: str | Path, *, callbacks: list[Callback] | None = None, store=None) -> Path:
    """Continue an interrupted run from its last checkpoint, with its saved config."""
    work = find_resumable(ref)
    try:
        cfg = load_config(work / "config.yaml")
    except ConfigError as err:  # e.g. a value an older tunery accepted (train.num_threads: 100000)
        raise ConfigError(f"{err}\nthe saved config of this run is not valid: correct it in "
                          f"{work / 'config.yaml'} (changing only what is named), then resume again") from None
    changed = changed_data(work, cfg)
    if changed:
        raise ConfigError(f"{', '.join(changed)} changed since the run started; a resumed run must see the "
                          "same data. Restore the file or start a new run.")
    prepared = prepare_run(cfg)
    model = preflight(prepared)
    from tunery.store import Store

    store = store or Store()
    store.start_run(name=cfg.name, path=str(work.resolve()), config=cfg.to_dict(), task=prepared.data.task,
                    backbone=cfg.model.backbone)
    return _run(prepared, model, work, resume=True, callbacks=callbacks, store=store)


def _run(p: Prepared, model, work: Path, *, resume: bool, callbacks, store, made: list[Path] = ()) -> Path:
    """Train and write a recorded run. On failure: a fresh run with no checkpoint yet is removed
    with its record (there is nothing to continue from); otherwise the record says why it stopped
    and the directory stays for `resume`."""
    cfg = p.cfg
    try:
        final, metrics = _train_and_write(p, model, work, resume=resume,
                                          callbacks=callbacks or [LoggingCallback()])
    except BaseException as err:
        interrupted = isinstance(err, (KeyboardInterrupt, SystemExit))
        keep = resume or interrupted or (work / "checkpoints" / "last").is_dir()
        try:
            if keep:
                store.finish_run(cfg.name, status="interrupted" if interrupted else "failed",
                                 error=f"{type(err).__name__}: {err}")
            else:
                shutil.rmtree(work, ignore_errors=True)
                _remove_created(list(made))
                store.delete_run(cfg.name)
        except Exception as store_err:  # noqa: BLE001 - the store may sit on the same full disk
            log.warning("could not record how run %r ended: %s", cfg.name, store_err)
        if isinstance(err, OSError):
            if keep:
                raise RunError(f"run {cfg.name!r} stopped: {_os_reason(err)}, then continue it with "
                               f"`tunery train --resume {work}`") from err
            raise RunError(f"run {cfg.name!r} stopped before its first checkpoint: {_os_reason(err)}, then "
                           "run it again (nothing was kept)") from err
        raise
    store.update_run(cfg.name, path=str(final.resolve()))
    store.finish_run(cfg.name, status="completed", metrics=metrics)
    return final


def threshold_decision(task: str, y_val: np.ndarray, *, fixed: float, per_label: bool):
    """scores -> (global threshold, per-label thresholds or None) for validation `scores`. Multi-label
    thresholds are tuned on validation at every evaluation, so the checkpoint is chosen on the metric
    it will be used with: at a fixed 0.5, an early model's F1 is 0 at every evaluation and the first
    checkpoint would win the tie. Other tasks (and an empty validation split) keep `fixed`."""
    from tunery.evaluate.metrics import tune_thresholds

    def decide(scores: np.ndarray) -> tuple[float, list[float] | None]:
        if task != "multilabel" or not len(y_val):
            return fixed, None
        glob, per = tune_thresholds(y_val, scores)
        return glob, (per if per_label else None)

    return decide


def make_metric_fn(task: str, y_val: np.ndarray, label_names: list[str], metric: str, decision):
    """The validation metrics the trainer selects on: `metric` at the thresholds `decision` picks,
    the task's other scalar metrics, and "loss", the threshold-free validation loss that breaks ties."""
    from tunery.evaluate.metrics import compute_metrics, metric_value, validation_loss

    def metric_fn(scores: np.ndarray) -> dict:
        glob, per = decision(scores)
        m = compute_metrics(task, y_val, scores, label_names, threshold=per if per is not None else glob)
        return {metric: metric_value(m, metric), **{k: v for k, v in m.items() if isinstance(v, float)},
                "loss": validation_loss(task, y_val, scores) if len(y_val) else float("nan")}

    return metric_fn


def _train_and_write(p: Prepared, model, work: Path, *, resume: bool, callbacks) -> tuple[Path, dict]:
    """Train, evaluate, write the run directory; returns it and the model's metrics per split."""
    import torch

    from tunery.evaluate.metrics import default_metric, greater_is_better
    from tunery.train.loop import Trainer, label_pos_weight, label_prior_bias, set_head_bias

    cfg, data, task = p.cfg, p.data, p.task
    started = time.time()
    label_names = list(data.label_names)
    n_labels = len(label_names)
    enc = p.encoded or {split: _encode_split(p.tokenizer, getattr(data, split), cfg.data.max_length, p.speller)
                        for split in ("train", "validation", "test")}
    y_val = task.y_true(enc["validation"].labels, n_labels)
    metric = cfg.train.metric or default_metric(data.task)
    threshold = cfg.task.problem_threshold
    tuned = data.task == "multilabel" and len(y_val) > 0
    decision = threshold_decision(data.task, y_val, fixed=threshold, per_label=cfg.task.per_label_threshold)
    metric_fn = make_metric_fn(data.task, y_val, label_names, metric, decision)

    pos_weight = None
    if data.task == "multilabel":
        y_train = task.y_true(enc["train"].labels, n_labels)
        if cfg.train.pos_weight_max:
            pos_weight = torch.as_tensor(label_pos_weight(y_train, cfg.train.pos_weight_max), dtype=torch.float32)
        if cfg.train.label_prior_bias and not resume:
            set_head_bias(model, label_prior_bias(y_train, None if pos_weight is None else pos_weight.numpy()))
    train_enc, distiller, distilled = enc["train"], None, None
    noisy = 0
    if cfg.train.noise.copies:
        train_enc, noisy = _with_noisy_copies(p, train_enc)
    if cfg.distill.teacher:
        from tunery.distillation import prepare as prepare_distillation

        train_enc, distiller, distilled = prepare_distillation(p, model, work, train_enc)
    trainer = Trainer(model, task, cfg.train, n_labels=n_labels, pad_id=p.tokenizer.pad_token_id or 0,
                      workdir=work, metric=metric, greater_is_better=greater_is_better(metric),
                      metric_fn=metric_fn, callbacks=callbacks, pos_weight=pos_weight, distiller=distiller)
    state = trainer.fit(train_enc, enc["validation"], resume=resume)
    training = {"steps": state.step, "total_steps": state.total_steps, "best_step": state.best_step,
                "best_validation": state.best_metric, "best_validation_loss": state.best_loss,
                "selection": {"metric": metric, "tie_break": "validation loss",
                              "threshold": "tuned per evaluation" if tuned else
                              ("fixed" if data.task == "multilabel" else "none")},
                "pos_weight_max": cfg.train.pos_weight_max if data.task == "multilabel" else None,
                "multilabel_loss": cfg.train.multilabel_loss if data.task == "multilabel" else None,
                "label_prior_bias": cfg.train.label_prior_bias if data.task == "multilabel" else None,
                "stopped_early": state.stopped_early,
                "samples_seen": state.samples_seen, "train_seconds": round(state.train_seconds, 2),
                "samples_per_s": round(state.samples_seen / max(state.train_seconds, 1e-9), 2),
                # what the robustness objective (train.adversarial, train.rdrop) costs: passes per batch, time per step
                "passes_per_step": trainer.passes_per_step,
                "cls_only_last_layer": trainer.cls_only,  # the last layer trained at [CLS] only (cls_only.py)
                "noisy_copies": noisy,  # train.noise: perturbed training rows added to n_train's
                "seconds_per_step": round(state.train_seconds / max(state.step, 1), 4),
                **({"distillation": distilled} if distilled else {})}
    if trainer.dp_report is not None:  # train.dp: DP-SGD's parameters and the epsilon spent (train/dp.py)
        training["dp"] = {**trainer.dp_report, "outside_guarantee": _outside_dp(cfg, data.task)}
    return score_and_write(p, trainer.model, work, enc, training, accelerator=trainer.accelerator, started=started)


def _outside_dp(cfg: RunConfig, task: str) -> list[str]:
    """What a DP-SGD run computes from its training rows without noise (the guarantee covers the
    gradient steps only); each is logged as a warning and listed in metrics.json's training.dp."""
    outside = []
    if task == "multilabel" and cfg.train.pos_weight_max:
        outside.append("train.pos_weight_max: the loss weights of positives, from the training label frequencies")
    if task == "multilabel" and cfg.train.label_prior_bias:
        outside.append("train.label_prior_bias: the head's starting biases, from the training label frequencies")
    if task == "regression":
        outside.append("the target's mean and scale, from the training targets (folded into the saved head)")
    for item in outside:
        log.warning("train.dp: %s are not covered by the DP guarantee", item)
    return outside


def score_and_write(p: Prepared, model, work: Path, enc: dict, training: dict, *, accelerator=None,
                    started: float | None = None) -> tuple[Path, dict]:
    """The end of a run, whatever made its weights (training, or averaging trained runs: soup.py):
    score validation and test, tune multi-label thresholds, fit the baseline beside, save the model
    (plain-loadable), and write metrics.json (`training` completed with the common figures), the
    report and tunery.json, then rename the .partial directory; returns it and the metrics."""
    import torch
    from safetensors import SafetensorError

    from tunery.evaluate.metrics import compute_metrics, default_metric, tune_thresholds
    from tunery.train.checkpoint import as_os_error
    from tunery.inference import predict_scores, resolve_precision

    cfg, data, task = p.cfg, p.data, p.task
    started = time.time() if started is None else started
    label_names = list(data.label_names)
    n_labels = len(label_names)
    max_length = cfg.data.max_length
    y_val = task.y_true(enc["validation"].labels, n_labels)
    metric = cfg.train.metric or default_metric(data.task)
    threshold = cfg.task.problem_threshold
    thresholds = None  # multi-label: one per label, in label_names order
    tuned = data.task == "multilabel" and len(y_val) > 0
    decision = threshold_decision(data.task, y_val, fixed=threshold, per_label=cfg.task.per_label_threshold)

    # Final evaluation with the best weights.
    scores = {split: predict_scores(model, task, enc[split], batch_size=cfg.train.eval_batch_size,
                                    pad_id=p.tokenizer.pad_token_id or 0, accelerator=accelerator)
              for split in ("validation", "test") if len(enc[split])}
    if tuned:
        threshold, thresholds = decision(scores["validation"])
    decide = thresholds if thresholds is not None else threshold
    y = {split: task.y_true(enc[split].labels, n_labels) for split in scores}
    metrics = {split: compute_metrics(data.task, y[split], s, label_names, threshold=decide,
                                      calibration_bins=cfg.evaluate.calibration_bins)
               for split, s in scores.items()}
    baseline = None
    baseline_seconds = None
    verdict = None
    if cfg.evaluate.baseline:
        from tunery.evaluate.baseline import baseline_scores

        t0 = time.time()
        b_scores = baseline_scores(data.task, _texts(data.train), task.y_true(enc["train"].labels, n_labels),
                                   {split: _texts(getattr(data, split)) for split in scores},
                                   n_labels=n_labels, seed=cfg.train.seed)
        b_threshold = decide
        if data.task == "multilabel" and "validation" in b_scores:  # the baseline's own tuned thresholds
            b_glob, b_per = tune_thresholds(y["validation"], b_scores["validation"])
            b_threshold = b_per if cfg.task.per_label_threshold else b_glob
        baseline = {split: compute_metrics(data.task, y[split], s, label_names, threshold=b_threshold,
                                           calibration_bins=cfg.evaluate.calibration_bins)
                    for split, s in b_scores.items()}
        baseline_seconds = time.time() - t0
        verdict = _verdict(p, work, metric, metrics, baseline, scores, b_scores, y, decide, b_threshold)

    # The model directory loads with plain transformers: LoRA adapters are merged in.
    model_dir = work / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    to_save = model.merge_and_unload() if cfg.model.method == "lora" else model
    to_save = to_save.to(torch.float32)
    if data.task == "regression":  # predictions in the target's units, even for plain transformers
        _fold_scaling(to_save, task.mean, task.scale)
    try:
        to_save.save_pretrained(model_dir)
    except SafetensorError as err:  # a full disk: as the OSError it is
        raise as_os_error(err, model_dir) from err
    p.tokenizer.save_pretrained(model_dir)
    follow_umask(model_dir)  # safetensors writes model.safetensors 0600

    meta = {
        "tunery_version": __version__,
        "name": cfg.name,
        "task": data.task,
        "label_names": label_names,
        "threshold": threshold,
        "thresholds": thresholds,
        "label_mean": 0.0,  # regression scaling is folded into the saved head
        "label_scale": 1.0,
        "backbone": cfg.model.backbone,
        "backbone_path": p.backbone_path,
        "method": cfg.model.method,
        "text_column": data.text_column,
        "text_pair_column": data.text_pair_column,
        "label_column": data.label_column,
        "label_delimiter": data.label_delimiter,
        "max_length": max_length,
        "metric": metric,
        "created_at": datetime.now(timezone.utc).isoformat(),
    }
    if p.speller is not None:
        from tunery.spelling import save_lexicon

        meta["typo_correction"] = save_lexicon(p.speller.counts, model_dir)
    training = {**training,
                "baseline_seconds": baseline_seconds, "wall_seconds": round(time.time() - started, 2),
                "precision": "fp32" if cfg.train.dp.noise_multiplier else resolve_precision(cfg.train.precision),
                "threads": torch.get_num_threads(),
                "pooling": model_pooling(model),
                "n_train": len(enc["train"]), "n_validation": len(enc["validation"]), "n_test": len(enc["test"]),
                "split": data.split_note}
    write_json(work / "metrics.json", {"task": data.task, "metric": metric, "threshold": threshold,
                                       "thresholds": thresholds,
                                       "model": metrics, "baseline": baseline, "training": training,
                                       **({"verdict": verdict} if verdict else {})})
    _write_report(work, p, meta, metrics, baseline, scores, y, training, decide, verdict, model=to_save)
    write_json(work / META, meta)  # written last: its presence marks a complete run
    final = final_dir(work)
    work.rename(final)
    if not cfg.train.keep_checkpoints:
        _drop_checkpoints(final)
    return final, metrics


def _drop_checkpoints(run: Path) -> None:
    """Remove the training state of a completed run: model/ holds the best weights, and nothing is
    left to resume. Done after the rename, so a crash here leaves a complete run (with some of its
    checkpoints), never a partial one that cannot be resumed."""
    ckpt = run / "checkpoints"
    if ckpt.exists():
        size = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
        shutil.rmtree(ckpt, ignore_errors=True)
        log.info("removed the training checkpoints of the completed run (%.0f MB); set train.keep_checkpoints: "
                 "true to keep them", size / 1e6)


def _verdict(p: Prepared, work: Path, metric: str, metrics: dict, baseline: dict, scores: dict, b_scores: dict,
             y: dict, threshold, b_threshold) -> dict | None:
    """Whether the model beats the baseline on test (else validation), with the likely causes."""
    from tunery.evaluate.metrics import metric_value
    from tunery.evaluate.verdict import compare_to_baseline, likely_causes, make_verdict, read_history

    split = next((s for s in ("test", "validation") if s in scores and s in b_scores and len(y[s])), None)
    if split is None:
        return None
    label_names = list(p.data.label_names)
    comparison = compare_to_baseline(p.data.task, metric, y[split], scores[split], b_scores[split],
                                     label_names=label_names, model_threshold=threshold,
                                     baseline_threshold=b_threshold, seed=p.cfg.train.seed,
                                     values=(metric_value(metrics[split], metric),
                                             metric_value(baseline[split], metric)))
    causes = likely_causes(data_report=p.report.to_dict(), history=read_history(work), metric=metric,
                           model_metrics=metrics[split], label_names=label_names)
    return make_verdict(split, comparison, causes)


def _fold_scaling(model, mean: float, scale: float) -> None:
    """Make the regression head output y = scale * raw + mean directly."""
    import torch

    heads = [m for name, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and m.out_features == 1 and name.split(".")[0] in ("classifier", "score")]
    if not heads:
        raise RunError("cannot find the regression head (a 1-output Linear named classifier or score) to save")
    head = heads[-1]
    with torch.no_grad():
        head.weight.mul_(scale)
        if head.bias is None:
            head.bias = torch.nn.Parameter(torch.zeros(1))
        head.bias.mul_(scale).add_(mean)


def _write_report(work: Path, p: Prepared, meta: dict, metrics: dict, baseline, scores, y, training, threshold,
                  verdict: dict | None, *, model=None):
    """report.html of a run; `model` (the saved weights, in memory) explains a few test predictions."""
    from tunery.evaluate.report import summarize_splits, write_report
    from tunery.evaluate.verdict import read_history

    history = read_history(work)
    run_info = {"run": meta["name"], "backbone": f"{meta['backbone']} ({meta['method']})", "task": meta["task"],
                "data": p.cfg.data.train, "split": training["split"],
                "train / validation / test rows": f"{training['n_train']} / {training['n_validation']} / {training['n_test']}",
                "selection metric": meta["metric"], "best step": f"{training['best_step']} of {training['steps']}",
                "training time": f"{training['train_seconds']:.0f} s ({training['samples_per_s']:.0f} samples/s)",
                "data warnings": len(p.report.warnings)}
    if "soup" in training:  # no training of its own: the average of trained runs (soup.py)
        soup = training["soup"]
        del run_info["best step"], run_info["training time"]
        run_info["weights"] = (f"greedy soup of {len(soup['members'])} runs ({', '.join(soup['members'])}): validation "
                               f"{soup['metric']} {soup['soup_validation']:.4f}, the best run alone "
                               f"{soup['first_validation']:.4f}")
    predictions = {split: (_texts(getattr(p.data, split)), y[split], s) for split, s in scores.items()}
    frames = {split: getattr(p.data, split) for split in ("train", "validation", "test")}
    explanations = None
    split = next((s for s in ("test", "validation") if s in scores and len(y[s])), None)
    if model is not None and split is not None and p.cfg.evaluate.explanations:
        from tunery.predict import Predictor

        frame = frames[split]
        explanations = report_explanations(
            lambda: Predictor(model, p.tokenizer, meta, batch_size=p.cfg.train.eval_batch_size), split,
            frame["text"].astype(str).tolist(),
            frame["text_pair"].astype(str).tolist() if "text_pair" in frame else None,
            y[split], scores[split], n=p.cfg.evaluate.explanations, threshold=threshold,
            origin=_origins(frame))
    write_report(work / "report.html", title=f"tunery run {meta['name']}", run_info=run_info, task=meta["task"],
                 label_names=meta["label_names"], metrics=metrics, baseline=baseline, predictions=predictions,
                 history=history, n_errors=p.cfg.evaluate.n_errors, threshold=threshold,
                 calibration_bins=p.cfg.evaluate.calibration_bins, verdict=verdict,
                 data_summary=summarize_splits(frames, meta["task"], meta["label_names"]),
                 findings=p.report.to_dict()["findings"], config=p.cfg.to_dict(),
                 origins={split: _origins(frames[split]) for split in scores}, explanations=explanations,
                 figures=p.cfg.evaluate.figures)


# The report's explanations stop starting new ones once this many seconds are spent (a base-sized
# model on a CPU takes a few seconds per Integrated Gradients explanation).
REPORT_EXPLAIN_SECONDS = 30.0


def _captum_missing() -> bool:
    try:
        import captum.attr  # noqa: F401 - Integrated Gradients' engine (tunery[explain])
    except ImportError:
        return True
    return False


def report_explanations(predictor, split: str, texts: list[str], pairs: list[str] | None, y, scores, *, n: int,
                        threshold, origin=None) -> dict | None:
    """The report's Explanations section (tunery.evaluate.report): up to `n` examples of `split`
    (`tunery.evaluate.errors.examples_to_explain`: the most confident mistakes, then correct
    predictions), each explained for its target by Integrated Gradients, or by leave-one-out
    occlusion where the backend has no gradients (ONNX), Captum is not installed or IG fails. None
    where there is nothing to explain (a TF-IDF run, n = 0, no rows) or explaining failed: the
    report is written without the section, with a warning. `predictor`: a Predictor, or a function
    that makes one (called only when there is something to explain)."""
    if n <= 0 or not len(texts):
        return None
    try:
        if callable(predictor) and not hasattr(predictor, "meta"):
            predictor = predictor()
        if not getattr(predictor, "explainable", True):
            return None
        return _explain_examples(predictor, split, texts, pairs, y, scores, n=n, threshold=threshold, origin=origin)
    except Exception as err:  # noqa: BLE001 - the run and its report matter more than its explanations
        log.warning("report.html has no explanations: explaining its examples failed (%s: %s)",
                    type(err).__name__, str(err).strip().splitlines()[0][:300] if str(err).strip() else "")
        return None


def _explain_examples(predictor, split, texts, pairs, y, scores, *, n, threshold, origin) -> dict | None:
    from dataclasses import replace as _replace

    from tunery.evaluate.errors import examples_to_explain
    from tunery.explain import explain

    shown = texts if pairs is None else [f"{a} [SEP] {b}" for a, b in zip(texts, pairs)]
    rows, sources = (origin[0], origin[1]) if origin is not None else (None, None)
    examples = examples_to_explain(predictor.meta["task"], shown, np.asarray(y), np.asarray(scores),
                                   predictor.label_names, n=n, threshold=threshold, rows=rows, sources=sources)
    if not examples:
        return None
    notes = []
    if not getattr(predictor, "supports_gradients", False):
        methods = ["occlusion"]
        notes.append(f"A {predictor.meta.get('backend', 'transformers')} run has no gradients: leave-one-out "
                     "occlusion instead of Integrated Gradients.")
    elif _captum_missing():
        methods = ["occlusion"]
        notes.append("Integrated Gradients needs Captum, which is not installed (pip install 'tunery[explain]'): "
                     "leave-one-out occlusion instead.")
    else:
        methods = ["ig", "occlusion"]
    for method in methods:
        items, started = [], time.perf_counter()
        try:
            for ex in examples:
                if items and time.perf_counter() - started > REPORT_EXPLAIN_SECONDS:
                    notes.append(f"Stopped after {len(items)} of {len(examples)} examples: explaining took over "
                                 f"{REPORT_EXPLAIN_SECONDS:.0f} s.")
                    break
                i = ex["index"]
                e = explain(predictor, [texts[i]], [pairs[i]] if pairs is not None else None, method=method,
                            target=ex["target"])[0]
                items.append({**ex, "explanation": _shown_part(e, _replace)})
        except Exception as err:  # noqa: BLE001 - IG failing falls back to occlusion, which needs no gradients
            if method == methods[-1]:
                raise
            reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
            log.warning("Integrated Gradients failed on the report's examples (%s: %s); using occlusion",
                        type(err).__name__, reason)
            notes.append(f"Integrated Gradients failed here ({type(err).__name__}: {reason}): leave-one-out "
                         "occlusion instead.")
            continue
        seconds = time.perf_counter() - started
        log.info("explained %d %s predictions for the report by %s in %.1f s", len(items), split, method, seconds)
        return {"split": split, "method": method, "seconds": seconds, "note": " ".join(notes) or None,
                "items": items}
    return None


def _shown_part(e, replace):
    """The explanation with its text (and pair) cut after the last word the model read, when the
    model truncated it: the report shows what was explained, not a whole long document."""
    if not e.truncated:
        return e
    cut = {seg: max((w.end for w in e.words if w.segment == seg), default=0) for seg in (0, 1)}
    text = e.text[:cut[0]] + " …" if cut[0] < len(e.text) else e.text
    pair = e.pair
    if pair is not None and cut[1] < len(pair):
        pair = pair[:cut[1]] + " …"
    return replace(e, text=text, pair=pair)


def _origins(frame) -> tuple[list, list, str] | None:
    """(rows, sources, word) of a prepared frame: where each example is in the user's data. For
    tunery's copy of a DataFrame given to `TextClassifier.fit` (see tunery.data.validate.Source),
    the DataFrame's index labels and name instead of the copy's rows and path."""
    if "row" not in frame or "source" not in frame:
        return None
    return _named_origins(frame["row"].tolist(), frame["source"].tolist())


def _named_origins(rows: list, sources: list) -> tuple[list, list, str]:
    from tunery.data.validate import _SOURCES

    named = _SOURCES.get()
    if len(set(sources)) == 1 and (src := named.get(str(sources[0]))) is not None:
        if src.index is not None:
            rows = [src.index[r - 1] if 0 < r <= len(src.index) else r for r in rows]
        return rows, [src.name] * len(rows), "index label" if src.index is not None else "row"
    return rows, sources, "row"


def _evaluation_verdict(run_dir: Path, prepared: Prepared | None, meta: dict, split: str, y, scores, b_scores,
                        metrics: dict, baseline: dict, threshold, *, seed: int) -> dict | None:
    """The verdict of an evaluation: the model against the baseline on the evaluated rows."""
    from tunery.evaluate.verdict import compare_to_baseline, likely_causes, make_verdict, read_history

    if not len(y):
        return None
    label_names = list(meta["label_names"])
    from tunery.evaluate.metrics import default_metric, metric_value

    metric = meta.get("metric") or default_metric(meta["task"])
    comparison = compare_to_baseline(meta["task"], metric, y, scores, b_scores, label_names=label_names,
                                     model_threshold=threshold, baseline_threshold=threshold, seed=seed,
                                     values=(metric_value(metrics, metric), metric_value(baseline, metric)))
    report = prepared.report.to_dict() if prepared is not None else None
    causes = likely_causes(data_report=report, history=read_history(run_dir), metric=metric,
                           model_metrics=metrics, label_names=label_names)
    return make_verdict(split, comparison, causes)


def evaluate_run(ref: str | Path, *, data: str | Path | None = None) -> dict:
    """Evaluate a completed run on a labelled file (or its own test split), beside the TF-IDF
    baseline trained on the run's training split. Writes metrics.json and report.html under
    <run>/evaluations/<name>/ and returns the metrics."""
    from tunery.data.validate import check_file
    from tunery.evaluate.baseline import baseline_scores
    from tunery.evaluate.metrics import compute_metrics
    from tunery.predict import load

    predictor = load(ref)
    run_dir, meta = predictor.run_dir, predictor.meta
    tfidf = meta.get("backend") == "tfidf"  # the run is the baseline: nothing separate to compare with
    cfg = load_config(run_dir / "config.yaml")
    task, label_names = predictor.task, predictor.label_names
    n_labels = len(label_names)
    train_frame = None
    prepared = None
    if data is not None:
        # the file evaluated is checked as training checks its files, first; the training files are not
        frame, report = check_file(str(data), cfg.data, task=meta["task"], label_names=label_names,
                                   text_column=meta["text_column"], text_pair_column=meta.get("text_pair_column"),
                                   label_column=meta["label_column"], delimiter=meta.get("label_delimiter"),
                                   tokenizer=predictor.tokenizer, backbone=cfg.model.backbone)
        report.raise_for_errors()
        for finding in report.warnings:
            log.warning("%s", finding.message)
    changed = changed_data(run_dir, cfg)
    if changed:
        log.warning("no baseline and no test split: %s changed since the run was trained", ", ".join(changed))
    else:
        try:
            prepared = (prepare_data if tfidf else prepare_run)(cfg, quiet=True)  # its warnings were shown
            train_frame = prepared.data.train
        except Exception as e:  # noqa: BLE001 - the training file may be gone; the model still evaluates
            log.warning("no baseline: the run's training data cannot be prepared again (%s)", e)
    if data is None:
        if prepared is None or not len(prepared.data.test):
            why = f" ({', '.join(changed)} changed since training)" if changed else ""
            raise RunError(f"run {run_dir} has no test split to evaluate on{why}; pass --data FILE")
        frame, name = prepared.data.test, "test"
        texts = frame["text"].astype(str).tolist()
        pairs = frame["text_pair"].astype(str).tolist() if "text_pair" in frame else None
        labels = frame["label"].tolist()
    else:
        name = Path(data).name.split(".")[0]
        texts = frame["text"].tolist()
        pairs = frame["text_pair"].tolist() if "text_pair" in frame else None
        labels = frame["label"].tolist()
    y = task.y_true(labels, n_labels)
    scores = predictor.predict_scores(texts, pairs)
    threshold = predictor.threshold
    metrics = compute_metrics(meta["task"], y, scores, label_names, threshold=threshold,
                              calibration_bins=cfg.evaluate.calibration_bins)
    shown = texts if pairs is None else [f"{a} [SEP] {b}" for a, b in zip(texts, pairs)]
    baseline = None
    verdict = None
    if tfidf:
        log.info("no baseline beside run %s: it is the TF-IDF baseline", run_dir.name)
    elif train_frame is not None and cfg.evaluate.baseline:
        b = baseline_scores(meta["task"], _texts(train_frame), task.y_true(train_frame["label"].tolist(), n_labels),
                            {name: shown}, n_labels=n_labels, seed=cfg.train.seed)
        baseline = compute_metrics(meta["task"], y, b[name], label_names, threshold=threshold,
                                   calibration_bins=cfg.evaluate.calibration_bins)
        verdict = _evaluation_verdict(run_dir, prepared, meta, name, y, scores, b[name], metrics, baseline, threshold,
                                      seed=cfg.train.seed)
    out_dir = run_dir / "evaluations" / name
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"run": str(run_dir), "data": str(data) if data else "test split", "n": len(texts),
              "model": metrics, "baseline": baseline, "report": str(out_dir / "report.html"),
              **({"baseline_note": "this run is the TF-IDF baseline"} if tfidf else {}),
              **({"verdict": verdict} if verdict else {})}
    write_json(out_dir / "metrics.json", result)
    from tunery.evaluate.report import write_report

    origin = (_origins(frame) if data is None else
              _named_origins(list(range(1, len(texts) + 1)), [str(data)] * len(texts)))
    explanations = report_explanations(predictor, name, texts, pairs, y, scores, n=cfg.evaluate.explanations,
                                       threshold=threshold, origin=origin)
    write_report(out_dir / "report.html", title=f"tunery evaluation of {meta['name']} on {result['data']}",
                 run_info={"run": str(run_dir), "data": result["data"], "rows": len(texts), "task": meta["task"],
                           "backbone": meta["backbone"]},
                 task=meta["task"], label_names=label_names, metrics={name: metrics},
                 baseline={name: baseline} if baseline else None, predictions={name: (shown, y, scores)},
                 n_errors=cfg.evaluate.n_errors, threshold=threshold,
                 calibration_bins=cfg.evaluate.calibration_bins, verdict=result.get("verdict"),
                 origins={name: origin}, explanations=explanations, figures=cfg.evaluate.figures)
    return result


def prepare_data(cfg: RunConfig, *, quiet: bool = False) -> Prepared:
    """`prepare_run` for a run with no tokenizer (the TF-IDF baseline): read, validate and split
    the data; no backbone is resolved and no truncation or vocabulary check is made."""
    from tunery.data.validate import prepare

    data, report = prepare(cfg.data, cfg.task)
    report.raise_for_errors()
    for finding in report.warnings:
        log.log(logging.DEBUG if quiet else logging.WARNING, "%s", finding.message)
    return Prepared(cfg, None, None, data, report, get_task(data.task))


def train_baseline(cfg: RunConfig, *, store=None) -> Path:
    """Fit the TF-IDF baseline as a run of its own (tunery.json "backend": "tfidf"): the data is
    read, validated and split as `train` does (no tokenizer: the baseline reads whole texts), the
    model is fitted on train (multi-label thresholds tuned on validation, as a model run's are) and
    evaluated on validation and test; the run directory holds config.yaml, data_report.json,
    metrics.json (metrics under "model", no "baseline": the run is the baseline), report.html, model/
    (tfidf.json, tfidf.safetensors) and tunery.json, and the store records it like any run.
    Everything is checked before anything is written; on failure nothing is kept. Returns the run."""
    import difflib

    from tunery.evaluate.baseline import TfidfModel
    from tunery.evaluate.metrics import compute_metrics, default_metric, metric_names, tune_thresholds
    from tunery.evaluate.report import summarize_splits, write_report
    from tunery.store import Store

    fresh_name = cfg.name is None
    cfg = cfg.model_copy(update={"name": cfg.name or _default_name(cfg)})
    final = Path(cfg.output_dir) / cfg.name
    store = store or Store()
    if not fresh_name and (why := _name_in_use(store, cfg.name, final)):
        raise RunError(why)
    _check_output_dir(Path(cfg.output_dir))
    prepared = prepare_data(cfg)
    data, report = prepared.data, prepared.report
    metric = cfg.train.metric or default_metric(data.task)
    valid = metric_names(data.task)
    if metric not in valid and not metric.startswith("per_class."):
        close = difflib.get_close_matches(metric, valid, n=1)
        raise ConfigError(f"train.metric {metric!r} is not a {data.task} metric"
                          + (f" (did you mean {close[0]!r}?)" if close else "") + f"; valid: {', '.join(valid)}")
    task, label_names = prepared.task, list(data.label_names)
    n_labels = len(label_names)
    started = time.time()
    with new_run(cfg, task=data.task, backbone="tfidf", store=store, fresh_name=fresh_name) as run:
        cfg, work = run.cfg, run.work
        save_config(cfg, work / "config.yaml")
        write_json(work / "data_report.json", report.to_dict())
        write_json(work / "data_digest.json", {k: _file_digest(getattr(cfg.data, k))
                                               for k in ("train", "validation", "test")})
        model = TfidfModel.fit(data.task, _texts(data.train), task.y_true(data.train["label"].tolist(), n_labels),
                               n_labels=n_labels, seed=cfg.train.seed)
        fit_seconds = time.time() - started
        frames = {split: getattr(data, split) for split in ("train", "validation", "test")}
        texts = {split: _texts(frames[split]) for split in ("validation", "test") if len(frames[split])}
        scores = {split: model.scores(t) for split, t in texts.items()}
        y = {split: task.y_true(frames[split]["label"].tolist(), n_labels) for split in scores}
        threshold, thresholds = cfg.task.problem_threshold, None
        tuned = data.task == "multilabel" and "validation" in scores
        if tuned:  # as a model run's: tuned on validation, per label when asked
            threshold, per = tune_thresholds(y["validation"], scores["validation"])
            thresholds = per if cfg.task.per_label_threshold else None
        decide = thresholds if thresholds is not None else threshold
        metrics = {split: compute_metrics(data.task, y[split], s, label_names, threshold=decide,
                                          calibration_bins=cfg.evaluate.calibration_bins)
                   for split, s in scores.items()}
        (work / "model").mkdir()
        model.save(work / "model")
        follow_umask(work / "model")
        meta = {"tunery_version": __version__, "name": cfg.name, "backend": "tfidf", "task": data.task,
                "label_names": label_names, "threshold": threshold, "thresholds": thresholds,
                "label_mean": 0.0, "label_scale": 1.0, "backbone": "tfidf", "backbone_path": None, "method": "tfidf",
                "text_column": data.text_column, "text_pair_column": data.text_pair_column,
                "label_column": data.label_column, "label_delimiter": data.label_delimiter,
                "max_length": None,  # the whole text is read
                "metric": metric, "created_at": datetime.now(timezone.utc).isoformat()}
        training = {"backend": "tfidf", "steps": 0, "n_features": model.n_features,
                    "selection": {"metric": metric, "threshold": "tuned per evaluation" if tuned else
                                  ("fixed" if data.task == "multilabel" else "none")},
                    "train_seconds": round(fit_seconds, 2), "wall_seconds": round(time.time() - started, 2),
                    "n_train": len(data.train), "n_validation": len(data.validation), "n_test": len(data.test),
                    "split": data.split_note}
        write_json(work / "metrics.json", {"task": data.task, "metric": metric, "threshold": threshold,
                                           "thresholds": thresholds, "model": metrics, "baseline": None,
                                           "baseline_note": "this run is the TF-IDF baseline",
                                           "training": training})
        write_report(work / "report.html", title=f"tunery run {cfg.name} (TF-IDF baseline)",
                     run_info={"run": cfg.name, "backend": "TF-IDF baseline (word 1-2-grams, char 2-5-grams; "
                               "linear model)", "task": data.task, "data": cfg.data.train, "split": data.split_note,
                               "train / validation / test rows": f"{len(data.train)} / {len(data.validation)} / "
                                                                 f"{len(data.test)}",
                               "selection metric": metric, "features": f"{model.n_features:,}",
                               "fit time": f"{fit_seconds:.1f} s", "data warnings": len(report.warnings)},
                     task=data.task, label_names=label_names, metrics=metrics, baseline=None,
                     predictions={split: (texts[split], y[split], s) for split, s in scores.items()},
                     n_errors=cfg.evaluate.n_errors, threshold=decide,
                     calibration_bins=cfg.evaluate.calibration_bins,
                     data_summary=summarize_splits(frames, data.task, label_names),
                     findings=report.to_dict()["findings"], config=cfg.to_dict(),
                     origins={split: _origins(frames[split]) for split in scores}, figures=cfg.evaluate.figures)
        write_json(work / META, meta)  # written last: its presence marks a complete run
        run.metrics = metrics
    return Path(cfg.output_dir) / cfg.name
