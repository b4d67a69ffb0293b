"""The studio's commands of ``renderfarm``: they talk to the farm's REST API only.

    renderfarm login --api URL --key KEY        writes the profile the other commands read
    renderfarm submit SCENE.blend --frames 1-250 [--chunk-size 10] [--wait] ...
    renderfarm submit TEMPLATE.yaml -p NAME=VALUE ... [--wait]   an OpenJD job template
    renderfarm jobs                             the studio's jobs, newest first
    renderfarm watch JOB                        live progress until the job ends, per frame
    renderfarm download JOB [--to DIR]          every finished frame, streamed to files
    renderfarm cancel JOB

The API's URL and key come from ``--api``/``--key``, else ``RENDERFARM_API_URL`` and
``RENDERFARM_KEY``, else the profile (``$XDG_CONFIG_HOME/renderfarm/profile.toml``,
``~/.config`` without it; mode 0600).

``submit`` finds the scene's files with blender-asset-tracer (without starting Blender),
sends only the contents the farm lacks (small files batched in tars, large ones
streamed), names them in a manifest and submits a ``blender`` job on it. Given a
template (.yaml, .yml, .json), it submits it to ``POST /v1/templates``: a job per step.

Exit status: 0 done; 1 the API refused or could not be reached, or a watched job failed
or was cancelled; 2 a problem with what was asked (no key, files outside the project).
Expected failures print a message, never a traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import mimetypes
import os
import re
import tarfile
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Annotated, Any, NoReturn, cast

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

SMALL_FILE = 2**20  # smaller files travel in tars, larger ones alone
BATCH_BYTES = 64 * 2**20  # contents per tar
READ_BYTES = 2**20
BLENDER_TAG = "blender-4.5"
RUNNING_LISTED = 100  # running frames a live view asks the farm for
RUNNING_SHOWN = 4  # of those, named with how far they are
ENDED = ("done", "failed", "cancelled")
EXTENSIONS = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/tiff": ".tif",
    "image/x-exr": ".exr",
}

console = Console()


class StudioError(Exception):
    """An expected failure: printed as its message, the command exits with ``status``."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


# --- where the farm is, and who we are --------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Profile:
    api_url: str
    key: str


def profile_path() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "renderfarm" / "profile.toml"


def load_profile(path: Path) -> Profile | None:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise StudioError(f"cannot read the profile {path}: {error}", 2) from None
    api_url, key = data.get("api_url"), data.get("key")
    if not isinstance(api_url, str) or not isinstance(key, str):
        raise StudioError(f"the profile {path} lacks api_url or key: run renderfarm login", 2)
    return Profile(api_url, key)


def save_profile(path: Path, profile: Profile) -> None:
    """Write the profile readable by its owner only (it holds the key)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # JSON strings are valid TOML basic strings for what a URL and a key contain.
    text = f"api_url = {json.dumps(profile.api_url)}\nkey = {json.dumps(profile.key)}\n"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # also when the file was there, with other modes
    with os.fdopen(descriptor, "w") as file:
        file.write(text)


def resolve_profile(api_url: str | None, key: str | None) -> Profile:
    """Flags and the environment (typer reads both) first, then the profile."""
    saved = load_profile(profile_path()) if api_url is None or key is None else None
    api_url = api_url or (saved.api_url if saved else None)
    key = key or (saved.key if saved else None)
    if not api_url or not key:
        raise StudioError(
            "no farm given: pass --api and --key, set RENDERFARM_API_URL and RENDERFARM_KEY, "
            "or run renderfarm login",
            2,
        )
    return Profile(api_url.rstrip("/"), key)


# --- the REST API ---------------------------------------------------------------------


class Api:
    """The farm's REST API for one studio; every failure becomes a ``StudioError``
    carrying the API's own message."""

    def __init__(self, profile: Profile, transport: httpx.BaseTransport | None = None) -> None:
        self.url = profile.api_url
        self.client = httpx.Client(
            base_url=profile.api_url,
            headers={"Authorization": f"Bearer {profile.key}"},
            timeout=httpx.Timeout(60.0),
            transport=transport,
        )

    def close(self) -> None:
        self.client.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        with self._reached():
            response = self.client.request(method, path, **kwargs)
        _raise_for(response)
        return response.json()

    @contextlib.contextmanager
    def stream(self, path: str) -> Iterator[httpx.Response]:
        with self._reached(), self.client.stream("GET", path) as response:
            if response.is_error:
                response.read()
                _raise_for(response)
            yield response

    @contextlib.contextmanager
    def stream_if_routed(self, path: str) -> Iterator[httpx.Response | None]:
        """Like ``stream``, but None where this farm has no such route (an older API)."""
        with self._reached(), self.client.stream("GET", path) as response:
            if response.is_error:
                response.read()
                if _is_unknown_route(response):
                    yield None
                    return
                _raise_for(response)
            yield response

    @contextlib.contextmanager
    def _reached(self) -> Iterator[None]:
        try:
            yield
        except httpx.HTTPError as error:
            raise StudioError(f"cannot reach the farm at {self.url}: {error}") from None


