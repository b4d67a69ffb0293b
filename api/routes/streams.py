"""Live views as server-sent events, for the web monitor (and any client of
``text/event-stream``): a studio's jobs, one job with its frames, and the farm as an
operator sees it. Each stream reads its view about once a second, in the threadpool,
and sends it (``event: update``, ``data:`` the JSON) only when it changed, with a
comment every 15 s so that proxies keep the connection open. It ends when the client
goes, or when its key or session no longer holds (checked every ``RECHECK`` seconds:
a logout or a revoked key ends it too). A studio or operator has at most
``MAX_STREAMS`` streams open on one API process (429 past them)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from api.deps import (
    SESSION_COOKIE,
    KnownQuery,
    OperatorDep,
    OperatorsDep,
    RowId,
    ServiceDep,
    StudioDep,
    own_id,
)
from api.schemas import STUDIO_ERRORS, AdminJob, AdminNode, FramePublic, JobPublic, Problem
from scheduler.errors import RenderfarmError, TooMany
from scheduler.usecases.sessions import WebSessions

router = APIRouter(
    tags=["streams"],
    dependencies=[KnownQuery],
    responses={**STUDIO_ERRORS, 403: {"model": Problem}},
)
EVERY = 1.0  # seconds between reads of a view
KEEPALIVE = 15.0
RECHECK = 10.0  # seconds between checks that the stream's key or session still holds
MAX_STREAMS = 8  # open at once per studio or operator, per API process
FRAMES_SHOWN = 5_000  # a job's frames a stream carries (the grid's first ones)


class OpenStreams:
    """How many streams each studio or operator has open on this process."""

    def __init__(self) -> None:
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, holder: str) -> None:
        with self._lock:
            if self._open.get(holder, 0) >= MAX_STREAMS:
                raise TooMany(f"at most {MAX_STREAMS} live views open at once: close one", 5)
            self._open[holder] = self._open.get(holder, 0) + 1

    def give_back(self, holder: str) -> None:
        with self._lock:
            self._open[holder] -= 1


def _open_streams(request: Request) -> OpenStreams:
    found = getattr(request.app.state, "open_streams", None)
    if found is None:
        found = request.app.state.open_streams = OpenStreams()
    return found  # type: ignore[no-any-return]


def _still_allowed(request: Request, kind: str) -> Callable[[], None]:
    """A check, raising a domain error, that what opened the stream still holds: the same
    bearer key (unrevoked), else the same session (not logged out, expired or revoked)."""
    auth = request.headers.get("authorization", "")
    key = auth[7:].strip() if auth.lower().startswith("bearer ") else None
    token = request.cookies.get(SESSION_COOKIE)
    state = request.app.state

    def check() -> None:
        if key is not None:
            (state.service if kind == "studio" else state.operators).authenticate(key)
        elif token is not None:
            WebSessions(state.engine).find(token)

    return check


def _stream(request: Request, view: Callable[[], Any], holder: str, kind: str) -> StreamingResponse:
    """``view`` as a stream of its changes, counted against ``holder``'s streams, ended
    when what opened it (a ``kind``'s key or session) no longer holds."""
    streams = _open_streams(request)
    streams.take(holder)
    allowed = _still_allowed(request, kind)

    async def events() -> AsyncIterator[str]:
        last, now = "", time.monotonic()
        quiet_since = checked = now
        try:
            while not await request.is_disconnected():
                if time.monotonic() - checked >= RECHECK:
                    checked = time.monotonic()
                    try:
                        await run_in_threadpool(allowed)
                    except RenderfarmError as error:
                        yield f"event: end\ndata: {json.dumps(str(error))}\n\n"
                        return
                seen = await run_in_threadpool(view)
                text = json.dumps(seen, default=str, separators=(",", ":"))
                if text != last:
                    last, quiet_since = text, time.monotonic()
                    yield f"event: update\ndata: {text}\n\n"
                elif time.monotonic() - quiet_since >= KEEPALIVE:
                    quiet_since = time.monotonic()
                    yield ": still here\n\n"
                await asyncio.sleep(EVERY)
        finally:
            streams.give_back(holder)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/v1/stream/jobs", response_class=StreamingResponse)
def stream_jobs(request: Request, studio: StudioDep, service: ServiceDep) -> StreamingResponse:
    """The studio's latest 100 jobs with their progress, energy and cost, as they change."""
    studio_id = own_id(studio)

    def view() -> list[dict[str, Any]]:
        details, _total = service.list_jobs(studio_id, None, 100, 0)
        return [JobPublic.of(d).model_dump(mode="json") for d in details]

    return _stream(request, view, f"studio {studio_id}", "studio")


@router.get("/v1/stream/jobs/{job_id}", response_class=StreamingResponse)
def stream_job(
    request: Request, job_id: RowId, studio: StudioDep, service: ServiceDep
) -> StreamingResponse:
    """One job and its frames (the first 5,000), as they change."""
    studio_id = own_id(studio)
    service.get_job(studio_id, job_id)  # a 404 now, not an empty stream

    def view() -> dict[str, Any]:
        job = JobPublic.of(service.get_job(studio_id, job_id)).model_dump(mode="json")
        frames = service.list_frames(studio_id, job_id, 0, FRAMES_SHOWN)
        progress = service.running_progress(job_id, frames)
        shown = [FramePublic.of(job_id, f, progress.get(f.frame)) for f in frames]
        return {"job": job, "frames": [f.model_dump(mode="json") for f in shown]}

    return _stream(request, view, f"studio {studio_id}", "studio")


@router.get("/v1/admin/stream", response_class=StreamingResponse)
def stream_farm(
    request: Request, operator: OperatorDep, operators: OperatorsDep
) -> StreamingResponse:
    """Every studio's latest 200 jobs, the nodes and the pools, as they change."""

    def view() -> dict[str, Any]:
        rows, _total = operators.list_jobs(200, 0)
        nodes, current = operators.list_nodes(), operators.current_chunks()
        return {
            "jobs": [AdminJob.of(job, name).model_dump(mode="json") for job, name in rows],
            "nodes": [AdminNode.with_chunks(n, current).model_dump(mode="json") for n in nodes],
            "pools": operators.pools(),
        }

    return _stream(request, view, f"operator {operator.name}", "operator")
