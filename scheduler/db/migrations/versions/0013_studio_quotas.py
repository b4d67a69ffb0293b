"""studios: an operator's bounds on queued jobs, queued frames and requests per second

Revision ID: 0013
Revises: 0012
Created: 2026-11-30 11:05:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

COLUMNS = ("max_queued_jobs", "max_queued_frames", "requests_per_second")


def upgrade() -> None:
    # Existing studios are unbounded, as they were.
    with op.batch_alter_table("studios", schema=None) as batch_op:
        for name in COLUMNS:
            batch_op.add_column(sa.Column(name, sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("studios", schema=None) as batch_op:
        for name in COLUMNS:
            batch_op.drop_column(name)
