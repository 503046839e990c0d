"""report.html: one self-contained page a person reads to judge a run.

No external resources: inline CSS, matplotlib PNGs embedded as base64 data: URIs. All user text
(title, run info, label names, example texts) is HTML-escaped. matplotlib is imported inside the
functions (Figure objects with the Agg renderer, no pyplot, no global backend switch), so
`import tunery` stays fast and the report can be written from any thread.

Plots draw label names in any script: the Noto Sans CJK collection (the `noto-cjk-sans-otc`
package, a dependency) is registered with matplotlib's font manager as a per-glyph fallback
behind DejaVu Sans, so Latin text keeps its font and Chinese, Japanese or Korean labels are not
drawn as empty boxes. The figures are PNGs, so the font never enters the report itself.
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
import logging
import os
import threading
from contextlib import contextmanager
from functools import lru_cache
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from tunery.evaluate.errors import most_confident_mistakes
from tunery.evaluate.metrics import compute_metrics, greater_is_better, metric_names
from tunery.rundir import write_text_atomic

log = logging.getLogger(__name__)

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans CJK SC","PingFang SC",
"Microsoft YaHei",sans-serif;margin:2rem auto;
max-width:1100px;padding:0 1rem;color:#222;line-height:1.45}
h1{margin-bottom:.2rem}h2{border-bottom:2px solid #eee;padding-bottom:.2rem;margin-top:2.2rem}
.sub{color:#666;margin-top:0}
table{border-collapse:collapse;margin:.6rem 0 1.2rem;font-size:.92rem}
th,td{border:1px solid #ddd;padding:.25rem .6rem;text-align:left;vertical-align:top}
th{background:#f6f6f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
.better{color:#1a7f37;font-weight:600}.worse{color:#cf222e;font-weight:600}
.headline{background:#f3f8ff;border-left:4px solid #0969da;padding:.5rem .8rem;margin:.8rem 0}
.figs{display:flex;flex-wrap:wrap;gap:1rem;align-items:flex-start}
.figs img{max-width:100%;height:auto;border:1px solid #eee}
.verdict{border:2px solid #cf222e;background:#fff5f5;border-radius:4px;padding:.7rem 1rem;margin:1rem 0}
.verdict h2{margin:0 0 .3rem;border:0;color:#cf222e;font-size:1.25rem}
.verdict ul{margin:.3rem 0 0}.verdict-ok{color:#1a7f37;margin:.6rem 0}
.finding-error{color:#cf222e;font-weight:600}.finding-warning{color:#9a6700;font-weight:600}
details summary{cursor:pointer;color:#0969da}
td.text{max-width:560px;white-space:pre-wrap;word-break:break-word}
.muted{color:#777;font-size:.88rem}
"""
_SPLIT_ORDER = ("train", "validation", "test")
# Per-class tables and the per-label figure show at most this many classes (those with the most
# examples); metrics.json keeps every class's figures.
MAX_CLASS_ROWS = 50


# ---------------------------------------------------------------------------------------------
# small HTML helpers


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if not np.isfinite(v):
            return "—"
        return f"{v:.4f}" if abs(v) < 1e4 else f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) if not isinstance(x, str) else x for x in v)
    return str(v)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    """Cells are HTML already (escape user text before); numeric cells are marked by the caller."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _td(v: Any, cls: str = "") -> str:
    num = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
    classes = " ".join(c for c in ("num" if num else "", cls) if c)
    attr = f' class="{classes}"' if classes else ""
    return f"<td{attr}>{escape(_fmt(v))}</td>"


def _ordered_splits(names) -> list[str]:
    names = list(names)
    return [s for s in _SPLIT_ORDER if s in names] + [s for s in names if s not in _SPLIT_ORDER]


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    items = []
    for k, v in d.items():
        if isinstance(v, dict):
            items += _flatten(v, f"{prefix}{k}.")
        else:
            items.append((f"{prefix}{k}", v))
    return items


# ---------------------------------------------------------------------------------------------
# figures

# matplotlib's rcParams are process-wide: figures are drawn under this lock with the report's
# fonts in an rc_context, so two reports written from two threads never see each other's settings.
_PLOT_LOCK = threading.RLock()
_LATIN_FONT = "DejaVu Sans"  # matplotlib's own, always there
TICK_LABEL_CHARS = 24  # longer label names are cut (with …) on axes; tables show them whole


@lru_cache(maxsize=1)
def plot_fonts() -> tuple[str, ...]:
    """The font families the report's plots use, in fallback order: DejaVu Sans, then Noto Sans
    CJK (registered with matplotlib's font manager on first use) for the glyphs DejaVu lacks."""
    from matplotlib import font_manager

    try:
        import noto_cjk_sans_otc

        path = str(noto_cjk_sans_otc.FONT_PATH)
        font_manager.fontManager.addfont(path)
    except (ImportError, OSError, RuntimeError, ValueError) as err:
        log.warning("report plots cannot draw Chinese, Japanese or Korean text (%s); install the font "
                    "package with `pip install noto-cjk-sans-otc`", err)
        return (_LATIN_FONT,)
    # matplotlib >= 3.10 registers every face of the collection, older ones only the first
    names = [f.name for f in font_manager.fontManager.ttflist if f.fname == path]
    cjk = next((n for n in ("Noto Sans CJK SC", "Noto Sans CJK JP") if n in names), names[0] if names else None)
    return (_LATIN_FONT, cjk) if cjk else (_LATIN_FONT,)


@contextmanager
def _plot_style():
    import matplotlib

    with _PLOT_LOCK, matplotlib.rc_context({"font.family": list(plot_fonts())}):
        yield


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # a renderer to measure text with (see _tilt_crowded_xticks)
    return fig


def _short(name: str) -> str:
    name = str(name)
    return name if len(name) <= TICK_LABEL_CHARS else name[:TICK_LABEL_CHARS - 1] + "…"


def _tilt_crowded_xticks(fig, ax) -> bool:
    """Rotate the x tick labels by 45° when, laid out flat, any two would touch. True if rotated."""
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    boxes = sorted((t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()),
                   key=lambda b: b.x0)
    gap = 4.0  # pixels between neighbours
    if any(a.x1 + gap > b.x0 for a, b in zip(boxes, boxes[1:])):
        for t in ax.get_xticklabels():
            t.set_rotation(45)
            t.set_ha("right")
            t.set_rotation_mode("anchor")
        return True
    return False


def _img(fig, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", metadata={"Software": None})
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}">'


def _text_width_in(text: str, fontsize: float = 10.0) -> float:
    """About how wide `text` is drawn, in inches (wide East Asian characters count twice)."""
    import unicodedata

    units = sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)
    return units * 0.6 * fontsize / 72


