"""The farm's tables: the one source of truth.

Times are seconds since the Unix epoch (floats), the same numbers the pure core
takes as ``now``. Tables whose name matches a core concept carry a ``Row`` suffix.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Date, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from scheduler.core.frames import FrameRange


class Studio(SQLModel, table=True):
    __tablename__ = "studios"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True, max_length=100)
    weight: float = 1.0
    created_at: float
    # Whether its jobs may run the Python scripts inside their scenes (an operator's
    # grant, `renderfarm studio scripts`; the farm's RENDERFARM_ALLOW_SCENE_SCRIPTS too).
    allow_scene_scripts: bool = False
    # Whether it may submit OpenJD job templates, whose commands run on the nodes (an
    # operator's grant, `renderfarm studio templates`; on in the embedded farm).
    allow_templates: bool = False
    # An operator's bounds on what the studio may ask (None: none), `renderfarm studio
    # quota`: jobs and frames waiting at once, and API requests per second.
    max_queued_jobs: int | None = None
    max_queued_frames: int | None = None
    requests_per_second: int | None = None
    # Where the studio's own machines would render (`renderfarm studio region`): the
    # counterfactual its bills compare the farm's placement with.
    home_region: str | None = Field(default=None, max_length=64)


class Subscription(SQLModel, table=True):
    """An operator's terms for a studio in a pool: guaranteed and burst slots."""

    __tablename__ = "subscriptions"
    __table_args__ = (UniqueConstraint("studio_id", "pool"),)

    id: int | None = Field(default=None, primary_key=True)
    studio_id: int = Field(foreign_key="studios.id")
    pool: str = Field(max_length=64)
    min_slots: int = 0
    max_slots: int | None = None


class Limit(SQLModel, table=True):
    """A named farm-wide concurrency limit, such as the licences of a renderer."""

    __tablename__ = "limits"

    name: str = Field(primary_key=True, max_length=64)
    capacity: int


class ApiKey(SQLModel, table=True):
    """A studio's key, stored as a SHA-256 hash: the key itself is shown once."""

    __tablename__ = "api_keys"

    id: int | None = Field(default=None, primary_key=True)
    studio_id: int = Field(foreign_key="studios.id", index=True)
    key_hash: str = Field(unique=True, index=True, max_length=64)
    prefix: str = Field(max_length=12)
    created_at: float
    revoked_at: float | None = None


class Operator(SQLModel, table=True):
    """A person (or a tool) who runs the farm: reaches the admin API with its keys."""

    __tablename__ = "operators"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, max_length=100)
    created_at: float


class OperatorKey(SQLModel, table=True):
    """An operator's key, stored as a SHA-256 hash: the key itself is shown once."""

    __tablename__ = "operator_keys"

    id: int | None = Field(default=None, primary_key=True)
    operator_id: int = Field(foreign_key="operators.id", index=True)
    key_hash: str = Field(unique=True, max_length=64)
    prefix: str = Field(max_length=12)
    created_at: float
    revoked_at: float | None = None


