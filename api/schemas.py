"""Request and response bodies of the REST API (the JobCreate / JobPublic family).

A job's fields are declared once, on ``scheduler.usecases.submissions.JobFields``: JobCreate
and JobPublic derive from it. Requests forbid unknown fields, so a typo ("priorty") is
a 422 naming the field instead of a silently ignored setting. Renderer settings are a
union told apart by ``kind``, from the registry in scheduler/wire/renderers.py: an
unknown renderer is a 422 that lists the known ones.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal, Self

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, UrlConstraints

from scheduler.core.assets import ManifestEntry
from scheduler.core.bounds import BYTES_MAX, FRAME_SPEC_MAX, PATH_MAX
from scheduler.core.energy import JOULES_PER_KWH
from scheduler.core.states import JobState, overall_state
from scheduler.usecases.billing import EnergyTotals
from scheduler.usecases.jobs import FrameProgress, FrameStatus, JobDetail, TemplateDetail
from scheduler.usecases.submissions import (
    Amount,
    Count,
    Finite,
    JobFields,
    JobRequest,
    Priority,
    Text,
)
from scheduler.usecases.templates import TemplateRequest


class JobCreate(JobRequest):
    # The fields are declared once, on scheduler.usecases.submissions.JobFields; no docstring
    # here, which would become the schema's description.
    pass


class TemplateCreate(TemplateRequest):
    # Declared on scheduler.usecases.templates.TemplateRequest, beside the fields it
    # shares with jobs (JobTerms).
    pass


class JobPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    priority: Priority


class FramesChosen(BaseModel):
    model_config = ConfigDict(extra="forbid")

    frames: str = Field(min_length=1, max_length=FRAME_SPEC_MAX, examples=["12", "3,7-9"])


class Progress(BaseModel):
    frames_total: int
    frames_done: int
    frames_running: int
    frames_failed: int
    frames_queued: int
    frames_cancelled: int


class EnergyFigures(BaseModel):
    it_joules: float = Field(description="what the nodes' meters measured (or their model)")
    facility_joules: float = Field(description="IT energy x the region's PUE")
    facility_kwh: float
    cost: float = Field(description="of the facility energy, in `currency`")
    co2_grams: float = Field(description="grid CO2 for the facility energy")


class EnergyPublic(EnergyFigures):
    """A job's bill so far: the sum over its rendered frames, and the mean per frame."""

    currency: str
    frames_metered: int = Field(description="frames whose energy is known (all, normally)")
    render_seconds: float
    per_frame: EnergyFigures | None = Field(description="the mean of the metered frames")
    saved: Saved | None = Field(
        description="what the farm's placement saved against rendering the same frames "
        "at once in the studio's home region (null where the studio names none)"
    )

    @classmethod
    def of(cls, totals: EnergyTotals, currency: str) -> EnergyPublic:
        n = totals.metered_frames
        return cls(
            **_figures(totals, 1).model_dump(),
            currency=currency,
            frames_metered=n,
            render_seconds=totals.render_seconds,
            per_frame=_figures(totals, n) if n else None,
            saved=Saved.of(totals) if totals.baselined_frames else None,
        )


class Saved(BaseModel):
    """The baseline's facility energy, cost and carbon less the farm's, for the frames
    that have one (negative: the placement cost more)."""

    frames: int
    facility_kwh: float
    cost: float
    co2_grams: float

    @classmethod
    def of(cls, totals: EnergyTotals) -> Saved:
        return cls(
            frames=totals.baselined_frames,
            facility_kwh=(totals.baseline_facility_joules - totals.compared_facility_joules)
            / JOULES_PER_KWH,
            cost=totals.baseline_cost - totals.compared_cost,
            co2_grams=totals.baseline_co2_grams - totals.compared_co2_grams,
        )


