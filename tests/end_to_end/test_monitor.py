"""The web monitor in a real browser (Debian's chromium, driven by Playwright) against
a real farm (API, scheduler and two nodes as processes): a studio logs in with its key,
watches a job submitted over the API reach done without reloading, opens a frame's
thumbnail, cancels a job, re-queues a frame, and cannot open another studio's job; an
operator drains and enables a node. Screenshots of each step are kept under
``$RENDERFARM_TEST_ARTIFACTS/monitor`` (CI keeps them), else the test's folder.

Without chromium or Playwright these tests skip, unless RENDERFARM_REQUIRE_BROWSER is
set (CI sets it), where they fail.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine

from scheduler.settings import Settings
from scheduler.usecases.jobs import StudioService
from scheduler.usecases.operators import OperatorService
from tests.conftest import Processes, free_port, wait_for

pytestmark = pytest.mark.end_to_end

WAIT_MS = 60_000


def _browser_or_skip() -> tuple[Any, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if chromium is None or sync_playwright is None:
        message = "the monitor's tests need chromium (apt-get install chromium) and playwright"
        if os.environ.get("RENDERFARM_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    return sync_playwright, chromium


@pytest.fixture
def farm(processes: Processes, settings: Settings, engine: Engine) -> Iterator[str]:
    port = free_port()
    processes.start("api", "api", "--host", "127.0.0.1", "--port", str(port))
    processes.start("scheduler", "scheduler")
    processes.worker("node-1", slots=2)
    processes.worker("node-2", slots=2)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, 60, "the API to answer")
    yield url


@pytest.fixture
def browser() -> Iterator[Any]:
    sync_playwright, chromium = _browser_or_skip()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    root = Path(os.environ.get("RENDERFARM_TEST_ARTIFACTS") or tmp_path)
    folder = root / "monitor"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def submit(url: str, key: str, **fields: Any) -> int:
    body = {"name": "beauty", "frames": "1-6", "renderer": {"kind": "builtin", "width": 48,
            "height": 32, "samples": 1}, **fields}  # fmt: skip
    answer = httpx.post(f"{url}/v1/jobs", json=body, headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


def frames_of(url: str, key: str, job_id: int) -> list[dict[str, Any]]:
    answer = httpx.get(f"{url}/v1/jobs/{job_id}/frames", headers={"Authorization": f"Bearer {key}"})
    return answer.json()  # type: ignore[no-any-return]


def text_is(page: Any, selector: str, text: str) -> None:
    """Wait until the element's text is ``text``: the page changing by itself."""
    page.wait_for_function(
        "([selector, text]) => document.querySelector(selector)?.textContent === text",
        arg=[selector, text],
        timeout=WAIT_MS,
    )


def log_in(page: Any, url: str, key: str) -> None:
    page.goto(f"{url}/monitor")
    page.fill("#key", key)
    page.click("#login")


