"""Federated fine-tuning (issue 15): tunery's Flower apps on real Flower processes (one SuperLink,
one SuperNode per client, `flwr run`, all on 127.0.0.1), and the parts they are built of.

A Flower SuperNode starts a fresh ClientApp process for every message (Flower's subprocess
isolation), and idle SuperNodes poll every 3 s, so a round costs seconds even for a tiny model:
one federation with real processes is shared by the tests that read its result."""

from __future__ import annotations

import json
import math
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import make_dataset

pytest.importorskip("flwr", reason="federated training needs the federated extra: pip install 'tunery[federated]'")

# Logs every file the Flower ServerApp process opens (an audit hook, loaded by site from PYTHONPATH).
AUDIT = textwrap.dedent('''
    import os, sys
    _argv = getattr(sys, "orig_argv", sys.argv) or [""]
    if any(os.path.basename(str(a)).startswith("flwr-serverapp") for a in _argv[:2]):
        _log, _busy = os.environ["TUNERY_TEST_OPENED"], [False]
        def _hook(event, args):
            if event != "open" or _busy[0] or not isinstance(args[0], (str, bytes, os.PathLike)):
                return
            _busy[0] = True
            try:
                with open(_log, "a", encoding="utf-8") as f:
                    f.write(os.fsdecode(args[0]) + "\\n")
            finally:
                _busy[0] = False
        sys.addaudithook(_hook)
''')


def _config(tmp_path, backbone, files: list[str], **federated) -> dict:
    return {"name": "fed", "output_dir": str(tmp_path / "runs"),
            "data": {"train": files[0], "max_length": 32},
            "model": {"backbone": backbone},
            "train": {"progress": False, "batch_size": 16, "lr": 5e-3, "seed": 0},
            "federated": {"client_data": files, "rounds": 2, "local_steps": 6, "round_timeout": 120,
                          **federated}}


def _kill_when_training_starts(log, name: str, killed: list, deadline: float) -> None:
    """SIGKILL client `name`'s SuperNode (its process group: the ClientApp with it) as soon as its
    log shows a train message arriving: a client that dies mid-round."""
    import os
    import signal
    import time
    from pathlib import Path

    while time.time() < deadline:
        if log.exists() and "Receiving: train message" in log.read_text(errors="replace"):
            for proc in Path("/proc").glob("[0-9]*"):
                try:
                    cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if "flower-supernode" in cmd and f'name="{name}"' in cmd:
                    os.killpg(int(proc.name), signal.SIGKILL)
                    killed.append(time.time())
                    return
        time.sleep(0.2)


@pytest.fixture(scope="module")
def federation(tmp_path_factory, tiny_backbone):
    """Four clients on real Flower processes, 2 rounds of FedAvg with LoRA updates: client-0 and
    client-1 with good data; client-2's file fails tunery's checks (it sits the run out); client-3
    is killed when its first train message arrives (the round completes without it)."""
    import threading
    import time

    from tunery.config import config_from_dict
    from tunery.federated.run import federate
    from tunery.store import Store

    tmp = tmp_path_factory.mktemp("federation")
    data = make_dataset("binary", n=240)
    files = []
    for i in (0, 1, 3):  # client-2's file fails the checks; client-3 is the one killed
        files.append(str(tmp / f"client-{i}.csv"))
        data.iloc[80 * len(files) - 80:80 * len(files)].to_csv(files[-1], index=False)
    files.insert(2, str(tmp / "client-2.csv"))
    pd.DataFrame({"review": ["only text, no label column"] * 20}).to_csv(files[2], index=False)
    site = tmp / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(AUDIT)
    opened = tmp / "opened.txt"
    mp = pytest.MonkeyPatch()
    mp.setenv("PYTHONPATH", str(site))
    mp.setenv("TUNERY_TEST_OPENED", str(opened))
    store = Store(f"sqlite:///{tmp / 'runs.db'}")
    killed: list = []
    killer = threading.Thread(target=_kill_when_training_starts, daemon=True, args=(
        tmp / "runs" / "fed.partial" / "flower" / "logs" / "client-3.log", "client-3", killed, time.time() + 600))
    killer.start()
    try:
        run = federate(config_from_dict(_config(tmp, tiny_backbone, files, round_timeout=90)), store=store)
    finally:
        mp.undo()
    assert killed, "client-3 was never killed"
    return run, files, opened, store


