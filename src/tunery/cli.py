"""The command line: parse, load config, call one library function, print. Nothing else."""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.padding import Padding
from rich.table import Table

from tunery.errors import TuneryError
from tunery.interrupt import Terminated, sigterm_as_interrupt

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="tunery: fine-tune, evaluate and use transformer text models.")
runs_app = typer.Typer(no_args_is_help=True, help="Runs recorded in the store.")
models_app = typer.Typer(no_args_is_help=True, help="The model registry: versions and aliases.")
app.add_typer(runs_app, name="runs")
app.add_typer(models_app, name="models")
keys_app = typer.Typer(no_args_is_help=True, help="API keys for tunery serve: create, list, revoke.")
usage_app = typer.Typer(no_args_is_help=True, help="Metered usage of tunery serve.")
app.add_typer(keys_app, name="keys")
app.add_typer(usage_app, name="usage")
db_app = typer.Typer(no_args_is_help=True, help="The store's database: its schema revision, and upgrades.")
app.add_typer(db_app, name="db")
studies_app = typer.Typer(no_args_is_help=True, help="Tuning studies (tunery tune): list, show.")
app.add_typer(studies_app, name="studies")
out = Console()
err = Console(stderr=True)


def _fail(error: Exception, code: int = 1):
    err.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


_OS_FIXES = {
    errno.ENOSPC: "free some space and try again",
    errno.EDQUOT: "free some space (disk quota) and try again",
    errno.EACCES: "check the permissions of that path, or choose another",
    errno.EPERM: "check the permissions of that path, or choose another",
    errno.EROFS: "that file system is read-only: choose another path",
    errno.ENAMETOOLONG: "use a shorter name or path",
    errno.ELOOP: "a symbolic link there points back to itself: fix or remove it",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of that path is a file, not a directory",
    errno.EISDIR: "give a file, not a directory",
}


def _short(path) -> str:
    text = str(path)
    return text if len(text) <= 120 else f"{text[:117]}..."


def os_error_message(e: OSError) -> str:
    """One line for an OSError: the path, what the system said, and the usual fix."""
    paths = " -> ".join(_short(p) for p in (e.filename, e.filename2) if p is not None)
    what = e.strerror or str(e)
    fix = _OS_FIXES.get(e.errno or -1)
    return f"{paths + ': ' if paths else ''}{what}{'; ' + fix if fix else ''}"


def _guard(fn):
    """Run a command body; user errors become a message and a non-zero exit, never a traceback.

    Predictable failures (TuneryError, OSError such as a full disk or a permission, YAML and value
    errors) print one line and exit 1. Anything else is a bug in tunery: its traceback is printed
    as Python would, with a line saying so, and the exit is 1. TUNERY_DEBUG=1 shows the traceback
    of every failure (to trace a value error back to its cause)."""
    import functools

    import click
    import yaml

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise  # typer's own exits and usage errors
        except Terminated:
            hint = RESUME_HINTS.get(fn.__name__)
            err.print(f"[yellow]terminated{': ' + hint if hint else ''}[/]")
            raise typer.Exit(143)
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]")
            raise typer.Exit(130)
        except Exception as e:
            if os.environ.get("TUNERY_DEBUG"):
                traceback.print_exc()
            if isinstance(e, TuneryError):
                _fail(e)
            if isinstance(e, OSError):
                _fail(os_error_message(e))
            if isinstance(e, yaml.YAMLError):
                _fail(TuneryError(f"not valid YAML: {' '.join(str(e).split())}"))
            if isinstance(e, ValueError):  # also pydantic's ValidationError: a bad option value
                _fail(e)
            if not os.environ.get("TUNERY_DEBUG"):
                traceback.print_exc()
            err.print(f"[bold red]error:[/] unexpected {escape(type(e).__name__)}: {escape(str(e))}. This is a bug "
                      "in tunery, not a problem with your input: please report it with the traceback above.",
                      highlight=False, soft_wrap=True)
            raise typer.Exit(1)

    return wrapper


def _setup_logging(verbose: bool = False) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=err, show_path=False, show_time=False)], force=True)


# What `tunery X` prints when SIGTERM ends it: how to continue.
RESUME_HINTS = {"train": "the run can be resumed with tunery train --resume RUN",
                "distill": "the student run can be resumed with tunery train --resume RUN",
                "tune": "the study can be continued with tunery tune --resume STUDY",
                "auto": "the trials finished so far are kept in its study (tunery studies show NAME)"}


# --------------------------------------------------------------------------------------------
@app.command()
@_guard
def init(data: Path = typer.Argument(..., help="a labelled data file"),
         output: Path = typer.Option(Path("tunery.yaml"), "--output", "-o", help="config file to write"),
         backbone: str = typer.Option("minilm-l6", help="backbone alias, directory or hub id"),
         force: bool = typer.Option(False, help="overwrite an existing config")):
    """Write a starter config for DATA, with inferred columns and task."""
    from tunery.rundir import write_text_atomic
    from tunery.starter import starter_config

    if output.exists() and not force:
        _fail(TuneryError(f"{output} exists; pass --force to overwrite or --output another path"))
    if output.is_dir():
        _fail(TuneryError(f"--output {output} is a directory; give a file path such as {output / 'tunery.yaml'}"))
    if not output.parent.is_dir():
        _fail(TuneryError(f"cannot write {output}: directory {output.parent} does not exist; create it or choose "
                          "another --output"))
    text = starter_config(data, backbone=backbone, config_dir=output.resolve().parent)
    write_text_atomic(output, text)
    out.print(f"wrote {output}\nnext: tunery validate {data}  then  tunery train {output}")


@app.command()
@_guard
def validate(file: Path = typer.Argument(..., help="training data file"),
             validation: Optional[Path] = typer.Option(None, help="validation file"),
             test: Optional[Path] = typer.Option(None, help="test file"),
             config: Optional[Path] = typer.Option(None, "--config", "-c", help="read data settings from a config"),
             text_column: Optional[str] = typer.Option(None), label_column: Optional[str] = typer.Option(None),
             text_pair_column: Optional[str] = typer.Option(None),
             task: Optional[str] = typer.Option(None, help="classification, multilabel or regression"),
             max_length: Optional[int] = typer.Option(None, help="token limit for the truncation check"),
             backbone: Optional[str] = typer.Option(
                 None, help="backbone whose tokenizer the truncation and vocabulary checks use (default: the "
                 "config's model.backbone, else minilm-l6)"),
             as_json: bool = typer.Option(False, "--json", help="print the report as JSON")):
    """Check a data file (and eval files) for problems; exit 1 if any error is found."""
    from tunery.backbones import resolve_backbone
    from tunery.config import DataConfig, TaskConfig, load_config
    from tunery.data.validate import prepare
    from tunery.pipeline import load_tokenizer

    base = load_config(config).data.model_dump() if config else {}
    base.update({k: v for k, v in {"train": str(file), "validation": validation and str(validation),
                                   "test": test and str(test), "text_column": text_column,
                                   "label_column": label_column, "text_pair_column": text_pair_column,
                                   "max_length": max_length}.items() if v is not None})
    data_cfg = DataConfig(**base)
    task_cfg = load_config(config).task if config else TaskConfig()
    if task:
        task_cfg = TaskConfig(type=task)
    backbone = backbone or (load_config(config).model.backbone if config else "minilm-l6")
    tokenizer = load_tokenizer(resolve_backbone(backbone))
    _, report = prepare(data_cfg, task_cfg, tokenizer=tokenizer, backbone=backbone)
    if as_json:
        out.print_json(json.dumps(report.to_dict(), default=str))
    else:
        _print_report(report)
    if not report.ok:
        raise typer.Exit(1)


def _counts_text(counts: dict, limit: int = 12, *, by_size: bool = True) -> str:
    items = sorted(counts.items(), key=lambda kv: -kv[1]) if by_size else list(counts.items())
    text = " · ".join(f"{escape(str(k))} {v:,}" for k, v in items[:limit])
    return text + (f" · ... ({len(items) - limit} more)" if len(items) > limit else "")


def _summary_lines(s: dict) -> list[str]:
    """The data in a few lines: files and rows, task and columns, splits, classes, text lengths and
    vocabulary coverage (what validate measured; parts it could not reach are left out)."""
    from tunery.data.coverage import describe_scripts

    lines = []
    for path, f in (s.get("files") or {}).items():
        lines.append(f"[bold]{f['role']}[/]: {escape(path)} ({f['rows']:,} rows)")
    if "task" in s:
        cols = s.get("columns") or {}
        names = " · ".join(f"{k} {v!r}" for k, v in cols.items() if v)
        lines.append(f"[bold]task[/]: {s['task']}{' (inferred)' if s.get('task_inferred') else ''} · "
                     f"columns: {escape(names)}")
    if "splits" in s:
        lines.append(f"[bold]splits[/]: {_counts_text(s['splits'], by_size=False)}"
                     + (f" ({escape(s['split_note'])})" if s.get("split_note") else ""))
    counts = (s.get("label_counts") or {}).get("train") or s.get("train_label_counts")
    if counts:
        lines.append(f"[bold]classes[/] (train, {len(counts)}): {_counts_text(counts)}")
    for path, t in (s.get("token_lengths") or {}).items():
        lines.append(f"[bold]text length[/] ({escape(Path(path).name)}): median {t['p50']} tokens, "
                     f"p95 {t['p95']}, longest {t['max']}")
    for path, v in (s.get("vocabulary") or {}).items():
        scripts = describe_scripts(v["scripts"])
        langs = f"; backbone languages: {v['backbone_languages']}" if v.get("backbone_languages") else ""
        lines.append(f"[bold]vocabulary[/] ({escape(Path(path).name)}): {100 * v['unk_token_share']:.1f}% "
                     f"[UNK] tokens, {100 * v['unk_text_share']:.0f}% of texts with [UNK]; "
                     f"letters: {scripts}{langs}".replace("[UNK]", r"\[UNK]"))
    return lines


