"""Record-level differential privacy for tunery's training loop: DP-SGD (Abadi et al., 2016) on Opacus.

`train.dp.noise_multiplier` > 0 turns it on (config.DPConfig). Per optimizer step:
- Opacus's `GradSampleModule` computes each training row's gradient (hooks on the trainable layers:
  Linear, LayerNorm, Embedding; LoRA's lora_A / lora_B are Linear layers; frozen weights get none);
- Opacus's `DPOptimizer` clips each row's gradient to `max_grad_norm` (L2, over all trainable
  weights together), sums them, adds Gaussian noise of std `noise_multiplier * max_grad_norm` to the
  sum, divides by the rows a full step holds (batch_size x the micro-batches of the step) and hands
  the result to AdamW, the scheduler unchanged. `train.grad_clip` is not applied on top: the per-row
  clip replaces it;
- with `grad_accum_steps` k, each micro-batch's rows are clipped and summed as they come (Opacus's
  skipped steps: one micro-batch of per-row gradients is held at a time) and the noise is added once,
  at the step: a logical batch of k * batch_size rows.

Accounting: Opacus's RDP accountant for the sampled Gaussian mechanism, with sample rate
q = batch_size * k / training rows, over the optimizer steps taken; epsilon for `delta`. tunery's
batches are a seeded shuffle of the rows cut into fixed-size batches (every row once an epoch), not
the Poisson sampling (every row in every batch independently with probability q) that the analysis
assumes: reporting the Poisson figure for shuffled batches is the customary approximation (Abadi et
al.'s own experiments, Opacus's and TF Privacy's examples), not a proof. docs/privacy.md has the rest.
"""

from __future__ import annotations

import logging
import warnings
from typing import Sequence

import torch

from tunery.config import DPConfig
from tunery.errors import ConfigError

ACCOUNTANT = "rdp"  # Opacus's RDPAccountant (Mironov 2017; Mironov, Talwar, Zhang 2019)


def _opacus():
    """Opacus's GradSampleModule and DPOptimizer. Opacus calls logging.basicConfig when imported
    (opacus.utils.module_utils), which would add a handler to the root logger of the process: the
    root's handlers are put back as they were."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer
    except ImportError as err:
        raise ConfigError(f"train.dp (DP-SGD) needs Opacus ({err}): pip install 'opacus>=1.5,<2' (it comes with "
                          "tunery[federated]), or set train.dp.noise_multiplier: 0") from None
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    return GradSampleModule, DPOptimizer


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon after `steps` steps of the sampled Gaussian mechanism, by Opacus's RDP accountant."""
    if steps <= 0:
        return 0.0
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, steps)]
    with warnings.catch_warnings():  # "optimal order is the smallest alpha": epsilon is then huge anyway
        warnings.simplefilter("ignore", UserWarning)
        return float(accountant.get_epsilon(delta))


