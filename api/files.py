"""Stored files as responses, streamed as they are read from the storage (a folder's
files opened without following links, object storage's in one GET each); and request
bodies written to local disk off the event loop."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse

from scheduler.usecases.frame_outputs import StoredFile

WRITE_BYTES = 1 << 20  # a body is written to disk this much at a time, in a thread


def file_response(stored: StoredFile, media_type: str, filename: str | None = None) -> Response:
    headers = {"Content-Length": str(stored.size)}
    if filename is not None:
        headers["Content-Disposition"] = f"inline; filename*=utf-8''{quote(filename)}"
    # a plain iterator: Starlette reads each piece in a thread
    return StreamingResponse(stored.pieces(), media_type=media_type, headers=headers)


async def receive_body(request: Request, write: Callable[[bytes], object]) -> None:
    """Pass the body to ``write`` in pieces of about ``WRITE_BYTES``, each in a worker
    thread: hashing and disk writes never hold the event loop (other requests go on
    while a large content arrives). ``write`` may raise to stop."""
    pending: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        pending.append(chunk)
        size += len(chunk)
        if size >= WRITE_BYTES:
            await run_in_threadpool(write, b"".join(pending))
            pending.clear()
            size = 0
    if pending:
        await run_in_threadpool(write, b"".join(pending))
