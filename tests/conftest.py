"""Shared fixtures: a real database, a real Redis, settings for a test farm, and waiting.

- Database: PostgreSQL when ``RENDERFARM_TEST_DATABASE_URL`` is set (CI sets it),
  else a SQLite file per test. Tables are dropped and created for every test.
- Redis: ``RENDERFARM_TEST_REDIS_URL``, else the server on 127.0.0.1:6379 if one
  answers, else an embedded one started for the session. Flushed for every test.
- Storage: a folder per test (``storage_location``); a test marked ``@both_storages``
  runs twice, on the folder and on S3-compatible object storage (moto's standalone
  server, started once per session, a bucket per test; boto3 finds it through the usual
  AWS variables, which farm processes inherit).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import psutil
import pytest
import redis
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from scheduler.db import create_tables, make_engine
from scheduler.launch.embedded import EmbeddedRedis
from scheduler.settings import Settings
from scheduler.usecases.jobs import StudioService
from workers.processes import stop_process

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float, what: str, every: float = 0.1) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    configured = os.environ.get("RENDERFARM_TEST_REDIS_URL")
    if configured:
        yield configured
        return
    local = "redis://127.0.0.1:6379/15"
    try:
        redis.Redis.from_url(local, socket_connect_timeout=0.5).ping()
        yield local
        return
    except redis.RedisError:
        pass
    embedded = EmbeddedRedis()
    embedded.start()
    try:
        yield embedded.url
    finally:
        embedded.stop()


def redis_client(url: str) -> redis.Redis:
    if url.startswith("redis+socket://"):
        return redis.Redis(unix_socket_path=url.removeprefix("redis+socket://"))
    return redis.Redis.from_url(url)


@pytest.fixture
def broker(redis_url: str) -> Iterator[redis.Redis]:
    client = redis_client(redis_url)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return os.environ.get("RENDERFARM_TEST_DATABASE_URL") or f"sqlite:///{tmp_path / 'farm.db'}"


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    with engine.begin() as connection:
        SQLModel.metadata.drop_all(connection)
        connection.execute(text("DROP TABLE IF EXISTS alembic_version"))
    create_tables(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's standalone S3 server on a free port, and the AWS variables pointing at it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    aws = {
        "AWS_ACCESS_KEY_ID": "renderfarm-test",
        "AWS_SECRET_ACCESS_KEY": "renderfarm-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": url,
    }
    saved = {name: os.environ.get(name) for name in aws}
    os.environ.update(aws)
    try:
        wait_for(lambda: _answers(port), 30, "moto's S3 server to listen")
        yield url
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        stop_process(server, grace=5.0)


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A new bucket on the test's S3 server; its ``s3://`` URL with a prefix."""
    import boto3

    name = f"farm-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return f"s3://{name}/renderfarm"


@pytest.fixture
def storage_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if getattr(request, "param", "folder") == "s3":
        return str(request.getfixturevalue("s3_bucket"))
    return str(tmp_path / "storage")


both_storages = pytest.mark.parametrize("storage_location", ["folder", "s3"], indirect=True)


@pytest.fixture
def settings(tmp_path: Path, database_url: str, redis_url: str, storage_location: str) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path,
        database_url=database_url,
        broker_url=redis_url,
        storage=storage_location,
        tick_seconds=0.2,
        heartbeat_seconds=0.5,
        node_timeout=5.0,
        redispatch_after=2.0,
        leader_ttl=2.0,
        retry_base_seconds=0.5,
    )


@pytest.fixture
def studio(engine: Engine, settings: Settings) -> tuple[StudioService, int]:
    """A studio of this test's farm: the service to act for it, and its id."""
    service = StudioService(engine, settings)
    created, _key = service.create_studio("test-studio")
    assert created.id is not None
    return service, created.id


def farm_env(settings: Settings) -> dict[str, str]:
    """The environment a farm process needs to share this test's farm."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RENDERFARM_")}
    env.update(
        RENDERFARM_BROKER_URL=settings.effective_broker_url,
        RENDERFARM_DATABASE_URL=settings.effective_database_url,
        RENDERFARM_STORAGE=settings.storage_url or str(settings.storage_root),
        RENDERFARM_DATA_DIR=str(settings.data_dir),
        RENDERFARM_TICK_SECONDS=str(settings.tick_seconds),
        RENDERFARM_HEARTBEAT_SECONDS=str(settings.heartbeat_seconds),
        RENDERFARM_NODE_TIMEOUT=str(settings.node_timeout),
        RENDERFARM_REDISPATCH_AFTER=str(settings.redispatch_after),
        RENDERFARM_LEADER_TTL=str(settings.leader_ttl),
        RENDERFARM_RETRY_BASE_SECONDS=str(settings.retry_base_seconds),
        RENDERFARM_DRAIN_SECONDS=str(settings.drain_seconds),
        RENDERFARM_DB_POOL_SIZE=str(settings.db_pool_size),
        RENDERFARM_DB_MAX_OVERFLOW=str(settings.db_max_overflow),
    )
    return env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def renderers_running(job_id: int | None = None) -> list[psutil.Process]:
    """Built-in renderer processes alive on this machine (of one job, if given)."""
    marker = f"jobs/{job_id}/frames" if job_id is not None else ""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "workers.renderers.builtin" in cmdline and marker in cmdline:
            found.append(process)
    return found


class Processes:
    """Farm processes started by a test, each stopped (its whole group) at teardown."""

    def __init__(self, settings: Settings, logs: Path) -> None:
        self.settings = settings
        self.logs = logs
        self.started: dict[str, subprocess.Popen[bytes]] = {}
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, label: str, *args: str) -> subprocess.Popen[bytes]:
        renderfarm = Path(sys.executable).with_name("renderfarm")
        command = (
            [str(renderfarm)]
            if renderfarm.exists()
            else [sys.executable, "-m", "scheduler.launch.cli"]
        )
        with open(self.logs / f"{label}.log", "ab") as log:
            child = subprocess.Popen(
                [*command, *args],
                env=farm_env(self.settings),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.settings.data_dir,
            )
        self.started[label] = child
        return child

    def worker(self, name: str, slots: int = 1, pool: str = "cpu") -> subprocess.Popen[bytes]:
        return self.start(name, "worker", "--pool", pool, "--slots", str(slots), "--name", name)

    def log(self, label: str) -> str:
        return (self.logs / f"{label}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for child in self.started.values():
            stop_process(child, grace=5.0)


@pytest.fixture
def processes(settings: Settings, tmp_path: Path, broker: redis.Redis) -> Iterator[Processes]:
    """Farm processes on a flushed Redis: no event of an earlier test reaches them."""
    started = Processes(settings, tmp_path / "logs")
    try:
        yield started
    finally:
        started.stop_all()
