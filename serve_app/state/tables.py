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
