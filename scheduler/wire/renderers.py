"""The renderers a job may name: each declares its settings here, once.

A renderer's settings are a pydantic model with ``kind: Literal["..."]``, listed in
``AnyRenderer``. Everything else is derived from that list:

- the API accepts ``renderer`` as ``RendererSpec``, a union told apart by ``kind``, and
  documents it in its OpenAPI schema; an unknown kind is a 422 worded by
  ``unknown_renderer``;
- the chunk message carries the kind and the settings (without ``kind``) as JSON;
- a render node looks its implementation up by kind (workers/renderers/) and reads the
  settings with the same model; a node without that kind refuses the attempt with
  ``unknown_renderer``, in the API's words.

Adding a renderer: its settings model here, in ``AnyRenderer``; its implementation in
workers/renderers/. Requests forbid unknown fields, so a typo in a setting is an
error naming it, not a silently ignored setting.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import PurePosixPath, PureWindowsPath
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

UNKNOWN_RENDERER = "no renderer '{tag}'; known renderers: {expected_tags}"


class RendererSettings(BaseModel):
    """What every renderer's settings have: the ``kind`` that names the renderer."""

    model_config = ConfigDict(extra="forbid")

    kind: str


class BuiltinRenderer(RendererSettings):
    """The built-in ray tracer: needs nothing installed on the nodes."""

    kind: Literal["builtin"]
    width: int = Field(320, ge=16, le=7680)
    height: int = Field(180, ge=16, le=4320)
    samples: int = Field(1, ge=1, le=64, description="rays per pixel (anti-aliasing)")


class NoopRenderer(RendererSettings):
    """Renders nothing: for benchmarks and tests of the farm itself."""

    kind: Literal["noop"]
    sleep: float = Field(0.0, ge=0.0, le=3600.0, description="seconds per frame")


def _relative_scene(path: str) -> str:
    """A scene's path as a job may give it: relative, inside the job's files."""
    posix = PurePosixPath(path)
    if "\0" in path or "\\" in path:
        problem = "must not contain NUL or backslashes (use '/')"
    elif posix.is_absolute() or PureWindowsPath(path).drive:
        problem = "must be relative to the job's files, not absolute"
    elif ".." in posix.parts:
        problem = "must not contain '..'"
    elif posix.suffix.lower() != ".blend":
        problem = "must name a .blend file"
    else:
        return path
    raise PydanticCustomError(
        "scene_path", "scene {problem}: {path}", {"problem": problem, "path": path}
    )


def _no_nul(name: str) -> str:
    if "\0" in name:
        raise PydanticCustomError("name_nul", "a Blender name cannot contain NUL")
    return name


BlenderName = Annotated[str, Field(min_length=1, max_length=63), AfterValidator(_no_nul)]
BLENDER_COLOR_DEPTHS: dict[str, tuple[int, ...]] = {
    "PNG": (8, 16),
    "OPEN_EXR": (16, 32),  # half and full float
    "JPEG": (8,),
    "TIFF": (8, 16),
}
GPU_DEVICES = ("CUDA", "OPTIX", "HIP")