def _print_report(report) -> None:
    for line in _summary_lines(report.summary):
        out.print(line, highlight=False, soft_wrap=True)
    if report.findings:
        out.print("")
    for f in report.findings:
        colour = "red" if f.severity == "error" else "yellow"
        out.print(f"[{colour}]{f.severity}[/] {escape(f'[{f.code}]')} {escape(f.message)}", highlight=False,
                  soft_wrap=True)
    n_e, n_w = len(report.errors), len(report.warnings)
    out.print(f"[bold]{'FAILED' if n_e else 'OK'}[/]: {n_e} error(s), {n_w} warning(s)")


@app.command()
@_guard
def train(config: Optional[Path] = typer.Argument(None, help="run config (YAML)"),
          set_: list[str] = typer.Option([], "--set", help="override a key: --set train.lr=3e-5"),
          resume: Optional[str] = typer.Option(None, help="continue an interrupted run (directory or name)"),
          verbose: bool = typer.Option(False, "--verbose", "-v"),
          progress: bool = typer.Option(True, help="show a progress bar")):
    """Fine-tune a model: validate data, train, evaluate beside a baseline, write the run."""
    from tunery import pipeline
    from tunery.config import load_config
    from tunery.train.callbacks import LoggingCallback, RichProgress

    _setup_logging(verbose)
    sigterm_as_interrupt()
    if resume:
        if config is not None or set_:
            _fail(TuneryError("--resume continues a run with its saved config; drop CONFIG and --set"))
        run = pipeline.resume(resume, callbacks=[RichProgress(console=err)] if progress else [LoggingCallback()])
    elif config is None:
        _fail(TuneryError("give a config file (tunery init DATA writes one) or --resume RUN"))
    else:
        cfg = load_config(config, overrides=set_)
        show = progress and cfg.train.progress
        run = pipeline.train(cfg, callbacks=[RichProgress(console=err)] if show else [LoggingCallback()])
    _print_summary(run)


@app.command()
@_guard
def distill(teacher: str = typer.Option(..., "--teacher", help="the teacher: run directory, run name or registry name"),
            student: Optional[str] = typer.Option(None, "--student", help="backbone alias, local directory or a run "
                                                  "to continue from (not with --layers)"),
            layers: Optional[int] = typer.Option(None, "--layers", min=1, help="a student of the teacher's lower K "
                                                 "layers (the same tokenizer: hidden states and attention matched too)"),
            unlabelled: Optional[Path] = typer.Option(None, "--unlabelled", help="unlabelled texts the teacher labels "
                                                      "(csv, tsv, jsonl, parquet or txt)"),
            name: Optional[str] = typer.Option(None, help="the student run's name (default TEACHER-distilled)"),
            output_dir: Optional[str] = typer.Option(None, help="where the run goes (default: beside the teacher)"),
            set_: list[str] = typer.Option([], "--set", help="override a key: --set distill.alpha=0.3, "
                                           "--set distill.augment.copies=4"),
            verbose: bool = typer.Option(False, "--verbose", "-v"),
            progress: bool = typer.Option(True, help="show a progress bar")):
    """Distil a teacher run into a smaller student: a normal training run on the teacher's data and splits."""
    from tunery.compress.distill import distill_config
    from tunery.pipeline import train as train_run
    from tunery.train.callbacks import LoggingCallback, RichProgress

    _setup_logging(verbose)
    sigterm_as_interrupt()
    if (student is None) == (layers is None):
        _fail(TuneryError("give --student BACKBONE|RUN, or --layers K for a student built from the teacher's lower "
                          "layers (one of the two)"))
    cfg = distill_config(teacher, student or "", layers=layers, unlabelled=str(unlabelled) if unlabelled else None,
                         name=name, output_dir=output_dir, overrides=set_)
    show = progress and cfg.train.progress
    run = train_run(cfg, callbacks=[RichProgress(console=err)] if show else [LoggingCallback()])
    _print_summary(run)


@app.command()
@_guard
def baseline(source: Path = typer.Argument(..., help="a labelled data file, or a run config (YAML)"),
             name: Optional[str] = typer.Option(None, "--name", help="run name (default: data stem + timestamp)"),
             set_: list[str] = typer.Option([], "--set", help="override a key: --set data.text_column=review"),
             verbose: bool = typer.Option(False, "--verbose", "-v")):
    """Fit the TF-IDF baseline as a run (seconds, no GPU): validated and split as `train` does;
    `predict`, `evaluate`, `serve`, `models register` and tunery.load take it like any run."""
    from tunery import pipeline

    _setup_logging(verbose)
    sigterm_as_interrupt()
    cfg = _source_config(source, set_, "tunery baseline")
    if name is not None:
        cfg = cfg.model_copy(update={"name": _checked_name(name)})
    _print_summary(pipeline.train_baseline(cfg))


def _source_config(source: Path, set_: list[str], command: str, data_keys: Optional[dict] = None):
    """The run config of a command that takes a data file or a config: a YAML file is loaded as
    `train` loads it; a data file becomes `data.train` (with `data_keys` such as validation, test,
    the columns), then --set applies. Data paths are made absolute: the runs re-read them."""
    from tunery.config import apply_overrides, config_from_dict, load_config

    given = {k: str(Path(v).resolve()) if k in ("validation", "test") else v
             for k, v in (data_keys or {}).items() if v is not None}
    if source.suffix.lower() in (".yaml", ".yml"):
        return load_config(source, overrides=[*(f"data.{k}={v}" for k, v in given.items()), *set_])
    if not source.is_file():
        _fail(TuneryError(f"data file {str(source)!r} not found; give a labelled csv, tsv, jsonl or parquet "
                          "file, or a run config (YAML)"))
    tree = apply_overrides({"data": {"train": str(source.resolve()), **given}}, set_)
    data = tree.get("data") if isinstance(tree.get("data"), dict) else {}
    for key in ("validation", "test"):  # absolute, as load_config makes them: the run re-reads them
        if isinstance(data.get(key), str) and data[key]:
            data[key] = str(Path(data[key]).resolve())
    return config_from_dict(tree, source=command)


def _checked_name(name: str) -> str:
    from tunery.config import check_run_name

    try:
        return check_run_name(name)
    except ValueError as e:
        _fail(TuneryError(f"--name {name!r}: {e}"))


def _print_verdict(verdict: Optional[dict]) -> None:
    """The verdict against the baseline, in plain words (red when the model loses)."""
    if not verdict:
        return
    from tunery.evaluate.verdict import verdict_line

    colour = "bold red" if not verdict.get("beats_baseline") else "yellow" if verdict.get("outcome") == "tie" \
        else "green"
    causes = verdict.get("causes") or []
    text = verdict_line(verdict) if not causes else verdict["summary"]
    out.print(f"[{colour}]{escape(text)}[/]", highlight=False, soft_wrap=True)
    if causes:
        out.print("Likely causes:", highlight=False)
        for c in causes:
            out.print(f"  - {escape(c['message'])}", highlight=False, soft_wrap=True)


def _print_per_label(model: dict, baseline: Optional[dict], title: str, most: int = 30) -> None:
    """Multi-label: per label, support, precision, recall, F1 and the baseline's F1, weakest first
    (the `most` weakest when there are more), so the labels the model does not learn stand out."""
    per, base = model.get("per_class") or {}, (baseline or {}).get("per_class") or {}
    if not per:
        return
    rows = sorted(per.items(), key=lambda kv: (kv[1].get("f1") is None, kv[1].get("f1") or 0.0))
    table = Table(title=title if len(rows) <= most else f"{title}: the {most} weakest of {len(rows)}")
    for col in ("label", "support", "precision", "recall", "F1", "baseline F1"):
        table.add_column(col, justify="left" if col == "label" else "right")
    fmt = lambda v: "-" if not isinstance(v, (int, float)) else f"{v:.4f}"  # noqa: E731
    for name, r in rows[:most]:
        b = (base.get(name) or {}).get("f1")
        f1 = r.get("f1")
        colour = "red" if (r.get("support") or 0) > 0 and (f1 or 0) < 0.1 else \
            "yellow" if isinstance(b, float) and isinstance(f1, float) and f1 < b else ""
        cell = f"[{colour}]{fmt(f1)}[/]" if colour else fmt(f1)
        table.add_row(escape(str(name)), str(r.get("support", "-")), fmt(r.get("precision")), fmt(r.get("recall")),
                      cell, fmt(b))
    out.print(table)


def _print_summary(run: Path) -> None:
    metrics = json.loads((run / "metrics.json").read_text())
    out.print(f"run {escape(run.name)}", highlight=False, soft_wrap=True)  # whole, never wrapped
    table = Table()
    table.add_column("split")
    table.add_column(f"model {metrics['metric']}")
    table.add_column("baseline")
    for split, m in metrics["model"].items():
        base = (metrics.get("baseline") or {}).get(split, {}).get(metrics["metric"])
        table.add_row(split, f"{m.get(metrics['metric']):.4f}", "-" if base is None else f"{base:.4f}")
    out.print(table)
    if metrics.get("task") == "multilabel":
        split = "test" if "test" in metrics["model"] else next(iter(metrics["model"]), None)
        if split is not None:
            _print_per_label(metrics["model"][split], (metrics.get("baseline") or {}).get(split), f"per label, {split}")
    _print_verdict(metrics.get("verdict"))
    out.print(f"run:     {run}\nreport:  {run / 'report.html'}\n"
              f"predict: tunery predict {run} --input FILE --output predictions.csv\n"
              f"python:  tunery.load({str(run)!r}).predict([\"some text\"])", highlight=False)


@app.command()
@_guard
def evaluate(run: str = typer.Argument(..., help="run directory, run name or registry name"),
             data: Optional[Path] = typer.Option(None, help="labelled file to evaluate on (default: the run's test split)"),
             as_json: bool = typer.Option(False, "--json")):
    """Evaluate a run on its test split or on a new labelled file; writes metrics and a report."""
    from tunery.pipeline import evaluate_run

    result = evaluate_run(run, data=data)
    if as_json:
        out.print_json(json.dumps(result, default=str))
        return
    table = Table(title=f"evaluation of {run} on {result['data']}")
    table.add_column("metric")
    table.add_column("model")
    table.add_column("baseline")
    for k, v in result["model"].items():
        if isinstance(v, float):
            b = (result.get("baseline") or {}).get(k)
            table.add_row(k, f"{v:.4f}", "-" if not isinstance(b, float) else f"{b:.4f}")
    out.print(table)
    if "micro_f1" in result["model"]:  # multi-label
        _print_per_label(result["model"], result.get("baseline"), "per label")
    if result.get("baseline_note"):  # a tfidf run: not compared with itself
        out.print(f"no baseline column: {escape(result['baseline_note'])}", highlight=False)
    _print_verdict(result.get("verdict"))
    out.print(f"report: {result['report']}", highlight=False)


