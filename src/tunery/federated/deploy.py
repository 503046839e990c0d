"""Real Flower processes for `tunery federate`: one SuperLink, one SuperNode per client, `flwr run`.

Flower's Deployment Engine (flwr 1.32.1: its CLI changes often, so the version is pinned in the
`federated` extra):
- `flower-superlink` serves the Fleet API (clients connect), the Control API (`flwr run`) and the
  ServerAppIo API; it spawns the ServerApp process (`flwr-serverapp`, by name on PATH);
- `flower-supernode` runs on a data owner's machine with `--node-config` naming its data file; it
  spawns the ClientApp process that reads it;
- `flwr run APP CONNECTION` submits the app folder (a FAB of at most 10 MB), so the app is a small
  folder this module writes (pyproject.toml + two one-line modules importing tunery.federated.app),
  not the repository. The connection lives in `$FLWR_HOME/config.toml`, written here under a
  private FLWR_HOME.
Everything binds to the addresses given (127.0.0.1 for a local federation: Flower's defaults bind
every interface). Runtime dependency installation is off: the app imports the installed tunery.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tunery.errors import TuneryError

APP_PACKAGE = "tunery_federated_app"


def flower_bin(name: str) -> str:
    """A Flower executable of this interpreter's environment (the one tunery is installed in)."""
    path = Path(sys.executable).parent / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        raise TuneryError(f"{name} not found: federated training needs Flower; pip install 'tunery[federated]'")
    return found


