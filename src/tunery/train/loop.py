"""The training loop: ours, on Accelerate, so that later objectives (adversarial steps,
distillation, FedProx) are a few lines here rather than a fight with a framework.

Resumability: every checkpoint holds the weights, optimizer, scheduler, RNG states and the
position in the epoch; batch order is a pure function of (seed, epoch). A run killed at any
moment and resumed from its last checkpoint reaches the same final weights and metrics.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from tunery.config import TrainConfig
from tunery.pooling import model_pooling
from tunery.rundir import write_text_atomic
from tunery.tasks import Task
from tunery.train.adversarial import EmbeddingAdversary, rdrop_loss
from tunery.inference import Encoded, collate, predict_scores, resolve_precision
from tunery.train.batching import batch_order
from tunery.train.callbacks import Callback
from tunery.train.losses import multilabel_loss
from tunery.train.checkpoint import load_checkpoint, load_weights, recover, save_checkpoint, save_weights
from tunery.cls_only import cls_only_last_layer, matches_full_layer

# the largest logit difference (fp32, first batch) accepted between the [CLS]-only and the full last layer
CLS_ONLY_TOLERANCE = 1e-3

log = logging.getLogger(__name__)

MetricFn = Callable[[np.ndarray], dict]  # validation scores -> metrics


@dataclass
class TrainState:
    step: int = 0  # optimizer steps taken
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches consumed in `epoch`
    total_steps: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    best_loss: float | None = None  # validation loss at best_step: breaks ties of the metric
    evals_without_improvement: int = 0
    stopped_early: bool = False
    samples_seen: int = 0
    train_seconds: float = 0.0
    # the logging window in progress: part of the state so a resumed run logs the same figures
    window_loss: float = 0.0
    window_batches: int = 0
    window_samples: int = 0
    history: list[dict] = field(default_factory=list)  # eval records

    def to_dict(self) -> dict:
        return asdict(self)


def _depth(name: str) -> int | None:
    """0 for embeddings, i + 1 for transformer layer i, None above the encoder (pooler, head)."""
    m = re.search(r"\.layers?\.(\d+)\.", name)
    if m:
        return int(m.group(1)) + 1
    return 0 if "embeddings" in name else None


def _param_groups(model: torch.nn.Module, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: no weight decay on biases and norms; the new head may get its own lr; with
    layer-wise decay, layer i of n trains at lr * decay ** (n + 1 - depth), so the lower, more
    general layers move less."""
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", 0) or 0
    if model_pooling(model) == "mean":
        n_layers -= 1  # the added pooling layer trains at the full lr, like the head above it
    groups: dict[tuple[bool, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name
        is_head = "classifier" in name or name.startswith("score")
        lr = cfg.head_lr if (is_head and cfg.head_lr) else cfg.lr
        depth = _depth(name)
        if cfg.layer_lr_decay != 1.0 and depth is not None and not is_head and depth <= n_layers:
            lr = lr * cfg.layer_lr_decay ** (n_layers + 1 - depth)
        groups.setdefault((no_decay, lr), []).append(p)
    return [{"params": params, "weight_decay": 0.0 if no_decay else cfg.weight_decay, "lr": lr}
            for (no_decay, lr), params in groups.items()]


def label_pos_weight(y_train: np.ndarray, max_weight: float) -> np.ndarray:
    """Multi-label: the weight of each label's positives in the loss, sqrt(negatives / positives)
    clipped to [1, max_weight], so rare labels are not drowned by their negatives (plain binary
    cross-entropy collapses onto all-negative predictions when most labels are rare)."""
    Y = np.asarray(y_train, dtype=float)
    pos = Y.sum(axis=0)
    neg = len(Y) - pos
    return np.clip(np.sqrt(neg / np.maximum(pos, 1.0)), 1.0, max_weight)


def label_prior_bias(y_train: np.ndarray, pos_weight: np.ndarray | None = None) -> np.ndarray:
    """Multi-label: each label's starting output bias, the logit of the constant prediction that
    minimises its (positive-weighted) cross-entropy on the training labels, log(w p / (1 - p)) for a
    label of frequency p and positive weight w (the "prior" initialisation of Lin et al. 2017).
    A zero bias starts every label at probability 0.5, and the first hundreds of steps go to pushing
    the rare labels' outputs down instead of learning which texts carry them."""
    Y = np.asarray(y_train, dtype=float)
    p = np.clip(Y.mean(axis=0), 1.0 / (len(Y) + 1), 1 - 1.0 / (len(Y) + 1))
    w = np.ones_like(p) if pos_weight is None else np.asarray(pos_weight, dtype=float)
    return np.log(w * p / (1 - p))


def set_head_bias(model: torch.nn.Module, bias: np.ndarray) -> int:
    """Set the output bias of the classification head(s) (a Linear named classifier/score with one
    output per label, LoRA's saved copy included); the number of heads set."""
    heads = [m for name, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and m.out_features == len(bias) and m.bias is not None
             and any(part in ("classifier", "score", "out_proj") for part in name.split("."))
             and not name.endswith(("dense", "lora_A", "lora_B"))]
    with torch.no_grad():
        for head in heads:
            head.bias.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))
    return len(heads)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    assert cfg.lr is not None, "pipeline.resolve_defaults fills train.lr before training"
    groups = _param_groups(model, cfg)
    try:  # fused AdamW: one kernel for all parameters, ~5x faster steps on CPU than the loop
        return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=cfg.lr)


