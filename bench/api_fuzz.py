"""Schemathesis over every operation of the API, in process, with every check: the
totals of requests, server errors and schema violations per operation, as JSON.

The API is ``api.app.create_app`` on a farm of its own (a SQLite file in a temporary
folder, or ``--database-url``; Redis only for progress, which answers null without it),
with one studio (its key is the Bearer of the studio routes), the node token for
``/v1/internal``, and one job, so that small ids find something. Each operation gets
``--examples`` positive and as many negative examples (schema-valid and schema-invalid
requests), derandomized from ``--seed``: the same run every time.

    python bench/api_fuzz.py                          # 500 examples per operation and mode
    python bench/api_fuzz.py --examples 50 --database-url postgresql+psycopg://...

tests/integration/test_api_fuzz.py runs ``fuzz`` with a few examples and asserts that
it finds nothing.

The streamed uploads (``PUT /v1/blobs/{hash}``, ``POST /v1/blobs``, ``PUT
/v1/internal/outputs/{path}``) read their body as bytes and declare none in the
schema, so schemathesis sends them empty bodies: their parameters and answers are
checked, their contents by tests/integration/test_assets.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
from hypothesis import HealthCheck, Phase
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

NODE_TOKEN = "fuzz-node-token-0123456789"

# Operations whose schema-valid requests the farm may still refuse with a 4xx naming
# the field, and why: what they check is beyond what a JSON schema can say. Everywhere
# else a schema-valid request must be answered 2xx, 401, 404 or 409.
CHECKED_BEYOND_THE_SCHEMA = {
    "POST /v1/jobs": "a frame spec's grammar and size, the farm's limits and pools, the "
    "studio's own jobs to depend on and manifests, a Blender device needing a GPU",
    "POST /v1/assets/missing": "a path relative, without '..', unique in the manifest",
    "POST /v1/manifests": "a path relative, without '..', unique in the manifest; every "
    "content sent before",
    "PUT /v1/blobs/{blob_hash}": "the body's SHA-256 is the one in the path",
    "POST /v1/blobs": "the body is a tar whose members are named by their SHA-256",
    "GET /v1/studios/me/usage": "since is not after until",
    "POST /v1/plans": "a workload with shots (or a studio that rendered jobs), a farm with "
    "slots (or live nodes), at most 200,000 frames, a region's curves that hold",
    "POST /v1/templates": "the template is a valid OpenJD job template (openjd-model's "
    "rules, which its JSON schema cannot state), its parameter values meet their "
    "constraints, and the farm's limits, pools, manifests and jobs as for POST /v1/jobs",
    "POST /v1/jobs/{job_id}/requeue": "a frame spec's grammar and size, frames of the job",
    "GET /v1/jobs": "metadata filters hold no NUL or lone surrogate (what a database stores)",
    "POST /v1/webhooks": "a URL whose host resolves, to a public address",
    "POST /v1/admin/studios": "a studio name of 1 to 100 characters once stripped",
    "PATCH /v1/admin/studios/{name}": "a home region the farm knows",
    "PUT /v1/admin/studios/{name}/pools/{pool}": "the minimum is at most the maximum",
    "PUT /v1/admin/limits/{name}": "a limit's name of 1 to 64 characters once stripped",
    "PUT /v1/admin/regions/{name}": "a tariff's and a carbon profile's hours ascend from 0",
    "PUT /v1/admin/links/{a}/{b}": "two regions the farm knows, not one twice",
    "POST /v1/admin/nodes/{name}/{action}": "the action is drain, disable or enable",
}
# Server-sent streams never end: a browser test reads them (tests/end_to_end/test_monitor.py).
STREAMS = {"GET /v1/stream/jobs", "GET /v1/stream/jobs/{job_id}", "GET /v1/admin/stream"}


@dataclass
class Totals:
    """What one operation answered: ``failures`` keeps the first few, as text."""

    requests: int = 0
    server_errors: int = 0
    violations: int = 0
    failures: list[str] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=dict)


def fuzz(
    app: Any,
    studio_key: str,
    node_token: str,
    examples: int,
    seed: int = 0,
    on_request: Callable[[], None] | None = None,
    operator_key: str | None = None,
) -> dict[str, Totals]:
    """Every operation of ``app``'s OpenAPI but the endless streams, ``examples``
    positive and negative cases each, all checks, each with the key its routes take
    (the admin routes an operator's, where given); ``on_request`` runs before each (a
    test resets the farm there)."""
    import schemathesis
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    totals: dict[str, Totals] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        if label in STREAMS:
            continue
        counted = totals.setdefault(label, Totals())
        beyond = label in CHECKED_BEYOND_THE_SCHEMA
        key = studio_key
        if operation.path.startswith("/v1/internal"):
            key = node_token
        elif operation.path.startswith("/v1/admin") and operator_key is not None:
            key = operator_key
        headers = {"Authorization": f"Bearer {key}"}
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz_operation(operation, mode, headers, counted, examples, seed, on_request, beyond)
    return totals


def _fuzz_operation(
    operation: Any,
    mode: Any,
    headers: dict[str, str],
    counted: Totals,
    examples: int,
    seed: int,
    on_request: Callable[[], None] | None,
    beyond: bool,
) -> None:
    from schemathesis.core.failures import Failure, FailureGroup
    from schemathesis.openapi.checks import RejectedPositiveData

    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis.settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @hypothesis.seed(seed)
    def one(case: Any) -> None:
        if on_request is not None:
            on_request()
        given = {**(case.headers or {}), **headers}
        counted.requests += 1
        try:
            response = case.call(headers=given)
        except Exception as error:  # the in-process client re-raises what the app raised
            counted.server_errors += 1
            _keep(counted, f"{type(error).__name__}: {error}", case, given)
            return
        if response.status_code >= 500:
            counted.server_errors += 1
        try:
            case.validate_response(response, headers=given)
        except (FailureGroup, Failure) as failed:
            found = failed.exceptions if isinstance(failed, FailureGroup) else (failed,)
            found = tuple(
                f
                for f in found
                if not (
                    beyond and isinstance(f, RejectedPositiveData) and f.status_code in (400, 422)
                )
            )
            if not found:
                return
            for f in found:
                counted.kinds[f.title] = counted.kinds.get(f.title, 0) + 1
            counted.violations += len(found)
            _keep(counted, "; ".join(f"{f.title}: {f.message}" for f in found), case, given)

    # Unsatisfiable: nothing of the operation can be made schema-invalid (GET /healthz).
    with contextlib.suppress(hypothesis.errors.Unsatisfiable):
        one()


def _keep(counted: Totals, what: str, case: Any, headers: dict[str, str]) -> None:
    if len(counted.failures) < 5:
        counted.failures.append(f"{what} <- {case.as_curl_command(headers=headers)}"[:3000])


def summary(totals: dict[str, Totals]) -> dict[str, Any]:
    return {
        "requests": sum(t.requests for t in totals.values()),
        "server_errors": sum(t.server_errors for t in totals.values()),
        "violations": sum(t.violations for t in totals.values()),
        "operations": {label: asdict(t) for label, t in totals.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=500, help="per operation and mode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temp folder")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    args = parser.parse_args()

    from api.app import create_app
    from scheduler.db import make_engine
    from scheduler.settings import Settings
    from scheduler.usecases.jobs import StudioService
    from scheduler.usecases.submissions import JobRequest

    with tempfile.TemporaryDirectory(prefix="renderfarm-fuzz-") as folder:
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            data_dir=Path(folder),
            database_url=args.database_url or f"sqlite:///{folder}/farm.db",
            broker_url=args.redis_url,
            storage=str(Path(folder) / "storage"),
            node_token=SecretStr(NODE_TOKEN),
        )
        engine = make_engine(settings.effective_database_url)
        app = create_app(settings, engine)
        service = StudioService(engine, settings)
        studio, key = service.create_studio(  # a shared database too
            f"fuzz-{uuid.uuid4().hex[:8]}", allow_templates=True
        )
        assert studio.id is not None
        service.submit_job(
            studio.id,
            JobRequest.model_validate(
                {"name": "shot", "frames": "1-4", "renderer": {"kind": "noop"}}
            ),
        )
        from scheduler.usecases.operators import OperatorService

        operator = OperatorService(engine).create_operator(f"fuzz-{uuid.uuid4().hex[:8]}")[1]
        totals = fuzz(app, key, NODE_TOKEN, args.examples, args.seed, operator_key=operator)
        engine.dispose()
    print(json.dumps(summary(totals), indent=2))


if __name__ == "__main__":
    main()
