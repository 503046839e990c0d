"""Length-grouped training batches (tokenising, padding and inference batches: tunery.inference).

Batches of similar length waste little compute on padding: on short-text data such as SST-2 a
random batch is padded to ~3x its mean length. Grouping happens inside shuffled "mega-batches",
so batch order stays random, and the order is a pure function of (seed, epoch): a resumed run
sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import numpy as np


def batch_order(lengths: np.ndarray, batch_size: int, *, seed: int, epoch: int, group_by_length: bool,
                mega_batches: int = 50) -> list[np.ndarray]:
    """Row indices of each batch of one epoch, deterministic in (seed, epoch)."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if not group_by_length:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    batches = []
    span = batch_size * mega_batches
    for start in range(0, len(order), span):
        chunk = order[start : start + span]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    perm = rng.permutation(len(batches))
    return [batches[i] for i in perm]
