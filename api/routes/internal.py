"""Routes for render nodes, not studios: the files of a job, for nodes without a shared
filesystem. Authenticated by the farm's node token (``RENDERFARM_NODE_TOKEN``, the same
on the API and every node); without one configured they answer 404.

    GET /v1/internal/manifests/{id}   a manifest's files (path, hash, size, mtime)
    GET /v1/internal/blobs/{sha256}   a content, streamed
    POST /v1/internal/blobs           many contents ({"hashes": [...]}): a tar, streamed
    PUT /v1/internal/outputs/{path}   a frame or an attempt's log, streamed into storage
                                      (``jobs/<id>/frames/<file>``, ``jobs/<id>/logs/<file>``)

The storage behind them is the farm's (a folder or object storage): nodes need neither
a shared mount nor storage credentials of their own.
"""

from __future__ import annotations

import re
import secrets
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from api.deps import AssetsDep, BlobHash, KnownQuery, RowId, SettingsDep, StoredFilesDep
from api.files import file_response, receive_body
from api.schemas import SHA256, ManifestFileIn, Problem
from scheduler.core.assets import blob_key, is_blob_hash
from scheduler.errors import InvalidRequest, NotFound, Unauthorized
from scheduler.usecases.frame_outputs import stream_tar

_bearer = HTTPBearer(auto_error=False, description="the farm's node token")

router = APIRouter(
    prefix="/v1/internal",
    tags=["internal (render nodes)"],
    dependencies=[KnownQuery],
    responses={
        400: {"model": Problem, "description": "the body is not JSON (not even UTF-8)"},
        401: {"model": Problem},
        404: {"model": Problem},
        422: {"model": Problem},
    },
)


async def node(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    if settings.node_token is None:
        raise NotFound("this farm serves no files to nodes: RENDERFARM_NODE_TOKEN is not set")
    expected = settings.node_token.get_secret_value().encode()
    given = (credentials.credentials if credentials else "").encode()
    if not secrets.compare_digest(given, expected):
        raise Unauthorized("send `Authorization: Bearer <the farm's node token>`")


NodeDep = Annotated[None, Depends(node)]


@router.get("/manifests/{manifest_id}")
def manifest_for_node(
    manifest_id: RowId, _node: NodeDep, assets: AssetsDep
) -> dict[str, list[ManifestFileIn]]:
    files = assets.files_for_node(manifest_id)
    return {
        "entries": [
            ManifestFileIn(path=f.path, hash=f.hash, size=f.size, mtime=f.mtime) for f in files
        ]
    }


MAX_BATCH_HASHES = 5_000
OUTPUT_PATH = re.compile(r"jobs/[0-9]{1,10}/(frames|logs)/[A-Za-z0-9][A-Za-z0-9._-]{0,200}")


@router.put("/outputs/{path:path}", status_code=status.HTTP_204_NO_CONTENT)
async def output_from_node(
    path: Annotated[str, Path(pattern=f"^{OUTPUT_PATH.pattern}$")],
    request: Request,
    _node: NodeDep,
    files: StoredFilesDep,
) -> Response:
    """A node without the shared storage sends each frame as it is saved, and its logs;
    they land where a node with the storage would have written them, whole or not at
    all (spooled, then adopted)."""
    if not OUTPUT_PATH.fullmatch(path):
        raise InvalidRequest(
            "path", "a node sends jobs/<id>/frames/<file> or jobs/<id>/logs/<file>", "path"
        )
    spool, spooled = files.storage.spool_file("output")
    try:
        with spool:
            await receive_body(request, spool.write)
        await run_in_threadpool(files.storage.adopt, path, spooled)
    finally:
        spooled.unlink(missing_ok=True)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


class BlobsWanted(BaseModel):
    hashes: list[Annotated[str, Field(pattern=SHA256)]] = Field(
        min_length=1, max_length=MAX_BATCH_HASHES
    )


@router.post("/blobs", response_class=StreamingResponse)
def blobs_for_node(body: BlobsWanted, _node: NodeDep, files: StoredFilesDep) -> StreamingResponse:
    """Many small contents in one answer: a tar whose members are named by their hash,
    written as it is sent. Contents the farm does not store are left out."""
    wanted = list(dict.fromkeys(body.hashes))
    if not all(is_blob_hash(blob_hash) for blob_hash in wanted):
        raise InvalidRequest("hashes", "a content's name is its SHA-256: 64 lowercase hex")
    members = files.each(blob_key(blob_hash) for blob_hash in wanted)  # opened as sent
    return StreamingResponse(stream_tar(members), media_type="application/x-tar")


@router.get("/blobs/{blob_hash}", response_class=FileResponse)
def blob_for_node(blob_hash: BlobHash, _node: NodeDep, files: StoredFilesDep) -> Response:
    if not is_blob_hash(blob_hash):
        raise NotFound(f"no content {blob_hash[:64]}")
    return file_response(files.stored(blob_key(blob_hash)), "application/octet-stream")
