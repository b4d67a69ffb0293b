"""Submitting OpenJD job templates over the REST API: a job per step, made together or
not at all, against a real database (SQLite, or PostgreSQL in CI)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from scheduler.db import ChunkRow, JobDependency, JobRow, TemplateRow
from scheduler.usecases.jobs import StudioService

pytestmark = pytest.mark.integration

TWO_STEPS = """
specificationVersion: jobtemplate-2023-09
extensions: [TASK_CHUNKING]
name: "{{Param.Shot}} comp"
parameterDefinitions:
  - {name: Shot, type: STRING, default: sh010}
  - {name: Frames, type: STRING, default: "1-10"}
  - {name: Quality, type: INT, minValue: 1, maxValue: 5, default: 3}
steps:
  - name: Render
    parameterSpace:
      taskParameterDefinitions:
        - {name: Frame, type: INT, range: "{{Param.Frames}}"}
    hostRequirements:
      amounts:
        - {name: amount.worker.vcpu, min: 2}
        - {name: amount.worker.memory, min: 2048}
        - {name: amount.studio.licences, min: 1}
      attributes:
        - {name: attr.worker.os.family, anyOf: [linux]}
    script:
      actions:
        onRun: {command: echo, args: ["{{Task.Param.Frame}}"]}
  - name: Encode
    dependencies: [{dependsOn: Render}]
    script:
      actions:
        onRun: {command: "true"}