def _is_unknown_route(response: httpx.Response) -> bool:
    # Starlette answers an unknown path with {"detail": "Not Found"}; the farm's own
    # 404s say what was not found.
    try:
        return response.status_code == 405 or response.json().get("detail") == "Not Found"
    except (ValueError, AttributeError):
        return True


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    raise StudioError(api_message(detail) or f"{response.status_code} {response.reason_phrase}")


def api_message(detail: Any) -> str:
    """The API's ``detail``: a sentence, or FastAPI's list of fields and their errors."""
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = [str(p) for p in item.get("loc", []) if p not in ("body", "query", "path")]
                parts.append(f"{'.'.join(loc)}: {item.get('msg')}" if loc else str(item.get("msg")))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return "" if detail is None else str(detail)


# --- a scene and its files ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SceneFiles:
    """What a scene needs: the files found (absolute), the project folder they travel
    from, and the dependencies that are not on this disk."""

    scene: Path
    project: Path
    files: list[Path]
    absent: list[Path]


@dataclasses.dataclass(frozen=True)
class ManifestFile:
    local: Path
    path: str
    size: int
    hash: str
    mtime: float

    def entry(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "hash": self.hash, "mtime": self.mtime}


def find_scene_files(scene: Path, project: Path | None = None) -> SceneFiles:
    """Trace the scene's dependencies (textures, libraries, caches, and theirs) and pick
    the project folder: ``project`` if given, else the scene's folder's nearest ancestor
    holding every dependency the scene names by a relative path. Absolute paths outside
    it are refused: the nodes could not find them."""
    try:
        from blender_asset_tracer import blendfile, trace
    except ImportError:  # GPL-licensed, so an extra: the farm itself does not need it
        raise StudioError(
            "finding a scene's files needs blender-asset-tracer: pip install 'renderfarm[studio]'",
            2,
        ) from None

    scene = _absolute(scene)
    relative: set[Path] = set()
    absolute: set[Path] = set()
    absent: set[Path] = set()
    try:
        for usage in trace.deps(scene):
            found = [_absolute(p) for p in usage.files()]
            if not found:
                absent.add(_absolute(Path(usage.abspath)))
            (absolute if usage.asset_path.is_absolute() else relative).update(found)
    except Exception as error:  # BAT raises many kinds on a file that is not a .blend
        raise StudioError(f"cannot read {scene} as a Blender scene: {error}", 2) from None
    finally:
        blendfile.close_all_cached()
    if project is None:
        project = scene.parent
        while not all(p.is_relative_to(project) for p in relative) and project != project.parent:
            project = project.parent
    else:
        project = _absolute(project)
    files = sorted({scene} | relative | absolute)
    outside = [p for p in files if not p.is_relative_to(project)]
    if outside:
        raise StudioError(
            f"outside the project folder {project} (the nodes could not find them; make "
            "the paths relative, move the files in, or pass --project): "
            + ", ".join(str(p) for p in outside),
            2,
        )
    return SceneFiles(scene, project, files, sorted(absent))