class PrivateTraining:
    """The model and optimizer made private for one `Trainer.fit`; `close` takes Opacus off again.

    `model`: the (Accelerate-prepared) model; `optimizer`: its prepared optimizer, which keeps its own
    state_dict (checkpoints stay as they were: DPOptimizer holds no state, and its noise comes from
    torch's global generator, whose state every checkpoint saves: a resumed run draws the same noise).
    """

    def __init__(self, model: torch.nn.Module, optimizer, cfg: DPConfig, *, batch_size: int, accum_steps: int,
                 n_train: int) -> None:
        GradSampleModule, DPOptimizer = _opacus()
        # Opacus's backward hooks on layers whose inputs need no gradient (embeddings fed token ids): as intended
        warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed with "
                                "respect to module outputs since no inputs require gradients", category=UserWarning)
        self.cfg = cfg
        self.batch_size = batch_size
        self.sample_rate = min(1.0, batch_size * accum_steps / max(n_train, 1))
        self.names = {p: name for name, p in model.named_parameters() if p.requires_grad}
        try:
            self.model = GradSampleModule(model, batch_first=True, loss_reduction="mean", strict=True)
        except NotImplementedError as err:  # a trainable layer with buffers (BatchNorm): not private per row
            raise ConfigError(f"train.dp: Opacus cannot compute per-row gradients of this model: {err}; freeze "
                              "those layers or set train.dp.noise_multiplier: 0") from None
        self.optimizer = DPOptimizer(optimizer, noise_multiplier=cfg.noise_multiplier,
                                     max_grad_norm=cfg.max_grad_norm, expected_batch_size=batch_size * accum_steps,
                                     loss_reduction="mean")
        self._extra: Sequence[torch.Tensor | None] | None = None
        self.optimizer.attach_step_hook(self._add_extra)
        # Embeddings looked up once for the whole batch and broadcast over its rows (BERT's position
        # embeddings: ids of shape (1, length)) get one gradient for all rows; looked up once per
        # row instead (the same sum, broadcast or not), each row gets its own.
        self._rows = 0
        self._hooks = [model.register_forward_pre_hook(self._count_rows, with_kwargs=True)]
        self._hooks += [m.register_forward_pre_hook(self._per_row) for m in model.modules()
                        if isinstance(m, torch.nn.Embedding) and m.weight.requires_grad]

    def _count_rows(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self._rows = ids.shape[0] if isinstance(ids, torch.Tensor) and ids.dim() else 0

    def _per_row(self, module, args):
        ids = args[0] if args else None
        if (module.training and torch.is_grad_enabled() and isinstance(ids, torch.Tensor) and ids.dim() >= 1
                and ids.shape[0] == 1 and self._rows > 1):
            return (ids.expand(self._rows, *ids.shape[1:]), *args[1:])
        return None

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return list(self.names)

    def check(self, rows: int) -> None:
        """After a micro-batch's backward: every trainable weight has one gradient per row. A weight
        the forward pass did not use gets zeros (its gradient is zero for every row); one whose
        per-row gradients do not line up with the rows is an error, not a silent loss of privacy."""
        for p, name in self.names.items():
            gs = p.grad_sample
            if gs is None and p.grad is not None:  # a gradient that reached it outside its layer's forward
                raise ConfigError(f"train.dp: {name} gets a gradient that Opacus cannot split by row (the weight is "
                                  "used outside its layer's forward, e.g. a relative position table); freeze it "
                                  "(model.method: lora leaves it frozen) or set train.dp.noise_multiplier: 0")
            if gs is None:
                p.grad_sample = torch.zeros((rows, *p.shape), dtype=p.dtype, device=p.device)
            elif isinstance(gs, torch.Tensor) and gs.shape[0] != rows:
                raise ConfigError(f"train.dp: Opacus computed {gs.shape[0]} per-row gradients of {name} for a batch "
                                  f"of {rows} rows: the layer takes inputs without a batch dimension (e.g. a "
                                  "relative position bias) and DP-SGD cannot bound each row's share of its "
                                  "gradient; freeze it (model.method: lora leaves it frozen) or set "
                                  "train.dp.noise_multiplier: 0")

    def accumulate(self) -> None:
        """A micro-batch that does not end its step: its rows' gradients are clipped and added to the
        step's sum; no noise, no update (Opacus's skipped step), and its per-row gradients are freed."""
        self.optimizer.signal_skip_step(True)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def step(self, micro_batches: int, extra: Sequence[torch.Tensor | None] | None = None) -> None:
        """Clip the last micro-batch, add the noise to the step's sum, divide by batch_size x
        `micro_batches` (a short last step of an epoch is averaged over its own micro-batches) and
        update. `extra`: gradients of a data-independent loss term (FedProx's proximal term), one per
        `params`, added after the noise: they carry no training row, so they need none."""
        self.optimizer.expected_batch_size = self.batch_size * micro_batches
        self._extra = extra
        try:
            self.optimizer.step()
        finally:
            self._extra = None

    def _add_extra(self, optimizer) -> None:
        if self._extra is None:
            return
        with torch.no_grad():
            for p, g in zip(self.params, self._extra):
                if g is not None and p.grad is not None:
                    p.grad.add_(g.to(p.grad.dtype))

    def epsilon(self, steps: int) -> float:
        return epsilon(self.cfg.noise_multiplier, self.sample_rate, steps, self.cfg.delta)

    def report(self, steps: int) -> dict:
        """metrics.json's training.dp."""
        return {"noise_multiplier": self.cfg.noise_multiplier, "max_grad_norm": self.cfg.max_grad_norm,
                "delta": self.cfg.delta, "sample_rate": self.sample_rate, "steps": steps,
                "epsilon": self.epsilon(steps), "accountant": ACCOUNTANT,
                "sampling": "shuffled fixed-size batches (accounted as Poisson sampling at sample_rate)"}

    def close(self) -> None:
        """Remove Opacus's hooks and what it set on the weights and layers: the model is plain again
        (a federated client trains the same model object again next round)."""
        for hook in self._hooks:
            hook.remove()
        self.model.cleanup()
        for p in self.names:
            for attr in ("summed_grad", "grad_sample"):
                if hasattr(p, attr):
                    delattr(p, attr)
        for m in self.model._module.modules():
            for attr in ("activations", "max_batch_len"):
                if attr in m.__dict__:
                    delattr(m, attr)