def _figures(totals: EnergyTotals, frames: int) -> EnergyFigures:
    return EnergyFigures(
        it_joules=totals.it_joules / frames,
        facility_joules=totals.facility_joules / frames,
        facility_kwh=totals.facility_joules / JOULES_PER_KWH / frames,
        cost=totals.cost / frames,
        co2_grams=totals.co2_grams / frames,
    )


class UsageDay(EnergyFigures):
    day: date
    frames: int
    frames_metered: int
    render_seconds: float

    @classmethod
    def of(cls, day: date, totals: EnergyTotals) -> UsageDay:
        return cls(
            **_figures(totals, 1).model_dump(),
            day=day,
            frames=totals.frames,
            frames_metered=totals.metered_frames,
            render_seconds=totals.render_seconds,
        )


class UsagePublic(BaseModel):
    """A studio's usage per billing day (in ``timezone``), days with frames only."""

    studio: str
    currency: str
    timezone: str
    days: list[UsageDay]
    total: UsageDay | None = Field(description="all the days listed; `day` is the last one")


class JobPublic(JobFields[dict[str, Any]]):
    # The submitted fields as stored (with the defaults the farm filled in), beside what
    # the farm adds. Every field is in every response, so the schema requires them all.
    model_config = ConfigDict(extra="ignore", json_schema_serialization_defaults_required=True)

    id: int
    state: JobState
    message: str | None
    warnings: list[str] = Field(description="what the renderer warned of: a missing texture")
    frame_count: int
    max_attempts: int
    timeout: float
    submitted_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress: Progress
    energy: EnergyPublic
    template: int | None = Field(
        description="the OpenJD template whose step this job is (GET /v1/templates/{id})"
    )

    @classmethod
    def of(cls, detail: JobDetail) -> JobPublic:
        job = detail.job
        return cls.model_validate(
            {
                **JobRequest.fields_of(job),
                "depends_on": detail.depends_on,
                "template": job.template_id,
                "warnings": job.warnings or [],
                "submitted_at": _time(job.submitted_at),
                "started_at": _time(job.started_at),
                "finished_at": _time(job.finished_at),
                "progress": Progress.model_validate(detail.progress, from_attributes=True),
                "energy": EnergyPublic.of(detail.progress.energy, detail.currency),
            }
        )


class TemplatePublic(BaseModel):
    """An OpenJD template as submitted, and its jobs: one per step, in its order, each
    with the step's name and the jobs of the steps it waits for (``depends_on``)."""

    id: int
    name: str = Field(description="the template's job name, as its parameters resolved it")
    parameters: dict[str, Any]
    template: dict[str, Any] | str = Field(description="the template as submitted")
    submitted_at: datetime
    state: JobState = Field(description="failed if a job failed; else done once all are")
    jobs: list[JobPublic]

    @classmethod
    def of(cls, detail: TemplateDetail) -> TemplatePublic:
        template = detail.template
        assert template.id is not None
        states = [JobState(d.job.state) for d in detail.jobs]
        return cls(
            id=template.id,
            name=template.name,
            parameters=template.parameters or {},
            template=detail.jobs[0].job.renderer_settings.get("template", {}),
            submitted_at=_time(template.submitted_at),
            state=overall_state(states),
            jobs=[JobPublic.of(d) for d in detail.jobs],
        )


class TemplatePage(BaseModel):
    items: list[TemplatePublic]
    total: int
    limit: int
    offset: int


class JobPage(BaseModel):
    items: list[JobPublic]
    total: int
    limit: int
    offset: int