def _absolute(path: Path) -> Path:
    """Absolute, ``..`` resolved, symlinks kept (a linked texture stays where it is named)."""
    return Path(os.path.abspath(path))


def describe_files(project: Path, files: Iterable[Path]) -> list[ManifestFile]:
    described = []
    for local in files:
        stat = local.stat()
        digest = hashlib.sha256()
        with local.open("rb") as file:
            while block := file.read(READ_BYTES):
                digest.update(block)
        described.append(
            ManifestFile(
                local, local.relative_to(project).as_posix(), stat.st_size, digest.hexdigest(),
                stat.st_mtime,
            )
        )  # fmt: skip
    return described


@dataclasses.dataclass(frozen=True)
class Sent:
    files: int
    bytes: int
    unchanged: int


def send_files(api: Api, files: list[ManifestFile]) -> tuple[int, Sent]:
    """Send the contents the farm lacks and create the manifest; its id and the figures."""
    entries = [f.entry() for f in files]
    missing = set(api.call("POST", "/v1/assets/missing", json={"files": entries})["missing"])
    contents = {f.hash: f for f in files if f.hash in missing}  # equal files travel once
    small = [f for f in contents.values() if f.size < SMALL_FILE]
    for batch in _batches(small):
        _send_tar(api, batch)
    for large in (f for f in contents.values() if f.size >= SMALL_FILE):
        api.call(
            "PUT",
            f"/v1/blobs/{large.hash}",
            content=_read(large.local),
            headers={"Content-Length": str(large.size)},
        )
    manifest = api.call("POST", "/v1/manifests", json={"files": entries})
    sent_files = sum(1 for f in files if f.hash in missing)
    sent = Sent(sent_files, sum(f.size for f in contents.values()), len(files) - sent_files)
    return int(manifest["id"]), sent


def _batches(files: list[ManifestFile]) -> Iterator[list[ManifestFile]]:
    batch: list[ManifestFile] = []
    size = 0
    for file in files:
        if batch and size + file.size > BATCH_BYTES:
            yield batch
            batch, size = [], 0
        batch.append(file)
        size += file.size
    if batch:
        yield batch


def _send_tar(api: Api, batch: list[ManifestFile]) -> None:
    """One tar of contents named by their SHA-256, spooled to a temporary file."""
    with tempfile.TemporaryFile() as spool:
        with tarfile.open(fileobj=spool, mode="w") as tar:
            for file in batch:
                member = tarfile.TarInfo(file.hash)
                member.size = file.size
                with file.local.open("rb") as content:
                    tar.addfile(member, content)
        length = spool.tell()
        spool.seek(0)
        answer = api.call(
            "POST",
            "/v1/blobs",
            content=_chunks(spool),
            headers={"Content-Type": "application/x-tar", "Content-Length": str(length)},
        )
    if answer.get("refused"):
        refused = "; ".join(f"{r.get('name')}: {r.get('reason')}" for r in answer["refused"])
        raise StudioError(f"the farm refused some files (changed while sending?): {refused}")


def _read(path: Path) -> Iterator[bytes]:
    with path.open("rb") as file:
        yield from _chunks(file)


def _chunks(file: IO[bytes]) -> Iterator[bytes]:
    while block := file.read(READ_BYTES):
        yield block