def test_a_federation_of_real_flower_processes_gives_a_run_that_loads_and_predicts(federation):
    import tunery

    run, files, _, store = federation
    meta = json.loads((run / "tunery.json").read_text())
    assert meta["federated"] is True and meta["task"] == "classification"
    assert meta["label_names"] == ["negative", "positive"] and meta["text_column"] == "review"
    predictions = tunery.load(run).predict(["a great film", "a dull film"])
    assert len(predictions) == 2 and {p["label"] for p in predictions} <= {"negative", "positive"}
    assert store.get_run("fed").status == "completed"
    assert store.get_run("fed").task == "classification"
    assert "Federated run fed" in (run / "report.html").read_text()


def test_tunery_serve_serves_the_federated_model(federation):
    import time

    from fastapi.testclient import TestClient

    from tunery.serve.app import create_app
    from tunery.serve.keys import create_key

    run, _, _, store = federation
    key, _ = create_key(store, tenant="clinic", plan="pro")
    with TestClient(create_app({"fed": run}, store=store)) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").json()
            time.sleep(0.05)
        r = client.post("/v1/models/fed/predict", json={"texts": ["a great film"]},
                        headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["label"] in ("negative", "positive")


def test_the_run_records_each_round_who_trained_who_sat_out_and_the_bytes(federation):
    run, _, _, _ = federation
    m = json.loads((run / "metrics.json").read_text())["federated"]
    assert m["trained"] == ["client-0", "client-1", "client-3"] and m["strategy"] == "fedavg" and m["updates"] == "lora"
    assert list(m["sat_out"]) == ["client-2"] and "label" in m["sat_out"]["client-2"]
    assert m["dropped"] == ["client-3"]
    rounds = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1, 2]  # 0: the initial model, scored by round 1's clients
    first = rounds[1]  # client-3 was sent the global model and died: the round went on with the others
    assert first["clients_trained"] == ["client-0", "client-1"] and first["dropped"] == ["client-3"]
    assert first["bytes_sent"] == 3 * m["update_bytes"] and first["bytes_received"] == 2 * m["update_bytes"]
    last = rounds[2]  # trained by the two left; the final model sent to both to be scored
    assert last["clients_trained"] == ["client-0", "client-1"] and last["dropped"] == []
    assert last["bytes_sent"] == 4 * m["update_bytes"] and last["bytes_received"] == 2 * m["update_bytes"]
    for r in rounds:
        for c in ("client-0", "client-1"):
            assert 0 <= r["per_client"][c]["eval_metric"] <= 1
            assert r["round"] == 0 or math.isfinite(r["per_client"][c]["train_loss"])
    assert m["final_eval_metric"] == last["eval_metric"]
    best = max(r["eval_metric"] for r in rounds[1:])  # the model kept: the first round that scored best
    assert m["keep"] == "best" and m["kept_eval_metric"] == best
    assert m["kept_round"] == next(r["round"] for r in rounds[1:] if r["eval_metric"] == best)
    # LoRA updates: the adapters and the head, far fewer bytes than the model
    from safetensors import safe_open

    with safe_open(str(run / "model" / "model.safetensors"), "pt") as f:
        full = sum(f.get_tensor(k).numel() * 4 for k in f.keys())
    assert m["update_bytes"] * 5 < full


def test_the_server_process_never_opens_a_clients_file(federation):
    run, files, opened, _ = federation
    seen = opened.read_text().splitlines()
    assert any(p.endswith(("report.html", "log.jsonl")) for p in seen), "the audit hook missed the server's writes"
    assert not any(p.endswith(f) or p == f for p in seen for f in files)
    assert not any("client-" in p and p.endswith(".csv") for p in seen)


# -- in one process: the parts ---------------------------------------------------------------


def _clients(tmp_path, backbone, n=3, updates="full"):
    """Three in-process clients of one federation (tunery's client code, no Flower daemons)."""
    from tunery.config import config_from_dict
    from tunery.federated.client import get_client
    from tunery.federated.run import resolve_federated
    from tunery.federated.server import federation_task
    from tunery.federated.weights import trainable_state
    from tunery.pipeline import build_model

    tmp_path.mkdir(parents=True, exist_ok=True)
    data = make_dataset("binary", n=80 * n, seed=1)
    files = []
    for i in range(n):
        files.append(str(tmp_path / f"c{i}.csv"))
        data.iloc[i::n].to_csv(files[-1], index=False)
    cfg = resolve_federated(config_from_dict(_config(tmp_path, backbone, files, updates=updates, local_steps=30)))
    cfg_json = json.dumps(cfg.to_dict())
    fed = {"task": "classification", "labels": ["negative", "positive"]}
    clients = [get_client(cfg_json, f, fed, f"c{i}") for i, f in enumerate(files)]
    model = build_model(clients[0].prepared.backbone_path, federation_task(fed), fed["labels"], cfg)
    return cfg, clients, trainable_state(model), fed


