"""Federated data: one labelled file split into client files, IID or skewed by a Dirichlet over
labels (federated/partition.py), the federated: config section and `tunery federate --partition-only`."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.conftest import make_dataset
from tunery.errors import ConfigError
from tunery.federated.partition import dirichlet, histograms, iid

LABELS = ["a"] * 300 + ["b"] * 200 + ["c"] * 100


def _complete_and_disjoint(parts, n):
    joined = np.concatenate(parts)
    assert len(joined) == n and len(set(joined.tolist())) == n


def test_iid_cuts_a_seeded_shuffle_into_near_equal_parts():
    parts = iid(103, 4, seed=1)
    _complete_and_disjoint(parts, 103)
    assert sorted(len(p) for p in parts) == [25, 26, 26, 26]
    assert all((a == b).all() for a, b in zip(parts, iid(103, 4, seed=1)))
    assert any((a != b).any() for a, b in zip(parts, iid(103, 4, seed=2)))


def test_dirichlet_skews_clients_by_label_as_alpha_says():
    def top_share(alpha, seed):
        parts = dirichlet(LABELS, 4, alpha=alpha, seed=seed, min_rows=1)
        _complete_and_disjoint(parts, len(LABELS))
        return np.mean([max(h.values()) / sum(h.values()) for h in histograms(LABELS, parts)])

    global_top = 300 / 600
    skewed = np.mean([top_share(0.05, s) for s in range(5)])
    near_iid = np.mean([top_share(1000, s) for s in range(5)])
    assert skewed > 0.85  # most clients hold (nearly) one label
    assert abs(near_iid - global_top) < 0.05  # each client about as the whole file
    a, b = dirichlet(LABELS, 4, alpha=0.5, seed=3), dirichlet(LABELS, 4, alpha=0.5, seed=3)
    assert all((x == y).all() for x, y in zip(a, b))


def test_dirichlet_draws_again_until_each_client_has_its_rows_or_says_what_to_change():
    parts = dirichlet(LABELS, 4, alpha=0.1, seed=0, min_rows=30)
    assert min(len(p) for p in parts) >= 30
    with pytest.raises(ConfigError, match="raise federated.alpha, use fewer clients, or partition: iid"):
        dirichlet(LABELS[:20], 8, alpha=0.01, seed=0, min_rows=10)


def test_histograms_count_every_label_of_every_client():
    parts = [np.array([0, 1, 350]), np.array([550])]
    assert histograms(LABELS, parts) == [{"a": 2, "b": 1, "c": 0}, {"a": 0, "b": 0, "c": 1}]


@pytest.mark.parametrize("section, message", [
    ({"rounds": 2}, "give federated.clients"),
    ({"client_data": ["one.csv"]}, "needs 2 or more clients"),
    ({"clients": 3, "min_clients": 4}, "min_clients 4 is more than the 3 clients"),
    ({"clients": 4, "strategy": "krum"}, "at least 5 clients (2f + 3)"),
    ({"clients": 4, "strategy": "median"}, "fedavg"),
    ({"clients": 3, "strategy": "trimmed_mean", "trim": 0.2}, "cuts no client from either end"),
])
def test_bad_federated_sections_say_what_to_change(section, message):
    from tunery.config import config_from_dict

    with pytest.raises(Exception, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        config_from_dict({"data": {"train": "x.csv"}, "federated": section})


def _config(tmp_path, data: pd.DataFrame, federated: dict) -> str:
    data.to_csv(tmp_path / "reviews.csv", index=False)
    (tmp_path / "fed.yaml").write_text(json.dumps({"name": "fed", "data": {"train": "reviews.csv"},
                                                   "federated": federated}))
    return "fed.yaml"


def test_cli_writes_each_clients_file_in_the_users_columns_and_prints_their_labels(tmp_path):
    from tests.integration.helpers import cli

    data = make_dataset("binary", n=120)
    config = _config(tmp_path, data, {"clients": 3, "partition": "dirichlet", "alpha": 0.3, "seed": 7})
    shown = cli("federate", config, "--partition-only", cwd=tmp_path).stdout
    assert "3 clients (dirichlet alpha 0.3, seed 7)" in shown and "client-2.csv" in shown
    folder = tmp_path / "runs" / "fed-partitions"
    frames = [pd.read_csv(folder / f"client-{i}.csv") for i in range(3)]
    assert all(list(f.columns) == list(data.columns) for f in frames)
    assert sorted(pd.concat(frames)["review"]) == sorted(data["review"])
    listed = json.loads(cli("federate", config, "--partition-only", "--json", "--out", "parts", cwd=tmp_path).stdout)
    assert [c["rows"] for c in listed] == [len(f) for f in frames]  # the same seed, the same clients
    assert listed[0]["labels"] == frames[0]["label"].astype(str).value_counts().reindex(
        sorted(data["label"].astype(str).unique()), fill_value=0).to_dict()
    cli("federate", config, "--partition-only", "--set", "federated.partition=iid", "--out", "iid", cwd=tmp_path)
    cli("validate", str(tmp_path / "iid" / "client-0.csv"), cwd=tmp_path)  # a client file passes tunery's checks


def test_cli_refuses_what_it_cannot_partition(tmp_path):
    from tests.integration.helpers import cli

    config = _config(tmp_path, make_dataset("regression", n=60), {"clients": 2, "partition": "dirichlet"})
    assert "is a regression task: use partition: iid" in cli("federate", config, "--partition-only", cwd=tmp_path,
                                                              expect=1).stderr
    assert "give the run config" in cli("federate", cwd=tmp_path, expect=1).stderr
    assert "--client needs --data" in cli("federate", "--client", cwd=tmp_path, expect=1).stderr
    (tmp_path / "plain.yaml").write_text(json.dumps({"data": {"train": "reviews.csv"}}))
    assert "has no federated: section" in cli("federate", "plain.yaml", "--partition-only", cwd=tmp_path,
                                              expect=1).stderr