def size_text(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def parse_resolution(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or not all(int(n) > 0 for n in match.groups()):
        raise typer.BadParameter(f"{text!r} is not WIDTHxHEIGHT, such as 1920x1080")
    return int(match[1]), int(match[2])


# --- following a job ------------------------------------------------------------------


def watch_job(api: Api, job_id: int, every: float = 1.0) -> dict[str, Any]:
    """Show the job's progress until it ends; its last state.

    The bar counts the done frames and the rendered parts of the running ones, which
    are named with how far each is (``12 43%``) where their renderer says so."""
    job = api.call("GET", f"/v1/jobs/{job_id}")
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("frames {task.fields[detail]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task(_title(job), total=job["progress"]["frames_total"], detail="")
        while True:
            counts = job["progress"]
            running = (
                running_frames(api, job_id)
                if counts["frames_running"] and job["state"] not in ENDED
                else []
            )
            progress.update(
                bar,
                description=_title(job),
                completed=counts["frames_done"] + sum(part or 0.0 for _, part in running),
                detail=f"{counts['frames_running']} rendering{_how_far(running)}, "
                f"{counts['frames_failed']} failed",
            )
            if job["state"] in ENDED:
                break
            time.sleep(every)
            job = api.call("GET", f"/v1/jobs/{job_id}")
    counts = job["progress"]
    message = f": {job['message']}" if job.get("message") else ""
    typer.echo(
        f"job {job_id} {job['state']}: {counts['frames_done']}/{counts['frames_total']} frames "
        f"done, {counts['frames_failed']} failed{message}"
    )
    return dict(job)


def _title(job: dict[str, Any]) -> str:
    return f"job {job['id']} {job['state']}"


def running_frames(api: Api, job_id: int) -> list[tuple[int, float | None]]:
    """The job's running frames (the first ``RUNNING_LISTED``) and how far each is,
    0 to 1, or None where its renderer does not say."""
    frames = api.call(
        "GET", f"/v1/jobs/{job_id}/frames", params={"state": "running", "limit": RUNNING_LISTED}
    )
    return [(f["frame"], f.get("progress")) for f in frames if f["state"] == "running"]


def _how_far(running: list[tuple[int, float | None]]) -> str:
    """`` (12 43%, 13 5%, 14)``: the first running frames, with how far they are."""
    if not running:
        return ""
    named = [f"{frame} {part:.0%}" if part is not None else str(frame) for frame, part in running]
    more = ", ..." if len(named) > RUNNING_SHOWN else ""
    return f" ({', '.join(named[:RUNNING_SHOWN])}{more})"


def download_frames(api: Api, job_id: int, to: Path) -> list[Path]:
    """Every finished frame of the job into ``to``, streamed: as one archive where the
    farm offers one (``GET /v1/jobs/{id}/output``), else frame by frame."""
    api.call("GET", f"/v1/jobs/{job_id}")  # the API's 404 for a job not the studio's
    to.mkdir(parents=True, exist_ok=True)
    with api.stream_if_routed(f"/v1/jobs/{job_id}/output?format=tar") as archive:
        if archive is not None:
            return _unpack(archive, to)
    written = []
    for frame in api.call("GET", f"/v1/jobs/{job_id}/frames"):
        if frame["state"] != "done" or not frame.get("output_url"):
            continue
        with api.stream(frame["output_url"]) as response:
            name = _file_name(response) or _frame_name(response, frame["frame"])
            written.append(_save(response.iter_bytes(), to / name))
    return written


def _file_name(response: httpx.Response) -> str | None:
    """The name the farm gives the file (Content-Disposition), without any folder."""
    given = re.search(r'filename="?([^";]+)"?', response.headers.get("content-disposition", ""))
    return _flat_name(given[1]) if given else None


def _flat_name(name: str) -> str | None:
    """A file name with any folder taken off, so that nothing lands outside ``--to``."""
    flat = PurePosixPath(name.replace("\\", "/")).name
    return flat if flat not in ("", ".", "..") else None


def _frame_name(response: httpx.Response, frame: int) -> str:
    kind = response.headers.get("content-type", "").split(";")[0].strip()
    extension = EXTENSIONS.get(kind) or mimetypes.guess_extension(kind) or ".bin"
    return f"frame_{frame:04d}{extension}"


def _unpack(response: httpx.Response, to: Path) -> list[Path]:
    """The archive's files into ``to``, flat (no member can write outside it): a tar as
    it arrives, a zip (which is read from its end) spooled to a temporary file first."""
    written = []
    if "zip" in response.headers.get("content-type", ""):
        with tempfile.TemporaryFile() as spool:
            for chunk in response.iter_bytes():
                spool.write(chunk)
            with zipfile.ZipFile(spool) as archive:
                for info in archive.infolist():
                    name = _flat_name(info.filename)
                    if not info.is_dir() and name:
                        with archive.open(info) as source:
                            written.append(_save(_chunks(source), to / name))
        return written
    stream = cast(IO[bytes], _Reader(response.iter_bytes()))
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for member in tar:
            name = _flat_name(member.name)
            content = tar.extractfile(member) if member.isfile() else None
            if content is not None and name:
                written.append(_save(_chunks(content), to / name))
    return written


class _Reader:
    """A read-only file over an iterator of bytes, for ``tarfile``'s stream mode."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.buffer = bytearray()

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self.buffer) < size:
            chunk = next(self.chunks, None)
            if chunk is None:
                break
            self.buffer += chunk
        size = len(self.buffer) if size < 0 else size
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data


def _save(chunks: Iterable[bytes], path: Path) -> Path:
    """Write to a temporary name, then rename: a file that is there is whole."""
    partial = path.with_name(path.name + ".part")
    with partial.open("wb") as file:
        for chunk in chunks:
            file.write(chunk)
    partial.replace(path)
    return path


# --- the commands ---------------------------------------------------------------------

ApiOption = Annotated[
    str | None,
    typer.Option(
        "--api", envvar="RENDERFARM_API_URL", help="the farm's API URL", show_default=False
    ),
]
KeyOption = Annotated[
    str | None,
    typer.Option("--key", envvar="RENDERFARM_KEY", help="the studio's API key", show_default=False),
]

ShowOption = Annotated[str | None, typer.Option(help="the film or series (metadata)")]
SequenceOption = Annotated[str | None, typer.Option(help="its sequence (metadata)")]
ShotOption = Annotated[str | None, typer.Option(help="its shot (metadata)")]
ArtistOption = Annotated[str | None, typer.Option(help="who submits it (metadata)")]


@contextlib.contextmanager
def _api(api_url: str | None, key: str | None) -> Iterator[Api]:
    """The API for this command; an expected failure ends it with its message."""
    client: Api | None = None
    try:
        client = Api(resolve_profile(api_url, key))
        yield client
    except StudioError as error:
        _fail(str(error), error.status)
    finally:
        if client is not None:
            client.close()


def _fail(message: str, status: int) -> NoReturn:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(status)


def login(
    api: Annotated[str, typer.Option("--api", help="the farm's API URL")],
    key: Annotated[str, typer.Option("--key", help="the studio's API key")],
) -> None:
    """Check the key with the farm and save the farm's URL and the key in the profile."""
    profile = Profile(api.rstrip("/"), key)
    with _api(profile.api_url, profile.key) as client:
        client.call("GET", "/v1/jobs", params={"limit": 1})
    path = profile_path()
    save_profile(path, profile)
    typer.echo(f"logged in to {profile.api_url}; profile saved in {path}")


TEMPLATE_SUFFIXES = (".yaml", ".yml", ".json")


def submit(
    scene: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            readable=True,
            help="the .blend file, or an OpenJD job template (.yaml, .yml, .json)",
        ),
    ],
    frames: Annotated[
        str | None, typer.Option(help="frames to render: 1-250, 1-100x2, 1,5,9 (a scene's)")
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="a template's job parameter, NAME=VALUE (repeatable)"),
    ] = None,
    attach: Annotated[
        Path | None,
        typer.Option(
            file_okay=False,
            exists=True,
            help="a template's files: this folder's files are sent (those the farm lacks) "
            "and laid out on the nodes; PATH parameters under it are mapped there",
        ),
    ] = None,
    chunk_size: Annotated[int, typer.Option(min=1, help="frames per chunk")] = 1,
    engine: Annotated[
        str | None, typer.Option(help="CYCLES, BLENDER_EEVEE_NEXT or BLENDER_WORKBENCH")
    ] = None,
    samples: Annotated[int | None, typer.Option(min=1, help="render samples")] = None,
    resolution: Annotated[str | None, typer.Option(help="WIDTHxHEIGHT, such as 1920x1080")] = None,
    percentage: Annotated[
        int | None, typer.Option(min=1, max=100, help="resolution percentage")
    ] = None,
    camera: Annotated[str | None, typer.Option(help="the camera object to render from")] = None,
    output_format: Annotated[str | None, typer.Option(help="PNG, OPEN_EXR, JPEG or TIFF")] = None,
    priority: Annotated[int | None, typer.Option(min=0, max=100, help="0-100")] = None,
    name: Annotated[str | None, typer.Option(help="the job's name; default: the scene")] = None,
    pool: Annotated[str | None, typer.Option(help="the pool to render in")] = None,
    project: Annotated[
        Path | None,
        typer.Option(file_okay=False, help="the folder the scene's files travel from"),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="show progress; exit 0 only if the job is done")
    ] = False,
    show: ShowOption = None,
    sequence: SequenceOption = None,
    shot: ShotOption = None,
    artist: ArtistOption = None,
    api: ApiOption = None,
    key: KeyOption = None,
) -> None:
    """Send a Blender scene and submit a job rendering it, or an OpenJD template.

    A scene travels with the files it needs (only those the farm lacks); a template
    (.yaml, .yml, .json) with its parameters (-p NAME=VALUE) becomes a job per step."""
    metadata = {"show": show, "sequence": sequence, "shot": shot, "artist": artist}
    if scene.suffix.lower() in TEMPLATE_SUFFIXES:
        terms = {"chunk_size": chunk_size, "priority": priority, "pool": pool, **metadata}
        submit_template(scene, param or [], attach, terms, wait, api, key)
        return
    if frames is None:
        _fail("give the frames to render: --frames 1-250", 2)
    size = parse_resolution(resolution) if resolution else None
    with _api(api, key) as client:
        found = find_scene_files(scene, project)
        for absent in found.absent:
            typer.secho(f"warning: {absent} is not there; the scene renders without it", err=True)
        files = describe_files(found.project, found.files)
        manifest_id, sent = send_files(client, files)
        typer.echo(
            f"sent {sent.files} files, {size_text(sent.bytes)}; {sent.unchanged} unchanged "
            f"(from {found.project})"
        )
        scene_path = found.scene.relative_to(found.project).as_posix()
        overrides = {
            "engine": engine,
            "samples": samples,
            "resolution_x": size[0] if size else None,
            "resolution_y": size[1] if size else None,
            "resolution_percentage": percentage,
            "camera": camera,
            "output_format": output_format,
        }
        body: dict[str, Any] = {
            "name": name or scene_path,
            "frames": frames,
            "chunk_size": chunk_size,
            "renderer": {"kind": "blender", "scene": scene_path}
            | {k: v for k, v in overrides.items() if v is not None},
            "manifest": manifest_id,
            "requirements": {"tags": [BLENDER_TAG]},
        }
        terms = {"priority": priority, "pool": pool, **metadata}
        body |= {k: v for k, v in terms.items() if v is not None}
        job = client.call("POST", "/v1/jobs", json=body)
        typer.echo(f"job {job['id']} submitted: {job['name']}, {job['frame_count']} frames")
        if wait:
            ended = watch_job(client, job["id"])
            raise typer.Exit(0 if ended["state"] == "done" else 1)


