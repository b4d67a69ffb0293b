"""Webhooks against real local HTTP receivers and a real database: a job's events are
written with the change that made them, delivered signed, retried with backoff (one
receiver fails three times first), logged per delivery, never sent by the transaction
that wrote them, and refused for addresses inside the farm's network."""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from api.app import create_app
from scheduler.db import JobRow, WebhookEvent
from scheduler.dispatch.scheduler import Scheduler
from scheduler.dispatch.webhooks import WebhookSender
from scheduler.errors import InvalidRequest
from scheduler.settings import Settings
from scheduler.usecases.jobs import StudioService
from scheduler.usecases.regions import set_region
from scheduler.usecases.webhooks import SIGNATURE_HEADER, check_url, verify
from scheduler.wire.messages import FrameReport
from tests.integration.conftest import Clock, event, heartbeat

pytestmark = pytest.mark.integration


@dataclass
class Receiver:
    """A local HTTP server that records each POST; answers 500 ``fail`` times first."""

    fail: int = 0
    hang: bool = False
    got: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.got]


@pytest.fixture
def receivers() -> Iterator[Any]:
    servers = []

    def start(fail: int = 0, hang: bool = False) -> Receiver:
        receiver = Receiver(fail, hang)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.got.append((dict(self.headers), body))
                if receiver.hang:
                    time.sleep(10)
                status = 500 if len(receiver.got) <= receiver.fail else 204
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
        return receiver

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def hook_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "webhook_private_addresses": True,  # the receivers are on this machine
            "webhook_retry_seconds": 0.05,
            "webhook_timeout": 1.0,
        }
    )


@pytest.fixture
def hooks_client(engine: Engine, hook_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(hook_settings, engine)) as client:
        yield client


@pytest.fixture
def studio_key(studios: StudioService, studio_id: int) -> dict[str, str]:
    return {"Authorization": f"Bearer {studios.create_key('pixar-east')}"}


def subscribe(client: TestClient, key: dict[str, str], url: str, *events: str) -> dict[str, Any]:
    answer = client.post("/v1/webhooks", json={"url": url, "events": list(events)}, headers=key)
    assert answer.status_code == 201, answer.text
    return answer.json()  # type: ignore[no-any-return]


def render(
    client: TestClient, key: dict[str, str], scheduler: Scheduler, frames: str = "1-2",
    fail: bool = False,
) -> int:  # fmt: skip
    """Submit a job over the API and have node-a render (or fail) every chunk of it."""
    body = {"name": "beauty", "frames": frames, "renderer": {"kind": "noop"}, "max_attempts": 1,
            "show": "Mulan 2", "shot": "sh020"}  # fmt: skip
    job = client.post("/v1/jobs", json=body, headers=key).json()
    scheduler.ingest([heartbeat("node-a", slots=4)])
    for message in scheduler.dispatch_tick():
        if fail:
            done = event("failed", message, error="Blender cannot open the scene", exit_code=1)
        else:
            reports = [FrameReport(f, None, 1.0, 1.0) for f in message.frames]
            done = event("finished", message, results=reports)
        scheduler.ingest([done])
    return int(job["id"])


def deliver_until(sender: WebhookSender, done: Any, rounds: int = 100) -> None:
    for _ in range(rounds):
        sender.send_due()
        if done():
            return
        time.sleep(0.05)
    raise AssertionError("deliveries did not finish")


