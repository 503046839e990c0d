from __future__ import annotations

import pytest

from tunery.config import apply_overrides, config_from_dict, load_config
from tunery.errors import ConfigError


def test_unknown_key_names_the_closest_valid_one():
    with pytest.raises(ConfigError, match=r"unknown key 'train.lrr' \(did you mean 'train.lr'\?\)"):
        config_from_dict({"data": {"train": "x.csv"}, "train": {"lrr": 1e-4}})


def test_unknown_section_is_rejected():
    with pytest.raises(ConfigError, match="did you mean 'train'"):
        config_from_dict({"data": {"train": "x.csv"}, "trian": {}})


def test_overrides_are_parsed_as_yaml():
    tree = apply_overrides({"data": {"train": "x.csv"}}, ["train.lr=3e-5", "model.method=lora",
                                                           "train.max_steps=null", "model.lora.target_modules=[query, value]"])
    cfg = config_from_dict(tree)
    assert cfg.train.lr == 3e-5 and cfg.model.method == "lora" and cfg.train.max_steps is None
    assert cfg.model.lora.target_modules == ["query", "value"]


def test_bad_value_names_the_place():
    with pytest.raises(ConfigError, match="train.precision"):
        config_from_dict({"data": {"train": "x.csv"}, "train": {"precision": "fp8"}})


def test_missing_train_file_key():
    with pytest.raises(ConfigError, match="missing required key 'data.train'"):
        config_from_dict({"data": {}})


def test_config_is_frozen():
    cfg = config_from_dict({"data": {"train": "x.csv"}})
    with pytest.raises(Exception):
        cfg.train.lr = 1.0  # type: ignore[misc]


def test_data_paths_resolve_against_the_config_directory(tmp_path):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "d.csv").write_text("text,label\na,b\n")
    (tmp_path / "cfg" / "run.yaml").write_text("data:\n  train: d.csv\n")
    assert load_config(tmp_path / "cfg" / "run.yaml").data.train == str(tmp_path / "cfg" / "d.csv")


def test_missing_config_file_suggests_init(tmp_path):
    with pytest.raises(ConfigError, match="tunery init"):
        load_config(tmp_path / "nope.yaml")
