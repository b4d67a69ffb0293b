"""Placement by cost and carbon: a region's signals over the day (regions.tariff, a
time-of-use price; regions.carbon_profile, hourly grid carbon; regions.utc_offset_hours,
its local time; regions.forecast from a carbon feed, when it came, and the feed's name
for the region), a job's deadline and placement policy (jobs.deadline, jobs.placement),
the figures each frame was billed with (frame_results.pue, price_per_kwh,
carbon_g_per_kwh), and what it would have cost in its studio's own region at once
(frame_results.baseline_*, studios.home_region).

Revision ID: 0018
Revises: 0017
Created: 2026-11-30 18:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

# Added in place (no batch copies: other tables refer to these), dropped the same way.
COLUMNS: dict[str, list[sa.Column[object]]] = {
    "regions": [
        sa.Column("tariff", sa.JSON(), nullable=True),
        sa.Column("carbon_profile", sa.JSON(), nullable=True),
        sa.Column("utc_offset_hours", sa.Float(), nullable=False, server_default="8"),
        sa.Column("feed_location", sa.String(length=64), nullable=True),
        sa.Column("forecast", sa.JSON(), nullable=True),
        sa.Column("forecast_at", sa.Float(), nullable=True),
    ],
    "jobs": [
        sa.Column("deadline", sa.Float(), nullable=True),
        sa.Column("placement", sa.JSON(), nullable=True),
    ],
    "frame_results": [
        sa.Column("pue", sa.Float(), nullable=True),
        sa.Column("price_per_kwh", sa.Float(), nullable=True),
        sa.Column("carbon_g_per_kwh", sa.Float(), nullable=True),
        sa.Column("baseline_facility_joules", sa.Float(), nullable=True),
        sa.Column("baseline_cost", sa.Float(), nullable=True),
        sa.Column("baseline_co2_grams", sa.Float(), nullable=True),
    ],
    "studios": [sa.Column("home_region", sa.String(length=64), nullable=True)],
}


def upgrade() -> None:
    for table, columns in COLUMNS.items():
        for column in columns:
            op.add_column(table, column)


def downgrade() -> None:
    for table, columns in reversed(list(COLUMNS.items())):
        for column in reversed(columns):
            op.execute(f"ALTER TABLE {table} DROP COLUMN {column.name}")
