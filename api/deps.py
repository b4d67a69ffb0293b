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


def get_studio(
    service: ServiceDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Studio:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("send `Authorization: Bearer <studio key>`")
    return service.authenticate(credentials.credentials)


StudioDep = Annotated[Studio, Depends(get_studio)]


# Ids and frame numbers in paths, within the database's integer columns: a number past
# them is a 422 naming it, not a database error.
RowId = Annotated[int, Path(ge=1, le=2**31 - 1)]
FrameNumber = Annotated[int, Path(ge=-(2**31), le=2**31 - 1)]
