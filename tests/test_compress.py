"""`tunery compress`: ONNX export parity, int8 within the allowed drop, the collapse check, and an
ONNX run taken wherever a run is (predict, evaluate, serve metered and batched, tunery.load).
Tiny BERT runs trained once for the module."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import fast_train, make_dataset
from tests.integration.helpers import cli

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

KINDS = {"binary": ("classification", "review", "label"), "multilabel": ("multilabel", "text", "tags"),
         "regression": ("regression", "text", "score")}


def _train(tmp, backbone, kind: str, name: str, store, pair: bool = False):
    from tunery.config import config_from_dict
    from tunery.pipeline import train

    _, text, label = KINDS[kind]
    df = make_dataset(kind, n=240)
    data_cfg = {"text_column": text, "label_column": label}
    if pair:
        df["second"] = ["and so on" if i % 2 else "or not" for i in range(len(df))]
        data_cfg["text_pair_column"] = "second"
    data = tmp / f"{name}.csv"
    df.to_csv(data, index=False)
    cfg = config_from_dict({"name": name, "output_dir": str(tmp / "runs"), "data": {"train": str(data), **data_cfg},
                            "model": {"backbone": backbone}, "train": fast_train(epochs=6)})
    return train(cfg, store=store)


@pytest.fixture(scope="module")
def runs(tiny_backbone, tmp_path_factory):
    from tunery.store import Store

    tmp = tmp_path_factory.mktemp("compress-runs")
    store = Store(f"sqlite:///{tmp / 'runs.db'}")
    runs = {kind: _train(tmp, tiny_backbone, kind, f"tiny-{kind}", store) for kind in KINDS}
    runs["pair"] = _train(tmp, tiny_backbone, "binary", "tiny-pair", store, pair=True)
    yield {**runs, "store": store, "tmp": tmp}
    store.close()


@pytest.fixture(scope="module")
def int8_run(runs):
    from tunery.compress import CompressOptions, compress_run

    return compress_run(runs["binary"], CompressOptions(to="int8"), store=runs["store"])


def _texts(n: int = 40) -> list[str]:
    return make_dataset("binary", n=n, seed=7)["review"].tolist()


@pytest.mark.parametrize("kind", ["binary", "multilabel", "regression", "pair"])
def test_the_fp32_graph_matches_torch_and_loads_as_an_onnx_run(runs, kind):
    """Parity is measured and recorded; tunery.load gives an OnnxPredictor whose scores are
    torch's; the model folder holds the graph and tokenizer, no weights."""
    import tunery
    from tunery.compress import CompressOptions, compress_run
    from tunery.predict_onnx import OnnxPredictor

    src = runs[kind]
    new = compress_run(src, CompressOptions(to="onnx"), store=runs["store"])
    assert new.name == f"{src.name}-onnx" and new.parent == src.parent
    doc = json.loads((new / "metrics.json").read_text())
    parity = doc["compression"]["parity_fp32"]
    assert parity["max_logit_diff"] < 1e-3 and parity["same_predictions"] == 1.0 and parity["rows"] > 0
    graph = doc["compression"]["graph"]
    assert graph["exporter"] == "dynamo" and graph["fusions"].get("onnxscript:attention"), graph
    assert graph["cls_only_last_layer"] is True  # the last layer computes [CLS] only, as torch predicts
    meta = json.loads((new / "tunery.json").read_text())
    assert meta["backend"] == "onnx" and meta["precision"] == "fp32"
    assert meta["compressed_from"]["run"] == src.name
    assert (new / "model" / "model.onnx").is_file() and not list((new / "model").glob("*.safetensors"))
    assert (new / "report.html").read_text().count("Compression") >= 1

    torch_p, onnx_p = tunery.load(src), tunery.load(new)
    assert isinstance(onnx_p, OnnxPredictor)
    texts = _texts()
    pairs = ["and so on"] * len(texts) if kind == "pair" else None
    a, ta = torch_p.score(texts, pairs)
    b, tb = onnx_p.score(texts, pairs)
    np.testing.assert_allclose(b, a, atol=1e-4)
    assert (ta == tb).all()  # the same tokenizer: the same metered tokens
    if kind != "regression":
        key = "labels" if kind == "multilabel" else "label"
        assert [p[key] for p in onnx_p.predict(texts, pairs)] == [p[key] for p in torch_p.predict(texts, pairs)]


