"""study.html: one self-contained page per study (plotly's JavaScript embedded once, so it opens
offline): the optimisation history, the intermediate values with the pruned trials, parameter
importances, parallel coordinates, and a table of trials linking to their run reports."""

from __future__ import annotations

import html
import logging
import os
from pathlib import Path

from tunery.rundir import write_text_atomic
from tunery.tune import study as studies

log = logging.getLogger(__name__)

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}
th{background:#f3f3f3}.best{background:#e8f6e8}.note{color:#777}"""


def _figures(study) -> list[tuple[str, object | None, str | None]]:
    """(title, plotly figure or None, why not) for each plot; a plot that needs more trials says so."""
    import warnings

    from optuna import visualization as vis

    plots = [("Optimisation history", vis.plot_optimization_history),
             ("Intermediate values (step: training examples seen; pruned trials stop early)",
              vis.plot_intermediate_values),
             ("Parameter importances", vis.plot_param_importances),
             ("Parallel coordinates", vis.plot_parallel_coordinate)]
    out = []
    for title, plot in plots:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out.append((title, plot(study), None))
        except (ValueError, RuntimeError, ZeroDivisionError) as err:  # too few trials for this plot
            out.append((title, None, str(err) or type(err).__name__))
    return out


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape("" if value is None else str(value))


def write_report(study, path: Path) -> Path:
    """Write study.html at `path`; returns it."""
    s = studies.settings(study)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    best = studies.best_trial(study)
    parts = [f"<h1>Study {html.escape(study.study_name)}</h1>",
             f"<p>Objective: {html.escape(s['metric'])} on validation ({s['direction']}); pruner {s['pruner']}; "
             f"{'best trial: ' + str(best.number) + f' ({best.value:.4f})' if best else 'no complete trial yet'}.</p>"]
    plotly_js = True
    for title, fig, why in _figures(study):
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if fig is None:
            parts.append(f"<p class=note>not drawn: {html.escape(why)}</p>")
            continue
        parts.append(fig.to_html(full_html=False, include_plotlyjs=plotly_js))  # the JS once, inline
        plotly_js = False
    rows = studies.rows(study)
    keys = sorted({k for r in rows for k in r.params})
    head = "".join(f"<th>{html.escape(h)}</th>" for h in
                   ["trial", "state", s["metric"], *keys, "seconds", "stopped by", "retry of", "run"])
    body = []
    for r in rows:
        link = ""
        if r.run_dir:
            target = Path(r.run_dir) / "report.html"
            rel = os.path.relpath(target, path.parent)
            link = f"<a href='{html.escape(rel)}'>{html.escape(r.run or '')}</a>"
        elif r.run:
            link = html.escape(r.run)
        cells = [r.number, r.state, r.value, *[r.params.get(k) for k in keys], r.seconds, r.stopped_by, r.retry_of]
        cls = " class=best" if best is not None and r.number == best.number else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{_cell(c)}</td>" for c in cells) + f"<td>{link}</td></tr>")
    parts += ["<h2>Trials</h2>", f"<table><tr>{head}</tr>{''.join(body)}</table>"]
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>study {html.escape(study.study_name)}</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>")
    write_text_atomic(path, page)
    return path
