"""Request and response bodies of the REST API (the JobCreate / JobPublic family).

Requests forbid unknown fields, so a typo ("priorty") is a 422 naming the field
instead of a silently ignored setting. Renderer settings are a union told apart by
``kind``: an unknown renderer is a 422 that lists the known ones.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from scheduler.core.dependencies import DependencyMode, OnDependencyFailure
from scheduler.core.energy import JOULES_PER_KWH
from scheduler.core.states import JobState
from scheduler.usecases.billing import EnergyTotals
from scheduler.usecases.jobs import FrameStatus, JobDetail


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BuiltinRenderer(_Request):
    """The built-in ray tracer: needs nothing installed on the nodes."""

    kind: Literal["builtin"]
    width: int = Field(320, ge=16, le=7680)
    height: int = Field(180, ge=16, le=4320)
    samples: int = Field(1, ge=1, le=64, description="rays per pixel (anti-aliasing)")


class NoopRenderer(_Request):
    """Renders nothing: for benchmarks and tests of the farm itself."""

    kind: Literal["noop"]
    sleep: float = Field(0.0, ge=0.0, le=3600.0, description="seconds per frame")


RendererSpec = Annotated[BuiltinRenderer | NoopRenderer, Field(discriminator="kind")]


class NodeRequirements(_Request):
    """What a render node must have to render the job."""

    cores: int = Field(0, ge=0, le=4096)
    memory_gb: float = Field(0, ge=0, le=65536)
    gpus: int = Field(0, ge=0, le=64)
    tags: list[str] = Field(default_factory=list, max_length=32, description="all required")


class JobCreate(_Request):
    name: str = Field(min_length=1, max_length=200)
    frames: str = Field(
        min_length=1,
        max_length=10_000,
        description="frames to render: 1-240, 1-100x2,150, 1,5,9 or OpenJD 1-100:2",
        examples=["1-240"],
    )
    chunk_size: int = Field(1, ge=1, description="frames per chunk (one renderer command)")
    priority: int = Field(50, ge=0, le=100, description="0 lowest, 100 highest")
    pool: str = Field("cpu", min_length=1, max_length=64)
    renderer: RendererSpec
    max_attempts: int | None = Field(None, ge=1, le=100)
    max_failed_frames: int | None = Field(
        None, ge=1, description="stop the job once this many frames failed every attempt"
    )
    timeout: float | None = Field(
        None, gt=0, le=7 * 24 * 3600, description="render time limit per frame, seconds"
    )
    stall_timeout: float | None = Field(
        None, gt=0, le=24 * 3600, description="kill a renderer silent for this many seconds"
    )
    limits: list[str] = Field(
        default_factory=list,
        max_length=16,
        description="named farm-wide limits (licences) each chunk takes one of",
    )
    requirements: NodeRequirements = Field(default_factory=NodeRequirements)
    depends_on: list[int] = Field(
        default_factory=list, max_length=32, description="jobs of this studio to wait for"
    )
    dependency: DependencyMode = Field(
        DependencyMode.JOB, description="job: start when they are done; frame: frame by frame"
    )
    on_dependency_failure: OnDependencyFailure = Field(
        OnDependencyFailure.WAIT, description="wait (visibly) or fail when one of them fails"
    )


class JobPatch(_Request):
    priority: int = Field(ge=0, le=100)


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

    @classmethod
    def of(cls, totals: EnergyTotals, currency: str) -> EnergyPublic:
        n = totals.metered_frames
        return cls(
            **_figures(totals, 1).model_dump(),
            currency=currency,
            frames_metered=n,
            render_seconds=totals.render_seconds,
            per_frame=_figures(totals, n) if n else None,
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


class JobPublic(BaseModel):
    id: int
    name: str
    state: JobState
    message: str | None
    frames: str
    frame_count: int
    chunk_size: int
    priority: int
    pool: str
    renderer: dict[str, Any]
    max_attempts: int
    max_failed_frames: int | None
    timeout: float
    stall_timeout: float | None
    limits: list[str]
    requirements: NodeRequirements
    depends_on: list[int]
    dependency: DependencyMode
    on_dependency_failure: OnDependencyFailure
    submitted_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress: Progress
    energy: EnergyPublic

    @classmethod
    def of(cls, detail: JobDetail) -> JobPublic:
        job, p = detail.job, detail.progress
        assert job.id is not None
        return cls(
            id=job.id,
            name=job.name,
            state=JobState(job.state),
            message=job.message,
            frames=job.frames,
            frame_count=job.frame_count,
            chunk_size=job.chunk_size,
            priority=job.priority,
            pool=job.pool,
            renderer={"kind": job.renderer, **job.renderer_settings},
            max_attempts=job.max_attempts,
            max_failed_frames=job.max_failed_frames,
            timeout=job.timeout,
            stall_timeout=job.stall_timeout,
            limits=list(job.limits or ()),
            requirements=NodeRequirements(
                cores=job.min_cores,
                memory_gb=job.min_memory_bytes / 2**30,
                gpus=job.min_gpus,
                tags=list(job.required_tags or ()),
            ),
            depends_on=detail.depends_on,
            dependency=DependencyMode(job.dependency_mode),
            on_dependency_failure=OnDependencyFailure(job.on_dependency_failure),
            submitted_at=_time(job.submitted_at),
            started_at=_time(job.started_at),
            finished_at=_time(job.finished_at),
            progress=Progress(
                frames_total=p.frames_total,
                frames_done=p.frames_done,
                frames_running=p.frames_running,
                frames_failed=p.frames_failed,
                frames_queued=p.frames_queued,
                frames_cancelled=p.frames_cancelled,
            ),
            energy=EnergyPublic.of(detail.energy, detail.currency),
        )


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

    @classmethod
    def of(cls, job_id: int, status: FrameStatus) -> FramePublic:
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
        )


class NodePublic(BaseModel):
    name: str
    pool: str
    state: str
    hostname: str
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


class Problem(BaseModel):
    """The body of every error response."""

    detail: str | list[dict[str, Any]]


def _time(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)
