"""The farm's one settings class, read from ``RENDERFARM_*`` variables or a ``.env`` file.

Every component (api, scheduler, worker, the embedded launcher) is built from a
``Settings`` passed in explicitly; nothing reads settings at import time. Defaults
work on a laptop: a SQLite file and a storage folder under ``data_dir``, and a
Redis on localhost (or, for ``renderfarm up``/``demo``, one the launcher starts).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from scheduler.core.bounds import COUNT_MAX

DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RENDERFARM_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # Where things live.
    data_dir: Path = Field(Path("renderfarm-data"), description="SQLite file and default storage")
    broker_url: str | None = Field(
        None, description="Celery broker (Redis). Unset: localhost, or embedded for `up`/`demo`"
    )
    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite in data_dir")
    # PostgreSQL connections of one process, at most pool + overflow: the server's
    # max_connections must cover every process's (README: "PostgreSQL at farm scale").
    db_pool_size: int = Field(10, ge=1, le=500, description="connections a process keeps open")
    db_max_overflow: int = Field(
        10, ge=0, le=500, description="connections a process may open beyond its pool, briefly"
    )
    storage: str | None = Field(
        None,
        description="contents, frames and logs: a folder (default data_dir/storage) or "
        "s3://bucket/prefix (S3-compatible object storage, configured by the AWS variables)",
    )

    # What studios may ask for.
    pools: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["cpu", "gpu"])
    max_frames_per_job: int = Field(1_000_000, ge=1, le=COUNT_MAX)
    max_chunk_size: int = Field(1_000, ge=1)
    max_body_bytes: int = Field(1_048_576, ge=1_024)
    # Scenes and their files (content-addressed blobs; see scheduler/core/assets.py).
    max_blob_bytes: int = Field(64 * 2**30, ge=1_024, description="largest file a studio uploads")
    max_batch_bytes: int = Field(256 * 2**20, ge=1_024, description="a batch of small files")
    max_manifest_files: int = Field(100_000, ge=1)
    studio_quota_bytes: int = Field(
        1024 * 2**30, ge=0, description="bytes of content a studio may keep stored"
    )
    blob_retention_seconds: float = Field(
        7 * 24 * 3600, ge=0, description="how long content no manifest names is kept"
    )
    default_max_attempts: int = Field(3, ge=1, le=100)
    frame_timeout: float = Field(3_600.0, gt=0, description="default render time limit per frame")
    node_blocklist_after: int = Field(
        2, ge=1, description="failures of a job on a node before that node stops getting it"
    )
    retry_base_seconds: float = Field(10.0, ge=0, description="first wait before a retry")
    retry_max_seconds: float = Field(600.0, ge=0, description="longest wait before a retry")

    # Scheduler.
    tick_seconds: float = Field(0.5, gt=0, description="longest wait between dispatch ticks")
    gather_seconds: float = Field(
        0.1, ge=0, description="under load, least time between ticks: events gather meanwhile"
    )
    dispatch_buffer: int = Field(
        2, ge=0, description="least messages queued beyond free slots, per pool"
    )
    max_dispatch_buffer: int = Field(
        1024, ge=0, description="most messages queued beyond free slots, for very short chunks"
    )
    bundle_seconds: float = Field(
        0.05,
        ge=0,
        description="chunks measured this short go several to a message, up to this long "
        "in all (0: one chunk a message)",
    )
    event_batch: int = Field(500, ge=1, description="events ingested per database transaction")
    node_timeout: float = Field(60.0, gt=0, description="seconds without heartbeat before lost")
    forget_nodes_after: float = Field(
        86400.0,
        gt=0,
        description="seconds after a node left or was lost that the farm forgets it (pools "
        "scaled up and down name a new node each time; its attempts keep its name)",
    )
    redispatch_after: float = Field(30.0, gt=0, description="unclaimed seconds before a resend")
    leader_ttl: float = Field(
        10.0, gt=0, description="seconds a dead scheduler keeps the leader lock; standby waits"
    )

    # Billing.
    billing_timezone: str = Field(
        "Asia/Shanghai", description="time zone of the studios' billing days"
    )
    currency: str = Field("CNY", max_length=8, description="of region prices and bills")

    # Workers.
    heartbeat_seconds: float = Field(5.0, gt=0)
    drain_seconds: float = Field(
        20.0,
        ge=0,
        description="told to stop (SIGTERM), a node takes no new chunk and lets those it "
        "runs finish for this long, then hands the rest back; keep it a few seconds under "
        "the time its supervisor waits before SIGKILL (Kubernetes: "
        "terminationGracePeriodSeconds)",
    )
    region: str = Field("guizhou", max_length=64, description="where this node stands")
    node_labels: Path | None = Field(
        None,
        description="a JSON file of the labels of the machine a render node runs on (on "
        "Kubernetes, its init container writes it): its region and tags come from them "
        "(workers/kubernetes.py)",
    )
    energy_meter: Literal["auto", "rapl", "model", "off"] = Field(
        "auto", description="auto, rapl, model or off"
    )
    energy_sample_seconds: float = Field(1.0, gt=0, description="node meter sampling interval")
    idle_watts: float | None = Field(
        None, ge=0, description="node IT power at idle; default per logical CPU"
    )
    max_watts: float | None = Field(
        None, ge=0, description="node IT power at full load; default per logical CPU"
    )
    blender: str | None = Field(
        None,
        description="the blender executable nodes render with; default: blender on "
        "PATH, else the bpy module (renderfarm[blender])",
    )
    visibility_timeout: int = Field(
        43_200, ge=60, description="Redis redelivery of unacked messages; above the longest render"
    )
    sandbox: Literal["auto", "bwrap", "off"] = Field(
        "auto",
        description="renderers in a bubblewrap sandbox: auto (where bwrap runs), bwrap "
        "(required: the node refuses to start without it) or off",
    )

    # API.
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_workers: int = Field(
        1, ge=1, le=64, description="API processes on the port (uvicorn workers): about one a core"
    )
    api_read_threads: int = Field(
        default_factory=lambda: 2 * (os.cpu_count() or 1),
        ge=1,
        le=256,
        description="threads of an API process reading a job from a database server at once",
    )

    # Render nodes and the farm's files.
    api_url: str | None = Field(
        None, description="nodes fetch scenes from this API; None: from the shared storage"
    )
    node_token: SecretStr | None = Field(
        None,
        min_length=16,
        description="the secret nodes show the API's /v1/internal routes (16+ characters)",
    )
    carbon_feed_url: str | None = Field(
        None,
        description="a carbon intensity forecast in the Carbon Aware SDK's shape, "
        "{location} standing for a region's feed_location (else its name), such as "
        "http://carbon-aware:8080/emissions/forecasts/current?location={location}",
    )
    carbon_feed_seconds: float = Field(900.0, ge=10, description="how often the feed is read")
    # Webhooks (scheduler/dispatch/webhooks.py).
    webhook_private_addresses: bool = Field(
        False,
        description="whether webhooks may call loopback, private and link-local addresses "
        "(off: a studio cannot make the farm call into its own network)",
    )
    webhook_retry_seconds: float = Field(
        30.0, gt=0, description="the first retry's wait; it doubles, up to an hour"
    )
    webhook_retry_hours: float = Field(24.0, gt=0, description="how long a delivery is retried")
    webhook_timeout: float = Field(10.0, gt=0, le=60, description="seconds a receiver may take")
    webhook_senders: int = Field(8, ge=1, le=64, description="deliveries sent at once")
    allow_scene_scripts: bool = Field(
        False, description="whether jobs may run the Python scripts inside their scenes"
    )
    run_as: str | None = Field(
        None,
        description="the unprivileged user(s) a node runs OpenJD templates' commands as, "
        "through sudo: USER, or USER,USER,... to give each session running at once a user "
        "of its own (the node refuses to start if it cannot); None: as the node's user",
    )
    new_studio_templates: bool | None = Field(
        None,
        description="whether a new studio may submit OpenJD templates (an operator changes "
        "it per studio: renderfarm studio templates); default: yes on the embedded farm's "
        "own SQLite database, no on a database server (a shared farm)",
    )
    render_memory_bytes: int | None = Field(
        None,
        ge=64 * 2**20,
        description="a renderer's memory bound where its job gives none; default: the "
        "node's memory divided by its slots",
    )
    node_cache: Path | None = Field(None, description="a node's file cache; default data_dir")
    node_cache_bytes: int = Field(50 * 2**30, ge=0, description="a node's file cache size")

    @field_validator("pools", mode="before")
    @classmethod
    def _split_pools(cls, value: object) -> object:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @field_validator("billing_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or DEFAULT_BROKER_URL

    @property
    def templates_for_new_studios(self) -> bool:
        if self.new_studio_templates is not None:
            return self.new_studio_templates
        return not self.database_url

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'renderfarm.db').resolve()}"

    @field_validator("storage")
    @classmethod
    def _storage_location(cls, value: str | None) -> str | None:
        if value is not None and value.startswith("s3:"):
            parts = urlsplit(value)
            if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
                raise ValueError(f"object storage is s3://bucket or s3://bucket/prefix: {value!r}")
        return value or None

    @property
    def storage_url(self) -> str | None:
        """The object storage's ``s3://`` URL, or None where the storage is a folder."""
        return self.storage if self.storage and self.storage.startswith("s3:") else None

    @property
    def storage_root(self) -> Path:
        """The storage's folder; with object storage, a local scratch folder (uploads
        on their way in, a node's frames on their way out)."""
        if self.storage and self.storage_url is None:
            return Path(self.storage).resolve()
        return (self.data_dir / "storage").resolve()