def test_int8_stays_within_the_drop_and_records_what_it_measured(int8_run, runs):
    doc = json.loads((int8_run / "metrics.json").read_text())
    c = doc["compression"]
    assert c["kind"] == "int8" and c["split"] == "test" and c["metric"] == "accuracy"
    assert c["drop_points"] <= 1.0 and c["agreement"] > 0.9
    assert c["original"] >= 0.9  # the toy task is learnt: the check compares two real models
    assert c["quantization"]["mode"] == "dynamic" and c["quantization"]["ops"] == ["MatMul"]
    assert c["sizes"]["compressed_bytes"] > 0 and c["sizes"]["original_bytes"] > 0  # the tiny BERT is mostly embeddings
    for key in ("torch_fp32", "int8"):
        t = c["latency"][key]
        assert t["one_text_ms_p99"] >= t["one_text_ms_p50"] > 0 and t["texts_per_s"] > 0
    assert json.loads((int8_run / "tunery.json").read_text())["precision"] == "int8"
    record = runs["store"].get_run(int8_run.name)
    assert record.status == "completed" and record.path == str(int8_run.resolve())
    # the attention's Q, K and V projections are int8 too: MultiHeadAttention fed by quantised MatMuls
    q = c["quantization"]
    assert q["attention_projections"] == "int8" and [a["attention_projections"] for a in q["attempts"]] == ["int8"]
    assert c["graph"]["int8_fusions"].get("onnxscript:mha_bias") and c["graph"]["int8_parity_fp32"]["max_logit_diff"] < 1e-3
    ops = _ops(int8_run / "model" / "model.onnx")
    assert ops.get("MultiHeadAttention") and not ops.get("Attention")
    layers = ops["MultiHeadAttention"]
    assert ops["MatMulInteger"] >= 6 * layers  # Q, K, V, output, and the two feed-forward products per layer


def _ops(path) -> dict[str, int]:
    import collections

    import onnx

    return dict(collections.Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node))


def test_int8_with_fp32_attention_projections_keeps_the_fused_attention(runs):
    from tunery.compress import CompressOptions, compress_run

    new = compress_run(runs["binary"], CompressOptions(to="int8", attention="fp32"), name="tiny-int8-fp32-attn",
                       store=runs["store"])
    q = json.loads((new / "metrics.json").read_text())["compression"]["quantization"]
    assert q["attention_projections"] == "fp32" and len(q["attempts"]) == 1
    ops = _ops(new / "model" / "model.onnx")
    layers = ops["Attention"] + ops.get("MultiHeadAttention", 0)
    # every layer's projections inside one fused Attention, but the last: its query is [CLS]'s only
    assert ops["Attention"] == layers - 1 and ops["MatMulInteger"] < 6 * layers


def test_auto_falls_back_to_fp32_projections_where_int8_ones_fail(runs, monkeypatch):
    """auto: the int8-projection graph collapses here (forced), so the fused graph is quantised and kept;
    both attempts are recorded."""
    from tunery.compress import CompressOptions, compress_run, quantize

    real = quantize.quantize_dynamic_int8

    def quantise(src, dst, **kw):
        if not _ops(src).get("Attention"):  # the graph with int8 projections has no fused Attention
            return _constant_graph(src, dst)
        return real(src, dst, **kw)

    monkeypatch.setattr(quantize, "quantize_dynamic_int8", quantise)
    new = compress_run(runs["binary"], CompressOptions(to="int8"), name="tiny-int8-fallback", store=runs["store"])
    c = json.loads((new / "metrics.json").read_text())["compression"]
    attempts = c["quantization"]["attempts"]
    assert [(a["attention_projections"], a["passed"], a["collapsed"]) for a in attempts] == [
        ("int8", False, True), ("fp32", True, False)]
    assert c["quantization"]["attention_projections"] == "fp32" and c["drop_points"] <= 1.0
    assert _ops(new / "model" / "model.onnx").get("Attention")


def test_static_int8_calibrates_on_training_rows(runs):
    from tunery.compress import CompressOptions, compress_run

    new = compress_run(runs["binary"], CompressOptions(to="int8", static=True, calibration=64), name="tiny-static",
                       store=runs["store"])
    c = json.loads((new / "metrics.json").read_text())["compression"]
    assert c["kind"] == "int8-static" and c["quantization"]["format"] == "QDQ"
    assert c["quantization"]["calibration_rows"] == 64 and c["drop_points"] <= 1.0


