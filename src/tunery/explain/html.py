"""Explanations as HTML: the text with each word coloured by its attribution (green raises the
explained score, red lowers it; the strength is relative to the explanation's largest |score|),
the score in each word's tooltip, and the prediction, method and cost beside it. Self-contained:
one file, no scripts, no external assets; every text is escaped."""

from __future__ import annotations

from html import escape

STYLE = """
.tx-expl{font:15px/1.9 system-ui,sans-serif;margin:0 0 1.2em}
.tx-expl .meta{font-size:12px;color:#555}
.tx-expl mark{padding:1px 2px;border-radius:3px;color:#111}
.tx-legend{font-size:12px;color:#555}
"""


def _colour(score: float, scale: float) -> str:
    strength = min(1.0, abs(score) / scale) if scale > 0 else 0.0
    rgb = "22,163,74" if score > 0 else "220,38,38"
    return f"rgba({rgb},{0.08 + 0.72 * strength:.2f})" if strength > 0.02 else "transparent"


def _segment(text: str, words, scale: float) -> str:
    out, pos = [], 0
    for w in sorted(words, key=lambda w: w.start):
        out.append(escape(text[pos:w.start]))
        out.append(f'<mark style="background:{_colour(w.score, scale)}" title="{w.score:+.4f}">'
                   f"{escape(text[w.start:w.end])}</mark>")
        pos = w.end
    out.append(escape(text[pos:]))
    return "".join(out)


def explanation_html(e) -> str:
    """One explanation as an HTML fragment (a div)."""
    scale = max((abs(w.score) for w in e.words), default=0.0)
    body = _segment(e.text, [w for w in e.words if w.segment == 0], scale)
    if e.pair is not None:
        body += " <b>|</b> " + _segment(e.pair, [w for w in e.words if w.segment == 1], scale)
    target = f"{e.target} " if e.target is not None else "value "
    pred = e.prediction.get("label") or "|".join(e.prediction.get("labels", [])) or e.prediction.get("value")
    meta = (f"predicted <b>{escape(str(pred))}</b>; explained: {escape(target)}{e.score:.4f} by {escape(e.method)} "
            f"({e.evaluations} model evaluations, {1000 * e.seconds:.0f} ms")
    if e.delta is not None:
        meta += f", completeness gap {e.delta:+.4f}"
    if e.faithfulness:
        f = e.faithfulness
        meta += (f"; comprehensiveness {f['comprehensiveness']:.3f} vs random {f['random_comprehensiveness']:.3f}")
    meta += ")" + (" — words past the model's max length are not shown coloured" if e.truncated else "")
    return f'<div class="tx-expl"><div>{body}</div><div class="meta">{meta}</div></div>'


def page(explanations, title: str = "tunery explanations") -> str:
    """A whole HTML page of explanations."""
    items = "\n".join(explanation_html(e) for e in explanations)
    legend = ('<p class="tx-legend"><mark style="background:rgba(22,163,74,.6)">green</mark> raises the explained '
              'score, <mark style="background:rgba(220,38,38,.6)">red</mark> lowers it; hover a word for its '
              "attribution.</p>")
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>body{{max-width:60em;margin:2em auto;padding:0 1em}}{STYLE}</style></head>"
            f"<body><h1>{escape(title)}</h1>{legend}{items}</body></html>")
