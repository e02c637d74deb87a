"""Alembic's environment for the store's revisions. `nograd.service.migrations` runs it programmatically (there is
no alembic.ini) with the connection to migrate in `config.attributes["connection"]`, already inside the
transaction that holds the migration lock; the `alembic` command line cannot run these revisions on its own."""

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("nograd's schema revisions run through `nograd db upgrade` (nograd.service.migrations)")
context.configure(connection=connection)
with context.begin_transaction():  # a no-op inside the caller's transaction, which commits or rolls back all of it
    context.run_migrations()
