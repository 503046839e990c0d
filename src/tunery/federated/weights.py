"""What a federated client and the server exchange: the model's trainable tensors, by name.

With `federated.updates: lora` the model is built with LoRA adapters (model.method lora), so the
trainable tensors are the adapters and the classification head: a few hundred KB instead of the
whole backbone. With `full` every weight is trainable and sent. Plain functions on a torch model.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from tunery.errors import ConfigError


def trainable_state(model: torch.nn.Module) -> OrderedDict[str, torch.Tensor]:
    """The trainable tensors of `model`, by parameter name, detached float32 copies on the CPU."""
    return OrderedDict((name, p.detach().to("cpu", torch.float32).clone())
                       for name, p in model.named_parameters() if p.requires_grad)


def load_trainable(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy `state` (from `trainable_state` of a model built from the same config) into `model`."""
    params = dict(model.named_parameters())
    mine = [n for n, p in params.items() if p.requires_grad]
    if sorted(mine) != sorted(state):
        missing, extra = sorted(set(mine) - set(state)), sorted(set(state) - set(mine))
        raise ConfigError(f"the federated update does not fit this model: {len(missing)} tensors missing "
                          f"(e.g. {missing[:2]}), {len(extra)} unknown (e.g. {extra[:2]}); the server and every "
                          "client must build the model from the same config (backbone, model.method, LoRA)")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(torch.as_tensor(value).to(params[name].dtype))


def state_bytes(state: dict[str, torch.Tensor]) -> int:
    """Bytes of the tensors' data (what a round sends per client, each way)."""
    return int(sum(t.numel() * t.element_size() for t in state.values()))


def proximal_term(model: torch.nn.Module, anchor: dict[str, torch.Tensor], mu: float) -> torch.Tensor:
    """FedProx's (mu / 2) * ||w - w_global||^2 over the trainable tensors (Li et al., 2020)."""
    params = dict(model.named_parameters())
    total = None
    for name, ref in anchor.items():
        p = params[name]
        term = (p.float() - ref.to(p.device)).pow(2).sum()
        total = term if total is None else total + term
    return 0.5 * mu * total if total is not None else torch.zeros(())


FAULTS = {"sign_flip": 1.0, "scale": 10.0, "noise": 1.0}  # kind: default factor


def faulty_update(local: dict[str, torch.Tensor], start: dict[str, torch.Tensor], fault: str, *, seed: int = 0
                  ) -> OrderedDict[str, torch.Tensor]:
    """A bad client's update, for fault drills (`tunery federate --fault NAME=SPEC`): `sign_flip:K`
    sends start - K * (local - start), `scale:K` start + K * (local - start), `noise:S` start plus
    Gaussian noise of standard deviation S (seeded): a client sending garbage."""
    kind, _, factor = fault.partition(":")
    if kind not in FAULTS:
        raise ConfigError(f"fault {fault!r}: expected sign_flip[:K], scale[:K] or noise[:S]")
    try:
        k = float(factor) if factor else FAULTS[kind]
    except ValueError:
        raise ConfigError(f"fault {fault!r}: the factor after ':' must be a number, e.g. sign_flip:5") from None
    if kind == "noise":
        gen = torch.Generator().manual_seed(seed)
        return OrderedDict((n, start[n] + k * torch.randn(start[n].shape, generator=gen)) for n in local)
    sign = -k if kind == "sign_flip" else k
    return OrderedDict((n, start[n] + sign * (local[n] - start[n])) for n in local)
