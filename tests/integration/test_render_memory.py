"""A renderer's memory is bounded (the job's requirements.memory_gb, else the node's
default): past it, its allocation fails and the attempt fails saying "out of memory"
instead of the node swapping or its other renders being killed. The built-in renderer
traces in bands, so a large frame needs its pixels, not 0.6 KB a pixel."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from scheduler.wire.messages import ChunkMessage, FailedEvent, FinishedEvent, decode_event
from workers.memory import RENDER_MEMORY, ran_out_of_memory
from workers.runner import run_chunk

pytestmark = pytest.mark.integration
MIB = 2**20


@pytest.fixture(autouse=True)
def node_default() -> Iterator[None]:
    yield
    RENDER_MEMORY.use(None)


def chunk(width: int, height: int, memory: int | None) -> ChunkMessage:
    return ChunkMessage(
        chunk_id=1, attempt=1, job_id=1, pool="cpu", frames=[1], renderer="builtin",
        settings={"width": width, "height": height}, timeout=300, memory_bytes=memory,
        output_pattern="jobs/1/frames/f_{frame}.png", log_path="jobs/1/logs/chunk-1.log",
    )  # fmt: skip


def last_event(message: ChunkMessage, storage: Path) -> Any:
    events: list[dict[str, Any]] = []
    run_chunk(message, storage, "node-1", events.append)
    return decode_event(events[-1])


def test_a_full_hd_frame_renders_within_a_small_bound(tmp_path: Path) -> None:
    """1920x1080 in 256 MiB (numpy 2 alone takes ~90 MiB of it): before the bands, the
    tracer needed about 1.2 GiB."""
    finished = last_event(chunk(1920, 1080, 256 * MIB), tmp_path)
    assert isinstance(finished, FinishedEvent), finished
    with Image.open(tmp_path / "jobs/1/frames/f_000001.png") as frame:
        assert frame.size == (1920, 1080)


def test_a_renderer_past_its_jobs_bound_fails_out_of_memory(tmp_path: Path) -> None:
    """An 8K frame's pixels alone (95 MiB) do not fit what is left of 160 MiB."""
    failed = last_event(chunk(7680, 4320, 160 * MIB), tmp_path)
    assert isinstance(failed, FailedEvent), failed
    assert failed.error.startswith("out of memory"), failed.error
    assert "0.16 GiB" in failed.error


def test_without_a_jobs_bound_the_nodes_default_holds(tmp_path: Path) -> None:
    RENDER_MEMORY.use(160 * MIB)
    failed = last_event(chunk(7680, 4320, None), tmp_path)
    assert isinstance(failed, FailedEvent) and failed.error.startswith("out of memory")
    RENDER_MEMORY.use(None)  # no bound at all: the same frame's allocation succeeds
    assert isinstance(last_event(chunk(640, 360, None), tmp_path), FinishedEvent)


@pytest.mark.parametrize(
    ("line", "meant"),
    [
        (b"MemoryError", True),
        (b"numpy._core._exceptions._ArrayMemoryError: Unable to allocate 95 MiB", True),
        (b"terminate called after throwing an instance of 'std::bad_alloc'", True),
        (b"Malloc returns null: len=3221225472 in CDDerivedMesh.c", True),
        (b"Fra:1 Mem:12.00M (Peak 20.00M) | Sample 3/16", False),
        (b"Error: cannot read file shots/missing.blend", False),
    ],
)
def test_what_renderers_say_when_an_allocation_fails(line: bytes, meant: bool) -> None:
    assert ran_out_of_memory([line]) is meant