def _confusion_fig(cm: np.ndarray, label_names: list[str]):
    c = len(label_names)
    side = min(max(2.6, 0.5 * c), 12.0)  # the matrix itself
    labels = max((_text_width_in(_short(n)) for n in label_names), default=0.0)
    # room for the y labels and colorbar beside it, for (slanted) x labels below it; savefig's
    # tight bounding box trims what is not used, and the matrix keeps its size
    fig = _figure(side + labels + 1.8, side + 0.8 * labels + 1.2)
    ax = fig.add_subplot()
    row = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, row, out=np.zeros_like(cm, dtype=float), where=row > 0)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of true class")
    names = [_short(n) for n in label_names]
    ax.set_xticks(range(c), labels=names)
    ax.set_yticks(range(c), labels=names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (counts)")
    _tilt_crowded_xticks(fig, ax)
    if c <= 25:
        for i in range(c):
            for j in range(c):
                ax.text(j, i, f"{cm[i, j]:,}", ha="center", va="center", fontsize=9 if c <= 10 else 7,
                        color="white" if norm[i, j] > 0.5 else "black")
    return fig


def _reliability_fig(confidence: np.ndarray, correct: np.ndarray, ece: float, *, n_classes: int,
                     bins: int = 10):
    """Accuracy per confidence bin. The top class's probability is at least 1 / n_classes (0.5 for
    two classes), so the x axis starts there (at the tenth below it) and the bins split that
    range, instead of leaving the lower part of the plot empty."""
    lo = float(np.floor(10.0 / max(n_classes, 1) + 1e-9) / 10.0) if n_classes > 1 else 0.0
    conf = np.asarray(confidence, dtype=float).reshape(-1)
    if conf.size and conf.min() < lo:  # scores that do not sum to 1: show them all
        lo = float(np.floor(conf.min() * 10.0) / 10.0)
    edges = np.linspace(lo, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins).astype(float)
    hits = np.bincount(which, weights=np.asarray(correct, dtype=float).reshape(-1), minlength=bins)
    acc = np.divide(hits, counts, out=np.zeros(bins), where=counts > 0)
    fig = _figure(5, 4.6)
    ax = fig.add_subplot()
    centers = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    ax.bar(centers, acc, width=width * 0.9, color="#4c78a8", label="accuracy")
    ax.plot([lo, 1], [lo, 1], "--", color="#888", label="perfect calibration")
    ax.set_xlim(lo, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top class)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability diagram  (ECE = {ece:.4f})")
    ax2 = ax.twinx()
    ax2.plot(centers, counts, "o-", color="#f58518", ms=3, lw=1, label="examples")
    ax2.set_ylabel("examples per bin", color="#f58518")
    handles = [h for a in (ax, ax2) for h in a.get_legend_handles_labels()[0]]
    ax.legend(handles, [h.get_label() for h in handles], loc="upper center", bbox_to_anchor=(0.5, -0.16),
              ncol=3, fontsize=8, frameon=False)
    return fig


def _roc_pr_fig(y: np.ndarray, p: np.ndarray, m: dict):
    from sklearn.metrics import precision_recall_curve, roc_curve

    fig = _figure(9, 4)
    ax1, ax2 = fig.subplots(1, 2)
    fpr, tpr, _ = roc_curve(y, p)
    ax1.plot(fpr, tpr, color="#4c78a8")
    ax1.plot([0, 1], [0, 1], "--", color="#aaa")
    ax1.set_title(f"ROC  (AUC = {_fmt(m.get('roc_auc'))})")
    ax1.set_xlabel("false positive rate")
    ax1.set_ylabel("true positive rate")
    prec, rec, _ = precision_recall_curve(y, p)
    ax2.step(rec, prec, where="post", color="#54a24b")
    ax2.axhline(y.mean(), ls="--", color="#aaa")
    ax2.set_title(f"Precision-recall  (AP = {_fmt(m.get('pr_auc'))})")
    ax2.set_xlabel("recall")
    ax2.set_ylabel("precision")
    for ax in (ax1, ax2):
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
    return fig


def _scatter_fig(y: np.ndarray, p: np.ndarray, m: dict):
    fig = _figure(9, 4)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.scatter(y, p, s=8, alpha=0.5, color="#4c78a8")
    lo, hi = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
    ax1.plot([lo, hi], [lo, hi], "--", color="#888")
    ax1.set_xlabel("true")
    ax1.set_ylabel("predicted")
    ax1.set_title(f"Predicted vs true  (R² = {_fmt(m.get('r2'))})")
    ax2.hist(p - y, bins=40, color="#54a24b")
    ax2.set_xlabel("predicted − true")
    ax2.set_ylabel("examples")
    ax2.set_title(f"Residuals  (RMSE = {_fmt(m.get('rmse'))})")
    return fig


def _shown_classes(label_names: list[str], per_class: dict) -> list[str]:
    """All labels, or the MAX_CLASS_ROWS with the most support (in label order) when there are more."""
    if len(label_names) <= MAX_CLASS_ROWS:
        return list(label_names)
    support = {n: (per_class.get(n) or {}).get("support") or 0 for n in label_names}
    top = set(sorted(label_names, key=lambda n: -support[n])[:MAX_CLASS_ROWS])
    return [n for n in label_names if n in top]


def _shown_note(shown: int, total: int, what: str) -> str:
    if shown == total:
        return ""
    return (f'<p class="muted">Showing the {shown:,} of {total:,} {what} with the most examples; '
            f"metrics.json holds the figures of all.</p>")


def _label_f1_fig(label_names: list[str], model: dict, base: dict | None):
    label_names = _shown_classes(label_names, model)
    c = len(label_names)
    fig = _figure(8, min(max(2.5, 0.28 * c + 1.2), 40))
    ax = fig.add_subplot()
    pos = np.arange(c)
    f1 = [model.get(n, {}).get("f1", 0.0) or 0.0 for n in label_names]
    h = 0.4 if base else 0.8
    ax.barh(pos - (h / 2 if base else 0), f1, height=h, color="#4c78a8", label="model")
    if base:
        bf1 = [base.get(n, {}).get("f1", 0.0) or 0.0 for n in label_names]
        ax.barh(pos + h / 2, bf1, height=h, color="#bab0ac", label="baseline")
        ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(1.01, 0.0))
    ax.set_yticks(pos, labels=[_short(n) for n in label_names])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("F1")
    ax.set_title("F1 per label")
    return fig


