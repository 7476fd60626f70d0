"""sync_state remote-id index as (connection_id, remote_id, mapping_id): as (connection_id,
mapping_id, remote_id) it shared the primary key's leading columns, and without statistics the
planner took it for the write path's (connection, mapping, email key) lookups, walking every
mirror row of the connection per write

Revision ID: a1b2c3d4e5f7
Revises: cbeaffd7079f
Create Date: 2026-12-03 12:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "a1b2c3d4e5f7"
down_revision: str | None = "cbeaffd7079f"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_sync_state_connection_id_remote_id_mapping_id",
        "sync_state",
        ["connection_id", "remote_id", "mapping_id"],
    )
    op.drop_index("ix_sync_state_connection_id_mapping_id_remote_id", table_name="sync_state")


def downgrade() -> None:
    op.create_index(
        "ix_sync_state_connection_id_mapping_id_remote_id",
        "sync_state",
        ["connection_id", "mapping_id", "remote_id"],
    )
    op.drop_index("ix_sync_state_connection_id_remote_id_mapping_id", table_name="sync_state")
