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


@pytest.mark.parametrize("section, key, value, fix", [
    ("train", "num_threads", 100000, "leave it unset"),
    ("train", "num_threads", 0, "leave it unset"),
    ("train", "seed", -5, "0 to 4294967295"),
    ("train", "seed", 10**20, "0 to 4294967295"),
    ("data", "split_seed", 2**32, "0 to 4294967295"),
    ("train", "lr", float("inf"), "finite"),
    ("train", "lr", float("nan"), "finite"),
    ("train", "lr", 0, "greater than 0"),
    ("train", "head_lr", -1e-3, "greater than 0"),
    ("train", "epochs", float("inf"), "finite"),
    ("train", "weight_decay", float("inf"), "finite"),
    ("train", "grad_clip", float("nan"), "finite"),
    ("evaluate", "calibration_bins", 10**8, "less than or equal to 1000"),
    ("data", "imbalance_ratio_warning", float("inf"), "finite"),
])
def test_out_of_range_values_name_the_key_the_value_and_the_bound(section, key, value, fix):
    with pytest.raises(ConfigError, match=rf"{section}\.{key}: .*{fix}") as caught:
        config_from_dict({"data": {"train": "x.csv"}, section: {key: value}}, source="run.yaml")
    assert repr(value)[:10] in str(caught.value) or str(value) in str(caught.value)


def test_lora_rank_is_bounded():
    with pytest.raises(ConfigError, match="model.lora.r"):
        config_from_dict({"data": {"train": "x.csv"}, "model": {"lora": {"r": 10**9}}})


@pytest.mark.parametrize("name, why", [("a" * 201, "at most 200"), ("é" * 101, "202 bytes"), ("a/b", "plain"),
                                       ("..", "plain"), ("x\ny", "control"), ("", "plain")])
def test_run_names_must_make_one_directory(name, why):
    with pytest.raises(ConfigError, match=why):
        config_from_dict({"data": {"train": "x.csv"}, "name": name})
    assert config_from_dict({"data": {"train": "x.csv"}, "name": "a" * 200}).name == "a" * 200


def test_an_override_that_is_not_yaml_names_itself():
    with pytest.raises(ConfigError, match=r"override 'train.lr=\[1,': the value '\[1,' is not valid YAML"):
        apply_overrides({}, ["train.lr=[1,"])


def test_config_path_errors_are_config_errors(tmp_path):
    (tmp_path / "loop.yaml").symlink_to(tmp_path / "loop.yaml")
    with pytest.raises(ConfigError, match="symbolic links"):
        load_config(tmp_path / "loop.yaml")
    with pytest.raises(ConfigError, match="too long"):
        load_config(tmp_path / ("c" * 300 + ".yaml"))
    with pytest.raises(ConfigError, match="is not a file"):
        load_config(tmp_path)
