"""Schemathesis over every operation of the API, with every check: no server error,
no answer the OpenAPI schema does not describe, no schema-invalid request accepted.

Bounded (a few positive and negative examples per operation, derandomized, seed 0) to
run in a minute or two in CI on SQLite or PostgreSQL; bench/api_fuzz.py is the longer
run, and says which operations may refuse schema-valid requests, and why.
"""

from __future__ import annotations

import json

import pytest
from pydantic import SecretStr
from sqlalchemy.engine import Engine

from api.app import create_app
from bench.api_fuzz import NODE_TOKEN, fuzz, summary
from scheduler.settings import Settings
from scheduler.usecases.jobs import StudioService
from scheduler.usecases.operators import OperatorService
from scheduler.usecases.submissions import JobRequest

pytestmark = pytest.mark.integration

EXAMPLES = 20  # per operation and mode (schema-valid, schema-invalid)


def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    engine: Engine, settings: Settings
) -> None:
    farm = settings.model_copy(update={"node_token": SecretStr(NODE_TOKEN)})
    app = create_app(farm, engine)
    service = StudioService(engine, farm)
    studio, key = service.create_studio("fuzz-east", allow_templates=True)
    assert studio.id is not None
    service.submit_job(  # so that small ids find a job
        studio.id,
        JobRequest.model_validate({"name": "shot", "frames": "1-4", "renderer": {"kind": "noop"}}),
    )

    operator = OperatorService(engine).create_operator("fuzz-ops")[1]
    totals = summary(fuzz(app, key, NODE_TOKEN, EXAMPLES, seed=0, operator_key=operator))

    found = {
        label: {"server_errors": t["server_errors"], "kinds": t["kinds"], "first": t["failures"]}
        for label, t in totals["operations"].items()
        if t["server_errors"] or t["violations"]
    }
    assert not found, json.dumps(found, indent=1)
    assert totals["requests"] > 20 * len(totals["operations"])
