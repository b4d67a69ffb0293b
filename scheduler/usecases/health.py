"""Whether this API process can do its work: its database and its broker answer.

Liveness (``/healthz``) is the process itself; readiness (``/readyz``) is this: a load
balancer stops sending studios to an API whose database is gone, and an operator sees
at once that a farm whose broker is down records jobs but dispatches none.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from scheduler.db.engine import read_only
from scheduler.settings import Settings
from scheduler.wire.events import redis_from_url

TIMEOUT = 2.0  # seconds a check may take


def readiness(engine: Engine, settings: Settings) -> dict[str, str]:
    """``{"database": ..., "broker": ...}``: "ok", or what went wrong."""
    return {"database": _database(engine), "broker": _broker(settings.effective_broker_url)}


def _database(engine: Engine) -> str:
    try:
        with read_only(engine).connect() as connection:  # SQLite: no write lock taken
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as error:
        cause = getattr(error, "orig", None) or error  # the driver's error, if any
        return f"does not answer: {type(cause).__name__}"
    return "ok"


def _broker(url: str) -> str:
    client = redis_from_url(url)
    pool = client.connection_pool
    pool.connection_kwargs.update(socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)
    try:
        client.ping()
    except Exception as error:  # redis-py's errors, and OSError beneath them
        return f"does not answer: {type(error).__name__}"
    finally:
        client.close()
    return "ok"