def test_a_done_job_is_delivered_signed_and_a_flaky_receiver_gets_it_on_the_fourth_try(
    hooks_client: TestClient, studio_key: dict[str, str], scheduler: Scheduler, engine: Engine,
    hook_settings: Settings, receivers: Any,
) -> None:  # fmt: skip
    steady, flaky = receivers(), receivers(fail=3)
    first = subscribe(hooks_client, studio_key, steady.url, "job.done", "job.failed")
    second = subscribe(hooks_client, studio_key, flaky.url, "job.done")
    assert first["secret"].startswith("whsec_") and first["secret"] != second["secret"]
    listed = hooks_client.get("/v1/webhooks", headers=studio_key).json()
    assert [h["id"] for h in listed] == [first["id"], second["id"]]
    assert all(h["secret"] is None for h in listed)  # shown once
    job_id = render(hooks_client, studio_key, scheduler)
    assert steady.got == flaky.got == []  # the job is done; nothing was sent by its change
    sender = WebhookSender(engine, hook_settings)
    deliver_until(sender, lambda: len(flaky.got) == 4 and len(steady.got) == 1)
    sender.record_finished(wait=5)
    [(headers, body)] = steady.got
    assert verify(first["secret"], headers[SIGNATURE_HEADER], body, time.time())
    assert not verify(second["secret"], headers[SIGNATURE_HEADER], body, time.time())
    sent = json.loads(body)
    assert sent["type"] == headers["Renderfarm-Event"] == "job.done"
    assert sent["id"] == headers["Renderfarm-Event-Id"] and sent["id"].startswith("evt_")
    assert sent["data"] == {
        "job_id": job_id, "name": "beauty", "state": "done", "message": None, "frames": 2,
        "show": "Mulan 2", "sequence": None, "shot": "sh020",
    }  # fmt: skip
    # the flaky receiver got the same event four times, each signed afresh
    assert {b["id"] for b in flaky.bodies()} == {sent["id"]}
    assert all(verify(second["secret"], h[SIGNATURE_HEADER], b, time.time()) for h, b in flaky.got)
    log = hooks_client.get(f"/v1/webhooks/{second['id']}/deliveries", headers=studio_key).json()
    [delivery] = log["items"]
    assert delivery["state"] == "delivered" and delivery["attempts"] == 4
    assert delivery["last_status"] == 204 and delivery["event_id"] == sent["id"]
    assert sender.send_due() == 0  # nothing more to send


def test_failed_frames_failed_jobs_and_held_jobs_are_events_too(
    hooks_client: TestClient, studio_key: dict[str, str], scheduler: Scheduler, engine: Engine,
    hook_settings: Settings, receivers: Any,
) -> None:  # fmt: skip
    receiver = receivers()
    subscribe(hooks_client, studio_key, receiver.url, "job.failed", "frame.failed", "job.held")
    failed = render(hooks_client, studio_key, scheduler, "1", fail=True)
    needy = {"name": "big", "frames": "1", "renderer": {"kind": "noop"},
             "requirements": {"gpus": 8}}  # fmt: skip
    held = hooks_client.post("/v1/jobs", json=needy, headers=studio_key).json()["id"]
    scheduler.ingest([heartbeat("node-a", slots=4)])
    scheduler.dispatch_tick()
    scheduler.dispatch_tick()  # the same reason again is no new event
    sender = WebhookSender(engine, hook_settings)
    deliver_until(sender, lambda: len(receiver.got) == 3)
    assert sender.send_due() == 0 and len(receiver.got) == 3  # one event each, no repeats
    kinds = {b["type"]: b["data"] for b in receiver.bodies()}
    assert set(kinds) == {"frame.failed", "job.failed", "job.held"}
    assert kinds["frame.failed"]["job_id"] == failed and kinds["frame.failed"]["frames"] == "1"
    assert kinds["frame.failed"]["error"] == "Blender cannot open the scene"
    assert kinds["job.failed"]["message"] == "1 frame(s) failed every attempt"
    assert kinds["job.held"] == {
        "job_id": held,
        "name": "big",
        "message": "no live node of pool cpu has 8 GPU(s); it waits for one",
    }


