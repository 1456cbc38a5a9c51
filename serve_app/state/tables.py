"""The store's tables (SQLAlchemy Core), as the latest migration leaves them.

A test compares these with the schema the migrations build, so the two cannot drift.
"""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Boolean, Column, Float, ForeignKey, Integer, MetaData, String, Table

metadata = MetaData()

# SQLite only autoincrements an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit one.
Sequence64 = BigInteger().with_variant(Integer(), "sqlite")

responses = Table(
    "responses",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(256), nullable=False, index=True),
    Column("created_at", Float, nullable=False, index=True),
    Column("model", String(256), nullable=False),
    Column("status", String(16), nullable=False),
    Column("background", Boolean, nullable=False, default=False),
    Column("previous_response_id", String(64), nullable=True),
    Column("conversation_id", String(64), nullable=True),
    Column("body", JSON, nullable=False),
    Column("input_items", JSON, nullable=False),
    Column("worker", String(128), nullable=True),
    Column("heartbeat_at", Float, nullable=True),
    Column("cancel_requested", Boolean, nullable=False, default=False),
)

conversations = Table(
    "conversations",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(256), nullable=False, index=True),
    Column("created_at", Float, nullable=False, index=True),
    Column("metadata_json", JSON, nullable=False),
)

conversation_items = Table(
    "conversation_items",
    metadata,
    # Insertion order: the conversation's order, whatever the item ids are.
    Column("seq", Sequence64, primary_key=True, autoincrement=True),
    # Not unique: clients may send an item back (with its id) into the conversation it came from.
    Column("id", String(64), nullable=False, index=True),
    Column(
        "conversation_id",
        String(64),
        ForeignKey("conversations.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("owner", String(256), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("item", JSON, nullable=False),
)

# -- the Assistants API (migration 0002) ----------------------------------------------------

# Assistants, threads, thread messages and run steps: wire-shaped objects by kind. A message
# has its thread (and the run that wrote it); a step its thread and run; ``seq`` is list order.
assistant_objects = Table(
    "assistant_objects",
    metadata,
    Column("seq", Sequence64, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("kind", String(16), nullable=False),
    Column("owner", String(256), nullable=False, index=True),
    Column("thread_id", String(64), nullable=True, index=True),
    Column("run_id", String(64), nullable=True, index=True),
    Column("created_at", Float, nullable=False, index=True),
    Column("body", JSON, nullable=False),
)

# Runs: their object, and what a replica needs to carry one on (the tool calls and outputs of
# the run so far), with the same heartbeat and cancel columns as background responses.
assistant_runs = Table(
    "assistant_runs",
    metadata,
    Column("seq", Sequence64, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("owner", String(256), nullable=False, index=True),
    Column("thread_id", String(64), nullable=False, index=True),
    Column("created_at", Float, nullable=False, index=True),
    Column("status", String(24), nullable=False),
    Column("body", JSON, nullable=False),
    Column("transcript", JSON, nullable=False),
    Column("worker", String(128), nullable=True),
    Column("heartbeat_at", Float, nullable=True),
    Column("cancel_requested", Boolean, nullable=False, default=False),
)
