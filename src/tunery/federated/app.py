"""tunery's Flower apps: the ServerApp and the ClientApp that Flower's Deployment Engine runs
(the small app folder `tunery federate` writes points its components here). Thin adapters between
Flower's messages and federated/server.py, federated/client.py.

A client's node config (`flower-supernode --node-config`) holds `data-path` (its own labelled file),
`name` (shown in the run's records) and `partition-id`; `fault` (sign_flip[:K] or scale[:K]) makes
it send bad updates, for fault drills only.
"""

from __future__ import annotations

import json

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from tunery.federated.secagg import secagg_if_asked

NODE_STATE = "tunery"  # this client's own record in the node's run state
server_app = ServerApp()
client_app = ClientApp()


@server_app.main()
def _server_main(grid: Grid, context: Context) -> None:
    from tunery.federated.server import run_server

    run_server(grid, context)


def _node(context: Context) -> tuple[str, str, int, str | None]:
    nc = context.node_config
    if "data-path" not in nc:
        raise RuntimeError("this SuperNode has no data-path in its node config: start it with "
                           "`tunery federate CONFIG --client --data FILE`")
    pid = int(nc.get("partition-id", 0))
    fault = str(nc["fault"]) if nc.get("fault") else None
    return str(nc["data-path"]), str(nc.get("name") or f"client-{pid}"), pid, fault


@client_app.query()
def _describe(msg: Message, context: Context) -> Message:
    from tunery.config import config_from_dict
    from tunery.federated.client import describe

    path, name, _, _ = _node(context)
    cfg = config_from_dict(json.loads(str(msg.content["config"]["config"])))
    out = {**describe(cfg, path), "name": name}
    return Message(RecordDict({"description": ConfigRecord({"json": json.dumps(out)})}), reply_to=msg)


def _client(config, context: Context):
    from tunery.federated.client import get_client

    path, name, pid, fault = _node(context)
    client = get_client(str(config["config"]), path, json.loads(str(config["federation"])), name)
    return client, pid, fault, int(config.get("server-round", 0))


@client_app.train(mods=[secagg_if_asked])
def _train(msg: Message, context: Context) -> Message:
    from tunery.federated import secagg
    from tunery.federated.client import train_round
    from tunery.federated.weights import trainable_state

    legacy = secagg.is_legacy_fit(msg.content)
    if legacy:  # a SecAgg+ round: Flower's legacy fit message and reply
        arrays, config = secagg.legacy_fit_ins(msg.content)
        client, pid, fault, rnd = _client(config, context)
        start = secagg.state_from_arrays(arrays, trainable_state(client.model))
    else:
        client, pid, fault, rnd = _client(msg.content["config"], context)
        start = msg.content["arrays"].to_torch_state_dict()
    # the node's state outlives the ClientApp process of one message: it counts the run's DP-SGD steps
    mine = context.state.config_records.get(NODE_STATE)
    state, metrics = train_round(client, start, server_round=rnd, partition=pid, fault=fault,
                                 dp_steps=int(mine["dp-steps"]) if mine is not None else 0)
    if "dp-steps" in metrics:
        context.state.config_records[NODE_STATE] = ConfigRecord({"dp-steps": int(metrics["dp-steps"])})
    if legacy:
        return Message(secagg.legacy_fit_res(state, int(metrics["num-examples"]), metrics,
                                             client.cfg.federated.secagg_clip), reply_to=msg)
    return Message(RecordDict({"arrays": ArrayRecord(torch_state_dict=state), "metrics": MetricRecord(metrics)}),
                   reply_to=msg)


@client_app.evaluate()
def _evaluate(msg: Message, context: Context) -> Message:
    from tunery.federated.client import evaluate_round

    client, _, _, _ = _client(msg.content["config"], context)
    metrics = evaluate_round(client, msg.content["arrays"].to_torch_state_dict())
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