@app.command()
@_guard
def compress(run: str = typer.Argument(..., help="run directory, run name or registry name"),
             to: str = typer.Option("int8", "--to", help="onnx (fp32 ONNX Runtime graph) or int8"),
             static: bool = typer.Option(False, "--static", help="int8 with activation ranges calibrated on training "
                                         "rows (QDQ) instead of dynamic"),
             calibration: int = typer.Option(256, help="training rows --static calibrates on"),
             max_drop: float = typer.Option(1.0, help="refuse the result if the run's metric falls by more points"),
             name: Optional[str] = typer.Option(None, help="the new run's name (default: RUN-onnx, RUN-int8...)"),
             output_dir: Optional[Path] = typer.Option(None, help="where the new run goes (default: beside RUN)"),
             data: Optional[Path] = typer.Option(None, help="labelled file to check on (default: the run's test split)"),
             threads: Optional[int] = typer.Option(None, help="intra-op threads to measure and serve with "
                                                   "(default: one per core)"),
             exporter: str = typer.Option("auto", help="auto (torch's dynamo exporter, else TorchScript), dynamo, "
                                          "torchscript"),
             exclude: Optional[list[str]] = typer.Option(None, help="MatMul nodes kept fp32: a name, first:K or "
                                                         "last:K (repeatable)"),
             attention: str = typer.Option("auto", help="int8's attention Q, K, V projections: int8 (fastest), fp32 "
                                           "(most accurate), auto (int8, fp32 where int8 fails the checks)"),
             as_json: bool = typer.Option(False, "--json")):
    """Compress a run into a new run: an ONNX Runtime graph, fp32 or int8, checked against the original."""
    from tunery.compress import CompressOptions, compress_run

    options = CompressOptions(to=to, static=static, calibration=calibration, max_drop=max_drop, threads=threads,
                              exporter=exporter, exclude=tuple(exclude or ()), attention=attention)
    new = compress_run(run, options, name=name, output_dir=output_dir, data=data)
    c = json.loads((new / "metrics.json").read_text())["compression"]
    if as_json:
        out.print_json(json.dumps({"run": str(new), **c}, default=str))
        return
    kind, lat, sizes = c["kind"], c["latency"], c["sizes"]
    table = Table(title=f"{kind} of {run}, checked on the {c['split']} split ({c['rows']} rows, {c['threads']} threads)")
    for col in ("model", c["metric"], "size", "one text p50", "one text p99", "texts/s (batch 32)"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for label, key, value, size in (("torch fp32", "torch_fp32", c["original"], sizes["original_bytes"]),
                                    (f"onnx {kind}", kind, c["compressed"], sizes["compressed_bytes"])):
        t = lat[key]
        table.add_row(label, f"{value:.4f}", f"{size / 1e6:.1f} MB", f"{t['one_text_ms_p50']:.1f} ms",
                      f"{t['one_text_ms_p99']:.1f} ms", f"{t['texts_per_s']:.0f}")
    out.print(table)
    speedup = lat[kind]["texts_per_s"] / lat["torch_fp32"]["texts_per_s"]
    out.print(f"drop: {c['drop_points']:+.2f} points (allowed {c['max_drop']:g}); agreement with the original "
              f"{100 * c['agreement']:.1f} %; throughput x{speedup:.2f}\n"
              f"run:     {new}\nreport:  {new / 'report.html'}\npredict: tunery predict {new} --input FILE --output "
              "predictions.csv", highlight=False)


@app.command()
@_guard
def explain(run: str = typer.Argument(..., help="run directory, run name or registry name"),
            text: Optional[list[str]] = typer.Option(None, "--text", help="a text to explain (repeatable)"),
            pair: Optional[list[str]] = typer.Option(None, "--pair", help="its second text, for a pair model"),
            input: Optional[Path] = typer.Option(None, "--input", "-i", help="explain every row of a file"),
            output: Optional[Path] = typer.Option(None, "--output", "-o", help="with --input: .jsonl, .json or .html"),
            evaluate: bool = typer.Option(False, "--evaluate", help="measure every method's faithfulness on --data"),
            data: Optional[Path] = typer.Option(None, "--data", help="with --evaluate: a file of texts"),
            n: int = typer.Option(200, "--n", min=1, help="with --evaluate: texts sampled from --data (seeded)"),
            methods: Optional[str] = typer.Option(None, help="with --evaluate: methods to compare, e.g. ig,occlusion "
                                                  "(default: every one the run can do)"),
            method: str = typer.Option("ig", "--method", "-m", help="ig, shap, lime or occlusion"),
            target: Optional[str] = typer.Option(None, help="the label to explain (default: the predicted one)"),
            option: list[str] = typer.Option([], "--option", help="a method option, e.g. --option steps=100 (IG), "
                                             "--option samples=500 (LIME, SHAP) (repeatable)"),
            seed: int = typer.Option(0, help="LIME and SHAP repeat exactly for the same seed"),
            faithfulness: bool = typer.Option(False, "--faithfulness", help="also measure each explanation's "
                                              "faithfulness (more model evaluations)"),
            text_column: Optional[str] = typer.Option(None, help="with --input/--data: default the column trained on"),
            text_pair_column: Optional[str] = typer.Option(None),
            limit: Optional[int] = typer.Option(None, min=1, help="with --input: explain the first N rows only"),
            html: Optional[Path] = typer.Option(None, "--html", help="with --text: also write an HTML view here"),
            as_json: bool = typer.Option(False, "--json", help="print JSON")):
    """Explain predictions: which words drove them (IG, SHAP, LIME, occlusion), and how faithful each method is."""
    from tunery.explain import explain as explain_texts
    from tunery.predict import load

    modes = [m for m, on in (("--text", bool(text)), ("--input", input is not None), ("--evaluate", evaluate)) if on]
    if len(modes) != 1:
        _fail(TuneryError("give one of --text TEXT, --input FILE --output FILE, or --evaluate --data FILE"
                          + (f" (not {' and '.join(modes)} together)" if modes else "")))
    options = _method_options(option)
    predictor = load(run)
    if evaluate:
        return _explain_evaluate(predictor, run, data, n, methods, seed, options if option else None, method,
                                 text_column, text_pair_column, as_json)
    if input is not None:
        return _explain_file(predictor, input, output, method, target, options, seed, faithfulness, text_column,
                             text_pair_column, limit)
    if output is not None:
        _fail(TuneryError("--output goes with --input; for --text use --html FILE or --json"))
    if pair and len(pair) != len(text):
        _fail(TuneryError(f"{len(text)} --text but {len(pair)} --pair: give one --pair per --text"))
    found = explain_texts(predictor, list(text), list(pair) if pair else None, method=method, target=target,
                          options=options, seed=seed, with_faithfulness=faithfulness)
    if html is not None:
        from tunery.explain.html import page

        html.write_text(page(found, title=f"tunery explanations: {run}"), encoding="utf-8")
    if as_json:
        out.print_json(json.dumps([e.to_dict() for e in found]))
        return
    for e in found:
        _print_explanation(e)
    if html is not None:
        out.print(f"html: {html}", highlight=False)


def _method_options(items: list[str]) -> dict:
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            _fail(TuneryError(f"--option {item!r}: write KEY=VALUE, e.g. --option steps=100"))
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def _print_explanation(e) -> None:
    scale = max((abs(w.score) for w in e.words), default=0.0) or 1.0

    def coloured(source: str, segment: int) -> str:
        parts, pos = [], 0
        for w in (w for w in e.words if w.segment == segment):
            parts.append(escape(source[pos:w.start]))
            strength = abs(w.score) / scale
            style = ("bold green" if w.score > 0 else "bold red") if strength > 0.5 else (
                ("green" if w.score > 0 else "red") if strength > 0.15 else "")
            parts.append(f"[{style}]{escape(w.text)}[/]" if style else escape(w.text))
            pos = w.end
        return "".join(parts) + escape(source[pos:])

    pred = e.prediction.get("label") or "|".join(e.prediction.get("labels", [])) or e.prediction.get("value")
    what = f"{e.target} {e.score:.4f}" if e.target is not None else f"value {e.score:.4f}"
    out.print(coloured(e.text, 0) + (" [dim]|[/] " + coloured(e.pair, 1) if e.pair is not None else ""))
    line = (f"  predicted {pred}; explained {what} by {e.method}: {e.evaluations} model evaluations, "
            f"{1000 * e.seconds:.0f} ms")
    if e.delta is not None:
        line += f"; completeness gap {e.delta:+.4f} (baseline {e.baseline_score:.4f})"
    out.print(escape(line), highlight=False)
    top = ", ".join(f"{w.text} {w.score:+.3f}" for w in e.top(5))
    out.print(f"  top words: {escape(top)}", highlight=False)
    if e.faithfulness:
        f = e.faithfulness
        out.print(f"  comprehensiveness {f['comprehensiveness']:.3f} (random {f['random_comprehensiveness']:.3f}), "
                  f"sufficiency {f['sufficiency']:.3f} (random {f['random_sufficiency']:.3f})", highlight=False)
    if e.truncated:
        out.print("  [dim]words past the model's max length were cut off and are not explained[/]")


def _file_texts(path: Path, text_column, text_pair_column, predictor, limit=None):
    """Texts (and pairs) of a file's column, the first `limit` rows; DataError naming the column."""
    from tunery.data.load import read_table
    from tunery.errors import DataError

    frame = read_table(path)
    column = text_column or predictor.meta["text_column"]
    pair_column = text_pair_column or predictor.meta.get("text_pair_column")
    for col in filter(None, (column, pair_column)):
        if col not in frame.columns:
            raise DataError(f"{path}: no column {col!r} (columns: {', '.join(map(str, frame.columns))}); "
                            "name the text column with --text-column")
    if limit:
        frame = frame.head(limit)
    texts = frame[column].fillna("").astype(str).tolist()
    pairs = frame[pair_column].fillna("").astype(str).tolist() if pair_column else None
    return texts, pairs


def _explain_file(predictor, input, output, method, target, options, seed, faithfulness, text_column,
                  text_pair_column, limit) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from tunery.explain import explain as explain_texts
    from tunery.explain.html import page
    from tunery.rundir import write_text_atomic

    if output is None or output.suffix.lower() not in (".jsonl", ".json", ".html"):
        _fail(TuneryError(f"--output {output}: give a .jsonl, .json or .html file" if output else
                          "--input needs --output FILE (.jsonl, .json or .html)"))
    texts, pairs = _file_texts(input, text_column, text_pair_column, predictor, limit)
    found = []
    with Progress(TextColumn("explaining"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeRemainingColumn(), console=err) as bar:
        task = bar.add_task("explaining", total=len(texts))
        for i, t in enumerate(texts):
            found += explain_texts(predictor, [t], [pairs[i]] if pairs else None, method=method, target=target,
                                   options=options, seed=seed, with_faithfulness=faithfulness)
            bar.advance(task)
    suffix = output.suffix.lower()
    if suffix == ".html":
        body = page(found, title=f"tunery explanations: {input.name}")
    elif suffix == ".json":
        body = json.dumps([e.to_dict() for e in found], ensure_ascii=False, indent=1)
    else:
        body = "".join(json.dumps(e.to_dict(), ensure_ascii=False) + "\n" for e in found)
    write_text_atomic(output, body)
    out.print(f"wrote {len(found)} explanations ({method}) to {output}", highlight=False)


def _explain_evaluate(predictor, run, data, n, methods, seed, options, method, text_column, text_pair_column,
                      as_json) -> None:
    import numpy as np

    from tunery.explain import METHODS
    from tunery.explain.evaluate import evaluate_methods, runnable_methods

    if data is None:
        _fail(TuneryError("--evaluate needs --data FILE: texts to explain (e.g. the run's test file)"))
    texts, pairs = _file_texts(data, text_column, text_pair_column, predictor)
    if len(texts) > n:
        pick = np.sort(np.random.default_rng(seed).choice(len(texts), size=n, replace=False))
        texts = [texts[i] for i in pick]
        pairs = [pairs[i] for i in pick] if pairs else None
    wanted = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    unknown = [m for m in wanted or [] if m not in METHODS]
    if unknown:
        _fail(TuneryError(f"--methods: {', '.join(unknown)} not among {', '.join(METHODS)}"))
    chosen = runnable_methods(predictor, wanted)
    per_method = {method: options} if options else None
    from rich.progress import BarColumn, Progress, TextColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  console=err) as bar:
        task = bar.add_task("explaining", total=len(texts) * len(chosen))
        result = evaluate_methods(predictor, texts, pairs, methods=chosen, seed=seed, options=per_method,
                                  on_text=lambda m, i: bar.update(task, advance=1, description=m))
    if as_json:
        out.print_json(json.dumps({"run": str(run), "data": str(data), **result}))
        return
    table = Table(title=f"faithfulness on {len(texts)} texts of {data.name} (higher comprehensiveness and LOO "
                        "correlation, lower sufficiency are better; each beside a random ranking's)")
    for col in ("method", "comprehensiveness", "random", "sufficiency", "random", "LOO Spearman", "random",
                "ms / expl.", "evals / expl."):
        table.add_column(col, justify="left" if col == "method" else "right")

    def f(v):
        return "-" if v is None else f"{v:.3f}"

    for name, r in result["methods"].items():
        table.add_row(name, f(r["comprehensiveness"]), f(r["random_comprehensiveness"]), f(r["sufficiency"]),
                      f(r["random_sufficiency"]), f(r["loo_spearman"]), f(r["random_loo_spearman"]),
                      f"{r['ms_per_explanation']:.0f}", f"{r['evaluations_per_explanation']:.0f}")
    out.print(table)
    skipped = [m for m in (wanted or METHODS) if m not in chosen]
    if skipped:
        out.print(f"not run on this backend (no gradients): {', '.join(skipped)}", highlight=False)
    out.print("Compare methods within one model: AOPC ranges differ between models.", highlight=False)


@app.command()
@_guard
def federate(config: Optional[Path] = typer.Argument(None, help="run config (YAML) with a federated: section "
                                                     "(not with --client: the server sends it)"),
             set_: list[str] = typer.Option([], "--set", help="override a key: --set federated.alpha=0.1"),
             partition_only: bool = typer.Option(False, "--partition-only",
                                                 help="write each client's data file and print its label counts"),
             out_dir: Optional[Path] = typer.Option(None, "--out", help="--partition-only: the folder for the "
                                                    "client files (default <output_dir>/<name>-partitions)"),
             serve_superlink: Optional[str] = typer.Option(
                 None, "--serve-superlink", help="HOST:PORT: start only the SuperLink there, for clients on other "
                 "machines, and run the federation when they join"),
             client: bool = typer.Option(False, "--client", help="run one client (a Flower SuperNode) on this "
                                         "machine's --data, joining --superlink"),
             data: Optional[Path] = typer.Option(None, "--data", help="--client: this client's labelled file"),
             superlink: Optional[str] = typer.Option(None, "--superlink", help="--client: HOST:PORT of the SuperLink"),
             name: Optional[str] = typer.Option(None, "--name", help="--client: the client's name in the run's "
                                                "records (default: the file's stem)"),
             fault: list[str] = typer.Option([], "--fault", help="fault drill: NAME=sign_flip[:K] or scale[:K] makes "
                                             "that client send bad updates (--client: just the SPEC)"),
             as_json: bool = typer.Option(False, "--json", help="print JSON")):
    """Federated fine-tuning on Flower across clients whose data stays with them."""
    from tunery.config import load_config
    from tunery.federated.partition import partition_file

    # Flower's daemons run in sessions of their own (a terminal's Ctrl-C reaches only tunery): on SIGTERM
    # as on Ctrl-C, tunery stops them before it exits instead of leaving them running
    sigterm_as_interrupt()
    if client:
        _federated_client(data, superlink, name, fault)
        return
    if config is None:
        _fail(TuneryError("give the run config: tunery federate CONFIG (or --client --data FILE --superlink HOST:PORT)"))
    cfg = load_config(config, overrides=set_)
    if cfg.federated is None:
        _fail(TuneryError(f"{config} has no federated: section; add one, e.g. federated: {{clients: 4, "
                          f"partition: dirichlet, alpha: 0.5}}"))
    if not partition_only:
        from tunery.federated.run import federate as run_federation

        faults = {}
        for item in fault:
            who, sep, spec = item.partition("=")
            if not sep:
                _fail(TuneryError(f"--fault {item!r}: expected NAME=SPEC, e.g. client-2=sign_flip:5"))
            faults[who] = spec
        run = run_federation(cfg, faults=faults, listen=serve_superlink)
        m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
        fed = m["federated"]
        if as_json:
            print(json.dumps({"run": str(run), **fed}, indent=2, ensure_ascii=False))
            return
        out.print(f"federated run {escape(str(run))}: {fed['rounds']} rounds of {fed['strategy']}, clients "
                  f"{', '.join(fed['trained'])}; kept round {fed['kept_round']} (validation {m['metric']} "
                  f"{fed['kept_eval_metric']}; final round {fed['final_eval_metric']})", highlight=False)
        for who, why in fed["sat_out"].items():
            out.print(f"  {escape(who)} sat out: {escape(why)}", highlight=False)
        if fed["dropped"]:
            out.print(f"  dropped in a round: {', '.join(fed['dropped'])}", highlight=False)
        out.print(f"  bytes sent {fed['bytes_sent']:,}, received {fed['bytes_received']:,} "
                  f"({fed['update_bytes']:,} per update, {fed['updates']})", highlight=False)
        return
    if cfg.federated.client_data is not None:
        _fail(TuneryError("federated.client_data already gives each client its file: there is nothing to partition"))
    name = cfg.name or Path(cfg.data.train).name.split(".")[0]
    folder = out_dir or Path(cfg.output_dir) / f"{name}-partitions"
    paths, hist = partition_file(cfg, folder)
    if as_json:
        print(json.dumps([{"file": str(p), "rows": sum(h.values()), "labels": h} for p, h in zip(paths, hist)],
                         indent=2, ensure_ascii=False))
        return
    fed = cfg.federated
    how = f"dirichlet alpha {fed.alpha}" if fed.partition == "dirichlet" else "iid"
    out.print(f"{len(paths)} clients ({how}, seed {cfg.train.seed if fed.seed is None else fed.seed}) in "
              f"{escape(str(folder))}", highlight=False)
    totals = {k: sum(h[k] for h in hist) for k in hist[0]}
    labels = sorted(totals, key=lambda k: -totals[k])[:10]  # the 10 most frequent labels; the rest as "other"
    rest = len(totals) > len(labels)
    table = Table("client", "rows", *labels, *(["other"] if rest else []))
    for path, h in zip(paths, hist):
        shown = [h[k] for k in labels]
        table.add_row(path.name, str(sum(h.values())), *map(str, shown),
                      *([str(sum(h.values()) - sum(shown))] if rest else []))
    out.print(table)


def _federated_client(data: Optional[Path], superlink: Optional[str], name: Optional[str], fault: list[str]) -> None:
    """`tunery federate --client`: a Flower SuperNode on this machine's data, until stopped."""
    import tempfile

    from tunery.federated.deploy import free_ports, node_config, start_supernode, stop

    if data is None or superlink is None:
        _fail(TuneryError("--client needs --data FILE (this client's labelled file) and --superlink HOST:PORT"))
    if not data.is_file():
        _fail(TuneryError(f"--data {data} is not a file"))
    home = Path(tempfile.mkdtemp(prefix="tunery-client-"))
    (port,) = free_ports(1)
    proc = start_supernode(home, superlink=superlink, clientappio=f"127.0.0.1:{port}",
                           config=node_config(str(data), name or data.stem, 0, fault[0] if fault else None),
                           log=home / "supernode.log")
    err.print(f"client {escape(name or data.stem)} joined {escape(superlink)} (Flower log: {home / 'supernode.log'}); "
              "Ctrl-C stops it", highlight=False)
    try:
        proc.wait()
    finally:
        stop(proc)


@app.command()
@_guard
def attack(run: str = typer.Argument(..., help="run directory, run name or registry name"),
           data: Path = typer.Option(..., "--data", help="a labelled file (the run's columns)"),
           recipe: str = typer.Option("all", "--recipe", help="typo, synonym or all"),
           n: int = typer.Option(500, "--n", min=1, help="rows sampled from --data (seeded)"),
           budget: Optional[int] = typer.Option(None, "--budget", help="model queries per text (default: no limit)"),
           max_share: float = typer.Option(0.2, "--max-share", help="the largest share of a text's words changed"),
           min_similarity: float = typer.Option(0.8, "--min-similarity",
                                                help="synonym: the least cosine similarity to the original"),
           encoder: str = typer.Option("minilm-l6", "--encoder", help="synonym: the sentence encoder of the "
                                       "similarity constraint (a backbone, mean-pooled)"),
           seed: int = typer.Option(0, help="the sample and the edits repeat for the same seed"),
           as_json: bool = typer.Option(False, "--json", help="print JSON")):
    """Attack a run's model with typos and synonyms: accuracy under attack, with the constraints it was measured under."""
    from tunery.attack import attack_run

    recipes = ["typo", "synonym"] if recipe == "all" else [r.strip() for r in recipe.split(",") if r.strip()]
    settings = {"max_share": max_share, "budget": budget, "min_similarity": min_similarity, "encoder": encoder}
    results = attack_run(run, data, recipes=recipes, n=n, seed=seed, settings=settings)
    if as_json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
        return
    pct = lambda v: "-" if v is None else f"{100 * v:.1f} %"  # noqa: E731
    for name, r in results.items():
        constraints = ", ".join(f"{k} {v}" for k, v in r["settings"].items() if k != "recipe")
        out.print(f"[bold]{name}[/] on {r['n']} texts ({escape(constraints)})", highlight=False)
        table = Table("clean accuracy", "accuracy under attack", "attack success", "mean queries",
                      "words changed", "similarity", "seconds")
        table.add_row(pct(r["clean_accuracy"]), pct(r["accuracy_under_attack"]), pct(r["attack_success_rate"]),
                      "-" if r["mean_queries"] is None else f"{r['mean_queries']:.1f}", pct(r["mean_share_perturbed"]),
                      "-" if r["mean_similarity"] is None else f"{r['mean_similarity']:.3f}", f"{r['seconds']:.0f}")
        out.print(table)
        for ex in r["examples"][:3]:
            out.print(f"  {escape(ex['original'])}\n  -> {escape(ex['perturbed'])}  "
                      f"[dim]({ex['predicted_before']} -> {ex['predicted_after']})[/]", highlight=False)
    out.print("written to the run: robustness.json, attacks/<recipe>.jsonl and metrics.json's robustness",
              highlight=False)


@app.command()
@_guard
def predict(run: str = typer.Argument(..., help="run directory, run name or registry name"),
            input: Path = typer.Option(..., "--input", "-i", help="csv, tsv, jsonl or parquet"),
            output: Path = typer.Option(..., "--output", "-o", help="csv, tsv, jsonl or parquet"),
            text_column: Optional[str] = typer.Option(None, help="default: the column trained on"),
            text_pair_column: Optional[str] = typer.Option(None),
            batch_rows: int = typer.Option(10_000, help="rows read per chunk"),
            batch_size: int = typer.Option(64, help="texts per forward pass")):
    """Predict labels and probabilities for every row of a file, streamed in chunks."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from tunery.predict import load

    predictor = load(run, batch_size=batch_size)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err) as bar:
        task = bar.add_task("predicting", total=None)
        rows = predictor.predict_file(input, output, text_column=text_column, text_pair_column=text_pair_column,
                                      batch_rows=batch_rows,
                                      on_chunk=lambda n: bar.update(task, description=f"{n} rows"))
    out.print(f"wrote {rows} predictions to {output}")


@app.command()
@_guard
def backbones(aliases: Optional[list[str]] = typer.Argument(None, help="aliases to show (default: all)"),
              probe: bool = typer.Option(False, "--probe", help="(re)measure the cost of each installed backbone "
                                         "shown on this machine (seconds to half a minute each), then show it")):
    """The packaged backbones: size, licence, whether installed, and the measured cost on this machine."""
    from tunery.backbones import backbone_info, is_installed, list_backbones
    from tunery.errors import BackboneError
    from tunery.probe import busy_when_measured, cached_cost, probe_cost

    infos = list_backbones()
    if aliases:
        unknown = [a for a in aliases if backbone_info(a) is None]
        if unknown:
            raise BackboneError(f"no backbone alias {', '.join(map(repr, unknown))}; the aliases are "
                                f"{', '.join(b.alias for b in infos)}")
        wanted = {backbone_info(a).alias for a in aliases}
        infos = [b for b in infos if b.alias in wanted]
    rows = []
    for b in infos:
        installed = is_installed(b.alias)
        cost = None
        if installed and probe:
            with err.status(f"probing {b.alias} ..."):
                cost = probe_cost(b.alias, remeasure=True)
        elif installed:
            cost = cached_cost(b.alias)
        busy = "*" if cost and busy_when_measured(cost) else ""
        rows.append((b, "yes" if installed else f"no: {b.install}",
                     (f"{cost['train_s_per_1k_tokens']:.3g}{busy}", f"{cost['infer_s_per_1k_tokens']:.3g}{busy}")
                     if cost else None if installed else ("-", "-"), cost if busy else None))
    unmeasured = "not measured (tunery backbones --probe)"
    table = Table()
    for col in ("alias", "model", "params (M)", "layers", "hidden", "licence", "languages", "lr", "installed",
                "train s / 1k tokens", "inference s / 1k tokens"):
        table.add_column(col)
    for b, installed, cost, _ in rows:
        table.add_row(b.alias, b.description.split(":")[0], f"{b.params_m}", str(b.layers), str(b.hidden),
                      b.licence, b.languages, f"{b.recommended_lr:g}", escape(installed),
                      *(cost or (unmeasured, "-")))
    busy = [(b.alias, c) for b, _, _, c in rows if c]
    notes = [f"* {alias}: measured while the machine was busy (load {c['load_avg']} on {c['cpus']} CPUs), so "
             f"too slow; re-measure when it is idle: tunery backbones {alias} --probe" for alias, c in busy]
    if _fits(table):
        out.print(table)
    else:
        for b, installed, cost, _ in rows:  # too narrow for the table: one block per backbone
            out.print(f"[bold]{b.alias}[/]  {escape(b.description)}", highlight=False, soft_wrap=True)
            for line in (f"{b.params_m}M parameters, {b.layers} layers, hidden {b.hidden}, {b.licence}, "
                         f"languages {b.languages}, lr {b.recommended_lr:g}", f"installed: {installed}",
                         f"cost here: {cost[0]} s per 1k training tokens, {cost[1]} s per 1k inference tokens"
                         if cost and cost[0] != "-" else f"cost here: {'-' if cost else unmeasured}"):
                out.print(Padding(escape(line), (0, 0, 0, 2)), highlight=False, soft_wrap=True)
    for note in notes:
        out.print(escape(note), highlight=False, soft_wrap=True)


# --------------------------------------------------------------------------------------------
def _run_metrics(record) -> dict:
    """A run's metrics.json (the selection metric, model and baseline per split, the verdict);
    from the record alone when the file cannot be read (a run on another machine)."""
    path = Path(record.path) / "metrics.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        model = {k: v for k, v in (record.metrics or {}).items() if isinstance(v, dict)}
        metric = next((k for k in ("accuracy", "micro_f1", "rmse")
                       if any(k in m for m in model.values())), None)
        return {"metric": metric, "model": model, "baseline": None}


def _headline(doc: dict) -> tuple[str, Optional[str], Optional[float], Optional[float]]:
    """(metric, split, model value, baseline value) on test, else validation."""
    metric = doc.get("metric")
    model, baseline = doc.get("model") or {}, doc.get("baseline") or {}
    split = next((s for s in ("test", "validation") if isinstance((model.get(s) or {}).get(metric), (int, float))),
                 None)
    if metric is None or split is None:
        return metric or "", None, None, None
    base = (baseline.get(split) or {}).get(metric)
    return metric, split, model[split][metric], base if isinstance(base, (int, float)) else None


def _fits(table: Table) -> bool:
    """Whether `table` fits the terminal without wrapping or cutting a cell."""
    return Measurement.get(out, out.options.update_width(1 << 20), table).maximum <= out.width


def _verdict_word(verdict: Optional[dict]) -> str:
    if not verdict:
        return ""
    return {"better": "beats baseline", "tie": "level with baseline"}.get(
        verdict.get("outcome") or "", "beats baseline" if verdict.get("beats_baseline") else "LOSES to baseline")


@runs_app.command("list")
@_guard
def runs_list(status: Optional[str] = typer.Option(None), limit: int = typer.Option(50),
              as_json: bool = typer.Option(False, "--json")):
    """List runs, newest first: the selection metric beside the baseline's. Names are never cut."""
    from tunery.store import Store

    store = Store()
    records = store.list_runs(status=status, limit=limit)
    err.print(f"store: {store.location} (set TUNERY_HOME or TUNERY_DB_URL for another)", markup=False,
              highlight=False, soft_wrap=True)
    if as_json:
        out.print_json(json.dumps([r.to_dict() for r in records], default=str))
        return
    rows = []
    for r in records:
        metric, split, value, base = _headline(_run_metrics(r)) if r.status == "completed" else ("", None, None, None)
        rows.append((r, f"{metric} {value:.4f}" if value is not None else "", "" if base is None else f"{base:.4f}"))
    table = Table()
    for col in ("name", "status", "task", "backbone", "started", "metric", "baseline", "path"):
        table.add_column(col, no_wrap=True)
    for r, shown, base in rows:
        table.add_row(escape(r.name), r.status, r.task or "", escape(r.backbone or ""), str(r.started_at)[:16],
                      shown, base, escape(r.path))
    if _fits(table):
        out.print(table)
        return
    for r, shown, base in rows:  # too narrow for the table without cutting: one block per run
        out.print(f"[bold]{escape(r.name)}[/]", highlight=False, soft_wrap=True)  # the name is never cut
        parts = [r.status, r.task or "", r.backbone or "", str(r.started_at)[:16]]
        out.print(Padding(escape("  ".join(p for p in parts if p)), (0, 0, 0, 2)), highlight=False)
        if shown:
            out.print(Padding(f"{shown}" + (f" (baseline {base})" if base else ""), (0, 0, 0, 2)), highlight=False)
        out.print(Padding(escape(r.path), (0, 0, 0, 2)), highlight=False, overflow="fold")


@runs_app.command("show")
@_guard
def runs_show(name: str, as_json: bool = typer.Option(False, "--json", help="the raw record as JSON")):
    """A summary of one run: status, data, backbone, metrics beside the baseline, verdict, where it is."""
    from tunery.store import Store

    record = Store().get_run(name)
    if as_json:
        out.print_json(json.dumps(record.to_dict(), default=str))
        return
    doc = _run_metrics(record)
    cfg = record.config or {}
    data = cfg.get("data") or {}
    training = doc.get("training") or {}
    lines = [("run", f"{record.name} ({record.status})"), ("path", record.path),
             ("task", record.task or "-"),
             ("backbone", f"{record.backbone or '-'} ({(cfg.get('model') or {}).get('method', 'full')})"),
             ("data", ", ".join(f"{k} {data[k]}" for k in ("train", "validation", "test") if data.get(k)) or "-")]
    if training:
        lines.append(("rows", f"{training.get('n_train')} train / {training.get('n_validation')} validation / "
                              f"{training.get('n_test')} test"))
        lines.append(("training", f"{training.get('steps')} steps, best at step {training.get('best_step')}, "
                                  f"{training.get('train_seconds')} s"))
    c = doc.get("compression")
    if c:
        lat = c.get("latency") or {}
        speed = [(lat.get(k) or {}).get("texts_per_s") for k in ("torch_fp32", c.get("kind"))]
        lines.append(("compression", f"{c.get('kind')}, checked on the {c.get('split')} split: {c.get('metric')} "
                      f"{c.get('original'):.4f} (original) -> {c.get('compressed'):.4f}"
                      + (f", throughput x{speed[1] / speed[0]:.2f}" if all(speed) else "")))
    lines.append(("started", str(record.started_at)[:19] + (f", finished {str(record.finished_at)[:19]}"
                                                          if record.finished_at else "")))
    if record.error:
        lines.append(("error", record.error))
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        out.print(f"[bold]{k:<{width}}[/]  {escape(str(v))}", highlight=False, soft_wrap=True)
    metric = doc.get("metric")
    if doc.get("model") and metric:
        table = Table(title=f"{metric} (selection metric)")
        table.add_column("split")
        table.add_column("model")
        table.add_column("baseline")
        for split, m in doc["model"].items():
            value = (m or {}).get(metric)
            base = ((doc.get("baseline") or {}).get(split) or {}).get(metric)
            table.add_row(split, "-" if not isinstance(value, (int, float)) else f"{value:.4f}",
                          "-" if not isinstance(base, (int, float)) else f"{base:.4f}")
        out.print(table)
    _print_verdict(doc.get("verdict"))
    if record.status == "completed":
        out.print(f"report: {Path(record.path) / 'report.html'}   (--json for the raw record)", highlight=False)
    elif record.status in ("failed", "interrupted") and Path(record.path).is_dir():
        out.print(f"continue it with: tunery train --resume {escape(record.name)}", highlight=False)


@runs_app.command("compare")
@_guard
def runs_compare(names: list[str] = typer.Argument(..., help="two or more run names"),
                 as_json: bool = typer.Option(False, "--json")):
    """The metrics of several runs side by side (test split, else validation), with the baseline."""
    from tunery.store import Store

    if len(names) < 2:
        _fail(TuneryError(f"give at least two runs to compare (got {len(names)}); tunery runs list shows them"))
    store = Store()
    records = [store.get_run(n) for n in names]
    docs = [_run_metrics(r) for r in records]
    heads = [_headline(d) for d in docs]
    splits = {h[1] for h in heads if h[1]}
    split = "test" if splits == {"test"} else ("validation" if all(
        ((d.get("model") or {}).get("validation")) for d in docs) else next(iter(splits), None))
    rows: list[str] = []
    for d in docs:
        for k, v in ((d.get("model") or {}).get(split) or {}).items():
            if isinstance(v, float) and k not in rows:
                rows.append(k)
    selection = [h[0] for h in heads if h[0]]
    if selection and selection[0] in rows:
        rows.remove(selection[0])
        rows.insert(0, selection[0])

    def value(d: dict, part: str, k: str):
        v = ((d.get(part) or {}).get(split) or {}).get(k)
        return v if isinstance(v, (int, float)) else None

    if as_json:
        out.print_json(json.dumps({"split": split, "runs": [
            {"name": r.name, "task": r.task, "backbone": r.backbone, "metric": d.get("metric"),
             "model": {k: value(d, "model", k) for k in rows}, "baseline": {k: value(d, "baseline", k) for k in rows},
             "verdict": d.get("verdict")} for r, d in zip(records, docs)]}, default=str))
        return
    def build(headers: list[str]) -> Table:
        table = Table(title=f"{split or 'no'} split")
        table.add_column("", no_wrap=True)
        for h in headers:
            table.add_column(escape(h), no_wrap=True, justify="right")
        table.add_row("task", *[r.task or "-" for r in records])
        table.add_row("backbone", *[escape(r.backbone or "-") for r in records])
        table.add_row("selection metric", *[d.get("metric") or "-" for d in docs])
        for k in rows:
            table.add_row(k, *["-" if value(d, "model", k) is None else f"{value(d, 'model', k):.4f}" for d in docs])
        for k in rows[:1]:
            table.add_row(f"baseline {k}", *["-" if value(d, "baseline", k) is None
                                             else f"{value(d, 'baseline', k):.4f}" for d in docs])
        table.add_row("verdict", *[_verdict_word(d.get("verdict")) or "-" for d in docs])
        return table

    table = build([r.name for r in records])
    if not _fits(table):  # whole names as a legend above, numbers as the columns' headers
        for i, r in enumerate(records, 1):
            out.print(f"#{i} = {escape(r.name)}", highlight=False, soft_wrap=True)
        table = build([f"#{i}" for i in range(1, len(records) + 1)])
    out.print(table)


@models_app.command("register")
@_guard
def models_register(run: str = typer.Argument(..., help="completed run directory or run name"),
                    name: str = typer.Option(..., "--name", help="model name, e.g. sentiment"),
                    alias: Optional[str] = typer.Option(None, help="also point this alias at it, e.g. prod"),
                    force: bool = typer.Option(False, "--force", help="register even a run that loses to its "
                                               "baseline"),
                    again: bool = typer.Option(False, "--again", help="register a run already registered under "
                                               "NAME once more, as a new version")):
    """Register a completed run as the next version of a model. A run that loses to its baseline
    is refused unless --force; one already registered under NAME, unless --again."""
    from tunery.evaluate.verdict import verdict_line
    from tunery.refs import find_run
    from tunery.store import Store

    run_dir = find_run(run)
    metrics_path = run_dir / "metrics.json"
    doc = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    verdict = doc.get("verdict")
    if verdict and not verdict.get("beats_baseline") and not force:
        _fail(TuneryError(f"not registering run {run_dir.name}: it does not beat its baseline. "
                          f"{verdict_line(verdict)} Improve the run, serve the baseline, or pass --force to "
                          "register it anyway"))
    store = Store()
    earlier = store.versions_of_run(str(run_dir), run_dir.name)
    version = store.register_model(name, run_path=str(run_dir), run_name=run_dir.name, alias=alias,
                                   metrics=doc.get("model"), refuse_duplicate=not again)
    out.print(f"registered {version.ref}" + (f" (alias {alias})" if alias else ""), highlight=False)
    if earlier:
        err.print(f"note: run {escape(run_dir.name)} is also registered as "
                  f"{', '.join(v.ref for v in earlier)}", highlight=False)
    if verdict and not verdict.get("beats_baseline"):
        err.print(f"[yellow]warning:[/] registered with --force although it loses to its baseline: "
                  f"{escape(verdict['summary'])}", highlight=False)


@models_app.command("list")
@_guard
def models_list(name: Optional[str] = typer.Argument(None), as_json: bool = typer.Option(False, "--json")):
    """List registered model versions (a run that was moved or deleted is marked MISSING)."""
    from tunery.rundir import is_complete
    from tunery.store import Store

    versions = Store().list_models(name)
    if as_json:
        out.print_json(json.dumps([v.to_dict() for v in versions], default=str))
        return
    table = Table()
    table.add_column("model", no_wrap=True)
    table.add_column("aliases")
    table.add_column("run", overflow="fold")
    table.add_column("created")
    for v in versions:
        gone = "" if is_complete(Path(v.run_path)) else " [red]MISSING (tunery models relocate / delete)[/]"
        table.add_row(v.ref, ", ".join(v.aliases), escape(v.run_path) + gone, str(v.created_at)[:19])
    out.print(table)


@models_app.command("alias")
@_guard
def models_alias(name: str, alias: str, version: int):
    """Point ALIAS (e.g. prod) at VERSION of model NAME."""
    from tunery.store import Store

    Store().set_alias(name, alias, version)
    out.print(f"{name}:{alias} -> {name}@{version}")


@models_app.command("delete")
@_guard
def models_delete(ref: str = typer.Argument(..., help="NAME@N (one version) or NAME (every version)"),
                  yes: bool = typer.Option(False, "--yes", "-y", help="delete every version of NAME without asking")):
    """Remove a registered version (and the aliases pointing at it). The run directory is kept."""
    from tunery.store import Store

    store = Store()
    if "@" not in ref and ":" not in ref and not yes:
        versions = store.list_models(ref) if ref else []
        listing = ", ".join(v.ref for v in versions) or "none"
        if not sys.stdin.isatty():
            _fail(TuneryError(f"{ref!r} names every version of the model ({listing}); pass --yes to delete them "
                              f"all, or give one version: {ref}@N"))
        if versions and not typer.confirm(f"delete every version of {ref} ({listing})?", err=True):
            raise typer.Exit(1)
    for v in store.delete_model(ref):
        aliases = f" (aliases {', '.join(v.aliases)} removed)" if v.aliases else ""
        out.print(f"deleted {v.ref}{aliases}; the run stays at {v.run_path}", highlight=False)


@models_app.command("relocate")
@_guard
def models_relocate(ref: str = typer.Argument(..., help="NAME@N, NAME:ALIAS or NAME (latest)"),
                    new_dir: Path = typer.Argument(..., help="where the run directory is now"),
                    force: bool = typer.Option(False, "--force", help="accept a run with another name")):
    """Re-point a registered version at its run's new directory (after the run was moved)."""
    from tunery.errors import RunError
    from tunery.rundir import is_complete, read_meta
    from tunery.store import Store

    store = Store()
    version = store.resolve_model(ref)
    if not is_complete(new_dir):
        _fail(TuneryError(f"{new_dir} is not a complete run directory (it needs tunery.json and model/); give "
                          f"the directory run {version.run_name or version.run_path} was moved to"))
    run_dir = new_dir.resolve()
    found = read_meta(run_dir).get("name") or run_dir.name
    if version.run_name and found != version.run_name and not force:
        _fail(TuneryError(f"{run_dir} holds run {found!r}, but {version.ref} was registered from run "
                          f"{version.run_name!r}; give that run's new directory, register this one as a new "
                          f"version (tunery models register {run_dir} --name {version.name}), or pass --force"))
    moved = store.relocate_model(version.ref, str(run_dir), run_name=found)
    try:  # the run's own record follows it, when it is the same run and its old place is gone
        record = store.get_run(found)
        if not Path(record.path).exists():
            store.update_run(found, path=str(run_dir))
    except RunError:
        pass
    out.print(f"{moved.ref} -> {run_dir} (was {version.run_path})", highlight=False)


# --------------------------------------------------------------------------------------------
@app.command()
@_guard
def serve(models: list[str] = typer.Argument(..., help="sentiment, sentiment@2, sentiment:prod, a run directory; "
                                             "NAME=REF to choose the served name"),
          host: str = typer.Option("127.0.0.1", help="address to listen on (0.0.0.0: every interface)"),
          port: int = typer.Option(8000), workers: int = typer.Option(1, min=1, help="server processes"),
          config: Optional[Path] = typer.Option(None, "--config", "-c",
                                                help="serve config: plans, limits, batching (default: "
                                                     "$TUNERY_SERVE_CONFIG, else built-in)"),
          access_log: bool = typer.Option(False, help="log every request")):
    """Serve models over HTTP with API keys, metering, quotas and dynamic batching."""
    from tunery.serve.server import resolve_models, run_server

    specs = resolve_models(models)
    for m in specs:
        err.print(f"serving [bold]{escape(m.name)}[/] = {escape(m.ref)}", highlight=False)
    err.print(f"on http://{host}:{port}  (API docs: /docs; keys: tunery keys create --tenant NAME --plan PLAN)",
              highlight=False)
    run_server(specs, host=host, port=port, workers=workers, config_path=str(config) if config else None,
               access_log=access_log)


@keys_app.command("create")
@_guard
def keys_create(tenant: str = typer.Option(..., help="the customer the key bills to"),
                plan: Optional[str] = typer.Option(None, help="plan of the tenant (needed for a new tenant)"),
                models: Optional[list[str]] = typer.Option(None, "--models", "-m",
                                                           help="served model names the key may use (repeat); "
                                                                "default: all"),
                admin: bool = typer.Option(False, help="may also manage keys and read every tenant's usage"),
                note: Optional[str] = typer.Option(None, help="a label for your records"),
                config: Optional[Path] = typer.Option(None, "--config", "-c", help="serve config with the plans")):
    """Create an API key. The key is printed once; only its hash is stored."""
    from tunery.serve.keys import create_key
    from tunery.serve.settings import load_serve_config
    from tunery.store import Store

    plans = list(load_serve_config(config).plans)
    key, info = create_key(Store(), tenant=tenant, plan=plan, models=models or None, admin=admin, note=note,
                           known_plans=plans)
    err.print(f"created key {info.key_id} for tenant {escape(info.tenant)} (plan {escape(info.plan)}"
              f"{', admin' if info.admin else ''}; models: {escape(', '.join(info.models or ['all']))}). "
              "Store it now: it cannot be shown again.", highlight=False)
    print(key)


@keys_app.command("list")
@_guard
def keys_list(tenant: Optional[str] = typer.Option(None), as_json: bool = typer.Option(False, "--json")):
    """List API keys (ids, tenants, plans, scopes; never the secrets)."""
    from tunery.serve.keys import list_keys
    from tunery.store import Store

    found = list_keys(Store(), tenant=tenant)
    if as_json:
        print(json.dumps([k.to_dict() for k in found], indent=2))
        return
    table = Table("key id", "tenant", "plan", "models", "admin", "created", "revoked", "note")
    for k in found:
        table.add_row(k.key_id, escape(k.tenant), escape(k.plan), escape(", ".join(k.models or ["all"])),
                      "yes" if k.admin else "", k.created_at.strftime("%Y-%m-%d %H:%M"),
                      k.revoked_at.strftime("%Y-%m-%d %H:%M") if k.revoked_at else "", escape(k.note or ""))
    out.print(table)


@keys_app.command("revoke")
@_guard
def keys_revoke(key_id: str = typer.Argument(..., help="the key id (from keys list) or the full key")):
    """Revoke a key: its next request gets 401."""
    from tunery.serve.keys import revoke_key
    from tunery.store import Store

    info = revoke_key(Store(), key_id)
    out.print(f"revoked {info.key_id} (tenant {escape(info.tenant)})", highlight=False)


@usage_app.command("report")
@_guard
def usage_report(tenant: Optional[str] = typer.Option(None, help="default: every tenant"),
                 start: Optional[str] = typer.Option(None, "--from", help="first day, YYYY-MM-DD (UTC)"),
                 end: Optional[str] = typer.Option(None, "--to", help="last day, inclusive"),
                 as_csv: bool = typer.Option(False, "--csv", help="CSV on stdout"),
                 config: Optional[Path] = typer.Option(None, "--config", "-c", help="serve config with the plans")):
    """Usage per tenant, model and day (predictions and explanations), with the cost under each tenant's plan."""
    import csv
    from datetime import date

    from tunery.serve.metering import usage_report as report
    from tunery.serve.settings import load_serve_config
    from tunery.store import Store

    def day(value: Optional[str], flag: str):
        if value is None:
            return None
        try:
            return date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{flag} {value!r} is not a date: use YYYY-MM-DD") from None

    rows = report(Store(), load_serve_config(config), tenant=tenant, start=day(start, "--from"),
                  end=day(end, "--to"), explanations=True)
    # requests, texts, tokens: predictions'; explain_requests, explanations (the billed unit), evaluations:
    # explanations'; cost: both under the tenant's plan
    columns = ["tenant", "day", "model", "model_ref", "plan", "requests", "texts", "tokens", "explain_requests",
               "explanations", "evaluations", "cost", "currency"]
    if as_csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return
    table = Table(*columns)
    for r in rows:
        table.add_row(*(escape(str(r[c])) for c in columns))
    out.print(table)
    cost = sum(r["cost"] or 0 for r in rows)
    out.print(f"{len(rows)} rows; {sum(r['requests'] for r in rows)} requests, {sum(r['texts'] for r in rows)} "
              f"texts, {sum(r['tokens'] for r in rows)} tokens; {sum(r['explain_requests'] for r in rows)} explain "
              f"requests, {sum(r['explanations'] for r in rows)} explanations; cost {cost:.4f}", highlight=False)


_DB_URL_HELP = "a database URL (default: TUNERY_DB_URL, else the SQLite file in TUNERY_HOME)"


@db_app.command("current")
@_guard
def db_current(url: Optional[str] = typer.Option(None, "--url", help=_DB_URL_HELP),
               check: bool = typer.Option(False, "--check", help="exit 1 unless tunery can use the database as it "
                                          "is (at the newest revision, or empty)")):
    """Show the database's schema revision and whether it needs `tunery db upgrade`."""
    from tunery.store import migrate

    state = migrate.current(url)
    out.print(f"database: {state.where}\nrevision: {state.describe()}\nhead:     {migrate.HEAD}", markup=False,
              highlight=False, soft_wrap=True)
    if check and state.kind not in ("current", "empty"):
        raise typer.Exit(1)


@db_app.command("upgrade")
@_guard
def db_upgrade(url: Optional[str] = typer.Option(None, "--url", help=_DB_URL_HELP)):
    """Bring the database's schema to this tunery's revision, keeping every row (all or nothing)."""
    from tunery.store import migrate

    before, after = migrate.upgrade(url)
    if before.kind == "current":
        out.print(f"{after.where}: already at revision {after.revision}; nothing to do", markup=False,
                  highlight=False, soft_wrap=True)
    else:
        was = "an empty database" if before.kind == "empty" else f"revision {before.effective_revision}"
        out.print(f"{after.where}: upgraded from {was} to {after.revision}", markup=False, highlight=False,
                  soft_wrap=True)


def _print_study(result) -> None:
    done = f"{result.complete} complete, {result.pruned} pruned, {result.failed} failed"
    if result.best_trial is None:
        out.print(f"study {result.study}: no complete trial ({done}); report: {result.report}", markup=False,
                  highlight=False, soft_wrap=True)
        return
    params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.best_params.items())
    lines = [f"study {result.study}: {done}",
             f"best: trial {result.best_trial}, validation {result.metric} {result.best_value:.4f} ({params})",
             f"run: {result.best_run}", f"report: {result.report}"]
    if result.registered:
        lines.append(f"registered {result.registered}")
    out.print("\n".join(lines), markup=False, highlight=False, soft_wrap=True)


