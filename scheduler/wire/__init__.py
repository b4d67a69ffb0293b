"""What the scheduler and the render nodes exchange: chunk messages and node events, the
broker adapter, the Redis event list and the Celery app.

A leaf beside ``scheduler.core``: nodes import it, so it never imports the database,
the use cases or the API.
"""