class FramePublic(BaseModel):
    frame: int
    state: str
    node: str | None
    attempt: int
    render_seconds: float | None
    cpu_seconds: float | None
    energy_joules: float | None = Field(description="IT energy; None until rendered, or unmetered")
    energy_method: str | None = Field(description="rapl, nvml, model, or a sum: rapl+nvml")
    facility_joules: float | None
    cost: float | None
    co2_grams: float | None
    output_url: str | None
    log_url: str | None
    progress: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="how much of a running frame is rendered, 0 to 1, from the samples its "
        "renderer reports (Blender's) or its task's openjd_progress (OpenJD's); null when not "
        "running or unknown",
    )
    error: str | None = Field(
        None,
        description="why the last attempt at it failed (an OpenJD task's openjd_fail line, a "
        "renderer's exit), while it is not rendered",
    )
    status_line: str | None = Field(
        None,
        description="what a running frame's renderer last said it is doing (an OpenJD task's "
        "openjd_status line); null when not running or it said nothing",
    )

    @classmethod
    def of(
        cls, job_id: int, status: FrameStatus, progress: FrameProgress | None = None
    ) -> FramePublic:
        base = f"/v1/jobs/{job_id}/frames/{status.frame}"
        return cls(
            frame=status.frame,
            state=status.state,
            node=status.node,
            attempt=status.attempt,
            render_seconds=status.render_seconds,
            cpu_seconds=status.cpu_seconds,
            energy_joules=status.energy_joules,
            energy_method=status.energy_method,
            facility_joules=status.facility_joules,
            cost=status.cost,
            co2_grams=status.co2_grams,
            output_url=f"{base}/output" if status.output else None,
            log_url=f"{base}/log" if status.log else None,
            progress=progress.fraction if progress is not None else None,
            status_line=progress.status_line if progress is not None else None,
            error=status.error,
        )


class NodePublic(BaseModel):
    name: str = Field(description="the name its operator gave it")
    pool: str
    state: str
    slots: int
    running: int
    cores: int
    memory_bytes: int
    gpus: int
    tags: list[str]
    region: str
    energy_method: str | None = Field(description="how the node meters energy; None: it does not")
    power_watts: float = Field(description="IT power over its last sampling interval")
    last_heartbeat: datetime
    admin: str = Field(
        "enabled",
        description="an operator's say: enabled; draining (finishes what it has, takes "
        "nothing new); disabled (takes nothing; its chunks went to other nodes)",
    )

    @classmethod
    def of(cls, node: Any) -> Self:
        own = [n for n in cls.model_fields if n != "last_heartbeat" and hasattr(node, n)]
        values = {n: getattr(node, n) for n in own}
        values["tags"] = list(node.tags or ())
        return cls(**values, last_heartbeat=datetime.fromtimestamp(node.last_heartbeat, UTC))


class Problem(BaseModel):
    """The body of every error response."""

    detail: str | list[dict[str, Any]]


# What a studio's routes may answer besides their own success (their routers' responses).
STUDIO_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "the body is not JSON (not even UTF-8)"},
    401: {"model": Problem},
    404: {"model": Problem},
    413: {"model": Problem, "description": "the body is larger than the farm takes"},
    422: {"model": Problem},
    429: {"model": Problem, "description": "past the studio's quota or request rate"},
}