"""


def headers(service: StudioService, name: str, templates: bool = True) -> dict[str, str]:
    key = service.create_studio(name, allow_templates=templates)[1]
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def service(engine: Engine, settings: Any) -> StudioService:
    return StudioService(engine, settings)


@pytest.fixture
def studio(service: StudioService) -> dict[str, str]:
    return headers(service, "ghibli-east")


def rows(engine: Engine) -> tuple[int, int, int]:
    with Session(engine) as session:
        return tuple(  # type: ignore[return-value]
            session.exec(select(func.count()).select_from(table)).one()
            for table in (TemplateRow, JobRow, ChunkRow)
        )


def test_a_template_becomes_a_job_per_step_with_their_dependencies(
    client: TestClient, studio: dict[str, str], engine: Engine
) -> None:
    body = {"template": TWO_STEPS, "parameters": {"Shot": "sh020"}, "chunk_size": 4}
    answer = client.post("/v1/templates", json=body, headers=studio)
    assert answer.status_code == 201, answer.text
    template = answer.json()
    assert template["name"] == "sh020 comp"
    assert template["parameters"] == {"Shot": "sh020"}
    assert template["template"] == TWO_STEPS and template["state"] == "queued"
    render, encode = template["jobs"]
    assert render["name"] == "sh020 comp / Render" and encode["name"] == "sh020 comp / Encode"
    assert (render["frames"], render["frame_count"], render["chunk_size"]) == ("1-10", 10, 4)
    assert (encode["frames"], encode["frame_count"]) == ("1", 1)
    assert render["depends_on"] == [] and encode["depends_on"] == [render["id"]]
    assert render["template"] == encode["template"] == template["id"]
    # The step's job shows its settings, not the template again (the template's page does).
    assert render["renderer"] == {
        "kind": "openjd",
        "parameters": {"Shot": "sh020"},
        "step": 0,
        "step_name": "Render",
    }
    # Standard amounts become the farm's own requirements; all are kept for placement.
    assert render["requirements"] == {"cores": 2, "memory_gb": 2.0, "gpus": 0, "tags": []}
    with Session(engine) as session:
        job = session.get(JobRow, render["id"])
        assert job is not None and job.host_requirements is not None
        assert job.host_requirements["amounts"]["amount.studio.licences"] == [1.0, None]
        assert job.host_requirements["any_of"] == {"attr.worker.os.family": ["linux"]}
        assert session.exec(select(JobDependency)).all() == [
            JobDependency(job_id=encode["id"], depends_on=render["id"])
        ]
        chunks = session.exec(select(ChunkRow).where(ChunkRow.job_id == render["id"])).all()
        assert sorted(c.frame_count for c in chunks) == [2, 4, 4]
    # Read back: the template, each job under /v1/jobs, and the studio's list.
    assert client.get(f"/v1/templates/{template['id']}", headers=studio).json() == template
    encoded = client.get(f"/v1/jobs/{encode['id']}", headers=studio).json()
    assert encoded["template"] == template["id"]
    listed = client.get("/v1/templates", headers=studio).json()
    assert listed["total"] == 1 and listed["items"] == [template]


def test_a_template_as_a_json_object_with_its_tasks_chunked_by_the_template(
    client: TestClient, studio: dict[str, str]
) -> None:
    document = {
        "specificationVersion": "jobtemplate-2023-09",
        "extensions": ["TASK_CHUNKING"],
        "name": "sim",
        "steps": [
            {
                "name": "Sim",
                "parameterSpace": {
                    "taskParameterDefinitions": [
                        {
                            "name": "F",
                            "type": "CHUNK[INT]",
                            "range": "1-100",
                            "chunks": {"defaultTaskCount": 25, "rangeConstraint": "CONTIGUOUS"},
                        }
                    ]
                },
                "script": {"actions": {"onRun": {"command": "true"}}},
            },
            {
                "name": "Wedges",
                "parameterSpace": {
                    "taskParameterDefinitions": [
                        {"name": "Seed", "type": "INT", "range": "1-3"},
                        {"name": "Cam", "type": "STRING", "range": ["l", "r"]},
                    ],
                    "combination": "Seed * Cam",
                },
                "script": {"actions": {"onRun": {"command": "true"}}},
            },
        ],
    }
    answer = client.post("/v1/templates", json={"template": document}, headers=studio)
    assert answer.status_code == 201, answer.text
    sim, wedges = answer.json()["jobs"]
    assert (sim["frames"], sim["chunk_size"]) == ("1-100", 25)  # the template's chunks
    assert (wedges["frames"], wedges["chunk_size"]) == ("1-6", 1)  # a task per position
    assert wedges["depends_on"] == []


@pytest.mark.parametrize(
    ("change", "loc", "words"),
    [
        (  # the template itself: openjd-model's message, at the path it names
            lambda b: b.update(template=TWO_STEPS.replace('onRun: {command: "true"}', "onRun: {}")),
            ["body", "template", "steps", 1, "script", "actions", "onRun", "command"],
            "Field required",
        ),
        (
            lambda b: b.update(parameters={"Quality": 9}),
            ["body", "parameters", "Quality"],
            "5",
        ),
        (
            lambda b: b.update(parameters={"Nope": "x"}),
            ["body", "parameters", "Nope"],
            "not defined",
        ),
        (lambda b: b.update(template="steps: [unclosed"), ["body", "template"], "not YAML"),
        (lambda b: b.update(template=[1, 2]), ["body", "template"], ""),
        (
            lambda b: b.update(parameters={"Frames": "1-2000000"}),
            ["body", "template", "steps", 0, "parameterSpace"],
            "more than 1000000 frames",
        ),
        (lambda b: b.update(pool="nowhere"), ["body", "pool"], "unknown pool"),
        (lambda b: b.update(limits=["houdini"]), ["body", "limits"], "unknown limit"),
        (lambda b: b.update(depends_on=[999]), ["body", "depends_on"], "no job 999"),
        (lambda b: b.update(files_root="/mnt/sh010"), ["body", "files_root"], "give one"),
        (
            lambda b: b.update(files_root="sh010", manifest=1),
            ["body", "files_root"],
            "an absolute path",
        ),
        (
            lambda b: b.update(files_root="D:show", manifest=1),
            ["body", "files_root"],
            "an absolute path",
        ),
        (lambda b: b.update(manifest=7), ["body", "manifest"], "no manifest 7"),
    ],
)
def test_a_template_that_does_not_hold_is_a_422_at_its_path_and_makes_nothing(
    client: TestClient,
    studio: dict[str, str],
    engine: Engine,
    change: Any,
    loc: list[Any],
    words: str,
) -> None:
    body: dict[str, Any] = {"template": TWO_STEPS}
    change(body)
    answer = client.post("/v1/templates", json=body, headers=studio)
    assert answer.status_code == 422, answer.text
    problems = answer.json()["detail"]
    assert any(p["loc"] == loc and words in p["msg"] for p in problems), problems
    assert rows(engine) == (0, 0, 0)


def test_a_chunk_int_step_whose_chunks_are_larger_than_the_farm_runs_is_refused(
    client: TestClient, studio: dict[str, str], engine: Engine
) -> None:
    space = {
        "taskParameterDefinitions": [
            {
                "name": "F",
                "type": "CHUNK[INT]",
                "range": "1-100000",
                "chunks": {"defaultTaskCount": 5000, "rangeConstraint": "CONTIGUOUS"},
            }
        ]
    }
    step = {
        "name": "Sim",
        "parameterSpace": space,
        "script": {"actions": {"onRun": {"command": "true"}}},
    }
    document = {
        "specificationVersion": "jobtemplate-2023-09",
        "extensions": ["TASK_CHUNKING"],
        "name": "sim",
        "steps": [step],
    }
    answer = client.post("/v1/templates", json={"template": document}, headers=studio)
    assert answer.status_code == 422
    [problem] = answer.json()["detail"]
    assert problem["loc"] == ["body", "template", "steps", 0, "parameterSpace"]
    assert "at most 1000 per chunk" in problem["msg"]
    assert rows(engine) == (0, 0, 0)


def test_only_a_studio_an_operator_allowed_submits_templates(
    client: TestClient, service: StudioService, engine: Engine
) -> None:
    forbidden = headers(service, "aardman-east", templates=False)
    answer = client.post("/v1/templates", json={"template": TWO_STEPS}, headers=forbidden)
    assert answer.status_code == 422
    [problem] = answer.json()["detail"]
    assert problem["loc"] == ["body", "template"]
    assert "renderfarm studio templates aardman-east --allow" in problem["msg"]
    assert rows(engine) == (0, 0, 0)
    service.set_templates("aardman-east", True)
    answer = client.post("/v1/templates", json={"template": TWO_STEPS}, headers=forbidden)
    assert answer.status_code == 201


def test_a_template_past_the_quota_makes_none_of_its_jobs(
    client: TestClient, studio: dict[str, str], service: StudioService, engine: Engine
) -> None:
    service.set_quota("ghibli-east", queued_jobs=1, queued_frames=None, requests_per_second=None)
    answer = client.post("/v1/templates", json={"template": TWO_STEPS}, headers=studio)
    assert answer.status_code == 429
    assert "2 more do not fit" in answer.json()["detail"]
    assert rows(engine) == (0, 0, 0)


def test_a_retried_template_with_its_key_makes_its_jobs_once(
    client: TestClient, studio: dict[str, str], engine: Engine
) -> None:
    keyed = {**studio, "Idempotency-Key": "comp-sh010-v1"}
    first = client.post("/v1/templates", json={"template": TWO_STEPS}, headers=keyed)
    again = client.post("/v1/templates", json={"template": TWO_STEPS}, headers=keyed)
    assert first.status_code == again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert rows(engine)[:2] == (1, 2)


def test_cancelling_a_template_cancels_its_jobs_and_another_studio_sees_none(
    client: TestClient, studio: dict[str, str], service: StudioService
) -> None:
    template = client.post("/v1/templates", json={"template": TWO_STEPS}, headers=studio).json()
    other = headers(service, "aardman-east")
    for path in (f"/v1/templates/{template['id']}", f"/v1/jobs/{template['jobs'][0]['id']}"):
        assert client.get(path, headers=other).status_code == 404
    assert client.post(f"/v1/templates/{template['id']}/cancel", headers=other).status_code == 404
    cancelled = client.post(f"/v1/templates/{template['id']}/cancel", headers=studio).json()
    assert cancelled["state"] == "cancelled"
    assert [job["state"] for job in cancelled["jobs"]] == ["cancelled", "cancelled"]
    again = client.post(f"/v1/templates/{template['id']}/cancel", headers=studio)
    assert again.status_code == 409


def test_a_step_of_a_million_tasks_is_a_few_rows(
    client: TestClient, studio: dict[str, str], engine: Engine
) -> None:
    body = {"template": TWO_STEPS, "parameters": {"Frames": "1-1000000"}, "chunk_size": 10}
    answer = client.post("/v1/templates", json=body, headers=studio)
    assert answer.status_code == 201, answer.text
    assert answer.json()["jobs"][0]["frame_count"] == 1_000_000
    templates, jobs, chunks = rows(engine)
    assert (templates, jobs) == (1, 2)
    assert chunks <= 1_100  # the first chunks, then blocks cut as they are dispatched


def test_hostile_template_bodies_are_refused_cleanly(
    client: TestClient, studio: dict[str, str], engine: Engine
) -> None:
    for body in [
        {"template": TWO_STEPS, "parameters": {"Shot": "a\x00b"}},
        {"template": TWO_STEPS, "parameters": {"Shot": "\ud800"}},
        {"template": TWO_STEPS, "parameters": {"../x": "1"}},
        {"template": TWO_STEPS, "parameters": {"Quality": True}},
        {"template": "x" * 200_000},
        {"template": {"name": "x" * 200_000}},
        {"template": TWO_STEPS, "nope": 1},
    ]:
        answer = client.post(
            "/v1/templates",
            content=json.dumps(body).encode(),
            headers={**studio, "Content-Type": "application/json"},
        )
        assert answer.status_code == 422, (body.keys(), answer.text)
    assert rows(engine) == (0, 0, 0)


def test_an_operator_allows_and_forbids_templates_from_the_command_line(
    client: TestClient, engine: Engine, settings: Any
) -> None:
    from typer.testing import CliRunner

    from scheduler.launch.cli import app as cli

    env = {
        "RENDERFARM_DATABASE_URL": settings.effective_database_url,
        "RENDERFARM_DATA_DIR": str(settings.data_dir),
    }

    def operator(*args: str) -> str:
        result = CliRunner().invoke(cli, list(args), env=env)
        assert result.exit_code == 0, result.output
        return result.stdout

    east = {"Authorization": f"Bearer {operator('studio', 'create', 'east').strip()}"}
    body = {"template": TWO_STEPS}
    assert client.post("/v1/templates", json=body, headers=east).status_code == 422
    assert operator("studio", "templates", "east", "--allow") == "east: templates allowed\n"
    assert client.post("/v1/templates", json=body, headers=east).status_code == 201
    west = operator("studio", "create", "west", "--allow-templates").strip()
    assert (
        client.post(
            "/v1/templates", json=body, headers={"Authorization": f"Bearer {west}"}
        ).status_code
        == 201
    )
    operator("studio", "templates", "east", "--forbid")
    assert client.post("/v1/templates", json=body, headers=east).status_code == 422
    assert "west: weight 1, scene scripts not allowed, templates allowed" in operator(
        "studio", "list"
    )
