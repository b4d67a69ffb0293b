"""Dependencies of the routes: the services, and the studio behind the bearer key.

Those that never block are ``async``: FastAPI runs a plain ``def`` dependency in its
threadpool, a hop between threads per dependency per request that cost more than the
rest of a job's read.

A key is looked up once per ``KEY_CACHE_SECONDS`` per process, not once per request:
the studio it found is kept under the key's hash (never the key) for that long, so
a revoked key, a renamed studio or a changed setting reaches the API within that
time. Unknown keys are not kept: a new key works at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import hmac
import re
import threading
import time
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from anyio import CapacityLimiter, to_thread
from fastapi import Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BeforeValidator

from api.schemas import SHA256
from scheduler.core.bounds import COUNT_MAX, FRAME_MAX, FRAME_MIN, ID_MAX
from scheduler.db import Studio
from scheduler.errors import Forbidden, Unauthorized
from scheduler.settings import Settings
from scheduler.usecases.assets import AssetService
from scheduler.usecases.audit import Actor
from scheduler.usecases.frame_outputs import StoredFiles
from scheduler.usecases.jobs import StudioService, hash_key
from scheduler.usecases.operators import OPERATOR_KEY_PREFIX, OperatorService
from scheduler.usecases.ratelimit import RateLimiter
from scheduler.usecases.sessions import Login, WebSessions
from scheduler.usecases.submissions import Metadata

T = TypeVar("T")

_bearer = HTTPBearer(auto_error=False, description="a studio key: `renderfarm studio create NAME`")


async def get_service(request: Request) -> StudioService:
    return request.app.state.service  # type: ignore[no-any-return]


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def get_assets(request: Request) -> AssetService:
    return request.app.state.assets  # type: ignore[no-any-return]


async def get_stored_files(request: Request) -> StoredFiles:
    return request.app.state.stored_files  # type: ignore[no-any-return]


ServiceDep = Annotated[StudioService, Depends(get_service)]
StoredFilesDep = Annotated[StoredFiles, Depends(get_stored_files)]
AssetsDep = Annotated[AssetService, Depends(get_assets)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


KEY_CACHE_SECONDS = 10.0
KEY_CACHE_SIZE = 10_000  # keys kept at most; the cache starts over when full


class StudioKeys:
    """The studios behind recently used keys, for ``KEY_CACHE_SECONDS``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._found: dict[str, tuple[float, Studio]] = {}
        self._lock = threading.Lock()

    def cached(self, key: str) -> Studio | None:
        """The key's studio if it was looked up within ``KEY_CACHE_SECONDS``, else None."""
        with self._lock:
            kept = self._found.get(hash_key(key))
        if kept is not None and self.clock() - kept[0] < KEY_CACHE_SECONDS:
            return _copy(kept[1])  # a route may not change what others get
        return None

    def studio(self, service: StudioService, key: str) -> Studio:
        """The key's studio, from the cache or the database (which may block)."""
        studio = self.cached(key)
        if studio is not None:
            return studio
        now = self.clock()
        digest = hash_key(key)
        studio = service.authenticate(key)
        with self._lock:
            if len(self._found) >= KEY_CACHE_SIZE:
                self._found.clear()
            self._found[digest] = (now, _copy(studio))
        return studio


def _copy(studio: Studio) -> Studio:
    """A new, transient row of the same values (no session state shared), not validated
    again: they were read from the database."""
    return Studio.model_construct(**studio.model_dump())


def _studio_keys(request: Request) -> StudioKeys:
    keys = getattr(request.app.state, "studio_keys", None)
    if keys is None:  # made on first use: create_app knows nothing of it
        keys = request.app.state.studio_keys = StudioKeys()
    return keys  # type: ignore[no-any-return]