def _time(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


# Scenes and their files ---------------------------------------------------------------

SHA256 = r"^[0-9a-f]{64}$"


class ManifestFileIn(BaseModel):
    """A file a job needs: where it goes in the job's folder, and its content."""

    model_config = ConfigDict(extra="forbid")

    path: Text = Field(min_length=1, max_length=PATH_MAX, examples=["shots/sq010/sh020.blend"])
    size: int = Field(ge=0, le=BYTES_MAX)
    hash: str = Field(pattern=SHA256, description="SHA-256 of the content, lowercase hex")
    mtime: Finite = Field(0.0, ge=0, le=2**40)

    def entry(self) -> ManifestEntry:
        return ManifestEntry(self.path, self.size, self.hash, self.mtime)


class ManifestIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    files: list[ManifestFileIn] = Field(min_length=1)  # at most max_manifest_files

    def entries(self) -> list[ManifestEntry]:
        return [f.entry() for f in self.files]


class MissingPublic(BaseModel):
    missing: list[str] = Field(description="contents to send (PUT /v1/blobs/<sha256>)")
    bytes: int


class BlobPublic(BaseModel):
    hash: str
    size: int


class BatchPublic(BaseModel):
    stored: list[BlobPublic]
    refused: list[dict[str, str]] = Field(description="name and reason of each refused member")


class ManifestPublic(BaseModel):
    id: int
    files: int
    size: int
    created_at: datetime

    @classmethod
    def of(cls, row: Any) -> ManifestPublic:
        return cls(
            id=row.id,
            files=row.files,
            size=row.size,
            created_at=datetime.fromtimestamp(row.created_at, UTC),
        )


class ManifestDetail(ManifestPublic):
    entries: list[ManifestFileIn]


# The admin API (/v1/admin): operators' views and changes -------------------------------


class RowView(BaseModel):
    """A view read straight off a row's attributes (seconds since the epoch become UTC
    datetimes): ``View.of(row)``."""

    model_config = ConfigDict(from_attributes=True)

    @classmethod
    def of(cls, row: Any) -> Self:
        return cls.model_validate(row)


class AdminNode(NodePublic):
    hostname: str = Field(description="the machine's name (operators only)")
    current: list[str] = Field(
        default_factory=list, description="the chunks it has now: job 12: 3-4 (running)"
    )

    @classmethod
    def with_chunks(cls, node: Any, current: dict[str, list[str]]) -> Self:
        return cls.of(node).model_copy(update={"current": current.get(node.name, [])})


class StudioAdmin(RowView):
    name: str
    weight: float
    allow_scene_scripts: bool
    allow_templates: bool
    max_queued_jobs: int | None
    max_queued_frames: int | None
    requests_per_second: int | None
    home_region: str | None
    created_at: datetime


class StudioCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[Text, Field(min_length=1, max_length=100)]
    weight: float = Field(1.0, gt=0, le=1e6, allow_inf_nan=False)
    allow_scene_scripts: bool = False
    allow_templates: bool | None = Field(None, description="default: the farm's")


class StudioCreated(BaseModel):
    studio: StudioAdmin
    key: str = Field(description="the studio's key: shown this once, kept only as a hash")


class StudioChange(BaseModel):
    """The studio's settings to change; those not given keep their value. A quota of
    null removes that bound (send the field to change it)."""

    model_config = ConfigDict(extra="forbid")

    weight: float | None = Field(None, gt=0, le=1e6, allow_inf_nan=False)
    allow_scene_scripts: bool | None = None
    allow_templates: bool | None = None
    max_queued_jobs: Count | None = None
    max_queued_frames: Count | None = None
    requests_per_second: Count | None = None
    home_region: Annotated[Text, Field(min_length=1, max_length=64)] | None = None


class PoolTerms(BaseModel):
    model_config = ConfigDict(extra="forbid")

    minimum: Amount = Field(0, description="slots guaranteed")
    maximum: Amount | None = Field(None, description="slots at most (burst)")


class KeyPublic(RowView):
    prefix: str = Field(description="the key's first characters: what names it")
    created_at: datetime
    revoked_at: datetime | None


class NewKey(BaseModel):
    key: str = Field(description="shown this once, kept only as a hash")


class LimitPublic(BaseModel):
    name: str
    capacity: int


class LimitChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    capacity: Amount


class RegionPublic(RowView):
    name: str
    pue: float
    price_per_kwh: float
    carbon_g_per_kwh: float
    tariff: list[list[float]] | None
    carbon_profile: list[list[float]] | None
    utc_offset_hours: float
    source: str


class RegionChange(BaseModel):
    """A region's figures to set; those not given keep their value. A ``tariff`` or
    ``carbon_profile`` ([[from_hour, value], ...], local hours from 0) replaces the flat
    price or carbon figure; an empty list goes back to it."""

    model_config = ConfigDict(extra="forbid")

    pue: float | None = Field(None, ge=1, le=10, allow_inf_nan=False)
    price_per_kwh: float | None = Field(None, ge=0, le=1000, allow_inf_nan=False)
    carbon_g_per_kwh: float | None = Field(None, ge=0, le=10_000, allow_inf_nan=False)
    source: Annotated[Text, Field(max_length=2000)] | None = None
    tariff: list[tuple[float, float]] | None = Field(None, max_length=48)
    carbon_profile: list[tuple[float, float]] | None = Field(None, max_length=48)
    utc_offset_hours: float | None = Field(None, ge=-12, le=14)


class LinkPublic(RowView):
    region_a: str
    region_b: str
    bandwidth_mbps: float
    latency_ms: float
    price_per_gb: float
    source: str


class LinkChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bandwidth_mbps: float = Field(gt=0, le=1e7, allow_inf_nan=False)
    latency_ms: float = Field(ge=0, le=60_000, allow_inf_nan=False)
    price_per_gb: float = Field(0.0, ge=0, le=1e4, allow_inf_nan=False)
    source: Annotated[Text, Field(max_length=2000)] | None = None


class AdminJob(BaseModel):
    id: int
    studio: str
    name: str
    state: str
    priority: int
    pool: str
    frame_count: int
    show: str | None
    sequence: str | None
    shot: str | None
    artist: str | None
    message: str | None
    submitted_at: datetime

    @classmethod
    def of(cls, job: Any, studio: str) -> Self:
        values = {
            name: getattr(job, name)
            for name in cls.model_fields
            if name not in ("studio", "submitted_at")
        }
        return cls(
            **values, studio=studio, submitted_at=datetime.fromtimestamp(job.submitted_at, UTC)
        )


class AdminJobPage(BaseModel):
    items: list[AdminJob]
    total: int
    limit: int
    offset: int


class AuditEntry(RowView):
    at: datetime
    actor_kind: str
    actor: str
    action: str
    target: str
    detail: dict[str, Any] | None


class AuditPage(BaseModel):
    items: list[AuditEntry]
    total: int
    limit: int
    offset: int


# Webhooks ----------------------------------------------------------------------------------

WebhookKind = Literal["job.done", "job.failed", "job.held", "frame.failed"]


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Annotated[AnyHttpUrl, UrlConstraints(max_length=2000)] = Field(
        description="where events are POSTed (http or https)"
    )
    events: list[WebhookKind] = Field(min_length=1, max_length=4)


class WebhookPublic(BaseModel):
    id: int
    url: str
    events: list[str]
    created_at: datetime
    secret: str | None = Field(
        None, description="signs each delivery (Renderfarm-Signature): shown once, at creation"
    )

    @classmethod
    def of(cls, hook: Any, secret: str | None = None) -> Self:
        return cls(
            id=hook.id,
            url=hook.url,
            events=list(hook.events or ()),
            created_at=datetime.fromtimestamp(hook.created_at, UTC),
            secret=secret,
        )


class DeliveryPublic(BaseModel):
    id: int
    event_id: str = Field(description="the same for every delivery of one event")
    type: str
    state: str = Field(description="pending, delivered or failed (retried for a day)")
    attempts: int
    last_status: int | None = Field(description="the receiver's last HTTP status")
    last_error: str | None
    next_attempt_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None

    @classmethod
    def of(cls, view: Any) -> Self:
        delivery, event = view.delivery, view.event

        def moment(seconds: float | None) -> datetime | None:
            return datetime.fromtimestamp(seconds, UTC) if seconds is not None else None

        return cls(
            id=delivery.id,
            event_id=event.event_id,
            type=event.kind,
            state=delivery.state,
            attempts=delivery.attempts,
            last_status=delivery.last_status,
            last_error=delivery.last_error,
            next_attempt_at=moment(delivery.next_at) if delivery.state == "pending" else None,
            created_at=datetime.fromtimestamp(delivery.created_at, UTC),
            delivered_at=moment(delivery.delivered_at),
        )


class DeliveryPage(BaseModel):
    items: list[DeliveryPublic]
    total: int
    limit: int
    offset: int
