"""Room on each page of ``nodes`` for its rows' next versions (PostgreSQL).

Every heartbeat updates its node's row: at 10,000 nodes, 2,000 updates a second.
With full pages each update writes the new version on another page and a new entry
in each index, and the table and its indexes bloat faster than vacuum clears them
(21 MB for 10,000 rows within a minute of the bench, lookups by name slowing with
it). Half-full pages let PostgreSQL keep a row's versions on its page (a HOT update:
no index entry, dead versions pruned as the page is read). SQLite updates in place.

Revision ID: 0024
Revises: 0023
Created: 2026-12-01 04:05:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE nodes SET (fillfactor = 50)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE nodes RESET (fillfactor)")
