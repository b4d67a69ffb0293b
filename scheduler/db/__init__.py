"""SQL state through SQLModel: the tables, and the engine that opens them."""

from scheduler.db.engine import create_tables, make_engine
from scheduler.db.tables import (
    ApiKey,
    AttemptRow,
    ChunkRow,
    FrameResultRow,
    JobDependency,
    JobRow,
    Limit,
    NodeRow,
    Region,
    Studio,
    Subscription,
)

__all__ = [
    "ApiKey",
    "AttemptRow",
    "ChunkRow",
    "FrameResultRow",
    "JobDependency",
    "JobRow",
    "Limit",
    "NodeRow",
    "Region",
    "Studio",
    "Subscription",
    "create_tables",
    "make_engine",
]
