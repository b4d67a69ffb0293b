"""The admin API (/v1/admin) for operators, against a real database: studios, keys
(rotation and revocation), terms, limits, regions and links, nodes (drain, disable,
enable, as the scheduler then dispatches), every studio's jobs, and the audit log of
who changed what. A studio's key reaches none of it."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from scheduler.core.states import ChunkState
from scheduler.db import ChunkRow
from scheduler.dispatch.scheduler import Scheduler
from scheduler.settings import Settings
from scheduler.usecases.jobs import StudioService
from scheduler.usecases.operators import OperatorService
from scheduler.wire.events import EVENTS_KEY
from tests.conftest import farm_env
from tests.integration.conftest import RecordingBroker, heartbeat, submit

pytestmark = pytest.mark.integration


@pytest.fixture
def operators(engine: Engine) -> OperatorService:
    return OperatorService(engine)


@pytest.fixture
def admin(operators: OperatorService) -> dict[str, str]:
    return {"Authorization": f"Bearer {operators.create_operator('mei.ops')[1]}"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def admin_routes(client: TestClient) -> list[tuple[str, str]]:
    """Every admin route and method, as the API documents them."""
    found = []
    paths = client.app.openapi()["paths"]  # type: ignore[attr-defined]
    for path, operations in paths.items():
        if path.startswith("/v1/admin"):
            filled = path.replace("{name}", "x").replace("{pool}", "cpu")
            filled = filled.replace("{prefix}", "rf_abcdef").replace("{action}", "drain")
            filled = filled.replace("{a}", "guizhou").replace("{b}", "zhejiang")
            found += [(method.upper(), filled) for method in operations]
    return found


def test_no_admin_route_answers_a_studio_key_or_none(
    client: TestClient, studios: StudioService, operators: OperatorService
) -> None:
    routes = admin_routes(client)
    assert len(routes) >= 18  # studios, keys, terms, limits, regions, links, nodes, jobs, audit
    studio_key = studios.create_studio("pixar-east")[1]
    _operator, revoked = operators.create_operator("former.ops")
    operators.revoke_key(revoked[:11])
    for method, path in routes:
        assert client.request(method, path, headers=bearer(studio_key)).status_code == 403, path
        assert client.request(method, path).status_code == 401, path
        assert client.request(method, path, headers=bearer(revoked)).status_code == 401, path
    # and an operator key is no studio key
    operator_key = operators.create_key("former.ops")
    assert client.get("/v1/jobs", headers=bearer(operator_key)).status_code == 401


def test_studios_are_created_changed_and_their_keys_rotated(
    client: TestClient, admin: dict[str, str]
) -> None:
    made = client.post(
        "/v1/admin/studios", json={"name": "ghibli-east", "weight": 2}, headers=admin
    )
    assert made.status_code == 201, made.text
    first = made.json()["key"]
    assert made.json()["studio"]["weight"] == 2
    assert (
        client.post("/v1/admin/studios", json={"name": "ghibli-east"}, headers=admin).status_code
        == 409
    )
    change = {"weight": 3, "max_queued_jobs": 5, "home_region": "zhejiang", "allow_templates": True}
    changed = client.patch("/v1/admin/studios/ghibli-east", json=change, headers=admin)
    assert changed.status_code == 200, changed.text
    assert {k: changed.json()[k] for k in change} == change
    assert changed.json()["max_queued_frames"] is None  # not sent: unchanged
    for bad, field in [
        ({"weight": 0}, "weight"),
        ({"home_region": "atlantis"}, "region"),
        ({"max_queued_jobs": -1}, "max_queued_jobs"),
        ({"wieght": 1}, "wieght"),
    ]:
        refused = client.patch("/v1/admin/studios/ghibli-east", json=bad, headers=admin)
        assert refused.status_code == 422 and field in refused.text, refused.text  # fmt: skip
    assert (
        client.patch("/v1/admin/studios/nobody", json={"weight": 1}, headers=admin).status_code
        == 404
    )
    terms = client.put(
        "/v1/admin/studios/ghibli-east/pools/cpu", json={"minimum": 4, "maximum": 8}, headers=admin
    )
    assert terms.json() == {"minimum": 4, "maximum": 8}
    # rotation: a second key, then the first revoked
    second = client.post("/v1/admin/studios/ghibli-east/keys", headers=admin).json()["key"]
    revoked = client.post(f"/v1/admin/studios/ghibli-east/keys/{first[:10]}/revoke", headers=admin)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert client.get("/v1/jobs", headers=bearer(first)).status_code == 401
    assert client.get("/v1/jobs", headers=bearer(second)).status_code == 200
    keys = client.get("/v1/admin/studios/ghibli-east/keys", headers=admin).json()
    assert [(k["prefix"], k["revoked_at"] is not None) for k in keys] == [
        (first[:10], True), (second[:10], False)
    ]  # fmt: skip
    ambiguous = client.post("/v1/admin/studios/ghibli-east/keys/rf_/revoke", headers=admin)
    assert ambiguous.status_code == 404 and "at least 6" in ambiguous.text
    listed = client.get("/v1/admin/studios", headers=admin).json()
    assert [s["name"] for s in listed] == ["ghibli-east"]


def test_limits_regions_and_links(client: TestClient, admin: dict[str, str]) -> None:
    assert client.put("/v1/admin/limits/houdini", json={"capacity": 4}, headers=admin).json() == {
        "name": "houdini", "capacity": 4
    }  # fmt: skip
    assert client.get("/v1/admin/limits", headers=admin).json() == [
        {"name": "houdini", "capacity": 4}
    ]
    assert (
        client.put("/v1/admin/limits/houdini", json={"capacity": -1}, headers=admin).status_code
        == 422
    )
    region = client.put(
        "/v1/admin/regions/guizhou-gui-an",
        json={"pue": 1.15, "tariff": [[0, 0.25], [8, 0.6]], "source": "2027 contract"},
        headers=admin,
    )
    assert region.status_code == 200, region.text
    assert region.json()["tariff"] == [[0, 0.25], [8, 0.6]] and region.json()["pue"] == 1.15
    bad = client.put("/v1/admin/regions/x", json={"tariff": [[3, 1]]}, headers=admin)
    assert bad.status_code == 422 and "hour 0" in bad.text
    names = [r["name"] for r in client.get("/v1/admin/regions", headers=admin).json()]
    assert "guizhou-gui-an" in names and "zhejiang" in names
    link = {"bandwidth_mbps": 10_000, "latency_ms": 14, "price_per_gb": 0.2}
    put = client.put("/v1/admin/links/zhejiang/guizhou-gui-an", json=link, headers=admin)
    assert put.status_code == 200 and put.json()["region_a"] == "guizhou-gui-an"
    assert client.put("/v1/admin/links/zhejiang/mars", json=link, headers=admin).status_code == 422
    assert (
        client.delete("/v1/admin/links/guizhou-gui-an/zhejiang", headers=admin).status_code == 204
    )
    assert (
        client.delete("/v1/admin/links/guizhou-gui-an/zhejiang", headers=admin).status_code == 404
    )


def test_a_drained_node_finishes_and_a_disabled_one_hands_its_chunks_on(
    client: TestClient, admin: dict[str, str], scheduler: Scheduler, studios: StudioService,
    studio_id: int, engine: Engine, fake_broker: RecordingBroker, broker: redis.Redis,
) -> None:  # fmt: skip
    job_id = submit(studios, studio_id, "1-8")
    scheduler.ingest([heartbeat("node-a", slots=2), heartbeat("node-b", slots=2)])
    first = scheduler.dispatch_tick()
    assert {m.node for m in first} == {"node-a", "node-b"}
    drained = client.post("/v1/admin/nodes/node-a/drain", headers=admin)
    assert drained.status_code == 200 and drained.json()["admin"] == "draining"
    assert drained.json()["hostname"] == "host"  # operators see the machine
    rung = [json.loads(item) for item in broker.lrange(EVENTS_KEY, 0, -1)]
    assert {"kind": "wake", "node": "node-a"} in rung  # the scheduler reads node-a again
    nodes = {n["name"]: n for n in client.get("/v1/admin/nodes", headers=admin).json()}
    sent_to_a = [m for m in first if m.node == "node-a"]  # its slots and its queue's place
    assert len(nodes["node-a"]["current"]) == len(sent_to_a)  # what it has now
    assert all(c.startswith(f"job {job_id}: ") for c in nodes["node-a"]["current"])
    scheduler.ingest([heartbeat("node-a", slots=2), heartbeat("node-b", slots=2)])
    assert all(m.node == "node-b" for m in scheduler.dispatch_tick())  # none new to node-a
    with Session(engine) as session:
        on_a = session.exec(select(ChunkRow).where(ChunkRow.node == "node-a")).all()
    assert on_a and all(c.state in ("dispatched", "running") for c in on_a)  # they finish
    disabled = client.post("/v1/admin/nodes/node-a/disable", headers=admin)
    assert disabled.status_code == 200 and disabled.json()["admin"] == "disabled"
    with Session(engine) as session:
        again = [session.get(ChunkRow, c.id) for c in on_a]
    assert all(c is not None and c.state == ChunkState.QUEUED and c.node is None for c in again)
    revoked = scheduler.stop_stale_attempts()  # the node is told to stop them
    assert len(revoked) == len(on_a) and set(revoked) <= set(fake_broker.revoked)
    # a dispatch that read the node list before the disable committed: the reconciler
    # sends what it placed there on again
    with Session(engine) as session:
        late = session.get(ChunkRow, on_a[0].id)
        assert late is not None
        late.state, late.node = ChunkState.DISPATCHED, "node-a"
        session.add(late)
        session.commit()
    scheduler.reconcile()
    with Session(engine) as session:
        again_late = session.get(ChunkRow, on_a[0].id)
    assert again_late is not None and again_late.state == ChunkState.QUEUED
    assert client.post("/v1/admin/nodes/node-a/enable", headers=admin).json()["admin"] == "enabled"
    scheduler.ingest([heartbeat("node-a", slots=2), heartbeat("node-b", slots=2)])
    assert "node-a" in {m.node for m in scheduler.dispatch_tick()}
    assert client.post("/v1/admin/nodes/node-a/reboot", headers=admin).status_code == 422
    assert client.post("/v1/admin/nodes/ghost/drain", headers=admin).status_code == 404
    assert studios.get_job(studio_id, job_id).job.state in ("queued", "running")


def test_every_studios_jobs_and_the_audit_of_who_did_what(
    client: TestClient, admin: dict[str, str], studios: StudioService, settings: Settings
) -> None:
    east = bearer(studios.create_studio("pixar-east")[1])
    west = bearer(studios.create_studio("weta-west")[1])
    body: dict[str, Any] = {"name": "beauty", "frames": "1-4", "renderer": {"kind": "noop"}}
    mine = client.post("/v1/jobs", json={**body, "show": "Mulan 2"}, headers=east).json()["id"]
    client.post("/v1/jobs", json=body, headers=west)
    assert client.post(f"/v1/jobs/{mine}/cancel", headers=east).status_code == 200
    jobs = client.get("/v1/admin/jobs", headers=admin).json()
    assert jobs["total"] == 2 and {j["studio"] for j in jobs["items"]} == {
        "pixar-east",
        "weta-west",
    }
    of_east = client.get("/v1/admin/jobs?studio=pixar-east&show=Mulan%202", headers=admin).json()
    assert [j["id"] for j in of_east["items"]] == [mine]
    assert of_east["items"][0]["state"] == "cancelled"
    client.put("/v1/admin/limits/houdini", json={"capacity": 2}, headers=admin)
    # an operator at the command line is audited as cli:<user>
    cli = subprocess.run(
        [sys.executable, "-m", "scheduler.launch.cli", "studio", "weight", "weta-west", "3"],
        env=farm_env(settings), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    entries = client.get("/v1/admin/audit", headers=admin).json()["items"]
    seen = [(e["actor_kind"], e["actor"], e["action"], e["target"]) for e in entries]
    assert seen[0][0:3] == ("operator", seen[0][1], "studio.update") and seen[0][1].startswith(
        "cli:"
    )
    assert ("operator", "mei.ops", "limit.set", "houdini") in seen
    assert ("studio", "pixar-east", "job.cancel", f"job {mine}") in seen
    assert ("studio", "pixar-east", "job.submit", f"job {mine}") in seen
    assert entries[0]["detail"] == {"weight": 3.0}
    only_jobs = client.get("/v1/admin/audit?action=job.", headers=admin).json()
    assert {e["action"] for e in only_jobs["items"]} == {"job.submit", "job.cancel"}
    by_east = client.get("/v1/admin/audit?actor=pixar-east&limit=1", headers=admin).json()
    assert by_east["total"] == 2 and len(by_east["items"]) == 1
    naive = client.get("/v1/admin/audit?since=2026-12-01T09:00:00", headers=admin)
    assert naive.status_code == 422 and "time zone" in naive.text
    listed = subprocess.run(
        [sys.executable, "-m", "scheduler.launch.cli", "audit", "--action", "job."],
        env=farm_env(settings), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert listed.returncode == 0 and f"studio pixar-east: job.cancel job {mine}" in listed.stdout