class AuditRow(SQLModel, table=True):
    """Who changed what, when: an operator's action, or a studio's that changed jobs;
    written in the transaction of the change it records."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_at", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    at: float
    actor_kind: str = Field(max_length=16)  # operator | studio
    actor: str = Field(max_length=200)  # its name (an operator's CLI: cli:<user>)
    action: str = Field(max_length=64)  # studio.create, job.cancel, node.drain ...
    target: str = Field(max_length=200)  # what it acted on: a studio's name, job 12 ...
    detail: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))


class WebSession(SQLModel, table=True):
    """A login to the web monitor: a studio's or an operator's key exchanged for a
    cookie (the token's hash is kept, never the token), with its CSRF token."""

    __tablename__ = "web_sessions"

    token_hash: str = Field(primary_key=True, max_length=64)
    kind: str = Field(max_length=16)  # studio | operator
    subject_id: int  # the studio's or the operator's id
    key_hash: str = Field(max_length=64)  # the key it was opened with: revoked, it ends
    csrf: str = Field(max_length=64)
    created_at: float
    expires_at: float


class WebhookRow(SQLModel, table=True):
    """A studio's subscription: events of these kinds are POSTed to ``url``, signed with
    ``secret`` (scheduler/usecases/webhooks.py)."""

    __tablename__ = "webhooks"

    id: int | None = Field(default=None, primary_key=True)
    studio_id: int = Field(foreign_key="studios.id", index=True)
    url: str = Field(max_length=2000)
    events: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    secret: str = Field(max_length=100)  # kept to sign with; shown to the studio once
    created_at: float
    deleted_at: float | None = None  # deleted: no new deliveries, its log kept


class WebhookEvent(SQLModel, table=True):
    """Something that happened to a studio's job, written in the transaction that made
    it happen (an outbox): what the deliveries carry."""

    __tablename__ = "webhook_events"

    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(unique=True, max_length=40)  # evt_..., for receivers' idempotence
    studio_id: int = Field(foreign_key="studios.id")
    kind: str = Field(max_length=32)  # job.done, job.failed, job.held, frame.failed
    job_id: int | None = None
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    created_at: float


class WebhookDelivery(SQLModel, table=True):
    """One event to one subscription: its attempts so far and the next one."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "state", "next_at"),)

    id: int | None = Field(default=None, primary_key=True)
    webhook_id: int = Field(foreign_key="webhooks.id", index=True)
    event_id: int = Field(foreign_key="webhook_events.id")
    state: str = Field(max_length=16)  # pending | delivered | failed
    attempts: int = 0
    next_at: float  # when the next attempt is due (a claim moves it on)
    last_status: int | None = None  # the receiver's HTTP status
    last_error: str | None = Field(default=None, max_length=500)
    created_at: float
    delivered_at: float | None = None


class TemplateRow(SQLModel, table=True):
    """An OpenJD job template as a studio submitted it: its jobs, one per step, refer to
    it (``JobRow.template_id``), and it is read, listed and cancelled as one."""

    __tablename__ = "templates"

    id: int | None = Field(default=None, primary_key=True)
    studio_id: int = Field(foreign_key="studios.id", index=True)
    name: str = Field(max_length=200)  # the job's name, as the template resolved it
    parameters: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    submitted_at: float


class JobRow(SQLModel, table=True):
    """A job: what the studio submitted, and where the farm has got with it.

    The submitted fields are declared, documented and validated once, on
    ``scheduler.usecases.submissions.JobFields``; ``JobRequest.columns`` fills these columns
    from them (a column named like a field takes its value) and ``JobRequest.fields_of``
    reads them back.
    """

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_studio_state", "studio_id", "state"),
        Index("ix_jobs_studio_show", "studio_id", "show"),
    )

    id: int | None = Field(default=None, primary_key=True)
    studio_id: int = Field(foreign_key="studios.id")
    name: str = Field(max_length=200)
    frames: str  # the normalised frame spec
    frame_count: int
    chunk_size: int
    priority: int
    pool: str = Field(max_length=64)
    renderer: str = Field(max_length=32)
    renderer_settings: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    manifest_id: int | None = Field(default=None, foreign_key="manifests.id")
    # What the renderer warned of (a missing texture), for the studio; at most 50.
    warnings: list[str] | None = Field(default=None, sa_column=Column(JSON))
    max_attempts: int
    max_failed_frames: int | None = None
    limits: list[str] = Field(default_factory=list, sa_column=Column(JSON))  # sorted
    min_cores: int = 0  # requirements.*: what a node must have
    min_memory_bytes: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    min_gpus: int = 0
    required_tags: list[str] = Field(default_factory=list, sa_column=Column(JSON))  # sorted
    # An OpenJD step's hostRequirements beyond those (scheduler/core/placement.py: Host).
    host_requirements: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    template_id: int | None = Field(default=None, foreign_key="templates.id", index=True)
    dependency_mode: str = Field("job", max_length=8)  # the field "dependency": job | frame
    on_dependency_failure: str = Field("wait", max_length=8)  # wait | fail
    timeout: float  # the job's, or the farm's default
    stall_timeout: float | None = None
    deadline: float | None = None  # when the studio needs it done
    # The placement policy's weights, {"time", "cost", "carbon"}; None: fastest.
    placement: dict[str, float] | None = Field(default=None, sa_column=Column(JSON))
    # A production's metadata (JobTerms.show ...), as submitted.
    show: str | None = Field(default=None, max_length=100)
    sequence: str | None = Field(default=None, max_length=100)
    shot: str | None = Field(default=None, max_length=100)
    artist: str | None = Field(default=None, max_length=100)
    state: str = Field(index=True, max_length=16)
    message: str | None = None
    suspended: bool = False
    cancelled: bool = False
    submitted_at: float
    started_at: float | None = None
    finished_at: float | None = None


class JobDependency(SQLModel, table=True):
    """Job ``job_id`` waits for job ``depends_on`` (as a whole, or frame by frame)."""

    __tablename__ = "job_dependencies"

    job_id: int = Field(foreign_key="jobs.id", primary_key=True)
    depends_on: int = Field(foreign_key="jobs.id", primary_key=True)


class ChunkRow(SQLModel, table=True):
    """A chunk of a job, or a block of its chunks not cut yet (``chunks`` > 1: only ever
    queued or cancelled; the scheduler cuts chunks off its front as it dispatches them,
    scheduler/core/chunks.py). A job's rows never overlap and ascend in frames as in
    position, so a frame's row is the last one starting at or before it."""

    __tablename__ = "chunks"
    __table_args__ = (
        Index("ix_chunks_job_state_position", "job_id", "state", "position"),
        Index("ix_chunks_pool_state", "pool", "state"),
        Index("ix_chunks_job_first_frame", "job_id", "first_frame"),
    )

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="jobs.id")
    position: int  # order within the job
    pool: str = Field(max_length=64)  # copied from the job: capacity counts need no join
    first_frame: int
    last_frame: int
    step: int
    frame_count: int
    chunks: int = Field(default=1, sa_column_kwargs={"server_default": "1"})  # a block's: > 1
    state: str = Field(max_length=16)
    attempts: int = 0  # attempts made; the current attempt's number
    retry_base: int = 0  # attempts made before the last operator retry
    # Failed attempts since the last retry: the budget ``max_attempts`` bounds. Attempts
    # re-sent because a node was lost or a message never claimed are not failures.
    failures: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    node: str | None = None
    not_before: float | None = None
    dispatched_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None

    def frames(self) -> list[int]:
        return list(self.frame_range())

    def frame_range(self) -> FrameRange:
        return FrameRange(self.first_frame, self.last_frame, self.step)


