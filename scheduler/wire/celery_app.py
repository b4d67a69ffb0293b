"""The Celery app both sides share: broker, reliability settings, no result backend.

Facts it relies on (measured with Celery 5.7 / kombu 5.7 on Redis 7):

- ``acks_late`` + ``worker_prefetch_multiplier=1`` + ``task_reject_on_worker_lost``:
  a chunk whose pool process dies is delivered again at once, so a chunk may render
  twice; attempt numbers make the accounting exactly-once.
- Redis hands an unacknowledged message to another worker after the visibility
  timeout, even while the first still renders it: the timeout stays above the longest
  render, and lost nodes are found by heartbeat instead.
- Results travel as node events, so there is no result backend (it would cost 10-35%
  of a worker's throughput for nothing).

``celery = make_celery(Settings())`` is also here, built on first access rather than at
import, for Celery's own tools run against a farm: ``celery -A
scheduler.wire.celery_app inspect active|stats|active_queues`` and Flower, with
``RENDERFARM_BROKER_URL`` naming the farm's broker. Building it connects to nothing.
"""

from __future__ import annotations

import functools
from typing import Any

from celery import Celery

from scheduler.settings import Settings


def make_celery(settings: Settings, main: str = "renderfarm") -> Celery:
    app = Celery(main, broker=settings.effective_broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_send_task_events=False,  # `renderfarm worker --events` turns them on
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        task_create_missing_queues=True,
    )
    return app


@functools.cache
def _tools_app() -> Celery:
    return make_celery(Settings())


def __getattr__(name: str) -> Any:
    # A module attribute built on first use (PEP 562), so that importing make_celery
    # reads no settings; `celery -A` finds it as `<module>.celery`.
    if name == "celery":
        return _tools_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def answer_active_readably() -> None:
    """Make this worker answer ``inspect active`` with each task's ``argsrepr``.

    Celery's own ``active`` lists a task's decoded arguments unless asked for the
    "safe" view, which its command line cannot ask for: a chunk would show as its
    whole message. A render node answers with ``job 12 chunk 345 frames 1-4 attempt
    2`` instead (the ``argsrepr`` the scheduler wrote); ``safe=False`` still returns
    the arguments. Call it in the worker's process: remote-control commands are a
    registry global to the process.
    """
    from celery.worker import state as worker_state
    from celery.worker.control import inspect_command

    @inspect_command(alias="dump_active")
    def active(state: Any, safe: bool | None = None, **kwargs: Any) -> list[dict[str, Any]]:
        """List of tasks currently being executed."""
        return [
            request.info(safe=safe is not False)
            for request in state.tset(worker_state.active_requests)
        ]
