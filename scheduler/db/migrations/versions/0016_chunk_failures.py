"""chunks.failures: a chunk's failed attempts since the last retry, its attempt budget

Attempts that were re-sent (a lost node, a message no node claimed) are superseded,
not failed, and no longer use up the budget.

Revision ID: 0016
Revises: 0015
Created: 2026-11-30 14:50:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("chunks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("failures", sa.Integer(), nullable=False, server_default="0"))
    op.execute(
        "UPDATE chunks SET failures = (SELECT count(*) FROM attempts"
        " WHERE attempts.chunk_id = chunks.id AND attempts.state = 'failed'"
        " AND attempts.number > chunks.retry_base)"
    )


def downgrade() -> None:
    # Not batch mode: on SQLite it copies the table and drops the old one, which the
    # foreign keys of attempts and frame results refuse. SQLite >= 3.35 drops a column.
    op.execute("ALTER TABLE chunks DROP COLUMN failures")
