"""frame_totals, attempt_totals: running totals for /metrics, from the rows so far

Revision ID: 0015
Revises: 0014
Created: 2026-11-30 12:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from scheduler.core.buckets import ENERGY_JOULES_BUCKETS, RENDER_SECONDS_BUCKETS
from scheduler.core.rollups import SUMS, bucket

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "frame_totals",
        sa.Column("pool", sa.String(length=64), nullable=False),
        sa.Column("region", sa.String(length=64), nullable=False),
        sa.Column("method", sa.String(length=32), nullable=False),
        sa.Column("measure", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("pool", "region", "method", "measure"),
    )
    # The totals of the frames already rendered, as scheduler/core/rollups.py counts them.
    measures = {
        "frames": "COUNT(*)",
        "metered": "COUNT(it_joules)",
        **{name: f"SUM(COALESCE({name}, 0))" for name in SUMS},
        **{
            bucket("render_seconds", b): f"SUM(CASE WHEN render_seconds <= {b!r} THEN 1 ELSE 0 END)"
            for b in RENDER_SECONDS_BUCKETS
        },
        **{
            bucket("it_joules", b): f"SUM(CASE WHEN it_joules <= {b!r} THEN 1 ELSE 0 END)"
            for b in ENERGY_JOULES_BUCKETS
        },
    }
    for measure, total in measures.items():
        op.execute(
            sa.text(
                "INSERT INTO frame_totals (pool, region, method, measure, value) "
                f"SELECT pool, region, COALESCE(energy_method, ''), :measure, {total} "
                "FROM frame_results GROUP BY pool, region, COALESCE(energy_method, '')"
            ).bindparams(measure=measure)
        )
    op.execute("DELETE FROM frame_totals WHERE value = 0")

    op.create_table(
        "attempt_totals",
        sa.Column("pool", sa.String(length=64), nullable=False),
        sa.Column("measure", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("pool", "measure"),
    )
    joules = "THEN COALESCE(energy_joules, 0) ELSE 0 END)"
    ended = {
        "ended": "COUNT(*)",
        "failed": "SUM(CASE WHEN state = 'failed' THEN 1 ELSE 0 END)",
        "joules_failed": f"SUM(CASE WHEN state = 'failed' {joules}",
        "joules_done": f"SUM(CASE WHEN state = 'done' {joules}",
    }
    for measure, total in ended.items():
        op.execute(
            sa.text(
                "INSERT INTO attempt_totals (pool, measure, value) "
                f"SELECT pool, :measure, {total} FROM attempts "
                "WHERE state IN ('done', 'failed') GROUP BY pool"
            ).bindparams(measure=measure)
        )
    op.execute("DELETE FROM attempt_totals WHERE value = 0")


def downgrade() -> None:
    op.drop_table("attempt_totals")
    op.drop_table("frame_totals")
