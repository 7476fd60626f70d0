"""limit buckets and claims: shared rates, quotas and fairness (DESIGN §14.3)

Revision ID: b7c1d2e3f4a5
Revises: c0a1b2c3d4e5
Create Date: 2026-12-01 23:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b7c1d2e3f4a5"
down_revision: str | None = "c0a1b2c3d4e5"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "limit_buckets",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("next_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("quota_day", sa.Date(), nullable=True),
        sa.Column("quota_used", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("paused_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("pause_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_limit_buckets")),
    )
    op.create_table(
        "limit_claims",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("priority", sa.SmallInteger(), nullable=False),
        sa.Column("worker", sa.Text(), nullable=False),
        sa.Column("wanted", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "seen_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("served_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint(
            "key", "tenant", "priority", "worker", name=op.f("pk_limit_claims")
        ),
    )


def downgrade() -> None:
    op.drop_table("limit_claims")
    op.drop_table("limit_buckets")
