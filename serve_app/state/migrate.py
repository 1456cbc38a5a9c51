"""Bring a database to the latest schema with Alembic, safely from several replicas at once."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

MIGRATIONS = Path(__file__).with_name("migrations")
# Any fixed 64-bit number: the PostgreSQL advisory lock every replica takes around migrating.
_MIGRATION_LOCK = 7_301_445_120_011


def alembic_config(connection: Connection) -> Config:
    """An Alembic config over our migrations folder that runs on ``connection``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    """The newest revision the code knows."""
    return ScriptDirectory(str(MIGRATIONS)).get_current_head()


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at (None before the first migration)."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade_to_head(connection: Connection) -> None:
    """Run every migration the database lacks (a sync function, for ``run_sync``).

    Replicas starting together on PostgreSQL take turns through an advisory lock held for the
    transaction, so only the first migrates and the others find the schema current.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
    if current_revision(connection) != head_revision():
        command.upgrade(alembic_config(connection), "head")
