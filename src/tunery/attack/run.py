"""`tunery attack RUN --data FILE`: attack a run's model on a labelled file and record what held.

Results per recipe (with the settings they were measured under: attack figures mean nothing
without them): clean accuracy, accuracy under attack, attack success rate (texts flipped among those
the model had right), mean model queries per attacked text, mean share of words changed in the
successful attacks, and examples. Written to RUN/robustness.json (one entry per recipe, the last
attack of each), RUN/attacks/<recipe>.jsonl (every text's outcome), the run's metrics.json under
"robustness" and a Robustness section of its report.html; the run's weights are untouched.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from tunery.attack.search import RECIPES, Attack, Settings
from tunery.errors import TuneryError


class AttackError(TuneryError, ValueError):
    """An attack that cannot run as asked: the message names the value and the fix."""


class SentenceEncoder:
    """Sentence embeddings by mean pooling a backbone's last hidden states (the similarity
    constraint). The constructor only stores; the model loads at the first call."""

    def __init__(self, backbone: str, *, max_length: int = 128, batch_size: int = 64) -> None:
        self.backbone, self.max_length, self.batch_size = backbone, max_length, batch_size
        self._model = self._tokenizer = None
        self._cache: dict[str, np.ndarray] = {}

    def _load(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        from tunery.backbones import resolve_backbone

        path = resolve_backbone(self.backbone)
        self._tokenizer = AutoTokenizer.from_pretrained(path)
        self._model = AutoModel.from_pretrained(path).eval()

    def embed(self, texts: list[str]) -> np.ndarray:
        import torch

        if self._model is None:
            self._load()
        new = [t for t in dict.fromkeys(texts) if t not in self._cache]
        for i in range(0, len(new), self.batch_size):
            chunk = new[i:i + self.batch_size]
            batch = self._tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length,
                                    return_tensors="pt")
            with torch.inference_mode():
                hidden = self._model(**batch).last_hidden_state
            mask = batch["attention_mask"][..., None].to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
            pooled = torch.nn.functional.normalize(pooled.float(), dim=-1).numpy()
            self._cache.update(zip(chunk, pooled))
        return np.stack([self._cache[t] for t in texts])

    def similarity(self, text: str, others: list[str]) -> np.ndarray:
        """The cosine of `text`'s embedding with each of `others`'."""
        vectors = self.embed([text, *others])
        return vectors[1:] @ vectors[0]


def check_settings(recipes: list[str], settings: dict) -> None:
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown or not recipes:
        raise AttackError(f"recipe {', '.join(map(repr, unknown)) or '(none)'}: choose typo, synonym or all")
    share = settings.get("max_share", 0.2)
    if not 0 < share <= 1:
        raise AttackError(f"max_share {share}: give the largest share of a text's words an attack may change, "
                          f"in (0, 1], e.g. 0.2")
    budget = settings.get("budget")
    if budget is not None and budget < 2:
        raise AttackError(f"budget {budget}: an attack needs at least 2 model queries per text (the original "
                          f"and one edit); give more, or leave it out for no limit")
    sim = settings.get("min_similarity", 0.8)
    if not -1 <= sim <= 1:
        raise AttackError(f"min_similarity {sim}: a cosine similarity, in [-1, 1], e.g. 0.8")


def attack_texts(predictor, texts: list[str], labels: list[int], settings: Settings, *,
                 pairs: list[str] | None = None, encoder: SentenceEncoder | None = None) -> tuple[dict, list[dict]]:
    """Attack each text; the summary figures and every text's outcome."""
    probabilities = (lambda batch: predictor.predict_scores(batch)) if pairs is None else None
    similarity = synonyms = None
    if settings.recipe == "synonym":
        from tunery.attack.wordnet import synonym_source

        synonyms = synonym_source()
        encoder = encoder or SentenceEncoder(settings.encoder)
        similarity = encoder.similarity
    started = time.perf_counter()
    outcomes = []
    for i, (text, label) in enumerate(zip(texts, labels)):
        if pairs is not None:  # the second text stays as it is: the attack edits the first
            pair = pairs[i]
            probabilities = lambda batch, pair=pair: predictor.predict_scores(batch, [pair] * len(batch))  # noqa: E731
        attack = Attack(settings, probabilities, similarity=similarity, synonyms=synonyms)
        outcomes.append(attack.run(text, int(label)).to_dict())
    return summarise(outcomes, settings, time.perf_counter() - started), outcomes