def make_scheduler(optimizer, cfg: TrainConfig, total_steps: int):
    from transformers import get_scheduler

    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[cfg.scheduler]
    return get_scheduler(
        name, optimizer, num_warmup_steps=int(cfg.warmup_ratio * total_steps), num_training_steps=total_steps
    )


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class WeightAverage:
    """An exponential moving average of the trainable weights (Polyak averaging). Evaluation and
    the kept checkpoint use the average, which is usually flatter and generalises better."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float) -> None:
        self.params = params
        self.decay = decay
        self.shadow = [p.detach().clone() for p in params]

    def update(self, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))  # short memory early on
        with torch.no_grad():
            torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - decay)

    def swap(self) -> None:
        """Exchange live and averaged weights (call twice to undo)."""
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow):
                tmp = p.detach().clone()
                p.copy_(s)
                s.copy_(tmp)

    def state_dict(self) -> list[torch.Tensor]:
        return self.shadow

    def load_state_dict(self, shadow: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for s, v in zip(self.shadow, shadow):
                s.copy_(v)


class Trainer:
    """Runs the loop over tokenised splits. The constructor only stores; `fit` does the work."""

    def __init__(self, model, task: Task, cfg: TrainConfig, *, n_labels: int, pad_id: int, workdir: Path,
                 metric: str, greater_is_better: bool, metric_fn: MetricFn,
                 callbacks: list[Callback] | None = None, pos_weight: torch.Tensor | None = None,
                 distiller=None, regularizer: Callable[[torch.nn.Module], torch.Tensor] | None = None) -> None:
        self.model = model
        self.task = task
        self.cfg = cfg
        self.n_labels = n_labels
        self.pad_id = pad_id
        self.workdir = Path(workdir)
        self.metric = metric
        self.greater_is_better = greater_is_better
        self.metric_fn = metric_fn
        self.callbacks = callbacks or []
        self.pos_weight = pos_weight  # multi-label: weight of each label's positives in the loss
        self.distiller = distiller  # tunery.train.distill.Distiller: the batch loss of distillation, or None
        # a loss term of the weights alone, added once per optimizer step (federated FedProx's proximal term)
        self.regularizer = regularizer
        self.passes_per_step = 1  # forward+backward passes a batch costs (set by fit: adversarial, R-Drop)
        self.cls_only = False  # train.cls_only_last_layer in effect (set by fit; cls_only.py)
        self.dp_report: dict | None = None  # train.dp: metrics.json's training.dp, set by fit

    # -- helpers ---------------------------------------------------------------------------
    def _emit(self, event: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(*args)

    def _stop_requested(self) -> str | None:
        """The reason a callback gave for ending training now (`Callback.stop_reason`), or None."""
        # only a string counts: callbacks may be duck-typed objects whose __getattr__ answers anything
        reasons = (getattr(cb, "stop_reason", None) for cb in self.callbacks)
        return next((r for r in reasons if isinstance(r, str) and r), None)

    def _log(self, record: dict) -> None:
        with open(self.workdir / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def _truncate_log(self, step: int) -> None:
        """Drop log records written after the checkpoint we resume from (the lost work)."""
        path = self.workdir / "log.jsonl"
        if not path.exists():
            return
        keep = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:  # a line torn by the kill
                continue
        write_text_atomic(path, "".join(line + "\n" for line in keep))  # a full disk loses nothing

    def _improved(self, value: float, best: float | None, loss: float | None = None,
                  best_loss: float | None = None) -> bool:
        """Better on the metric; or equal on it (a metric stuck at its floor, such as F1 = 0 at every
        evaluation, ties) and lower on the threshold-free validation loss, so a tie does not keep
        the first checkpoint by default."""
        if best is None or math.isnan(best):
            return not math.isnan(value)
        if math.isclose(value, best, rel_tol=0, abs_tol=1e-12):
            return loss is not None and best_loss is not None and loss < best_loss
        return value > best if self.greater_is_better else value < best

    # -- the loop --------------------------------------------------------------------------
    def fit(self, train: Encoded, validation: Encoded, *, resume: bool = False) -> TrainState:
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        cfg = self.cfg
        # Accelerate keeps process-wide state; a second run in one process (a notebook, a test
        # suite, an HF Trainer before us) may ask for another precision, so start from a clean one.
        AcceleratorState._reset_state(reset_partial_state=True)
        if cfg.num_threads:
            cores = os.cpu_count() or 1
            if cfg.num_threads > cores:
                log.warning("train.num_threads %d is more than the %d CPU cores here: training will be slower; "
                            "leave it unset to use every core", cfg.num_threads, cores)
            torch.set_num_threads(cfg.num_threads)
        private = cfg.dp.noise_multiplier > 0  # DP-SGD (train/dp.py): per-row gradients in fp32
        accelerator = Accelerator(
            mixed_precision="bf16" if resolve_precision(cfg.precision) == "bf16" and not private else "no",
            gradient_accumulation_steps=1,  # we accumulate ourselves: windows may be short at epoch ends
            step_scheduler_with_optimizer=False,
        )
        micro_per_epoch = math.ceil(len(train) / cfg.batch_size)
        steps_per_epoch = math.ceil(micro_per_epoch / cfg.grad_accum_steps)
        total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
        self._steps_per_epoch = steps_per_epoch
        eval_every = cfg.eval_every_steps or steps_per_epoch
        ckpt_every = cfg.checkpoint_every_steps or eval_every

        set_seed(cfg.seed)
        optimizer = make_optimizer(self.model, cfg)
        scheduler = make_scheduler(optimizer, cfg, total_steps)
        model, optimizer = accelerator.prepare(self.model, optimizer)
        base = accelerator.unwrap_model(model)  # the plain model: checkpoints and saved weights are its state
        self._base = base
        dp = None
        if private:
            from tunery.train.dp import PrivateTraining

            dp = PrivateTraining(model, optimizer, cfg.dp, batch_size=cfg.batch_size,
                                 accum_steps=cfg.grad_accum_steps, n_train=len(train))
            model, optimizer = dp.model, dp.optimizer
        state = TrainState(total_steps=total_steps)
        ema = None
        if cfg.ema_decay:
            ema = WeightAverage([p for p in model.parameters() if p.requires_grad], cfg.ema_decay)
        ckpt_dir = self.workdir / "checkpoints"
        if resume:
            recover(ckpt_dir / "last")
            recover(ckpt_dir / "best")
        if resume and (ckpt_dir / "last").exists():
            saved = load_checkpoint(ckpt_dir / "last", base, optimizer, scheduler)
            state = TrainState(**saved["state"])
            _set_rng_state(saved["rng"])
            if ema is not None:
                ema.load_state_dict(saved["ema"])
            self._truncate_log(state.step)
            log.info("resumed at step %d (epoch %d, batch %d)", state.step, state.epoch, state.batch_in_epoch)
        elif resume:
            log.warning("no checkpoint in %s: starting from the beginning", ckpt_dir)
            self._truncate_log(0)

        self._emit("on_train_begin", state, len(train))
        model.train()
        window_start = time.perf_counter()
        lengths = train.lengths
        n_labels = self.n_labels
        done = state.step >= total_steps or state.stopped_early
        adversary = None
        if cfg.adversarial.method != "none":
            embeddings = base.get_input_embeddings()
            adversary = EmbeddingAdversary(embeddings, cfg.adversarial.epsilon, method=cfg.adversarial.method,
                                           steps=cfg.adversarial.steps, step_size=cfg.adversarial.step_size,
                                           seed=cfg.seed).attach()
        passes = adversary.passes_per_step if adversary is not None else (2 if cfg.rdrop else 1)
        self.passes_per_step = passes
        # distillation reads every layer's hidden states; Opacus hooks every layer's rows
        self.cls_only = (cfg.cls_only_last_layer and dp is None and self.distiller is None
                         and self._cls_only_matches(base, train))
        shortcut = contextlib.ExitStack()
        try:
            shortcut.enter_context(cls_only_last_layer(base, self.cls_only))
            while not done:
                batches = batch_order(lengths, cfg.batch_size, seed=cfg.seed, epoch=state.epoch,
                                      group_by_length=cfg.group_by_length)
                # A partial accumulation window at the end of an epoch still steps (flush below).
                for b in range(state.batch_in_epoch, len(batches)):
                    idx = batches[b]
                    t0 = time.perf_counter()
                    batch = {k: v.to(accelerator.device) for k, v in collate(train, idx, self.pad_id).items()}
                    labels = self.task.label_tensor([train.labels[i] for i in idx], n_labels).to(accelerator.device)
                    k = cfg.grad_accum_steps
                    is_last_micro = (b + 1) % k == 0 or b + 1 == len(batches)
                    window_size = min(k, len(batches) - (b // k) * k)  # the last window may be short
                    def task_loss(batch=batch, labels=labels):
                        with accelerator.autocast():
                            return self._loss(model(**batch).logits, labels)

                    def backward(value, window_size=window_size):
                        # DP-SGD clips each row's gradient of its own loss; the optimizer averages the window
                        accelerator.backward(value if dp is not None else value / window_size)

                    if adversary is not None and adversary.replaces_clean_pass:  # FreeLB: K perturbed passes
                        loss = adversary.step(task_loss, backward, batch["attention_mask"], state.samples_seen)
                    else:
                        with accelerator.autocast():
                            if self.distiller is not None:
                                loss, _ = self.distiller.loss(model, batch, idx, labels)
                            elif cfg.rdrop:
                                doubled = {k: torch.cat([v, v]) for k, v in batch.items()}
                                loss = rdrop_loss(model(**doubled).logits, lambda z: self._loss(z, labels),
                                                  cfg.rdrop, self.task.problem_type)
                            else:
                                loss = self._loss(model(**batch).logits, labels)
                        backward(loss)
                        loss = float(loss.detach())
                        if adversary is not None:  # FGM, PGD: after the clean pass's backward
                            adversary.step(task_loss, backward, batch["attention_mask"], state.samples_seen)
                    extra = None
                    if dp is not None:
                        dp.check(len(idx))
                        reg = self.regularizer(base) if self.regularizer is not None and is_last_micro else None
                        if reg is not None and reg.requires_grad:  # no training row in it: added after the noise
                            extra = torch.autograd.grad(reg, dp.params, allow_unused=True)
                    elif self.regularizer is not None:  # its own backward: its gradient adds to the batch's
                        backward(self.regularizer(model))
                    state.window_loss += loss
                    state.window_batches += 1
                    state.window_samples += len(idx)
                    state.samples_seen += len(idx)
                    state.batch_in_epoch = b + 1
                    if not is_last_micro:
                        if dp is not None:  # clip and sum this micro-batch's rows now: one held at a time
                            dp.accumulate()
                        state.train_seconds += time.perf_counter() - t0
                        continue
                    if dp is not None:  # per-row clipping (replaces grad_clip), noise, average, update
                        dp.step(window_size, extra)
                    else:
                        if cfg.grad_clip:
                            accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                        optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    state.step += 1
                    if ema is not None:
                        ema.update(state.step)
                    state.train_seconds += time.perf_counter() - t0
                    if state.batch_in_epoch == len(batches):
                        state.epoch += 1
                        state.batch_in_epoch = 0

                    if state.step % cfg.log_every_steps == 0 or state.step == total_steps:
                        elapsed = time.perf_counter() - window_start
                        record = {"step": state.step, "epoch": round(state.step / steps_per_epoch, 4),
                                  "loss": state.window_loss / max(state.window_batches, 1),
                                  "lr": scheduler.get_last_lr()[0],
                                  "samples_per_s": state.window_samples / max(elapsed, 1e-9)}
                        if passes > 1:  # what the robustness objective costs: forward+backward passes a batch
                            record["passes_per_step"] = passes
                        if dp is not None:  # the privacy spent so far (RDP accountant, train.dp.delta)
                            record["epsilon"] = dp.epsilon(state.step)
                        self._log(record)
                        self._emit("on_log", state, record)
                        state.window_loss, state.window_batches, state.window_samples = 0.0, 0, 0
                        window_start = time.perf_counter()
                    self._emit("on_step", state)

                    # A callback may ask to end now (a deadline): the run ends at its best checkpoint,
                    # evaluating here only when it has none yet.
                    stop = self._stop_requested()
                    finished = state.step >= total_steps or stop
                    if state.step % eval_every == 0 or (finished and not (stop and state.best_step is not None)):
                        if ema is not None:
                            ema.swap()
                        self._evaluate(model, validation, state, accelerator, ckpt_dir)
                        if ema is not None:
                            ema.swap()
                        model.train()
                        if (cfg.early_stopping_patience
                                and state.evals_without_improvement >= cfg.early_stopping_patience):
                            state.stopped_early = True
                            finished = True
                        finished = finished or self._stop_requested()  # e.g. a pruner, on the evaluation
                    if state.step % ckpt_every == 0 or finished:
                        save_checkpoint(ckpt_dir / "last", base, optimizer, scheduler,
                                        {"state": state.to_dict(), "rng": _rng_state(),
                                         "ema": ema.state_dict() if ema is not None else None})
                        window_start = time.perf_counter()
                    if finished:
                        done = True
                        break
        finally:  # an error or Ctrl-C must not leave the hook (and its graph) on the model
            shortcut.close()  # the full last layer again: what predict and the saved model run
            if adversary is not None:
                adversary.detach()
            if dp is not None:  # nor Opacus's hooks and per-row gradients
                dp.close()
        if dp is not None:
            self.dp_report = dp.report(state.step)
        self._emit("on_train_end", state)
        # The kept model is the best one on validation, not the last one.
        if (ckpt_dir / "best").exists():
            load_weights(ckpt_dir / "best", base)
        self.model = base
        self.accelerator = accelerator
        return state

    def _cls_only_matches(self, model, train: Encoded) -> bool:
        """Whether the [CLS]-only last layer applies to `model` and gives the full layer's logits on the
        first training rows (cls_only.py); a mismatch is logged and the full layer kept."""
        if len(train) == 0:
            return False
        rows = np.arange(min(len(train), self.cfg.batch_size))
        batch = {k: v.to(next(model.parameters()).device) for k, v in collate(train, rows, self.pad_id).items()}
        diff = matches_full_layer(model, batch)
        if diff is None:
            return False
        if not diff <= CLS_ONLY_TOLERANCE:
            log.warning("train.cls_only_last_layer: the [CLS]-only last layer differs from the full one by %.3g "
                        "in the logits of the first batch (more than %g); training with the full layer", diff,
                        CLS_ONLY_TOLERANCE)
            return False
        return True

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.task.problem_type == "single_label_classification":
            return torch.nn.functional.cross_entropy(logits, labels)
        if self.task.problem_type == "multi_label_classification":
            pw = None if self.pos_weight is None else self.pos_weight.to(logits.device)
            return multilabel_loss(logits, labels, self.cfg.multilabel_loss, pos_weight=pw)
        return torch.nn.functional.mse_loss(logits.squeeze(-1), labels)

    def _evaluate(self, model, validation: Encoded, state: TrainState, accelerator, ckpt_dir: Path) -> None:
        t0 = time.perf_counter()
        scores = predict_scores(model, self.task, validation, batch_size=self.cfg.eval_batch_size,
                                pad_id=self.pad_id, accelerator=accelerator)
        metrics = self.metric_fn(scores)
        value = float(metrics[self.metric])
        record = {"step": state.step, "epoch": round(state.step / self._steps_per_epoch, 4), "split": "validation",
                  self.metric: value,
                  "eval_seconds": time.perf_counter() - t0}
        record.update({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != self.metric})
        loss = metrics.get("loss")  # the threshold-free validation loss (metric_fn)
        loss = float(loss) if isinstance(loss, (int, float)) and not math.isnan(loss) else None
        if self._improved(value, state.best_metric, loss, state.best_loss):
            state.best_metric, state.best_step, state.best_loss = value, state.step, loss
            state.evals_without_improvement = 0
            save_weights(ckpt_dir / "best", self._base)
        else:
            state.evals_without_improvement += 1
        record["best"] = state.best_step == state.step
        state.history.append(record)
        self._log(record)
        self._emit("on_evaluate", state, record)