_CURVE_METRICS = {"classification": ["accuracy", "macro_f1"], "multilabel": ["micro_f1", "macro_f1"],
                  "regression": ["rmse"]}


def _history_fig(history: list[dict], task: str):
    """Up to three panels: train (and validation) loss, learning rate, the headline validation
    metrics (the task's default and macro-F1)."""
    train = [r for r in history if not r.get("split") and "loss" in r]
    evals = [r for r in history if r.get("split") == "validation"]
    x_key = "step" if any("step" in r for r in history) else "epoch"

    def series(recs, key):
        pts = [(r[x_key], r[key]) for r in recs
               if isinstance(r.get(key), (int, float)) and isinstance(r.get(x_key), (int, float))]
        return [a for a, _ in pts], [b for _, b in pts]

    panels = []  # (title, [(label, xs, ys, style)])
    loss_lines = [("train", *series(train, "loss"), "-")]
    if any(isinstance(r.get("loss"), (int, float)) for r in evals):
        loss_lines.append(("validation", *series(evals, "loss"), "o-"))
    if loss_lines[0][1] or len(loss_lines) > 1:
        panels.append(("loss", loss_lines))
    lr = series(train, "lr")
    if lr[0]:
        panels.append(("learning rate", [("lr", *lr, "-")]))
    metric_lines = [(k, *series(evals, k), "o-") for k in _CURVE_METRICS[task]]
    metric_lines = [line for line in metric_lines if line[1]]
    if metric_lines:
        panels.append(("validation " + ", ".join(line[0] for line in metric_lines), metric_lines))
    if not panels:
        return None
    fig = _figure(4 * len(panels), 3.2)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (title, lines) in zip(axes, panels):
        for label, xs, ys, style in lines:
            if len(xs) < 3 and "o" not in style:  # one or two points: a line alone would not show
                style = "o" + style
            ax.plot(xs, ys, style, ms=3, lw=1.2, label=label)
        if len(lines) > 1:
            ax.legend(fontsize=8)
        ax.set_title(title)
        ax.set_xlabel(x_key)
    return fig


# ---------------------------------------------------------------------------------------------
# sections


def _run_info_html(run_info: dict) -> str:
    def cell(v):
        if isinstance(v, float) and np.isfinite(v):
            return f'<td class="num">{v:,.6g}</td>'
        return _td(v)

    rows = [[f"<th>{escape(str(k))}</th>", cell(v)] for k, v in _flatten(run_info)]
    return _table(["", ""], rows).replace("<thead><tr><th></th><th></th></tr></thead>", "")


def _scalar_keys(task: str, *dicts: dict | None) -> list[str]:
    keys = list(metric_names(task))
    for d in dicts:
        for k, v in (d or {}).items():
            if k not in keys and k not in ("n", "threshold") and (
                    isinstance(v, (int, float)) and not isinstance(v, bool)):
                keys.append(k)
    return [k for k in keys if any(k in (d or {}) for d in dicts)]


def _metrics_table(task: str, model: dict, base: dict | None) -> str:
    rows = []
    for k in _scalar_keys(task, model, base):
        mv, bv = model.get(k), (base or {}).get(k)
        arrow = "" if greater_is_better(k) else ' <span class="muted">(lower is better)</span>'
        row = [f"<th>{escape(k)}{arrow}</th>", _td(mv)]
        if base is not None:
            row.append(_td(bv))
            if isinstance(mv, (int, float)) and isinstance(bv, (int, float)):
                d = mv - bv
                good = (d > 0) == greater_is_better(k)
                cls = "" if abs(d) < 1e-12 else ("better" if good else "worse")
                row.append(f'<td class="num {cls}">{d:+.4f}</td>')
            else:
                row.append(_td(None))
        rows.append(row)
    headers = ["metric", "model"]
    if base is not None:
        headers += ["baseline (TF-IDF)", "Δ model − baseline"]
    return _table(headers, rows)