async def get_studio(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Studio:
    """The studio of the bearer key (or of the web monitor's session cookie). On the
    event loop where nothing blocks (a key seen within ``KEY_CACHE_SECONDS``, a studio
    without a rate); the database's and Redis' answers are waited for in the threadpool.
    It takes what it needs from the app's state, not as sub-dependencies: each costs
    FastAPI's resolution on every request. The studio's request rate holds either way."""
    service = request.app.state.service
    if credentials is None or credentials.scheme.lower() != "bearer":
        login = await _session_login(request, "studio")
        if login is None:
            raise Unauthorized("send `Authorization: Bearer <studio key>`")
        studio = await run_in_threadpool(service.get_studio, login.name)
    else:
        keys = _studio_keys(request)
        studio = keys.cached(credentials.credentials)
        if studio is None:
            studio = await run_in_threadpool(keys.studio, service, credentials.credentials)
    if studio.requests_per_second is not None:
        assert studio.id is not None
        limiter: RateLimiter = request.app.state.rate_limiter
        await run_in_threadpool(limiter.check, studio.id, studio.requests_per_second)  # 429
    return studio


StudioDep = Annotated[Studio, Depends(get_studio)]

SESSION_COOKIE = "rf_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


async def _session_login(request: Request, kind: str) -> Login | None:
    if SESSION_COOKIE not in request.cookies:
        return None
    return await run_in_threadpool(_session_login_sync, request, kind)


def _session_login_sync(request: Request, kind: str) -> Login | None:
    """The web monitor's login behind the request's cookie (None: no cookie); a change
    must carry the session's CSRF token, and a studio's session reaches no operator's
    route (nor the reverse)."""
    token = request.cookies.get(SESSION_COOKIE)
    if token is None:
        return None
    login = WebSessions(request.app.state.engine).find(token)
    if login.kind != kind:
        raise Forbidden(f"this page needs a {kind}'s login; you are logged in as a {login.kind}")
    if request.method not in SAFE_METHODS:
        check_csrf(request, login)
    return login


def check_csrf(request: Request, login: Login) -> None:
    """A change with the session's cookie carries its CSRF token (compared as bytes, in
    constant time), else a 403."""
    sent = request.headers.get(CSRF_HEADER, "").encode("utf-8", "surrogateescape")
    if not hmac.compare_digest(sent, login.csrf.encode()):
        raise Forbidden(f"a change from the monitor carries its {CSRF_HEADER}")


def studio_actor(studio: Studio) -> Actor:
    """The studio behind the request, as the audit log names who acted."""
    return Actor.studio(studio.name)


_operator_bearer = HTTPBearer(
    auto_error=False, description="an operator key: `renderfarm operator create NAME`"
)


def get_operator(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_operator_bearer)],
) -> Actor:
    """The operator of the bearer key (looked up each time: operators' calls are few, and
    a revoked key is refused at once). A studio's key is a 403: it is valid, not here."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        login = _session_login_sync(request, "operator")
        if login is None:
            raise Unauthorized("send `Authorization: Bearer <operator key>`")
        return Actor.operator(login.name)
    key = credentials.credentials
    if not key.startswith(OPERATOR_KEY_PREFIX):
        raise Forbidden("a studio key reaches no admin route: use an operator key")
    operators: OperatorService = request.app.state.operators
    return Actor.operator(operators.authenticate(key).name)


OperatorDep = Annotated[Actor, Depends(get_operator)]


async def get_operators(request: Request) -> OperatorService:
    return request.app.state.operators  # type: ignore[no-any-return]


OperatorsDep = Annotated[OperatorService, Depends(get_operators)]


def own_id(studio: Studio) -> int:
    """The id of the studio behind the request (a stored studio always has one)."""
    assert studio.id is not None
    return studio.id


async def read_in_thread(request: Request, read: Callable[..., T], *args: Any) -> T:
    """``read(*args)`` in a thread of its own pool of ``RENDERFARM_API_READ_THREADS``: not
    the threadpool's 40, where more readers than the cores serve contend for the GIL and
    the database's CPU (on two cores, four threads read a job 1.5x faster than forty),
    and where writers waiting for SQLite's lock would hold reads up."""
    loop = asyncio.get_running_loop()
    held = getattr(request.app.state, "read_threads", None)
    if held is None or held[0] is not loop:  # a limiter belongs to its event loop
        settings: Settings = request.app.state.settings
        held = request.app.state.read_threads = (loop, CapacityLimiter(settings.api_read_threads))
    return await to_thread.run_sync(functools.partial(read, *args), limiter=held[1])


# Ids, frame numbers and offsets, within the database's integer columns (the bounds of
# scheduler/core/bounds.py): a number past them is a 422 naming it, not a database error.
RowId = Annotated[int, Path(ge=1, le=ID_MAX)]
FrameNumber = Annotated[int, Path(ge=FRAME_MIN, le=FRAME_MAX)]
Offset = Annotated[int, Query(ge=0, le=COUNT_MAX, description="rows to skip")]
MetadataQuery = Annotated[
    Metadata | None, Query(description="only the jobs with this value (exactly)")
]
BlobHash = Annotated[str, Path(pattern=SHA256, description="SHA-256 of the content, lowercase hex")]


async def refuse_unknown_query(request: Request) -> None:
    """A query parameter the route does not take is a 422 naming it, as an unknown body
    field is: ``?prority=90`` is a typo, not a setting silently ignored."""
    dependant = getattr(request.scope.get("route"), "dependant", None)
    if dependant is None:
        return
    known = {param.alias for param in _query_params(dependant)}
    unknown = [name for name in request.query_params if name not in known]
    if unknown:
        raise RequestValidationError(
            [
                {
                    "loc": ("query", name),
                    "msg": "unknown query parameter",
                    "type": "extra_forbidden",
                }
                for name in unknown
            ]
        )


def _query_params(dependant: Any) -> list[Any]:
    found = list(dependant.query_params)
    for sub in dependant.dependencies:
        found.extend(_query_params(sub))
    return found


KnownQuery = Depends(refuse_unknown_query)


def _iso_day(value: object) -> object:
    """Only YYYY-MM-DD: pydantic would also read a number as a Unix time."""
    if isinstance(value, str) and not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
        raise ValueError("a day is YYYY-MM-DD")
    return value


Day = Annotated[dt.date, BeforeValidator(_iso_day)]
