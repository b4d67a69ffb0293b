"""Exactly-once submissions with ``Idempotency-Key``, against a real database: repeats,
a key reused for another request, concurrent retries, errors, other studios, expiry,
and a real `renderfarm api` killed -9 with keyed submissions in flight."""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import signal
import threading
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from scheduler.db import ChunkRow, JobRow, ManifestRow
from scheduler.db.tables import IdempotencyRow
from scheduler.settings import Settings
from scheduler.usecases.idempotency import IdempotencyKeys, KeyedRequest, hash_body
from scheduler.usecases.jobs import JobDetail, StudioService
from scheduler.usecases.submissions import JobRequest
from tests.conftest import Processes, free_port, wait_for
from tests.integration.conftest import Clock, rows

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
    body: dict[str, Any] = {"name": "shot 010", "frames": "1-24", "renderer": {"kind": "noop"}}
    body.update(overrides)
    return body


def keyed(headers: dict[str, str], key: str) -> dict[str, str]:
    return {**headers, "Idempotency-Key": key}


def count(engine: Engine, model: Any) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(model)).one()


def key_rows(engine: Engine) -> list[IdempotencyRow]:
    with Session(engine) as session:
        return list(session.exec(select(IdempotencyRow)))


def test_a_repeated_key_gets_the_first_answer_and_makes_one_job(
    client: TestClient, engine: Engine, studio: dict[str, str]
) -> None:
    first = client.post("/v1/jobs", json=job_body(), headers=keyed(studio, "shot-010-take-1"))
    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first.headers
    # the same request, spelled otherwise (key order) and quoted as the IETF draft writes it
    again = client.post(
        "/v1/jobs",
        json=dict(reversed(job_body().items())),
        headers=keyed(studio, '"shot-010-take-1"'),
    )
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert client.get(f"/v1/jobs/{first.json()['id']}", headers=studio).json()["frame_count"] == 24
    assert count(engine, JobRow) == 1
    assert count(engine, ChunkRow) == 24
    assert [(r.key, r.response["id"]) for r in key_rows(engine)] == [
        ("shot-010-take-1", first.json()["id"])
    ]


def test_a_key_reused_for_another_request_is_refused(
    client: TestClient, engine: Engine, studio: dict[str, str]
) -> None:
    first = client.post("/v1/jobs", json=job_body(), headers=keyed(studio, "k1"))
    other = client.post("/v1/jobs", json=job_body(frames="1-48"), headers=keyed(studio, "k1"))
    assert other.status_code == 422
    [error] = other.json()["detail"]
    assert error["loc"] == ["header", "Idempotency-Key"]
    assert "k1" in error["msg"] and "another request" in error["msg"]
    assert count(engine, JobRow) == 1
    # the key still answers the request it was used for
    assert client.post("/v1/jobs", json=job_body(), headers=keyed(studio, "k1")).json() == (
        first.json()
    )


