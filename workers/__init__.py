"""What runs on a render node: the Celery task, the renderer runner and the renderers.

Nothing here touches the database: a node needs only the broker and the storage root.
"""
