"""The Assistants API: assistants, threads, messages and run steps as objects; runs.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "assistant_objects",
        sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(256), nullable=False),
        sa.Column("thread_id", sa.String(64), nullable=True),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("body", sa.JSON, nullable=False),
    )
    for column in ("owner", "thread_id", "run_id", "created_at"):
        op.create_index(f"ix_assistant_objects_{column}", "assistant_objects", [column])
    op.create_table(
        "assistant_runs",
        sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("owner", sa.String(256), nullable=False),
        sa.Column("thread_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("body", sa.JSON, nullable=False),
        sa.Column("transcript", sa.JSON, nullable=False),
        sa.Column("worker", sa.String(128), nullable=True),
        sa.Column("heartbeat_at", sa.Float, nullable=True),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
    )
    for column in ("owner", "thread_id", "created_at"):
        op.create_index(f"ix_assistant_runs_{column}", "assistant_runs", [column])


def downgrade() -> None:
    op.drop_table("assistant_runs")
    op.drop_table("assistant_objects")
