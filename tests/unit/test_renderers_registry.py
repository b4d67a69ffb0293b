"""One registry of renderers: the API accepts and documents exactly its kinds, and a node
reads the settings with the same models and refuses a kind it lacks in the API's words."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from scheduler.settings import Settings
from scheduler.wire.messages import ChunkMessage
from scheduler.wire.renderers import RENDERERS, unknown_renderer
from workers import renderers
from workers.renderers import BuiltinCommand, renderer_for
from workers.runner import run_chunk


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(database_url=f"sqlite:///{tmp_path}/farm.db", storage_root=tmp_path)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def message(renderer: str, **settings: Any) -> ChunkMessage:
    return ChunkMessage(
        chunk_id=1, attempt=1, job_id=1, pool="cpu", frames=[1, 2], renderer=renderer,
        settings=settings, output_pattern="f_{frame}.png", log_path="a.log", timeout=60,
    )  # fmt: skip


def refusal_of(client: TestClient, kind: str) -> str:
    """The message of the API's 422 for a job with this renderer kind."""
    studio = client.app.state.service.create_studio("ghibli-east")[1]  # type: ignore[attr-defined]
    body = {"name": "shot", "frames": "1-2", "renderer": {"kind": kind}}
    response = client.post("/v1/jobs", json=body, headers={"Authorization": f"Bearer {studio}"})
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "renderer"]
    return str(error["msg"])


def test_the_openapi_lists_exactly_the_registrys_kinds(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    renderer = schemas["JobCreate"]["properties"]["renderer"]
    mapping = renderer["discriminator"]["mapping"]
    assert set(mapping) == set(RENDERERS)
    for kind, ref in mapping.items():
        model = schemas[ref.removeprefix("#/components/schemas/")]
        assert model["properties"]["kind"]["const"] == kind
        assert set(model["properties"]) == set(RENDERERS[kind].model_fields)


def test_every_kind_of_the_registry_has_an_implementation_here() -> None:
    for kind, model in RENDERERS.items():
        assert renderer_for(kind).model is model


def test_a_node_reads_settings_with_the_registrys_model() -> None:
    argv = BuiltinCommand().argv(message("builtin", width=64), Path("/storage"))
    defaults = RENDERERS["builtin"].model_fields
    assert argv[argv.index("--width") + 1] == "64"
    assert argv[argv.index("--height") + 1] == str(defaults["height"].default)
    with pytest.raises(ValueError, match="width"):
        BuiltinCommand().argv(message("builtin", width=1), Path("/storage"))


def test_a_node_refuses_an_unknown_kind_in_the_apis_words(
    client: TestClient, tmp_path: Path
) -> None:
    events: list[dict[str, Any]] = []
    assert not run_chunk(message("maya"), tmp_path, "node", events.append)
    assert events[-1]["kind"] == "failed"
    assert events[-1]["error"] == refusal_of(client, "maya") == unknown_renderer("maya", RENDERERS)


def test_a_node_without_a_kind_refuses_it_listing_its_own(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delitem(renderers.IMPLEMENTATIONS, "noop")
    events: list[dict[str, Any]] = []
    assert not run_chunk(message("noop"), tmp_path, "node", events.append)
    assert events[-1]["kind"] == "failed"
    assert events[-1]["error"] == "no renderer 'noop'; known renderers: 'builtin', 'blender'"