def _per_class_table(model: dict, base: dict | None, label_names: list[str], thresholds=None) -> str:
    """Per label: the model's precision, recall, F1 and support, its decision threshold (multi-label,
    per label), the baseline's precision, recall and F1 beside them, and the F1 difference; then a
    note naming the labels the model does not learn (F1 under 0.1 with examples present) and those
    where the baseline does better, so a user sees which labels need more data."""
    pc, bpc = model.get("per_class") or {}, (base or {}).get("per_class")
    shown = _shown_classes(label_names, pc)
    per_label_t = thresholds is not None and np.ndim(thresholds) == 1 and len(thresholds) == len(label_names)
    rows, unlearned, behind = [], [], []
    for name in shown:
        r = pc.get(name)
        if r is None:
            continue
        row = [f"<th>{escape(name)}</th>", _td(r.get("support")), _td(r.get("precision")), _td(r.get("recall")),
               _td(r.get("f1"))]
        if per_label_t:
            row.append(_td(float(np.asarray(thresholds)[label_names.index(name)])))
        f1 = r.get("f1")
        if (r.get("support") or 0) > 0 and f1 is not None and f1 < 0.1:
            unlearned.append(name)
        if bpc is not None:
            b = bpc.get(name) or {}
            delta = None if f1 is None or b.get("f1") is None else f1 - b["f1"]
            if delta is not None and delta < 0:
                behind.append(name)
            row += [_td(b.get("precision")), _td(b.get("recall")), _td(b.get("f1")),
                    _td(delta, "worse" if delta is not None and delta < 0 else "")]
        rows.append(row)
    if not rows:
        return ""
    headers = (["label", "support", "precision", "recall", "F1"] + (["threshold"] if per_label_t else [])
               + (["baseline precision", "baseline recall", "baseline F1", "Δ F1"] if bpc is not None else []))
    notes = []
    if unlearned:
        notes.append(f"The model does not learn {_names(unlearned)} (F1 under 0.1): more labelled examples of "
                     "them, or merging them with a related label, is the usual fix.")
    if behind:
        notes.append(f"The baseline does better on {_names(behind)}.")
    note = "".join(f'<p class="muted">{escape(n)}</p>' for n in notes)
    return _table(headers, rows) + note + _shown_note(len(shown), len(label_names), "labels")


def _names(names: list[str], most: int = 8) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _top_confusions_table(confusions: list[dict], per_class: dict) -> str:
    """The most frequent mistakes, for runs with too many classes for a confusion matrix."""
    if not confusions:
        return '<p class="muted">No mistakes.</p>'
    rows = []
    for c in confusions:
        support = (per_class.get(c["true"]) or {}).get("support") or 0
        share = c["count"] / support if support else None
        rows.append([_td(c["true"]), _td(c["predicted"]), _td(c["count"]), _td(share)])
    return ("<h3>Most frequent confusions</h3>"
            f'<p class="muted">{len(per_class):,} classes are too many for a confusion matrix; these '
            f"are the {len(confusions)} most frequent (true, predicted) mistakes.</p>"
            + _table(["true", "predicted", "count", "share of true class"], rows))


def _mistakes_html(task: str, mistakes: list[dict], word: str = "row") -> str:
    if not mistakes:
        return '<p class="muted">No mistakes to show.</p>'

    def lab(v):
        return ", ".join(v) if isinstance(v, list) else v

    traced = all("row" in m for m in mistakes)
    sources = {m.get("source") for m in mistakes} if traced else set()
    one_file = len(sources) == 1 and None not in sources
    if traced:
        first_h = (f'{escape(word)} in <span title="{escape(str(next(iter(sources))))}">'
                   f"{escape(Path(str(next(iter(sources)))).name)}</span>" if one_file else f"file: {escape(word)}")
    else:
        first_h = "#"

    def where(m) -> str:
        if not traced:
            return _td(m["index"])
        if one_file or not m.get("source"):
            return _td(m["row"])
        src = str(m["source"])
        return f'<td class="num" title="{escape(src)}">{escape(Path(src).name)}: {escape(_fmt(m["row"]))}</td>'

    rows = []
    for m in mistakes:
        text = m["text"] if len(m["text"]) <= 600 else m["text"][:600] + " …"
        last = m["error"] if task == "regression" else m["confidence"]
        rows.append([where(m), f'<td class="text">{escape(text)}</td>',
                     _td(lab(m["true"])), _td(lab(m["predicted"])), _td(last)])
    last_h = "absolute error" if task == "regression" else "confidence"
    return _table([first_h, "text", "true", "predicted", last_h], rows)


def _headline(task: str, metrics: dict, baseline: dict | None) -> str:
    from tunery.evaluate.metrics import default_metric

    key = default_metric(task)
    split = "test" if "test" in metrics else next(iter(_ordered_splits(metrics)), None)
    if split is None or metrics[split].get(key) is None:
        return ""
    mv = metrics[split][key]
    text = f"On <b>{escape(split)}</b>, the model's {escape(key)} is <b>{mv:.4f}</b>"
    bv = ((baseline or {}).get(split) or {}).get(key)
    if isinstance(bv, (int, float)):
        better = (mv > bv) == greater_is_better(key) and mv != bv
        text += (f" against {bv:.4f} for the TF-IDF baseline ({mv - bv:+.4f}, "
                 f"{'better' if better else 'not better'}).")
    else:
        text += "."
    return f'<div class="headline">{text}</div>'