def submit_template(
    path: Path,
    params: list[str],
    attach: Path | None,
    terms: dict[str, Any],
    wait: bool,
    api: str | None,
    key: str | None,
) -> None:
    """Submit the template in ``path`` (its text: YAML or JSON) with these parameters,
    and the files of the folder ``attach`` (its path on this machine is the files' root,
    mapped to the nodes'); with ``wait``, watch its steps' jobs in order."""
    parameters: dict[str, str] = {}
    for text in params:
        name, equals, value = text.partition("=")
        if not equals or not name.strip():
            _fail(f"-p {text}: write NAME=VALUE", 2)
        parameters[name.strip()] = value
    try:
        document = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        _fail(f"{path}: {error}", 2)
    body: dict[str, Any] = {"template": document, "parameters": parameters}
    body |= {name: value for name, value in terms.items() if value is not None}
    with _api(api, key) as client:
        if attach is not None:
            folder = _absolute(attach)
            files = describe_files(folder, sorted(p for p in folder.rglob("*") if p.is_file()))
            body["manifest"], sent = send_files(client, files)
            body["files_root"] = str(folder)
            typer.echo(
                f"sent {sent.files} files, {size_text(sent.bytes)}; {sent.unchanged} unchanged "
                f"(from {folder})"
            )
        template = client.call("POST", "/v1/templates", json=body)
        typer.echo(f"template {template['id']} submitted: {template['name']}")
        for job in template["jobs"]:
            typer.echo(f"  job {job['id']}: {job['name']}, {job['frame_count']} tasks")
        if wait:
            ended = [watch_job(client, job["id"])["state"] for job in template["jobs"]]
            raise typer.Exit(0 if all(state == "done" for state in ended) else 1)


