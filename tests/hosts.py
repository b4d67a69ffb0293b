"""Test hosts on one machine: Linux network namespaces joined to one bridge by veth
pairs (``Network``), and a PostgreSQL cluster a test owns (``PostgresCluster``: initdb
and pg_ctl on a temporary folder, so a test may stop and start it). Distance between
hosts: tests/relay.py, a delaying TCP relay on the far host (this machine's kernel has
no ``tc netem``).

Everything is made under names of its own (a random tag) and removed at the end; no
address of these namespaces exists outside them. Needs root and iproute2 (``ip``).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from scheduler.db import NodeRow
from scheduler.db.engine import make_engine
from scheduler.settings import Settings
from scheduler.usecases.jobs import StudioService
from tests.conftest import wait_for
from workers.processes import stop_process

SUBNET = "10.77.0"  # exists only inside the namespaces a Network makes


def can_make_hosts() -> str | None:
    """Why this machine cannot make test hosts, or None if it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not shutil.which("ip"):
        return "iproute2 (ip) is not installed"
    probe = f"rf-probe-{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", probe], check=False)
    return None


def run(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")


@dataclass
class Host:
    name: str
    namespace: str
    address: str
    link: str  # the bridge's end of its veth pair, in the LAN's namespace

    def command(self, *argv: str) -> list[str]:
        """``argv`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.namespace, *argv]


@dataclass
class Network:
    """Hosts on one LAN: a bridge in a namespace of its own, each host's ``eth0`` a veth
    pair's end with ``SUBNET.N/24``."""

    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    hosts: dict[str, Host] = field(default_factory=dict)

    @property
    def lan(self) -> str:
        return f"rf-{self.tag}-lan"

    def __enter__(self) -> Network:
        run("ip", "netns", "add", self.lan)
        run("ip", "-n", self.lan, "link", "set", "lo", "up")
        run("ip", "-n", self.lan, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.lan, "link", "set", "br0", "up")
        return self

    def __exit__(self, *_: object) -> None:
        for host in self.hosts.values():
            subprocess.run(["ip", "netns", "delete", host.namespace], check=False)
        subprocess.run(["ip", "netns", "delete", self.lan], check=False)

    def add(self, name: str) -> Host:
        number = len(self.hosts) + 2
        host = Host(name, f"rf-{self.tag}-{name}", f"{SUBNET}.{number}", f"v{self.tag}{number}b")
        inside = f"v{self.tag}{number}a"  # interface names: 15 characters at most
        run("ip", "netns", "add", host.namespace)
        run("ip", "link", "add", inside, "type", "veth", "peer", "name", host.link)
        run("ip", "link", "set", inside, "netns", host.namespace)
        run("ip", "link", "set", host.link, "netns", self.lan)
        run("ip", "-n", host.namespace, "link", "set", inside, "name", "eth0")
        run("ip", "-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
        run("ip", "-n", host.namespace, "link", "set", "eth0", "up")
        run("ip", "-n", host.namespace, "link", "set", "lo", "up")
        run("ip", "-n", self.lan, "link", "set", host.link, "master", "br0")
        run("ip", "-n", self.lan, "link", "set", host.link, "up")
        self.hosts[name] = host
        return host

    def cut(self, name: str) -> None:
        """The host's link goes down (its processes live on, unreachable)."""
        run("ip", "-n", self.lan, "link", "set", self.hosts[name].link, "down")

    def mend(self, name: str) -> None:
        run("ip", "-n", self.lan, "link", "set", self.hosts[name].link, "up")


def postgres_bin(program: str) -> str | None:
    found = shutil.which(program)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{program}"))
    return candidates[-1] if candidates else None


@dataclass
class PostgresCluster:
    """A PostgreSQL cluster of the test's: its own folder, port and Unix socket, run as
    the ``postgres`` user when the test is root (PostgreSQL refuses root), inside
    ``host``'s namespace if given, listening there on ``listen``."""

    folder: Path
    port: int
    listen: str = "127.0.0.1"
    host: Host | None = None
    max_connections: int = 100

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def socket_dir(self) -> Path:
        return self.folder / "run"

    def url(self, database: str = "postgres", over: str = "socket") -> str:
        """A SQLAlchemy URL: over the Unix socket (reachable from every namespace: the
        filesystem is shared) or over TCP on ``listen``."""
        if over == "socket":
            return (
                f"postgresql+psycopg://postgres@/{database}?host={self.socket_dir}&port={self.port}"
            )
        return f"postgresql+psycopg://postgres@{self.listen}:{self.port}/{database}"

    def _as_owner(self, *argv: str) -> list[str]:
        command = list(argv)
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        if self.host is not None:
            command = self.host.command(*command)
        return command

    @classmethod
    def temporary(
        cls, port: int, listen: str = "127.0.0.1", host: Host | None = None
    ) -> PostgresCluster:
        """A cluster in a new folder outside pytest's (which only root may enter)."""
        folder = Path(tempfile.mkdtemp(prefix="renderfarm-pg-"))
        folder.chmod(0o755)
        return cls(folder, port, listen, host)

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)

    def create(self) -> PostgresCluster:
        initdb = postgres_bin("initdb")
        if initdb is None:
            raise RuntimeError("PostgreSQL's initdb is not installed")
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres")
            shutil.chown(self.socket_dir, "postgres")
        run(*self._as_owner(initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust",
                            "--no-sync"))  # fmt: skip
        with open(self.data / "pg_hba.conf", "a") as hba:  # the test's hosts, on its subnet
            hba.write(f"host all all {SUBNET}.0/24 trust\n")
        return self

    def start(self) -> None:
        pg_ctl = postgres_bin("pg_ctl")
        assert pg_ctl is not None
        options = (
            f"-p {self.port} -k {self.socket_dir} -c listen_addresses={self.listen} "
            f"-c max_connections={self.max_connections} -c fsync=off"
        )
        run(*self._as_owner(pg_ctl, "-D", str(self.data), "-o", options, "-w", "-t", "60",
                            "-l", str(self.folder / "postgres.log"), "start"))  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        pg_ctl = postgres_bin("pg_ctl")
        assert pg_ctl is not None
        with contextlib.suppress(RuntimeError):
            run(*self._as_owner(pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop"))

    def restart(self, down_seconds: float = 0.0) -> None:
        self.stop()
        time.sleep(down_seconds)
        self.start()

    def create_database(self, name: str) -> None:
        psql = postgres_bin("psql")
        assert psql is not None
        run(psql, "-h", str(self.socket_dir), "-p", str(self.port), "-U", "postgres",
            "-qc", f'CREATE DATABASE "{name}"')  # fmt: skip

    def connections(self, database: str) -> list[Sequence[str]]:
        """(application, state) of each connection to ``database`` now."""
        psql = postgres_bin("psql")
        assert psql is not None
        out = subprocess.run(
            [psql, "-h", str(self.socket_dir), "-p", str(self.port), "-U", "postgres", "-At",
             "-F", "\t", "-c", f"SELECT application_name, state FROM pg_stat_activity "
             f"WHERE datname = '{database}'"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return [line.split("\t") for line in out.stdout.splitlines() if line]


# A farm on these hosts ---------------------------------------------------------

NODE_TIMEOUT = 5.0
TOKEN = "node-token-of-the-many-hosts-test"
RENDERFARM = str(Path(sys.executable).with_name("renderfarm"))
ROOT = Path(__file__).resolve().parents[1]
ONE_WAY_SECONDS = 0.015
# The studio's client in the east: submit a job of the built-in renderer, print its id.
SUBMIT = """
import json, sys, httpx
api, key, frames, width, kind = sys.argv[1:6]
renderer = {"kind": kind}
if kind == "builtin":
    renderer.update(width=int(width), height=int(width) * 9 // 16)
job = {"name": "far", "frames": frames, "chunk_size": 1, "renderer": renderer}
answer = httpx.post(api + "/v1/jobs", json=job, headers={"Authorization": "Bearer " + key})
answer.raise_for_status()
print(json.dumps(answer.json()))
"""


READ = "import sys, urllib.request as u; print(u.urlopen(sys.argv[1], timeout=3).read())"


@dataclass
class Farm:
    network: Network
    folder: Path
    postgres: PostgresCluster
    engine: Engine
    spread: bool = True
    key: str = ""
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def core(self) -> Host:
        return self.network.hosts["core"]

    @property
    def api_url(self) -> str:
        return f"http://{self.core.address}:8000"

    def env(self, redis_at: str, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RENDERFARM_")}
        env.update(
            RENDERFARM_BROKER_URL=f"redis://{redis_at}:6379/0",
            RENDERFARM_NODE_TOKEN=TOKEN,
            RENDERFARM_TICK_SECONDS="0.2",
            RENDERFARM_HEARTBEAT_SECONDS="0.5",
            RENDERFARM_NODE_TIMEOUT=str(NODE_TIMEOUT),
            RENDERFARM_REDISPATCH_AFTER="3",
            RENDERFARM_LEADER_TTL="2",
            RENDERFARM_RETRY_BASE_SECONDS="0.5",
            RENDERFARM_ENERGY_METER="model",
            **extra,
        )
        return env

    def start(self, label: str, host: str, argv: list[str], env: dict[str, str]) -> None:
        folder = self.folder / label
        folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"{label}.log", "ab") as log:
            self.processes[label] = subprocess.Popen(
                self.network.hosts[host].command(*argv),
                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=folder,
            )  # fmt: skip

    def start_redis(self) -> None:
        argv = ["redis-server", "--bind", self.core.address, "--port", "6379",
                "--protected-mode", "no", "--save", "", "--appendonly", "no"]  # fmt: skip
        self.start("redis", "core", argv, dict(os.environ))

    def core_env(self) -> dict[str, str]:
        return self.env(
            self.core.address,
            RENDERFARM_DATABASE_URL=self.postgres.url("farm", over="tcp"),
            RENDERFARM_STORAGE=str(self.folder / "core-storage"),
            RENDERFARM_DATA_DIR=str(self.folder / "core-data"),
        )

    def start_node(self, host: str) -> None:
        own = self.folder / host  # its own folders: nothing shared with the core
        core = "127.0.0.1" if self.spread else self.core.address
        if self.spread:
            self.relay(host, 6379, 8000)  # the core's Redis and API, 15 ms away each way
        env = self.env(
            core,
            RENDERFARM_API_URL=f"http://{core}:8000",
            RENDERFARM_STORAGE=str(own / "storage"),
            RENDERFARM_DATA_DIR=str(own / "data"),
        )
        argv = [RENDERFARM, "worker", "--pool", "cpu", "--slots", "1", "--name", f"node-{host}"]
        self.start(host, host if self.spread else "core", argv, env)

    def relay(self, host: str, *ports: int) -> None:
        """The core's ``ports`` on ``host``'s loopback, delayed (tests/relay.py)."""
        pairs = [f"127.0.0.1:{port}={self.core.address}:{port}" for port in ports]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.start(f"relay-{host}", host, [sys.executable, "-m", "tests.relay",
                   str(ONE_WAY_SECONDS), *pairs], env)  # fmt: skip
        wait_for(lambda: "relaying" in self.log(f"relay-{host}"), 30, f"{host}'s relay")

    def log(self, label: str) -> str:
        return (self.folder / f"{label}.log").read_text(errors="replace")

    def east(self, *argv: str, timeout: float = 120) -> str:
        done = subprocess.run(
            self.network.hosts["east"].command(*argv),
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def submit(self, frames: str, width: int = 640, renderer: str = "builtin") -> int:
        """A job the studio submits from the east, through its relay (or directly)."""
        api = "http://127.0.0.1:8000" if self.spread else self.api_url
        job = json.loads(self.east(sys.executable, "-c", SUBMIT, api, self.key, frames,
                                   str(width), renderer))  # fmt: skip
        return int(job["id"])

    def stop(self) -> None:
        for child in reversed(list(self.processes.values())):
            stop_process(child, grace=5.0)


@contextlib.contextmanager
def host_farm(folder: Path, spread: bool = True, nodes: int = 2) -> Iterator[Farm]:
    """The farm: the API, the scheduler, Redis and PostgreSQL on "core"; the studio's
    client on "east"; ``nodes`` render nodes on hosts "west1", "west2"..., each with
    folders of its own, reaching the core 15 ms away each way (``spread``), or all on
    "core" at no distance (the same farm in one namespace, for comparison)."""
    with Network() as network:
        network.add("core")
        network.add("east")
        wests = [f"west{i + 1}" for i in range(nodes)]
        for west in wests:
            network.add(west)
        core = network.hosts["core"]
        postgres = PostgresCluster.temporary(5432, listen=core.address, host=core)
        postgres.create().start()
        postgres.create_database("farm")
        engine = make_engine(postgres.url("farm"))  # the test reads over the Unix socket
        farm = Farm(network, folder, postgres, engine, spread)
        try:
            farm.start_redis()
            farm.start("api", "core", [RENDERFARM, "api", "--host", core.address, "--port",
                                       "8000"], farm.core_env())  # fmt: skip
            wait_for(lambda: b"ready" in _get(farm, f"{farm.api_url}/readyz"), 60, "the API")
            _, farm.key = StudioService(engine, Settings(_env_file=None)).create_studio("east")  # type: ignore[call-arg]
            farm.start("scheduler", "core", [RENDERFARM, "scheduler"], farm.core_env())
            if spread:
                farm.relay("east", 8000)
            for west in wests:
                farm.start_node(west)
            wait_for(lambda: len(node_states(engine)) == nodes, 90, "the west nodes")
            yield farm
        finally:
            farm.stop()
            engine.dispose()
            postgres.remove()


def node_states(engine: Engine) -> dict[str, str]:
    with Session(engine) as session:
        return {n.name: n.state for n in session.exec(select(NodeRow))}


def _get(farm: Farm, url: str) -> bytes:
    done = subprocess.run(
        farm.core.command(sys.executable, "-c", READ, url),
        capture_output=True, check=False,
    )  # fmt: skip
    return done.stdout