def _split_section(
    split: str, task: str, label_names: list[str], model: dict | None, base: dict | None,
    pred: tuple | None, *, n_errors: int, threshold, calibration_bins: int, origin: tuple | None = None,
    figures: bool = True,
) -> str:
    n = (model or {}).get("n")
    parts = [f"<h2>{escape(split)}{f' ({n:,} examples)' if isinstance(n, int) else ''}</h2>"]
    if model:
        parts.append(_metrics_table(task, model, base))
        if task != "regression":
            parts.append("<h3>Per class</h3>" if task == "classification" else "<h3>Per label</h3>")
            parts.append(_per_class_table(model, base, label_names,
                                          threshold if task == "multilabel" else None))
    if pred is None:
        return "\n".join(parts)
    texts, y, scores = pred
    y, scores = np.asarray(y), np.asarray(scores)
    figs = []
    if len(y):
        m = compute_metrics(task, y, scores, label_names, threshold=threshold,
                            calibration_bins=calibration_bins)
        if "confusion_matrix" not in m and task == "classification":  # too many classes for a matrix: a table
            parts.append(_top_confusions_table(m.get("top_confusions") or [], m["per_class"]))
    if len(y) and figures:
        if task == "classification":
            if "confusion_matrix" in m:
                figs.append(_img(_confusion_fig(np.asarray(m["confusion_matrix"]), label_names),
                                 f"confusion matrix, {split}"))
            conf = scores.max(axis=1)
            figs.append(_img(_reliability_fig(conf, scores.argmax(axis=1) == y.astype(int).reshape(-1),
                                              m["ece"], n_classes=len(label_names), bins=calibration_bins),
                             f"reliability, {split}"))
            if len(label_names) == 2 and m.get("roc_auc") is not None:
                figs.append(_img(_roc_pr_fig((y == 1).astype(int), scores[:, 1], m),
                                 f"ROC and PR curves, {split}"))
        elif task == "multilabel":
            figs.append(_img(_label_f1_fig(label_names, m["per_class"], (base or {}).get("per_class")),
                             f"F1 per label, {split}"))
        else:
            figs.append(_img(_scatter_fig(y.astype(float), scores.astype(float), m),
                             f"predicted vs true, {split}"))
    if figs:
        parts.append('<div class="figs">' + "".join(figs) + "</div>")
    if n_errors > 0:
        title = "Largest errors" if task == "regression" else "Most confident mistakes"
        rows, sources, word = (*origin, "row")[:3] if origin is not None else (None, None, "row")
        if rows is None:
            title += ' <span class="muted">(# = position in this split)</span>'
        mistakes = most_confident_mistakes(task, list(texts), y, scores, label_names, n=n_errors,
                                           threshold=threshold, rows=rows, sources=sources)
        parts.append(f"<h3>{title}</h3>")
        parts.append(_mistakes_html(task, mistakes, word))
    return "\n".join(parts)


def _verdict_html(verdict: dict | None) -> str:
    """The verdict against the baseline (tunery.evaluate.verdict): a box that cannot be missed
    when the model does not beat its baseline, one calm line when it does."""
    if not isinstance(verdict, dict) or "beats_baseline" not in verdict:
        return ""
    summary = escape(str(verdict.get("summary") or ""))
    figures = ""
    if all(isinstance(verdict.get(k), (int, float)) for k in ("model", "baseline")):
        figures = (f'<p class="muted">{escape(str(verdict.get("split", "")))} '
                   f'{escape(str(verdict.get("metric", "")))}: model {verdict["model"]:.4f}, '
                   f'TF-IDF baseline {verdict["baseline"]:.4f}'
                   + (f', noise margin ±{abs(verdict["margin"]):.4f}'
                      if isinstance(verdict.get("margin"), (int, float)) else "") + "</p>")
    if verdict["beats_baseline"]:
        return f'<p class="verdict-ok">✔ {summary}</p>'
    causes = [c for c in verdict.get("causes") or [] if isinstance(c, dict) and c.get("message")]
    items = "".join(f"<li>{escape(str(c['message']))}</li>" for c in causes)
    return ('<div class="verdict" role="alert" id="verdict"><h2>This model does not beat its baseline</h2>'
            f"<p>{summary}</p>{figures}"
            + (f"<p><b>Likely causes</b></p><ul>{items}</ul>" if items else
               '<p class="muted">No likely cause was found in the data or the training curve.</p>')
            + "</div>")


def summarize_splits(frames: dict, task: str, label_names: list[str]) -> dict:
    """A data summary for the report, from the prepared split frames (columns text, label):
    {split: {"rows": n, "text_chars": {"median", "p95", "max"}, "labels": {name: count}}}
    ("labels" for regression: {"mean", "std", "min", "max"} of the target)."""
    out = {}
    for split in _ordered_splits(frames):
        frame = frames[split]
        if frame is None:
            continue
        n = int(len(frame))
        entry: dict = {"rows": n}
        if n and "text" in frame:
            lengths = frame["text"].astype(str).str.len().to_numpy()
            if "text_pair" in frame:
                lengths = lengths + frame["text_pair"].astype(str).str.len().to_numpy()
            entry["text_chars"] = {"median": float(np.median(lengths)),
                                   "p95": float(np.percentile(lengths, 95)), "max": int(lengths.max())}
        if n and "label" in frame:
            if task == "regression":
                y = frame["label"].astype(float)
                entry["target"] = {"mean": float(y.mean()), "std": float(y.std(ddof=0)),
                                   "min": float(y.min()), "max": float(y.max())}
            else:
                codes = frame["label"].explode().dropna() if task == "multilabel" else frame["label"]
                counts = codes.astype("int64").value_counts()
                entry["labels"] = {name: int(counts.get(i, 0)) for i, name in enumerate(label_names)}
        out[split] = entry
    return out


