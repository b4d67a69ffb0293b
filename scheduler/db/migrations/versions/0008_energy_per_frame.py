"""energy per frame: each frame's IT and facility energy, cost and CO2; regions

Revision ID: 0008
Revises: 0007
Created: 2026-11-28 12:13:36.593020

Frames rendered before this revision have no energy (the nodes did not meter them);
their studio and billing day are filled in from their job and finish time.
"""

from __future__ import annotations

import datetime as dt
import time
from zoneinfo import ZoneInfo

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# The regions a new farm starts with; scheduler/regions.py says where the figures
# come from, and operators change them with `renderfarm region set`.
SEEDS = [
    ("guizhou", 1.2, 0.35, 536.6),
    ("guizhou-hydro", 1.2, 0.35, 24.0),
]
STUDIO_FK = "fk_frame_results_studio_id_studios"


def upgrade() -> None:
    regions = op.create_table(
        "regions",
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("pue", sa.Float(), nullable=False),
        sa.Column("price_per_kwh", sa.Float(), nullable=False),
        sa.Column("carbon_g_per_kwh", sa.Float(), nullable=False),
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    now = time.time()
    op.bulk_insert(
        regions,
        [
            {
                "name": name,
                "pue": pue,
                "price_per_kwh": price,
                "carbon_g_per_kwh": carbon,
                "source": "default at install; see scheduler/regions.py",
                "updated_at": now,
            }
            for name, pue, price, carbon in SEEDS
        ],
    )
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("energy_joules", sa.Float(), nullable=True))

    with op.batch_alter_table("frame_results", schema=None) as batch_op:
        batch_op.add_column(sa.Column("studio_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("day", sa.Date(), nullable=True))
        batch_op.add_column(
            sa.Column(
                "region",
                sqlmodel.sql.sqltypes.AutoString(length=64),
                nullable=False,
                server_default="",
            )
        )
        batch_op.add_column(
            sa.Column("energy_method", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True)
        )
        batch_op.add_column(sa.Column("it_joules", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("facility_joules", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("cost", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("co2_grams", sa.Float(), nullable=True))
    _fill_studio_and_day()
    with op.batch_alter_table("frame_results", schema=None) as batch_op:
        batch_op.alter_column("studio_id", existing_type=sa.Integer(), nullable=False)
        batch_op.alter_column("day", existing_type=sa.Date(), nullable=False)
        batch_op.create_index("ix_frame_results_studio_day", ["studio_id", "day"], unique=False)
        batch_op.create_foreign_key(STUDIO_FK, "studios", ["studio_id"], ["id"])

    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "region",
                sqlmodel.sql.sqltypes.AutoString(length=64),
                nullable=False,
                server_default="",
            )
        )
        batch_op.add_column(
            sa.Column("energy_method", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True)
        )
        batch_op.add_column(
            sa.Column("power_watts", sa.Float(), nullable=False, server_default="0")
        )


def _fill_studio_and_day() -> None:
    bind = op.get_bind()
    frames = sa.table(
        "frame_results",
        sa.column("id", sa.Integer),
        sa.column("job_id", sa.Integer),
        sa.column("studio_id", sa.Integer),
        sa.column("finished_at", sa.Float),
        sa.column("day", sa.Date),
    )
    jobs = sa.table("jobs", sa.column("id", sa.Integer), sa.column("studio_id", sa.Integer))
    bind.execute(
        frames.update().values(
            studio_id=sa.select(jobs.c.studio_id)
            .where(jobs.c.id == frames.c.job_id)
            .scalar_subquery()
        )
    )
    zone = ZoneInfo("Asia/Shanghai")  # the default billing time zone
    rows = bind.execute(sa.select(frames.c.id, frames.c.finished_at)).all()
    if rows:
        bind.execute(
            frames.update().where(frames.c.id == sa.bindparam("b_id")),
            [
                {"b_id": row_id, "day": dt.datetime.fromtimestamp(at, zone).date()}
                for row_id, at in rows
            ],
        )


def downgrade() -> None:
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.drop_column("power_watts")
        batch_op.drop_column("energy_method")
        batch_op.drop_column("region")

    with op.batch_alter_table("frame_results", schema=None) as batch_op:
        batch_op.drop_constraint(STUDIO_FK, type_="foreignkey")
        batch_op.drop_index("ix_frame_results_studio_day")
        for column in (
            "co2_grams", "cost", "facility_joules", "it_joules", "energy_method", "region",
            "day", "studio_id",
        ):  # fmt: skip
            batch_op.drop_column(column)

    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.drop_column("energy_joules")

    op.drop_table("regions")
