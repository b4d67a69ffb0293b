"""The REST API against a real database (SQLite, or PostgreSQL in CI)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, select

from api.app import create_app
from scheduler.db import ChunkRow, JobRow
from scheduler.settings import Settings
from scheduler.usecases.jobs import StudioService
from scheduler.wire.events import EVENTS_KEY
from tests.conftest import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def service(engine: Engine, settings: Settings) -> StudioService:
    return StudioService(engine, settings)


@pytest.fixture
def studio(service: StudioService) -> dict[str, str]:
    return {"Authorization": f"Bearer {service.create_studio('ghibli-east')[1]}"}


@pytest.fixture
def other_studio(service: StudioService) -> dict[str, str]:
    return {"Authorization": f"Bearer {service.create_studio('aardman-east')[1]}"}


def job_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "shot 010",
        "frames": "1-24",
        "chunk_size": 1,
        "priority": 50,
        "pool": "cpu",
        "renderer": {"kind": "builtin", "width": 64, "height": 36},
    }
    body.update(overrides)
    return body


def count_rows(engine: Engine) -> tuple[int, int]:
    with Session(engine) as session:
        return (
            session.exec(select(func.count()).select_from(JobRow)).one(),
            session.exec(select(func.count()).select_from(ChunkRow)).one(),
        )


def test_submit_and_read_a_job(client: TestClient, studio: dict[str, str]) -> None:
    created = client.post(
        "/v1/jobs", json=job_body(frames="1-100x2,150", chunk_size=5), headers=studio
    )
    assert created.status_code == 201, created.text
    job = created.json()
    assert job["state"] == "queued"
    assert job["frames"] == "1-99x2,150"
    assert job["progress"] == {
        "frames_total": 51,
        "frames_done": 0,
        "frames_running": 0,
        "frames_failed": 0,
        "frames_queued": 51,
        "frames_cancelled": 0,
    }
    assert job["renderer"] == {"kind": "builtin", "width": 64, "height": 36, "samples": 1}
    again = client.get(f"/v1/jobs/{job['id']}", headers=studio).json()
    assert again["id"] == job["id"] and again["name"] == "shot 010"
    frames = client.get(f"/v1/jobs/{job['id']}/frames", headers=studio).json()
    assert [f["frame"] for f in frames] == [*range(1, 100, 2), 150]
    assert {f["state"] for f in frames} == {"queued"}
    assert frames[0]["output_url"] is None
    page = client.get(f"/v1/jobs/{job['id']}/frames?offset=48&limit=5", headers=studio).json()
    assert [f["frame"] for f in page] == [97, 99, 150]


def test_what_may_dispatch_rings_the_schedulers_bell(
    client: TestClient, studio: dict[str, str], broker: redis.Redis
) -> None:
    """A submission, a resume, a retry: each wakes an idle scheduler (a wake on its
    event list), which else would dispatch at its next tick; a read rings nothing."""
    job = client.post("/v1/jobs", json=job_body(), headers=studio).json()
    assert [json.loads(item) for item in broker.lrange(EVENTS_KEY, 0, -1)] == [{"kind": "wake"}]
    broker.delete(EVENTS_KEY)
    client.get(f"/v1/jobs/{job['id']}", headers=studio)
    client.post(f"/v1/jobs/{job['id']}/suspend", headers=studio)
    assert broker.llen(EVENTS_KEY) == 0
    assert client.post(f"/v1/jobs/{job['id']}/resume", headers=studio).status_code == 200
    assert broker.llen(EVENTS_KEY) == 1


def test_every_call_needs_a_valid_key(client: TestClient) -> None:
    assert client.get("/v1/jobs").status_code == 401
    refused = client.get("/v1/jobs", headers={"Authorization": "Bearer rf_not-a-key"})
    assert refused.status_code == 401
    assert "unknown" in refused.json()["detail"]
    assert client.post("/v1/jobs", json=job_body()).status_code == 401
    assert client.get("/v1/nodes").status_code == 401


def test_health_and_metrics_need_no_key(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert "renderfarm_jobs" in metrics.text


def test_a_studio_never_sees_another_studios_job(
    client: TestClient, studio: dict[str, str], other_studio: dict[str, str]
) -> None:
    job = client.post("/v1/jobs", json=job_body(), headers=studio).json()
    for method, path in [
        ("GET", f"/v1/jobs/{job['id']}"),
        ("GET", f"/v1/jobs/{job['id']}/frames"),
        ("GET", f"/v1/jobs/{job['id']}/frames/1/output"),
        ("POST", f"/v1/jobs/{job['id']}/cancel"),
        ("POST", f"/v1/jobs/{job['id']}/suspend"),
    ]:
        response = client.request(method, path, headers=other_studio)
        assert response.status_code == 404, (method, path)
    assert client.get("/v1/jobs", headers=other_studio).json()["total"] == 0
    assert client.get(f"/v1/jobs/{job['id']}", headers=studio).json()["state"] == "queued"


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"frames": "1-"}, "frames", "cannot read"),
        ({"frames": "10-1x0"}, "frames", "step"),
        ({"frames": ""}, "frames", "at least 1 character"),
        ({"frames": "1-99999999999"}, "frames", "more than"),
        ({"renderer": {"kind": "maya"}}, "renderer", "builtin"),
        ({"renderer": {"kind": "builtin", "width": 0}}, "width", "greater than or equal"),
        ({"pool": "houdini"}, "pool", "unknown pool"),
        ({"priority": 101}, "priority", "less than or equal to 100"),
        ({"priority": -1}, "priority", "greater than or equal to 0"),
        ({"chunk_size": 0}, "chunk_size", "greater than or equal to 1"),
        ({"chunk_size": 100_000}, "chunk_size", "at most"),
        ({"priorty": 3}, "priorty", "Extra inputs"),
        ({"name": ""}, "name", "at least 1 character"),
        ({"max_failed_frames": 0}, "max_failed_frames", "greater than or equal to 1"),
        ({"timeout": -5}, "timeout", "greater than 0"),
        ({"limits": ["maya-licence"]}, "limits", "unknown limit"),
        ({"depends_on": [424242]}, "depends_on", "no job 424242"),
        ({"dependency": "shot"}, "dependency", "'job' or 'frame'"),
        ({"priority": False}, "priority", "valid integer"),  # not 0
        ({"priority": "50"}, "priority", "valid integer"),
        ({"frames": "\u0661-\u0663"}, "frames", "cannot read"),  # Arabic-Indic digits
        ({"frames": "1-\uff13"}, "frames", "cannot read"),  # a full-width 3
    ],
)
def test_bad_submissions_get_a_4xx_naming_the_field_and_create_nothing(
    client: TestClient,
    engine: Engine,
    studio: dict[str, str],
    overrides: dict[str, Any],
    field: str,
    words: str,
) -> None:
    response = client.post("/v1/jobs", json=job_body(**overrides), headers=studio)
    assert response.status_code == 422, response.text
    problems = response.json()["detail"]
    assert any(field in map(str, p["loc"]) and words in p["msg"] for p in problems), problems
    assert count_rows(engine) == (0, 0)


def test_malformed_json_and_oversized_bodies_are_refused(
    client: TestClient, engine: Engine, studio: dict[str, str], settings: Settings
) -> None:
    broken = client.post(
        "/v1/jobs", content=b"{not json", headers={**studio, "Content-Type": "application/json"}
    )
    assert broken.status_code == 422
    huge = client.post(
        "/v1/jobs",
        json=job_body(name="x" * (settings.max_body_bytes + 10)),
        headers=studio,
    )
    assert huge.status_code == 413
    assert "larger than" in huge.json()["detail"]

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"name": "'
        for _ in range(settings.max_body_bytes // 1000 + 1):
            yield b"x" * 1000

    streamed = client.post("/v1/jobs", content=chunked(), headers=studio)
    assert streamed.status_code == 413, streamed.text
    assert "larger than" in streamed.json()["detail"]
    assert count_rows(engine) == (0, 0)


def test_an_unexpected_error_is_a_json_500_that_leaks_nothing(
    engine: Engine, settings: Settings, studio: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("password=hunter2 in a stack the studio must not see")

    monkeypatch.setattr(StudioService, "list_jobs", broken)
    with TestClient(create_app(settings, engine), raise_server_exceptions=False) as client:
        response = client.get("/v1/jobs", headers=studio)
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    assert "internal error" in response.json()["detail"]
    assert "hunter2" not in response.text


def test_readiness_says_which_of_database_and_broker_does_not_answer(
    engine: Engine, settings: Settings
) -> None:
    with TestClient(create_app(settings, engine)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"status": "ready", "database": "ok", "broker": "ok"}
    no_broker = settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"})
    with TestClient(create_app(no_broker, engine)) as client:
        assert client.get("/healthz").status_code == 200  # alive, still
        answer = client.get("/readyz")
        assert answer.status_code == 503
        assert answer.json()["database"] == "ok"
        assert answer.json()["broker"].startswith("does not answer")


def test_a_database_that_does_not_answer_is_a_503_to_retry(
    engine: Engine, settings: Settings, studio: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(*_args: Any, **_kwargs: Any) -> None:
        raise OperationalError("INSERT ...", {}, ConnectionRefusedError("connection refused"))

    with TestClient(create_app(settings, engine)) as client:
        monkeypatch.setattr(StudioService, "submit_job", down)
        response = client.post("/v1/jobs", json=job_body(), headers=studio)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert "nothing was recorded" in response.json()["detail"]


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [("PUT", "/v1/jobs", "GET, POST"), ("DELETE", "/v1/jobs/1", "GET, PATCH"),
     ("GET", "/v1/jobs/1/cancel", "POST"), ("POST", "/healthz", "GET")],
)  # fmt: skip
def test_a_method_not_allowed_names_every_method_the_path_takes(
    client: TestClient, method: str, path: str, allow: str
) -> None:
    answer = client.request(method, path)
    assert answer.status_code == 405
    assert answer.headers["allow"] == allow
    assert answer.json() == {"detail": "Method Not Allowed"}


def test_an_unknown_limit_is_refused_without_listing_the_farms_others(
    client: TestClient, service: StudioService, studio: dict[str, str]
) -> None:
    service.set_limit("houdini-engine", 4)
    response = client.post("/v1/jobs", json=job_body(limits=["maya-licence"]), headers=studio)
    assert response.status_code == 422 and "maya-licence" in response.text
    assert "houdini-engine" not in response.text


def test_a_large_jobs_frames_page_reads_only_the_page(
    client: TestClient, studio: dict[str, str]
) -> None:
    """70,000 frames in chunks of 1 and 3: pages anywhere, and a page larger than
    PostgreSQL's 65,535 bound values (the results were read by a list of chunk ids)."""
    body = job_body(frames="1-70000", chunk_size=1)
    job = client.post("/v1/jobs", json=body, headers=studio).json()
    tail = client.get(f"/v1/jobs/{job['id']}/frames?offset=69990&limit=100", headers=studio)
    assert tail.status_code == 200, tail.text
    assert [f["frame"] for f in tail.json()] == list(range(69991, 70001))
    whole = client.get(f"/v1/jobs/{job['id']}/frames?limit=70000", headers=studio)
    assert whole.status_code == 200, whole.text[:300]
    assert len(whole.json()) == 70000
    chunked = client.post("/v1/jobs", json=job_body(frames="1-100", chunk_size=3), headers=studio)
    page = client.get(f"/v1/jobs/{chunked.json()['id']}/frames?offset=4&limit=5", headers=studio)
    assert [f["frame"] for f in page.json()] == [5, 6, 7, 8, 9]  # mid-chunk to mid-chunk
    past = client.get(f"/v1/jobs/{chunked.json()['id']}/frames?offset=100", headers=studio)
    assert past.status_code == 200 and past.json() == []
    after = client.get(
        f"/v1/jobs/{job['id']}/frames", params={"after": 69995, "limit": 3}, headers=studio
    )
    assert [f["frame"] for f in after.json()] == [69996, 69997, 69998]
    walked: list[int] = []  # page by page with ?after=, the last frame of the page before
    while len(walked) < 100:
        params = {"limit": 7, **({"after": walked[-1]} if walked else {})}
        page = client.get(f"/v1/jobs/{chunked.json()['id']}/frames", params=params, headers=studio)
        assert page.status_code == 200 and page.json(), page.text
        walked.extend(f["frame"] for f in page.json())
    assert walked == list(range(1, 101))


