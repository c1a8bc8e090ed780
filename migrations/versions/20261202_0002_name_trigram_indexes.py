"""trigram indexes for "name contains" on PostgreSQL

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 06:50:00

The dashboard's Services filter and its search match names by substring
(``name ILIKE '%word%'`` on PostgreSQL), which no B-tree serves: with 10,000 Services every
search scanned the table (and counted by scanning again). pg_trgm's GIN indexes serve it;
``fastupdate = off`` (see ``models.GIN_NO_PENDING_LIST``) keeps fresh names out of a pending
list that only vacuum merges.
PostgreSQL only: SQLite has no such index (and scans 10,000 names in about a millisecond),
so on SQLite this revision does nothing.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    op.execute(
        "CREATE INDEX ix_service_records_name_trgm ON service_records "
        "USING gin (name gin_trgm_ops) WITH (fastupdate = off)"
    )
    op.execute(
        "CREATE INDEX ix_allocations_live_name_trgm ON allocations "
        "USING gin (service_name gin_trgm_ops) WITH (fastupdate = off) WHERE active"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP INDEX ix_allocations_live_name_trgm")
    op.execute("DROP INDEX ix_service_records_name_trgm")
    # The extension stays: other objects may use it, and dropping it needs its owner.
