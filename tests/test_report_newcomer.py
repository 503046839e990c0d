"""report.html as a new user reads it (issue 9, "Report"): figures that are not stretched, crowded
or half empty, label names in any script, the data and settings behind the run, mistakes that
trace back to the user's file, and a verdict against the baseline. Checked in headless Chromium
(tests/browser.py) by numbers: sizes and non-blank content, never by eye."""

from __future__ import annotations

import html as _html
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.browser import chromium_or_skip, dump_dom, ink_share, screenshot
from tests.conftest import fast_train, make_dataset
from tests.integration.helpers import cli, write_config
from tunery.evaluate import report as rep
from tunery.evaluate.errors import most_confident_mistakes
from tunery.evaluate.metrics import compute_metrics

ZH = {"sports": "体育新闻", "food": "美食外卖", "tech": "科技数码"}
LONG3 = ["entertainment and celebrity news", "international politics", "science and technology"]


@pytest.fixture(scope="module", autouse=True)
def _figures_on():
    """This file tests the figures: draw them (tests/conftest.py turns them off elsewhere)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNERY_REPORT_FIGURES", "1")
        yield


def _three_class(names, n=60, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    P = rng.dirichlet([1, 1, 1], n)
    P[np.arange(n), y] += 0.4  # mostly right, some confident mistakes
    P /= P.sum(axis=1, keepdims=True)
    texts = [f"text {i}" for i in range(n)]
    return texts, y, P


def _render(tmp_path, names, *, verdict=None, **kw) -> Path:
    texts, y, P = _three_class(names)
    m = compute_metrics("classification", y, P, names)
    metrics = {"test": m, **({"verdict": verdict} if verdict else {})}
    path = tmp_path / "report.html"
    rep.write_report(path, title="t", run_info={}, task="classification", label_names=names, metrics=metrics,
                     baseline={"test": m}, predictions={"test": (texts, y, P)}, n_errors=5, **kw)
    return path


# --- figures ------------------------------------------------------------------------------------


def _glyph(text: str, families) -> np.ndarray:
    import matplotlib

    with matplotlib.rc_context({"font.family": list(families)}):
        fig = rep._figure(1.2, 0.6)
        fig.text(0.05, 0.3, text, fontsize=20)
        fig.canvas.draw()
        return np.asarray(fig.canvas.buffer_rgba())[..., 0].copy()


def test_plots_draw_chinese_label_names_not_empty_boxes():
    families = rep.plot_fonts()
    assert len(families) == 2 and "CJK" in families[1], families
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a, b = _glyph("体育", families), _glyph("美食", families)
    assert not [w for w in caught if "missing from font" in str(w.message)]
    # Without a CJK font every character is the same empty box: two different words draw alike.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tofu_a, tofu_b = _glyph("体育", ["DejaVu Sans"]), _glyph("美食", ["DejaVu Sans"])
    assert np.array_equal(tofu_a, tofu_b)
    assert not np.array_equal(a, b) and not np.array_equal(a, tofu_a) and (a < 128).sum() > 100
    # Latin text keeps DejaVu Sans.
    assert np.array_equal(_glyph("accuracy", families), _glyph("accuracy", ["DejaVu Sans"]))


def test_confusion_matrix_x_labels_never_overlap():
    for names in (LONG3, list(ZH.values()), ["neg", "pos"]):
        cm = np.arange(len(names) ** 2).reshape(len(names), -1)
        with rep._plot_style():
            fig = rep._confusion_fig(cm, names)
            fig.draw_without_rendering()
            r = fig.canvas.get_renderer()
            labels = fig.axes[0].get_xticklabels()
            boxes = sorted((t.get_window_extent(r) for t in labels), key=lambda b: b.x0)
            ticks = fig.axes[0].transData.transform([(i, 0) for i in range(len(names))])[:, 0]
        if labels[0].get_rotation() == 0:
            assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:])), names
        else:  # slanted at 45°: neighbours are sin(45°) * tick spacing apart, more than a line's height
            line = labels[0].get_fontsize() * fig.dpi / 72 * 1.2
            assert np.diff(ticks).min() * np.sin(np.radians(labels[0].get_rotation())) > line, names
    assert max(len(t.get_text()) for t in fig.axes[0].get_xticklabels()) <= rep.TICK_LABEL_CHARS


def test_binary_reliability_plot_uses_its_whole_width():
    rng = np.random.default_rng(0)
    conf = 0.5 + 0.5 * rng.random(200)  # the top class of two: never below 0.5
    correct = rng.random(200) < conf
    with rep._plot_style():
        fig = rep._reliability_fig(conf, correct, 0.05, n_classes=2, bins=10)
    ax = fig.axes[0]
    assert ax.get_xlim() == (0.5, 1.0)
    heights = [p.get_height() for p in ax.patches]
    assert len(heights) == 10 and sum(h > 0 for h in heights) >= 8  # no empty half
    with rep._plot_style():
        assert rep._reliability_fig(conf, correct, 0.05, n_classes=3).axes[0].get_xlim()[0] == pytest.approx(0.3)


# --- content ------------------------------------------------------------------------------------


def test_mistakes_carry_the_row_and_file_they_came_from():
    P = np.array([[0.1, 0.9], [0.8, 0.2], [0.9, 0.1]])
    out = most_confident_mistakes("classification", ["a", "b", "c"], [0, 1, 0], P, ["n", "p"],
                                  rows=[5, 9, 12], sources=["data/t.csv"] * 3)
    assert [(m["text"], m["row"], m["source"]) for m in out] == [("a", 5, "data/t.csv"), ("b", 9, "data/t.csv")]
    with pytest.raises(ValueError, match="rows has 2 entries for 3 texts"):
        most_confident_mistakes("classification", ["a", "b", "c"], [0, 1, 0], P, ["n", "p"], rows=[1, 2])


def test_report_mistakes_table_gives_rows_of_the_users_file(tmp_path):
    texts, y, P = _three_class(LONG3)
    rows = [100 + 2 * i for i in range(len(texts))]
    html = _render(tmp_path, LONG3, origins={"test": (rows, ["/data/news.csv"] * len(texts))}).read_text()
    table = html.split("Most confident mistakes")[1]
    assert "row in" in table and "news.csv" in table and "position in this split" not in table
    first = re.search(r'<tbody><tr><td class="num">([\d,]+)</td><td class="text">text (\d+)</td>', table)
    assert first and int(first.group(1).replace(",", "")) == rows[int(first.group(2))]


def test_pipeline_origins_name_the_users_file_or_dataframe():
    from tunery.data.validate import Source, data_sources
    from tunery.pipeline import _origins

    frame = pd.DataFrame({"text": ["a", "b"], "label": [0, 1], "row": [3, 1], "source": ["/d/copy.parquet"] * 2})
    assert _origins(frame) == ([3, 1], ["/d/copy.parquet"] * 2, "row")
    with data_sources({"/d/copy.parquet": Source("the DataFrame given to fit (train)", ["x", "y", "z"])}):
        assert _origins(frame) == (["z", "x"], ["the DataFrame given to fit (train)"] * 2, "index label")
    assert _origins(frame.drop(columns="row")) is None


def test_report_shows_data_summary_findings_and_configuration(tmp_path):
    frames = {"train": pd.DataFrame({"text": ["aa", "bbbb", "cccccc", "d"], "label": [0, 1, 2, 0]}),
              "test": pd.DataFrame({"text": ["xyz", "hello"], "label": [1, 1]})}
    summary = rep.summarize_splits(frames, "classification", LONG3)
    assert summary["train"]["labels"] == dict(zip(LONG3, [2, 1, 1]))
    assert summary["test"]["text_chars"]["max"] == 5
    findings = [{"severity": "warning", "code": "truncation", "message": "train.csv: 12 texts are longer than "
                 "<128> tokens", "file": "train.csv", "rows": [3], "count": 12}]
    config = {"train": {"lr": 0.00042, "epochs": 7}, "model": {"backbone": "minilm-l6"}}
    html = _render(tmp_path, LONG3, data_summary=summary, findings=findings, config=config).read_text()
    assert "<h2>Data</h2>" in html and "Label distribution" in html and "Data checks: 1 warning" in html
    assert "longer than &lt;128&gt; tokens" in html and "[truncation]" not in html
    assert "<th>train.lr</th>" in html and "0.0004" in html and "<th>train.epochs</th>" in html
    assert "50.0 %" in html  # 2 of 4 train rows


VERDICT_LOST = {"beats_baseline": False, "split": "test", "metric": "macro_f1", "model": 0.74, "baseline": 0.85,
                "margin": 0.01, "summary": "The model does not beat the TF-IDF baseline on test (macro_f1 0.74 vs 0.85).",
                "causes": [{"code": "vocabulary", "message": "66.2 % of the tokens are [UNK]: use a <multilingual> "
                                                             "backbone"},
                           {"code": "few_rows", "message": "only 12 rows per class"}]}


def test_report_puts_a_lost_verdict_in_a_box_at_the_top(tmp_path):
    html = _render(tmp_path, LONG3, verdict=VERDICT_LOST).read_text()
    box = html.index('class="verdict"')
    assert box < html.index("<h2>Run</h2>") and box < html.index('class="headline"')
    section = html[box:html.index("</div>", box)]
    assert "does not beat its baseline" in section and "66.2 % of the tokens" in section
    assert "&lt;multilingual&gt;" in section and "only 12 rows per class" in section and "0.7400" in section
    assert "<h2>verdict</h2>" not in html  # not mistaken for a split


def test_report_gives_a_won_verdict_one_calm_line(tmp_path):
    won = {**VERDICT_LOST, "beats_baseline": True, "summary": "The model beats the TF-IDF baseline.", "causes": []}
    html = _render(tmp_path, LONG3, verdict=won).read_text()
    assert 'class="verdict-ok"' in html and "The model beats the TF-IDF baseline." in html
    assert 'class="verdict"' not in html


# --- a real run, in headless Chromium --------------------------------------------------------------


@pytest.fixture(scope="module")
def run_report(tiny_backbone, tmp_path_factory) -> Path:
    """report.html of one tiny 3-class run with Chinese label names and a duplicate-row warning."""
    tmp = tmp_path_factory.mktemp("newcomer")
    df = make_dataset("multiclass", n=96)
    df["category"] = df["category"].map(ZH)
    df = pd.concat([df, df.head(3)], ignore_index=True)  # exact duplicates: a data warning
    df.to_csv(tmp / "news.csv", index=False)
    # a name no other module's run takes: module fixtures share the session's store
    write_config(tmp / "run.yaml", {"name": "report-zh", "data": {"train": "news.csv"},
                                    "model": {"backbone": tiny_backbone}, "train": fast_train(epochs=1)})
    cli("train", "run.yaml", "--no-progress", cwd=tmp)
    report = tmp / "runs" / "report-zh" / "report.html"
    assert report.is_file(), "the run wrote no report.html"
    return report


def test_run_report_has_data_settings_and_traceable_mistakes(run_report):
    html = run_report.read_text(encoding="utf-8")
    assert "<h2>Data</h2>" in html and "Label distribution" in html and "体育新闻" in html
    assert "Data checks:" in html and "duplicate" in html
    assert "<h2>Configuration</h2>" in html and "<th>train.lr</th>" in html
    mistakes = html.split("Most confident mistakes")[1] if "Most confident mistakes" in html else ""
    if "No mistakes to show" not in mistakes:
        assert "row in" in mistakes and "news.csv" in mistakes


def test_evaluate_report_traces_mistakes_to_the_file_evaluated(run_report):
    tmp = run_report.parents[2]  # beside news.csv
    fresh = make_dataset("multiclass", n=30, seed=7)
    fresh["category"] = fresh["category"].map(ZH)
    names = list(ZH.values())
    fresh.loc[:8, "category"] = [names[(names.index(c) + 1) % 3] for c in fresh.loc[:8, "category"]]  # mistakes
    fresh.to_csv(tmp / "fresh.csv", index=False)
    cli("evaluate", str(run_report.parent), "--data", "fresh.csv", cwd=tmp)
    html = (run_report.parent / "evaluations" / "fresh" / "report.html").read_text(encoding="utf-8")
    mistakes = html.split("Most confident mistakes")[1]
    assert "row in" in mistakes and "fresh.csv" in mistakes
    row, text = re.search(r'<tbody><tr><td class="num">(\d+)</td><td class="text">([^<]*)</td>', mistakes).groups()
    assert fresh.loc[int(row) - 1, "text"] == _html.unescape(text)


_MEASURE = """<script>window.addEventListener("load", () => {
  const imgs = [...document.images].map(i => [i.alt, i.naturalWidth, i.naturalHeight, i.width, i.height,
                                               Math.round(i.getBoundingClientRect().top + window.scrollY),
                                               Math.round(i.getBoundingClientRect().left)]);
  document.body.setAttribute("data-imgs", JSON.stringify(imgs));
});</script>"""


def test_run_report_in_headless_chromium(run_report, tmp_path):
    chromium_or_skip()
    probe = tmp_path / "probe.html"
    probe.write_text(run_report.read_text(encoding="utf-8").replace("</body>", _MEASURE + "</body>"),
                     encoding="utf-8")
    dom = dump_dom(probe, width=1280, height=2400)
    imgs = json.loads(_html.unescape(re.search(r'data-imgs="([^"]*)"', dom).group(1)))
    by_alt = {alt: (nw, nh, w, h, top, left) for alt, nw, nh, w, h, top, left in imgs}
    assert "confusion matrix, test" in by_alt and "reliability, test" in by_alt, list(by_alt)
    for alt, (nw, nh, w, h, _, _) in by_alt.items():  # shown at their own aspect ratio: not stretched
        assert nw > 0 and w > 0 and abs(h / w - nh / nw) < 0.02, (alt, nw, nh, w, h)

    shot = screenshot(run_report, tmp_path / "report.png", width=1280, height=2400)
    from PIL import Image

    img = Image.open(shot)
    assert img.size == (1280, 2400)
    assert ink_share(img) > 0.03  # a page, not a blank
    nw, nh, w, h, top, left = by_alt["confusion matrix, test"]
    if top + h <= img.size[1]:
        cm = ink_share(img, (left, top, left + w, top + h))
        assert cm > 0.15, cm  # the matrix itself is drawn (blue cells, numbers, labels)