@app.command()
@_guard
def tune(config: Optional[Path] = typer.Argument(None, help="run config (YAML) with an optional search: section"),
         set_: list[str] = typer.Option([], "--set", help="override a key: --set train.epochs=4"),
         budget: Optional[str] = typer.Option(None, help="time for the whole study, e.g. 30m, 1h30m"),
         trials: Optional[int] = typer.Option(None, help="the number of trials, across all workers and machines"),
         workers: int = typer.Option(1, help="trials run at once on this machine, each in its own process"),
         study: Optional[str] = typer.Option(None, help="the study's name (default: from the data and the time)"),
         pruner: str = typer.Option("median", help="median | sha (successive halving) | hyperband"),
         keep: str = typer.Option("best", help="best: other trials drop their weights (metrics, config and report "
                                  "stay) | all"),
         register: Optional[str] = typer.Option(None, help="register the best run under this model name"),
         join: Optional[str] = typer.Option(None, "--join", help="add workers to the study of this name"),
         resume: Optional[str] = typer.Option(None, "--resume", help="continue the stopped study of this name"),
         verbose: bool = typer.Option(False, "--verbose", "-v")):
    """Search hyperparameters: each trial is a real run; the first is the config's own recipe, so
    the best is never worse than it. Storage: the store's database (TUNERY_DB_URL for PostgreSQL)."""
    from tunery.config import load_config
    from tunery.tune import join_study, parse_duration, resume_study, run_study

    _setup_logging(verbose)
    logging.getLogger("tunery.tune.worker").setLevel(logging.INFO)  # a line per finished trial
    sigterm_as_interrupt()  # passed on to the trial processes, which queue their trials again
    budget_s = parse_duration(budget) if budget is not None else None
    if join or resume:
        if join and resume:
            _fail(TuneryError("give --join STUDY or --resume STUDY, not both"))
        if config is not None or set_:
            _fail(TuneryError(f"--{'join' if join else 'resume'} uses the study's own config; drop CONFIG and --set"))
        if join:
            if budget is not None or trials is not None:
                _fail(TuneryError("--join works within the study's own budget and trials; drop --budget and "
                                  "--trials (change them with --resume)"))
            result = join_study(join, workers=workers)
        else:
            result = resume_study(resume, budget_s=budget_s, trials=trials, workers=workers)
    elif config is None:
        _fail(TuneryError("give a config file (tunery init DATA writes one), --join STUDY or --resume STUDY"))
    else:
        cfg = load_config(config, overrides=set_)
        result = run_study(cfg, budget_s=budget_s, trials=trials, workers=workers, study=study, pruner=pruner,
                           keep=keep, register=register)
    _print_study(result)
    if result.best_trial is None:
        raise typer.Exit(1)


