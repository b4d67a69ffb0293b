"""The network between regions (region_links: bandwidth, latency, price per GB, the same
both ways), the size of each frame's output (frame_results.output_bytes: what its trip
back to the studio moves), and the installed defaults with their sources: an east-coast
region near the studios (zhejiang, with its time-of-use tariff) and its link to the
western halls; the older defaults' source text pointed at a file that moved.

Revision ID: 0019
Revises: 0018
Created: 2026-11-30 21:00:00.000000
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

WHERE = "see scheduler/usecases/regions.py"
OLD_SOURCE = "default at install; see scheduler/regions.py"
SOURCES = {
    "guizhou": (
        "default: PUE 1.2, the East Data West Computing cap for western hubs; 0.35 "
        "CNY/kWh, an example large-industry price, flat (Guizhou ended peak-valley "
        "pricing for wholesale-market users in 2026); 536.6 gCO2/kWh, China's national "
        f"average factor (MEE/NBS, 2022): Guizhou's grid mixes coal and hydropower; {WHERE}"
    ),
    "guizhou-hydro": (
        "default: as guizhou, under a hydropower purchase agreement: 24 gCO2/kWh, the "
        f"IPCC AR5 median life-cycle emissions of hydropower; {WHERE}"
    ),
}
ZHEJIANG = {
    "name": "zhejiang",
    "pue": 1.25,
    "price_per_kwh": 0.65,
    "carbon_g_per_kwh": 536.6,
    # Zhejiang's industrial and commercial time-of-use periods from 2026-07-01 (spring
    # and autumn): valley 0-7 and 11-14 at 0.4x, peak 16-23 at 1.85x, flat otherwise.
    "tariff": [[0, 0.26], [7, 0.65], [11, 0.26], [14, 0.65], [16, 1.2025], [23, 0.65]],
    "utc_offset_hours": 8.0,
    "source": (
        "default: an east-coast hall near the studios: PUE 1.25, the East Data West "
        "Computing cap for eastern hubs; Zhejiang's time-of-use periods and ratios from "
        "2026-07-01 (spring and autumn) on an example flat price of 0.65 CNY/kWh; 536.6 "
        f"gCO2/kWh, China's national average factor (MEE/NBS, 2022); {WHERE}"
    ),
}
LINK_SOURCE = (
    "default: Hangzhou to Guiyang, about 1,500 km of fibre: 15 ms one way; 1 Gbit/s and "
    f"0.5 CNY/GB are an example leased line's, set your carrier's; {WHERE}"
)
LINKS = [("guizhou", "zhejiang"), ("guizhou-hydro", "zhejiang")]


def upgrade() -> None:
    links = op.create_table(
        "region_links",
        sa.Column("region_a", sa.String(length=64), primary_key=True),
        sa.Column("region_b", sa.String(length=64), primary_key=True),
        sa.Column("bandwidth_mbps", sa.Float(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("price_per_gb", sa.Float(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )
    op.add_column("frame_results", sa.Column("output_bytes", sa.BigInteger(), nullable=True))
    regions = sa.table(
        "regions",
        sa.column("name", sa.String()),
        sa.column("pue", sa.Float()),
        sa.column("price_per_kwh", sa.Float()),
        sa.column("carbon_g_per_kwh", sa.Float()),
        sa.column("tariff", sa.JSON()),
        sa.column("utc_offset_hours", sa.Float()),
        sa.column("source", sa.String()),
        sa.column("updated_at", sa.Float()),
    )
    for name, source in SOURCES.items():  # only where an operator has not set their own
        op.execute(
            regions.update()
            .where(regions.c.name == name, regions.c.source == OLD_SOURCE)
            .values(source=source)
        )
    now = time.time()
    bind = op.get_bind()
    if bind.execute(sa.select(regions.c.name).where(regions.c.name == "zhejiang")).first():
        return  # an operator's own region of that name stays as it is, unlinked
    op.bulk_insert(regions, [{**ZHEJIANG, "updated_at": now}])
    op.bulk_insert(
        links,
        [
            {
                "region_a": a,
                "region_b": b,
                "bandwidth_mbps": 1000.0,
                "latency_ms": 15.0,
                "price_per_gb": 0.5,
                "source": LINK_SOURCE,
                "updated_at": now,
            }
            for a, b in LINKS
        ],
    )


def downgrade() -> None:
    op.execute("ALTER TABLE frame_results DROP COLUMN output_bytes")
    op.drop_table("region_links")
    op.execute("DELETE FROM regions WHERE name = 'zhejiang' AND source LIKE 'default:%'")
