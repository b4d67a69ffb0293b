"""What a studio gets back of its frames: their content type, a thumbnail, an archive,
from the farm's storage (a folder or object storage: scheduler/wire/storage.py).

- ``content_type_of(name)``: the media type of a frame file by its extension (the
  renderers name frames with their format's extension: ``.png``, ``.jpg``, ``.tif``,
  ``.exr``).
- ``StoredFiles.stored(key)``: a stored frame, log or content, opened (``StoredFile``:
  its size, its mtime, its bytes piece by piece); ``each(keys)`` opens them one by one.
- ``StoredFiles.thumbnail(output)``: the frame's JPEG thumbnail, about
  ``THUMBNAIL_WIDTH`` px wide (never wider than the frame), made on first use and kept
  beside the frame under ``thumbnails/``. OpenEXR frames are read as float data and
  tone-mapped (Reinhard, then the sRGB curve); the others go through Pillow.
- ``stream_zip(files)``, ``stream_tar(files)``: an archive of the files, yielded piece
  by piece as it is written: never whole in memory, never on disk. Members are stored,
  not deflated (frames are compressed already), and named by the file's name.

Thumbnails are made lazily and cached, not by the scheduler: the dispatch loop and its
ingestion transaction never decode an image, a frame nobody looks at costs nothing, and
any number of API processes sharing the storage may make the same thumbnail at once
(each writes a spool file and adopts it; the last one wins, and they are equal). A
thumbnail older than its frame is made again.
"""

from __future__ import annotations

import logging
import tarfile
import time
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from scheduler.errors import Conflict, NotFound
from scheduler.wire.storage import KeyMissing, Storage

log = logging.getLogger(__name__)

THUMBNAIL_WIDTH = 256
THUMBNAIL_DIR = "thumbnails"

CONTENT_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".exr": "image/x-exr",
}
FALLBACK_TYPE = "application/octet-stream"
ZIP_EPOCH = 315_532_800  # 1980-01-01, the earliest time a zip entry can carry


def content_type_of(name: str) -> str:
    return CONTENT_TYPES.get(Path(name).suffix.lower(), FALLBACK_TYPE)


@dataclass(slots=True)
class StoredFile:
    """A file in the storage, opened: its size and mtime as of the opening, and its
    bytes, once (``pieces``). Where the storage is a folder, it was opened without
    following links: a link or a FIFO in place of a frame is not served."""

    key: str
    size: int
    mtime: float
    body: Iterator[bytes]

    @property
    def name(self) -> str:
        return PurePosixPath(self.key).name

    def pieces(self) -> Iterator[bytes]:
        return self.body


