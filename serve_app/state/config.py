"""Settings of the state store: where it lives, how long it keeps things, how big they may be."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


def default_data_dir() -> Path:
    """The embedded database's folder when none is configured (per user, outside the checkout)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "llm-serving-cluster"


class StateSettings(BaseModel):
    """The ``state:`` block of the ingress settings.

    The database URL itself never sits in a config file: ``database_url_env`` names the
    environment variable that holds it (a Kubernetes secret, in the cluster). Without one the
    store is an SQLite file in ``data_dir``, which only one ingress replica may use.
    """

    model_config = ConfigDict(extra="forbid")

    data_dir: Path | None = Field(
        default=None,
        description="Folder of the embedded SQLite database (created on first use); defaults to "
        "$XDG_DATA_HOME/llm-serving-cluster or ~/.local/share/llm-serving-cluster.",
    )
    database_url_env: str | None = Field(
        default=None,
        min_length=1,
        description="Name of the environment variable holding a PostgreSQL URL "
        "(postgresql://user:password@host:5432/db); every ingress replica shares that database.",
    )
    retention_days: float | None = Field(
        default=30.0, gt=0, description="Stored responses and conversations older than this are deleted."
    )
    max_input_items: int = Field(default=4096, ge=1, description="Most input items one response may carry.")
    max_stored_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, description="Largest stored response or item (JSON bytes): 413 above."
    )
    max_history_depth: int = Field(
        default=1000, ge=1, description="Most earlier responses a previous_response_id chain may go back."
    )
    heartbeat_s: float = Field(
        default=2.0, gt=0, description="How often a background response's replica says it is still running it."
    )
    stale_after_s: float = Field(
        default=30.0, gt=0, description="A background response not heard of for this long is closed as failed."
    )

    @property
    def uses_shared_database(self) -> bool:
        """Whether every replica shares one database (PostgreSQL) rather than a local file."""
        return self.database_url_env is not None

    def database_url(self) -> str:
        """The SQLAlchemy async URL of the store (read from the environment at build time)."""
        if self.database_url_env is None:
            folder = self.data_dir or default_data_dir()
            folder.mkdir(parents=True, exist_ok=True)
            return f"sqlite+aiosqlite:///{folder / 'state.sqlite3'}"
        url = os.environ.get(self.database_url_env, "").strip()
        if not url:
            raise ValueError(
                f"state.database_url_env names {self.database_url_env}, which is not set in this process's environment"
            )
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+asyncpg://" + url[len(prefix) :]
        if not url.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
            raise ValueError(f"{self.database_url_env} must be a postgresql:// URL")
        return url
