"""SQL state through SQLModel: the tables, and the engine that opens them."""

from scheduler.db.engine import create_tables, make_engine
from scheduler.db.tables import (
    ApiKey,
    AttemptRow,
    BlobRow,
    ChunkRow,
    FrameResultRow,
    FrameTotal,
    IdempotencyRow,
    JobDependency,
    JobRow,
    Limit,
    ManifestFile,
    ManifestRow,
    NodeRow,
    Region,
    Studio,
    StudioBlob,
    Subscription,
)

__all__ = [
    "ApiKey",
    "AttemptRow",
    "BlobRow",
    "ChunkRow",
    "FrameResultRow",
    "FrameTotal",
    "IdempotencyRow",
    "JobDependency",
    "JobRow",
    "Limit",
    "ManifestFile",
    "ManifestRow",
    "NodeRow",
    "Region",
    "Studio",
    "StudioBlob",
    "Subscription",
    "create_tables",
    "make_engine",
]
