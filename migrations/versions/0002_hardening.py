"""Hardening: jobs remember their messages (so a lost one is sent again), and POSTs
remember their answers under an Idempotency-Key.

Revision ID: 0002
Revises: 0001
Create Date: 2025-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from service.db.models import UTCDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    # Columns are only added: on SQLite anything more would copy the table, and dropping the
    # old one would cascade into every row that refers to a job.
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("sends", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("sent_at", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("resend_at", UTCDateTime(), nullable=True))
    # Jobs from before were sent once, when they were made: a queued one is sent again once
    # GISTNET_QUEUED_RESEND_S has passed since (a duplicate message is harmless).
    op.execute("UPDATE jobs SET sends = 1, sent_at = created_at")
    # The sweep looks for queued jobs whose resend time has come.
    op.create_index("ix_jobs_status_resend_at", "jobs", ["status", "resend_at"])

    op.create_table(
        "idempotency_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("route", sa.String(length=50), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("response", JSON, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_idempotency_keys")),
        sa.UniqueConstraint("route", "key", name="uq_idempotency_keys_route_key"),
    )
    # Expired keys are deleted by the workers' sweep.
    op.create_index(op.f("ix_idempotency_keys_expires_at"), "idempotency_keys", ["expires_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_idempotency_keys_expires_at"), table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
    op.drop_index("ix_jobs_status_resend_at", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("resend_at")
        batch.drop_column("sent_at")
        batch.drop_column("sends")
