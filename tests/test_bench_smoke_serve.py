"""bench/ scripts of serving and inference (serve, naive_server, compress, explain) in their smoke
modes, as tests/test_bench_smoke.py runs the others (split in two files so the two test workers share
them)."""

from __future__ import annotations

import importlib.util

from tests.test_bench_smoke import run_bench


def test_serve_bench_smoke(tmp_path):
    result = run_bench("serve.py", tmp_path=tmp_path)
    assert result["benchmark"] == "serve" and result["run"]["trained_here"]
    assert result["settings"]["levels"] == [1, 2]
    for kind in ("naive", "tunery", "tunery-int8"):
        levels = result[kind]["levels"]
        assert [lv["concurrency"] for lv in levels] == [1, 2]
        for lv in levels:
            assert lv["ok"] == lv["requests"] > 0 and not lv["errors"], lv
            assert lv["latency_ms"]["p99"] is not None and lv["requests_per_s"] > 0
        # stopped by SIGTERM: uvicorn drains, then re-raises the signal, so -15 is a clean stop too
        assert result[kind]["exit_code"] in (0, -15), result[kind]["exit_code"]
    assert result["usage_check"]["match"] is True, result["usage_check"]
    assert set(result["comparison"]) == {"1", "2"} and set(result["comparison_int8_vs_torch"]) == {"1", "2"}
    assert {"original", "compressed", "drop_points"} <= set(result["int8_run"])
    assert {"throughput_ratio", "p99_ratio", "met"} <= set(result["target"])


def test_naive_server_smoke(tmp_path):
    result = run_bench("naive_server.py", "--requests", "3", tmp_path=tmp_path)
    assert result["benchmark"] == "naive_server" and result["ready"] is True
    assert result["ok"] == result["requests"] == 3
    assert set(result["labels_seen"]) <= {"negative", "positive"}


def test_compress_bench_smoke(tmp_path):
    """torch fp32 and bf16, ONNX fp32, int8 dynamic and static of one tiny run, at 1 and 2 threads."""
    result = run_bench("compress.py", "--threads", "1", tmp_path=tmp_path)
    assert result["benchmark"] == "compress" and result["threads"] == [1]
    assert set(result["systems"]) | set(result["refused"]) == {"torch-fp32", "torch-bf16", "onnx-fp32", "int8",
                                                               "int8-fp32-attention", "int8-static"}
    for name, entry in result["systems"].items():
        t = entry["threads_1"]
        assert 0 <= t["accuracy"] <= 1 and t["texts_per_s"] > 0 and t["one_text_ms_p99"] >= t["one_text_ms_p50"], name
        assert entry["size_bytes"] > 0
    assert isinstance(result["summary"]["threads_1"].get("int8_meets_target", False), bool)


def test_explain_bench_smoke(tmp_path):
    """Every method (and the shap package's Partition explainer beside them where shap is installed:
    the bench's own dependency, not tunery's) on a tiny run, then the served /explain beside /predict."""
    methods = {"ig", "shap", "lime", "occlusion"} | ({"shap-partition"} if importlib.util.find_spec("shap") else set())
    result = run_bench("explain.py", "--threads", "1", "--methods", ",".join(sorted(methods)), "--served",
                       "--explain-nice", "0",  # other tests run beside it: at nice 19 explanations would wait
                       tmp_path=tmp_path)
    assert result["benchmark"] == "explain" and result["texts"] == 6
    assert set(result["methods"]) == methods
    for name, m in result["methods"].items():
        assert m["explained"] == 6 and m["ms_per_explanation"] > 0 and m["evaluations_per_explanation"] >= 2, name
        assert m["random_comprehensiveness"] is not None and m["loo_spearman"] is not None, name
    assert isinstance(result["targets"]["ig_within_500ms"], bool)
    served = result["served"]
    for load in ("predict_idle", "explain_alone", "predict_under_explain_load", "explain_during"):
        assert served[load]["ok"] > 0 and not served[load]["errors"], (load, served[load])
    # stopped by SIGTERM: uvicorn drains, then re-raises the signal, so -15 is a clean stop too
    assert served["exit_code"] in (0, -15) and isinstance(served["targets"]["predict_p99_within_1_5x"], bool)