class AttemptRow(SQLModel, table=True):
    __tablename__ = "attempts"
    __table_args__ = (
        UniqueConstraint("chunk_id", "number"),
        Index("ix_attempts_state", "state"),
    )

    id: int | None = Field(default=None, primary_key=True)
    chunk_id: int = Field(foreign_key="chunks.id")
    job_id: int = Field(foreign_key="jobs.id", index=True)
    number: int
    pool: str = Field(max_length=64)
    state: str = Field(max_length=16)
    node: str | None = None
    dispatched_at: float
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    error: str | None = None
    energy_joules: float | None = None  # IT energy the attempt used, failed or not
    # The Celery task id of the bundle that carried it (scheduler/core/bundles.py);
    # None: it went alone, as ``task_id_for(chunk_id, number)``.
    message: str | None = None


class FrameResultRow(SQLModel, table=True):
    """One row per rendered frame, written once: (job, frame) is unique.

    The bill of a frame is computed once, when it is ingested, with its region's
    figures of that moment: a later change of price or PUE does not rewrite old bills.
    Energy columns are None where the node could not meter the frame.
    """

    __tablename__ = "frame_results"
    __table_args__ = (
        UniqueConstraint("job_id", "frame"),
        Index("ix_frame_results_studio_day", "studio_id", "day"),
    )

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="jobs.id")
    studio_id: int = Field(foreign_key="studios.id")
    chunk_id: int = Field(foreign_key="chunks.id", index=True)
    frame: int
    attempt: int
    node: str
    pool: str = Field(max_length=64)
    output: str | None = None  # relative to the storage root
    output_bytes: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    render_seconds: float
    cpu_seconds: float
    finished_at: float
    day: date = Field(sa_column=Column(Date, nullable=False))  # in the billing time zone
    region: str = Field(max_length=64)
    energy_method: str | None = Field(default=None, max_length=32)  # rapl, nvml, model, ...
    it_joules: float | None = None  # what the node's meter says the frame used
    facility_joules: float | None = None  # x the region's PUE
    cost: float | None = None  # in the farm's currency
    co2_grams: float | None = None
    # The region's figures it was billed with, at its finish (they change over the day).
    pue: float | None = None
    price_per_kwh: float | None = None
    carbon_g_per_kwh: float | None = None
    # The same IT energy in the studio's home region at the job's submission (what the
    # placement saved is the difference); None where the studio names no home region.
    baseline_facility_joules: float | None = None
    baseline_cost: float | None = None
    baseline_co2_grams: float | None = None


