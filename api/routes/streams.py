"""Live views as server-sent events, for the web monitor (and any client of
``text/event-stream``): a studio's jobs, one job with its frames, and the farm as an
operator sees it. Each stream reads its view about once a second, in the threadpool,
and sends it (``event: update``, ``data:`` the JSON) only when it changed, with a
comment every 15 s so that proxies keep the connection open; it ends when the client
goes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from api.deps import KnownQuery, OperatorDep, OperatorsDep, RowId, ServiceDep, StudioDep, own_id
from api.schemas import AdminJob, AdminNode, FramePublic, JobPublic, Problem

router = APIRouter(tags=["streams"], dependencies=[KnownQuery], responses={401: {"model": Problem}})
EVERY = 1.0  # seconds between reads of a view
KEEPALIVE = 15.0
FRAMES_SHOWN = 5_000  # a job's frames a stream carries (the grid's first ones)


def _stream(request: Request, view: Callable[[], Any]) -> StreamingResponse:
    async def events() -> AsyncIterator[str]:
        last, quiet_since = "", time.monotonic()
        while not await request.is_disconnected():
            text = json.dumps(await run_in_threadpool(view), default=str, separators=(",", ":"))
            if text != last:
                last, quiet_since = text, time.monotonic()
                yield f"event: update\ndata: {text}\n\n"
            elif time.monotonic() - quiet_since >= KEEPALIVE:
                quiet_since = time.monotonic()
                yield ": still here\n\n"
            await asyncio.sleep(EVERY)

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

    return _stream(request, view)


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

    return _stream(request, view)


@router.get("/v1/admin/stream", response_class=StreamingResponse)
def stream_farm(
    request: Request, _operator: OperatorDep, operators: OperatorsDep
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

    return _stream(request, view)
