"""A production's metadata on jobs (jobs.show, sequence, shot, artist): what a studio's
pipeline tracks a job by, listed and filtered by, never interpreted by the farm.

Revision ID: 0020
Revises: 0019
Created: 2026-11-30 21:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

FIELDS = ("show", "sequence", "shot", "artist")


def upgrade() -> None:
    for name in FIELDS:  # in place: other tables refer to jobs
        op.add_column("jobs", sa.Column(name, sa.String(length=100), nullable=True))
    op.create_index("ix_jobs_studio_show", "jobs", ["studio_id", "show"])


def downgrade() -> None:
    op.drop_index("ix_jobs_studio_show", table_name="jobs")
    for name in reversed(FIELDS):
        op.execute(f"ALTER TABLE jobs DROP COLUMN {name}")