def test_robust_aggregation_holds_against_a_client_sending_garbage_where_fedavg_does_not(tmp_path, tiny_backbone):
    """Four clients train a round from a global model that already classifies well; one sends
    noise instead of its update. Flower's own FedAvg, trimmed mean and Krum aggregate (on replies
    built in this process: the Flower processes are tested above); accuracy of each global model
    on held-out rows beside the starting model's."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.serverapp import strategy as S

    from tunery.federated import client as fc
    from tunery.federated.weights import load_trainable

    test = make_dataset("binary", n=60, seed=7)
    cfg, clients, state, fed = _clients(tmp_path, tiny_backbone, n=4)
    # a global model that has learned the task: 100 steps on 240 rows of its own
    make_dataset("binary", n=240, seed=3).to_csv(tmp_path / "warm.csv", index=False)
    warm = fc.get_client(json.dumps(cfg.to_dict()), str(tmp_path / "warm.csv"), fed, "warm")
    warm.cfg = warm.cfg.model_copy(update={"federated": warm.cfg.federated.model_copy(update={"local_steps": 100})})
    start, _ = fc.train_round(warm, state, server_round=0, partition=9)
    for c in clients:  # a round of 5 steps at a rate that refines it (Adam's first steps move every weight by ~lr)
        c.cfg = c.cfg.model_copy(update={"federated": c.cfg.federated.model_copy(update={"local_steps": 5}),
                                         "train": c.cfg.train.model_copy(update={"lr": 2e-4})})

    def accuracy_of(state) -> float:
        model = clients[0].model
        load_trainable(model, state)
        with torch.no_grad():
            enc = clients[0].prepared.tokenizer(test["review"].tolist(), padding=True, return_tensors="pt")
            pred = model.eval()(**enc).logits.argmax(-1).numpy()
        return float((pred == (test["label"] == "positive").to_numpy()).mean())

    accuracy, aggregate = {"start": accuracy_of(start)}, {}
    for name, strategy in [("fedavg", S.FedAvg()), ("trimmed_mean", S.FedTrimmedAvg(beta=0.25)),
                           ("krum", S.Krum(num_malicious_nodes=1))]:
        out = RecordDict({"arrays": ArrayRecord(torch_state_dict=start), "config": ConfigRecord({})})
        replies = []
        for i, c in enumerate(clients):
            sent, metrics = fc.train_round(c, start, server_round=1, partition=i,
                                           fault="noise:2" if i == 3 else None)
            replies.append(Message(RecordDict({"arrays": ArrayRecord(torch_state_dict=sent),
                                               "metrics": MetricRecord(metrics)}),
                                   reply_to=Message(out, dst_node_id=i + 1, message_type="train")))
        arrays, _ = strategy.aggregate_train(1, replies)
        aggregate[name] = {k: torch.as_tensor(np.asarray(v)) for k, v in arrays.to_torch_state_dict().items()}
        accuracy[name] = accuracy_of(aggregate[name])
    # what the round gives without the attacker: FedAvg of the three honest replies
    honest = {k: torch.as_tensor(np.asarray(v)) for k, v in
              S.FedAvg().aggregate_train(1, replies[:3])[0].to_torch_state_dict().items()}
    accuracy["honest"] = accuracy_of(honest)

    def distance(a, b) -> float:
        return sum(float((a[k].float() - b[k].float()).pow(2).sum()) for k in b) ** 0.5

    step = distance(start, honest)  # how far an honest round moves the model
    away = {name: distance(state, honest) / step for name, state in aggregate.items()}
    print(accuracy, away)
    assert accuracy["start"] >= 0.85
    # FedAvg takes the garbage in: hundreds of honest steps away, and the model no longer classifies
    assert away["fedavg"] > 100 and accuracy["fedavg"] <= accuracy["start"] - 0.3
    # the robust rules stay within an honest step or two of the honest round, and keep classifying.
    # Their accuracy is not held to the start's: Krum keeps one client's update, and one round of a
    # tiny random backbone's client moves held-out accuracy by up to 0.15 (1.0 -> 0.85 in bf16).
    assert away["trimmed_mean"] <= 2 and away["krum"] <= 2
    assert accuracy["trimmed_mean"] >= 0.75 and accuracy["krum"] >= 0.75


def test_fedprox_pulls_local_training_toward_the_global_weights(tmp_path, tiny_backbone):
    from tunery.federated.weights import proximal_term

    model = torch.nn.Linear(3, 2)
    anchor = {k: v.detach().clone() for k, v in model.named_parameters()}
    assert float(proximal_term(model, anchor, 0.5)) == 0.0
    with torch.no_grad():
        model.weight.add_(1.0)
    term = proximal_term(model, anchor, 0.5)
    assert float(term) == pytest.approx(0.25 * 6)  # (mu/2) * ||w - w0||^2 = 0.25 * (6 ones)
    term.backward()
    assert torch.allclose(model.weight.grad, torch.full((2, 3), 0.5))  # mu * (w - w0)


def test_a_round_with_fewer_updates_than_min_clients_stops_the_run_naming_each_failure():
    from tunery.errors import TuneryError
    from tunery.federated.server import enough_updates

    ok = {"eval-metric": 0.8, "num-examples": 10}
    enough_updates(2, {"client-0": ok, "client-1": ok, "client-2": {"error": "killed"}}, min_clients=2)
    with pytest.raises(TuneryError, match=r"round 2: 0 of 2 clients sent an update, fewer than federated.min_clients 2"
                       r".*client-0: ImportError: no module.*client-1: no reply within 60 s"):
        enough_updates(2, {"client-1": {"error": "no reply within 60 s (dropped)"},
                           "client-0": {"error": "ImportError: no module"}}, min_clients=2)


def test_faulty_updates_and_mismatched_tensors():
    from tunery.errors import ConfigError
    from tunery.federated.weights import faulty_update, load_trainable

    start, local = {"w": torch.zeros(2)}, {"w": torch.ones(2)}
    assert faulty_update(local, start, "sign_flip:3")["w"].tolist() == [-3.0, -3.0]
    assert faulty_update(local, start, "scale:10")["w"].tolist() == [10.0, 10.0]
    noise = faulty_update({"w": torch.zeros(10_000)}, {"w": torch.zeros(10_000)}, "noise:2", seed=1)["w"]
    assert float(noise.std()) == pytest.approx(2.0, rel=0.05)
    assert torch.equal(noise, faulty_update({"w": torch.zeros(10_000)}, {"w": torch.zeros(10_000)}, "noise:2",
                                            seed=1)["w"])  # seeded
    with pytest.raises(ConfigError, match="sign_flip"):
        faulty_update(local, start, "flip")
    with pytest.raises(ConfigError, match="same config"):
        load_trainable(torch.nn.Linear(2, 2), {"nope": torch.zeros(2)})


def test_clients_that_disagree_on_the_task_are_named_and_regression_targets_pool_exactly():
    from tunery.config import config_from_dict
    from tunery.errors import TuneryError
    from tunery.federated.server import merge_descriptions

    cfg = config_from_dict({"data": {"train": "x"}, "federated": {"clients": 2}})
    cols = {"text": "text", "text_pair": None, "label": "y", "delimiter": None}
    with pytest.raises(TuneryError, match="classification: a; regression: b"):
        merge_descriptions(cfg, {"a": {"ok": True, "task": "classification", "labels": ["x"], "rows": 3, "columns": cols},
                                 "b": {"ok": True, "task": "regression", "labels": [], "rows": 3, "columns": cols}})
    ys = {"a": [1.0, 2.0, 3.0], "b": [10.0, 20.0]}
    fed = merge_descriptions(cfg, {k: {"ok": True, "task": "regression", "labels": [], "rows": len(v), "columns": cols,
                                       "label_sum": sum(v), "label_sumsq": sum(x * x for x in v)}
                                   for k, v in ys.items()} | {"c": {"ok": False, "error": "bad"}})
    pooled = ys["a"] + ys["b"]
    assert fed["label_mean"] == pytest.approx(np.mean(pooled)) and fed["label_scale"] == pytest.approx(np.std(pooled, ddof=1))
    fed = merge_descriptions(cfg, {"a": {"ok": True, "task": "classification", "labels": ["b", "a"], "rows": 3,
                                         "columns": cols},
                                   "b": {"ok": True, "task": "classification", "labels": ["c"], "rows": 3,
                                         "columns": cols}})
    assert fed["labels"] == ["a", "b", "c"]  # the union, sorted as tunery sorts labels


def test_a_client_holding_one_class_passes_its_checks_inside_a_federation(tmp_path, tiny_backbone):
    from tunery.config import config_from_dict
    from tunery.federated.client import describe

    path = tmp_path / "one.csv"
    make_dataset("binary", n=40).query("label == 'positive'").to_csv(path, index=False)
    cfg = config_from_dict({"data": {"train": str(path)}, "model": {"backbone": tiny_backbone},
                            "federated": {"clients": 2}})
    d = describe(cfg, str(path))
    assert d["ok"] and d["labels"] == ["positive"] and any("other clients" in w for w in d["warnings"])
    from tunery.pipeline import prepare_run
    from tunery.errors import DataError

    with pytest.raises(DataError, match="only one class"):  # alone, it is still refused
        prepare_run(cfg)


def test_client_level_dp_clips_each_update_and_adds_noise_of_the_stated_scale():
    """Flower's server-side fixed-clipping wrapper as tunery configures it: an update 100x the clip
    norm counts for clip / m in the mean, and the noise on the mean has std z * clip / m."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

    from tunery.config import config_from_dict
    from tunery.federated.server import make_strategy

    class Nodes:  # what the strategy asks of a Grid when it samples the round's clients
        def get_node_ids(self):
            return [1, 2, 3, 4]

    size = 200_000
    direction = np.ones(size, dtype=np.float32) / math.sqrt(size)
    for z, clip in ((0.5, 1.0), (1e-4, 2.0)):
        fed = config_from_dict({"data": {"train": "x"}, "federated": {
            "clients": 4, "min_clients": 4, "dp_noise": z, "dp_clip": clip}}).federated
        strategy = make_strategy(fed, 4)
        start = ArrayRecord([np.zeros(size, dtype=np.float32)])
        sent = list(strategy.configure_train(1, start, ConfigRecord(), Nodes()))
        assert len(sent) == 4
        rng = np.random.default_rng(0)  # three small honest updates (an exactly zero one divides by 0 in Flower)
        updates = [1e-5 * rng.standard_normal(size).astype(np.float32) for _ in range(3)] + [100 * clip * direction]
        replies = [Message(RecordDict({"arrays": ArrayRecord([u.copy()]),
                                       "metrics": MetricRecord({"num-examples": 10 * (i + 1), "dp-weight": 1.0})}),
                           reply_to=msg) for i, (u, msg) in enumerate(zip(updates, sent))]
        arrays, _ = strategy.aggregate_train(1, replies)
        result = arrays.to_numpy_ndarrays()[0]
        along = float(result @ direction)  # the big update, clipped to `clip`, a quarter of the mean (equal weights)
        noise = result - along * direction
        if z < 0.01:
            assert along == pytest.approx(clip / 4, abs=1e-3)
        else:
            assert float(noise.std()) == pytest.approx(z * clip / 4, rel=0.03)


