"""What a studio submits: a job's fields, each declared once with its type, range and
meaning (``JobFields``), the submission (``JobRequest``, whose renderer is one of the
registry's) and the node requirements; and how they map to the job's columns.

The API's JobCreate and JobPublic derive from these; ``submit_job`` fills the job row
from ``JobRequest.columns()``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError

from scheduler.core.bounds import (
    COUNT_MAX,
    FRAME_SPEC_MAX,
    ID_MAX,
    NAME_MAX,
    POOL_MAX,
    TAG_MAX,
    TEXT_PATTERN,
    text_problem,
)
from scheduler.core.dependencies import DependencyMode, OnDependencyFailure
from scheduler.core.siting import FASTEST, POLICIES, PlacementPolicy
from scheduler.db import JobRow
from scheduler.wire.renderers import GPU_DEVICES, BlenderRenderer, RendererSpec, field_error

GIB = 2**30  # requests give memory in GiB; the table keeps bytes


def _storable(value: str) -> str:
    problem = text_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


@dataclass(frozen=True, slots=True)
class _NoNulNoSurrogate:
    """Says in the JSON schema what ``_storable`` refuses (pydantic's own regex engine
    cannot hold a surrogate, so the check itself is Python's)."""

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {**handler(core_schema), "pattern": TEXT_PATTERN}


def _no_bool(value: object) -> object:
    if isinstance(value, bool | str):
        raise PydanticCustomError("int_type", "Input should be a valid integer, not {kind}", {
            "kind": "true or false" if isinstance(value, bool) else "a string"
        })  # fmt: skip
    return value


# The request types within the bounds of scheduler/core/bounds.py: text the database
# can store, finite floats, and integers that fit their columns. JSON's true and false
# are not the numbers 1 and 0; 3.0 is the integer 3. (A constraint goes before the
# validator, so that the JSON schema says minimum and maximum.)
Text = Annotated[str, AfterValidator(_storable), _NoNulNoSurrogate()]
Finite = Annotated[float, Field(allow_inf_nan=False)]
Count = Annotated[int, Field(ge=1, le=COUNT_MAX), BeforeValidator(_no_bool)]
Amount = Annotated[int, Field(ge=0, le=COUNT_MAX), BeforeValidator(_no_bool)]  # 0 allowed
RowRef = Annotated[int, Field(ge=1, le=ID_MAX), BeforeValidator(_no_bool)]
Label = Annotated[Text, Field(min_length=1, max_length=POOL_MAX)]  # a pool's, a limit's name
METADATA_MAX = 100
Metadata = Annotated[Text, Field(min_length=1, max_length=METADATA_MAX)]  # a show's name...
METADATA = ("show", "sequence", "shot", "artist")  # a job's production metadata fields
Tag = Annotated[Text, Field(min_length=1, max_length=TAG_MAX)]
Priority = Annotated[
    int, Field(ge=0, le=100), BeforeValidator(_no_bool), Field(description="0 lowest, 100 highest")
]
RendererT = TypeVar("RendererT")


class NodeRequirements(BaseModel):
    """What a render node must have to render the job."""

    model_config = ConfigDict(extra="forbid")

    cores: int = Field(0, ge=0, le=4096)
    memory_gb: Finite = Field(0, ge=0, le=65536)
    gpus: int = Field(0, ge=0, le=64)
    tags: list[Tag] = Field(default_factory=list, max_length=32, description="all required")

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


PolicyName = Literal["fastest", "cheapest", "greenest"]


class PlacementWeights(BaseModel):
    """Weights between finishing soon, cost and grid carbon (at least one above 0)."""

    model_config = ConfigDict(extra="forbid")

    time: Finite = Field(0.0, ge=0, le=1000)
    cost: Finite = Field(0.0, ge=0, le=1000)
    carbon: Finite = Field(0.0, ge=0, le=1000)

    @model_validator(mode="after")
    def _some_weight(self) -> PlacementWeights:
        if self.time + self.cost + self.carbon <= 0:
            raise ValueError("give at least one weight above 0")
        return self


def placement_shown(weights: dict[str, float] | None) -> PolicyName | dict[str, float]:
    """A job's stored placement as the studio gave it: a policy's name, else weights."""
    if weights is None:
        return "fastest"
    policy = PlacementPolicy(**weights)
    named = [name for name, known in POLICIES.items() if known == policy]
    return named[0] if named else dict(weights)  # type: ignore[return-value]


class JobTerms(BaseModel):
    """How the farm runs a job's chunks, whatever makes them: the fields a job
    (``JobFields``) and an OpenJD template's jobs (``TemplateRequest``) share."""

    model_config = ConfigDict(extra="forbid")

    chunk_size: Count = Field(1, description="frames per chunk (one renderer command)")
    priority: Priority = 50
    pool: Label = "cpu"
    max_attempts: int | None = Field(None, ge=1, le=100)
    max_failed_frames: Count | None = Field(
        None, description="stop the job once this many frames failed every attempt"
    )
    timeout: Finite | None = Field(
        None, gt=0, le=7 * 24 * 3600, description="render time limit per frame, seconds"
    )
    stall_timeout: Finite | None = Field(
        None, gt=0, le=24 * 3600, description="kill a renderer silent for this many seconds"
    )
    limits: list[Label] = Field(
        default_factory=list,
        max_length=16,
        description="named farm-wide limits (licences) each chunk takes one of",
    )
    depends_on: list[RowRef] = Field(
        default_factory=list, max_length=32, description="jobs of this studio to wait for"
    )
    manifest: RowRef | None = Field(
        None,
        description="the files the job needs, laid out in its folder on every node "
        "(POST /v1/manifests); the renderer's paths are relative to that folder",
    )
    deadline: AwareDatetime | None = Field(
        None,
        description="when the studio needs it done (with a time zone): a job placed for "
        "cost or carbon may wait for a cheaper or cleaner window, and starts in time",
    )
    placement: PolicyName | PlacementWeights = Field(
        "fastest",
        description="fastest (the emptiest node, now), cheapest or greenest (the region "
        "and hour with the lowest cost or grid carbon per frame), or weights between them",
    )
    # What the job is for, as a production tracks it: shown, listed and filtered by
    # (GET /v1/jobs?show=...&shot=...), never interpreted by the farm.
    show: Metadata | None = Field(None, description="the film or series", examples=["Mulan"])
    sequence: Metadata | None = Field(None, description="its sequence", examples=["sq010"])
    shot: Metadata | None = Field(None, description="its shot", examples=["sh020"])
    artist: Metadata | None = Field(None, description="who submitted it", examples=["li.wei"])

    def placement_columns(self) -> dict[str, Any]:
        """The job's deadline (seconds since the epoch) and placement weights (None:
        fastest)."""
        placement = self.placement
        weights = (
            POLICIES[placement]
            if isinstance(placement, str)
            else PlacementPolicy(placement.time, placement.cost, placement.carbon)
        )
        return {
            "deadline": self.deadline.timestamp() if self.deadline is not None else None,
            "placement": None if weights == FASTEST else dataclasses.asdict(weights),
        }


class JobFields(JobTerms, Generic[RendererT]):
    """A job's fields as a studio submits them: each declared once, with its type, range
    and meaning. ``JobRequest`` (the API's JobCreate) accepts them; the API's JobPublic
    shows them as stored, beside what the farm adds. Requests forbid unknown fields, so
    a typo ("priorty") is an error naming the field instead of an ignored setting.
    """

    name: Text = Field(min_length=1, max_length=NAME_MAX)
    frames: Text = Field(
        min_length=1,
        max_length=FRAME_SPEC_MAX,
        description="frames to render: 1-240, 1-100x2,150, 1,5,9 or OpenJD 1-100:2",
        examples=["1-240"],
    )
    renderer: RendererT
    requirements: NodeRequirements = Field(default_factory=NodeRequirements)
    dependency: DependencyMode = Field(
        DependencyMode.JOB, description="job: start when they are done; frame: frame by frame"
    )
    on_dependency_failure: OnDependencyFailure = Field(
        OnDependencyFailure.WAIT, description="wait (visibly) or fail when one of them fails"
    )


# The fields whose columns are named or shaped otherwise (see JobRequest.columns).
_RENAMED = {
    "renderer", "requirements", "depends_on", "dependency", "manifest", "deadline", "placement"
}  # fmt: skip


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
            **self.placement_columns(),
            **self.requirements.columns(),
        }

    @staticmethod
    def fields_of(job: JobRow) -> dict[str, Any]:
        """The inverse of ``columns``: the job's columns, with the submitted fields under
        their own names (as the farm resolved them), for a ``JobFields`` model that
        ignores the other columns. ``depends_on`` is not a column: the caller adds it."""
        return {
            **job.model_dump(),
            "renderer": _renderer_shown(job),
            "limits": list(job.limits or ()),
            "dependency": job.dependency_mode,
            "requirements": NodeRequirements.of(job),
            "manifest": job.manifest_id,
            "deadline": (
                dt.datetime.fromtimestamp(job.deadline, dt.UTC)
                if job.deadline is not None
                else None
            ),
            "placement": placement_shown(job.placement),
        }


def _renderer_shown(job: JobRow) -> dict[str, Any]:
    """A job's renderer as the studio reads it: kind and settings; an OpenJD step's
    without its template, which its template's page shows once (GET /v1/templates/ID)."""
    if job.renderer == "openjd":
        shown = {k: v for k, v in job.renderer_settings.items() if k != "template"}
        return {"kind": job.renderer, **shown}
    return {"kind": job.renderer, **job.renderer_settings}


def _moment(seconds: float | None) -> dt.datetime | None:
    return None if seconds is None else dt.datetime.fromtimestamp(seconds, dt.UTC)