class StoredFiles:
    """Frames, logs, thumbnails and contents in the farm's storage, as the API serves
    them: NotFound where nothing is stored, ``Unavailable`` (503) where the storage
    fails."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def stored(self, key: str) -> StoredFile:
        """What is stored under ``key``, opened; NotFound if nothing (yet)."""
        try:
            opened = self.storage.open(key)
        except KeyMissing:
            raise NotFound(f"{key} is not in storage (yet)") from None
        return StoredFile(key, opened.size, opened.mtime, opened.pieces)

    def each(self, keys: Iterable[str]) -> Iterator[StoredFile]:
        """The files stored under ``keys``, each opened as it is reached (an archive
        starts at once, with one request per file to object storage); a key with
        nothing stored is logged and left out."""
        for key in keys:
            try:
                yield self.stored(key)
            except NotFound:
                log.warning("%s is missing from storage: left out", key)

    def thumbnail(self, output: str) -> StoredFile:
        """The frame's thumbnail (``<frame folder>/thumbnails/<frame name>.jpg``), made if
        missing or older than the frame."""
        frame_path = PurePosixPath(output)
        key = str(frame_path.parent / THUMBNAIL_DIR / f"{frame_path.stem}.jpg")
        frame = self.storage.stat(output)
        if frame is None:
            raise NotFound(f"{output} is not in storage (yet)")
        made = self.storage.stat(key)
        if made is not None and made.mtime >= frame.mtime:
            return self.stored(key)
        with self._local_copy(output) as path:
            try:
                image = _load_exr(path) if output.lower().endswith(".exr") else _load_pillow(path)
            except (OSError, ValueError, Image.DecompressionBombError) as error:
                raise Conflict(
                    f"{frame_path.name} is not an image the farm can read: {error}"
                ) from None
        image.thumbnail((THUMBNAIL_WIDTH, THUMBNAIL_WIDTH * 64), Image.Resampling.LANCZOS)
        file, spooled = self.storage.spool_file("thumbnail")
        try:
            with file:
                image.save(file, "JPEG", quality=85)
            self.storage.adopt(key, spooled)
        finally:
            spooled.unlink(missing_ok=True)
        return self.stored(key)

    @contextmanager
    def _local_copy(self, key: str) -> Iterator[Path]:
        """The stored file on local disk: a copy in the spool, read without following
        links (a decoder given the stored path would follow one)."""
        file, spooled = self.storage.spool_file("frame")
        try:
            with file:
                for piece in self.stored(key).pieces():
                    file.write(piece)
            yield spooled
        finally:
            spooled.unlink(missing_ok=True)


# Thumbnails ----------------------------------------------------------------------------


def _load_pillow(path: Path) -> Image.Image:
    image: Image.Image = Image.open(path)
    image.draft("RGB", (THUMBNAIL_WIDTH, THUMBNAIL_WIDTH))  # JPEG decodes at a fraction
    if image.mode.startswith("I"):  # 16-bit or 32-bit integer grey: scale, don't clip
        grey = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") else max(float(grey.max()), 1.0)
        image = Image.fromarray(np.clip(grey / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
    elif image.mode == "F":
        return _from_linear(np.asarray(image, dtype=np.float32)[..., None])
    return image.convert("RGB")


def _load_exr(path: Path) -> Image.Image:
    import OpenEXR

    with OpenEXR.File(str(path), separate_channels=True) as exr:
        channels = {name: channel.pixels for name, channel in exr.channels().items()}
    if not channels:
        raise ValueError(f"{path.name} has no channels")
    by_suffix: dict[str, str] = {}
    for name in sorted(channels, key=len):  # "R" before "ViewLayer.Combined.R"
        by_suffix.setdefault(name.rsplit(".", 1)[-1].upper(), name)
    if all(c in by_suffix for c in "RGB"):
        names = [by_suffix[c] for c in "RGB"]
    else:  # grey (Y) or a single data channel
        names = [by_suffix.get("Y", next(iter(sorted(channels))))]
    width = channels[names[0]].shape[1]
    step = max(1, width // (THUMBNAIL_WIDTH * 2))  # decimate before the float maths
    linear = np.stack([channels[n][::step, ::step].astype(np.float32) for n in names], axis=-1)
    return _from_linear(linear)


def _from_linear(linear: np.ndarray) -> Image.Image:
    """Scene-linear values to an 8-bit sRGB image: Reinhard x/(1+x), then the sRGB curve."""
    values = np.nan_to_num(linear, nan=0.0, posinf=1e6, neginf=0.0).clip(0.0, None)
    mapped = values / (1.0 + values)
    srgb = np.where(mapped <= 0.0031308, mapped * 12.92, 1.055 * np.power(mapped, 1 / 2.4) - 0.055)
    pixels = np.clip(srgb * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    return Image.fromarray(pixels)


# Archives ------------------------------------------------------------------------------


class _Pipe:
    """An unseekable file that keeps what is written until it is taken."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> Iterator[bytes]:
        """What was written since the last take, if anything."""
        if self._parts:
            data = b"".join(self._parts)
            self._parts.clear()
            yield data


def stream_zip(members: Iterable[StoredFile]) -> Iterator[bytes]:
    """A zip of the members, stored, with data descriptors (it is written unseekably)."""
    pipe = _Pipe()
    with zipfile.ZipFile(pipe, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for member in members:
            stamp = time.localtime(max(member.mtime, ZIP_EPOCH))[:6]
            info = zipfile.ZipInfo(member.name, date_time=stamp)
            info.file_size = member.size
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_STORED
            with archive.open(info, "w") as entry:  # file_size known: zip64 when needed
                for piece in member.pieces():
                    entry.write(piece)
                    yield from pipe.take()
            yield from pipe.take()
    yield from pipe.take()


def stream_tar(members: Iterable[StoredFile]) -> Iterator[bytes]:
    """A POSIX (pax) tar of the members: a header, the data padded to 512-byte blocks,
    and two zero blocks at the end."""
    for member in members:
        info = tarfile.TarInfo(member.name)
        info.size = member.size
        info.mtime = int(member.mtime)
        info.mode = 0o644
        yield info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        sent = 0
        for piece in member.pieces():
            piece = piece[: info.size - sent]  # a file that grew meanwhile: keep the header true
            sent += len(piece)
            yield piece
        if sent < info.size:
            raise OSError(f"{member.name} shrank while it was being archived")
        yield b"\0" * (-info.size % tarfile.BLOCKSIZE)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)
