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
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

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


AnyRenderer = BuiltinRenderer | NoopRenderer  # the registry: every renderer's settings


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
    context = {"discriminator": "'kind'", "tag": str(kind), "expected_tags": _listed(RENDERERS)}
    raise PydanticCustomError("union_tag_invalid", UNKNOWN_RENDERER, context)


RendererSpec = Annotated[AnyRenderer, Field(discriminator="kind"), BeforeValidator(_known_kind)]
