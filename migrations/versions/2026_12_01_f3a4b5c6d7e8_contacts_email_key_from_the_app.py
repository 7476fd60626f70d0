"""contacts.email_key written by the app (one normalisation), no longer lower(btrim(email))

Revision ID: f3a4b5c6d7e8
Revises: e2f3a4b5c6d7
Create Date: 2026-12-02 00:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "f3a4b5c6d7e8"
down_revision: str | None = "e2f3a4b5c6d7"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _key(email: str) -> str | None:
    # A frozen copy of app.emailkey.email_key as of this revision.
    return email.strip().lower() or None


def upgrade() -> None:
    # The values stay; from now on the app writes them (PostgreSQL ≥ 13).
    op.execute("ALTER TABLE contacts ALTER COLUMN email_key DROP EXPRESSION")
    conn = op.get_bind()
    # Only addresses outside ASCII (or with odd whitespace) can have a different key: SQL's
    # lower() and Python's agree on ASCII. A key another contact of the owner already has
    # is left as it was (two contacts that are one Mailchimp member: an operator merges
    # them); the next write of the email computes it afresh and gets the 409.
    rows = conn.execute(
        sa.text(
            "SELECT id, owner_id, email, email_key FROM contacts"
            " WHERE email IS NOT NULL AND (email ~ '[^\\x01-\\x7f]' OR email ~ '\\s')"
        )
    ).all()
    for row in rows:
        key = _key(row.email)
        if key == row.email_key:
            continue
        taken = conn.execute(
            sa.text("SELECT 1 FROM contacts WHERE owner_id = :o AND email_key = :k"),
            {"o": row.owner_id, "k": key},
        ).first()
        if taken is None:
            conn.execute(
                sa.text("UPDATE contacts SET email_key = :k WHERE id = :id"),
                {"k": key, "id": row.id},
            )
    conn.execute(sa.text("UPDATE contacts SET email_key = NULL WHERE email IS NULL"))
    op.create_check_constraint("email_key", "contacts", "(email IS NULL) = (email_key IS NULL)")


def downgrade() -> None:
    op.drop_constraint("ck_contacts_email_key", "contacts", type_="check")
    op.drop_index("uq_contacts_owner_id_email_key", table_name="contacts")
    op.drop_column("contacts", "email_key")
    op.add_column(
        "contacts",
        sa.Column("email_key", sa.Text(), sa.Computed("lower(btrim(email))", persisted=True)),
    )
    op.create_index(
        "uq_contacts_owner_id_email_key", "contacts", ["owner_id", "email_key"], unique=True
    )
