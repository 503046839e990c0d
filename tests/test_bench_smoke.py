"""Every script in bench/ still runs: each in its smoke mode (the tiny test backbone, generated
SST-2-shaped rows, a few steps or requests, a temporary directory), as a subprocess, exit 0 and its
JSON result on stdout. A benchmark that no longer runs fails here, not on the day someone needs
its figures. Speed is never asserted: the figures of a smoke run mean nothing."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

BENCH = REPO / "bench"


def run_bench(script: str, *args: str, tmp_path: Path, timeout: float = 400) -> dict:
    """Run `bench/<script> --smoke ARGS` and return the JSON object it printed (and wrote to --out)."""
    out = tmp_path / f"{Path(script).stem}.json"
    results_before = sorted((BENCH / "results").rglob("*"))
    # one thread per process: a tiny model gains nothing from more, and the test machine is shared
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "NO_COLOR": "1"}
    proc = subprocess.run([sys.executable, str(BENCH / script), "--smoke", "--out", str(out), *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"bench/{script} --smoke exited {proc.returncode}:\n{proc.stderr[-6000:]}"
    printed = json.loads(proc.stdout)  # stdout holds the JSON object only; logs go to stderr
    assert json.loads(out.read_text()) == printed
    assert printed["smoke"] is True and isinstance(printed["total_wall_s"], float)
    assert sorted((BENCH / "results").rglob("*")) == results_before, "a smoke run wrote into bench/results/"
    return printed


# One-off measurements that need what CI does not install; each says why (and is owed a smoke mode).
NO_SMOKE = {"mpnet_pooling.py": "needs pip install 'tunery[mpnet]' (438 MB) and ../shared/data/sst2"}


def test_every_bench_script_has_a_smoke_test():
    scripts = sorted(p.name for p in BENCH.glob("*.py") if p.name not in NO_SMOKE)
    assert scripts == ["auto.py", "compress.py", "distill.py", "explain.py", "federated.py", "multilabel.py",
                       "multilabel_ablation.py", "naive_server.py", "robust.py", "serve.py", "sst2.py"], \
        f"bench/ has new scripts {scripts}: give each a --smoke mode and a test here"


def test_sst2_bench_smoke(tmp_path):
    result = run_bench("sst2.py", "--slice-set", "train.seed=7", tmp_path=tmp_path)
    assert result["benchmark"] == "sst2"
    assert {"cpu_count", "torch", "transformers", "cpu_flags"} <= set(result["machine"])
    part = result["slice"]
    for key in ("samples_per_s", "wall_s", "dev_accuracy", "settings"):
        assert key in part["hf_trainer"] and key in part["hf_trainer_tuned"] and key in part["tunery"], key
    assert part["slice_overrides"] == ["train.seed=7"]  # --slice-set reaches tunery's slice run only
    assert part["hf_trainer"]["n_train"] == 64 and part["tunery"]["n_train"] + part["tunery"]["n_validation"] == 64
    assert part["hf_trainer"]["settings"]["train_sampling_strategy"] == "random"
    assert part["hf_trainer_tuned"]["settings"]["train_sampling_strategy"] == "group_by_length"
    for key in ("ratio_samples_per_s", "ratio_samples_per_s_vs_tuned", "ratio_wall", "dev_accuracy_delta", "note"):
        assert key in part, key
    mfu = part["mfu"]  # model FLOPs per second over GEMM peaks measured in the same run
    flops = mfu["flops_per_sample"]  # of the model each run trains: tunery's mean-pooling layer counts
    assert min(flops.values()) > 0 and min(mfu["gemm_peak_gflops"].values()) > 0
    assert flops["hf_trainer"] == flops["hf_trainer_tuned"]
    assert (flops["tunery"] > flops["hf_trainer"]) == (part["tunery"]["pooling"] == "mean")
    assert set(mfu["mfu_vs_bf16_peak"]) == {"hf_trainer", "hf_trainer_tuned", "tunery"}
    assert all(0 < v < 1.5 for v in mfu["mfu_vs_fp32_peak"].values())
    full = result["full"]
    assert full["config"].endswith("sst2_full.yaml") and "train.epochs=1" in full["overrides"]
    for key in ("dev_accuracy", "validation_accuracy", "samples_per_s", "steps", "best_step", "pooling"):
        assert key in full["tunery"], key
    assert full["tunery"]["settings"]["epochs"] == 1


def test_auto_bench_smoke(tmp_path):
    """tunery auto, the default recipe and Trainer.hyperparameter_search on the same generated files."""
    result = run_bench("auto.py", tmp_path=tmp_path)
    assert result["benchmark"] == "auto" and result["systems"] == ["auto", "default", "hf"] and not result["failed"]
    assert result["budget_s"] == 90 and {"commit", "dirty"} <= set(result["git"])
    (name,) = result["datasets"]
    ds = result["datasets"][name]
    assert [ds["rows"][p]["rows"] for p in ("train", "validation", "test")] == [96, 32, 32]
    for system in ("auto", "default", "hf"):
        assert ds[system]["exit_code"] == 0 and isinstance(ds[system]["test_accuracy"], float), ds[system]
        assert ds[system]["wall_s"] > 0
    assert ds["auto"]["trials"] >= 1 and isinstance(ds["auto"]["within_budget"], bool)
    hf = ds["hf"]
    assert hf["trials"] == 2 and "checkpoint" in hf["scored"] and hf["chosen"]["params"]
    assert hf["validation_accuracy_rescored"] == hf["validation_accuracy"]  # the kept checkpoint is the best trial's
    assert hf["settings"]["train_sampling_strategy"] == "group_by_length"
    assert hf["settings"]["bf16"] is (hf["settings"]["precision"] == "bf16")
    assert ds["default"]["chosen"]["config"]["backbone"] == result["backbone"]["path"]
    summary = result["summary"]
    assert set(summary["per_dataset"]) == {name}
    assert summary["average"]["auto_minus_default_points"] == summary["per_dataset"][name]["auto_minus_default_points"]
    assert all(isinstance(t["met"], bool) for t in summary["targets"].values()), summary["targets"]


def test_multilabel_ablation_bench_smoke(tmp_path):
    result = run_bench("multilabel_ablation.py", "--sets", "pos", "--variants", "defaults", tmp_path=tmp_path)
    assert result["benchmark"] == "multilabel-ablation"
    (run,) = result["runs"]
    assert run["variant"] == "defaults" and {"micro_f1", "macro_f1"} <= set(run["test"])
    assert result["table"][0]["variant"] == "defaults"


def test_multilabel_bench_smoke(tmp_path):
    result = run_bench("multilabel.py", tmp_path=tmp_path)
    assert result["benchmark"] == "multilabel-conll2003"
    assert result["data"]["labels"] == ["PER", "ORG", "LOC", "MISC"] and result["data"]["train"]["rows"] == 96
    for part in (result["tunery"], result["tunery"]["baseline"], result["hf_trainer"]):
        assert {"micro_f1", "macro_f1"} <= set(part["test"]), part["test"]
    assert result["hf_trainer"]["threshold"] == 0.5 and result["hf_trainer"]["settings"]["epochs"] == 1
    assert result["tunery"]["evaluations"] and result["tunery"]["best_step"] is not None
    comparison = result["comparison"]
    assert {"micro_f1", "macro_f1", "ratio_wall_hf_over_tunery", "target"} <= set(comparison)
    assert {"tunery", "baseline", "hf_trainer", "tunery_minus_baseline"} <= set(comparison["macro_f1"])


def test_multilabel_conversion(tmp_path):
    """CoNLL-2003 lines -> one row a sentence, its entity types as labels ([] for none), -DOCSTART- dropped."""
    spec = importlib.util.spec_from_file_location("bench_multilabel", BENCH / "multilabel.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (tmp_path / "x.txt").write_text("-DOCSTART- -X- -X- O\n\nJAPAN NNP B-NP B-LOC\nwins VBZ B-VP O\nJohn NNP B-NP B-PER\n"
                                    "Smith NNP I-NP I-PER\n\nNo DT B-NP O\nnames NNS I-NP O\n\n"
                                    "Asian JJ B-NP B-MISC\nCup NNP I-NP I-MISC\nUN NNP I-NP B-ORG\n")
    rows = module.conll_sentences(tmp_path / "x.txt")
    assert rows == [{"text": "JAPAN wins John Smith", "labels": ["PER", "LOC"]},
                    {"text": "No names", "labels": []},
                    {"text": "Asian Cup UN", "labels": ["ORG", "MISC"]}]


@pytest.mark.parametrize("config", ["sst2_full.yaml", "rotten_tomatoes.yaml"])
def test_bench_configs_still_validate(config):
    """The YAML configs in bench/ are not scripts, but they rot the same way when a key is renamed."""
    from tunery.config import load_config

    cfg = load_config(BENCH / config)
    assert cfg.data.train and cfg.data.text_column


def test_robust_bench_smoke(tmp_path):
    """Every training method, each attacked by both recipes, on the tiny backbone and generated rows."""
    pytest.importorskip("nltk")
    result = run_bench("robust.py", tmp_path=tmp_path)
    assert set(result["methods"]) == {"plain", "fgm", "pgd", "freelb", "rdrop", "noise", "correct", "noise+correct"}
    passes = {"plain": 1, "fgm": 2, "pgd": 4, "freelb": 3, "rdrop": 2, "noise": 1, "correct": 1, "noise+correct": 1}
    assert result["methods"]["noise"]["noisy_copies"] > 64 and result["methods"]["plain"]["noisy_copies"] == 0
    for method, entry in result["methods"].items():
        assert entry["passes_per_step"] == passes[method] and 0 <= entry["dev_accuracy"] <= 1, method
        for recipe in ("typo", "synonym"):
            attack = entry["attacks"][recipe]
            assert attack["settings"]["recipe"] == recipe and attack["accuracy_under_attack"] <= attack["clean_accuracy"]
    per = result["summary"]["per_method"]
    assert per["pgd"]["train_time_vs_plain"] > 0 and "typo_points_vs_plain" in per["freelb"]
    assert isinstance(result["summary"]["target_attack_gain_10_points"], bool)


def test_distill_bench_smoke(tmp_path):
    """Teacher, direct student, distilled student and a 1-layer student, tiny and generated."""
    result = run_bench("distill.py", "--layers", "1", "--threads", "1", tmp_path=tmp_path)
    assert result["benchmark"] == "distill"
    entry = result["datasets"]["smoke"]
    for part in ("teacher", "direct", "distilled", "layers"):
        assert entry[part]["exit_code"] == 0 and isinstance(entry[part]["test_accuracy"], float), (part, entry[part])
    assert entry["distilled"]["distillation"]["teacher"]["run"] == "teacher"
    assert entry["layers"]["distillation"]["layers"] == 1 and entry["layers"]["throughput_ratio"] > 0
    assert "beats_direct" in entry["targets"] and "layers_met" in entry["targets"]


@pytest.mark.slow  # real Flower processes: about a minute a federation (make test-all)
def test_federated_bench_smoke(tmp_path):
    result = run_bench("federated.py", "--runs", "central-lora,iid-fedavg-secagg", tmp_path=tmp_path, timeout=900)
    assert result["benchmark"] == "federated" and result["settings"]["clients"] == 2
    central, secure = result["runs"]["central-lora"], result["runs"]["iid-fedavg-secagg"]
    assert central["kind"] == "centralised" and 0 <= central["dev_accuracy"] <= 1
    # the federation's LoRA rate is the centralised one times the clients trained per round (2 here)
    assert secure["lr"] == pytest.approx(2 * central["lr"])
    assert secure["kind"] == "federated" and secure["secure_aggregation"]["clip"] == 8.0
    assert secure["bytes_per_round"]["received"][0] > 0 and set(secure["rows"]) == {"client-0", "client-1"}
    assert set(result["summary"]["targets"]) == {"iid_within_1_point", "dirichlet_within_3_points",
                                                 "lora_100x_fewer_bytes"}
