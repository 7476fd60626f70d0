"""audience_mappings: several audiences per connection; queue, mirror and runs per mapping

Every connection with an audience gets its default mapping (rule "all") with the
connection's own id, and its queue and mirror rows are keyed by that mapping: nothing that
is already in sync is sent again.

Revision ID: e1a2b3c4d5f6
Revises: c6d7e8f9a0b1
Create Date: 2026-12-02 02:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "e1a2b3c4d5f6"
down_revision: str | None = "c6d7e8f9a0b1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ACTIVE = sa.text("state IN ('queued', 'running')")

_FOLLOW_FUNCTION = """
CREATE FUNCTION connections_default_mapping() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.audience_id IS NULL THEN
        DELETE FROM audience_mappings WHERE id = NEW.id;
        RETURN NEW;
    END IF;
    -- Another mapping of this audience becomes the default one (one mapping per audience).
    DELETE FROM audience_mappings
    WHERE connection_id = NEW.id AND audience_id = NEW.audience_id AND id <> NEW.id;
    INSERT INTO audience_mappings (id, connection_id, audience_id, audience_name)
    VALUES (NEW.id, NEW.id, NEW.audience_id, NEW.audience_name)
    ON CONFLICT (id) DO UPDATE SET audience_id = EXCLUDED.audience_id,
        audience_name = EXCLUDED.audience_name, updated_at = now()
    WHERE audience_mappings.audience_id IS DISTINCT FROM EXCLUDED.audience_id
       OR audience_mappings.audience_name IS DISTINCT FROM EXCLUDED.audience_name;
    RETURN NEW;
END
$$
"""


def upgrade() -> None:
    op.create_table(
        "audience_mappings",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("connection_id", sa.UUID(), nullable=False),
        sa.Column("audience_id", sa.Text(), nullable=False),
        sa.Column("audience_name", sa.Text(), nullable=True),
        sa.Column("kinds", postgresql.ARRAY(sa.Text()), nullable=True),
        sa.Column("tags_any", postgresql.ARRAY(sa.Text()), nullable=True),
        sa.Column("tags_all", postgresql.ARRAY(sa.Text()), nullable=True),
        sa.Column("webhook_id", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["connection_id"],
            ["connections.id"],
            name=op.f("fk_audience_mappings_connection_id_connections"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audience_mappings")),
        sa.UniqueConstraint(
            "connection_id",
            "audience_id",
            name=op.f("uq_audience_mappings_connection_id_audience_id"),
        ),
    )
    op.execute(
        """
        INSERT INTO audience_mappings (id, connection_id, audience_id, audience_name)
        SELECT id, id, audience_id, audience_name FROM connections WHERE audience_id IS NOT NULL
        """
    )
    # The default mapping follows the connection's audience whoever writes the connection
    # (connect, reconnect, audience choice, the single-tenant start-up, scripts): it exists
    # exactly while the connection has an audience, with the connection's id.
    op.execute(_FOLLOW_FUNCTION)
    op.execute(
        """
        CREATE TRIGGER connections_default_mapping
        AFTER INSERT OR UPDATE OF audience_id, audience_name ON connections
        FOR EACH ROW EXECUTE FUNCTION connections_default_mapping()
        """
    )
    for table in ("sync_queue", "sync_state"):
        op.add_column(table, sa.Column("mapping_id", sa.UUID(), nullable=True))
        # A connection without an audience has nothing to send its rows to (choosing one
        # drops them anyway); every other row belongs to the default mapping.
        op.execute(
            f"""
            DELETE FROM {table} t WHERE NOT EXISTS (
                SELECT 1 FROM audience_mappings m WHERE m.id = t.connection_id)
            """
        )
        op.execute(f"UPDATE {table} SET mapping_id = connection_id")
        op.alter_column(table, "mapping_id", nullable=False)
        op.drop_constraint(f"pk_{table}", table, type_="primary")
        op.create_primary_key(f"pk_{table}", table, ["connection_id", "mapping_id", "email_key"])
        op.create_foreign_key(
            op.f(f"fk_{table}_mapping_id_audience_mappings"),
            table,
            "audience_mappings",
            ["mapping_id"],
            ["id"],
            ondelete="CASCADE",
        )
    op.add_column("sync_runs", sa.Column("mapping_id", sa.UUID(), nullable=True))
    op.execute(
        """
        UPDATE sync_runs r SET mapping_id = r.connection_id
        WHERE EXISTS (SELECT 1 FROM audience_mappings m WHERE m.id = r.connection_id)
        """
    )
    op.create_foreign_key(
        op.f("fk_sync_runs_mapping_id_audience_mappings"),
        "sync_runs",
        "audience_mappings",
        ["mapping_id"],
        ["id"],
        ondelete="CASCADE",
    )
    op.drop_index(
        "uq_sync_runs_connection_id_dry_run_active",
        table_name="sync_runs",
        postgresql_where=_ACTIVE,
    )
    op.create_index(
        "uq_sync_runs_connection_id_mapping_id_dry_run_active",
        "sync_runs",
        ["connection_id", "mapping_id", "dry_run"],
        unique=True,
        postgresql_where=_ACTIVE,
    )


def downgrade() -> None:
    op.drop_index(
        "uq_sync_runs_connection_id_mapping_id_dry_run_active",
        table_name="sync_runs",
        postgresql_where=_ACTIVE,
    )
    op.execute(
        """
        DELETE FROM sync_runs WHERE mapping_id IS DISTINCT FROM connection_id
          AND state IN ('queued', 'running')
        """
    )
    op.create_index(
        "uq_sync_runs_connection_id_dry_run_active",
        "sync_runs",
        ["connection_id", "dry_run"],
        unique=True,
        postgresql_where=_ACTIVE,
    )
    op.drop_constraint(op.f("fk_sync_runs_mapping_id_audience_mappings"), "sync_runs")
    op.drop_column("sync_runs", "mapping_id")
    for table in ("sync_queue", "sync_state"):
        # Only the default mapping's rows fit the one-audience key.
        op.execute(f"DELETE FROM {table} WHERE mapping_id <> connection_id")
        op.drop_constraint(op.f(f"fk_{table}_mapping_id_audience_mappings"), table)
        op.drop_constraint(f"pk_{table}", table, type_="primary")
        op.create_primary_key(f"pk_{table}", table, ["connection_id", "email_key"])
        op.drop_column(table, "mapping_id")
    op.execute("DROP TRIGGER connections_default_mapping ON connections")
    op.execute("DROP FUNCTION connections_default_mapping()")
    op.drop_table("audience_mappings")
