"""Chunks several to a message: nodes.bundle and attempts.message

``nodes.bundle``: how many chunks one Celery message may carry to the node. A node of
this version takes several in one message (``renderfarm.render_chunks``) and says how
many in its heartbeat; a node of an older renderfarm says nothing and keeps 1, so the
scheduler sends it one chunk a message, as it understands.

``attempts.message``: the Celery task id of the bundle that carried the attempt (NULL:
it went alone, as ``chunk-<id>-attempt-<n>``), so that the scheduler, this one or the
one that takes over from it, revokes a bundle once none of its attempts is wanted.

Revision ID: 0025
Revises: 0024
Created: 2026-12-01 12:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("bundle", sa.Integer(), nullable=False, server_default="1"))
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("message", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.drop_column("message")
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.drop_column("bundle")
