"""sync_state (connection_id, mapping_id, remote_id): an inbound event naming the provider's person
id finds its mirror row (Mautic: an address changed at Mautic)

Revision ID: f7a8b9c0d1e2
Revises: d7e8f9a0b1c2
Create Date: 2026-12-02 02:40:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "f7a8b9c0d1e2"
down_revision: str | None = "d7e8f9a0b1c2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_sync_state_connection_id_mapping_id_remote_id",
        "sync_state",
        ["connection_id", "mapping_id", "remote_id"],
    )


def downgrade() -> None:
    op.drop_index("ix_sync_state_connection_id_mapping_id_remote_id", table_name="sync_state")
