"""`tunery compress RUN --to onnx|int8`: a run's model as an ONNX Runtime graph, fp32 or int8, written
as a new run directory that predict, evaluate, serve, the registry and `tunery.load` take.

Steps: export (export.py), ONNX Runtime's transformer fusions, then for int8 dynamic or static
quantisation (quantize.py); then the checks (checks.py) on the run's test split (its validation
split when it has no test rows, or `--data FILE`): the fp32 graph's parity with torch, and the
compressed model's metric beside the original's, with the collapse check. A result that fails a
check is refused (CompressionError: what was measured and what to try) and nothing is kept. The
new run records the checks, sizes and latencies (one text p50/p99, batch throughput) in
metrics.json and report.html; the source run is left as it was.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tunery.errors import CompressionError, ConfigError, RunError

log = logging.getLogger(__name__)

TARGETS = ("onnx", "int8")
ATTENTION = ("auto", "int8", "fp32")  # the attention's Q, K and V projections under --to int8
PARITY_TOL = 1e-3  # max |logit difference| of the fp32 graph against torch
LATENCY_ROWS = 256  # rows timed for throughput (fewer when the split is smaller)
ONE_TEXT_RUNS = 100
RAW_GRAPH = "exported.onnx"  # the exporter's graph in the work folder, before any fusion


@dataclass(frozen=True)
class CompressOptions:
    """What `compress_run` makes. `to`: onnx (fp32 graph) or int8; `static`: int8 with activation
    ranges calibrated on `calibration` training rows (QDQ) instead of dynamic; `max_drop`: the most
    the metric may fall, in points (regression errors: percent), before the result is refused;
    `threads`: intra-op threads of the ONNX session the run is measured with and recorded for
    serving (None: one per core); `exporter`: auto, dynamo or torchscript; `exclude`: MatMul nodes
    (names, or "first:K"/"last:K" counted in graph order) kept in fp32; `attention`: the attention's
    Q, K and V projections in int8 (fastest), fp32 (inside the fused Attention operator: the most
    accurate), or auto (int8, and fp32 where int8 fails the checks)."""

    to: str = "int8"
    static: bool = False
    calibration: int = 256
    max_drop: float = 1.0
    threads: int | None = None
    exporter: str = "auto"
    exclude: tuple[str, ...] = ()
    attention: str = "auto"

    def check(self) -> CompressOptions:
        if self.to not in TARGETS:
            raise ConfigError(f"--to {self.to!r}: choose onnx (an fp32 ONNX Runtime graph) or int8")
        if self.static and self.to != "int8":
            raise ConfigError("--static calibrates int8 activations: use it with --to int8")
        if self.calibration < 1:
            raise ConfigError(f"--calibration {self.calibration}: give the number of training rows to calibrate "
                              "on, 1 or more (256 is usual)")
        if not self.max_drop >= 0:
            raise ConfigError(f"--max-drop {self.max_drop}: give the largest acceptable drop in points, 0 or more")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads {self.threads}: give 1 or more (or leave it out: one per core)")
        if self.attention not in ATTENTION:
            raise ConfigError(f"--attention {self.attention!r}: choose auto, int8 (the Q, K and V projections "
                              "quantised: fastest) or fp32 (kept in fp32: most accurate)")
        if self.attention != "auto" and self.to != "int8":
            raise ConfigError(f"--attention {self.attention} chooses how int8 treats the attention's projections: "
                              "use it with --to int8")
        if self.exporter not in ("auto", "dynamo", "torchscript"):
            raise ConfigError(f"--exporter {self.exporter!r}: choose auto, dynamo or torchscript")
        return self

    @property
    def kind(self) -> str:
        return "onnx" if self.to == "onnx" else ("int8-static" if self.static else "int8")


def compress_run(ref: str | Path, options: CompressOptions, *, name: str | None = None,
                 output_dir: str | Path | None = None, data: str | Path | None = None, store=None) -> Path:
    """Compress the completed run `ref` (path, run name or registry name) into a new run named
    `name` (default: "<source>-<onnx|int8|int8-static>") beside it or under `output_dir`. Returns it."""
    import torch

    from tunery.config import load_config, save_config
    from tunery.evaluate.metrics import compute_metrics, greater_is_better
    from tunery.inference import encode, quiet_transformers, torch_logits
    from tunery.pipeline import new_run
    from tunery.predict import load
    from tunery.predict_onnx import BACKEND, ONNX_FILE, load_onnx
    from tunery.rundir import META, write_json
    from tunery.spelling import as_read

    options = options.check()
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise ConfigError(f"tunery compress needs onnx and onnxruntime ({err.name} is missing): "
                          "pip install 'tunery[onnx]'") from None
    original = load(ref)
    src, meta = original.run_dir, original.meta
    if meta.get("backend", "transformers") != "transformers":
        raise RunError(f"run {src} is a {meta['backend']} run; compress the transformers run it came from"
                       + (f" ({meta['compressed_from']['run']})" if meta.get("compressed_from") else ""))
    cfg = load_config(src / "config.yaml")
    label_names, task = original.label_names, original.task
    split, texts, pairs, labels, train_rows = _check_rows(src, cfg, original, data, need_train=options.static)
    if not texts:
        raise RunError(f"run {src} has no test or validation rows to check the compressed model on; pass --data FILE")
    texts, pairs = as_read(original.speller, texts, pairs)  # the text the model reads (model.correct_typos)
    enc = encode(original.tokenizer, texts, pairs, [None] * len(texts), max_length=meta["max_length"])
    pad_id = original.tokenizer.pad_token_id or 0
    y = task.y_true(labels, len(label_names))
    metric = meta.get("metric") or "accuracy"
    threads = options.threads or torch.get_num_threads()
    torch.set_num_threads(threads)

    new_name = name or f"{src.name}-{options.kind}"
    cfg_new = cfg.model_copy(update={"name": new_name, "output_dir": str(output_dir or src.parent)})
    started = time.time()
    with new_run(cfg_new, task=meta["task"], backbone=meta["backbone"], store=store) as run:
        work = run.work
        model_dir = work / "model"
        model_dir.mkdir()
        for f in (src / "model").iterdir():  # tokenizer and config.json; the weights become the graph
            if f.is_file() and not f.name.endswith((".safetensors", ".bin")):
                shutil.copy2(f, model_dir / f.name)
        for f in ("data_report.json", "data_digest.json"):
            if (src / f).exists():
                shutil.copy2(src / f, work / f)
        save_config(run.cfg, work / "config.yaml")
        with tempfile.TemporaryDirectory(dir=work, prefix=".graphs-") as tmp:
            tmp = Path(tmp)
            fp32, steps = _fp32_graph(original.model, tmp, with_token_types=enc.token_type_ids is not None,
                                      exporter=options.exporter)
            ref_logits = torch_logits(original.model, enc, batch_size=32, pad_id=pad_id)
            fp32_logits = _onnx_logits(fp32, enc, pad_id, threads)
            parity = _checked_parity(ref_logits, fp32_logits, meta["task"], split, steps["exporter"])
            target = model_dir / ONNX_FILE
            before = compute_metrics(meta["task"], y, task.scores(torch.from_numpy(ref_logits)), label_names,
                                     threshold=original.threshold)
            value_before = _metric(before, metric)

            def judged(logits: np.ndarray) -> dict:
                """The compressed logits against the original's: metrics, drop, collapse, agreement."""
                from tunery.compress.checks import collapse, drop_points, predictions

                after = compute_metrics(meta["task"], y, task.scores(torch.from_numpy(logits)), label_names,
                                        threshold=original.threshold)
                value = _metric(after, metric)
                drop = drop_points(value_before, value, greater_is_better=greater_is_better(metric), task=meta["task"])
                collapsed = collapse(predictions(ref_logits, meta["task"]), predictions(logits, meta["task"]),
                                     task=meta["task"], label_names=label_names)
                return {"logits": logits, "metrics": after, "value": value, "drop": drop, "collapsed": collapsed,
                        "agreement": _agreement(ref_logits, logits, meta["task"]),
                        "passed": not collapsed and drop <= options.max_drop}

            quant = None
            if options.to == "int8":
                result, quant = _int8(options, tmp, fp32, steps, target, original, meta, train_rows, judged=judged,
                                      logits_of=lambda graph: _onnx_logits(graph, enc, pad_id, threads),
                                      parity_of=lambda logits: _checked_parity(ref_logits, logits, meta["task"], split,
                                                                               steps["exporter"]))
            else:
                shutil.move(fp32, target)
                result = judged(fp32_logits)

        new_logits, after, value_after = result["logits"], result["metrics"], result["value"]
        drop, collapsed, agreement = result["drop"], result["collapsed"], result["agreement"]
        scores = task.scores(torch.from_numpy(new_logits))
        if not result["passed"]:
            raise CompressionError(_refusal(options, split, metric, value_before, value_after, drop, collapsed,
                                            agreement, quant))

        out_meta = {**meta, "name": run.cfg.name, "backend": BACKEND, "precision": options.kind.replace("onnx", "fp32"),
                    "onnx": {"file": f"model/{ONNX_FILE}", "opset": steps["opset"], "exporter": steps["exporter"],
                             "inputs": steps["inputs"], "threads": options.threads},
                    "compressed_from": {"run": src.name, "path": str(src.resolve())},
                    "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        sizes = {"original_bytes": _weights_bytes(src / "model"), "compressed_bytes": target.stat().st_size}
        compressed = load_onnx(work, out_meta, batch_size=original.batch_size, threads=threads)
        rows = texts[:LATENCY_ROWS] if pairs is None else list(zip(texts, pairs))[:LATENCY_ROWS]
        speed = {"torch_fp32": _latency(original, rows), options.kind: _latency(compressed, rows)}
        quiet_transformers()
        compression = {"kind": options.kind, "split": split, "rows": len(texts), "metric": metric,
                       "original": value_before, "compressed": value_after, "drop_points": drop,
                       "max_drop": options.max_drop, "agreement": agreement, "parity_fp32": parity,
                       "quantization": quant, "graph": steps, "sizes": sizes, "threads": threads, "latency": speed,
                       "seconds": round(time.time() - started, 1), "options": asdict(options)}
        source_metrics = _read_json(src / "metrics.json")
        baseline = (source_metrics.get("baseline") or {}).get(split) if data is None else None
        run.metrics = {split: after}
        write_json(work / "metrics.json", {"task": meta["task"], "metric": metric, "threshold": meta.get("threshold"),
                                           "thresholds": meta.get("thresholds"), "model": {split: after},
                                           "original": {split: before},
                                           "baseline": {split: baseline} if baseline else None,
                                           "compression": compression})
        _write_report(work, run.cfg, out_meta, src, split, texts, pairs, y, scores, after, baseline, compression,
                      original.threshold)
        write_json(work / META, out_meta)  # last: its presence marks a complete run
    final = Path(run.cfg.output_dir) / run.cfg.name
    log.info("compressed %s -> %s: %s %.4f -> %.4f on %s (%d rows), %s -> %s bytes", src.name, final.name, metric,
             value_before, value_after, split, len(texts), f"{sizes['original_bytes']:,}", f"{sizes['compressed_bytes']:,}")
    return final


def _check_rows(src: Path, cfg, predictor, data, *, need_train: bool):
    """(split name, texts, pairs, labels, (training texts, pairs)) the compressed model is checked on: `data`
    (a labelled file, checked as `tunery evaluate --data` checks it), else the run's test split, else
    its validation split, split again from its config as training split them."""
    from tunery.pipeline import changed_data, prepare_run

    meta = predictor.meta
    train_texts: list[str] = []
    train_pairs: list[str] | None = None
    prepared = None
    changed = changed_data(src, cfg)
    if not changed:
        try:
            prepared = prepare_run(cfg, quiet=True)
            train_texts = prepared.data.train["text"].astype(str).tolist()
            if "text_pair" in prepared.data.train:
                train_pairs = prepared.data.train["text_pair"].astype(str).tolist()
        except Exception as err:  # noqa: BLE001 - the training files may be gone: --data still works
            if data is None:
                raise RunError(f"run {src}: its data cannot be read again to check the compressed model ({err}); "
                               "pass a labelled file with --data FILE") from None
    elif data is None:
        raise RunError(f"run {src}: {', '.join(changed)} changed since it was trained, so its test split cannot be "
                       "rebuilt; pass a labelled file with --data FILE")
    if need_train and not train_texts:
        raise RunError(f"run {src}: --static calibrates on the run's training rows, which cannot be read "
                       f"({'changed: ' + ', '.join(changed) if changed else 'see above'}); use dynamic int8 "
                       "(leave out --static)")
    if data is not None:
        from tunery.data.validate import check_file

        frame, report = check_file(str(data), cfg.data, task=meta["task"], label_names=predictor.label_names,
                                   text_column=meta["text_column"], text_pair_column=meta.get("text_pair_column"),
                                   label_column=meta["label_column"], delimiter=meta.get("label_delimiter"),
                                   tokenizer=predictor.tokenizer, backbone=cfg.model.backbone)
        report.raise_for_errors()
        name = Path(data).name.split(".")[0]
    else:
        frame = prepared.data.test if len(prepared.data.test) else prepared.data.validation
        name = "test" if len(prepared.data.test) else "validation"
    pairs = frame["text_pair"].astype(str).tolist() if "text_pair" in frame else None
    return name, frame["text"].astype(str).tolist(), pairs, frame["label"].tolist(), (train_texts, train_pairs)


def _fp32_graph(model, tmp: Path, *, with_token_types: bool, exporter: str) -> tuple[Path, dict]:
    """The exported and optimised fp32 graph, and what was done (exporter, opset, fusions, inputs)."""
    from tunery.compress.export import INPUTS, OPSET, export_onnx, optimize_onnx

    raw, fp32 = tmp / RAW_GRAPH, tmp / "fp32.onnx"
    used, cls_only = export_onnx(model, raw, with_token_types=with_token_types, exporter=exporter)
    fusions = optimize_onnx(raw, fp32, num_heads=model.config.num_attention_heads,
                            hidden_size=model.config.hidden_size, exporter=used)
    return fp32, {"exporter": used, "opset": OPSET if used == "dynamo" else 17, "fusions": fusions,
                  "inputs": list(INPUTS[: 3 if with_token_types else 2]), "cls_only_last_layer": cls_only}


def _onnx_logits(path: Path, enc, pad_id: int, threads: int | None) -> np.ndarray:
    from tunery.predict_onnx import onnx_logits, open_session

    return onnx_logits(open_session(path, threads), enc, batch_size=32, pad_id=pad_id)


def _int8(options: CompressOptions, tmp: Path, fp32: Path, steps: dict, target: Path, original, meta: dict,
          train_rows, *, judged, logits_of, parity_of) -> tuple[dict, dict]:
    """The int8 graph at `target`, judged (`judged(logits)`); and the quantisation settings used. With
    `options.attention` "auto", the Q, K and V projections are int8 first, and fp32 (inside the fused
    Attention operator) where that result fails its checks; the settings record each attempt. The
    graph with separate projections passes the fp32 parity check (`parity_of(logits)`) first."""
    from tunery.compress import quantize
    from tunery.compress.export import optimize_onnx

    quant = quantize.settings(static=options.static)
    calib = None
    if options.static:
        calib = _calibration_batches(original.tokenizer, *train_rows, options.calibration, meta)
        quant["calibration_rows"] = min(options.calibration, len(train_rows[0]))
    tries = ("int8", "fp32") if options.attention == "auto" else (options.attention,)
    quant["attempts"] = []
    for projections in tries:
        graph = fp32
        if projections == "int8":
            graph = tmp / "fp32-projections.onnx"
            config = original.model.config
            fusions = optimize_onnx(tmp / RAW_GRAPH, graph, num_heads=config.num_attention_heads,
                                    hidden_size=config.hidden_size, exporter=steps["exporter"], fuse_projections=False)
            steps["int8_fusions"] = fusions
            steps["int8_parity_fp32"] = parity_of(logits_of(graph))
        excluded = _excluded_nodes(options.exclude, quantize.matmul_nodes(graph))
        if options.static:
            quantize.quantize_static_int8(graph, target, calib, reduce_range=quant["reduce_range"], exclude=excluded)
        else:
            quantize.quantize_dynamic_int8(graph, target, reduce_range=quant["reduce_range"], exclude=excluded)
        result = judged(logits_of(target))
        quant["attempts"].append({"attention_projections": projections, "metric": result["value"],
                                  "drop_points": result["drop"], "collapsed": bool(result["collapsed"]),
                                  "passed": result["passed"]})
        quant.update(attention_projections=projections, excluded_nodes=excluded)
        if result["passed"]:
            break
        if projections != tries[-1]:
            log.info("int8 with int8 attention projections: %s %.4f (%+.2f points%s): trying fp32 projections",
                     meta.get("metric") or "metric", result["value"], -result["drop"],
                     ", collapsed" if result["collapsed"] else "")
    return result, quant


def _checked_parity(ref: np.ndarray, got: np.ndarray, task: str, split: str, exporter: str) -> dict:
    from tunery.compress.checks import parity

    result = parity(ref, got, task=task)
    if result["max_logit_diff"] > PARITY_TOL:
        other = "dynamo" if exporter == "torchscript" else "torchscript"
        raise CompressionError(
            f"the fp32 ONNX graph ({exporter} exporter) does not match torch on the {split} split: max logit "
            f"difference {result['max_logit_diff']:.3g} (allowed {PARITY_TOL}), same predictions on "
            f"{100 * result['same_predictions']:.1f} % of {result['rows']} rows; nothing was kept. Try "
            f"--exporter {other}, or report the backbone: its export is not exact")
    return result


def _excluded_nodes(spec: tuple[str, ...], nodes: list[str]) -> list[str]:
    """MatMul node names from names and "first:K" / "last:K" (graph order)."""
    out: list[str] = []
    for item in spec:
        where, _, k = item.partition(":")
        if where in ("first", "last") and k.isdigit():
            out += nodes[: int(k)] if where == "first" else nodes[len(nodes) - int(k):]
        elif item in nodes:
            out.append(item)
        else:
            raise ConfigError(f"--exclude {item!r}: not a MatMul node of the graph; give first:K, last:K or one of "
                              f"{', '.join(nodes[:4])}... ({len(nodes)} MatMul nodes)")
    return list(dict.fromkeys(out))


def _calibration_batches(tokenizer, texts: list[str], pairs: list[str] | None, n: int,
                         meta: dict) -> list[dict[str, np.ndarray]]:
    """`n` training rows (a seeded sample) as padded batches of 16: the activations int8 calibrates on."""
    from tunery.inference import encode, eval_order, pad_batch

    rng = np.random.default_rng(0)
    rows = sorted(rng.choice(len(texts), size=min(n, len(texts)), replace=False))
    enc = encode(tokenizer, [texts[i] for i in rows], None if pairs is None else [pairs[i] for i in rows],
                 [None] * len(rows), max_length=meta["max_length"])
    return [pad_batch(enc, idx, tokenizer.pad_token_id or 0) for idx in eval_order(enc.lengths, 16)]


def _metric(metrics: dict, name: str) -> float:
    from tunery.evaluate.metrics import metric_value

    return float(metric_value(metrics, name))


def _agreement(ref: np.ndarray, new: np.ndarray, task: str) -> float:
    from tunery.compress.checks import predictions

    a, b = predictions(ref, task), predictions(new, task)
    if task == "regression":  # within 1 % of the original's spread
        return float(np.mean(np.abs(a - b) <= 0.01 * (np.std(a) or 1.0))) if len(a) else 1.0
    same = a == b
    same = same.all(axis=1) if same.ndim == 2 else same
    return float(same.mean()) if len(same) else 1.0


def _refusal(options, split, metric, before, after, drop, collapsed, agreement, quant=None) -> str:
    what = (f"the {options.kind} model {'collapsed' if collapsed else 'lost too much'} on the {split} split: {metric} "
            f"{before:.4f} -> {after:.4f} ({drop:+.2f} points, allowed {options.max_drop:g}); it agrees with the "
            f"original on {100 * agreement:.1f} % of rows")
    if collapsed:
        what += f"; {collapsed}"
    attempts = (quant or {}).get("attempts") or []
    if len(attempts) > 1:
        what += " (" + "; ".join(f"attention projections {a['attention_projections']}: {a['metric']:.4f}"
                                 for a in attempts) + ")"
    tries = ["--static --calibration 512 (activation ranges calibrated on training rows)" if not options.static
             else "dynamic int8 (leave out --static)",
             "--exclude last:4 (keep the last MatMul nodes, the classifier head's among them, in fp32)",
             *(["--attention fp32 (the attention's Q, K and V projections kept in fp32)"]
               if options.to == "int8" and options.attention == "int8" else []),
             "--to onnx (fp32: exact, still faster than torch)"]
    if not collapsed:
        tries.append(f"--max-drop {max(drop, 0) + 0.5:.1f} if that drop is acceptable")
    return what + ". Nothing was kept. Try: " + "; ".join(tries)


def _weights_bytes(model_dir: Path) -> int:
    return sum(f.stat().st_size for f in model_dir.iterdir() if f.name.endswith((".safetensors", ".bin")))


def _latency(predictor, rows: list) -> dict:
    """Timings of `predictor.score` over `rows`: texts, or (text, pair) tuples."""
    from tunery.compress.checks import latency

    if rows and isinstance(rows[0], tuple):
        return latency(lambda chunk: predictor.score([t for t, _ in chunk], [p for _, p in chunk]), rows,
                       one_text_runs=ONE_TEXT_RUNS)
    return latency(lambda chunk: predictor.score(chunk), rows, one_text_runs=ONE_TEXT_RUNS)


def _read_json(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_report(work: Path, cfg, meta: dict, src: Path, split: str, texts, pairs, y, scores, metrics: dict,
                  baseline, compression: dict, threshold) -> None:
    from tunery.evaluate.report import write_report

    shown = texts if pairs is None else [f"{a} [SEP] {b}" for a, b in zip(texts, pairs)]
    kind, lat, sizes = compression["kind"], compression["latency"], compression["sizes"]
    rows = [["torch fp32 (source run)", compression["original"], sizes["original_bytes"] / 1e6,
             lat["torch_fp32"]["one_text_ms_p50"], lat["torch_fp32"]["one_text_ms_p99"], lat["torch_fp32"]["texts_per_s"]],
            [f"ONNX Runtime {kind}", compression["compressed"], sizes["compressed_bytes"] / 1e6,
             lat[kind]["one_text_ms_p50"], lat[kind]["one_text_ms_p99"], lat[kind]["texts_per_s"]]]
    parity = compression["parity_fp32"]
    tables = [{"title": "Compression", "headers": ["model", compression["metric"], "size (MB)", "one text p50 (ms)",
                                                   "one text p99 (ms)", f"batch of {lat[kind]['batch']} (texts/s)"],
               "rows": rows,
               "note": (f"Measured on the {split} split ({compression['rows']} rows; timings on the first "
                        f"{lat[kind]['texts']}) with {compression['threads']} intra-op thread(s). Drop "
                        f"{compression['drop_points']:+.2f} points (allowed {compression['max_drop']:g}); agreement "
                        f"with the original {100 * compression['agreement']:.1f} %. fp32 graph against torch: max "
                        f"logit difference {parity['max_logit_diff']:.2g}, same predictions on "
                        f"{100 * parity['same_predictions']:.1f} % of rows. Exporter: {compression['graph']['exporter']}; "
                        f"fusions: {compression['graph']['fusions'] or 'none'}; quantisation: "
                        f"{compression['quantization'] or 'none (fp32)'}.")}]
    write_report(work / "report.html", title=f"tunery run {cfg.name} ({kind} of {src.name})",
                 run_info={"run": cfg.name, "compressed from": str(src), "backend": f"ONNX Runtime ({meta['precision']})",
                           "task": meta["task"], "backbone": meta["backbone"], "checked on": f"{split} split"},
                 task=meta["task"], label_names=list(meta["label_names"]), metrics={split: metrics},
                 baseline={split: baseline} if baseline else None, predictions={split: (shown, y, scores)},
                 n_errors=cfg.evaluate.n_errors, threshold=threshold, calibration_bins=cfg.evaluate.calibration_bins,
                 config=cfg.to_dict(), tables=tables, figures=cfg.evaluate.figures)
