"""Refuse request bodies over ``max_body_bytes`` with a 413, before they are read whole
(path prefixes may have limits of their own: manifests of many files are larger; the
uploads of contents stream to disk and keep their own limits).

Checks the declared Content-Length first (the server reads no more than it declares),
and counts the bytes of a chunked body as they arrive, so a chunked upload cannot slip
past the limit either.
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(HTTPException):
    """An HTTP error, so that a route reading the body (FastAPI's JSON parsing, which
    answers 400 to any other error it meets) answers 413 too."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes")


class BodySizeLimit:
    def __init__(
        self, app: ASGIApp, max_bytes: int, by_path: dict[str, int | None] | None = None
    ) -> None:
        self.app = app
        self.default = max_bytes
        # Path prefixes with a limit of their own; None: the route streams and limits.
        self.by_path = by_path or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        limit = next(
            (n for prefix, n in self.by_path.items() if path.startswith(prefix)), self.default
        )
        if scope["type"] != "http" or limit is None:
            await self.app(scope, receive, send)
            return
        await self._limited(scope, receive, send, limit)

    async def _limited(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(send, limit)
            return
        if scope.get("http_version") in ("1.0", "1.1") and b"transfer-encoding" not in headers:
            # HTTP/1: no body (a GET), or one of the declared length, which the server
            # reads and no more: nothing to count. (HTTP/2 frames a body without either.)
            await self.app(scope, receive, send)
            return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(send, limit)

    async def _refuse(self, send: Send, limit: int) -> None:
        body = json.dumps({"detail": f"request body larger than {limit} bytes"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})
