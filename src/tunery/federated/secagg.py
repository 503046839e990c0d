"""Secure aggregation (`federated.secure_aggregation`): Flower's SecAgg+ (Bell et al., CCS 2020), so
the server learns the weighted sum of the clients' updates and never one client's update.

Flower 1.32 implements SecAgg+ for its legacy strategy interface only: the server side is
`SecAggPlusWorkflow`, which drives four message exchanges per round (setup, share keys, collect
masked vectors, unmask) and hands the unmasked weighted mean to a legacy strategy's `aggregate_fit`;
the client side is `secaggplus_mod`, which answers three of the exchanges itself and, in the third,
calls the ClientApp with a legacy fit message and masks the parameters of its legacy fit reply. This
module adapts tunery to that: on the server a round loop over the workflow with a `LegacyContext`
(the legacy FedAvg, FedProx or FedAdam, a client manager holding the connected clients that passed
their data checks), on the client the conversions between tensors by name and the legacy
`Parameters` list (both sides order the tensors as `trainable_state` does).

What a client sends is masked with pairwise one-time pads that cancel in the sum, plus a private mask
whose seed is secret-shared among the others, so a client that drops after sending can be unmasked
and one that drops before is left out (its pairwise masks removed from the shares of its
neighbours). Limits (docs/federated.md): values are clipped to [-secagg_clip, secagg_clip] and
quantised to 2^22 steps over that range after weighting (a client raises an error rather than be
clipped); at least `secagg_threshold` of the sampled clients must stay to the end of a round; with two
clients each can infer the other's update from the new global model; the per-client metrics (loss,
validation score, rows) are still sent in the clear; robust strategies and server-side DP need each
update and are refused with it.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from tunery.errors import TuneryError

log = logging.getLogger(__name__)

SECAGG_RECORD = "secaggplus_configs"  # flwr.common.secure_aggregation.secaggplus_constants.RECORD_KEY_CONFIGS
FIT_PARAMETERS = "fitins.parameters"  # a legacy fit message, as SecAggPlusWorkflow sends it


def threshold(fed_cfg, sampled: int) -> int:
    """Shares needed to unmask a client: federated.secagg_threshold, or a majority of those sampled."""
    t = fed_cfg.secagg_threshold or sampled // 2 + 1
    return max(2, min(t, sampled))


def secure_rounds(grid, context, fed_cfg, initial: dict, round_config: Callable[[int], dict], nodes: list[int],
                  rows: dict[int, int], after_round: Callable[[int, Any], None]) -> dict:
    """`fed_cfg.rounds` rounds of SecAgg+ from the tensors `initial`, among `nodes` (those still
    connected each round); `round_config(r)` is the config each client gets in round r,
    `after_round(r, arrays)` is called once round r has aggregated, with its tensors (an ArrayRecord). Returns the final tensors by name."""
    import torch
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat
    from flwr.app import ArrayRecord, ConfigRecord
    from flwr.server import ServerConfig, SimpleClientManager
    from flwr.server.compat.grid_client_proxy import GridClientProxy
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

    from tunery.federated.server import sampled_per_round

    keys = list(initial)
    params = ndarrays_to_parameters([t.detach().cpu().float().numpy() for t in initial.values()])
    strategy = _legacy_strategy(fed_cfg, params, round_config)
    manager = SimpleClientManager()
    ctx = LegacyContext(context, config=ServerConfig(num_rounds=fed_cfg.rounds), strategy=strategy,
                        client_manager=manager)
    ctx.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(params, True)
    run_id = grid.run.run_id
    proxies: dict[int, GridClientProxy] = {}

    def current() -> dict:
        arrays = parameters_to_ndarrays(compat.arrayrecord_to_parameters(ctx.state.array_records[MAIN_PARAMS_RECORD],
                                                                         keep_input=True))
        return {k: torch.from_numpy(a.copy()).to(initial[k].dtype) for k, a in zip(keys, arrays, strict=True)}

    for rnd in range(1, fed_cfg.rounds + 1):
        online = set(grid.get_node_ids()) & set(nodes)
        for node in set(proxies) - online:
            manager.unregister(proxies.pop(node))
        for node in online - set(proxies):
            proxies[node] = GridClientProxy(node, grid, run_id)
            manager.register(proxies[node])
        if len(online) < fed_cfg.min_clients:  # the legacy client manager would wait for them for a day
            raise TuneryError(f"round {rnd}: {len(online)} clients are connected, federated.min_clients is "
                              f"{fed_cfg.min_clients}")
        sampled = sampled_per_round(fed_cfg, len(online))
        # as shares of those sampled (Flower takes an int only above 2 and below the share count): every
        # sampled client holds a share of every other's secrets, threshold(...) of them unmask one
        workflow = SecAggPlusWorkflow(num_shares=1.0, reconstruction_threshold=threshold(fed_cfg, sampled) / sampled,
                                      max_weight=float(max(sum(rows.get(n, 0) for n in online), 1)),
                                      clipping_range=fed_cfg.secagg_clip, timeout=fed_cfg.round_timeout)
        ctx.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: rnd})
        strategy.aggregated = False
        workflow(grid, ctx)
        if not strategy.aggregated:
            raise TuneryError(f"round {rnd}: secure aggregation halted (fewer than the "
                              f"{threshold(fed_cfg, sampled)} clients secagg_threshold needs answered each of its "
                              f"four steps); the server log says at which step")
        state = current()
        after_round(rnd, ArrayRecord(torch_state_dict=state))
    return state


def _legacy_strategy(fed_cfg, params, round_config):
    """Flower's legacy FedAvg, FedAvgM, FedProx or FedAdam (what SecAggPlusWorkflow drives), noting each aggregation."""
    from flwr.server import strategy as legacy

    common = dict(fraction_fit=fed_cfg.fraction, fraction_evaluate=0.0, min_fit_clients=fed_cfg.min_clients,
                  min_evaluate_clients=fed_cfg.min_clients, min_available_clients=fed_cfg.min_clients,
                  on_fit_config_fn=round_config, initial_parameters=params)
    base = {"fedavg": legacy.FedAvg, "fedavgm": legacy.FedAvgM, "fedprox": legacy.FedProx,
            "fedadam": legacy.FedAdam}[fed_cfg.strategy]
    extra = {"fedprox": {"proximal_mu": fed_cfg.mu}, "fedadam": {"eta": fed_cfg.server_step},
             "fedavgm": {"server_learning_rate": fed_cfg.server_step, "server_momentum": fed_cfg.server_momentum},
             }.get(fed_cfg.strategy, {})

    class Noting(base):
        aggregated = False

        def aggregate_fit(self, server_round, results, failures):
            out = super().aggregate_fit(server_round, results, failures)
            self.aggregated = out[0] is not None
            return out

    return Noting(**common, **extra)


