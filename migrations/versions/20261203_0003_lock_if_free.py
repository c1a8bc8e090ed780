"""lbp_lock_if_free(): an address's lock and its check after the lock, in one statement

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 14:45:00

A new Service's address on PostgreSQL is now locked, checked and claimed by one statement
(``services.state.SCAN_CLAIM_PG``). Its own snapshot predates the lock, so the check after the
lock runs in this VOLATILE function, whose query takes a snapshot of its own (READ COMMITTED):
the same check the separate claim statement made (``models.LOCK_IF_FREE_SQL``, kept equal to
the text below; ``tests/db/test_migrations.py`` compares the two).
PostgreSQL only: SQLite serialises writers and has no such function.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LOCK_IF_FREE_SQL = """
CREATE OR REPLACE FUNCTION lbp_lock_if_free(candidate text, as_of timestamptz) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtextextended(candidate, 0)) THEN
        RETURN false;
    END IF;
    RETURN NOT EXISTS (SELECT 1 FROM allocations WHERE active AND ip = candidate)
        AND NOT EXISTS (SELECT 1 FROM ip_leases WHERE ip = candidate)
        AND NOT EXISTS (SELECT 1 FROM allocation_ports WHERE ip = candidate)
        AND NOT EXISTS (SELECT 1 FROM reservations WHERE ip = candidate
            AND (expires_at IS NULL OR expires_at > as_of))
        AND NOT EXISTS (SELECT 1 FROM released_ips WHERE ip = candidate);
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(LOCK_IF_FREE_SQL)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP FUNCTION IF EXISTS lbp_lock_if_free(text, timestamptz)")
