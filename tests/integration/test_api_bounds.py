"""Every input within what the database and the code can hold (scheduler/core/bounds.py):
a number past a column, a frame spec of thousands of digits, text with NUL or a lone
surrogate, a float that is not finite, each a 422 naming the field, and nothing made."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from scheduler.settings import Settings
from scheduler.usecases.jobs import StudioService
from tests.integration.test_api import count_rows, job_body

pytestmark = pytest.mark.integration

INT32_PAST = 2**31
INT64_PAST = 2**63


@pytest.fixture
def studio(engine: Engine, settings: Settings) -> dict[str, str]:
    key = StudioService(engine, settings).create_studio("bounds-east")[1]
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


def fields_named(answer: Any) -> str:
    return json.dumps([error.get("loc") for error in answer.json()["detail"]])


# (field, the body's overrides, raw JSON replacing the text "@") ; json.dumps writes a lone
# surrogate as its \ud800 escape, and NaN as NaN, as a client's JSON may.
BAD_JOBS: list[tuple[str, dict[str, Any], str | None]] = [
    ("chunk_size", {"chunk_size": INT32_PAST}, None),
    ("max_failed_frames", {"max_failed_frames": INT64_PAST}, None),
    ("depends_on", {"depends_on": [INT32_PAST]}, None),
    ("manifest", {"manifest": INT64_PAST}, None),
    ("priority", {"priority": True}, None),
    ("frames", {"frames": "1" * 5000}, None),
    ("frames", {"frames": f"1-{INT32_PAST}"}, None),
    ("frames", {"frames": f"-{INT32_PAST + 1}"}, None),
    ("frames", {"frames": f"1-10x{'9' * 4000}"}, None),
    ("frames", {"frames": "1-2147483647:1,-2147483648--1"}, None),
    ("frames", {"frames": "1\x00"}, None),
    ("name", {"name": "shot\x00010"}, None),
    ("name", {"name": "shot \ud800"}, None),
    ("pool", {"pool": "\udfff"}, None),
    ("limits", {"limits": ["\ud83d"]}, None),
    ("tags", {"requirements": {"tags": ["gpu\udc00"]}}, None),
    ("tags", {"requirements": {"tags": ["a\x00"]}}, None),
    ("timeout", {"timeout": float("nan")}, None),
    ("timeout", {"timeout": float("inf")}, None),
    ("stall_timeout", {"stall_timeout": "@"}, "1e400"),
    ("memory_gb", {"requirements": {"memory_gb": "@"}}, "-Infinity"),
]


@pytest.mark.parametrize(("field", "overrides", "raw"), BAD_JOBS)
def test_a_job_out_of_bounds_is_a_422_naming_the_field_and_makes_nothing(
    client: TestClient,
    studio: dict[str, str],
    engine: Engine,
    field: str,
    overrides: dict[str, Any],
    raw: str | None,
) -> None:
    text = json.dumps(job_body(**overrides))
    if raw is not None:
        text = text.replace('"@"', raw)

    answer = client.post("/v1/jobs", content=text, headers=studio)

    assert answer.status_code == 422, answer.text
    assert field in fields_named(answer)
    assert count_rows(engine) == (0, 0)
    assert client.get("/v1/jobs", headers=studio).status_code == 200  # nothing broke reads


@pytest.mark.parametrize(
    ("path", "field"),
    [
        (f"/v1/jobs?offset={INT64_PAST}", "offset"),
        (f"/v1/jobs/1/frames?offset={INT32_PAST}", "offset"),
        (f"/v1/jobs/{INT32_PAST}", "job_id"),
        (f"/v1/jobs/1/frames/{-INT32_PAST - 1}/log", "frame"),
        ("/v1/jobs?prority=90", "prority"),
        (f"/v1/manifests/{INT32_PAST}", "manifest_id"),
    ],
)
def test_a_parameter_out_of_bounds_is_a_422_naming_it(
    client: TestClient, studio: dict[str, str], path: str, field: str
) -> None:
    answer = client.get(path, headers=studio)

    assert answer.status_code == 422, answer.text
    assert field in fields_named(answer)


def test_a_manifest_path_with_nul_or_a_surrogate_is_refused(
    client: TestClient, studio: dict[str, str]
) -> None:
    for path in ("a\x00.blend", "a\udc80.blend"):
        entry = {"path": path, "size": 1, "hash": "0" * 64}
        answer = client.post(
            "/v1/manifests", content=json.dumps({"files": [entry]}), headers=studio
        )
        assert answer.status_code == 422, answer.text
        assert "path" in fields_named(answer)
