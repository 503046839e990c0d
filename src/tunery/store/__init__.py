"""The record store: runs, the model registry, and tunery serve's tenants, keys and usage, in one
database reached by URL: ``sqlite:///<TUNERY_HOME>/tunery.db`` by default, any SQLAlchemy URL
(PostgreSQL) through ``TUNERY_DB_URL`` or ``Store(url)``. Callers get plain frozen dataclasses,
never live ORM rows; code that works on the tables directly (the server's metering and keys) does
it in ``store.transaction()`` / ``store.read()``.

Parts: ``home`` (where the database is), ``engine`` (the engine for a URL), ``db`` (connecting,
transactions), ``migrate`` and ``migrations/`` (Alembic revisions; ``tunery db upgrade``), ``base``
(the declarative Base and shared types), ``runs``, ``models`` (the registry), ``serving`` (serve's
tables).
"""

from __future__ import annotations

from tunery.store.base import MODEL_NAME_RULE, Base, UTCDateTime, check_name, did_you_mean
from tunery.store.db import Database
from tunery.store.engine import SQLITE_BUSY_TIMEOUT_MS
from tunery.store.home import default_db_url, tunery_home, user_home
from tunery.store.migrate import SchemaError
from tunery.store.models import REF_FORMS, ModelAliasRow, ModelRegistry, ModelVersion, ModelVersionRow
from tunery.store.runs import FINAL_STATUSES, RUN_STATUSES, RunRecord, RunRow, RunStatus, RunStore
from tunery.store.serving import ApiKeyRow, IdempotencyRow, QuotaCounterRow, TenantRow, UsageRow

__all__ = [
    "FINAL_STATUSES", "MODEL_NAME_RULE", "REF_FORMS", "RUN_STATUSES", "SQLITE_BUSY_TIMEOUT_MS",
    "ApiKeyRow", "Base", "Database", "IdempotencyRow", "ModelAliasRow", "ModelVersion", "ModelVersionRow",
    "QuotaCounterRow", "RunRecord", "RunRow", "RunStatus", "SchemaError", "Store", "TenantRow", "UTCDateTime",
    "UsageRow", "check_name", "default_db_url", "did_you_mean", "tunery_home", "user_home",
]


class Store(RunStore, ModelRegistry):
    """Runs and model versions (and serve's tables) in one database. Cheap to construct; connects
    on first use, where it creates a new database or checks that an existing one is at this
    code's schema revision (else a SchemaError says to run ``tunery db upgrade``).

    Safe to share between threads; several processes may use one database.
    """
