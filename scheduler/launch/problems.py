"""What the command line says when the farm's surroundings are wrong: one line a person
can act on and a non-zero exit status, never a traceback.

- ``explain``: the line for an error that escaped a command (a setting that does not
  hold, a database that cannot be reached, a broker that does not answer), or None
  for a bug, which keeps its traceback;
- checks run before the embedded farm starts, so that a mistake is said at once and
  not found later in a log file: the broker answers (``check_broker``), the API's port
  is free (``check_port``), the farm's database exists where an operator command
  looks for it (``existing_farm``).
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path

from pydantic import ValidationError

from scheduler.errors import Conflict, Misconfigured, RenderfarmError, Unavailable
from scheduler.settings import Settings

# Settings that have a command-line option of the same meaning
OPTIONS = {
    "energy_meter": "--energy-meter",
    "idle_watts": "--idle-watts",
    "max_watts": "--max-watts",
    "region": "--region",
    "blender": "--blender",
    "sandbox": "--sandbox",
    "run_as": "--run-as",
}


def explain(error: BaseException) -> str | None:
    """One line for an error a person can fix; None for anything else."""
    if isinstance(error, RenderfarmError):
        return str(error)
    if isinstance(error, ValidationError) and error.title == Settings.__name__:
        return settings_problem(error)
    return None


def settings_problem(error: ValidationError) -> str:
    """``RENDERFARM_ENERGY_METER (--energy-meter): 'bogus' is not one of ...``, one
    clause per setting that does not hold."""
    parts = []
    for problem in error.errors():
        name = str(problem["loc"][0]) if problem["loc"] else "settings"
        where = f"RENDERFARM_{name.upper()}"
        if name in OPTIONS:
            where += f" ({OPTIONS[name]})"
        message = problem["msg"].removeprefix("Value error, ")
        shown = "" if _secret(name) else f", not {problem.get('input')!r}"
        parts.append(f"{where}: {message}{shown}")
    return "; ".join(parts)


def _secret(name: str) -> bool:
    """A setting whose value is not echoed: a token, a password, or a URL (which may
    hold one)."""
    return any(word in name for word in ("token", "secret", "password", "key", "url"))


def check_broker(url: str, timeout: float = 3.0) -> None:
    """``Unavailable`` naming the broker when it does not answer a ping."""
    from scheduler.wire.events import redis_from_url

    client = redis_from_url(url)
    client.connection_pool.connection_kwargs.update(
        socket_timeout=timeout, socket_connect_timeout=timeout
    )
    try:
        client.ping()
    except Exception as error:  # redis-py's errors, and OSError beneath them
        from kombu.utils.url import maybe_sanitize_url

        reason = str(error).rstrip(".")
        raise Unavailable(
            f"cannot reach the broker (Redis) at {maybe_sanitize_url(url)}: {reason}. Start "
            "it, or unset RENDERFARM_BROKER_URL to let the farm start its own"
        ) from None
    finally:
        client.close()


def check_port(host: str, port: int) -> None:
    """``Conflict`` where another program listens on the API's port already."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise Conflict(
                    f"port {port} on {host} is in use by another program: choose another "
                    "with --port (or RENDERFARM_API_PORT)"
                ) from None
            raise Misconfigured(f"cannot listen on {host}:{port}: {error.strerror}") from None


def existing_farm(settings: Settings) -> None:
    """An operator command run away from the farm's folder would quietly make a new,
    empty farm database (and print a key the running farm refuses): where the database
    is the default SQLite file, it must exist."""
    if settings.database_url:
        return  # named: the operator means it (a new PostgreSQL farm starts this way)
    path = Path(settings.effective_database_url.removeprefix("sqlite:///"))
    if not path.exists():
        raise Misconfigured(
            f"no farm here: {path} does not exist. Run this where the farm runs, or give "
            "its RENDERFARM_DATA_DIR (renderfarm up prints the command); to start a new "
            "farm, run renderfarm up first"
        )