def _data_html(summary: dict | None, findings: list[dict] | None, label_names: list[str]) -> str:
    if summary is None and findings is None:
        return ""
    parts = ["<h2>Data</h2>"]
    if summary:
        splits = list(summary)
        rows = []
        for sp in splits:
            e = summary[sp]
            tc = e.get("text_chars") or {}
            rows.append([f"<th>{escape(sp)}</th>", _td(e.get("rows"))]
                        + [f'<td class="num">{tc[k]:,.0f}</td>' if isinstance(tc.get(k), (int, float)) else _td(None)
                           for k in ("median", "p95", "max")])
        parts.append(_table(["split", "rows", "text length (characters): median", "95th percentile", "longest"],
                            rows))
        if any("labels" in summary[sp] for sp in splits):
            shown = _shown_classes(label_names, {n: {"support": sum((summary[sp].get("labels") or {}).get(n, 0)
                                                                     for sp in splits)} for n in label_names})
            rows = []
            for name in shown:
                row = [f"<th>{escape(str(name))}</th>"]
                for sp in splits:
                    labels = summary[sp].get("labels") or {}
                    total = summary[sp].get("rows") or 0
                    c = labels.get(name, 0)
                    share = f" ({100 * c / total:.1f} %)" if total else ""
                    row.append(f'<td class="num">{c:,}{share}</td>')
                rows.append(row)
            parts.append("<h3>Label distribution</h3>" + _table(["label", *map(escape, splits)], rows)
                         + _shown_note(len(shown), len(label_names), "labels"))
        if any("target" in summary[sp] for sp in splits):
            rows = [[f"<th>{escape(sp)}</th>", *(_td((summary[sp].get("target") or {}).get(k))
                                                  for k in ("mean", "std", "min", "max"))] for sp in splits]
            parts.append("<h3>Target</h3>" + _table(["split", "mean", "std", "min", "max"], rows))
    if findings is not None:
        if not findings:
            parts.append('<p class="muted">The data checks found nothing to warn about.</p>')
        else:
            n_err = sum(f.get("severity") == "error" for f in findings)
            n_warn = len(findings) - n_err
            head = ", ".join(x for x in (f"{n_err} error{'s' * (n_err != 1)}" if n_err else "",
                                         f"{n_warn} warning{'s' * (n_warn != 1)}" if n_warn else "") if x)
            rows = [[f'<td class="finding-{escape(str(f.get("severity")))}">{escape(str(f.get("severity")))}</td>',
                     _td(f.get("code")), f'<td class="text">{escape(str(f.get("message", "")))}</td>']
                    for f in findings]
            parts.append(f"<h3>Data checks: {head}</h3>" + _table(["severity", "check", "finding"], rows))
    return "\n".join(parts)


def _config_html(config: dict | None) -> str:
    if not config:
        return ""
    rows = [[f"<th>{escape(str(k))}</th>", _td(v if not isinstance(v, (list, tuple)) or v else "[]")]
            for k, v in _flatten(config)]
    return ("<h2>Configuration</h2>"
            '<p class="muted">The resolved settings of this run (config.yaml), defaults included.</p>'
            + _table(["setting", "value"], rows))


_METHOD_NOTES = {
    "ig": "Integrated Gradients (Captum): each word's share of the change in the explained score from a "
          "[CLS] [PAD]… [SEP] input to the text, over {steps} steps; the completeness gap is the sum of the "
          "word scores minus that change (near 0: the scores account for the prediction)",
    "occlusion": "leave-one-out occlusion: each word's score is how much the explained score drops when that "
                 "word alone is removed",
}


def _explanations_html(task: str, section: dict | None) -> str:
    """The Explanations section: `section` = {"split", "method", "seconds", "note" (optional), "items":
    [example dicts of `tunery.evaluate.errors.examples_to_explain`, each with its "explanation" (a
    `tunery.explain.Explanation`)]}. Empty where there is nothing to show."""
    if not section or not section.get("items"):
        return ""
    from tunery.explain.html import explanation_html

    items = section["items"]
    n_wrong = sum(it["kind"] == "mistake" for it in items)
    n_right = len(items) - n_wrong
    regression = task == "regression"
    wrong_word, right_word = ("largest errors", "closest predictions") if regression else \
        ("most confident mistakes", "correct predictions")
    def count(k: int, words: str) -> str:
        return f"{k} {words if k != 1 else words[:-1]}"

    what = " and ".join(x for x in (f"the {count(n_wrong, wrong_word)}" if n_wrong else "",
                                    count(n_right, right_word) if n_right else "") if x)
    if regression:
        explained = "The explained score is the predicted value."
    elif task == "multilabel":
        explained = ("For a mistake, the explained score is the probability of the label the model was most "
                     "confidently wrong about: for a label it gave wrongly, the green words are why it gave it; "
                     "for a label it missed, the red words are why it did not. For a correct prediction, it is "
                     "the probability of its top label.")
    else:
        explained = ("For a mistake, the explained score is the probability of the label the model "
                     "<b>predicted</b>, not the true one: the green words are why it said so.")
    method = section.get("method", "")
    params = getattr(items[0]["explanation"], "params", {}) or {}
    how = _METHOD_NOTES.get(method, method).format(steps=params.get("steps", "?"))
    parts = ['<h2 id="explanations">Explanations</h2>',
             f"<p>Which words drove the model's predictions on the <b>{escape(str(section.get('split', '')))}"
             f"</b> split, for {escape(what)}. Each word is coloured by its attribution to the explained score: "
             '<mark style="background:rgba(22,163,74,.6)">green</mark> raises it, '
             '<mark style="background:rgba(220,38,38,.6)">red</mark> lowers it (hover a word for its number). '
             f"{explained}</p>",
             f'<p class="muted">Method: {escape(how)}. {len(items)} explanation{"s" * (len(items) != 1)} in '
             f"{float(section.get('seconds', 0.0)):.1f} s.</p>"]
    if section.get("note"):
        parts.append(f'<p class="muted">{escape(str(section["note"]))}</p>')

    def lab(v) -> str:
        if isinstance(v, list):
            return ", ".join(map(str, v)) or "(none)"
        return _fmt(v)

    for kind, title in (("mistake", wrong_word.capitalize()), ("correct", right_word.capitalize())):
        chosen = [it for it in items if it["kind"] == kind]
        if not chosen:
            continue
        parts.append(f"<h3>{escape(title)}</h3>")
        for it in chosen:
            where = ""
            if "row" in it:
                src = it.get("source")
                where = f"{'row' if isinstance(it['row'], int) else 'index'} {escape(_fmt(it['row']))}" + (
                    f' in <span title="{escape(str(src))}">{escape(Path(str(src)).name)}</span>' if src else "")
            else:
                where = f"#{it['index']}"
            sure = (f"absolute error {_fmt(it['error'])}" if regression else f"confidence {_fmt(it['confidence'])}")
            head = (f'<div class="muted">{where} · true <b>{escape(lab(it["true"]))}</b> · predicted '
                    f'<b>{escape(lab(it["predicted"]))}</b> · {sure}</div>')
            parts.append(f'<div class="tx-item tx-{kind}">{head}{explanation_html(it["explanation"])}</div>')
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------


