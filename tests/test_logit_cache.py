"""The teacher-logit cache shared by distillations from one teacher (tunery.logit_cache)."""

from __future__ import annotations

import numpy as np
import pytest

from tunery.logit_cache import cached_logits, known_logits, teacher_folder


class Labeller:
    """Logits that depend on the text only (its length, its first letter), counting what it labels."""

    def __init__(self, fail_after: int | None = None):
        self.seen: list[str] = []
        self.fail_after = fail_after

    def __call__(self, texts, pairs):
        if self.fail_after is not None and len(self.seen) >= self.fail_after:
            raise KeyboardInterrupt("killed half way")
        self.seen += texts
        return np.array([[len(t), ord(t[0])] for t in texts], dtype=np.float32)


def expected(texts):
    return np.array([[len(t), ord(t[0])] for t in texts], dtype=np.float32)


def test_rows_are_labelled_once_in_row_order_and_a_second_run_labels_only_new_texts(tmp_path):
    folder = teacher_folder(tmp_path, tmp_path / "teacher", "2026-12-04T00:00:00")
    first = ["a good film", "bad", "a good film", "so so", "bad"]
    label = Labeller()
    np.testing.assert_array_equal(cached_logits(folder, first, None, label, chunk=2), expected(first))
    assert sorted(label.seen) == sorted({"a good film", "bad", "so so"})  # each distinct text once
    assert len(list(folder.glob("part-*.npz"))) == 2  # a part per chunk of 2

    second = ["so so", "new text", "bad", "another one"]
    label2 = Labeller()
    np.testing.assert_array_equal(cached_logits(folder, second, None, label2), expected(second))
    assert sorted(label2.seen) == ["another one", "new text"]


def test_a_pair_is_part_of_the_key(tmp_path):
    label = Labeller()
    cached_logits(tmp_path, ["q", "q"], ["one", "two"], label)
    assert label.seen == ["q", "q"]  # same text, different pairs: two rows


def test_a_labelling_pass_killed_half_way_keeps_its_finished_chunks(tmp_path):
    texts = [f"text {i}" for i in range(10)]
    with pytest.raises(KeyboardInterrupt):
        cached_logits(tmp_path, texts, None, Labeller(fail_after=4), chunk=4)
    assert len(known_logits(tmp_path)) == 4
    again = Labeller()
    np.testing.assert_array_equal(cached_logits(tmp_path, texts, None, again, chunk=4), expected(texts))
    assert again.seen == texts[4:]


def test_a_damaged_part_is_labelled_again_and_another_teacher_has_its_own_folder(tmp_path):
    cached_logits(tmp_path, ["x1", "x2"], None, Labeller())
    (part,) = tmp_path.glob("part-*.npz")
    part.write_bytes(b"not a zip")
    again = Labeller()
    cached_logits(tmp_path, ["x1", "x2"], None, again)
    assert again.seen == ["x1", "x2"]
    run = tmp_path / "teacher"
    assert teacher_folder(tmp_path, run, "t1") != teacher_folder(tmp_path, run, "t2")  # retrained at the same path
    assert teacher_folder(tmp_path, run, "t1") == teacher_folder(tmp_path, run, "t1")


def test_a_teacher_copied_elsewhere_finds_its_cache_and_an_old_folder_is_renamed(tmp_path):
    """The folder is named by the run's directory name and created_at, not its path: the same teacher
    copied to another machine or folder reads the same cache; a folder named by the older key (the
    resolved path) is renamed to the new name, its rows kept."""
    import hashlib
    import json

    here, there = tmp_path / "a" / "teacher", tmp_path / "b" / "teacher"
    assert teacher_folder(tmp_path, here, "t1") == teacher_folder(tmp_path, there, "t1")
    assert teacher_folder(tmp_path, here, "t1") != teacher_folder(tmp_path, tmp_path / "a" / "other", "t1")
    old_run = tmp_path / "c" / "teacher2"
    legacy = tmp_path / "cache" / "teacher-logits" / hashlib.sha256(
        json.dumps([str(old_run.resolve()), "t9"]).encode()).hexdigest()[:20]
    cached_logits(legacy, ["x1", "x2"], None, Labeller())
    folder = teacher_folder(tmp_path, old_run, "t9")
    assert folder != legacy and folder.is_dir() and not legacy.exists()
    again = Labeller()
    np.testing.assert_array_equal(cached_logits(folder, ["x1", "x2"], None, again), expected(["x1", "x2"]))
    assert again.seen == []  # read from the renamed folder, nothing labelled again