# ---------------------------------------------------------------------------------------------
# the client side


def secagg_if_asked(msg, context, call_next):
    """A ClientApp mod: Flower's secaggplus_mod for the messages of a SecAgg+ round, nothing otherwise
    (secaggplus_mod alone would refuse every train message that is not part of one)."""
    from flwr.client.mod import secaggplus_mod

    if SECAGG_RECORD in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def is_legacy_fit(content) -> bool:
    return FIT_PARAMETERS in content.array_records


def legacy_fit_ins(content) -> tuple[list, dict]:
    """(the arrays in order, the config) of a legacy fit message."""
    from flwr.common import parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    ins = compat.recorddict_to_fitins(content, keep_input=True)
    return parameters_to_ndarrays(ins.parameters), dict(ins.config)


def state_from_arrays(arrays: list, like: dict) -> dict:
    """Tensors by name from arrays in the order of `like` (this client's trainable_state)."""
    import torch

    if len(arrays) != len(like):
        raise TuneryError(f"the server sent {len(arrays)} tensors, this client's model has {len(like)}: the "
                          f"federation's model differs from this client's (same backbone and model settings?)")
    out = {}
    for (k, ref), a in zip(like.items(), arrays):
        if tuple(a.shape) != tuple(ref.shape):
            raise TuneryError(f"tensor {k}: the server sent shape {tuple(a.shape)}, this client's model has "
                              f"{tuple(ref.shape)}")
        out[k] = torch.from_numpy(a.copy()).to(ref.dtype)
    return out


def legacy_fit_res(state: dict, num_examples: int, metrics: dict, clip: float):
    """A legacy fit reply's RecordDict holding `state` (what secaggplus_mod masks)."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from flwr.compat.common import recorddict_compat as compat

    arrays = [t.detach().cpu().float().numpy() for t in state.values()]
    worst = max((float(abs(a).max()) for a in arrays if a.size), default=0.0)
    if worst > clip:
        name = next(k for k, a in zip(state, arrays) if a.size and float(abs(a).max()) == worst)
        raise TuneryError(f"tensor {name} holds a value of magnitude {worst:.4g}, outside federated.secagg_clip "
                          f"{clip:g}: secure aggregation would clip it; raise secagg_clip above {worst:.4g}")
    res = FitRes(status=Status(code=Code.OK, message="ok"), parameters=ndarrays_to_parameters(arrays),
                 num_examples=int(num_examples), metrics=metrics)
    return compat.fitres_to_recorddict(res, keep_input=False)