def test_fedavgm_steps_along_the_mean_update_with_momentum_across_rounds():
    """Every client sends the same update d each round: FedAvg would move the global model by d a
    round; FedAvgM (server_lr 1, momentum 0.9, the defaults) by d, then 1.9 d, then 2.71 d."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

    from tunery.config import config_from_dict
    from tunery.federated.server import make_strategy

    class Nodes:
        def get_node_ids(self):
            return [1, 2, 3]

    fed = config_from_dict({"data": {"train": "x"}, "federated": {"clients": 3, "strategy": "fedavgm"}}).federated
    assert (fed.server_step, fed.server_momentum) == (1.0, 0.9)
    strategy = make_strategy(fed, 3)
    d = np.linspace(-1, 1, 50, dtype=np.float32)
    arrays = ArrayRecord([np.zeros(50, dtype=np.float32)])
    moved = []
    for rnd in (1, 2, 3):
        start = arrays.to_numpy_ndarrays()[0]
        sent = list(strategy.configure_train(rnd, arrays, ConfigRecord(), Nodes()))
        replies = [Message(RecordDict({"arrays": ArrayRecord([start + d]),
                                       "metrics": MetricRecord({"num-examples": 10 * (i + 1)})}), reply_to=msg)
                   for i, msg in enumerate(sent)]
        arrays, _ = strategy.aggregate_train(rnd, replies)
        moved.append(float((arrays.to_numpy_ndarrays()[0] - start) @ d / (d @ d)))
    assert moved == pytest.approx([1.0, 1.9, 2.71], abs=1e-5)
    adam = config_from_dict({"data": {"train": "x"}, "federated": {"clients": 3, "strategy": "fedadam"}}).federated
    assert adam.server_step == 0.01
    assert config_from_dict({"data": {"train": "x"}, "federated": {"clients": 3}}).federated.server_step is None


def test_client_epsilon_follows_the_gaussian_mechanism():
    from tunery.federated.server import client_epsilon

    delta = 1e-5
    eps = client_epsilon(1.0, 1.0, 10, delta)
    # every client every round: RDP of the Gaussian mechanism is T * a / (2 z^2); the classic conversion
    # eps = min_a RDP(a) + log(1/delta) / (a - 1) bounds what the accountant reports (it converts more tightly)
    classic = min(10 * a / 2 + math.log(1 / delta) / (a - 1) for a in np.linspace(1.01, 64, 20000))
    assert 0.8 * classic <= eps <= classic
    assert client_epsilon(2.0, 1.0, 10, delta) < eps < client_epsilon(1.0, 1.0, 20, delta)
    assert client_epsilon(1.0, 0.25, 10, delta) < eps  # sampling a quarter of the clients each round amplifies
    assert client_epsilon(1.0, 1.0, 0, delta) == 0.0


def test_dp_is_refused_where_its_noise_would_not_be_calibrated():
    from tunery.config import config_from_dict

    with pytest.raises(Exception, match="dp_noise works with strategy fedavg or fedprox"):
        config_from_dict({"data": {"train": "x"}, "federated": {"clients": 5, "strategy": "krum", "dp_noise": 1.0}})
    with pytest.raises(Exception, match="secure_aggregation works with strategy fedavg, fedavgm, fedprox or fedadam"):
        config_from_dict({"data": {"train": "x"}, "federated": {"clients": 5, "strategy": "krum",
                                                                "secure_aggregation": True}})
    with pytest.raises(Exception, match="secure_aggregation and federated.dp_noise do not go together"):
        config_from_dict({"data": {"train": "x"}, "federated": {"clients": 5, "dp_noise": 1.0,
                                                                "secure_aggregation": True}})


def _wire(m):
    """The message as the other side gets it: serialised and parsed, as Flower's transport does."""
    from flwr.common.serde import message_from_proto, message_to_proto, recorddict_from_proto, recorddict_to_proto

    out = message_from_proto(message_to_proto(m))
    if not m.has_error():
        out.content = recorddict_from_proto(recorddict_to_proto(m.content))
    return out


