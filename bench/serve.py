"""Serving benchmark: `tunery serve` against a naive FastAPI + transformers pipeline server, same run.

    python bench/serve.py                          # levels 1,8,32; 1,500 requests or 30 s per level and server
    python bench/serve.py --requests 200 --seconds 10 --levels 1,32   # a quick look
    python bench/serve.py --max-batch-size 64 --max-wait-ms 2         # tunery's batching settings
    python bench/serve.py --precision fp32         # tunery's inference precision (default: auto)
    python bench/serve.py --run RUN_DIR            # serve an existing run instead of training one
    python bench/serve.py --out my.json
    python bench/serve.py --smoke                  # seconds: does the benchmark still run? (figures mean nothing)

Prints one JSON object on stdout (everything else goes to stderr) and writes it to
bench/results/serve-<timestamp>.json unless --out is given. See bench/README.md for every figure.

Setup: a MiniLM run is fine-tuned briefly with tunery (1,000 seeded SST-2 train rows, 30 steps)
into a temporary directory, and an API key of the plan "enterprise" (no rate limit, no quota) is
created in a temporary TUNERY_HOME. Then, one server at a time, each in its own process on
127.0.0.1 with one uvicorn worker:
  (a) naive: bench/naive_server.py, a plain `def` FastAPI endpoint calling a transformers
      text-classification pipeline once per request (no auth, no metering, no batching);
  (b) tunery: `python -m tunery serve RUN --config <the settings given here>` (API key checked,
      usage committed to SQLite before each 200, dynamic batching);
  (c) tunery-int8: the same command serving the run compressed by `tunery compress RUN --to int8`
      (ONNX Runtime, dynamic int8; its accuracy beside the original's is in "int8_run").
A load generator in a separate process sends one-text requests (SST-2 dev sentences) over
keep-alive connections, closed loop, at each concurrency level: warm-up requests first, then
--requests requests or --seconds seconds, whichever ends first. Ratios compare tunery with the
naive server measured in the same invocation; throughput ratio > 1 and p99 ratio < 1 favour tunery.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DEFAULT_DATA = (REPO.parent / "shared" / "data" / "sst2").resolve()
RESULTS = BENCH_DIR / "results"
TENANT = "bench"
PLAN = "enterprise"  # built-in plan without rate limit or quota: the benchmark measures serving, not limits
SERVERS = ("naive", "tunery", "tunery-int8")  # tunery-int8: the run compressed by `tunery compress --to int8`


def eprint(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu_seconds(pid: int | None) -> float | None:
    """user + system CPU seconds of process `pid` (all its threads), from /proc."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def machine_cpu() -> tuple[float, float] | None:
    """(busy, steal) CPU seconds of the whole machine so far, summed over cores, from /proc/stat."""
    try:
        f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    busy = f[0] + f[1] + f[2] + f[5] + f[6]  # user nice system irq softirq
    return busy / tick, (f[7] if len(f) > 7 else 0) / tick


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default), on sorted values."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


# ================================================================================================
# The load generator (its own process: `serve.py --_worker load SPEC OUT`)
# ================================================================================================
# A minimal HTTP/1.1 client on asyncio (uvloop when installed): one keep-alive connection per
# concurrent caller, each sending its next request when the previous answer is in (closed loop).
# Hand-written so that the client costs ~tens of microseconds of CPU per request and leaves the
# two cores to the server; its CPU use is measured and reported per level.


