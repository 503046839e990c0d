"""report.html of a federated run: the federation (clients, who trained, who sat out and why, who
dropped), per-round curves (training loss and the clients' validation metric), per-client metrics
of the last round, and the bytes sent and received. Built with the run report's HTML helpers."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

from tunery.evaluate.report import _CSS, _figure, _img, _plot_style, _table, _td


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def _curves(rounds: list[dict], metric: str) -> str:
    if not rounds:
        return ""
    with _plot_style():
        fig = _figure(7.0, 2.8)
        ax1, ax2 = fig.subplots(1, 2)
        x = [r["round"] for r in rounds]
        trained = [r for r in rounds if r["train_loss"] is not None]  # round 0: the initial model, untrained
        ax1.plot([r["round"] for r in trained], [r["train_loss"] for r in trained], marker="o")
        ax1.set_title("training loss (clients, weighted)")
        ax1.set_xlabel("round")
        clients = sorted({c for r in rounds for c in r["per_client"]})
        for c in clients:
            ax2.plot(x, [_num(r["per_client"].get(c, {}).get("eval_metric")) for r in rounds], marker=".",
                     alpha=0.6, label=c)
        ax2.plot(x, [_num(r["eval_metric"]) for r in rounds], marker="o", color="black", label="weighted")
        ax2.set_title(f"validation {metric} (each client's own)")
        ax2.set_xlabel("round")
        ax2.legend(fontsize=7)
        return _img(fig, f"training loss and validation {metric} per round")


def _record_dp(rd: dict | None) -> str:
    if not rd:
        return "off"
    worst = f"{rd['epsilon']:.2f}" if rd.get("epsilon") is not None else "n/a"
    return (f"DP-SGD in each client: noise multiplier {rd['noise_multiplier']}, per-row clip {rd['max_grad_norm']}; "
            f"epsilon at most {worst} at delta {rd['delta']:g} (each client's rows, all its steps; per client below)")


def write_report(path: Path, cfg, meta: dict, summary: dict, rounds: list[dict]) -> None:
    metric = meta["metric"]
    info = [["run", meta["name"]], ["backbone", f"{meta['backbone']} ({meta['method']})"], ["task", meta["task"]],
            ["strategy", summary["strategy"]], ["updates", f"{summary['updates']}: {summary['update_bytes']:,} bytes "
                                                           "per client and direction"],
            ["rounds", str(summary["rounds"])], ["clients", ", ".join(summary["clients"])],
            ["trained", ", ".join(summary["trained"])],
            ["sat out", "; ".join(f"{c}: {w}" for c, w in summary["sat_out"].items()) or "none"],
            ["dropped in a round", ", ".join(summary["dropped"]) or "none"],
            ["bytes sent / received", f"{summary['bytes_sent']:,} / {summary['bytes_received']:,}"],
            ["differential privacy", "off" if not summary.get("dp") else
             f"client-level: noise multiplier {summary['dp']['noise_multiplier']}, clip {summary['dp']['clipping_norm']}, "
             f"epsilon {summary['dp']['epsilon']:.2f} at delta {summary['dp']['delta']:g} "
             f"({summary['dp']['accountant']})"],
            ["record-level privacy (train.dp)", _record_dp(summary.get("record_dp"))],
            ["secure aggregation", "off" if not summary.get("secure_aggregation") else
             f"{summary['secure_aggregation']['protocol']}; threshold {summary['secure_aggregation']['threshold']}; "
             f"values within ±{summary['secure_aggregation']['clip']:g}"],
            ["model kept", _kept(summary)],
            ["wall time", f"{summary['wall_seconds']:.0f} s"]]
    head = _table(["", ""], [[f"<th>{escape(k)}</th>", f"<td>{escape(v)}</td>"] for k, v in info])
    per_round = _table(["round", "train loss", f"validation {metric}", "validation loss", "trained", "dropped",
                        "bytes sent", "bytes received", "epsilon"],
                       [[_td(r["round"]), _td(r["train_loss"]), _td(r["eval_metric"]), _td(r["eval_loss"]),
                         _td(", ".join(r["clients_trained"])), _td(", ".join(r["dropped"]) or "—"),
                         _td(r["bytes_sent"]), _td(r["bytes_received"]), _td(r.get("epsilon"))] for r in rounds])
    last = rounds[-1]["per_client"] if rounds else {}
    eps = (summary.get("record_dp") or {}).get("epsilon_per_client") or {}
    per_client = _table(["client", "rows", "train loss", f"validation {metric}", "validation loss", "DP-SGD epsilon"],
                        [[_td(c), _td(summary["rows"].get(c)), _td(v["train_loss"]), _td(v["eval_metric"]),
                          _td(v["eval_loss"]), _td(eps.get(c))] for c, v in last.items()])
    html = (f"<!doctype html><html><head><meta charset='utf-8'><title>tunery federated run {escape(meta['name'])}"
            f"</title><style>{_CSS}</style></head><body><h1>Federated run {escape(meta['name'])}</h1>{head}"
            f"<h2>Rounds</h2>{_curves(rounds, metric)}{per_round}<h2>Clients, last round</h2>{per_client}"
            f"<h2>Config</h2><pre>{escape(json.dumps(cfg.to_dict(), indent=1, ensure_ascii=False))}</pre>"
            "</body></html>")
    path.write_text(html, encoding="utf-8")


def _kept(summary: dict) -> str:
    """Which round's global model the run holds (runs written before federated.keep: the last)."""
    kept = summary.get("kept_round", summary["rounds"])
    how = ("the best on the clients' validation rows" if summary.get("keep", "last") == "best"
           else "the last (federated.keep: last)")
    return f"round {kept} of {summary['rounds']}, {how}"