def summarise(outcomes: list[dict], settings: Settings, seconds: float, examples: int = 5) -> dict:
    n = len(outcomes)
    attacked = [o for o in outcomes if o["status"] != "skipped"]
    won = [o for o in attacked if o["status"] == "succeeded"]
    correct_after = sum(o["status"] == "failed" for o in outcomes)
    sims = [o["similarity"] for o in won if o["similarity"] is not None]
    return {
        "settings": settings.describe(),
        "n": n,
        "clean_accuracy": len(attacked) / n if n else None,
        "accuracy_under_attack": correct_after / n if n else None,
        "attack_success_rate": len(won) / len(attacked) if attacked else None,
        "attacked": len(attacked), "succeeded": len(won),
        "mean_queries": float(np.mean([o["queries"] for o in attacked])) if attacked else None,
        "mean_share_perturbed": float(np.mean([o["changed"] / max(o["words"], 1) for o in won])) if won else None,
        "mean_similarity": float(np.mean(sims)) if sims else None,
        "seconds": round(seconds, 2),
        "examples": [{"original": o["text"], "perturbed": o["perturbed"], "label": o["label"],
                      "predicted_before": o["predicted"], "predicted_after": o["perturbed_predicted"],
                      "changes": o["changes"]} for o in won[:examples]],
    }


def attack_run(ref, data: str | Path, *, recipes: list[str], n: int | None = 500, seed: int = 0,
               settings: dict | None = None, encoder: SentenceEncoder | None = None) -> dict:
    """Attack the run `ref` on `n` rows (seeded sample) of the labelled file `data` with each recipe.
    `settings`: Settings fields (max_share, budget, min_similarity, max_candidates, typos_per_edit,
    encoder). Returns {recipe: summary}, also written into the run (see the module docstring)."""
    from tunery.config import load_config
    from tunery.data.validate import check_file
    from tunery.predict import load
    from tunery.rundir import write_json

    settings = dict(settings or {})
    check_settings(recipes, settings)
    predictor = load(ref)
    meta = predictor.meta
    if meta["task"] != "classification":
        raise AttackError(f"run {predictor.run_dir.name} is a {meta['task']} model: the attacks flip a single-label "
                          f"classification (multi-label and regression have no single answer to flip)")
    cfg = load_config(predictor.run_dir / "config.yaml")
    frame, report = check_file(str(data), cfg.data, task=meta["task"], label_names=predictor.label_names,
                               text_column=meta["text_column"], text_pair_column=meta.get("text_pair_column"),
                               label_column=meta["label_column"], delimiter=meta.get("label_delimiter"),
                               tokenizer=predictor.tokenizer, backbone=cfg.model.backbone)
    report.raise_for_errors()
    if n is not None and len(frame) > n:
        frame = frame.iloc[np.sort(np.random.default_rng(seed).choice(len(frame), n, replace=False))]
    texts = frame["text"].astype(str).tolist()
    pairs = frame["text_pair"].astype(str).tolist() if "text_pair" in frame else None
    labels = [int(x) for x in frame["label"].tolist()]
    results, run_dir = {}, predictor.run_dir
    (run_dir / "attacks").mkdir(exist_ok=True)
    for recipe in recipes:
        s = Settings(recipe=recipe, seed=seed, **settings)
        summary, outcomes = attack_texts(predictor, texts, labels, s, pairs=pairs, encoder=encoder)
        summary["data"] = str(data)
        names = predictor.label_names
        for ex in summary["examples"]:  # label names, as the CLI, the API and the report show them
            for key in ("label", "predicted_before", "predicted_after"):
                ex[key] = names[ex[key]]
        results[recipe] = summary
        with open(run_dir / "attacks" / f"{recipe}.jsonl", "w") as f:
            for o in outcomes:
                f.write(json.dumps(o, ensure_ascii=False) + "\n")
    stored = run_dir / "robustness.json"
    merged = {**(json.loads(stored.read_text()) if stored.exists() else {}), **results}
    write_json(stored, merged)
    metrics_file = run_dir / "metrics.json"
    if metrics_file.exists():
        metrics = json.loads(metrics_file.read_text())
        metrics["robustness"] = merged
        write_json(metrics_file, metrics)
    if (run_dir / "report.html").exists():  # the report gets (or refreshes) its Robustness section
        from tunery.evaluate.report import put_section, robustness_html

        put_section(run_dir / "report.html", "robustness", robustness_html(merged))
    return results
