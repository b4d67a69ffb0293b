"""A production's metadata on jobs (show, sequence, shot, artist): stored as submitted,
shown, listed and filtered by, carried by a template's jobs, and refused with a 422
naming the field where it cannot be stored."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from scheduler.usecases.jobs import StudioService
from tests.integration.test_templates import TWO_STEPS

pytestmark = pytest.mark.integration

MULAN = {"show": "Mulan 2", "sequence": "sq010", "shot": "sh020", "artist": "li.wei"}


def job(**fields: Any) -> dict[str, Any]:
    return {"name": "beauty", "frames": "1-2", "renderer": {"kind": "noop"}, **fields}


@pytest.fixture
def key(studios: StudioService) -> dict[str, str]:
    return {"Authorization": f"Bearer {studios.create_studio('mulan-east')[1]}"}


def test_metadata_is_shown_and_jobs_are_listed_by_it(
    client: TestClient, key: dict[str, str], studios: StudioService
) -> None:
    made = client.post("/v1/jobs", json=job(**MULAN), headers=key)
    assert made.status_code == 201, made.text
    assert {name: made.json()[name] for name in MULAN} == MULAN
    other = client.post("/v1/jobs", json=job(show="Mulan 2", shot="sh030"), headers=key)
    plain = client.post("/v1/jobs", json=job(), headers=key)
    assert other.status_code == plain.status_code == 201
    assert plain.json()["show"] is None and plain.json()["artist"] is None
    shown = client.get(f"/v1/jobs/{made.json()['id']}", headers=key).json()
    assert {name: shown[name] for name in MULAN} == MULAN

    def listed(query: str) -> list[int]:
        page = client.get(f"/v1/jobs?{query}", headers=key)
        assert page.status_code == 200, page.text
        assert page.json()["total"] == len(page.json()["items"])
        return [item["id"] for item in page.json()["items"]]

    assert listed("show=Mulan%202") == [other.json()["id"], made.json()["id"]]
    assert listed("show=Mulan%202&shot=sh020") == [made.json()["id"]]
    assert listed("artist=li.wei&state=queued") == [made.json()["id"]]
    assert listed("show=mulan%202") == []  # exact values
    # another studio's jobs of the same show are not this studio's to list
    theirs = {"Authorization": f"Bearer {studios.create_studio('mulan-west')[1]}"}
    assert client.post("/v1/jobs", json=job(show="Mulan 2"), headers=theirs).status_code == 201
    assert len(listed("show=Mulan%202")) == 2


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"show": ""}, ["body", "show"]),
        ({"shot": "x" * 101}, ["body", "shot"]),
        ({"artist": "li\u0000wei"}, ["body", "artist"]),
        ({"sequence": 10}, ["body", "sequence"]),
    ],
)
def test_metadata_that_cannot_be_stored_is_a_422_naming_it(
    client: TestClient, key: dict[str, str], fields: dict[str, Any], where: list[str]
) -> None:
    answer = client.post("/v1/jobs", json=job(**fields), headers=key)
    assert answer.status_code == 422
    assert where in [error["loc"] for error in answer.json()["detail"]]
    assert client.get("/v1/jobs", headers=key).json()["total"] == 0  # nothing half-made


def test_a_bad_metadata_filter_is_a_422(client: TestClient, key: dict[str, str]) -> None:
    answer = client.get("/v1/jobs?shot=" + "x" * 101, headers=key)
    assert answer.status_code == 422 and "shot" in answer.text


def test_a_templates_jobs_carry_its_metadata(client: TestClient, studios: StudioService) -> None:
    key = studios.create_studio("ghibli-east", allow_templates=True)[1]
    headers = {"Authorization": f"Bearer {key}"}
    body = {"template": TWO_STEPS, "parameters": {"Shot": "sh020"}, **MULAN}
    answer = client.post("/v1/templates", json=body, headers=headers)
    assert answer.status_code == 201, answer.text
    jobs = client.get("/v1/jobs?shot=sh020", headers=headers).json()["items"]
    assert len(jobs) == 2  # a job per step, each with the template's metadata
    assert all({name: j[name] for name in MULAN} == MULAN for j in jobs)
