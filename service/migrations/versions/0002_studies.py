"""Jobs get a name, tags and the study they belong to; studies (sweeps of jobs) get a table.

Rows written before this revision have no name, tags or study (null; the store reads null tags as none).

Revision ID: 0002_studies
Revises: 0001_v0_1
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_studies"
down_revision = "0001_v0_1"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("name", sa.String(200)))
    op.add_column("jobs", sa.Column("tags", sa.Text))
    op.add_column("jobs", sa.Column("study_id", sa.String(40)))
    op.create_index("ix_jobs_study_id", "jobs", ["study_id"])
    op.create_table(
        "studies",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant", sa.String(100), nullable=False),
        sa.Column("name", sa.String(200)),
        sa.Column("base", sa.Text, nullable=False),
        sa.Column("sweep", sa.Text, nullable=False),
        sa.Column("layout", sa.Text, nullable=False),
        sa.Column("n_jobs", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_studies_tenant", "studies", ["tenant"])


def downgrade() -> None:
    op.drop_index("ix_studies_tenant", "studies")
    op.drop_table("studies")
    op.drop_index("ix_jobs_study_id", "jobs")
    with op.batch_alter_table("jobs") as batch:  # SQLite before 3.35 has no DROP COLUMN: batch copies the table
        for column in ("study_id", "tags", "name"):
            batch.drop_column(column)
