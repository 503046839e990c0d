"""Alembic's entry point for tunery's migrations. They run through `tunery.store.migrate`
(``tunery db upgrade``, or a Store at first use), which passes an open connection inside a
transaction: no alembic.ini, no URL here."""

from alembic import context

from tunery.store import Base
from tunery.store.migrate import VERSION_TABLE

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "tunery's migrations run through tunery.store.migrate (`tunery db upgrade`), which passes the "
        "database connection; the alembic command line is not set up for them"
    )
context.configure(
    connection=connection,
    target_metadata=Base.metadata,  # for autogenerate: the models are the schema at head
    version_table=VERSION_TABLE,
    render_as_batch=True,  # SQLite alters a table by copying it: write revisions with batch_alter_table
)
with context.begin_transaction():
    context.run_migrations()
