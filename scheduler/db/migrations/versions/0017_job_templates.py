"""OpenJD job templates: a template's submission (templates) and its jobs, one per step
(jobs.template_id); a step's hostRequirements (jobs.host_requirements); what a node
reports of itself (nodes.capabilities); and which studios may submit templates
(studios.allow_templates, an operator's grant).

Revision ID: 0017
Revises: 0016
Created: 2026-11-30 18:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "templates",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("studio_id", sa.Integer(), sa.ForeignKey("studios.id"), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=True),
        sa.Column("submitted_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_templates_studio_id", "templates", ["studio_id"])
    op.add_column(
        "studios",
        sa.Column("allow_templates", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    # Not batch mode for tables that others refer to: on SQLite it would copy and drop
    # them, which the foreign keys refuse. Adding a column needs no copy; SQLite takes
    # its foreign key only inline.
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE jobs ADD COLUMN template_id INTEGER REFERENCES templates (id)")
    else:
        op.add_column("jobs", sa.Column("template_id", sa.Integer(), nullable=True))
        op.create_foreign_key("fk_jobs_template_id", "jobs", "templates", ["template_id"], ["id"])
    op.create_index("ix_jobs_template_id", "jobs", ["template_id"])
    op.add_column("jobs", sa.Column("host_requirements", sa.JSON(), nullable=True))
    op.add_column("nodes", sa.Column("capabilities", sa.JSON(), nullable=True))


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint("fk_jobs_template_id", "jobs", type_="foreignkey")
    op.drop_index("ix_jobs_template_id", table_name="jobs")
    op.execute("ALTER TABLE nodes DROP COLUMN capabilities")
    op.execute("ALTER TABLE jobs DROP COLUMN host_requirements")
    op.execute("ALTER TABLE jobs DROP COLUMN template_id")
    op.execute("ALTER TABLE studios DROP COLUMN allow_templates")
    op.drop_index("ix_templates_studio_id", table_name="templates")
    op.drop_table("templates")