class LocalGrid:
    """Flower's Grid within this process: each message, serialised and parsed, goes to tunery's
    ClientApp with its node's Context (kept across messages, as a SuperNode keeps it). `drop` =
    {SecAgg+ stage: node}: that node answers nothing from that stage on (it died there)."""

    def __init__(self, contexts: dict, drop: dict | None = None) -> None:
        from types import SimpleNamespace

        self.contexts, self.drop, self.dead = contexts, drop or {}, set()
        self.run = SimpleNamespace(run_id=1)
        self.replies: list = []  # (stage, node, reply) as the server got them

    def get_node_ids(self):
        return [n for n in self.contexts if n not in self.dead]

    def send_and_receive(self, messages, *, timeout=None):
        import uuid

        from tunery.federated.app import client_app
        from tunery.federated.server import _secagg_stage

        replies = []
        for m in messages:
            m.metadata.__dict__.update(_run_id=1, _src_node_id=1, _message_id=str(uuid.uuid4()))
            node, stage = m.metadata.dst_node_id, _secagg_stage(m.content)
            if self.drop.get(stage) == node:
                self.dead.add(node)
            if node not in self.dead:
                replies.append(_wire(client_app(_wire(m), self.contexts[node])))
                self.replies.append((stage, node, replies[-1]))
        return replies


