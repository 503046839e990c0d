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
