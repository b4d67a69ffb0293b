"""Dependencies of the routes: the services, and the studio behind the bearer key."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from scheduler.db import Studio
from scheduler.errors import Unauthorized
from scheduler.settings import Settings
from scheduler.usecases.assets import AssetService
from scheduler.usecases.frame_outputs import StoredFiles
from scheduler.usecases.jobs import StudioService

_bearer = HTTPBearer(auto_error=False, description="a studio key: `renderfarm studio create NAME`")


def get_service(request: Request) -> StudioService:
    return request.app.state.service  # type: ignore[no-any-return]


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_assets(request: Request) -> AssetService:
    return request.app.state.assets  # type: ignore[no-any-return]


def get_stored_files(request: Request) -> StoredFiles:
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

    def studio(self, service: StudioService, key: str) -> Studio:
        digest = hash_key(key)
        now = self.clock()
        with self._lock:
            kept = self._found.get(digest)
        if kept is not None and now - kept[0] < KEY_CACHE_SECONDS:
            return _copy(kept[1])  # a route may not change what others get
        studio = service.authenticate(key)
        with self._lock:
            if len(self._found) >= KEY_CACHE_SIZE:
                self._found.clear()
            self._found[digest] = (now, _copy(studio))
        return studio


def _copy(studio: Studio) -> Studio:
    """A new, transient row of the same values (no session state shared)."""
    return Studio.model_validate(studio.model_dump())


def get_studio_keys(request: Request) -> StudioKeys:
    keys = getattr(request.app.state, "studio_keys", None)
    if keys is None:  # made on first use: create_app knows nothing of it
        keys = request.app.state.studio_keys = StudioKeys()
    return keys  # type: ignore[no-any-return]


def get_studio(
    service: ServiceDep,
    keys: Annotated[StudioKeys, Depends(get_studio_keys)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Studio:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("send `Authorization: Bearer <studio key>`")
    return keys.studio(service, credentials.credentials)


StudioDep = Annotated[Studio, Depends(get_studio)]


# Ids and frame numbers in paths, within the database's integer columns: a number past
# them is a 422 naming it, not a database error.
RowId = Annotated[int, Path(ge=1, le=2**31 - 1)]
FrameNumber = Annotated[int, Path(ge=-(2**31), le=2**31 - 1)]
