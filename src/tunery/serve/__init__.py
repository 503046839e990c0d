"""Serving: a metered, multi-tenant HTTP API over run directories (``tunery serve``).

app.py (create_app), auth.py (keys in requests, rate limits), keys.py (API keys and tenants),
metering.py (usage, quotas, idempotency), batching.py (dynamic batching), settings.py (plans and
limits), metrics.py (Prometheus), server.py (uvicorn). FastAPI and uvicorn load only here.
"""
