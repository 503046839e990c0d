import pandas as pd
import pytest

from tunery.data import split_frame

DF = pd.DataFrame({"text": [f"t{i}" for i in range(200)], "label": [0] * 160 + [1] * 40})


def _split(df=DF, **kw):
    args = dict(validation_fraction=0.1, test_fraction=0.1, seed=42, stratify_labels=df["label"])
    args.update(kw)
    return split_frame(df, **args)


def test_sizes_follow_fractions_of_the_whole():
    train, val, test = _split()
    assert (len(train), len(val), len(test)) == (160, 20, 20)


def test_split_is_stratified():
    train, val, test = _split()
    assert val["label"].sum() == 4 and test["label"].sum() == 4
    assert train.attrs["stratified"] is True


def test_same_seed_same_split_other_seed_differs():
    a, b, c = _split()[1], _split()[1], _split(seed=7)[1]
    assert a["text"].tolist() == b["text"].tolist()
    assert a["text"].tolist() != c["text"].tolist()


def test_parts_are_disjoint_and_complete():
    parts = _split()
    texts = [t for p in parts for t in p["text"]]
    assert sorted(texts) == sorted(DF["text"])


def test_zero_test_fraction_gives_empty_test():
    train, val, test = _split(test_fraction=0)
    assert len(test) == 0 and list(test.columns) == list(DF.columns)
    assert len(val) == 20


def test_class_of_one_falls_back_to_random_split():
    df = DF.copy()
    df.loc[0, "label"] = 2
    train, val, test = _split(df, stratify_labels=df["label"])
    assert train.attrs["stratified"] is False
    assert len(train) + len(val) + len(test) == 200


def test_fractions_must_leave_training_rows():
    with pytest.raises(ValueError):
        _split(validation_fraction=0.6, test_fraction=0.4)
