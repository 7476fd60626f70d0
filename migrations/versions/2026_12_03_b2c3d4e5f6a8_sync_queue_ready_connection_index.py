"""sync_queue ready index per connection, (connection_id, priority, available_at) where ready:
the claim reads each eligible connection's due rows through it instead of walking the skipped
accounts' rows in global (priority, available_at) order

Revision ID: b2c3d4e5f6a8
Revises: a1b2c3d4e5f7
Create Date: 2026-12-03 13:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b2c3d4e5f6a8"
down_revision: str | None = "a1b2c3d4e5f7"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_sync_queue_ready_connection",
        "sync_queue",
        ["connection_id", "priority", "available_at"],
        postgresql_where=sa.text("state = 'ready'"),
    )


def downgrade() -> None:
    op.drop_index("ix_sync_queue_ready_connection", table_name="sync_queue")