def _print_leaderboard(result, most: int = 15) -> None:
    board = Table(title=f"tunery auto {result.name}: leaderboard (best on validation first)", title_justify="left")
    for column in ("#", "candidate", "backbone"):
        board.add_column(column, no_wrap=True)
    board.add_column("key params", overflow="fold")
    for column in (f"validation {result.metric}", "state", "time"):
        board.add_column(column, no_wrap=True)
    shown = result.leaderboard[:most]
    for i, c in enumerate(shown, 1):
        params = ", ".join(f"{k.split('.')[-1]}={_param_text(v)}" for k, v in c.params.items()) or "-"
        value = "-" if c.validation is None else f"{c.validation:.4f}"
        mark = " *" if c.run_dir and Path(c.run_dir) == result.best_run else ""
        board.add_row(str(i), c.name + mark, c.backbone, params, value, c.state,
                      "-" if c.seconds is None else f"{c.seconds:.0f} s")
    out.print(board)
    if len(result.leaderboard) > most:
        out.print(f"... and {len(result.leaderboard) - most} more in {result.summary}", markup=False)


def _print_auto(result) -> None:
    _print_leaderboard(result)
    lines = [f"task: {result.task}; objective: validation {result.metric}",
             f"backbone: {result.backbone_reason}",
             f"chosen: {'the TF-IDF baseline (it beats every trial on validation)' if result.kind == 'baseline' else 'a fine-tuned model'}"
             f" -> {result.best_run}"]
    if result.test:
        shown = f"test {result.metric} {result.test.get(result.metric, float('nan')):.4f}"
        if result.kind == "model" and result.baseline_test and result.metric in result.baseline_test:
            shown += f" (TF-IDF baseline {result.baseline_test[result.metric]:.4f})"
        lines.append(shown)
    else:
        lines.append("no test split (data.test_fraction 0): `tunery evaluate RUN --data FILE` tests it")
    lines.append(f"time: {result.wall_seconds:.0f} s of a {result.budget_seconds:.0f} s budget")
    if result.study_report:
        lines.append(f"study report: {result.study_report}")
    lines.append(f"summary: {result.summary}")
    if result.registered:
        lines.append(f"registered {result.registered}")
    out.print("\n".join(lines), markup=False, highlight=False, soft_wrap=True)


