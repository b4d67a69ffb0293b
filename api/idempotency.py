"""The ``Idempotency-Key`` header of a studio's POST: what the route passes to the use case
(scheduler/usecases/idempotency.py), and the answer it sends back.

A key is 1 to 255 printable ASCII characters, sent bare (``Idempotency-Key: abc``) or
quoted as the IETF draft writes it (``Idempotency-Key: "abc"``): both are the key
``abc``. A bad key is a 422 naming the header. A replayed answer carries
``Idempotent-Replayed: true``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Header, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from api.deps import ServiceDep
from scheduler.usecases.idempotency import (
    MAX_KEY_LENGTH,
    Answer,
    IdempotencyKeys,
    Keep,
    KeyedRequest,
    hash_body,
)

T = TypeVar("T")

REPLAYED = "Idempotent-Replayed"

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=MAX_KEY_LENGTH + 2,
        # printable ASCII, or the same in double quotes (a structured-field string)
        pattern=rf'^(?:"[ !#-~]{{1,{MAX_KEY_LENGTH}}}"|[!#-~][ -~]{{0,{MAX_KEY_LENGTH - 1}}})$',
        description="send a new one per request: a retry with it gets the first answer, "
        "and never makes a second job",
    ),
]


async def get_idempotency_keys(service: ServiceDep) -> IdempotencyKeys:
    return IdempotencyKeys(service.engine, service.clock)


IdempotencyDep = Annotated[IdempotencyKeys, Depends(get_idempotency_keys)]


def keyed_request(studio_id: int, key: str, request: Request, body: BaseModel) -> KeyedRequest:
    """The request as the key's record remembers it: the body as validated, so that the
    same request however spelled (key order, defaults left out) is the same request."""
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    return KeyedRequest(
        studio_id=studio_id,
        key=key,
        method=request.method,
        path=request.url.path,
        body_hash=hash_body(body.model_dump(mode="json")),
    )


def respond(answer: Answer) -> JSONResponse:
    headers = {REPLAYED: "true"} if answer.replayed else None
    return JSONResponse(answer.body, status_code=answer.status_code, headers=headers)


def answer_keyed(
    keys: IdempotencyKeys,
    studio_id: int,
    key: str,
    request: Request,
    body: BaseModel,
    act: Callable[[Keep[T]], object],
    body_of: Callable[[T], dict[str, Any]],
) -> JSONResponse:
    """A POST with an ``Idempotency-Key`` that creates something (201): the first answer
    to the key again, or ``act``'s, which keeps its answer with what it made
    (``IdempotencyKeys.answer_once``)."""
    keyed = keyed_request(studio_id, key, request, body)
    return respond(keys.answer_once(keyed, status.HTTP_201_CREATED, act, body_of))
