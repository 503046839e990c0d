"""Fixtures for the serving tests: tiny trained runs, keys, and a real server (uvicorn on 127.0.0.1)
started with the real `tunery serve` command in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import fast_train, make_dataset
from tests.pg import _free_port as free_port


def _train(tmp: Path, backbone: str, df, *, name: str, text: str, label: str, pair: str | None = None) -> Path:
    from tunery.config import RunConfig
    from tunery.pipeline import train

    data = tmp / f"{name}.csv"
    df.to_csv(data, index=False)
    cfg = RunConfig.model_validate({
        "name": name, "output_dir": str(tmp / "runs"),
        "data": {"train": str(data), "text_column": text, "label_column": label, "text_pair_column": pair},
        "model": {"backbone": backbone}, "train": fast_train(), "evaluate": {"baseline": False},
    })
    return train(cfg)


@pytest.fixture(scope="session")
def tiny_run(tiny_backbone, tmp_path_factory) -> Path:
    """A completed binary sentiment run on the tiny BERT (labels negative/positive)."""
    tmp = tmp_path_factory.mktemp("serve-run")
    return _train(tmp, tiny_backbone, make_dataset("binary"), name="sentiment-tiny", text="review",
                  label="label")


@pytest.fixture(scope="session")
def pair_run(tiny_backbone, tmp_path_factory) -> Path:
    """A completed text-pair run (premise, hypothesis) on the tiny BERT."""
    tmp = tmp_path_factory.mktemp("serve-pair-run")
    df = make_dataset("binary", n=120)
    df["second"] = ["and so on" if i % 2 else "or not" for i in range(len(df))]
    return _train(tmp, tiny_backbone, df, name="pairs-tiny", text="review", label="label", pair="second")


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    env: dict
    log: Path
    db_url: str

    def store(self):
        from tunery.store import Store

        return Store(self.db_url)

    def client(self, key: str, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=60, **kw)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def start_server(models: list[str], *, cwd: Path, config: dict | None = None, workers: int = 1,
                 env: dict | None = None, port: int | None = None, db_url: str | None = None,
                 launcher: list[str] | None = None) -> Server:
    """`tunery serve` in a subprocess, on its own store (``db_url``, default a SQLite file in ``cwd``).
    ``launcher`` replaces ``-m tunery`` (e.g. a script that installs a test hook, then runs the CLI)."""
    port = port or free_port()
    db_url = db_url or f"sqlite:///{cwd / 'serve.db'}"
    args = [sys.executable, *(launcher or ["-m", "tunery"]), "serve", *models, "--port", str(port),
            "--workers", str(workers)]
    if config is not None:
        path = cwd / f"serve-{port}.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        args += ["--config", str(path)]
    full_env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", "TUNERY_DB_URL": db_url, **(env or {})}
    log = cwd / f"server-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, cwd=cwd, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", proc, full_env, log, db_url)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.output()}")
        try:
            if httpx.get(server.url + "/readyz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server not ready in 120 s:\n{server.output()}")


@pytest.fixture
def serve(tmp_path):
    """Start servers with serve([models], ...); all are killed after the test."""
    started: list[Server] = []

    def _start(models, **kw) -> Server:
        kw.setdefault("cwd", tmp_path)
        server = start_server([str(m) for m in models], **kw)
        started.append(server)
        return server

    yield _start
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(10)


def new_key(server: Server, tenant: str = "acme", plan: str | None = "pro", **kw) -> str:
    from tunery.serve.keys import create_key

    store = server.store()
    try:
        return create_key(store, tenant=tenant, plan=plan, **kw)[0]
    finally:
        store.close()


def usage_rows(server: Server, **filters) -> list:
    from sqlalchemy import select

    from tunery.store import UsageRow

    store = server.store()
    try:
        with store.read() as s:
            query = select(UsageRow)
            for k, v in filters.items():
                query = query.where(getattr(UsageRow, k) == v)
            return list(s.scalars(query))
    finally:
        store.close()
