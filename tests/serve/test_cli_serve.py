"""The serving commands of the CLI: keys, usage report, and serve's refusals."""

from __future__ import annotations

import json

from tests.integration.helpers import cli


def test_keys_create_prints_the_key_once_and_list_never_shows_it(tmp_path):
    created = cli("keys", "create", "--tenant", "acme", "--plan", "pro", "--models", "sentiment", cwd=tmp_path)
    key = created.stdout.strip()
    assert key.startswith("tny_") and "cannot be shown again" in created.stderr
    listed = cli("keys", "list", "--json", cwd=tmp_path).stdout
    (info,) = json.loads(listed)
    assert info["tenant"] == "acme" and info["models"] == ["sentiment"] and key.split("_", 2)[2] not in listed
    cli("keys", "revoke", info["key_id"], cwd=tmp_path)
    assert json.loads(cli("keys", "list", "--json", cwd=tmp_path).stdout)[0]["revoked_at"]


def test_keys_create_with_an_unknown_plan_names_the_plans(tmp_path):
    proc = cli("keys", "create", "--tenant", "acme", "--plan", "gold", cwd=tmp_path, expect=1)
    assert "plan 'gold' is not defined" in proc.stderr and "enterprise, free, pro" in proc.stderr


def test_keys_create_reads_plans_from_the_serve_config(tmp_path):
    (tmp_path / "serve.yaml").write_text("plans:\n  gold: {price_per_1k_texts: 2}\n")
    cli("keys", "create", "--tenant", "acme", "--plan", "gold", "--config", "serve.yaml", cwd=tmp_path)


def test_usage_report_rejects_a_bad_date(tmp_path):
    proc = cli("usage", "report", "--from", "yesterday", cwd=tmp_path, expect=1)
    assert "--from 'yesterday' is not a date: use YYYY-MM-DD" in proc.stderr


def test_usage_report_on_an_empty_store_says_so(tmp_path):
    proc = cli("usage", "report", cwd=tmp_path)
    assert "0 rows" in proc.stdout


def test_usage_report_shows_explanations_beside_predictions_and_prices_both(tmp_path):
    import csv
    import io
    from datetime import datetime, timezone

    from tunery.store import Store, TenantRow, UsageRow

    (tmp_path / "serve.yaml").write_text("plans:\n  metered: {price_per_1k_texts: 1.0, explain: {price_per_1k: 10.0}}\n")
    now = datetime.now(timezone.utc)
    with Store().transaction() as s:
        s.add(TenantRow(name="acme", plan="metered", created_at=now))
        for i, (texts, tokens, explanations, evaluations) in enumerate([(3, 30, 0, 0), (0, 0, 2, 106), (0, 0, 1, 53)]):
            s.add(UsageRow(created_at=now, tenant="acme", key_id="k", model="m", model_ref="m@1", texts=texts,
                           tokens=tokens, latency_ms=1.0, request_id=f"r{i}", explanations=explanations,
                           evaluations=evaluations))
    (row,) = csv.DictReader(io.StringIO(cli("usage", "report", "--csv", "--config", "serve.yaml", cwd=tmp_path).stdout))
    assert {k: row[k] for k in ("requests", "texts", "tokens", "explain_requests", "explanations", "evaluations")} == {
        "requests": "1", "texts": "3", "tokens": "30", "explain_requests": "2", "explanations": "3", "evaluations": "159"}
    assert float(row["cost"]) == 3 * 1.0 / 1000 + 3 * 10.0 / 1000
    shown = cli("usage", "report", "--config", "serve.yaml", cwd=tmp_path).stdout
    assert "2 explain requests, 3 explanations" in shown


def test_serve_an_unknown_model_fails_with_the_reason(tmp_path):
    proc = cli("serve", "nosuchmodel", cwd=tmp_path, expect=1)
    assert "nosuchmodel" in proc.stderr and "not registered" in proc.stderr


def test_serve_refuses_two_models_under_one_name(tiny_run, tmp_path):
    proc = cli("serve", f"a={tiny_run}", f"a={tiny_run}", cwd=tmp_path, expect=1)
    assert "two models would be served as 'a'" in proc.stderr and "NAME=REF" in proc.stderr


def test_serve_with_a_bad_config_fails_before_starting(tiny_run, tmp_path):
    (tmp_path / "serve.yaml").write_text("batching: {max_batch: 8}\n")
    proc = cli("serve", str(tiny_run), "--config", "serve.yaml", cwd=tmp_path, expect=1)
    assert "batching.max_batch" in proc.stderr