def _constant_graph(src, dst):
    """The fp32 graph with its logits multiplied by 0 and [3, -3] added: a model that predicts class 0
    for every text, as a collapsed int8 model does."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    for node in graph.node:
        node.output[:] = ["logits_raw" if o == "logits" else o for o in node.output]
    graph.initializer.extend([numpy_helper.from_array(np.zeros(2, np.float32), "zero2"),
                              numpy_helper.from_array(np.array([3.0, -3.0], np.float32), "bias2")])
    graph.node.extend([helper.make_node("Mul", ["logits_raw", "zero2"], ["logits_zero"]),
                       helper.make_node("Add", ["logits_zero", "bias2"], ["logits"])])
    onnx.save(model, str(dst))


def test_a_collapsed_model_is_refused_and_nothing_is_kept(runs, monkeypatch):
    from tunery.compress import CompressOptions, compress_run, quantize
    from tunery.errors import CompressionError

    monkeypatch.setattr(quantize, "quantize_dynamic_int8", lambda src, dst, **_: _constant_graph(src, dst))
    before = sorted(p.name for p in runs["binary"].parent.iterdir())
    with pytest.raises(CompressionError) as err:
        compress_run(runs["binary"], CompressOptions(to="int8", max_drop=100.0), name="collapsed", store=runs["store"])
    message = str(err.value)
    assert "collapsed" in message and "never predicts" in message and "Nothing was kept" in message
    assert "--static" in message  # what to try
    assert sorted(p.name for p in runs["binary"].parent.iterdir()) == before
    from tunery.errors import RunError

    with pytest.raises(RunError):
        runs["store"].get_run("collapsed")


def test_collapse_rule_as_a_function():
    from tunery.compress.checks import collapse, drop_points

    original = np.array([0] * 80 + [1] * 20)
    assert collapse(original, np.zeros(100, int), task="classification", label_names=["a", "b"]) is not None
    assert collapse(original, original[::-1].copy(), task="classification", label_names=["a", "b"]) is None
    rare = np.array([0] * 999 + [1])  # predicted for 0.1 % of rows: losing it is not a collapse
    assert collapse(rare, np.zeros(1000, int), task="classification", label_names=["a", "b"]) is None
    on = np.array([[1, 0], [0, 1], [1, 1], [0, 1]], bool)
    assert "'y'" in collapse(on, on * [True, False], task="multilabel", label_names=["x", "y"])
    assert collapse(np.linspace(0, 1, 50), np.full(50, 0.5), task="regression", label_names=[]) is not None
    assert drop_points(0.9, 0.89, greater_is_better=True, task="classification") == pytest.approx(1.0)
    assert drop_points(0.5, 0.55, greater_is_better=False, task="regression") == pytest.approx(10.0)


def test_onnx_runs_predict_and_evaluate_through_the_cli(int8_run, tmp_path):
    import pandas as pd

    data = tmp_path / "new.csv"
    make_dataset("binary", n=30, seed=3).to_csv(data, index=False)
    cli("predict", str(int8_run), "-i", str(data), "-o", str(tmp_path / "out.csv"), cwd=tmp_path)
    out = pd.read_csv(tmp_path / "out.csv")
    assert len(out) == 30 and (out["pred_label"] == out["label"]).mean() > 0.8
    proc = cli("evaluate", str(int8_run), "--data", str(data), "--json", cwd=tmp_path)
    result = json.loads(proc.stdout)
    assert result["n"] == 30 and result["model"]["accuracy"] > 0.8


def test_cli_compress_prints_the_comparison(runs, tmp_path):
    proc = cli("compress", str(runs["multilabel"]), "--to", "int8", "--name", "ml-int8", "--output-dir",
               str(tmp_path / "out"), cwd=tmp_path)
    assert "torch fp32" in proc.stdout and "onnx int8" in proc.stdout and "agreement" in proc.stdout
    assert (tmp_path / "out" / "ml-int8" / "tunery.json").is_file()


@pytest.mark.parametrize("args, words", [
    (["--to", "fp16"], ["--to 'fp16'", "onnx", "int8"]),
    (["--to", "onnx", "--static"], ["--static", "--to int8"]),
    (["--calibration", "0", "--static"], ["--calibration 0"]),
    (["--max-drop", "-1"], ["--max-drop -1"]),
    (["--exporter", "jit"], ["--exporter 'jit'"]),
    (["--attention", "fp16"], ["--attention 'fp16'", "int8", "fp32"]),
    (["--to", "onnx", "--attention", "int8"], ["--attention int8", "--to int8"]),
])
def test_bad_flags_are_refused_before_anything_runs(runs, tmp_path, args, words):
    proc = cli("compress", str(runs["binary"]), *args, cwd=tmp_path, expect=None)
    assert proc.returncode != 0
    for w in words:
        assert w in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_an_onnx_run_is_not_compressed_again(int8_run, tmp_path):
    proc = cli("compress", str(int8_run), "--to", "int8", cwd=tmp_path, expect=None)
    assert proc.returncode != 0 and "onnx run" in proc.stdout + proc.stderr
    assert "tiny-binary" in proc.stdout + proc.stderr  # the run to compress instead


def test_serve_meters_and_batches_an_int8_run_from_the_registry(int8_run, tmp_path):
    """`tunery serve` (a real process) serves a registered int8 run; usage is billed in the
    tokenizer's tokens, as for the torch run."""
    import tunery
    from tests.serve.conftest import new_key, start_server, usage_rows
    from tunery.store import Store

    db_url = f"sqlite:///{tmp_path / 'serve.db'}"
    store = Store(db_url)
    try:
        store.register_model("senti", run_path=str(int8_run), run_name=int8_run.name)
    finally:
        store.close()
    server = start_server(["senti"], cwd=tmp_path, db_url=db_url,
                          config={"batching": {"max_batch_size": 8, "max_wait_ms": 20, "inference_batch_size": 4}})
    try:
        key = new_key(server)
        texts = _texts(10)
        with server.client(key) as client:
            r = client.post("/v1/models/senti/predict", json={"texts": texts})
        assert r.status_code == 200, r.text
        body = r.json()
        local = tunery.load(int8_run)
        assert [p["label"] for p in body["predictions"]] == [p["label"] for p in local.predict(texts)]
        tokens = int(local.score(texts)[1].sum())
        assert body["usage"] == {"texts": 10, "tokens": tokens}
        assert [(u.model_ref, u.tokens) for u in usage_rows(server)] == [("senti@1", tokens)]
    finally:
        server.stop()