def test_list_jobs_paginates_and_filters(client: TestClient, studio: dict[str, str]) -> None:
    ids = [
        client.post("/v1/jobs", json=job_body(name=f"shot {i}"), headers=studio).json()["id"]
        for i in range(5)
    ]
    client.post(f"/v1/jobs/{ids[0]}/cancel", headers=studio)
    page = client.get("/v1/jobs", params={"limit": 2, "offset": 1}, headers=studio).json()
    assert page["total"] == 5 and page["limit"] == 2
    assert [j["id"] for j in page["items"]] == [ids[3], ids[2]]  # newest first
    cancelled = client.get("/v1/jobs", params={"state": "cancelled"}, headers=studio).json()
    assert [j["id"] for j in cancelled["items"]] == [ids[0]]
    assert client.get("/v1/jobs", params={"state": "bogus"}, headers=studio).status_code == 422
    assert client.get("/v1/jobs", params={"limit": 0}, headers=studio).status_code == 422


def test_steering_a_job(client: TestClient, studio: dict[str, str]) -> None:
    job_id = client.post("/v1/jobs", json=job_body(), headers=studio).json()["id"]
    url = f"/v1/jobs/{job_id}"

    assert client.patch(url, json={"priority": 90}, headers=studio).json()["priority"] == 90
    assert client.patch(url, json={"priority": 900}, headers=studio).status_code == 422

    assert client.post(f"{url}/suspend", headers=studio).json()["state"] == "suspended"
    assert client.post(f"{url}/resume", headers=studio).json()["state"] == "queued"
    resumed_twice = client.post(f"{url}/resume", headers=studio)
    assert resumed_twice.status_code == 409 and "not suspended" in resumed_twice.json()["detail"]

    no_failures = client.post(f"{url}/retry", headers=studio)
    assert no_failures.status_code == 409 and "no failed frames" in no_failures.json()["detail"]

    cancelled = client.post(f"{url}/cancel", headers=studio).json()
    assert cancelled["state"] == "cancelled"
    assert cancelled["progress"]["frames_cancelled"] == 24
    assert client.post(f"{url}/cancel", headers=studio).status_code == 409
    assert client.post(f"{url}/suspend", headers=studio).status_code == 409