def test_a_studio_watches_its_job_finish_live_and_acts_on_its_jobs(
    farm: str, browser: Any, shots: Path, settings: Settings, engine: Engine
) -> None:
    studios = StudioService(engine, settings)
    key = studios.create_studio("pixel-east")[1]
    other_key = studios.create_studio("weta-west")[1]
    theirs = submit(farm, other_key, name="their secret shot")
    context = browser.new_context()
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    log_in(page, farm, key)
    page.wait_for_selector("#jobs", timeout=WAIT_MS)
    [cookie] = [c for c in context.cookies() if c["name"] == "rf_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert key not in page.content()  # the key is not kept by the page

    # a job submitted over the API appears, and reaches done, with no reload
    job = submit(farm, key, show="Mulan 2", shot="sh020")
    row = page.locator(f'tr[data-job="{job}"]')
    row.wait_for(timeout=WAIT_MS)
    page.screenshot(path=str(shots / "1-jobs-running.png"))
    # Its frames count as rendered when their results arrive, the job as done when its
    # last chunk's "finished" does: "6/6" may show one push before "done".
    text_is(page, f'tr[data-job="{job}"] .done-count', "6/6")
    row.locator('[data-state="done"]').wait_for(timeout=WAIT_MS)
    assert row.locator('[data-state="done"]').count() == 1
    assert "Mulan 2 / sh020" in row.inner_text()
    page.screenshot(path=str(shots / "2-jobs-done.png"))

    # its page: the frame grid, and a frame's thumbnail on a click
    row.click()
    page.wait_for_selector('#frames .cell[data-state="done"]', timeout=WAIT_MS)
    assert page.locator("#frames .cell").count() == 6
    page.click('#frames .cell[data-frame="3"]')
    page.wait_for_function(
        "() => document.getElementById('thumbnail')?.naturalWidth > 0", timeout=WAIT_MS
    )
    page.wait_for_function(
        "() => document.getElementById('frame-log')?.textContent.length > 3", timeout=WAIT_MS
    )
    page.screenshot(path=str(shots / "3-frame-thumbnail.png"))

    # cancel a job that is still rendering
    long = submit(farm, key, frames="1-40", renderer={"kind": "noop", "sleep": 30})
    page.goto(f"{farm}/monitor#/jobs/{long}")
    page.wait_for_selector("#job-head", timeout=WAIT_MS)
    page.click("#cancel")
    page.wait_for_selector('#job-head [data-state="cancelled"]', timeout=WAIT_MS)
    page.screenshot(path=str(shots / "4-cancelled.png"))

    # re-queue a frame that is rendering (as if stuck): a new attempt renders it
    slow = submit(farm, key, frames="1-2", renderer={"kind": "noop", "sleep": 600})
    page.goto(f"{farm}/monitor#/jobs/{slow}")
    page.wait_for_selector('#frames .cell[data-frame="1"][data-state="running"]', timeout=WAIT_MS)
    page.click('#frames .cell[data-frame="1"]')
    page.click("#requeue-frame")
    text_is(page, "#toast", "Frame 1 queued again")  # not the cancel's, still showing
    wait_for(lambda: frames_of(farm, key, slow)[0]["attempt"] >= 2, 60, "frame 1's new attempt")
    page.screenshot(path=str(shots / "5-requeued.png"))
    page.click("#cancel")
    page.wait_for_selector('#job-head [data-state="cancelled"]', timeout=WAIT_MS)

    # another studio's job is not there for this studio, in the page or its API
    page.goto(f"{farm}/monitor#/jobs/{theirs}")
    page.wait_for_selector("#not-found", timeout=WAIT_MS)
    assert f"no job {theirs}" in page.inner_text("#not-found")
    assert "their secret shot" not in page.content()
    page.screenshot(path=str(shots / "6-other-studio.png"))

    # a change without the session's CSRF token, or to an operator's route, is refused
    statuses = page.evaluate(
        """async ([job]) => [
            (await fetch(`/v1/jobs/${job}/suspend`, {method: 'POST'})).status,
            (await fetch('/v1/admin/studios')).status,
        ]""",
        [job],
    )
    assert statuses == [403, 403]
    context.close()


def test_an_operator_sees_the_farm_and_drains_a_node(
    farm: str, browser: Any, shots: Path, settings: Settings, engine: Engine
) -> None:
    key = OperatorService(engine).create_operator("mei.ops")[1]
    studio_key = StudioService(engine, settings).create_studio("pixel-east")[1]
    job = submit(farm, studio_key, name="studio job")
    page = browser.new_page()
    log_in(page, farm, key)
    page.wait_for_selector(f'#farm-jobs tr[data-job="{job}"]', timeout=WAIT_MS)
    assert "pixel-east" in page.inner_text(f'#farm-jobs tr[data-job="{job}"]')
    page.screenshot(path=str(shots / "7-operator-jobs.png"))
    page.click('a[href="#/farm/nodes"]')
    node = page.locator('#farm-nodes tr[data-node="node-1"]')
    node.wait_for(timeout=WAIT_MS)
    busy = submit(
        farm, studio_key, name="long", frames="1-8", renderer={"kind": "noop", "sleep": 600}
    )
    page.wait_for_function(  # what each node renders, live
        "job => [...document.querySelectorAll('#farm-nodes .current')]"
        ".some(cell => cell.textContent.includes(`job ${job}: `))",
        arg=busy,
        timeout=WAIT_MS,
    )
    node.locator('button[data-action="drain"]').click()
    text_is(page, 'tr[data-node="node-1"] .admin', "draining")
    page.screenshot(path=str(shots / "8-operator-node-drained.png"))
    node.locator('button[data-action="enable"]').click()
    text_is(page, 'tr[data-node="node-1"] .admin', "enabled")
    for tab, table in [("pools", "h2"), ("studios", "#farm-studios"), ("regions", "#farm-regions")]:
        page.click(f'a[href="#/farm/{tab}"]')
        page.wait_for_selector(table, timeout=WAIT_MS)
    assert "zhejiang" in page.inner_text("#farm-regions")
    page.screenshot(path=str(shots / "9-operator-regions.png"))


def test_a_stream_ends_at_logout_and_a_studio_has_a_bounded_number_open(
    farm: str, settings: Settings, engine: Engine
) -> None:
    key = StudioService(engine, settings).create_studio("pixel-east")[1]
    with httpx.Client(base_url=farm, timeout=30) as browser_like:
        session = browser_like.post("/monitor/login", json={"key": key}).json()
        with browser_like.stream("GET", "/v1/stream/jobs") as stream:
            lines = stream.iter_lines()
            assert next(lines) == "event: update"
            logout = browser_like.post("/monitor/logout", headers={"X-CSRF-Token": session["csrf"]})
            assert logout.status_code == 204
            rest = list(lines)  # the stream ends by itself within its recheck (10 s)
        assert "event: end" in rest and any("log in again" in line for line in rest)
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=farm, timeout=30, headers=headers) as client, ExitStack() as open_:
        for _ in range(8):
            assert open_.enter_context(client.stream("GET", "/v1/stream/jobs")).status_code == 200
        refused = client.get("/v1/stream/jobs")
        assert refused.status_code == 429 and "at most 8" in refused.text
