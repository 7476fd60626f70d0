"""contacts.company

Revision ID: c0a1b2c3d4e5
Revises: aa50cd0aeeff
Create Date: 2026-12-01 23:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c0a1b2c3d4e5"
down_revision: str | None = "aa50cd0aeeff"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A nullable column without a default: PostgreSQL adds it without rewriting the table.
    op.add_column("contacts", sa.Column("company", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("contacts", "company")
