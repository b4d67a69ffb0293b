"""studio_blobs: a claim is stored only once its content is in the storage

Revision ID: 0011
Revises: 0010
Created: 2026-11-30 10:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Claims made before this revision were made after their content was stored.
    with op.batch_alter_table("studio_blobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("stored", sa.Boolean(), nullable=False, server_default=sa.true())
        )


def downgrade() -> None:
    with op.batch_alter_table("studio_blobs", schema=None) as batch_op:
        batch_op.drop_column("stored")