@app.command()
@_guard
def auto(source: Path = typer.Argument(..., help="a labelled data file, or a run config (YAML)"),
         budget: str = typer.Option(..., help="time for everything, e.g. 10m, 1h"),
         validation: Optional[Path] = typer.Option(None, help="validation file (default: split from the data)"),
         test: Optional[Path] = typer.Option(None, help="test file the chosen model is scored on (default: split "
                                             "from the data)"),
         metric: Optional[str] = typer.Option(None, help="objective on validation (default: accuracy, or macro_f1 "
                                              "when classes are imbalanced; micro_f1 multi-label; rmse regression)"),
         text_column: Optional[str] = typer.Option(None), label_column: Optional[str] = typer.Option(None),
         text_pair_column: Optional[str] = typer.Option(None),
         workers: int = typer.Option(1, help="trials run at once on this machine"),
         trials: Optional[int] = typer.Option(None, help="at most this many trials (default: as many as the budget "
                                              "allows)"),
         name: Optional[str] = typer.Option(None, help="name of the search (default: data stem + time)"),
         output_dir: Optional[str] = typer.Option(None, help="where the runs go (default: runs)"),
         register: Optional[str] = typer.Option(None, help="register the chosen run under this model name"),
         set_: list[str] = typer.Option([], "--set", help="fix a key: --set model.backbone=mpnet-base"),
         verbose: bool = typer.Option(False, "--verbose", "-v")):
    """The best model a budget affords, from data alone: infer the task, fit the TF-IDF baseline,
    choose the backbone the budget affords, search the recipe, keep the best on validation (the
    baseline when it wins), score it on the test split and print a leaderboard."""
    from tunery.automl import run_auto
    from tunery.tune import parse_duration

    _setup_logging(verbose)
    logging.getLogger("tunery.automl").setLevel(logging.INFO)
    logging.getLogger("tunery.tune.worker").setLevel(logging.INFO)  # a line per finished trial
    sigterm_as_interrupt()
    budget_s = parse_duration(budget)
    cfg = _source_config(source, set_, "tunery auto",
                         {"validation": validation, "test": test, "text_column": text_column,
                          "label_column": label_column, "text_pair_column": text_pair_column})
    if output_dir is not None:
        cfg = cfg.model_copy(update={"output_dir": output_dir})
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"progress": False})})
    result = run_auto(cfg, budget_s=budget_s, metric=metric, workers=workers, trials=trials,
                      name=_checked_name(name) if name else None, register=register)
    _print_auto(result)


