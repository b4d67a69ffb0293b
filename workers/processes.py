"""Child processes: start them so they die with us, stop them with their whole group.

Used by the embedded launcher (Redis, api, scheduler, workers) and by the render
node's runner (renderers). Linux semantics: ``PR_SET_PDEATHSIG`` makes the kernel
kill a child when the thread that started it dies, even by SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """For ``preexec_fn``: the child gets SIGKILL when its parent dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def kill_groups(groups: Sequence[int], sig: int) -> None:
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, sig)


def stop_process(child: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the child's process group, wait ``grace`` s, then SIGKILL what is left.

    The child must lead its own group (started with ``start_new_session=True``).
    """
    if child.poll() is None:
        kill_groups([child.pid], signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=grace)
    kill_groups([child.pid], signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(timeout=grace)


def wait_until(condition: Callable[[], bool], timeout: float, message: str) -> None:
    """Poll ``condition`` every 0.1 s; TimeoutError(message) after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise TimeoutError(message)
