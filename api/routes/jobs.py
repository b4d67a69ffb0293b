"""Studio routes under /v1/jobs: submit, read, steer, and fetch frames and logs.

Routes translate and delegate: the service decides, raises domain errors, and commits.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Query, status
from fastapi.responses import FileResponse

from api.deps import ServiceDep, SettingsDep, StudioDep
from api.schemas import FramePublic, JobCreate, JobPage, JobPatch, JobPublic, Problem
from scheduler.core.states import JobState
from scheduler.errors import NotFound

router = APIRouter(
    prefix="/v1/jobs",
    tags=["jobs"],
    responses={401: {"model": Problem}, 404: {"model": Problem}, 422: {"model": Problem}},
)


def _id(studio: StudioDep) -> int:
    assert studio.id is not None
    return studio.id


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobPublic)
def submit_job(body: JobCreate, studio: StudioDep, service: ServiceDep) -> JobPublic:
    job = service.submit_job(_id(studio), body)
    assert job.id is not None
    return JobPublic.of(service.get_job(_id(studio), job.id))


@router.get("", response_model=JobPage)
def list_jobs(
    studio: StudioDep,
    service: ServiceDep,
    state: JobState | None = None,
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0),
) -> JobPage:
    details, total = service.list_jobs(_id(studio), state, limit, offset)
    return JobPage(
        items=[JobPublic.of(d) for d in details], total=total, limit=limit, offset=offset
    )


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: int, studio: StudioDep, service: ServiceDep) -> JobPublic:
    return JobPublic.of(service.get_job(_id(studio), job_id))


@router.patch("/{job_id}", response_model=JobPublic)
def patch_job(job_id: int, body: JobPatch, studio: StudioDep, service: ServiceDep) -> JobPublic:
    return JobPublic.of(service.set_priority(_id(studio), job_id, body.priority))


@router.post("/{job_id}/cancel", response_model=JobPublic, responses={409: {"model": Problem}})
def cancel_job(job_id: int, studio: StudioDep, service: ServiceDep) -> JobPublic:
    return JobPublic.of(service.cancel_job(_id(studio), job_id))


@router.post("/{job_id}/suspend", response_model=JobPublic, responses={409: {"model": Problem}})
def suspend_job(job_id: int, studio: StudioDep, service: ServiceDep) -> JobPublic:
    return JobPublic.of(service.suspend_job(_id(studio), job_id))


@router.post("/{job_id}/resume", response_model=JobPublic, responses={409: {"model": Problem}})
def resume_job(job_id: int, studio: StudioDep, service: ServiceDep) -> JobPublic:
    return JobPublic.of(service.resume_job(_id(studio), job_id))


@router.post("/{job_id}/retry", response_model=JobPublic, responses={409: {"model": Problem}})
def retry_job(job_id: int, studio: StudioDep, service: ServiceDep) -> JobPublic:
    return JobPublic.of(service.retry_job(_id(studio), job_id))


@router.get("/{job_id}/frames", response_model=list[FramePublic])
def list_frames(
    job_id: int,
    studio: StudioDep,
    service: ServiceDep,
    offset: int = Query(0, ge=0, description="frames to skip, in ascending frame order"),
    limit: int = Query(10_000, ge=1, le=100_000),
) -> list[FramePublic]:
    frames = service.list_frames(_id(studio), job_id, offset, limit)
    return [FramePublic.of(job_id, s) for s in frames]


@router.get("/{job_id}/frames/{frame}/output", response_class=FileResponse)
def frame_output(
    job_id: int, frame: int, studio: StudioDep, service: ServiceDep, settings: SettingsDep
) -> FileResponse:
    status_ = service.frame_status(_id(studio), job_id, frame)
    if status_.output is None:
        raise NotFound(f"frame {frame} of job {job_id} has no output yet (it is {status_.state})")
    return FileResponse(_in_storage(settings.storage_root, status_.output), media_type="image/png")


@router.get("/{job_id}/frames/{frame}/log", response_class=FileResponse)
def frame_log(
    job_id: int, frame: int, studio: StudioDep, service: ServiceDep, settings: SettingsDep
) -> FileResponse:
    status_ = service.frame_status(_id(studio), job_id, frame)
    if status_.log is None:
        raise NotFound(f"frame {frame} of job {job_id} has not started, so it has no log")
    return FileResponse(
        _in_storage(settings.storage_root, status_.log), media_type="text/plain; charset=utf-8"
    )


def _in_storage(root: Path, relative: str) -> Path:
    path = (root / relative).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise NotFound(f"{relative} is not in storage (yet)")
    return path
