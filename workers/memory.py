"""A renderer's memory bound: the job's (``requirements.memory_gb``, in the chunk
message), else the node's (``RENDERFARM_RENDER_MEMORY_BYTES``, else its memory divided
by its slots), so that one job cannot take a node's whole memory.

Enforced with ``RLIMIT_DATA`` on the renderer's process, inherited by whatever it
starts: it bounds the heap and private writable mappings, the memory a renderer
fills. ``RLIMIT_AS`` would also count address space reserved and never used (GPU
drivers reserve tens of GB of it), refusing GPU renders that fit. cgroups v2
(``memory.max``) would also bound the page cache, but needs a delegated cgroup that
nodes here do not have (this machine has cgroups v1); a node in a container gets one
from its runtime. An allocation past the bound fails inside the renderer (Python's
MemoryError, C++'s bad_alloc, Blender's "Malloc returns null"), which the runner
reports as "out of memory"; the attempt is retried per the job's policy.
"""

from __future__ import annotations

import re
import resource
from collections.abc import Callable, Iterable

from workers.processes import die_with_parent

# What renderers print when an allocation fails.
OUT_OF_MEMORY = re.compile(
    rb"MemoryError|Unable to allocate|bad_alloc|Cannot allocate memory|out of memory"
    rb"|Malloc returns null|Calloc returns null",
    re.IGNORECASE,
)


class RenderMemory:
    """This node's default bound; set once as the node starts (workers/node.py)."""

    def __init__(self) -> None:
        self.default: int | None = None

    def use(self, default: int | None) -> None:
        self.default = default

    def bound(self, asked: int | None) -> int | None:
        return asked or self.default


RENDER_MEMORY = RenderMemory()


def starting_with_bound(limit: int | None) -> Callable[[], None]:
    """For ``preexec_fn``: the child dies with its parent, and takes at most ``limit``
    bytes of data memory."""

    def start() -> None:
        die_with_parent()
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

    return start


def ran_out_of_memory(lines: Iterable[bytes]) -> bool:
    return any(OUT_OF_MEMORY.search(line) for line in lines)


def out_of_memory_message(limit: int) -> str:
    return (
        f"out of memory: the renderer needed more than {limit / 2**30:.2f} GiB, its bound "
        "(the job's requirements.memory_gb, else the node's); ask for more memory"
    )
