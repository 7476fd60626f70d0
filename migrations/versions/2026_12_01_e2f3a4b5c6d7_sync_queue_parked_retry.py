"""sync_queue.parks, parked_at and a parked index: parked rows are retried on a schedule

Revision ID: e2f3a4b5c6d7
Revises: d1e2f3a4b5c6
Create Date: 2026-12-01 23:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e2f3a4b5c6d7"
down_revision: str | None = "d1e2f3a4b5c6"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "sync_queue",
        sa.Column("parks", sa.SmallInteger(), server_default=sa.text("0"), nullable=False),
    )
    op.add_column("sync_queue", sa.Column("parked_at", sa.DateTime(timezone=True), nullable=True))
    # Rows parked before this revision are retried at once by the new schedule.
    op.execute("UPDATE sync_queue SET parked_at = now() WHERE state = 'parked'")
    op.create_index(
        "ix_sync_queue_parked",
        "sync_queue",
        ["available_at"],
        postgresql_where=sa.text("state = 'parked'"),
    )


def downgrade() -> None:
    op.drop_index("ix_sync_queue_parked", table_name="sync_queue")
    op.drop_column("sync_queue", "parked_at")
    op.drop_column("sync_queue", "parks")
