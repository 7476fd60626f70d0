"""sync_queue.tag_intent: the tags a send is about to push, recorded before the call

Revision ID: d1e2f3a4b5c6
Revises: b7c1d2e3f4a5
Create Date: 2026-12-01 23:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "d1e2f3a4b5c6"
down_revision: str | None = "b7c1d2e3f4a5"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A constant default: PostgreSQL adds the column without rewriting the table.
    op.add_column(
        "sync_queue",
        sa.Column(
            "tag_intent",
            postgresql.ARRAY(sa.Text()),
            server_default=sa.text("'{}'::text[]"),
            nullable=False,
        ),
    )


def downgrade() -> None:
    op.drop_column("sync_queue", "tag_intent")
