"""Studio routes for scenes and their files: which contents the farm lacks, uploading
them (one by one, streamed, or many small ones in one tar), and manifests.

    POST /v1/assets/missing   a manifest -> the contents this studio has to send
    PUT  /v1/blobs/{sha256}   one content, streamed to disk and checked against its name
    POST /v1/blobs            a tar of contents, each named by its SHA-256
    POST /v1/manifests        the files a job needs -> a manifest id for the job
    GET  /v1/manifests/{id}   its files

Routes translate and delegate: the asset service decides and raises domain errors.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response, status
from fastapi.concurrency import run_in_threadpool

from api.deps import AssetsDep, BlobHash, KnownQuery, RowId, StudioDep, own_id
from api.files import receive_body
from api.idempotency import IdempotencyDep, IdempotencyKey, answer_keyed
from api.schemas import (
    BatchPublic,
    BlobPublic,
    ManifestDetail,
    ManifestFileIn,
    ManifestIn,
    ManifestPublic,
    MissingPublic,
    Problem,
)
from scheduler.db import ManifestRow
from scheduler.errors import TooLarge

router = APIRouter(
    tags=["assets"],
    dependencies=[KnownQuery],
    responses={
        400: {"model": Problem, "description": "the body is not JSON (not even UTF-8)"},
        401: {"model": Problem},
        404: {"model": Problem},
        409: {"model": Problem},
        413: {"model": Problem},
        422: {"model": Problem},
    },
)


@router.post("/v1/assets/missing", response_model=MissingPublic)
def missing(body: ManifestIn, studio: StudioDep, assets: AssetsDep) -> MissingPublic:
    found = assets.missing(own_id(studio), body.entries())
    return MissingPublic(missing=found.hashes, bytes=found.bytes)


@router.put(
    "/v1/blobs/{blob_hash}",
    response_model=BlobPublic,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"model": BlobPublic, "description": "the studio sent it already"}},
)
async def put_blob(
    blob_hash: BlobHash,
    request: Request,
    response: Response,
    studio: StudioDep,
    assets: AssetsDep,
) -> BlobPublic:
    """Send one content, its SHA-256 in the path; the body is the bytes, streamed."""
    studio_id = own_id(studio)
    assets.check_hash(blob_hash)
    owned = await run_in_threadpool(assets.owned_size, studio_id, blob_hash)
    if owned is not None:
        response.status_code = status.HTTP_200_OK  # a repeat: nothing to read or keep
        return BlobPublic(hash=blob_hash, size=owned)
    room = min(await run_in_threadpool(assets.room_left, studio_id), assets.max_blob_bytes)
    writer = assets.begin_upload(studio_id, blob_hash)

    def write(piece: bytes) -> None:
        writer.write(piece)  # hashed and written in a worker thread
        if writer.size > room:
            raise TooLarge(
                f"the content is larger than the {room} bytes this studio may still store"
            )

    try:
        await receive_body(request, write)
    except BaseException:
        writer.abort()
        raise
    size = await run_in_threadpool(assets.finish_upload, studio_id, blob_hash, writer)
    return BlobPublic(hash=blob_hash, size=size)


@router.post("/v1/blobs", response_model=BatchPublic)
async def post_blobs(request: Request, studio: StudioDep, assets: AssetsDep) -> BatchPublic:
    """Many small contents in one request: a tar (``Content-Type: application/x-tar``)
    whose members are named by their SHA-256. Spooled to disk, never held in memory."""
    limit = assets.max_batch_bytes
    spool, path = assets.store.storage.spool_file("batch")
    try:
        with spool:

            def write(piece: bytes) -> None:
                if spool.tell() + len(piece) > limit:
                    raise TooLarge(f"a batch is at most {limit} bytes; send large files alone")
                spool.write(piece)

            await receive_body(request, write)
        stored, refused = await run_in_threadpool(assets.receive_batch, own_id(studio), path)
    finally:
        path.unlink(missing_ok=True)
    return BatchPublic(
        stored=[BlobPublic(hash=h, size=n) for h, n in stored],
        refused=[{"name": n, "reason": why} for n, why in refused],
    )


@router.post("/v1/manifests", response_model=ManifestPublic, status_code=status.HTTP_201_CREATED)
def create_manifest(
    body: ManifestIn,
    request: Request,
    studio: StudioDep,
    assets: AssetsDep,
    keys: IdempotencyDep,
    idempotency_key: IdempotencyKey = None,
) -> ManifestPublic | Response:
    """Describe a job's files. With an ``Idempotency-Key``, a retry of the same request
    gets the first answer again and makes no second manifest (as ``POST /v1/jobs``)."""
    studio_id = own_id(studio)
    if idempotency_key is not None:
        return answer_keyed(
            keys, studio_id, idempotency_key, request, body,
            lambda keep: assets.create_manifest(studio_id, body.entries(), keep), _manifest_body,
        )  # fmt: skip
    return ManifestPublic.of(assets.create_manifest(studio_id, body.entries()))


def _manifest_body(manifest: ManifestRow) -> dict[str, Any]:
    return ManifestPublic.of(manifest).model_dump(mode="json")


@router.get("/v1/manifests/{manifest_id}", response_model=ManifestDetail)
def get_manifest(manifest_id: RowId, studio: StudioDep, assets: AssetsDep) -> ManifestDetail:
    manifest, files = assets.manifest(own_id(studio), manifest_id)
    return ManifestDetail(
        **ManifestPublic.of(manifest).model_dump(),
        entries=[
            ManifestFileIn(path=f.path, size=f.size, hash=f.hash, mtime=f.mtime) for f in files
        ],
    )
