"""Studios get their pictures back: each frame with its content type, a thumbnail per
frame, and every finished frame as one archive streamed as it is written.

Frames are made the way the farm makes them: a job is submitted, a node heartbeats, the
scheduler dispatches, and the node's ``finished`` events name files it put in the
farm's storage (written here first, in the format the name says). Each test runs on a
storage folder and on S3-compatible object storage (moto's server)."""

from __future__ import annotations

import io
import os
import tarfile
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import OpenEXR
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from scheduler.dispatch.scheduler import Scheduler
from scheduler.settings import Settings
from scheduler.usecases.jobs import StudioService
from scheduler.wire.messages import FrameReport
from scheduler.wire.storage import open_storage
from tests.conftest import both_storages
from tests.integration.conftest import event, heartbeat, submit

pytestmark = [pytest.mark.integration, both_storages]

WIDTH, HEIGHT = 640, 360  # 16:9, so a 256 px wide thumbnail is 144 px high

Writer = Callable[[Path, int], None]


def gradient(frame: int) -> np.ndarray:
    """An RGB picture in [0, 1] that differs per frame."""
    x = np.linspace(0.0, 1.0, WIDTH, dtype=np.float32)[None, :]
    y = np.linspace(0.0, 1.0, HEIGHT, dtype=np.float32)[:, None]
    return np.stack(
        [x.repeat(HEIGHT, 0), y.repeat(WIDTH, 1), np.full((HEIGHT, WIDTH), (frame % 7) / 7)],
        axis=-1,
    )


def write_pillow(path: Path, frame: int) -> None:
    Image.fromarray((gradient(frame) * 255).astype(np.uint8)).save(path)


def write_exr(path: Path, frame: int) -> None:
    """Scene-linear HDR values (up to 4), as a renderer writes them."""
    linear = (gradient(frame) * 4.0).astype(np.float32)
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    channels = {name: np.ascontiguousarray(linear[..., i]) for i, name in enumerate("RGB")}
    with OpenEXR.File(header, channels) as exr:
        exr.write(str(path))


def write_bytes(path: Path, frame: int, size: int = 64 * 1024) -> None:
    path.write_bytes(os.urandom(size))  # incompressible, like a compressed image


class Farm:
    """A studio's view of a test farm: the scheduler, the studio's service and its key."""

    def __init__(self, scheduler: Scheduler, service: StudioService, settings: Settings):
        studio, key = service.create_studio("laika-east")
        assert studio.id is not None
        self.scheduler = scheduler
        self.service = service
        self.storage = open_storage(settings)
        self.local = settings.data_dir / "node-frames"  # where the "node" writes them first
        self.studio_id = studio.id
        self.auth = {"Authorization": f"Bearer {key}"}

    def render(self, frames: str, files: dict[int, tuple[str, Writer]], chunk_size: int = 1) -> int:
        """Submit a job and finish the chunks whose frames all have a file in ``files``
        (frame -> (extension, writer)); the other chunks stay dispatched."""
        job_id = submit(self.service, self.studio_id, frames, chunk_size=chunk_size)
        self.scheduler.ingest([heartbeat(slots=64)])
        while sent := self.scheduler.dispatch_tick():
            for message in sent:
                if not all(f in files for f in message.frames):
                    continue
                reports = []
                for frame in message.frames:
                    extension, write = files[frame]
                    output = f"jobs/{job_id}/frames/frame_{frame:06d}{extension}"
                    written = self.local / output
                    written.parent.mkdir(parents=True, exist_ok=True)
                    write(written, frame)
                    self.storage.adopt(output, written)
                    reports.append(FrameReport(frame, output, render_seconds=1.0, cpu_seconds=1.0))
                self.scheduler.ingest(
                    [event("started", message), event("finished", message, results=reports)]
                )
        return job_id

    def stored(self, key: str) -> bytes:
        return b"".join(self.storage.read(key))

    def frame_bytes(self, job_id: int, frame: int, extension: str) -> bytes:
        return self.stored(f"jobs/{job_id}/frames/frame_{frame:06d}{extension}")


FORMATS: dict[int, tuple[str, Writer]] = {
    1: (".png", write_pillow),
    2: (".jpg", write_pillow),
    3: (".tif", write_pillow),
    4: (".exr", write_exr),
}
CONTENT_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".tif": "image/tiff",
    ".exr": "image/x-exr",
}


@pytest.fixture
def farm(scheduler: Scheduler, studios: StudioService, settings: Settings) -> Farm:
    return Farm(scheduler, studios, settings)


@pytest.fixture
def auth(farm: Farm) -> dict[str, str]:
    return farm.auth


@pytest.fixture
def other_auth(studios: StudioService) -> dict[str, str]:
    return {"Authorization": f"Bearer {studios.create_studio('aardman-east')[1]}"}


def test_each_frame_is_served_with_its_formats_content_type(
    farm: Farm, client: TestClient, auth: dict[str, str]
) -> None:
    job_id = farm.render("1-4", FORMATS)
    for frame, (extension, _write) in FORMATS.items():
        response = client.get(f"/v1/jobs/{job_id}/frames/{frame}/output", headers=auth)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == CONTENT_TYPES[extension]
        assert response.content == farm.frame_bytes(job_id, frame, extension)
        assert f"frame_{frame:06d}{extension}" in response.headers["content-disposition"]


