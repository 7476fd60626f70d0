"""contacts.preferences and the interest map of audience mappings (issue 17 §2)

Revision ID: d7e8f9a0b1c2
Revises: e1a2b3c4d5f6
Create Date: 2026-12-02 03:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "d7e8f9a0b1c2"
down_revision: str | None = "e1a2b3c4d5f6"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "contacts",
        sa.Column(
            "preferences",
            postgresql.ARRAY(sa.Text()),
            server_default=sa.text("'{}'::text[]"),
            nullable=False,
        ),
    )
    op.add_column(
        "contacts", sa.Column("preferences_changed_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column(
        "audience_mappings",
        sa.Column(
            "interests",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
    )
    op.add_column(
        "sync_state",
        sa.Column("remote_preferences_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_column("sync_state", "remote_preferences_at")
    op.drop_column("audience_mappings", "interests")
    op.drop_column("contacts", "preferences_changed_at")
    op.drop_column("contacts", "preferences")
