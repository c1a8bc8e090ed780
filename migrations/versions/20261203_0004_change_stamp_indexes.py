"""indexes for the fleet's change stamp and incremental compile

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 20:40:00

Every committed change makes the API's fleet cache read ``max(service_records.updated_at)``
and ``max(allocations.released_at)`` (``fleet.compile.change_stamp``) and then the records
with ``updated_at > mark OR id > mark`` (``fleet.incremental``). Without an index each was a
scan of every row: ~1.3 ms more per stamp at 10,000 Services on an idle machine, more under
load. The allocations index is partial (released rows only), so allocating writes nothing to it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_RELEASED = sa.text("released_at IS NOT NULL")


def upgrade() -> None:
    op.create_index("ix_service_records_updated_at", "service_records", ["updated_at"])
    op.create_index(
        "ix_allocations_released_at",
        "allocations",
        ["released_at"],
        postgresql_where=_RELEASED,
        sqlite_where=_RELEASED,
    )


def downgrade() -> None:
    op.drop_index("ix_allocations_released_at", table_name="allocations")
    op.drop_index("ix_service_records_updated_at", table_name="service_records")
