"""The Celery app both sides share: broker, reliability settings, no result backend.

Reliability (see ../shared/CELERY-FACTS.md): ``acks_late`` + prefetch 1 +
``reject_on_worker_lost`` mean a chunk whose worker dies is delivered again, so a
chunk may render twice; attempts make the accounting exactly-once. The Redis
visibility timeout stays above the longest render, or Redis would hand a healthy
render to a second worker. Results travel as events, so there is no result backend.
"""

from __future__ import annotations

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
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        task_create_missing_queues=True,
    )
    return app