class _Conn:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader = self.writer = None
        self.connects = 0

    async def _open(self) -> None:
        import asyncio

        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        self.connects += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(self, data: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            await self._open()
        self.writer.write(data)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, chunked, close = None, False, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        if chunked:
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
                parts.append(await self.reader.readexactly(size + 2))
            body = b"".join(p[:-2] for p in parts)
        elif length is not None:
            body = await self.reader.readexactly(length)
        else:  # no length: the body runs to the end of the connection
            body, close = await self.reader.read(), True
        if close:
            self.close()
        return status, body


def _request_bytes(host: str, port: int, path: str, key: str | None, text: str, extra: dict | None = None) -> bytes:
    body = json.dumps({"texts": [text], **(extra or {})}, ensure_ascii=False).encode("utf-8")
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n" + (f"Authorization: Bearer {key}\r\n" if key else "") + "\r\n")
    return head.encode("latin-1") + body


def _scrape_batches(base_url: str, model: str) -> tuple[float, float] | None:
    """(texts, batches) so far from tunery's /metrics (`tunery_batch_size`); None where there is none."""
    try:
        with urllib.request.urlopen(f"{base_url}/metrics", timeout=10) as r:
            text = r.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    total = count = None
    for line in text.splitlines():
        if line.startswith("tunery_batch_size_sum{") and f'model="{model}"' in line:
            total = float(line.rsplit(" ", 1)[1])
        elif line.startswith("tunery_batch_size_count{") and f'model="{model}"' in line:
            count = float(line.rsplit(" ", 1)[1])
    return None if total is None or count is None else (total, count)


async def _run_level(spec: dict, concurrency: int) -> dict:
    import asyncio

    host, port = spec["host"], spec["port"]
    # spec["body"]: more request fields (an /explain request's method); spec["expect"]: the response's list
    reqs = [_request_bytes(host, port, spec["path"], spec.get("key"), t, spec.get("body")) for t in spec["texts"]]
    expect = spec.get("expect", "predictions")
    marker = f'"{expect}"'.encode()
    conns = [_Conn(host, port) for _ in range(concurrency)]
    state = {"next": 0}

    def next_request() -> bytes:
        data = reqs[state["next"] % len(reqs)]
        state["next"] += 1
        return data

    async def phase(total: int, seconds: float, check_first: bool) -> dict:
        latencies: list[float] = []
        statuses: dict[str, int] = {}
        failures: list[str] = []
        issued = {"n": 0}
        deadline = time.perf_counter() + seconds
        last = {"t": None}

        async def caller(conn: _Conn) -> None:
            while issued["n"] < total and time.perf_counter() < deadline:
                issued["n"] += 1
                data = next_request()
                t0 = time.perf_counter()
                try:
                    status, body = await conn.request(data)
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
                    conn.close()
                    statuses["exception"] = statuses.get("exception", 0) + 1
                    if len(failures) < 5:
                        failures.append(f"{type(e).__name__}: {e}")
                    await asyncio.sleep(0.01)  # a refused connection fails at once: do not spin
                    continue
                t1 = time.perf_counter()
                last["t"] = t1
                if status == 200 and marker in body:
                    latencies.append(t1 - t0)
                    if check_first and len(latencies) == 1:
                        preds = json.loads(body)[expect]
                        if len(preds) != 1 or ("label" if expect == "predictions" else "words") not in preds[0]:
                            raise SystemExit(f"unexpected response body: {body[:300]!r}")
                else:
                    code = str(status) if status != 200 else "200-bad-body"
                    statuses[code] = statuses.get(code, 0) + 1
                    if len(failures) < 5:
                        failures.append(f"{code}: {body[:200].decode('utf-8', 'replace')}")

        t_start = time.perf_counter()
        await asyncio.gather(*(caller(c) for c in conns))
        elapsed = (last["t"] or time.perf_counter()) - t_start
        return {"issued": issued["n"], "latencies": latencies, "errors": statuses, "failures": failures,
                "elapsed": elapsed, "hit_time_limit": issued["n"] < total}

    # warm-up: opens the connections, lets the server's pools and caches settle (not measured)
    warm = await phase(spec["warmup"] or max(10, 2 * concurrency), spec["seconds"], check_first=True)
    batches_before = _scrape_batches(spec["base_url"], spec["model"]) if spec["scrape_metrics"] else None
    cpu_client0, cpu_server0 = time.process_time(), proc_cpu_seconds(spec.get("server_pid"))
    machine0 = machine_cpu()
    wall0 = time.perf_counter()
    res = await phase(spec["requests"], spec["seconds"], check_first=False)
    wall = time.perf_counter() - wall0
    cpu_client, cpu_server = time.process_time() - cpu_client0, proc_cpu_seconds(spec.get("server_pid"))
    machine1 = machine_cpu()
    batches_after = _scrape_batches(spec["base_url"], spec["model"]) if spec["scrape_metrics"] else None
    for c in conns:
        c.close()

    lat = sorted(x * 1000 for x in res["latencies"])
    ok = len(lat)
    out = {
        "concurrency": concurrency,
        "requests": res["issued"],
        "ok": ok,
        "errors": res["errors"],
        "stopped_by": "time" if res["hit_time_limit"] else "requests",
        "elapsed_s": round(res["elapsed"], 3),
        "requests_per_s": round(ok / res["elapsed"], 2) if res["elapsed"] > 0 else None,
        "latency_ms": {"mean": round(sum(lat) / ok, 2) if ok else None,
                       **{f"p{q}": round(percentile(lat, q), 2) if ok else None for q in (50, 95, 99)},
                       "max": round(lat[-1], 2) if ok else None},
        "client_cpu_pct": round(100 * cpu_client / wall, 1),
        "client_cpu_ms_per_request": round(1000 * cpu_client / res["issued"], 3) if res["issued"] else None,
        "server_cpu_pct": (round(100 * (cpu_server - cpu_server0) / wall, 1)
                           if cpu_server is not None and cpu_server0 is not None else None),
        "server_cpu_ms_per_request": (round(1000 * (cpu_server - cpu_server0) / ok, 2)
                                      if ok and cpu_server is not None and cpu_server0 is not None else None),
        # The rest of the machine over the level: CPU used by other processes (100 = one core), and
        # time the hypervisor gave our cores to someone else (steal). Either well above 0: contended.
        "other_cpu_pct": (round(100 * ((machine1[0] - machine0[0]) - cpu_client - (cpu_server - cpu_server0)) / wall, 1)
                          if machine0 and machine1 and cpu_server is not None and cpu_server0 is not None else None),
        "steal_pct": round(100 * (machine1[1] - machine0[1]) / wall, 1) if machine0 and machine1 else None,
        "warmup": {"requests": warm["issued"], "ok": len(warm["latencies"]), "errors": warm["errors"]},
        "connections_opened": sum(c.connects for c in conns),
    }
    if batches_before and batches_after and batches_after[1] > batches_before[1]:
        texts, batches = batches_after[0] - batches_before[0], batches_after[1] - batches_before[1]
        out["batches"] = int(batches)
        out["mean_batch_size"] = round(texts / batches, 2)
    if res["failures"] or warm["failures"]:
        out["failure_samples"] = (warm["failures"] + res["failures"])[:5]
    return out


def load_worker(spec: dict) -> dict:
    import asyncio

    try:
        import uvloop

        runner = uvloop.run
        loop_name = "uvloop"
    except ImportError:
        runner, loop_name = asyncio.run, "asyncio"
    levels = []
    for c in spec["levels"]:
        res = runner(_run_level(spec, c))
        eprint(f"  [{spec['server']}] c={c:>3}: {res['requests_per_s']} req/s, p50 {res['latency_ms']['p50']} ms, "
               f"p99 {res['latency_ms']['p99']} ms, ok {res['ok']}/{res['requests']}, errors {res['errors'] or 0}, "
               f"client cpu {res['client_cpu_pct']}%, server cpu {res['server_cpu_pct']}%, "
               f"other cpu {res['other_cpu_pct']}%, steal {res['steal_pct']}%"
               + (f", mean batch {res['mean_batch_size']}" if "mean_batch_size" in res else ""))
        levels.append(res)
    ok_total = sum(lv["ok"] + lv["warmup"]["ok"] for lv in levels)
    return {"levels": levels, "client_loop": loop_name, "ok_responses_total": ok_total}


# ================================================================================================
# Setup: a short tunery fine-tune (its own process: `serve.py --_worker train SPEC OUT`)
# ================================================================================================
def train_worker(spec: dict) -> dict:
    import contextlib

    from tunery import pipeline
    from tunery.config import config_from_dict

    cfg = config_from_dict(spec["config"], source="bench/serve.py setup config")
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        run_dir = Path(pipeline.train(cfg))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    test = (metrics.get("model") or {}).get("test") or {}
    return {"run_dir": str(run_dir), "wall_s": round(time.perf_counter() - t0, 2),
            "steps": metrics["training"]["steps"], "n_train": metrics["training"]["n_train"],
            "dev_accuracy": round(float(test["accuracy"]), 4) if "accuracy" in test else None}


def run_worker(kind: str, spec: dict, tmp: Path) -> dict:
    from sst2 import run_part

    return run_part(kind, spec, tmp, script=__file__)


def worker(kind: str, spec_file: str, out_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    res = train_worker(spec) if kind == "train" else load_worker(spec)
    Path(out_file).write_text(json.dumps(res))


def make_run(args, tmp: Path, *, backbone: str | None = None) -> dict:
    from sst2 import read_tsv, write_tsv  # bench/ is on sys.path when this file runs as a script

    df = read_tsv(Path(args.data_dir) / "train.tsv")
    df = df.sample(n=args.train_rows, random_state=42).reset_index(drop=True)
    train_file = tmp / f"sst2-train-{args.train_rows}.tsv"
    write_tsv(df, train_file)
    config = {
        "name": "serve-bench", "output_dir": str(tmp / "runs"),
        "data": {"train": str(train_file), "test": str(Path(args.data_dir) / "dev.tsv"),
                 "text_column": "sentence", "label_column": "label"},
        "train": {"max_steps": args.train_steps, "progress": False},
        "evaluate": {"baseline": False},
    }
    if backbone is not None:  # --smoke: the tiny test backbone (else tunery's default, MiniLM)
        config["model"] = {"backbone": backbone}
    eprint(f"[setup] fine-tuning {'the tiny test backbone' if backbone else 'MiniLM'} with tunery on {args.train_rows} SST-2 rows, {args.train_steps} steps ...")
    return run_worker("train", {"config": config}, tmp) | {"rows": args.train_rows, "max_steps": args.train_steps}


# ================================================================================================
# The servers
# ================================================================================================
class Server:
    def __init__(self, kind: str, run_dir: Path, serve_config: Path, tmp: Path) -> None:
        self.kind, self.port = kind, free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"{kind}-server.log"
        if kind.startswith("tunery"):
            self.cmd = [sys.executable, "-m", "tunery", "serve", str(run_dir), "--host", "127.0.0.1",
                        "--port", str(self.port), "--workers", "1", "--config", str(serve_config)]
        else:
            self.cmd = [sys.executable, str(BENCH_DIR / "naive_server.py"), str(run_dir), "--host", "127.0.0.1",
                        "--port", str(self.port)]
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 300) -> float:
        t0 = time.perf_counter()
        self._log = open(self.log_path, "w")
        env = os.environ.copy() | {"PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise SystemExit(f"the {self.kind} server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/readyz", timeout=5) as r:
                    if r.status == 200:
                        return time.perf_counter() - t0
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        self.stop()
        raise SystemExit(f"the {self.kind} server was not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 90) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # uvicorn drains, then tunery's lifespan stops the meter
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                eprint(f"the {self.kind} server did not stop within {timeout:.0f} s; killing it")
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def usage_counts(served_name: str) -> dict:
    """Usage events committed to the store for the benchmark's tenant (the `tunery usage report` query)."""
    from tunery.serve.metering import usage_report
    from tunery.serve.settings import ServeConfig
    from tunery.store import Store

    rows = [r for r in usage_report(Store(), ServeConfig(), tenant=TENANT) if r["model"] == served_name]
    return {"requests": sum(r["requests"] for r in rows), "texts": sum(r["texts"] for r in rows),
            "tokens": sum(r["tokens"] for r in rows)}


def bench_server(kind: str, args, run_dir: Path, serve_config: Path, key: str, texts: list[str],
                 tmp: Path) -> dict:
    served_name = run_dir.name
    server = Server(kind, run_dir, serve_config, tmp)
    result: dict = {"command": "python " + " ".join(server.cmd[1:]), "loadavg_before": loadavg()}
    eprint(f"[{kind}] starting: {' '.join(server.cmd)}")
    result["ready_after_s"] = round(server.start(), 2)
    try:
        spec = {"server": kind, "host": "127.0.0.1", "port": server.port, "base_url": server.base_url,
                "path": f"/v1/models/{served_name}/predict", "model": served_name,
                "key": key if kind.startswith("tunery") else None, "texts": texts, "levels": args.levels,
                "requests": args.requests, "seconds": args.seconds, "warmup": args.warmup,
                "server_pid": server.proc.pid, "scrape_metrics": kind.startswith("tunery")}
        result |= run_worker("load", spec, tmp)
        if kind.startswith("tunery"):
            # Each 200 is sent only after its usage event is committed: count them while the server runs.
            result["usage_events_while_running"] = usage_counts(served_name)
    finally:
        rc = server.stop()
    result["exit_code"] = rc
    result["loadavg_after"] = loadavg()
    if kind.startswith("tunery"):
        result["usage_events_after_stop"] = usage_counts(served_name)
    return result


def compare(base: dict, other: dict, levels: list[int], names: tuple[str, str] = ("naive", "tunery")) -> dict:
    """Per concurrency level: each server's throughput and latency, and `other` over `base` ratios."""
    out = {}
    by_c = lambda r: {lv["concurrency"]: lv for lv in r["levels"]}  # noqa: E731
    n, t = by_c(base), by_c(other)
    x, y = names
    for c in levels:
        a, b = n.get(c), t.get(c)
        if not a or not b or not a["requests_per_s"] or not b["requests_per_s"]:
            continue
        out[str(c)] = {
            f"{x}_requests_per_s": a["requests_per_s"], f"{y}_requests_per_s": b["requests_per_s"],
            "ratio_throughput": round(b["requests_per_s"] / a["requests_per_s"], 3),
            f"{x}_p99_ms": a["latency_ms"]["p99"], f"{y}_p99_ms": b["latency_ms"]["p99"],
            "ratio_p99": round(b["latency_ms"]["p99"] / a["latency_ms"]["p99"], 3),
            f"{x}_p50_ms": a["latency_ms"]["p50"], f"{y}_p50_ms": b["latency_ms"]["p50"],
        }
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default=None,
                    help="concurrency levels, comma-separated (default 1,8,32; 1,2 with --smoke)")
    ap.add_argument("--requests", type=int, default=None,
                    help="measured requests per level and server (default 1500; 6 with --smoke)")
    ap.add_argument("--seconds", type=float, default=None,
                    help="cap on each level's measured time (default 30; 10 with --smoke)")
    ap.add_argument("--warmup", type=int, default=0,
                    help="warm-up requests per level (default: max(10, 2 x concurrency)), not measured")
    ap.add_argument("--max-batch-size", type=int, default=None,
                    help="tunery's batching.max_batch_size (default: tunery's)")
    ap.add_argument("--max-wait-ms", type=float, default=None, help="tunery's batching.max_wait_ms (default: tunery's)")
    ap.add_argument("--inference-batch-size", type=int, default=None,
                    help="tunery's batching.inference_batch_size (default: tunery's)")
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=None,
                    help="tunery's inference precision (default: tunery's; the naive server is always fp32)")
    ap.add_argument("--servers", default="naive,tunery,tunery-int8",
                    help="which servers, in this order (default naive,tunery,tunery-int8: the run compressed to "
                         "dynamic int8 by tunery compress, served by tunery)")
    ap.add_argument("--run", default=None, help="serve this tunery run directory instead of training one")
    ap.add_argument("--train-rows", type=int, default=None,
                    help="SST-2 train rows of the setup fine-tune (default 1000; 32 with --smoke)")
    ap.add_argument("--train-steps", type=int, default=None,
                    help="optimizer steps of the setup fine-tune (default 30; 2 with --smoke)")
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA), help=f"SST-2 directory (default {DEFAULT_DATA})")
    ap.add_argument("--out", default=None,
                    help="JSON file to write (default bench/results/serve-<time>.json; none with --smoke)")
    ap.add_argument("--smoke", action="store_true",
                    help="a check that the benchmark still runs, in seconds: both servers on a run of the tiny "
                         "random test backbone trained on generated SST-2-shaped rows, a few requests per level, "
                         "all in a temporary directory; the figures mean nothing")
    args = ap.parse_args(argv)
    for name, full, smoke in (("levels", "1,8,32", "1,2"), ("requests", 1500, 6), ("seconds", 30.0, 10.0),
                              ("train_rows", 1000, 32), ("train_steps", 30, 2)):
        if getattr(args, name) is None:
            setattr(args, name, smoke if args.smoke else full)
    if args.train_rows < 2 or args.train_steps < 1:
        ap.error("--train-rows must be at least 2 and --train-steps at least 1")
    try:
        args.levels = [int(x) for x in args.levels.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--levels {args.levels!r}: give integers such as 1,8,32")
    if not args.levels or min(args.levels) < 1:
        ap.error("--levels: give at least one concurrency >= 1")
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if not servers or any(s not in SERVERS for s in servers):
        ap.error(f"--servers: choose from {', '.join(SERVERS)}")
    if args.requests < 1 or args.seconds <= 0:
        ap.error("--requests and --seconds must be positive")

    started = time.time()
    out = (Path(args.out) if args.out else None if args.smoke
           else RESULTS / f"serve-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json")
    from sst2 import machine_info, read_tsv

    result: dict = {"benchmark": "serve", "smoke": args.smoke, "started": datetime.now().isoformat(timespec="seconds"),
                    "argv": sys.argv[1:] if argv is None else argv, "machine": machine_info(),
                    "loadavg_start": loadavg(),
                    "settings": {"levels": args.levels, "requests_per_level": args.requests,
                                 "seconds_per_level": args.seconds,
                                 "warmup_per_level": args.warmup or "max(10, 2 x concurrency)",
                                 "texts_per_request": 1, "plan": PLAN}}
    with tempfile.TemporaryDirectory(prefix="tunery-serve-bench-") as tmp_s:
        tmp = Path(tmp_s)
        # A throwaway store: keys and usage go to a fresh SQLite file, never to a configured database.
        os.environ["TUNERY_HOME"] = str(tmp / "home")
        for var in ("TUNERY_DB_URL", "TUNERY_SERVE_CONFIG"):
            os.environ.pop(var, None)

        backbone = None
        if args.smoke:
            from sst2 import smoke_backbone, write_smoke_data

            backbone = smoke_backbone(tmp)
            args.data_dir = str(write_smoke_data(tmp / "data", train_rows=args.train_rows, dev_rows=16))
        if args.run:
            run_dir = Path(args.run).resolve()
            result["run"] = {"run_dir": str(run_dir), "trained_here": False}
        else:
            result["run"] = make_run(args, tmp, backbone=backbone) | {"trained_here": True}
            run_dir = Path(result["run"]["run_dir"])

        batching = {k: v for k, v in (("max_batch_size", args.max_batch_size), ("max_wait_ms", args.max_wait_ms),
                                      ("inference_batch_size", args.inference_batch_size)) if v is not None}
        serve_tree: dict = {"batching": batching}
        if args.precision is not None:
            serve_tree["precision"] = args.precision
        serve_config = tmp / "serve.yaml"
        serve_config.write_text(json.dumps(serve_tree) + "\n")  # JSON is YAML
        from tunery.serve.keys import create_key
        from tunery.serve.settings import load_serve_config
        from tunery.store import Store

        cfg = load_serve_config(serve_config)
        # the serve settings tunery ran with (its defaults where the file leaves them out), plans aside
        result["settings"]["tunery_serve_config"] = {"file": serve_tree} | {
            k: v for k, v in cfg.model_dump(mode="json").items() if k not in ("plans", "currency")}
        if "precision" in result["settings"]["tunery_serve_config"]:
            from tunery.inference import resolve_precision  # what the server's "auto" becomes on this machine

            result["settings"]["tunery_serve_config"]["precision_resolved"] = resolve_precision(cfg.precision)
        plan = cfg.plans.get(PLAN)  # as the app looks a key's plan up
        if plan is None:
            raise SystemExit(f"plan {PLAN!r} is not defined in the serve config; plans: {', '.join(sorted(cfg.plans))}")
        if plan.rate_limit is not None or plan.monthly_quota is not None:
            raise SystemExit(f"plan {PLAN!r} has a rate limit or quota; the benchmark needs one without")
        key, _info = create_key(Store(), tenant=TENANT, plan=PLAN, known_plans=list(cfg.plans))

        dev = read_tsv(Path(args.data_dir) / "dev.tsv")
        texts = dev["sentence"].astype(str).sample(frac=1.0, random_state=42).tolist()
        result["settings"]["texts"] = f"SST-2 dev sentences ({len(texts)}), shuffled (seed 42), cycled"

        if "tunery-int8" in servers:
            from tunery.compress import CompressOptions, compress_run

            t0 = time.perf_counter()
            int8_dir = compress_run(run_dir, CompressOptions(to="int8", max_drop=100.0), name=f"{run_dir.name}-int8",
                                    output_dir=tmp / "int8")
            doc = json.loads((int8_dir / "metrics.json").read_text())["compression"]
            result["int8_run"] = {"run_dir": str(int8_dir), "seconds": round(time.perf_counter() - t0, 1),
                                  **{k: doc[k] for k in ("split", "metric", "original", "compressed", "drop_points",
                                                         "agreement")}}
        for kind in servers:
            served = int8_dir if kind == "tunery-int8" else run_dir
            result[kind] = bench_server(kind, args, served, serve_config, key, texts, tmp)
            time.sleep(0.5 if args.smoke else 2)  # let the stopped server's process go before the next one starts

    if "tunery" in result:
        tu = result["tunery"]
        result["usage_check"] = {
            "ok_responses_seen": tu["ok_responses_total"],
            "usage_events_in_store": tu["usage_events_while_running"]["requests"],
            "usage_texts_in_store": tu["usage_events_while_running"]["texts"],
            "usage_events_after_stop": tu["usage_events_after_stop"]["requests"],
        }
        result["usage_check"]["match"] = (
            result["usage_check"]["ok_responses_seen"] == result["usage_check"]["usage_events_in_store"]
            == result["usage_check"]["usage_events_after_stop"])
    if "tunery" in result and "tunery-int8" in result:
        result["comparison_int8_vs_torch"] = compare(result["tunery"], result["tunery-int8"], args.levels,
                                                     names=("torch", "int8"))
    if "tunery" in result and "naive" in result:
        result["comparison"] = compare(result["naive"], result["tunery"], args.levels)
        top = str(max(args.levels))
        if top in result["comparison"]:
            cmp_top = result["comparison"][top]
            result["target"] = {
                "concurrency": int(top), "throughput_ratio": cmp_top["ratio_throughput"],
                "p99_ratio": cmp_top["ratio_p99"],
                "goal": "tunery >= 3x the naive throughput, p99 no worse (ratio_p99 <= 1)",
                "met": cmp_top["ratio_throughput"] >= 3 and cmp_top["ratio_p99"] <= 1,
            }
    if "usage_check" in result:
        eprint(f"usage check: {result['usage_check']['ok_responses_seen']} 200s seen, "
               f"{result['usage_check']['usage_events_in_store']} usage events in the store: "
               f"{'match' if result['usage_check']['match'] else 'MISMATCH'}")
    if "target" in result:
        t = result["target"]
        eprint(f"at concurrency {t['concurrency']}: tunery/naive throughput {t['throughput_ratio']}x, "
               f"p99 ratio {t['p99_ratio']} (goal >= 3x with p99 ratio <= 1: {'met' if t['met'] else 'not met'})")
    client_cpu = [lv["client_cpu_pct"] for k in SERVERS if k in result for lv in result[k]["levels"]]
    result["client_cpu_pct_max"] = max(client_cpu) if client_cpu else None
    result["loadavg_end"] = loadavg()
    from sst2 import write_result

    return write_result(result, out, started)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--_worker":
        worker(*sys.argv[2:])
    else:
        main()
