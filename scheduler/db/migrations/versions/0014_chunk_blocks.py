"""chunks: a row may stand for a block of a job's chunks not cut yet; frame lookups by seek

Revision ID: 0014
Revises: 0013
Created: 2026-11-30 12:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Every existing row is one chunk, as it was.
    with op.batch_alter_table("chunks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("chunks", sa.Integer(), nullable=False, server_default="1"))
    op.create_index("ix_chunks_job_first_frame", "chunks", ["job_id", "first_frame"])


def downgrade() -> None:
    op.drop_index("ix_chunks_job_first_frame", table_name="chunks")
    with op.batch_alter_table("chunks", schema=None) as batch_op:
        batch_op.drop_column("chunks")