@studies_app.command("list")
@_guard
def studies_list():
    """Studies in the store's database, with their trials and best value."""
    from tunery.tune import study as studies

    table = Table("study", "metric", "trials", "complete", "pruned", "failed", "best", "best run")
    for name in studies.names():
        try:
            st = studies.load(name)
        except TuneryError:  # an Optuna study of someone else's in the same database
            table.add_row(escape(name), "(not a tunery study)", *["-"] * 6)
            continue
        rows = studies.rows(st)
        best = studies.best_trial(st)
        s = st.user_attrs.get(studies.SETTINGS) or {}
        count = {k: sum(r.state == k for r in rows) for k in ("complete", "pruned", "fail")}
        table.add_row(escape(name), s.get("metric", "-"), str(len(rows)), str(count["complete"]),
                      str(count["pruned"]), str(count["fail"]), f"{best.value:.4f}" if best else "-",
                      escape(best.user_attrs.get("run", "-")) if best else "-")
    out.print(table)


@studies_app.command("show")
@_guard
def studies_show(name: str = typer.Argument(..., help="the study's name")):
    """A study's settings and trials: state, validation value, parameters, time, run."""
    from tunery.tune import study as studies

    st = studies.load(name)
    s = studies.settings(st)
    best = studies.best_trial(st)
    out.print(f"study {name}: {s['metric']} ({s['direction']}), pruner {s['pruner']}, trials "
              f"{s.get('trials') or 'no cap'}, keep {s['keep']}; runs in {s['output_dir']}", markup=False,
              highlight=False, soft_wrap=True)
    rows = studies.rows(st)
    keys = sorted({k for r in rows for k in r.params})
    table = Table("trial", "state", s["metric"], *keys, "seconds", "note", "run")
    for r in rows:
        note = "; ".join(x for x in [("best" if best is not None and r.number == best.number else ""),
                                      (f"stopped: {r.stopped_by}" if r.stopped_by else ""),
                                      (f"retry of {r.retry_of}" if r.retry_of is not None else "")] if x)
        table.add_row(str(r.number), r.state, "-" if r.value is None else f"{r.value:.4f}",
                      *[_param_text(r.params.get(k)) for k in keys],
                      "-" if r.seconds is None else f"{r.seconds:.0f}", note, escape(r.run or "-"))
    out.print(table)


def _param_text(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else escape(str(value))


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
