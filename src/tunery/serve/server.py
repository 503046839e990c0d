"""``tunery serve``: resolve what to serve, then run uvicorn (one process or several workers)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tunery.errors import RunError
from tunery.refs import find_run
from tunery.rundir import is_complete

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    name: str  # the name in URLs and key scopes
    path: str  # the run directory
    ref: str  # what usage records: name@version for registry models, else the run directory


def resolve_models(specs: list[str]) -> list[ModelSpec]:
    """``sentiment``, ``sentiment@2``, ``sentiment:prod``, a run directory or run name, each
    optionally as ``served-name=...``. Registry refs are pinned to a version here, so every
    worker serves the same one."""
    from tunery.store import Store, check_name

    if not specs:
        raise RunError("give at least one model to serve: a registry name (sentiment, sentiment@2, "
                       "sentiment:prod) or a run directory")
    store = Store()
    out: dict[str, ModelSpec] = {}
    for spec in specs:
        served, sep, target = spec.partition("=")
        if not sep:
            served, target = "", spec
        spec_out = _resolve_one(target, served, store)
        check_name(spec_out.name, "served model name")
        if spec_out.name in out:
            raise RunError(f"two models would be served as {spec_out.name!r} ({out[spec_out.name].ref} and "
                           f"{spec_out.ref}); name them: NAME=REF, e.g. stable=sentiment@1 canary=sentiment@2")
        out[spec_out.name] = spec_out
    return list(out.values())


def _resolve_one(target: str, served: str, store) -> ModelSpec:
    path = Path(target)
    if not is_complete(path) and "/" not in target and not path.exists():
        try:  # a registry ref: record name@version, not the alias, in usage
            version = store.resolve_model(target)
            return ModelSpec(served or version.name, str(find_run(version.run_path)), version.ref)
        except RunError:
            pass  # perhaps a run name: find_run below says why if it is not that either
    run = find_run(target)
    return ModelSpec(served or run.name, str(run), str(run))


def run_server(models: list[ModelSpec], *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
               config_path: str | None = None, access_log: bool = False, log_level: str = "info") -> None:
    import uvicorn

    from tunery.serve.app import ENV_SPEC, app_from_env
    from tunery.serve.protocol import protocol_for
    from tunery.serve.settings import load_serve_config

    serve_config = load_serve_config(config_path)  # fail here, with the message, not in every worker
    if config_path is not None:
        config_path = str(Path(config_path).resolve())
    os.environ[ENV_SPEC] = json.dumps({
        "models": [m.__dict__ for m in models], "config": config_path, "workers": workers})
    # h11 with our limits, not httptools: see tunery.serve.protocol for why. No WebSocket upgrades
    # (nothing here speaks WebSocket; an upgraded connection would leave these limits behind).
    common = dict(host=host, port=port, access_log=access_log, log_level=log_level,
                  timeout_graceful_shutdown=60, proxy_headers=False, http=protocol_for(serve_config), ws="none",
                  h11_max_incomplete_event_size=serve_config.limits.max_header_bytes,
                  timeout_keep_alive=serve_config.connections.keep_alive_seconds)
    if workers > 1:
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="tunery-prometheus-")
        uvicorn.run("tunery.serve.app:app_from_env", factory=True, workers=workers, **common)
    else:
        uvicorn.run(app_from_env(), **common)
