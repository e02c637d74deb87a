"""The store's schema revisions: Alembic, with its scripts in versions/ (shipped in the package) and configured here
in code (no alembic.ini), on SQLite and PostgreSQL.

A database's revision is what its `alembic_version` table says. One without that table is *empty* when none of the
store's tables are there (it is created at head: `create_all`, then stamped), or was written by nograd 0.1, which
had no revisions: it counts as the baseline revision when its tables match 0.1's, as head when they match this
release's, and is refused otherwise (`SchemaError` names the differences).

These functions take the tables (`metadata`) from their caller, the store, which stays the one place that
declares them. To change the schema: change the tables in `nograd.service.store`, then add a file to versions/
like the latest one (`revision` a new id, `down_revision` the latest's) whose `upgrade()` brings a database at the
previous revision to the new tables; tests/service/test_migrations.py fails until a database upgraded to head is
the one `create_all` makes.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError

log = logging.getLogger("nograd.store")
# Alembic's INFO lines (its context on every open, each step) say less than the one line `prepare` logs about an
# upgrade; `logging.getLogger("alembic").setLevel(logging.INFO)` brings them back.
logging.getLogger("alembic").setLevel(logging.WARNING)

BASELINE = "0001_v0_1"
# PostgreSQL advisory-lock key (signed 64-bit) held while a database is created or upgraded.
_LOCK_KEY = int.from_bytes(hashlib.sha256(b"nograd-migrations").digest()[:8], "big", signed=True)


class SchemaError(ValueError):
    """The database's schema is not the one this release needs, or not one it knows; the message says what to do.
    A ValueError, so that the command line shows it as its one-line error."""


def head() -> str:
    """The revision this release's store needs."""
    return _scripts().get_current_head()


def baseline() -> sa.MetaData:
    """nograd 0.1's tables (the baseline revision's), what a database without a revision is compared with."""
    tables = sa.MetaData()
    _scripts().get_revision(BASELINE).module.tables(tables)
    return tables


def revision(connection: sa.Connection, metadata: sa.MetaData) -> str | None:
    """The database's schema revision; None for an empty database (none of `metadata`'s tables).

    Raises:
        SchemaError: it has the store's tables but no revision, and they are neither nograd 0.1's nor this
            release's.
    """
    return _state(connection, metadata)[0]


def upgrade(engine: sa.Engine, metadata: sa.MetaData) -> str | None:
    """Bring the database to head in one transaction: an empty one gets `metadata`'s tables, stamped head; one at
    an older revision runs the revisions after it. Several processes may call this at once: each holds the
    database's migration lock (PostgreSQL: an advisory lock; SQLite: the write lock) and the later ones find it
    done. Returns the revision it had (None: it was empty).

    Raises:
        SchemaError: a revision this release does not know (a newer release wrote it), or unknown tables.
    """
    with _locked(engine) as connection:
        before, stamped = _state(connection, metadata)
        if before is None:
            metadata.create_all(connection)
            command.stamp(alembic_config(connection), "head")
            return None
        _check_known(before, engine)
        if not stamped:  # nograd 0.1 wrote no revision
            command.stamp(alembic_config(connection), before)
        if before != head():
            command.upgrade(alembic_config(connection), "head")
        return before


def prepare(engine: sa.Engine, metadata: sa.MetaData, *, auto_upgrade: bool = False) -> None:
    """What opening a store does: an empty database is created at head; one at head is used as it is; one at an
    older revision is upgraded when `auto_upgrade` (and logged), refused otherwise.

    Raises:
        SchemaError: an older revision without `auto_upgrade`, or a schema this release does not know.
    """
    with reading(engine) as connection:
        current, stamped = _state(connection, metadata)
    target = head()
    if current == target and stamped:
        return
    if current not in (None, target):
        _check_known(current, engine)
        if not auto_upgrade:
            raise SchemaError(
                f"the database at {_where(engine)} has schema {current}, this release needs {target}; run "
                "`nograd db upgrade` (or set NOGRAD_DB_AUTO_UPGRADE=true)"
            )
    before = upgrade(engine, metadata)
    if before is None:
        log.info("created the database at %s at schema %s", _where(engine), target)
    elif before != target:  # (not when another process upgraded it meanwhile)
        log.warning("upgraded the database at %s from schema %s to %s", _where(engine), before, target)