def test_a_job_waiting_for_a_window_is_one_held_event_however_its_message_drifts(
    hooks_client: TestClient, studio_key: dict[str, str], scheduler: Scheduler, engine: Engine,
    clock: Clock, receivers: Any,
) -> None:  # fmt: skip
    subscribe(hooks_client, studio_key, receivers().url, "job.held")
    with Session(engine) as session:
        set_region(session, "night-tariff", clock(), pue=1.2, carbon_g_per_kwh=500,
                   tariff=[(0, 0.2), (8, 1.2), (22, 0.2)])  # fmt: skip
        session.commit()
    midnight = dt.datetime(2026, 12, 1, tzinfo=dt.timezone(dt.timedelta(hours=8))).timestamp()
    clock.now = midnight + 9 * 3600  # the day price: it waits for the night's
    deadline = dt.datetime.fromtimestamp(midnight + 33 * 3600, dt.UTC).isoformat()
    body = {"name": "flexible", "frames": "1-6", "renderer": {"kind": "noop"},
            "placement": "cheapest", "deadline": deadline, "timeout": 600}  # fmt: skip
    assert hooks_client.post("/v1/jobs", json=body, headers=studio_key).status_code == 201
    messages = []
    for minutes, slots in ((0, 2), (40, 3), (80, 6)):  # its latest start moves with them
        clock.now = midnight + 9 * 3600 + minutes * 60
        scheduler.siting.ttl = 0.0
        scheduler.ingest([heartbeat("night-1", slots=slots, region="night-tariff")])
        assert scheduler.dispatch_tick() == []
        with Session(engine) as session:
            messages.append(session.exec(select(JobRow.message)).one())
    assert len(set(messages)) > 1 and all(m and m.startswith("waits for a") for m in messages)
    with Session(engine) as session:
        kinds = session.exec(select(WebhookEvent.kind)).all()
    assert kinds == ["job.held"]  # once, when it began to wait


def test_a_receiver_that_never_answers_holds_nothing_up_and_is_retried_then_given_up(
    hooks_client: TestClient, studio_key: dict[str, str], scheduler: Scheduler, engine: Engine,
    hook_settings: Settings,
) -> None:  # fmt: skip
    silent = socket.socket()  # accepts connections, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
    hook = subscribe(hooks_client, studio_key, url, "job.done")
    job_id = render(hooks_client, studio_key, scheduler)
    detail = hooks_client.get(f"/v1/jobs/{job_id}", headers=studio_key).json()
    assert detail["state"] == "done"  # recorded, with its event waiting in the outbox
    quick = hook_settings.model_copy(update={"webhook_timeout": 0.2, "webhook_retry_hours": 0.0005})
    sender = WebhookSender(engine, quick)

    def ended() -> bool:
        log = hooks_client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=studio_key)
        return bool(log.json()["items"][0]["state"] != "pending")

    deliver_until(sender, ended)
    [delivery] = hooks_client.get(
        f"/v1/webhooks/{hook['id']}/deliveries", headers=studio_key
    ).json()["items"]
    # tried until its (here: seconds long) retry period ran out, then given up
    assert delivery["state"] == "failed" and delivery["attempts"] >= 1
    assert "ReadTimeout" in delivery["last_error"] and delivery["last_status"] is None
    silent.close()


def test_a_slow_receiver_holds_its_sender_only(
    hooks_client: TestClient, studio_key: dict[str, str], scheduler: Scheduler, engine: Engine,
    hook_settings: Settings, receivers: Any,
) -> None:  # fmt: skip
    slow, fast = receivers(hang=True), receivers()  # slow: answers after 10 s
    hooks = [subscribe(hooks_client, studio_key, r.url, "job.done") for r in (slow, fast)]
    render(hooks_client, studio_key, scheduler)
    sender = WebhookSender(engine, hook_settings.model_copy(update={"webhook_timeout": 30.0}))
    try:
        assert sender.send_due() == 2  # both started; the round waits for neither
        deliver_until(sender, lambda: len(fast.got) == 1 and len(slow.got) == 1)
        sender.record_finished(wait=2)

        def state(hook: dict[str, Any]) -> str:
            log = hooks_client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=studio_key)
            return str(log.json()["items"][0]["state"])

        assert state(hooks[1]) == "delivered" and state(hooks[0]) == "pending"
    finally:
        sender.pool.shutdown(wait=False, cancel_futures=True)


def test_a_delivery_goes_to_the_address_that_was_checked() -> None:
    pinned = check_url("http://localhost:8080/hooks?a=1", private_allowed=True)
    assert pinned.url in ("http://127.0.0.1:8080/hooks?a=1", "http://[::1]:8080/hooks?a=1")
    assert pinned.host == "localhost:8080" and pinned.hostname == "localhost"
    with pytest.raises(InvalidRequest, match="private or reserved"):
        check_url("http://localhost/", private_allowed=False)


