"""Deterministic train/validation/test splits (scikit-learn `train_test_split`)."""

from __future__ import annotations

import pandas as pd


def _holdout(df: pd.DataFrame, strat: pd.Series | None, fraction: float, seed: int):
    """Split `fraction` of `df` off; stratify when every class can be held on both sides."""
    from sklearn.model_selection import train_test_split

    n = len(df)
    if fraction <= 0 or n == 0:
        return df, df.iloc[:0], True
    positions = list(range(n))
    stratified = strat is not None
    if stratified:
        try:
            keep, held = train_test_split(positions, test_size=fraction, random_state=seed,
                                          stratify=strat.to_numpy())
        except ValueError:  # a class with < 2 members, or fewer held rows than classes
            stratified = False
    if not stratified:
        keep, held = train_test_split(positions, test_size=fraction, random_state=seed)
    keep, held = sorted(keep), sorted(held)
    return df.iloc[keep], df.iloc[held], stratified


def split_frame(
    df: pd.DataFrame,
    *,
    validation_fraction: float,
    test_fraction: float,
    seed: int,
    stratify_labels: pd.Series | None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Split `df` into (train, validation, test); both fractions are of the whole frame.

    A fraction of 0 gives an empty frame. With `stratify_labels` (aligned with `df` by position)
    the class proportions are kept in every part; when a class is too small for that the split
    falls back to a plain random one. Every returned frame has `attrs["stratified"]` (bool).
    Row order within each part follows `df`; the index is reset.
    """
    if not 0 <= validation_fraction < 1 or not 0 <= test_fraction < 1:
        raise ValueError("fractions must be in [0, 1)")
    if validation_fraction + test_fraction >= 1:
        raise ValueError("validation_fraction + test_fraction must be < 1")
    if stratify_labels is not None and len(stratify_labels) != len(df):
        raise ValueError("stratify_labels must have one value per row of df")
    strat = None if stratify_labels is None else pd.Series(stratify_labels.to_numpy())
    df = df.reset_index(drop=True)

    rest, test, ok_test = _holdout(df, strat, test_fraction, seed)
    rest_strat = None if strat is None else strat.iloc[rest.index].reset_index(drop=True)
    rest = rest.reset_index(drop=True)
    val_share = validation_fraction / (1 - test_fraction) if validation_fraction else 0.0
    train, validation, ok_val = _holdout(rest, rest_strat, val_share, seed)

    stratified = strat is not None and ok_test and ok_val
    parts = tuple(p.reset_index(drop=True) for p in (train, validation, test))
    for p in parts:
        p.attrs = {"stratified": stratified}
    return parts  # type: ignore[return-value]