def _state(connection: sa.Connection, metadata: sa.MetaData) -> tuple[str | None, bool]:
    """`revision()`, and whether the database says so itself (False: no revision table; empty, or nograd 0.1's)."""
    stamped = MigrationContext.configure(connection).get_current_revision()
    if stamped is not None:
        return stamped, True
    if not set(sa.inspect(connection).get_table_names()) & set(metadata.tables):
        return None, False
    differences = _differences(connection, baseline())
    if not differences:
        return BASELINE, False
    if not _differences(connection, metadata):
        return head(), False
    raise SchemaError(
        f"the database at {_where(connection.engine)} has nograd's tables but no schema revision, and they are "
        f"not those of nograd 0.1 ({'; '.join(differences)}): it was written by a development version; move its "
        "data to a new database by hand"
    )


def _check_known(rev: str, engine: sa.Engine) -> None:
    try:
        _scripts().get_revision(rev)
    except CommandError:
        raise SchemaError(
            f"the database at {_where(engine)} has schema {rev}, which this release does not know (this release "
            f"needs {head()}; a newer one wrote it): run that release, or restore a backup made before it"
        ) from None


def _differences(connection: sa.Connection, metadata: sa.MetaData) -> list[str]:
    """How the database's tables differ from `metadata`'s (tables that are not `metadata`'s are ignored: a
    PostgreSQL database may be shared)."""
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    found = []
    for diff in compare_metadata(context, metadata):
        for op in diff if isinstance(diff, list) else [diff]:  # column changes come in lists
            if op[0] != "remove_table":
                found.append(_describe(op))
    return found


def _describe(op: tuple) -> str:
    kind = op[0]
    if kind in ("add_table", "remove_table"):
        return f"{'missing' if kind == 'add_table' else 'extra'} table {op[1].name}"
    if kind in ("add_column", "remove_column"):
        return f"{'missing' if kind == 'add_column' else 'extra'} column {op[2]}.{op[3].name}"
    if kind in ("add_index", "remove_index"):
        return f"{'missing' if kind == 'add_index' else 'extra'} index {op[1].name}"
    if kind.startswith("modify_"):
        return f"column {op[2]}.{op[3]} differs ({kind[len('modify_') :]})"
    return kind


@contextmanager
def reading(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A read-only transaction that sees the schema as one committed state: a process upgrading the database at
    the same time is either done or not started for it (reading the tables one statement at a time could see
    some of an upgrade: its indexes before its columns, say). SQLite: one snapshot (WAL); PostgreSQL: waits for
    the migration lock, shared."""
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            connection.exec_driver_sql("BEGIN")  # pysqlite would read outside a transaction
        elif engine.dialect.name == "postgresql":
            connection.execute(sa.select(sa.func.pg_advisory_xact_lock_shared(_LOCK_KEY)))
        try:
            yield connection
        finally:
            connection.rollback()


@contextmanager
def _locked(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A transaction that holds the database's migration lock until it commits (or rolls back)."""
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            # pysqlite opens no transaction before DDL; this one takes the write lock now and covers the DDL
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        elif engine.dialect.name == "postgresql":
            connection.execute(sa.select(sa.func.pg_advisory_xact_lock(_LOCK_KEY)))
        try:
            yield connection
        except BaseException:
            connection.rollback()
            raise
        connection.commit()


def alembic_config(connection: sa.Connection) -> Config:
    """Alembic's configuration of these revisions, migrating `connection` (for `alembic.command`'s functions)."""
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    config.attributes["connection"] = connection
    return config


@lru_cache(maxsize=1)
def _scripts() -> ScriptDirectory:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    return ScriptDirectory.from_config(config)


def _where(engine: sa.Engine) -> str:
    return engine.url.render_as_string(hide_password=True)
