"""The FastAPI application: ``create_app(settings)`` builds it, nothing at import time."""

from __future__ import annotations

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Engine

from api.errors import install_error_handlers
from api.limits import BodySizeLimit
from api.metrics import FarmCollector
from api.routes import (
    admin,
    assets,
    internal,
    jobs,
    monitor,
    nodes,
    plans,
    streams,
    studios,
    system,
    templates,
    webhooks,
)
from scheduler import __version__
from scheduler.db import create_tables, farm_engine
from scheduler.settings import Settings
from scheduler.usecases.assets import AssetService
from scheduler.usecases.blobstore import BlobStore, open_storage
from scheduler.usecases.frame_outputs import StoredFiles
from scheduler.usecases.jobs import StudioService, scheduler_bell
from scheduler.usecases.operators import OperatorService
from scheduler.usecases.ratelimit import RateLimiter


def from_environment() -> FastAPI:
    """The app as configured by the environment: what each worker process of
    ``renderfarm api --workers N`` builds (uvicorn's factory)."""
    return create_app(Settings())


def create_app(settings: Settings, engine: Engine | None = None) -> FastAPI:
    engine = engine or farm_engine(settings, "renderfarm-api")
    create_tables(engine)
    app = FastAPI(
        title="renderfarm",
        version=__version__,
        description="Submit render jobs, watch them, download frames. "
        "Authenticate with `Authorization: Bearer <studio key>`.",
    )
    registry = CollectorRegistry()
    registry.register(FarmCollector(engine, settings.currency))
    app.state.settings = settings
    app.state.engine = engine
    app.state.registry = registry
    wake = scheduler_bell(settings)  # one client, for the studios' and operators' changes
    app.state.service = StudioService(engine, settings, wake=wake)
    app.state.operators = OperatorService(engine, wake=wake)
    storage = open_storage(settings)  # a folder, or object storage
    blobs = BlobStore(storage)
    blobs.sweep_spool()  # what a crash of this host's API left half-spooled
    app.state.assets = AssetService(engine, settings, blobs)
    app.state.stored_files = StoredFiles(storage)
    app.state.rate_limiter = RateLimiter(settings.effective_broker_url)
    install_error_handlers(app)
    app.include_router(jobs.router)  # first: routes are matched in order, these are hottest
    app.include_router(assets.router)
    app.include_router(internal.router)
    app.include_router(nodes.router)
    app.include_router(studios.router)
    app.include_router(templates.router)
    app.include_router(plans.router)
    app.include_router(webhooks.router)
    app.include_router(streams.router)
    app.include_router(admin.router)
    app.include_router(monitor.router)
    app.include_router(system.router)
    manifests = max(settings.max_body_bytes, settings.max_manifest_files * 512)
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_body_bytes,
        # contents stream to disk under limits of their own (the asset service)
        by_path={
            "/v1/blobs": None,
            "/v1/internal/outputs": None,  # frames from nodes, streamed to storage
            "/v1/assets": manifests,
            "/v1/manifests": manifests,
        },
    )
    return app
