"""`tunery distill`: the loss terms as functions, the K-layer student built from the teacher's lower
layers, augmentation, and an end-to-end case where the teacher's knowledge must help: a student
with 40 gold rows and the teacher's labels on 560 unlabelled ones beats the same student trained on
the 40 rows alone, and is closer to the teacher (lower KL)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from tests.conftest import fast_train, make_dataset
from tests.integration.helpers import cli


def test_the_teacher_term_is_zero_when_the_student_agrees_and_grows_with_disagreement():
    from tunery.train.distill import kd_rows

    t = torch.tensor([[2.0, -1.0], [0.5, 0.4]])
    for kind in ("single_label_classification", "multi_label_classification"):
        same = kd_rows(t.clone(), t, temperature=2.0, problem_type=kind)
        assert torch.allclose(same, torch.zeros(2), atol=1e-6)
        off = kd_rows(t + torch.tensor([[-3.0, 3.0]]), t, temperature=2.0, problem_type=kind)
        assert (off > 0.01).all()
    assert kd_rows(torch.tensor([[1.0]]), torch.tensor([[3.0]]), temperature=1.0,
                   problem_type="regression").item() == pytest.approx(4.0)


def test_layer_map_is_uniform_and_ends_at_the_last_layer():
    from tunery.train.distill import layer_map

    assert layer_map(3, 6) == [2, 4, 6]
    assert layer_map(1, 7) == [7]
    assert layer_map(4, 4) == [1, 2, 3, 4]


def test_augmentation_is_seeded_changes_text_and_never_repeats():
    from tunery.distillation import augment_text, augmented_rows

    texts = ["the film was a great and lovely story", "awful acting and a boring plot really"]
    a = augmented_rows(texts, None, copies=4, seed=1, mask_token="[MASK]", mask_prob=0.2, drop_prob=0.2, span_prob=0.5)
    b = augmented_rows(texts, None, copies=4, seed=1, mask_token="[MASK]", mask_prob=0.2, drop_prob=0.2, span_prob=0.5)
    assert a == b and a[1] is None
    assert len(set(a[0])) == len(a[0]) and not set(a[0]) & set(texts) and len(a[0]) >= 4
    assert any("[MASK]" in t for t in a[0])
    two = augmented_rows(texts, None, copies=2, seed=1, mask_token="[MASK]", mask_prob=0.2, drop_prob=0.2,
                         span_prob=0.5)
    assert set(two[0]) <= set(a[0])  # more copies keep the fewer: the teacher-logit cache labels only new ones
    rng = random.Random(0)
    spans = [augment_text(texts[0], rng, mask_token="M", mask_prob=0, drop_prob=0, span_prob=1) for _ in range(20)]
    assert all(s in texts[0] and len(s.split()) >= 4 for s in spans) and len(set(spans)) > 1
    pairs = augmented_rows(texts, ["q1", "q2"], copies=2, seed=0, mask_token="M", mask_prob=0.3, drop_prob=0.0,
                           span_prob=0.0)
    assert len(pairs[0]) == len(pairs[1]) and set(pairs[1]) <= {"q1", "q2"}


def test_joined_copies_are_a_text_followed_by_another_drawn_with_their_own_seeds():
    from tunery.distillation import augmented_rows

    texts = [f"phrase number {i} here" for i in range(30)]
    kw = dict(seed=3, mask_token="M", mask_prob=0.1, drop_prob=0.1, span_prob=0.3)
    joined, none = augmented_rows(texts, None, copies=0, joins=3, **kw)
    assert none is None and len(joined) == len(set(joined)) > 60
    for t in joined:  # each is one text, a space, another (never itself)
        head = next(x for x in texts if t.startswith(x + " "))
        assert t[len(head) + 1:] in texts and t[len(head) + 1:] != head
    assert len({t.split(" here ")[1] for t in joined}) > 10  # partners drawn at random
    both, _ = augmented_rows(texts, None, copies=2, joins=3, **kw)
    plain, _ = augmented_rows(texts, None, copies=2, **kw)
    fewer, _ = augmented_rows(texts, None, copies=0, joins=1, **kw)
    # joins draw from their own seeds: adding them leaves the plain copies as they were, and more joins
    # keep the fewer (the teacher-logit cache labels only new texts)
    assert set(plain) | set(joined) == set(both) and set(fewer) <= set(joined)
    with pytest.raises(ValueError, match="single-text"):
        augmented_rows(texts, texts, copies=0, joins=1, **kw)
    assert augmented_rows(texts[:1], None, copies=0, joins=2, **kw)[0] == []  # nothing to join with


def test_each_model_reads_its_own_mask_token_where_a_word_was_masked():
    """A MiniLM student's "[MASK]" is three pieces to an mpnet teacher ("[", "mask", "]"): the copies
    hold a slot, and each tokenizer puts its own mask token (or its unknown token) there."""
    from types import SimpleNamespace

    from tunery.distillation import MASK_SLOT, augmented_rows, with_mask

    texts, _ = augmented_rows(["the film was a great and lovely story"], None, copies=6, seed=0, mask_token=MASK_SLOT,
                              mask_prob=0.4, drop_prob=0.0, span_prob=0.0)
    masked = [t for t in texts if MASK_SLOT in t]
    assert masked
    bert, mpnet = SimpleNamespace(mask_token="[MASK]"), SimpleNamespace(mask_token="<mask>")
    student, teacher = with_mask(masked, bert), with_mask(masked, mpnet)
    for s, t, slot in zip(student, teacher, masked):
        assert s.split().count("[MASK]") == t.split().count("<mask>") == slot.count(MASK_SLOT) > 0
        assert MASK_SLOT not in s + t and s.replace("[MASK]", "<mask>") == t
    assert with_mask(masked, SimpleNamespace(mask_token=None, unk_token="<unk>"))[0].count("<unk>") == masked[0].count(MASK_SLOT)


def test_synonym_augmentation_replaces_words_by_their_synonyms_keeping_punctuation_and_case():
    from tunery.distillation import augment_text

    table = {"great": ["outstanding", "big"], "film": ["movie"], "story": ["tale"]}
    rng = random.Random(0)
    text = "Great film , a story."
    copies = {augment_text(text, rng, mask_token="M", mask_prob=0, drop_prob=0, span_prob=0, synonym_prob=0.99,
                           synonyms=lambda w: table.get(w, [])) for _ in range(20)}
    assert copies <= {f"{a} movie , a tale." for a in ("Outstanding", "Big")} and len(copies) == 2
    # no synonym source (WordNet not asked for): the words stay
    assert augment_text(text, rng, mask_token="M", mask_prob=0, drop_prob=0, span_prob=0, synonym_prob=0.99) == text


def test_augmentation_shares_that_change_every_word_are_refused():
    from tunery.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match="synonym_prob 0.5 = 1 would change every word"):
        config_from_dict({"name": "x", "data": {"train": "t.csv"}, "model": {"backbone": "b"},
                          "distill": {"teacher": "t", "augment": {"copies": 1, "mask_prob": 0.3, "drop_prob": 0.2,
                                                                   "synonym_prob": 0.5}}})


def test_the_teacher_labels_masked_copies_with_its_own_mask_token(world):
    from transformers import AutoTokenizer

    from tunery.distillation import MASK_SLOT

    mask = AutoTokenizer.from_pretrained(world["teacher"] / "model").mask_token
    slots = [f"a {MASK_SLOT} film", f"{MASK_SLOT} and lovely"]
    assert np.allclose(_test_logits(world["teacher"], slots),
                       _test_logits(world["teacher"], [t.replace(MASK_SLOT, mask) for t in slots]), atol=1e-5)


def _write(df, path):
    df.to_csv(path, index=False)
    return str(path)


@pytest.fixture(scope="module")
def world(tiny_backbone, tmp_path_factory):
    """A teacher trained on 600 rows; files for a student with 40 gold rows and 560 unlabelled ones."""
    from tunery.config import config_from_dict
    from tunery.pipeline import train
    from tunery.store import Store

    tmp = tmp_path_factory.mktemp("distill")
    store = Store(f"sqlite:///{tmp / 'runs.db'}")
    big = make_dataset("binary", n=600, seed=1)
    files = {"big": _write(big, tmp / "big.csv"), "small": _write(big.iloc[:40], tmp / "small.csv"),
             "validation": _write(make_dataset("binary", n=80, seed=2), tmp / "val.csv"),
             "test": _write(make_dataset("binary", n=120, seed=3), tmp / "test.csv")}
    (tmp / "unlabelled.txt").write_text("\n".join(big["review"].iloc[40:]) + "\n", encoding="utf-8")
    cfg = config_from_dict({"name": "teacher", "output_dir": str(tmp / "runs"),
                            "data": {"train": files["big"], "validation": files["validation"], "test": files["test"],
                                     "text_column": "review", "label_column": "label"},
                            "model": {"backbone": tiny_backbone}, "train": fast_train(epochs=6),
                            "evaluate": {"baseline": False}})
    teacher = train(cfg, store=store)
    yield {"tmp": tmp, "store": store, "teacher": teacher, "files": files, "backbone": tiny_backbone}
    store.close()


def _test_logits(run, texts):
    from tunery.distillation import teacher_labeller
    from tunery.rundir import read_meta

    return teacher_labeller(run, read_meta(run))(texts, None)


def _kl(teacher: np.ndarray, student: np.ndarray) -> float:
    t = torch.log_softmax(torch.as_tensor(teacher), -1)
    s = torch.log_softmax(torch.as_tensor(student), -1)
    return float((t.exp() * (t - s)).sum(-1).mean())


def test_a_distilled_student_beats_the_same_student_without_its_teacher(world):
    from tunery.compress import distill_config, distill_run
    from tunery.pipeline import train

    train_cfg = [f"train.{k}={v}" for k, v in fast_train(epochs=8).items()] + [f"data.train={world['files']['small']}",
                                                                               "evaluate.baseline=false"]
    student = distill_run(world["teacher"], world["backbone"], unlabelled=str(world["tmp"] / "unlabelled.txt"),
                          name="student", overrides=train_cfg + ["distill.alpha=0.5"], store=world["store"])
    direct_cfg = distill_config(world["teacher"], world["backbone"], name="direct", overrides=train_cfg)
    direct = train(direct_cfg.model_copy(update={"distill": direct_cfg.distill.model_copy(update={"teacher": None})}),
                   store=world["store"])
    doc = json.loads((student / "metrics.json").read_text())
    info = doc["training"]["distillation"]
    assert info["gold_rows"] == 40 and info["unlabelled_rows"] == 560 and info["teacher"]["run"] == "teacher"
    assert (student / "teacher_logits.npy").is_file()  # cached in the run: a resume reads it back
    from tunery.logit_cache import known_logits, teacher_folder
    from tunery.rundir import read_meta
    from tunery.store.home import tunery_home

    # and by text for the teacher: the next run from it labels only texts no run labelled
    shared = known_logits(teacher_folder(tunery_home(), world["teacher"], read_meta(world["teacher"])["created_at"]))
    assert len(shared) >= len(set(make_dataset("binary", n=600, seed=1)["review"]))
    rows = lambda a: {tuple(np.round(r, 4)) for r in a}  # noqa: E731
    assert rows(np.load(student / "teacher_logits.npy")) <= rows(shared.values())
    acc_student = doc["model"]["test"]["accuracy"]
    acc_direct = json.loads((direct / "metrics.json").read_text())["model"]["test"]["accuracy"]
    assert acc_student >= acc_direct + 0.1, (acc_student, acc_direct)
    texts = make_dataset("binary", n=120, seed=3)["review"].tolist()
    teacher_l = _test_logits(world["teacher"], texts)
    assert _kl(teacher_l, _test_logits(student, texts)) < _kl(teacher_l, _test_logits(direct, texts))


def test_augment_seed_keeps_the_copies_when_the_training_seed_changes(world, tmp_path):
    """`distill.augment.seed` fixes the copies (and so their teacher labels, read from the cache) while
    train.seed draws another student; by default the copies follow train.seed."""
    from tunery.compress import distill_run

    base = [f"train.{k}={v}" for k, v in fast_train(epochs=1).items()] + [
        f"data.train={world['files']['small']}", "evaluate.baseline=false", "distill.augment.copies=2",
        "distill.augment.joins=1"]

    def copies(name, *extra):
        run = distill_run(world["teacher"], world["backbone"], name=name, output_dir=str(tmp_path / "runs"),
                          overrides=base + list(extra), store=world["store"])
        info = json.loads((run / "metrics.json").read_text())["training"]["distillation"]
        return info, np.load(run / "teacher_logits.npy")

    a_info, a = copies("s1", "train.seed=1", "distill.augment.seed=7")
    b_info, b = copies("s2", "train.seed=2", "distill.augment.seed=7")
    c_info, c = copies("s2-own", "train.seed=2")
    assert a_info["augment"]["seed"] == b_info["augment"]["seed"] == 7 and c_info["augment"]["seed"] is None
    assert a_info["augmented_rows"] > 40 and np.array_equal(a, b)  # the same copies, the same teacher labels
    assert c.shape != b.shape or not np.array_equal(c, b)  # train.seed's own copies


def test_a_k_layer_student_is_built_from_the_teachers_lower_layers(world):
    from transformers import AutoModelForSequenceClassification

    from tunery.train.distill import student_from_teacher

    teacher = AutoModelForSequenceClassification.from_pretrained(world["teacher"] / "model")
    student = student_from_teacher(teacher, 1)
    assert student.config.num_hidden_layers == 1 and len(student.base_model.encoder.layer) == 1
    for (name, a), (_, b) in zip(student.base_model.embeddings.state_dict().items(),
                                 teacher.base_model.embeddings.state_dict().items()):
        assert torch.equal(a, b), name
    for (name, a), (_, b) in zip(student.base_model.encoder.layer[0].state_dict().items(),
                                 teacher.base_model.encoder.layer[0].state_dict().items()):
        assert torch.equal(a, b), name
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    assert len(teacher.base_model.encoder.layer) == 2  # the teacher is left as it was
    with pytest.raises(ValueError, match="distill.layers 2"):
        student_from_teacher(teacher, 2)


def test_layers_distillation_matches_hidden_states_and_attention(world, tmp_path):
    from tunery.compress import distill_run
    from tunery.predict import load

    overrides = [f"train.{k}={v}" for k, v in fast_train(epochs=2).items()] + ["distill.augment.copies=1",
                                                                               "distill.augment.synonym_prob=0.2",
                                                                               "evaluate.baseline=false"]
    run = distill_run(world["teacher"], "", layers=1, name="k1", output_dir=str(tmp_path / "runs"),
                      overrides=overrides, store=world["store"])
    info = json.loads((run / "metrics.json").read_text())["training"]["distillation"]
    assert info["intermediate"] is True and info["layer_map"] == [2] and info["augmented_rows"] > 0
    assert info["augment"]["synonym_prob"] == 0.2  # WordNet read, the recipe recorded
    model = load(run).model
    assert model.config.num_hidden_layers == 1
    # the student saved as a plain transformers model, predicting like its teacher on easy rows
    texts = make_dataset("binary", n=40, seed=5)["review"].tolist()
    agree = np.mean(load(run).predict_scores(texts).argmax(1) == load(world["teacher"]).predict_scores(texts).argmax(1))
    assert agree > 0.8


def test_cli_distill_refuses_bad_flags(world, tmp_path):
    teacher = str(world["teacher"])
    both = cli("distill", "--teacher", teacher, "--student", "minilm-l6", "--layers", "1", cwd=tmp_path, expect=None)
    assert both.returncode != 0 and "one of the two" in both.stdout + both.stderr
    deep = cli("distill", "--teacher", teacher, "--layers", "5", cwd=tmp_path, expect=None)
    assert deep.returncode != 0 and "distill.layers 5" in deep.stdout + deep.stderr
    missing = cli("distill", "--teacher", str(tmp_path / "nope"), "--student", "minilm-l6", cwd=tmp_path, expect=None)
    assert missing.returncode != 0
    bad = cli("distill", "--teacher", teacher, "--student", world["backbone"], "--set", "distill.alpha=2",
              cwd=tmp_path, expect=None)
    assert bad.returncode != 0 and "distill.alpha" in bad.stdout + bad.stderr


def test_teacher_logits_in_bf16_stay_close_to_fp32(tiny_backbone):
    """The teacher labels in bf16 where that is fast: its soft labels move by bf16's rounding, no more,
    and are not fp32's (the cast took effect)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tunery.inference import encode, torch_logits

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_backbone, num_labels=3)
    tokenizer = AutoTokenizer.from_pretrained(tiny_backbone)
    texts = [f"review number {i} was {'good' if i % 2 else 'bad'} and long" * (1 + i % 3) for i in range(24)]
    enc = encode(tokenizer, texts, None, [None] * len(texts), max_length=64)
    fp32 = torch_logits(model, enc, batch_size=8, pad_id=tokenizer.pad_token_id or 0)
    bf16 = torch_logits(model, enc, batch_size=8, pad_id=tokenizer.pad_token_id or 0, precision="bf16")
    assert fp32.dtype == bf16.dtype == np.float32 and fp32.shape == bf16.shape == (24, 3)
    spread = float(np.abs(fp32).max()) + 1e-6
    assert 0 < float(np.abs(bf16 - fp32).max()) <= 0.05 * spread + 0.02


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_teacher_labels_on_the_gpu_where_there_is_one(world):
    """Where CUDA is, the teacher runs there (bf16): its labels agree with the CPU fp32 logits to bf16's
    rounding. (Run on an H200 for SST-2: 883,641 texts in 44 s, dev accuracy identical to the CPU's.)"""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tunery.inference import encode, torch_logits

    texts = [f"a {'fine' if i % 2 else 'dull'} film, take {i}" for i in range(40)]
    gpu = _test_logits(world["teacher"], texts)
    model = AutoModelForSequenceClassification.from_pretrained(world["teacher"] / "model")
    tokenizer = AutoTokenizer.from_pretrained(world["teacher"] / "model")
    enc = encode(tokenizer, texts, None, [None] * len(texts), max_length=64)
    cpu = torch_logits(model, enc, batch_size=8, pad_id=tokenizer.pad_token_id or 0)
    assert gpu.shape == cpu.shape and gpu.dtype == np.float32
    assert float(np.abs(gpu - cpu).max()) <= 0.05 * (float(np.abs(cpu).max()) + 1e-6) + 0.02
    assert (gpu.argmax(1) == cpu.argmax(1)).mean() >= 0.95
