"""limit_window: an application rate's window slots, so the rate holds at the provider's arrival
times however late a starved process sends (DESIGN §14.3)

Revision ID: cbeaffd7079f
Revises: f7a8b9c0d1e2
Create Date: 2026-12-02 05:55:58.922281
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "cbeaffd7079f"
down_revision: str | None = "f7a8b9c0d1e2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "limit_window",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("slot", sa.SmallInteger(), nullable=False),
        sa.Column("ticket", sa.Text(), nullable=True),
        sa.Column("token_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("free_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("key", "slot", name=op.f("pk_limit_window")),
    )


def downgrade() -> None:
    op.drop_table("limit_window")