def test_concurrent_requests_with_one_key_make_one_job(
    client: TestClient, engine: Engine, studio: dict[str, str]
) -> None:
    racers = 8
    start = threading.Barrier(racers)
    answers: list[httpx.Response] = []

    def race() -> None:
        start.wait()
        answers.append(
            client.post("/v1/jobs", json=job_body(frames="1-2000"), headers=keyed(studio, "race"))
        )

    threads = [threading.Thread(target=race) for _ in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(answers) == racers
    assert {a.status_code for a in answers} == {201}
    assert len({a.json()["id"] for a in answers}) == 1
    assert sum(a.headers.get("Idempotent-Replayed") == "true" for a in answers) == racers - 1
    assert count(engine, JobRow) == 1
    assert sum(chunk.chunks for chunk in rows(engine, ChunkRow)) == 2000  # one job's chunks
    assert len(key_rows(engine)) == 1


def test_another_studios_same_key_is_its_own(
    client: TestClient, engine: Engine, studio: dict[str, str], other_studio: dict[str, str]
) -> None:
    mine = client.post("/v1/jobs", json=job_body(), headers=keyed(studio, "shared"))
    theirs = client.post("/v1/jobs", json=job_body(), headers=keyed(other_studio, "shared"))
    assert mine.status_code == theirs.status_code == 201
    assert "Idempotent-Replayed" not in theirs.headers
    assert mine.json()["id"] != theirs.json()["id"]
    assert client.get(f"/v1/jobs/{mine.json()['id']}", headers=other_studio).status_code == 404
    # and a different body under the same key is no business of the other studio's
    assert (
        client.post(
            "/v1/jobs", json=job_body(frames="1-3"), headers=keyed(other_studio, "mine-only")
        ).status_code
        == 201
    )
    assert count(engine, JobRow) == 3


def test_a_request_answered_with_an_error_keeps_nothing(
    client: TestClient, engine: Engine, studio: dict[str, str]
) -> None:
    refused = client.post("/v1/jobs", json=job_body(pool="nowhere"), headers=keyed(studio, "k"))
    assert refused.status_code == 422
    assert "pool" in str(refused.json()["detail"])
    invalid = client.post("/v1/jobs", json=job_body(frames="x"), headers=keyed(studio, "k"))
    assert invalid.status_code == 422
    assert count(engine, JobRow) == 0
    assert key_rows(engine) == []
    # the key is evaluated afresh: a valid request with it makes the job, once
    made = client.post("/v1/jobs", json=job_body(), headers=keyed(studio, "k"))
    again = client.post("/v1/jobs", json=job_body(), headers=keyed(studio, "k"))
    assert made.status_code == again.status_code == 201
    assert "Idempotent-Replayed" not in made.headers
    assert again.json()["id"] == made.json()["id"]
    assert count(engine, JobRow) == 1


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9", "tab\there", '""'])
def test_a_malformed_key_is_refused_and_makes_nothing(
    client: TestClient, engine: Engine, studio: dict[str, str], key: str
) -> None:
    headers: dict[str, str | bytes] = {**studio, "Idempotency-Key": key.encode()}
    response = client.post("/v1/jobs", json=job_body(), headers=headers)
    assert response.status_code == 422
    assert "Idempotency-Key" in str(response.json()["detail"])
    assert count(engine, JobRow) == 0


def test_a_key_expires_after_its_retention(
    engine: Engine, settings: Settings, clock: Clock
) -> None:
    service = StudioService(engine, settings, clock)
    studio, _key = service.create_studio("ghibli-east")
    assert studio.id is not None
    keys = IdempotencyKeys(engine, clock, retention=3600)
    body = JobRequest.model_validate(job_body())
    request = KeyedRequest(studio.id, "k", "POST", "/v1/jobs", hash_body(body.model_dump()))

    def body_of(detail: JobDetail) -> dict[str, Any]:
        return {"id": detail.job.id}

    def submit() -> int:
        answer = keys.answer_once(
            request, 201, lambda keep: service.submit_job(request.studio_id, body, keep), body_of
        )
        return int(answer.body["id"])

    first = submit()
    clock.now += 3599
    assert submit() == first
    clock.now += 2
    assert submit() != first  # a new key by now: a new job
    assert count(engine, JobRow) == 2
    assert len(key_rows(engine)) == 1
    clock.now += 3601
    assert keys.collect() == 1
    assert key_rows(engine) == []


@pytest.mark.end_to_end
def test_an_api_killed_mid_submission_keeps_every_key_exactly_once(
    processes: Processes, engine: Engine, settings: Settings, service: StudioService
) -> None:
    """Keyed submissions in flight while `renderfarm api` is killed -9; then every key is
    retried on a restarted API: each key has exactly one job, each job its key."""
    _studio, secret = service.create_studio("impatient")
    headers = {"Authorization": f"Bearer {secret}"}
    keys = [f"sub-{n:03d}" for n in range(40)]
    body = {"name": "big", "frames": "1-4000", "renderer": {"kind": "noop"}}
    port = free_port()
    api = processes.start("api", "api", "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _answers(url), 60, "the API")
    answered: dict[str, int] = {}  # what a client was told before the kill
    todo: queue.SimpleQueue[str] = queue.SimpleQueue()
    for key in keys:
        todo.put(key)

    def submit_until_killed() -> None:
        with contextlib.suppress(queue.Empty, httpx.HTTPError):
            while True:
                key = todo.get_nowait()
                answer = httpx.post(
                    f"{url}/v1/jobs",
                    json=body,
                    headers={**headers, "Idempotency-Key": key},
                    timeout=60,
                )
                if answer.status_code == 201:
                    answered[key] = answer.json()["id"]

    threads = [threading.Thread(target=submit_until_killed) for _ in range(4)]
    for thread in threads:
        thread.start()
    wait_for(lambda: count(engine, JobRow) >= 4, 120, "a few jobs to be created")
    os.killpg(api.pid, signal.SIGKILL)
    for thread in threads:
        thread.join(timeout=90)
    assert len(answered) < len(keys)  # the kill came with submissions left to make
    _assert_one_key_per_job(engine)

    port = free_port()
    processes.start("api-again", "api", "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _answers(url), 60, "the restarted API")
    retried: dict[str, set[int]] = {key: set() for key in keys}

    def retry(key: str) -> None:
        for _ in range(2):
            answer = httpx.post(
                f"{url}/v1/jobs", json=body, headers={**headers, "Idempotency-Key": key}, timeout=60
            )
            assert answer.status_code == 201, answer.text
            retried[key].add(answer.json()["id"])

    retriers = [threading.Thread(target=retry, args=(key,)) for key in keys]
    for thread in retriers:
        thread.start()
    for thread in retriers:
        thread.join(timeout=120)
    assert all(len(ids) == 1 for ids in retried.values()), retried
    job_of = {key: next(iter(ids)) for key, ids in retried.items()}
    assert len(set(job_of.values())) == len(keys)  # one job per key, none shared
    assert {key: job_of[key] for key in answered} == answered  # what was said still holds
    _assert_one_key_per_job(engine)
    assert count(engine, JobRow) == len(keys)
    with Session(engine) as session:
        frames = session.exec(select(func.sum(ChunkRow.frame_count))).one()
    assert frames == 4000 * len(keys)


def _assert_one_key_per_job(engine: Engine) -> None:
    with Session(engine) as session:
        jobs = [job.id for job in session.exec(select(JobRow)) if job.id is not None]
    recorded = [row.response["id"] for row in key_rows(engine)]
    assert sorted(recorded) == sorted(jobs)  # no job without its key, no key without its job


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_repeated_key_makes_one_manifest(
    client: TestClient, engine: Engine, studio: dict[str, str]
) -> None:
    content = b"a scene"
    digest = hashlib.sha256(content).hexdigest()
    assert client.put(f"/v1/blobs/{digest}", content=content, headers=studio).status_code in (
        200,
        201,
    )
    body = {"files": [{"path": "shot.blend", "size": len(content), "hash": digest}]}
    first = client.post("/v1/manifests", json=body, headers=keyed(studio, "scene-v1"))
    again = client.post("/v1/manifests", json=body, headers=keyed(studio, "scene-v1"))
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert count(engine, ManifestRow) == 1
    other = client.post("/v1/manifests", json=body, headers=keyed(studio, "scene-v2"))
    assert other.json()["id"] != first.json()["id"]
    assert count(engine, ManifestRow) == 2