def test_unknown_job_and_frame_are_404(client: TestClient, studio: dict[str, str]) -> None:
    assert client.get("/v1/jobs/999999", headers=studio).status_code == 404
    job_id = client.post("/v1/jobs", json=job_body(frames="1-3"), headers=studio).json()["id"]
    missing = client.get(f"/v1/jobs/{job_id}/frames/7/output", headers=studio)
    assert missing.status_code == 404 and "no frame 7" in missing.json()["detail"]
    not_yet = client.get(f"/v1/jobs/{job_id}/frames/2/output", headers=studio)
    assert not_yet.status_code == 404 and "queued" in not_yet.json()["detail"]


def test_openapi_documents_the_api(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/frames", "/v1/nodes"} <= set(paths)
    assert client.get("/docs").status_code == 200


def test_a_job_carries_its_deadline_and_placement(
    client: TestClient, studio: dict[str, str]
) -> None:
    body = job_body(deadline="2026-12-02T09:00:00+08:00", placement="greenest")
    made = client.post("/v1/jobs", json=body, headers=studio)
    assert made.status_code == 201, made.text
    job = made.json()
    assert job["deadline"] == "2026-12-02T01:00:00Z" and job["placement"] == "greenest"
    weights = {"time": 0.2, "cost": 1.0, "carbon": 0.5}
    weighted = client.post("/v1/jobs", json=job_body(placement=weights), headers=studio).json()
    assert weighted["placement"] == weights and weighted["deadline"] is None
    plain = client.post("/v1/jobs", json=job_body(), headers=studio).json()
    assert plain["placement"] == "fastest"
    for bad, where in [
        ({"deadline": "2026-12-02T09:00:00"}, ["body", "deadline"]),  # no time zone
        ({"placement": "cleanest"}, ["body", "placement"]),
        ({"placement": {"time": 0, "cost": 0, "carbon": 0}}, ["body", "placement"]),
        ({"placement": {"cost": -1}}, ["body", "placement"]),
        ({"placement": {"cost": 1, "speed": 1}}, ["body", "placement"]),
    ]:
        refused = client.post("/v1/jobs", json=job_body(**bad), headers=studio)
        assert refused.status_code == 422, (bad, refused.text)
        assert any(p["loc"][: len(where)] == where for p in refused.json()["detail"]), refused.text