def render_report(
    *, title: str, run_info: dict, task: str, label_names: list[str], metrics: dict[str, dict],
    baseline: dict[str, dict] | None, predictions: dict[str, tuple[list[str], np.ndarray, np.ndarray]],
    history: list[dict] | None = None, n_errors: int = 20, threshold=0.5, calibration_bins: int = 10,
    verdict: dict | None = None, data_summary: dict | None = None, findings: list[dict] | None = None,
    config: dict | None = None, origins: dict[str, tuple] | None = None, tables: list[dict] | None = None,
    explanations: dict | None = None, figures: bool = True,
) -> str:
    """The report as an HTML string (see `write_report`)."""
    with _plot_style():
        return _render(
            title=title, run_info=run_info, task=task, label_names=label_names, metrics=metrics,
            baseline=baseline, predictions=predictions, history=history, n_errors=n_errors,
            threshold=threshold, calibration_bins=calibration_bins, verdict=verdict, data_summary=data_summary,
            findings=findings, config=config, origins=origins, tables=tables, explanations=explanations,
            figures=draw_figures(figures))


FIGURES_ENV = "TUNERY_REPORT_FIGURES"


def draw_figures(figures: bool = True) -> bool:
    """Whether a report draws its figures: evaluate.figures, unless TUNERY_REPORT_FIGURES=0 turns them
    off for every report of the process and its children (batch jobs and CI, where the plots, about a
    second a report, are never looked at). The tables, numbers and mistakes are written either way."""
    return bool(figures) and os.environ.get(FIGURES_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _tables_html(tables: list[dict] | None) -> str:
    """Extra sections, each {"title", "headers", "rows", optional "note"}: a capability's own
    figures (a compressed model's size and speed before and after)."""
    out = []
    for t in tables or []:
        out += [f"<h2>{escape(t['title'])}</h2>",
                _table([escape(h) for h in t["headers"]], [[_td(v) for v in row] for row in t["rows"]])]
        if t.get("note"):
            out.append(f'<p class="muted">{escape(t["note"])}</p>')
    return "\n".join(out)


def _render(*, title, run_info, task, label_names, metrics, baseline, predictions, history, n_errors,
            threshold, calibration_bins, verdict, data_summary, findings, config, origins, tables=None,
            explanations=None, figures=True) -> str:
    metrics = dict(metrics)
    if verdict is None and isinstance(metrics.get("verdict"), dict):
        verdict = metrics["verdict"]
    metrics = {k: v for k, v in metrics.items() if k != "verdict" and isinstance(v, dict)}
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    body = [f"<h1>{escape(title)}</h1>",
            f'<p class="sub">{escape(task)} · {len(label_names)} labels · written {when}</p>'
            if task != "regression" else f'<p class="sub">regression · written {when}</p>',
            _verdict_html(verdict),
            _headline(task, metrics, baseline),
            "<h2>Run</h2>", _run_info_html(run_info), _tables_html(tables),
            _data_html(data_summary, findings, label_names)]
    if task == "multilabel":
        t = threshold if np.ndim(threshold) == 0 else "per label: " + _fmt(list(np.asarray(threshold)))
        body.append(f'<p class="muted">Decision threshold: {escape(_fmt(t))}</p>')
    if not figures:
        body.append('<p class="muted">Figures not drawn (evaluate.figures is false, or TUNERY_REPORT_FIGURES=0).</p>')
    if history and figures:
        fig = _history_fig(history, task)
        if fig is not None:
            body += ["<h2>Training</h2>", '<div class="figs">' + _img(fig, "training curves") + "</div>"]
    for split in _ordered_splits([*metrics, *[s for s in predictions if s not in metrics]]):
        body.append(_split_section(
            split, task, label_names, metrics.get(split), (baseline or {}).get(split),
            predictions.get(split), n_errors=n_errors, threshold=threshold,
            calibration_bins=calibration_bins, origin=(origins or {}).get(split), figures=figures))
    explained = _explanations_html(task, explanations)
    css = _CSS
    if explained:
        from tunery.explain.html import STYLE

        body.append(explained)
        css += STYLE + ".tx-item{margin:.2rem 0 .9rem}.tx-item .tx-expl{margin:0}\n"
    body.append(_config_html(config))
    if baseline is None:
        body.append('<p class="muted">No baseline was computed for this run.</p>')
    else:
        body.append('<p class="muted">Baseline: TF-IDF word 1–2-grams (+ char 2–5-grams) with '
                    "logistic regression (classification, one per label for multi-label) or ridge "
                    "regression, fitted on the same training split.</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(title)}</title><style>{css}</style></head><body>\n"
            + "\n".join(b for b in body if b) + "\n</body></html>\n")


def write_report(
    path, *, title: str, run_info: dict, task: str, label_names: list[str],
    metrics: dict[str, dict], baseline: dict[str, dict] | None,
    predictions: dict[str, tuple[list[str], np.ndarray, np.ndarray]],
    history: list[dict] | None = None, n_errors: int = 20, threshold=0.5,
    calibration_bins: int = 10, verdict: dict | None = None, data_summary: dict | None = None,
    findings: list[dict] | None = None, config: dict | None = None, origins: dict[str, tuple] | None = None,
    tables: list[dict] | None = None, explanations: dict | None = None, figures: bool = True,
) -> None:
    """Write one self-contained HTML report to `path` (atomically: temp file, then rename).

    `metrics` and `baseline` map split names ("validation", "test") to `compute_metrics` dicts;
    `predictions[split] = (texts, y_true, scores)` in the data contract of `tunery.evaluate.metrics`
    feeds the figures and the mistakes table. `history`: log records (step, epoch, loss, lr, ...);
    records with `split: "validation"` hold evaluation metrics.

    Optional sections: `verdict` (tunery.evaluate.verdict; also taken from `metrics["verdict"]`)
    at the top; `data_summary` (see `summarize_splits`) and `findings` (data_report.json's
    findings) under Data; `config` (the resolved run config) under Configuration. `origins[split]
    = (rows, sources)`, one per text, makes the mistakes table show where each example is in the
    user's file (the prepared frames' `row` and `source` columns). `tables`: extra sections under
    Run, each {"title", "headers", "rows", optional "note"}. `explanations`: the Explanations
    section, explained examples made by the caller (see `_explanations_html`; this module runs no
    model). `figures`: draw the plots (see `draw_figures`).
    """
    html = render_report(
        title=title, run_info=run_info, task=task, label_names=label_names, metrics=metrics,
        baseline=baseline, predictions=predictions, history=history, n_errors=n_errors,
        threshold=threshold, calibration_bins=calibration_bins, verdict=verdict, data_summary=data_summary,
        findings=findings, config=config, origins=origins, tables=tables, explanations=explanations,
        figures=figures)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, html)  # readable as the umask says, like any other output (not mkstemp's 0600)


