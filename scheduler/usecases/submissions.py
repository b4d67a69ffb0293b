"""What a studio submits: a job's fields, each declared once with its type, range and
meaning (``JobFields``), the submission (``JobRequest``, whose renderer is one of the
registry's) and the node requirements; and how they map to the job's columns.

The API's JobCreate and JobPublic derive from these; ``submit_job`` fills the job row
from ``JobRequest.columns()``.
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from scheduler.core.dependencies import DependencyMode, OnDependencyFailure
from scheduler.db import JobRow
from scheduler.wire.renderers import GPU_DEVICES, BlenderRenderer, RendererSpec, field_error

GIB = 2**30  # requests give memory in GiB; the table keeps bytes

# Strict: JSON's true and false are not priorities 1 and 0.
Priority = Annotated[int, Field(ge=0, le=100, strict=True, description="0 lowest, 100 highest")]
RendererT = TypeVar("RendererT")


class NodeRequirements(BaseModel):
    """What a render node must have to render the job."""

    model_config = ConfigDict(extra="forbid")

    cores: int = Field(0, ge=0, le=4096)
    memory_gb: float = Field(0, ge=0, le=65536)
    gpus: int = Field(0, ge=0, le=64)
    tags: list[str] = Field(default_factory=list, max_length=32, description="all required")

    def columns(self) -> dict[str, Any]:
        """The job's columns for these requirements."""
        return {
            "min_cores": self.cores,
            "min_memory_bytes": int(self.memory_gb * GIB),
            "min_gpus": self.gpus,
            "required_tags": sorted(set(self.tags)),
        }

    @classmethod
    def of(cls, job: JobRow) -> NodeRequirements:
        """The inverse of ``columns``: a job's requirements as submitted."""
        return cls(
            cores=job.min_cores,
            memory_gb=job.min_memory_bytes / GIB,
            gpus=job.min_gpus,
            tags=list(job.required_tags or ()),
        )


class JobFields(BaseModel, Generic[RendererT]):
    """A job's fields as a studio submits them: each declared once, with its type, range
    and meaning. ``JobRequest`` (the API's JobCreate) accepts them; the API's JobPublic
    shows them as stored, beside what the farm adds. Requests forbid unknown fields, so
    a typo ("priorty") is an error naming the field instead of an ignored setting.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    frames: str = Field(
        min_length=1,
        max_length=10_000,
        description="frames to render: 1-240, 1-100x2,150, 1,5,9 or OpenJD 1-100:2",
        examples=["1-240"],
    )
    chunk_size: int = Field(1, ge=1, description="frames per chunk (one renderer command)")
    priority: Priority = 50
    pool: str = Field("cpu", min_length=1, max_length=64)
    renderer: RendererT
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
    manifest: int | None = Field(
        None,
        ge=1,
        le=2**31 - 1,
        description="the files the job needs, laid out in its folder on every node "
        "(POST /v1/manifests); the renderer's paths are relative to that folder",
    )


# The fields whose columns are named or shaped otherwise (see JobRequest.columns).
_RENAMED = {"renderer", "requirements", "depends_on", "dependency", "manifest"}


class JobRequest(JobFields[RendererSpec]):
    """A submission: the renderer is one of the registry's (scheduler/wire/renderers.py)."""

    @model_validator(mode="after")
    def _gpu_device_needs_gpus(self) -> JobRequest:
        """A renderer setting that depends on the requirements, which its model cannot see."""
        renderer = self.renderer
        if (
            isinstance(renderer, BlenderRenderer)
            and renderer.cycles_device in GPU_DEVICES
            and self.requirements.gpus < 1
        ):
            raise field_error(
                self, ("renderer", "cycles_device"),
                f"{renderer.cycles_device} renders on a GPU: require one (requirements.gpus)",
            )  # fmt: skip
        return self

    def columns(self) -> dict[str, Any]:
        """The job's columns for what was submitted: a column named like a field takes
        its value; the renderer is split into its kind and settings; sets are sorted.
        ``depends_on`` has a table of its own, and the columns the farm resolves
        (the normalised frames, defaults from the settings) are the caller's."""
        settings = self.renderer.model_dump(mode="json")
        return {
            **self.model_dump(mode="json", exclude=_RENAMED),
            "renderer": settings.pop("kind"),
            "renderer_settings": settings,
            "limits": sorted(set(self.limits)),
            "dependency_mode": self.dependency.value,
            "manifest_id": self.manifest,
            **self.requirements.columns(),
        }

    @staticmethod
    def fields_of(job: JobRow) -> dict[str, Any]:
        """The inverse of ``columns``: the job's columns, with the submitted fields under
        their own names (as the farm resolved them), for a ``JobFields`` model that
        ignores the other columns. ``depends_on`` is not a column: the caller adds it."""
        return {
            **job.model_dump(),
            "renderer": {"kind": job.renderer, **job.renderer_settings},
            "limits": list(job.limits or ()),
            "dependency": job.dependency_mode,
            "requirements": NodeRequirements.of(job),
            "manifest": job.manifest_id,
        }