def flower_env(home: Path, threads: int | None = None) -> dict[str, str]:
    """The environment of a Flower process: its own FLWR_HOME, this environment's bin first on PATH
    (the daemons spawn flower-superexec, flwr-serverapp and flwr-clientapp by name)."""
    env = {**os.environ, "FLWR_HOME": str(home), "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
           f"{os.environ.get('PATH', '')}", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def write_app(folder: Path, run_config: dict[str, str]) -> Path:
    """The Flower app folder: pyproject.toml with the run's config, the two component modules."""
    import tomli_w

    pkg = folder / APP_PACKAGE
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text('"""tunery\'s Flower app (written by tunery federate)."""\n', encoding="utf-8")
    for part in ("server", "client"):  # Flower checks the module's source for an `app =` assignment
        (pkg / f"{part}_app.py").write_text(f"from tunery.federated.app import {part}_app\n\napp = {part}_app\n",
                                            encoding="utf-8")
    project = {"build-system": {"requires": ["setuptools>=68"], "build-backend": "setuptools.build_meta"},
               "project": {"name": "tunery-federated", "version": "1.0.0", "description": "tunery federate",
                           "license": "Apache-2.0", "dependencies": []},
               "tool": {"flwr": {"app": {"publisher": "tunery",
                                         "components": {"serverapp": f"{APP_PACKAGE}.server_app:app",
                                                        "clientapp": f"{APP_PACKAGE}.client_app:app"},
                                         "config": run_config}}}}
    (folder / "pyproject.toml").write_text(tomli_w.dumps(project), encoding="utf-8")
    return folder


def node_config(data_path: str, name: str, partition: int, fault: str | None = None) -> str:
    """`--node-config` of a client: TOML values, strings double-quoted."""
    items = {"data-path": str(Path(data_path).resolve()), "name": name, "partition-id": partition}
    if fault:
        items["fault"] = fault
    return " ".join(f"{k}={json.dumps(v)}" for k, v in items.items())


def _spawn(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:  # each daemon in its own process group: stopping it stops its children
        return subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def start_superlink(home: Path, *, host: str, fleet: int, control: int, serverappio: int, log: Path,
                    fleet_host: str | None = None, env: dict | None = None) -> subprocess.Popen:
    home.mkdir(parents=True, exist_ok=True)
    return _spawn([flower_bin("flower-superlink"), "--insecure", "--fleet-api-address",
                   f"{fleet_host or host}:{fleet}",
                   "--control-api-address", f"{host}:{control}", "--serverappio-api-address",
                   f"{host}:{serverappio}", "--disable-runtime-dependency-installation"],
                  env or flower_env(home), log)


def start_supernode(home: Path, *, superlink: str, clientappio: str, config: str, log: Path, threads: int | None = None
                    ) -> subprocess.Popen:
    home.mkdir(parents=True, exist_ok=True)
    return _spawn([flower_bin("flower-supernode"), "--insecure", "--superlink", superlink,
                   "--clientappio-api-address", clientappio, "--node-config", config],
                  flower_env(home, threads), log)


def stop(proc: subprocess.Popen, timeout: float = 10) -> None:
    """Stop a daemon and its process group (flower-superexec and the apps it spawned)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


def write_connection(home: Path, control: str) -> str:
    """The Flower configuration naming the SuperLink's Control API; returns the connection name."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(f'[superlink]\ndefault = "tunery"\n\n[superlink.tunery]\n'
                                      f'address = "{control}"\ninsecure = true\n', encoding="utf-8")
    return "tunery"


def submit(app: Path, home: Path, connection: str) -> int:
    """`flwr run APP CONNECTION`; returns the run id."""
    proc = subprocess.run([flower_bin("flwr"), "run", str(app), connection, "--format", "json"], env=flower_env(home),
                          capture_output=True, text=True, timeout=120)
    try:
        out = json.loads(proc.stdout[proc.stdout.find("{"):])
    except ValueError:
        out = {}
    if proc.returncode != 0 or not out.get("success", True) or "run-id" not in out:
        raise TuneryError(f"flwr run failed (exit {proc.returncode}): {(proc.stdout + proc.stderr)[-2000:]}")
    return int(out["run-id"])


def run_status(home: Path, connection: str, run_id: int) -> dict:
    """The run's record from `flwr ls --run-id` (status: pending, starting, running, finished:...)."""
    proc = subprocess.run([flower_bin("flwr"), "ls", connection, "--run-id", str(run_id), "--format", "json"],
                          env=flower_env(home), capture_output=True, text=True, timeout=60)
    try:
        out = json.loads(proc.stdout[proc.stdout.find("{"):])
        return out["runs"][0]
    except (ValueError, KeyError, IndexError):
        return {"status": "unknown", "status-details": (proc.stdout + proc.stderr)[-500:]}


def wait_for_run(home: Path, connection: str, run_id: int, *, timeout: float, poll: float = 2.0,
                 alive=lambda: True) -> dict:
    deadline = time.time() + timeout
    status: dict = {}
    while time.time() < deadline:
        status = run_status(home, connection, run_id)
        if str(status.get("status", "")).startswith("finished"):
            return status
        if not alive():
            raise TuneryError("the SuperLink stopped before the run finished; see its log")
        time.sleep(poll)
    raise TuneryError(f"the federated run did not finish within {timeout:.0f} s (last status: "
                      f"{status.get('status')}); raise federated.round_timeout or check the clients' logs")


@dataclass
class LocalFederation:
    """A SuperLink and one SuperNode per client file on 127.0.0.1, for `tunery federate CONFIG`."""

    folder: Path
    clients: list[tuple[str, str]]  # (name, data file)
    faults: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    threads: int | None = None
    superlink: subprocess.Popen | None = None
    nodes: dict[str, subprocess.Popen] = field(default_factory=dict)
    connection: str = "tunery"
    control: str = ""
    fleet: str | None = None  # HOST:PORT clients connect to; default a free port on `host`

    def start(self) -> LocalFederation:
        """Start the SuperLink (its Control and ServerAppIo APIs on `host` only) and a SuperNode per
        client; with `fleet` set and no clients, a SuperLink that clients on other machines join."""
        control, serverappio, fleet_port, *node_ports = free_ports(3 + len(self.clients), self.host)
        fleet_host = self.host
        if self.fleet:
            fleet_host, _, port = self.fleet.rpartition(":")
            fleet_host, fleet_port = fleet_host or "0.0.0.0", int(port)
        home = self.folder / "superlink"
        self.control = f"{self.host}:{control}"
        self.superlink = start_superlink(home, host=self.host, fleet=fleet_port, control=control,
                                         serverappio=serverappio, fleet_host=fleet_host,
                                         log=self.folder / "logs" / "superlink.log")
        self.connection = write_connection(home, self.control)
        _wait_port(self.host, control, self.superlink)
        fleet = fleet_port
        for i, ((name, path), port) in enumerate(zip(self.clients, node_ports)):
            self.nodes[name] = start_supernode(
                self.folder / f"node-{i}", superlink=f"{self.host}:{fleet}", clientappio=f"{self.host}:{port}",
                config=node_config(path, name, i, self.faults.get(name)), log=self.folder / "logs" / f"{name}.log",
                threads=self.threads)
        return self

    def run(self, app: Path, timeout: float) -> dict:
        home = self.folder / "superlink"
        run_id = submit(app, home, self.connection)
        return wait_for_run(home, self.connection, run_id, timeout=timeout,
                            alive=lambda: self.superlink is not None and self.superlink.poll() is None)

    def close(self) -> None:
        for proc in self.nodes.values():
            stop(proc)
        if self.superlink is not None:
            stop(self.superlink)


def _wait_port(host: str, port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise TuneryError(f"the Flower SuperLink exited with {proc.returncode} at start; see its log")
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.3)
    raise TuneryError(f"the Flower SuperLink did not open {host}:{port} within {timeout:.0f} s")