def jobs(
    state: Annotated[
        str | None, typer.Option(help="only jobs in this state (queued, running, done...)")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="at most this many")] = 50,
    show: ShowOption = None,
    sequence: SequenceOption = None,
    shot: ShotOption = None,
    artist: ArtistOption = None,
    api: ApiOption = None,
    key: KeyOption = None,
) -> None:
    """The studio's jobs, newest first (of a show, a shot... where given)."""
    given = {"state": state, "show": show, "sequence": sequence, "shot": shot, "artist": artist}
    params: dict[str, Any] = {"limit": limit} | {k: v for k, v in given.items() if v}
    with _api(api, key) as client:
        page = client.call("GET", "/v1/jobs", params=params)
    table = Table("id", "name", "shot", "state", "frames", "failed", "submitted", box=None)
    for job in page["items"]:
        counts = job["progress"]
        where = "/".join(job[k] for k in ("show", "sequence", "shot") if job.get(k))
        table.add_row(
            str(job["id"]), job["name"], where or "-", job["state"],
            f"{counts['frames_done']}/{counts['frames_total']}", str(counts["frames_failed"]),
            job["submitted_at"][:19].replace("T", " "),
        )  # fmt: skip
    console.print(table)
    if page["total"] > len(page["items"]):
        typer.echo(f"{len(page['items'])} of {page['total']} jobs shown")