def test_every_frame_has_a_small_jpeg_thumbnail_and_an_exr_is_tone_mapped(
    farm: Farm, client: TestClient, auth: dict[str, str]
) -> None:
    job_id = farm.render("1-5", FORMATS)  # frame 5 is dispatched, not done
    for frame, (extension, _write) in FORMATS.items():
        response = client.get(f"/v1/jobs/{job_id}/frames/{frame}/thumbnail", headers=auth)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/jpeg"
        thumbnail = Image.open(io.BytesIO(response.content))
        assert thumbnail.format == "JPEG"
        assert thumbnail.size == (256, 144)
        pixels = np.asarray(thumbnail.convert("RGB"), dtype=np.float64)
        assert pixels.mean() > 40, f"the {extension} thumbnail is nearly black"
        assert pixels[:, -8:, 0].mean() > pixels[:, :8, 0].mean() + 100  # the gradient shows
        kept = f"jobs/{job_id}/frames/thumbnails/frame_{frame:06d}.jpg"
        assert farm.stored(kept) == response.content

    not_done = client.get(f"/v1/jobs/{job_id}/frames/5/thumbnail", headers=auth)
    assert not_done.status_code == 404
    assert "frame 5" in not_done.json()["detail"]
    assert "done" in not_done.json()["detail"]


def test_an_archive_holds_exactly_the_finished_frames(
    farm: Farm, client: TestClient, auth: dict[str, str]
) -> None:
    job_id = farm.render("1-6", FORMATS)  # frames 5 and 6 are not done
    expected = {
        f"frame_{frame:06d}{ext}": farm.frame_bytes(job_id, frame, ext)
        for frame, (ext, _write) in FORMATS.items()
    }

    as_zip = client.get(f"/v1/jobs/{job_id}/output?format=zip", headers=auth)
    assert as_zip.status_code == 200, as_zip.text
    assert as_zip.headers["content-type"] == "application/zip"
    assert f"job-{job_id}.zip" in as_zip.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(as_zip.content)) as archive:
        assert archive.testzip() is None
        assert archive.namelist() == sorted(expected)
        assert {i.compress_type for i in archive.infolist()} == {zipfile.ZIP_STORED}
        assert {name: archive.read(name) for name in archive.namelist()} == expected

    as_tar = client.get(f"/v1/jobs/{job_id}/output", params={"format": "tar"}, headers=auth)
    assert as_tar.status_code == 200, as_tar.text
    assert as_tar.headers["content-type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(as_tar.content), mode="r:") as archive:
        names = archive.getnames()
        assert names == sorted(expected)
        got = {}
        for name in names:
            member = archive.extractfile(name)
            assert member is not None
            got[name] = member.read()
        assert got == expected

    assert client.get(f"/v1/jobs/{job_id}/output?format=rar", headers=auth).status_code == 422
    empty = farm.render("1-2", {})
    nothing = client.get(f"/v1/jobs/{empty}/output", headers=auth)
    assert nothing.status_code == 404
    assert "no finished frames" in nothing.json()["detail"]


def test_a_thousand_frame_archive_streams_without_holding_it(
    farm: Farm, client: TestClient, auth: dict[str, str], tmp_path: Path, settings: Settings
) -> None:
    # 64 MiB either way; fewer, larger frames on S3, as moto takes ~5 ms a request
    count, size = (1000, 64 * 1024) if settings.storage_url is None else (200, 320 * 1024)
    writer: Writer = lambda path, frame: write_bytes(path, frame, size)  # noqa: E731
    job_id = farm.render(f"1-{count}", dict.fromkeys(range(1, count + 1), (".png", writer)), 100)
    frames_bytes = count * size
    for kind in ("zip", "tar"):
        received = tmp_path / f"received.{kind}"
        tracemalloc.start()
        try:
            with (
                client.stream("GET", f"/v1/jobs/{job_id}/output?format={kind}", headers=auth) as r,
                received.open("wb") as sink,
            ):
                assert r.status_code == 200
                for piece in r.iter_raw():
                    sink.write(piece)
            _now, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        size = received.stat().st_size
        assert size >= frames_bytes
        assert peak < size / 10, f"{kind}: {peak} bytes at the peak for a {size}-byte archive"

        if kind == "zip":
            with zipfile.ZipFile(received) as archive:
                names = archive.namelist()
                sample = archive.read("frame_000177.png")
        else:
            with tarfile.open(received, "r:") as archive:
                names = archive.getnames()
                member = archive.extractfile("frame_000177.png")
                assert member is not None
                sample = member.read()
        assert names == [f"frame_{f:06d}.png" for f in range(1, count + 1)]
        assert sample == farm.frame_bytes(job_id, 177, ".png")


def test_another_studios_frames_are_not_found(
    farm: Farm, client: TestClient, auth: dict[str, str], other_auth: dict[str, str]
) -> None:
    job_id = farm.render("1-4", FORMATS)
    for path in (
        f"/v1/jobs/{job_id}/frames/1/output",
        f"/v1/jobs/{job_id}/frames/4/thumbnail",
        f"/v1/jobs/{job_id}/output?format=zip",
        f"/v1/jobs/{job_id}/output?format=tar",
    ):
        assert client.get(path, headers=auth).status_code == 200, path
        theirs = client.get(path, headers=other_auth)
        assert theirs.status_code == 404, path
        assert theirs.json() == {"detail": f"no job {job_id}"}
