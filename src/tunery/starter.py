"""`tunery init`: a starter config for a data file, with inferred columns and task."""

from __future__ import annotations

import os
from pathlib import Path

from tunery.config import DataConfig, TaskConfig


def starter_config(data: Path, *, backbone: str = "minilm-l6", config_dir: Path | None = None) -> str:
    from tunery.data.load import read_table
    from tunery.data.validate import infer_columns, infer_task

    frame = read_table(data)
    cfg = DataConfig(train=str(data))
    text_col, pair_col, label_col = infer_columns(frame, cfg)
    task = infer_task(frame[label_col], TaskConfig(), None)
    rel = os.path.relpath(Path(data).resolve(), (config_dir or Path.cwd()).resolve())
    pair_line = f"  text_pair_column: {pair_col}\n" if pair_col else ""
    return f"""\
# tunery run config, written by `tunery init {data}`.
# Every key is optional except data.train; unknown keys are rejected.
# Run it: tunery train {Path(config_dir or '.') / 'tunery.yaml'}   (override any key: --set train.lr=3e-5)
data:
  train: {rel}            # relative paths are read from this file's directory
  # validation: dev.csv   # default: split from train
  # test: test.csv        # default: split from train
  text_column: {text_col}
{pair_line}  label_column: {label_col}
  max_length: 128
task:
  type: {task}            # classification, multilabel or regression (auto infers it)
model:
  backbone: {backbone}    # `tunery backbones` lists aliases; or a local HF directory / hub id
  method: full            # full or lora
train:
  epochs: 3
  batch_size: 32
  # lr: 1.0e-4            # default: the backbone's recommended peak lr (1e-4 for minilm-l6, else 5e-5)
  precision: auto         # bf16 where the hardware runs it fast (AVX512-BF16, AMX, CUDA); or fp32
  early_stopping_patience: 3
  seed: 42
"""
