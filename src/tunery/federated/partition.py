"""One labelled file split into the data of N federated clients: IID (a seeded shuffle cut into
near-equal parts) or non-IID by a Dirichlet distribution over labels (Hsu et al., 2019, "Measuring
the Effects of Non-Identical Data Distribution for Federated Visual Classification"): for each
label, the shares of its rows that go to each client are drawn from Dir(alpha, ..., alpha); a small
alpha gives each client a few labels, a large one approaches IID.

Plain functions of the labels and a seed; `write_partitions` puts each client's rows, in the user's
own columns, into a file of its own, as a real deployment would find them on each client's machine.
(Flower Datasets' DirichletPartitioner does the same over Hugging Face datasets; tunery's clients
read the user's files, so the small part needed is here.)
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from tunery.errors import ConfigError

MAX_DRAWS = 100  # Dirichlet draws tried before giving up on every client having min_rows rows


def iid(n_rows: int, clients: int, *, seed: int) -> list[np.ndarray]:
    """Row indices of each client: a seeded shuffle cut into `clients` parts of near-equal size."""
    order = np.random.default_rng(seed).permutation(n_rows)
    return [np.sort(part) for part in np.array_split(order, clients)]


def dirichlet(labels: list, clients: int, *, alpha: float, seed: int, min_rows: int = 1) -> list[np.ndarray]:
    """Row indices of each client, each label's rows shared out by Dir(alpha) proportions; drawn
    again (same generator) until every client has at least `min_rows` rows."""
    rng = np.random.default_rng(seed)
    values = np.asarray([str(x) for x in labels])
    groups = [np.flatnonzero(values == v) for v in sorted(set(values.tolist()))]
    for _ in range(MAX_DRAWS):
        parts: list[list[int]] = [[] for _ in range(clients)]
        for rows in groups:
            rows = rng.permutation(rows)
            shares = rng.dirichlet(np.full(clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(rows)).round().astype(int)
            for client, piece in enumerate(np.split(rows, cuts)):
                parts[client].extend(piece.tolist())
        if min(len(p) for p in parts) >= min_rows:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise ConfigError(f"federated.partition: dirichlet with alpha={alpha} left a client with fewer than {min_rows} "
                      f"rows in {MAX_DRAWS} draws ({len(values)} rows, {clients} clients): raise federated.alpha, "
                      f"use fewer clients, or partition: iid")


def histograms(labels: list, parts: list[np.ndarray]) -> list[dict[str, int]]:
    """Each client's rows per label (labels as text, in sorted order, zeros kept)."""
    values = [str(x) for x in labels]
    names = sorted(set(values))
    out = []
    for part in parts:
        counts = Counter(values[i] for i in part)
        out.append({name: counts.get(name, 0) for name in names})
    return out


def write_partitions(frame: pd.DataFrame, parts: list[np.ndarray], folder: Path) -> list[Path]:
    """client-<i>.csv in `folder`, each with its client's rows of `frame` (all its columns)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, part in enumerate(parts):
        path = folder / f"client-{i}.csv"
        tmp = path.with_suffix(".csv.tmp")
        frame.iloc[part].to_csv(tmp, index=False)
        tmp.replace(path)
        paths.append(path)
    return paths


def partition_file(cfg, folder: Path) -> tuple[list[Path], list[dict[str, int]]]:
    """Split `cfg.data.train` into `cfg.federated.clients` client files in `folder` (see the module);
    returns their paths and label histograms. Dirichlet needs a single-label task (its labels are
    what it skews); regression and multi-label take iid or their own client_data files."""
    from tunery.data.load import read_table
    from tunery.data.validate import detect_delimiter, infer_columns, infer_task

    fed = cfg.federated
    frame = read_table(cfg.data.train)
    _, _, label_column = infer_columns(frame, cfg.data)
    labels = frame[label_column]
    seed = cfg.train.seed if fed.seed is None else fed.seed
    if fed.partition == "dirichlet":
        task = infer_task(labels, cfg.task, detect_delimiter(labels))
        if task != "classification":
            raise ConfigError(f"federated.partition: dirichlet skews clients by label, and {cfg.data.train} is a "
                              f"{task} task: use partition: iid, or give each client's own file in "
                              f"federated.client_data")
        parts = dirichlet(labels.tolist(), fed.clients, alpha=fed.alpha, seed=seed, min_rows=fed.min_rows)
    else:
        if len(frame) < 2 * fed.clients:
            raise ConfigError(f"federated.clients {fed.clients}: {cfg.data.train} has {len(frame)} rows, too few to "
                              f"give each client 2: use fewer clients")
        parts = iid(len(frame), fed.clients, seed=seed)
    return write_partitions(frame, parts, folder), histograms(labels.tolist(), parts)
