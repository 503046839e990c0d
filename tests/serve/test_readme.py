"""The README's serving examples, run as written against a real server (host and port swapped)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.serve.conftest import new_key, start_server


def readme_example(name: str) -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"<!-- example: {name} -->\n```(?:bash|python)\n(.*?)```", text, re.S)
    assert match, f"README has no example {name!r}"
    return match.group(1)


def with_cli(env: dict) -> dict:
    """The environment with this interpreter's `tunery` first on PATH (the venv need not be active)."""
    return {**env, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{env.get('PATH', '')}"}


@pytest.fixture(scope="module")
def readme_server(tiny_run, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("readme")
    db_url = f"sqlite:///{tmp / 'serve.db'}"
    env = {**os.environ, "TUNERY_DB_URL": db_url}
    subprocess.run([sys.executable, "-m", "tunery", "models", "register", str(tiny_run), "--name", "sentiment",
                    "--alias", "prod"], env=env, check=True, capture_output=True)
    server = start_server(["sentiment:prod"], cwd=tmp, db_url=db_url)
    server.key = new_key(server, "acme")
    yield server
    server.stop()


def run_example(server, name: str, runner: list[str]) -> str:
    code = readme_example(name).replace("http://127.0.0.1:8000", server.url)
    env = {**with_cli(server.env), "TUNERY_KEY": server.key}
    proc = subprocess.run([*runner, code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_curl_example_predicts_and_bills_an_idempotent_retry_once(readme_server):
    first = json.loads(run_example(readme_server, "curl", ["bash", "-c"]))
    again = json.loads(run_example(readme_server, "curl", ["bash", "-c"]))
    assert first == again
    assert first["model"] == "sentiment" and first["model_ref"] == "sentiment@1"
    assert [set(p) for p in first["predictions"]] == [{"label", "score", "probabilities"}] * 2


def test_python_example_prints_predictions_and_usage(readme_server):
    out = run_example(readme_server, "python", [sys.executable, "-c"])
    predictions, totals = out.strip().splitlines()
    assert "'label'" in predictions and "'requests'" in totals and "'cost'" in totals


def test_usage_example_reports_csv_per_day(readme_server):
    run_example(readme_server, "curl", ["bash", "-c"])
    code = readme_example("usage").splitlines()[0].split("#")[0]
    env = with_cli(readme_server.env)
    proc = subprocess.run(["bash", "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    header, *rows = proc.stdout.strip().splitlines()
    assert header == ("tenant,day,model,model_ref,plan,requests,texts,tokens,explain_requests,explanations,"
                      "evaluations,cost,currency")
    assert rows and all(r.startswith("acme,") for r in rows)