# ---------------------------------------------------------------------------------------------
# sections added to a written report by later capabilities (tunery attack)

_SECTION_START, _SECTION_END = "<!-- tunery-section:{key} -->", "<!-- /tunery-section:{key} -->"


def robustness_html(results: dict) -> str:
    """The Robustness section: per attack recipe, its constraints, its figures and a few examples
    (`results`: tunery.attack.attack_run's, recipe -> summary)."""
    pct = lambda v: "—" if v is None else f"{100 * v:.1f} %"  # noqa: E731
    parts = ['<h2 id="robustness">Robustness</h2>',
             '<p class="muted">Accuracy under attack: a text counts as correct only if the model had it right '
             "and the attack did not change the prediction. Figures hold only under the constraints beside them.</p>"]
    for recipe, r in results.items():
        settings = ", ".join(f"{k} {v}" for k, v in r["settings"].items() if k != "recipe")
        parts.append(f"<h3>{escape(recipe)} on {r['n']:,} texts of {escape(Path(r.get('data') or '').name)}</h3>")
        parts.append(f'<p class="muted">{escape(settings)}</p>')
        parts.append(_table(
            ["clean accuracy", "accuracy under attack", "attack success", "mean queries", "words changed", "similarity"],
            [[f'<td class="num">{pct(r["clean_accuracy"])}</td>', f'<td class="num">{pct(r["accuracy_under_attack"])}</td>',
              f'<td class="num">{pct(r["attack_success_rate"])}</td>', _td(r["mean_queries"]),
              f'<td class="num">{pct(r["mean_share_perturbed"])}</td>', _td(r["mean_similarity"])]]))
        rows = [[f"<td>{escape(ex['original'])}</td>", f"<td>{escape(ex['perturbed'] or '')}</td>",
                 f"<td>{escape(str(ex['predicted_before']))} → {escape(str(ex['predicted_after']))}</td>"]
                for ex in r["examples"]]
        if rows:
            parts.append(_table(["original", "perturbed", "prediction"], rows))
    return "\n".join(parts)


def put_section(path, key: str, html: str) -> None:
    """Put a section into a written report: replace the section `key` where the report has one, else
    insert it before the Configuration section (or at the end). Written atomically."""
    path = Path(path)
    page = path.read_text(encoding="utf-8")
    start, end = _SECTION_START.format(key=key), _SECTION_END.format(key=key)
    block = f"{start}\n{html}\n{end}"
    if start in page and end in page:
        page = page[:page.index(start)] + block + page[page.index(end) + len(end):]
    elif "<h2>Configuration</h2>" in page:
        i = page.index("<h2>Configuration</h2>")
        page = page[:i] + block + "\n" + page[i:]
    else:
        i = page.rindex("</body>")
        page = page[:i] + block + "\n" + page[i:]
    write_text_atomic(path, page)