class BlenderRenderer(RendererSettings):
    """Blender (.blend scenes), on nodes with Blender or its ``bpy`` module.

    Every override left out keeps what the scene itself says. Overrides reach Blender as
    data, read by the farm's driver script: none is ever run as code.
    """

    kind: Literal["blender"]
    scene: Annotated[str, Field(min_length=1, max_length=1024), AfterValidator(_relative_scene)] = (
        Field(
            description="the .blend file, relative to the job's files (for now the farm's storage)",
            examples=["shots/sq010/sh020.blend"],
        )
    )
    engine: Literal["CYCLES", "BLENDER_EEVEE_NEXT", "BLENDER_WORKBENCH"] | None = None
    samples: int | None = Field(None, ge=1, le=1_000_000, description="Cycles or EEVEE samples")
    resolution_x: int | None = Field(None, ge=4, le=65_536)
    resolution_y: int | None = Field(None, ge=4, le=65_536)
    resolution_percentage: int | None = Field(None, ge=1, le=1_000)
    camera: BlenderName | None = Field(None, description="the camera object to render from")
    scene_name: BlenderName | None = Field(None, description="the scene of the file to render")
    view_layer: BlenderName | None = Field(None, description="render only this view layer")
    output_format: Literal["PNG", "OPEN_EXR", "JPEG", "TIFF"] | None = None
    color_depth: Literal[8, 16, 32] | None = Field(
        None, description="bits per channel: PNG and TIFF 8 or 16, JPEG 8, OPEN_EXR 16 or 32"
    )
    cycles_device: Literal["CPU", "CUDA", "OPTIX", "HIP"] | None = Field(
        None, description="a GPU device needs the job to require gpus"
    )
    allow_scripts: bool = Field(False, description="let scripts inside the scene run")

    @model_validator(mode="after")
    def _consistent(self) -> BlenderRenderer:
        if self.samples is not None and self.engine == "BLENDER_WORKBENCH":
            raise field_error(self, ("samples",), "BLENDER_WORKBENCH takes no samples")
        if self.color_depth is not None:
            if self.output_format is None:
                raise field_error(self, ("color_depth",), "color_depth needs an output_format")
            depths = BLENDER_COLOR_DEPTHS[self.output_format]
            if self.color_depth not in depths:
                allowed = " or ".join(str(depth) for depth in depths)
                raise field_error(
                    self, ("color_depth",),
                    f"{self.output_format} has no depth {self.color_depth}: {allowed}",
                )  # fmt: skip
        if self.cycles_device is not None and self.engine not in (None, "CYCLES"):
            raise field_error(self, ("cycles_device",), f"{self.engine} is not Cycles")
        return self

    @property
    def overrides(self) -> dict[str, Any]:
        """The settings the job gives, that change the scene's own."""
        return self.model_dump(exclude={"kind", "scene", "allow_scripts"}, exclude_none=True)


def field_error(model: BaseModel, loc: tuple[str | int, ...], message: str) -> ValidationError:
    """A validation error located at ``loc`` (a model validator's own would name no field)."""
    value: Any = model
    for part in loc:
        value = getattr(value, str(part), None)
    detail = InitErrorDetails(
        type=PydanticCustomError("inconsistent", message), loc=loc, input=value
    )
    return ValidationError.from_exception_data(type(model).__name__, [detail])


class OpenJdRenderer(RendererSettings):
    """A step of an Open Job Description template (scheduler/wire/openjd.py), run on the
    node in an openjd-sessions Session. Not in ``AnyRenderer``: studios submit templates
    (POST /v1/templates), which make these settings for each step's job, and the
    scheduler gives each chunk its tasks (``ChunkMessage.tasks``)."""

    kind: Literal["openjd"]
    template: dict[str, Any] | str = Field(
        description="the job template: a JSON object, or its YAML text"
    )
    parameters: dict[str, str] = Field(default_factory=dict, description="job parameter values")
    step: int = Field(0, ge=0, description="the step's position in the template")
    step_name: str = Field("", description="the step's name")
    files_root: str | None = Field(
        None, description="the studio's path of the job's files, mapped to the node's"
    )
    files_root_format: Literal["POSIX", "WINDOWS"] = "POSIX"


AnyRenderer = BuiltinRenderer | NoopRenderer | BlenderRenderer  # the registry


def kind_of(model: type[RendererSettings]) -> str:
    """The kind a settings model declares (its ``kind: Literal[...]``)."""
    (kind,) = get_args(model.model_fields["kind"].annotation)
    return str(kind)


RENDERERS: dict[str, type[RendererSettings]] = {
    kind_of(model): model for model in get_args(AnyRenderer)
}


def unknown_renderer(kind: object, known: Iterable[str]) -> str:
    """How the API and the nodes refuse a renderer they do not have."""
    return UNKNOWN_RENDERER.format(tag=kind, expected_tags=_listed(known))


def _listed(kinds: Iterable[str]) -> str:
    return ", ".join(repr(kind) for kind in kinds)


def _known_kind(value: Any) -> Any:
    """Refuses an unknown kind in the words a node uses (pydantic's own are terser);
    a missing kind is left to the union, which says so."""
    if not isinstance(value, Mapping) or "kind" not in value:
        return value
    kind = value["kind"]
    if isinstance(kind, str) and kind in RENDERERS:
        return value
    # The tag as it can be quoted back in any JSON error (a lone surrogate cannot be).
    tag = str(kind).encode("utf-8", "backslashreplace").decode("utf-8")
    context = {"discriminator": "'kind'", "tag": tag, "expected_tags": _listed(RENDERERS)}
    raise PydanticCustomError("union_tag_invalid", UNKNOWN_RENDERER, context)


RendererSpec = Annotated[AnyRenderer, Field(discriminator="kind"), BeforeValidator(_known_kind)]