def _serve_locally(tmp_path, files: list[str], cfg):
    """tunery's server over a LocalGrid of one in-process client per file; the run directory."""
    from flwr.app import Context, RecordDict

    from tunery.federated import server

    clients = {10 + i: Context(run_id=1, node_id=10 + i, node_config={"data-path": f, "name": f"c{i}",
                                                                       "partition-id": i},
                               state=RecordDict(), run_config={}) for i, f in enumerate(files)}
    work = tmp_path / "run"
    work.mkdir()
    server._serve(LocalGrid(clients), Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={
        "run-dir": str(work), "config": json.dumps(cfg.to_dict())}), work)
    return work


def test_secure_aggregation_gives_the_weighted_mean_of_the_updates_without_showing_one(tmp_path, tiny_backbone,
                                                                                        monkeypatch):
    """SecAgg+ (Flower's workflow and client mod, tunery's adapters) over three clients of which one
    dies after the key exchange: the server gets masked vectors that look nothing like the updates,
    and unmasks exactly the weighted mean of the two that finished (within the quantisation step)."""
    from flwr.app import Context, RecordDict

    from tunery.config import config_from_dict
    from tunery.federated import client as fc
    from tunery.federated import secagg, server
    from tunery.federated.run import resolve_federated

    data = make_dataset("binary", n=240, seed=1)
    files = []
    for i, n in enumerate((60, 100, 80)):  # unequal rows: the mean is weighted
        files.append(str(tmp_path / f"c{i}.csv"))
        data.iloc[sum((60, 100, 80)[:i]):sum((60, 100, 80)[:i]) + n].to_csv(files[-1], index=False)
    cfg = resolve_federated(config_from_dict(_config(tmp_path, tiny_backbone, files, rounds=1,
                                                     secure_aggregation=True)))
    clients = {10 + i: Context(run_id=1, node_id=10 + i, node_config={"data-path": f, "name": f"c{i}",
                                                                       "partition-id": i},
                               state=RecordDict(), run_config={}) for i, f in enumerate(files)}
    seen = {}
    real = secagg.secure_rounds

    def keep(*args, **kwargs):
        seen["initial"] = {k: v.clone() for k, v in args[3].items()}
        seen["final"] = real(*args, **kwargs)
        return seen["final"]

    monkeypatch.setattr(secagg, "secure_rounds", keep)
    work = tmp_path / "run"
    work.mkdir()
    grid = LocalGrid(clients, drop={"collect_masked_vectors": 12})
    server._serve(grid, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={
        "run-dir": str(work), "config": json.dumps(cfg.to_dict())}), work)

    # what each finishing client sent, trained again from the same start with the same seed
    sent, rows = [], []
    for node in (10, 11):
        c = next(c for c in fc._CLIENTS.values() if json.dumps(files[node - 10]) in c.key)
        update, metrics = fc.train_round(c, seen["initial"], server_round=1, partition=node - 10)
        sent.append(update)
        rows.append(metrics["num-examples"])
    assert rows[0] != rows[1]
    expected = {k: (rows[0] * sent[0][k] + rows[1] * sent[1][k]) / sum(rows) for k in sent[0]}
    moved = max(float((expected[k] - seen["initial"][k]).abs().max()) for k in expected)
    error = max(float((seen["final"][k] - expected[k]).abs().max()) for k in expected)
    assert moved > 1e-3 and error < 1e-4, (moved, error)

    # the server saw masked vectors only: uniform over the modulus, unrelated to the update
    (masked,) = [r for stage, node, r in grid.replies if stage == "collect_masked_vectors" and node == 10]
    assert not any(len(a) for a in masked.content.array_records.values())  # the mod cleared the plain tensors
    from flwr.common import bytes_to_ndarray
    from flwr.common.secure_aggregation.secaggplus_constants import Key
    vec = np.concatenate([bytes_to_ndarray(b).ravel() for b in
                          masked.content.config_records[secagg.SECAGG_RECORD][Key.MASKED_PARAMETERS]]).astype(float)
    plain = np.concatenate([t.numpy().ravel() for t in sent[0].values()])
    vec = vec[1:]  # the first entry is the client's weight factor
    assert vec.std() > 0.2 * 2**32 and abs(np.corrcoef(vec, plain)[0, 1]) < 0.1

    record = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()][-1]
    assert record["clients_trained"] == ["c0", "c1"] and record["dropped"] == ["c2"]
    assert record["bytes_received"] > 0 and record["per_client"]["c0"]["train_rows"] == rows[0]
    summary = json.loads((work / "metrics.json").read_text())["federated"]
    assert summary["secure_aggregation"]["clip"] == 8.0