class FrameTotal(SQLModel, table=True):
    """A running total of the frames rendered in a (pool, region, energy method): one
    measure (frames, render seconds, a histogram bucket...; scheduler/core/rollups.py),
    changed with the frame rows in their transaction, read by /metrics."""

    __tablename__ = "frame_totals"

    pool: str = Field(primary_key=True, max_length=64)
    region: str = Field(primary_key=True, max_length=64)
    method: str = Field(primary_key=True, max_length=32)  # "" where not metered
    measure: str = Field(primary_key=True, max_length=64)
    value: float = 0.0


class AttemptTotal(SQLModel, table=True):
    """A running total of the attempts that ended in a pool: one measure (ended,
    failed, the energy of each outcome; scheduler/core/rollups.py), changed in the
    transaction that ends them, read by /metrics."""

    __tablename__ = "attempt_totals"

    pool: str = Field(primary_key=True, max_length=64)
    measure: str = Field(primary_key=True, max_length=64)
    value: float = 0.0


class Region(SQLModel, table=True):
    """Where nodes stand, as the operator sets it: PUE, price and grid carbon."""

    __tablename__ = "regions"

    name: str = Field(primary_key=True, max_length=64)
    pue: float
    price_per_kwh: float
    carbon_g_per_kwh: float
    source: str = ""  # where the figures come from
    updated_at: float
    # Over the day, in local hours (scheduler/core/signals.py): [[from_hour, price], ...]
    # in place of price_per_kwh, [[from_hour, gCO2/kWh], ...] in place of carbon_g_per_kwh.
    tariff: list[list[float]] | None = Field(default=None, sa_column=Column(JSON))
    carbon_profile: list[list[float]] | None = Field(default=None, sa_column=Column(JSON))
    utc_offset_hours: float = Field(default=8.0, sa_column_kwargs={"server_default": "8"})
    # A carbon feed's forecast (scheduler/dispatch/carbon_feed.py): [[start, seconds,
    # gCO2/kWh], ...], over the profile where it has values; when it last came; and the
    # feed's name for the region (None: the region's own).
    feed_location: str | None = Field(default=None, max_length=64)
    forecast: list[list[float]] | None = Field(default=None, sa_column=Column(JSON))
    forecast_at: float | None = None


class RegionLink(SQLModel, table=True):
    """The network between two regions (a studio's and a render region), the same both
    ways: stored once, under the names in order (``region_a`` < ``region_b``)."""

    __tablename__ = "region_links"

    region_a: str = Field(primary_key=True, max_length=64)
    region_b: str = Field(primary_key=True, max_length=64)
    bandwidth_mbps: float
    latency_ms: float  # one way
    price_per_gb: float  # in the farm's currency, per 10^9 bytes moved
    source: str = ""
    updated_at: float