@pytest.mark.parametrize(
    "address",
    ["::ffff:10.0.0.1", "64:ff9b::a00:1", "::127.0.0.1", "fd00::1", "100.64.0.1", "0.0.0.0"],
)
def test_private_addresses_in_any_disguise_are_refused(address: str) -> None:
    shown = f"[{address}]" if ":" in address else address
    with pytest.raises(InvalidRequest, match="private or reserved"):
        check_url(f"http://{shown}/hooks", private_allowed=False)


def test_two_senders_never_send_one_delivery_at_once(
    hooks_client: TestClient, studio_key: dict[str, str], scheduler: Scheduler, engine: Engine,
    hook_settings: Settings, receivers: Any,
) -> None:  # fmt: skip
    subscribe(hooks_client, studio_key, receivers().url, "job.done")
    render(hooks_client, studio_key, scheduler)
    one, other = WebhookSender(engine, hook_settings), WebhookSender(engine, hook_settings)
    assert len(one.claim()) == 1
    assert other.claim() == []  # claimed: its lease runs


def test_a_deleted_webhook_gets_no_more(
    hooks_client: TestClient, studio_key: dict[str, str], scheduler: Scheduler, engine: Engine,
    hook_settings: Settings, receivers: Any,
) -> None:  # fmt: skip
    receiver = receivers()
    hook = subscribe(hooks_client, studio_key, receiver.url, "job.done")
    render(hooks_client, studio_key, scheduler)
    gone = hooks_client.delete(f"/v1/webhooks/{hook['id']}", headers=studio_key)
    assert gone.status_code == 204
    sender = WebhookSender(engine, hook_settings)
    sender.send_due()
    sender.record_finished(wait=5)
    assert receiver.got == []
    log = hooks_client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=studio_key).json()
    assert log["items"][0]["state"] == "failed"
    assert log["items"][0]["last_error"] == "the subscription was deleted"
    assert hooks_client.get("/v1/webhooks", headers=studio_key).json() == []


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"url": "http://127.0.0.1:9/hooks", "events": ["job.done"]}, "private or reserved"),
        ({"url": "http://10.1.2.3/hooks", "events": ["job.done"]}, "private or reserved"),
        ({"url": "http://[::1]/hooks", "events": ["job.done"]}, "private or reserved"),
        ({"url": "http://169.254.169.254/latest", "events": ["job.done"]}, "private or reserved"),
        ({"url": "http://localhost/hooks", "events": ["job.done"]}, "private or reserved"),
        ({"url": "ftp://example.com/", "events": ["job.done"]}, "url"),
        ({"url": "https://user:pw@example.com/", "events": ["job.done"]}, "no credentials"),
        ({"url": "https://example.com/", "events": ["job.exploded"]}, "events"),
        ({"url": "https://example.com/", "events": []}, "events"),
    ],
)
def test_a_webhook_the_farm_will_not_call_is_a_422(
    client: TestClient, studio_key: dict[str, str], body: dict[str, Any], words: str
) -> None:
    answer = client.post("/v1/webhooks", json=body, headers=studio_key)  # the default settings
    assert answer.status_code == 422 and words in answer.text, answer.text
    assert client.get("/v1/webhooks", headers=studio_key).json() == []


def test_another_studios_webhook_is_not_found(
    hooks_client: TestClient, studio_key: dict[str, str], studios: StudioService,
    receivers: Any,
) -> None:  # fmt: skip
    hook = subscribe(hooks_client, studio_key, receivers().url, "job.done")
    theirs = {"Authorization": f"Bearer {studios.create_studio('weta-west')[1]}"}
    path = f"/v1/webhooks/{hook['id']}"
    assert hooks_client.get(f"{path}/deliveries", headers=theirs).status_code == 404
    assert hooks_client.delete(path, headers=theirs).status_code == 404


@pytest.fixture(autouse=True)
def _now(clock: Clock) -> None:
    """The scheduler's clock at the real time: events are stamped with it, and a
    delivery is retried for a day after its event."""
    clock.now = time.time()
