"""Studio routes under /v1/jobs: submit, read, steer, and fetch frames (each, their
thumbnails, or all as one archive) and logs.

Routes translate and delegate: the service decides, raises domain errors, and commits.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from fastapi import APIRouter, Query, Request, status
from fastapi.responses import FileResponse, Response, StreamingResponse

from api.deps import (
    FrameNumber,
    KnownQuery,
    MetadataQuery,
    Offset,
    RowId,
    ServiceDep,
    StoredFilesDep,
    StudioDep,
    own_id,
    read_in_thread,
    studio_actor,
)
from api.files import file_response
from api.idempotency import IdempotencyDep, IdempotencyKey, answer_keyed
from api.schemas import (
    STUDIO_ERRORS,
    FramePublic,
    FramesChosen,
    JobCreate,
    JobPage,
    JobPatch,
    JobPublic,
    Problem,
)
from scheduler.core.bounds import FRAME_MAX, FRAME_MIN
from scheduler.core.states import ChunkState, JobState
from scheduler.errors import NotFound
from scheduler.usecases.frame_outputs import content_type_of, stream_tar, stream_zip
from scheduler.usecases.jobs import JobDetail

log = logging.getLogger(__name__)

ARCHIVES = {"zip": (stream_zip, "application/zip"), "tar": (stream_tar, "application/x-tar")}

router = APIRouter(
    prefix="/v1/jobs",
    tags=["jobs"],
    dependencies=[KnownQuery],
    responses=STUDIO_ERRORS,
)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobPublic,
    responses={409: {"model": Problem}},
)
def submit_job(
    body: JobCreate,
    request: Request,
    studio: StudioDep,
    service: ServiceDep,
    keys: IdempotencyDep,
    idempotency_key: IdempotencyKey = None,
) -> JobPublic | Response:
    """Submit a job. With an ``Idempotency-Key``, a retry of the same request gets the
    first answer again (``Idempotent-Replayed: true``) and makes no second job; the key
    reused for another request is a 422. A request answered with an error made nothing
    and kept nothing: a retry with its key is taken afresh. Keys are kept 24 hours."""
    if idempotency_key is not None:
        return answer_keyed(
            keys, own_id(studio), idempotency_key, request, body,
            lambda keep: service.submit_job(own_id(studio), body, keep, studio_actor(studio)),
            _public,
        )  # fmt: skip
    job = service.submit_job(own_id(studio), body, actor=studio_actor(studio))
    assert job.id is not None
    return JobPublic.of(service.get_job(own_id(studio), job.id))


def _public(detail: JobDetail) -> dict[str, Any]:
    return JobPublic.of(detail).model_dump(mode="json")


@router.get("", response_model=JobPage)
def list_jobs(
    studio: StudioDep,
    service: ServiceDep,
    state: JobState | None = None,
    limit: int = Query(50, ge=1, le=500),
    offset: Offset = 0,
    show: MetadataQuery = None,
    sequence: MetadataQuery = None,
    shot: MetadataQuery = None,
    artist: MetadataQuery = None,
) -> JobPage:
    """The studio's jobs, newest first; by state, and by its production's metadata."""
    given = {"show": show, "sequence": sequence, "shot": shot, "artist": artist}
    metadata = {name: value for name, value in given.items() if value is not None}
    details, total = service.list_jobs(own_id(studio), state, limit, offset, metadata)
    return JobPage(
        items=[JobPublic.of(d) for d in details], total=total, limit=limit, offset=offset
    )


@router.get("/{job_id}", response_model=JobPublic)
async def get_job(
    request: Request, job_id: RowId, studio: StudioDep, service: ServiceDep
) -> Response:
    # The hottest read, one statement: on SQLite it runs on the event loop, where it
    # cannot wait (engine.py: reads_never_wait), else in a thread of the read pool.
    # JobPublic.of has validated it: it is written out as it is, not validated again.
    if service.reads_never_wait:
        detail = service.get_job(own_id(studio), job_id)
    else:
        detail = await read_in_thread(request, service.get_job, own_id(studio), job_id)
    return Response(JobPublic.of(detail).model_dump_json(), media_type="application/json")


@router.patch("/{job_id}", response_model=JobPublic)
def patch_job(job_id: RowId, body: JobPatch, studio: StudioDep, service: ServiceDep) -> JobPublic:
    changed = service.set_priority(own_id(studio), job_id, body.priority, studio_actor(studio))
    return JobPublic.of(changed)


@router.post("/{job_id}/cancel", response_model=JobPublic, responses={409: {"model": Problem}})
def cancel_job(job_id: RowId, studio: StudioDep, service: ServiceDep) -> JobPublic:
    return JobPublic.of(service.cancel_job(own_id(studio), job_id, studio_actor(studio)))


@router.post("/{job_id}/suspend", response_model=JobPublic, responses={409: {"model": Problem}})
def suspend_job(job_id: RowId, studio: StudioDep, service: ServiceDep) -> JobPublic:
    return JobPublic.of(service.suspend_job(own_id(studio), job_id, studio_actor(studio)))


@router.post("/{job_id}/resume", response_model=JobPublic, responses={409: {"model": Problem}})
def resume_job(job_id: RowId, studio: StudioDep, service: ServiceDep) -> JobPublic:
    return JobPublic.of(service.resume_job(own_id(studio), job_id, studio_actor(studio)))


@router.post("/{job_id}/requeue", response_model=JobPublic, responses={409: {"model": Problem}})
def requeue_frames(
    job_id: RowId, body: FramesChosen, studio: StudioDep, service: ServiceDep
) -> JobPublic:
    """Render chosen frames again: failed ones, or running ones that seem stuck (their
    attempts are superseded). Done frames are refused (409): their bills are final."""
    changed = service.requeue_frames(own_id(studio), job_id, body.frames, studio_actor(studio))
    return JobPublic.of(changed)


@router.post("/{job_id}/retry", response_model=JobPublic, responses={409: {"model": Problem}})
def retry_job(job_id: RowId, studio: StudioDep, service: ServiceDep) -> JobPublic:
    return JobPublic.of(service.retry_job(own_id(studio), job_id, studio_actor(studio)))


@router.get("/{job_id}/frames", response_model=list[FramePublic])
def list_frames(
    job_id: RowId,
    studio: StudioDep,
    service: ServiceDep,
    after: int | None = Query(
        None,
        ge=FRAME_MIN,
        le=FRAME_MAX,
        description="only the frames after this one: the last frame of the previous page. "
        "A page found this way reads only itself, whatever the job's size",
    ),
    offset: Offset = 0,  # frames to skip, in ascending frame order (each one read)
    limit: int = Query(10_000, ge=1, le=100_000),
    state: ChunkState | None = Query(
        None, description="only the frames in this state (offset and limit count those)"
    ),
) -> list[FramePublic]:
    """The job's frames in ascending order, a page at a time (``after``, ``limit``); a
    running frame's ``progress`` is what its node last said of it (volatile, from
    Redis: read once per listing, and null if Redis does not answer)."""
    frames = service.list_frames(own_id(studio), job_id, offset, limit, state, after)
    progress = service.running_progress(job_id, frames)
    return [FramePublic.of(job_id, f, progress.get(f.frame)) for f in frames]


@router.get("/{job_id}/frames/{frame}/output", response_class=FileResponse)
def frame_output(
    job_id: RowId, frame: FrameNumber, studio: StudioDep, service: ServiceDep, files: StoredFilesDep
) -> Response:
    status_ = service.frame_status(own_id(studio), job_id, frame)
    if status_.output is None:
        raise NotFound(f"frame {frame} of job {job_id} has no output yet (it is {status_.state})")
    stored = files.stored(status_.output)
    return file_response(stored, content_type_of(stored.name), filename=stored.name)


@router.get("/{job_id}/frames/{frame}/thumbnail", response_class=FileResponse)
def frame_thumbnail(
    job_id: RowId, frame: FrameNumber, studio: StudioDep, service: ServiceDep, files: StoredFilesDep
) -> Response:
    """A JPEG about 256 px wide, made from the frame on first request and kept."""
    status_ = service.frame_status(own_id(studio), job_id, frame)
    if status_.output is None:
        raise NotFound(
            f"frame {frame} of job {job_id} is {status_.state}: it has a thumbnail once it is done"
        )
    return file_response(files.thumbnail(status_.output), "image/jpeg")


@router.get("/{job_id}/output", response_class=StreamingResponse)
def job_output(
    job_id: RowId,
    studio: StudioDep,
    service: ServiceDep,
    files: StoredFilesDep,
    format: Literal["zip", "tar"] = Query("zip", description="the archive's format"),
) -> StreamingResponse:
    """Every finished frame of the job in one archive, written as it is sent."""
    outputs = [output for _frame, output in service.finished_outputs(own_id(studio), job_id)]
    if not outputs:
        raise NotFound(f"job {job_id} has no finished frames yet")
    members = files.each(outputs)  # each opened as the archive reaches it
    stream, media_type = ARCHIVES[format]
    return StreamingResponse(
        stream(members),  # a plain generator: Starlette runs each step in a thread
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="job-{job_id}.{format}"'},
    )


@router.get("/{job_id}/frames/{frame}/log", response_class=FileResponse)
def frame_log(
    job_id: RowId, frame: FrameNumber, studio: StudioDep, service: ServiceDep, files: StoredFilesDep
) -> Response:
    status_ = service.frame_status(own_id(studio), job_id, frame)
    if status_.log is None:
        raise NotFound(f"frame {frame} of job {job_id} has not started, so it has no log")
    return file_response(files.stored(status_.log), "text/plain; charset=utf-8")