class NodeRow(SQLModel, table=True):
    __tablename__ = "nodes"
    # Half-full pages: every heartbeat updates its row (migration 0024).
    __table_args__ = {"postgresql_with": {"fillfactor": 50}}

    name: str = Field(primary_key=True, max_length=200)
    pool: str = Field(max_length=64, index=True)
    hostname: str = Field(max_length=255)
    slots: int
    running: int = 0
    cores: int
    memory_bytes: int = Field(sa_column=Column(BigInteger, nullable=False))
    gpus: int = 0
    tags: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    # What OpenJD's hostRequirements are matched against: {"amounts": {name: number},
    # "attributes": {name: [values]}}, as the node detected and was told (placement.py).
    capabilities: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    region: str = Field(default="", max_length=64)
    energy_method: str | None = Field(default=None, max_length=32)
    power_watts: float = 0.0  # IT power over the last sampling interval
    # online | leaving | left (the node's own say: NodeLife) | lost (silent for the timeout)
    state: str = Field(max_length=16)
    # An operator's say: enabled; draining (running chunks finish, none new); disabled
    # (none new, its running chunks go to other nodes at once).
    admin: str = Field(
        default="enabled", max_length=16, sa_column_kwargs={"server_default": "enabled"}
    )
    # Chunks one Celery message may carry to it (scheduler/core/bundles.py): as it
    # reports; 1 for a node of a renderfarm that reports nothing of it (migration 0025).
    bundle: int = Field(default=1, sa_column_kwargs={"server_default": "1"})
    last_heartbeat: float
    registered_at: float


class BlobRow(SQLModel, table=True):
    """A content the farm stores, once, by its SHA-256 (scheduler/core/assets.py)."""

    __tablename__ = "blobs"

    hash: str = Field(primary_key=True, max_length=64)
    size: int = Field(sa_column=Column(BigInteger, nullable=False))
    stored_at: float


class StudioBlob(SQLModel, table=True):
    """A content a studio sent: what it may name in its manifests and is charged for.

    Two studios that send the same content each have a row and each pay for it; the
    farm keeps it once. A studio never learns what other studios sent.

    A claim is charged first and ``stored`` once the content is in the storage: until
    then the studio does not have it (it is asked for it again, cannot name it), so a
    storage that failed, or a process that died, between the two leaves no claim on
    a content that is not there; collection removes such claims.
    """

    __tablename__ = "studio_blobs"

    studio_id: int = Field(foreign_key="studios.id", primary_key=True)
    hash: str = Field(foreign_key="blobs.hash", primary_key=True, max_length=64, index=True)
    size: int = Field(sa_column=Column(BigInteger, nullable=False))
    added_at: float
    stored: bool = True


class ManifestRow(SQLModel, table=True):
    """The files a job needs, as a studio described them: a tree of paths to contents."""

    __tablename__ = "manifests"

    id: int | None = Field(default=None, primary_key=True)
    studio_id: int = Field(foreign_key="studios.id", index=True)
    files: int
    size: int = Field(sa_column=Column(BigInteger, nullable=False))
    created_at: float


class ManifestFile(SQLModel, table=True):
    __tablename__ = "manifest_files"
    __table_args__ = (Index("ix_manifest_files_hash", "hash"),)

    manifest_id: int = Field(foreign_key="manifests.id", primary_key=True)
    path: str = Field(primary_key=True, max_length=1024)
    hash: str = Field(max_length=64)
    size: int = Field(sa_column=Column(BigInteger, nullable=False))
    mtime: float = 0.0


class IdempotencyRow(SQLModel, table=True):
    """A studio's ``Idempotency-Key`` and the first answer given to it
    (scheduler/usecases/idempotency.py).

    Written in the transaction of what the request created, so the two are committed
    together or not at all; (studio, key) is unique, so two requests with one key
    cannot both commit. Kept for a retention (24 h), then deleted.
    """

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        UniqueConstraint("studio_id", "key"),
        Index("ix_idempotency_keys_studio_created", "studio_id", "created_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    studio_id: int = Field(foreign_key="studios.id")
    key: str = Field(max_length=255)  # the client's, printable ASCII
    method: str = Field(max_length=8)
    path: str = Field(max_length=255)
    request_hash: str = Field(max_length=64)  # SHA-256 of the body, as canonical JSON
    status_code: int
    response: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))  # the body sent
    created_at: float