def watch(
    job: Annotated[int, typer.Argument(help="the job's id")],
    api: ApiOption = None,
    key: KeyOption = None,
) -> None:
    """Show a job's progress until it ends; exit 0 only if it is done."""
    with _api(api, key) as client:
        ended = watch_job(client, job)
    raise typer.Exit(0 if ended["state"] == "done" else 1)


def download(
    job: Annotated[int, typer.Argument(help="the job's id")],
    to: Annotated[
        Path | None, typer.Option(file_okay=False, help="the folder; default: ./job-ID")
    ] = None,
    api: ApiOption = None,
    key: KeyOption = None,
) -> None:
    """Download every finished frame of a job."""
    folder = to or Path(f"job-{job}")
    with _api(api, key) as client:
        written = download_frames(client, job, folder)
    total = sum(p.stat().st_size for p in written)
    typer.echo(f"{len(written)} frames, {size_text(total)}, in {folder}")


def cancel(
    job: Annotated[int, typer.Argument(help="the job's id")],
    api: ApiOption = None,
    key: KeyOption = None,
) -> None:
    """Cancel a job: its renders stop within a scheduler tick."""
    with _api(api, key) as client:
        cancelled = client.call("POST", f"/v1/jobs/{job}/cancel")
    typer.echo(f"job {job} {cancelled['state']}")


COMMANDS = (login, submit, jobs, watch, download, cancel)
