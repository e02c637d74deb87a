"""The store of nograd 0.1 (the release before revisions: its databases carry none).

A database with the store's tables and no revision is taken to be at this one when its tables match `tables()`
(`nograd.service.migrations.revision`). Never edit this file: later changes are later revisions.

Revision ID: 0001_v0_1
Revises: (none)
"""

import sqlalchemy as sa
from alembic import op

revision = "0001_v0_1"
down_revision = None
branch_labels = None
depends_on = None


def tables(metadata: sa.MetaData) -> None:
    """The tables of nograd 0.1's store, added to `metadata`."""
    sa.Table(
        "jobs",
        metadata,
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant", sa.String(100), nullable=False, index=True),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("task", sa.String(200), nullable=False),
        sa.Column("dataset_id", sa.String(40)),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("init_from", sa.String(40)),
        sa.Column("budget", sa.Integer, nullable=False),
        sa.Column("calls", sa.Integer, nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("best_train_loss", sa.Float),
        sa.Column("best_dev_metric", sa.Float),
        sa.Column("test_metric", sa.Float),
        sa.Column("result", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("message", sa.Text),
        sa.Column("checkpoint", sa.Text),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("lease_owner", sa.String(100)),
        sa.Column("lease_until", sa.Float, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float),
        sa.Column("finished_at", sa.Float),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("takeovers", sa.Integer, nullable=False, server_default="0"),
        sa.Column("phase", sa.Text),
    )
    sa.Table(
        "history",
        metadata,
        sa.Column("job_id", sa.String(40), primary_key=True),
        sa.Column("generation", sa.Integer, primary_key=True),
        sa.Column("entry", sa.Text, nullable=False),
    )
    sa.Table(
        "datasets",
        metadata,
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant", sa.String(100), nullable=False, index=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("filename", sa.String(200), nullable=False),
        sa.Column("options", sa.Text, nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("content", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("test_filename", sa.String(200)),
        sa.Column("test_content", sa.LargeBinary),
    )
    sa.Table(
        "artifacts",
        metadata,
        sa.Column("job_id", sa.String(40), primary_key=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    sa.Table(
        "analyses",
        metadata,
        sa.Column("job_id", sa.String(40), primary_key=True),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    sa.Table(
        "api_keys",
        metadata,
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant", sa.String(100), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("name", sa.String(100)),
        sa.Column("expires_at", sa.Float),
        sa.Column("revoked_at", sa.Float),
    )
    sa.Table(
        "secrets",
        metadata,
        sa.Column("tenant", sa.String(100), primary_key=True),
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("ciphertext", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )


def upgrade() -> None:
    metadata = sa.MetaData()
    tables(metadata)
    metadata.create_all(op.get_bind())


def downgrade() -> None:
    metadata = sa.MetaData()
    tables(metadata)
    metadata.drop_all(op.get_bind())