def test_a_value_outside_the_secure_aggregation_range_is_refused_not_clipped():
    from tunery.errors import TuneryError
    from tunery.federated.secagg import legacy_fit_res, state_from_arrays

    with pytest.raises(TuneryError, match="head.weight holds a value of magnitude 9.5.*raise secagg_clip"):
        legacy_fit_res({"body": torch.zeros(3), "head.weight": torch.tensor([1.0, -9.5])}, 10, {}, clip=8.0)
    with pytest.raises(TuneryError, match="the server sent 1 tensors, this client's model has 2"):
        state_from_arrays([np.zeros(3)], {"a": torch.zeros(3), "b": torch.zeros(2)})


def test_each_client_reports_the_record_level_epsilon_of_all_its_steps(tmp_path, tiny_backbone):
    """train.dp in a federation: each client's DP-SGD epsilon covers all its steps of the run (the
    node's state counts them across its ClientApp processes), not the last round's alone."""

    from tunery.config import config_from_dict
    from tunery.federated.run import resolve_federated
    from tunery.train.dp import epsilon

    data = make_dataset("binary", n=160, seed=2)
    files = [str(tmp_path / f"c{i}.csv") for i in range(2)]
    for i, f in enumerate(files):
        data.iloc[i::2].to_csv(f, index=False)
    raw = _config(tmp_path, tiny_backbone, files, rounds=2, local_steps=3)
    raw["train"].update(batch_size=8, dp={"noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1e-5})
    cfg = resolve_federated(config_from_dict(raw))
    work = _serve_locally(tmp_path, files, cfg)
    rounds = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    n_train = rounds[1]["per_client"]["c0"]["train_rows"]
    first, second = (rounds[r]["per_client"]["c0"]["dp_epsilon"] for r in (1, 2))
    assert first == pytest.approx(epsilon(1.0, 8 / n_train, 3, 1e-5))
    assert second == pytest.approx(epsilon(1.0, 8 / n_train, 6, 1e-5)) and second > first
    record_dp = json.loads((work / "metrics.json").read_text())["federated"]["record_dp"]
    assert record_dp["epsilon_per_client"]["c0"] == pytest.approx(second)
    from flwr.app import ConfigRecord

    from tunery.federated.server import _config_bytes
    # SecAgg+'s unmasking message of a round without a dropout holds an empty list (flwr's count_bytes fails on it)
    assert _config_bytes(ConfigRecord({"stage": "unmask", "active": [1, 2], "dead": []})) == 5 + 6 + 6 + 16 + 4


def test_the_schedule_spans_the_federation_constant_within_each_round():
    from tunery.config import TrainConfig
    from tunery.federated.client import round_rate

    linear = TrainConfig(warmup_ratio=0.06)
    assert [round_rate(linear, r, 4) for r in (1, 2, 3, 4)] == [(1.0, 0.24), (0.75, 0.0), (0.5, 0.0), (0.25, 0.0)]
    assert round_rate(TrainConfig(scheduler="cosine"), 3, 4)[0] == pytest.approx(0.5)
    assert round_rate(TrainConfig(scheduler="constant"), 4, 4) == (1.0, 0.0)
    assert round_rate(linear, 1, 20)[1] == 0.5  # a long federation warms up over half its first round at most


def test_the_run_keeps_the_global_model_of_the_round_that_scored_best(tmp_path, tiny_backbone, monkeypatch):
    """Three rounds over two in-process clients (a LocalGrid: tunery's real ClientApp and server), the
    clients' validation scores made up so that round 1's model scores best (0.9, then 0.6, 0.7): the
    run holds round 1's global model, not the final one, and metrics.json says so."""
    from transformers import AutoModelForSequenceClassification

    from tunery.config import config_from_dict
    from tunery.federated import client as fc
    from tunery.federated.run import resolve_federated

    data = make_dataset("binary", n=160, seed=2)
    files = []
    for i in range(2):
        files.append(str(tmp_path / f"c{i}.csv"))
        data.iloc[80 * i:80 * (i + 1)].to_csv(files[-1], index=False)
    cfg = resolve_federated(config_from_dict(_config(tmp_path, tiny_backbone, files, rounds=3, local_steps=3)))
    real = fc.evaluate_round
    scored: dict[str, list] = {}  # per client: the global models it scored, in order (round 0's first)

    def made_up(client, weights):
        out = real(client, weights)
        seen = scored.setdefault(client.key, [])
        seen.append({k: v.clone() for k, v in weights.items()})
        return {**out, "eval-metric": [0.5, 0.9, 0.6, 0.7][len(seen) - 1]}

    monkeypatch.setattr(fc, "evaluate_round", made_up)
    work = _serve_locally(tmp_path, files, cfg)

    summary = json.loads((work / "metrics.json").read_text())["federated"]
    rounds = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    assert [r["eval_metric"] for r in rounds] == pytest.approx([0.5, 0.9, 0.6, 0.7])
    assert (summary["keep"], summary["kept_round"], summary["kept_eval_metric"]) == ("best", 1, pytest.approx(0.9))
    models = next(iter(scored.values()))  # the global model of rounds 0, 1, 2 and 3, as a client got them
    head = next(k for k in models[1] if k.endswith("classifier.modules_to_save.default.weight"))
    saved = AutoModelForSequenceClassification.from_pretrained(work / "model").classifier.weight.detach()
    assert torch.allclose(saved, models[1][head].float(), atol=1e-6)
    assert not torch.allclose(saved, models[3][head].float(), atol=1e-4)  # the final model differs: not kept
