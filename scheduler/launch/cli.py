"""The ``renderfarm`` command: run the farm's processes, manage studios, try the demo.

    renderfarm demo                      the embedded farm renders a sample job, then stops
    renderfarm up                        the embedded farm, until Ctrl-C
    renderfarm api [--host H --port P]   the REST API
    renderfarm scheduler                 the dispatch loop
    renderfarm worker --pool cpu --slots 2 [--name NODE] [--tag T]... [--region R] [--events]
                      [--blender PATH]   Blender: PATH, else on PATH, else the bpy module
                      [--sandbox MODE]   renderers in bubblewrap: auto, bwrap (required), off
                      [--run-as USER,..] OpenJD templates' commands as unprivileged users
    renderfarm studio create NAME        prints a new studio's API key
    renderfarm studio weight|terms ...   fair share: weights, guaranteed and burst slots
    renderfarm studio scripts NAME --allow|--forbid   scripts inside its scenes may run
    renderfarm studio quota NAME [--jobs N] [--frames N] [--rate R]   its bounds (429 past them)
    renderfarm studio list               every studio, its weight, scene scripts and quota
    renderfarm limit set NAME N          a farm-wide limit (licences) jobs can name
    renderfarm region set NAME ...       a region's PUE, electricity price, grid carbon
    renderfarm region link A B ...       the network between two regions (bandwidth, price)
    renderfarm assets collect            delete stored contents nothing names any more
    renderfarm nodes                     the render nodes, with their host names

For studios, over the REST API: renderfarm login, submit SCENE.blend, jobs, watch, download
and cancel (each with --help).

Settings come from ``RENDERFARM_*`` variables or a ``.env`` file (see README); the
command's own help (``HELP``) is what a user reads.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from scheduler.core.bounds import COUNT_MAX
from scheduler.launch import studio as studio_commands
from scheduler.settings import Settings

if TYPE_CHECKING:
    from scheduler.usecases.audit import Actor
    from scheduler.usecases.jobs import StudioService
    from scheduler.usecases.operators import OperatorService

HELP = """A render farm for film studios: run it, operate it, send it work.

Try it: renderfarm demo. Settings come from RENDERFARM_* variables or a .env
file in the working folder (the README lists them); each command has --help."""
RUN, OPERATE = "Run the farm", "Operate the farm"

app = typer.Typer(help=HELP, no_args_is_help=True, add_completion=False)
studio_app = typer.Typer(help="Manage studios and their API keys.", no_args_is_help=True)
app.add_typer(studio_app, name="studio", rich_help_panel=OPERATE)
limit_app = typer.Typer(help="Named farm-wide limits, such as licences.", no_args_is_help=True)
app.add_typer(limit_app, name="limit", rich_help_panel=OPERATE)
region_app = typer.Typer(
    help="Regions: PUE, electricity price and grid carbon where nodes stand.",
    no_args_is_help=True,
)
app.add_typer(region_app, name="region", rich_help_panel=OPERATE)
assets_app = typer.Typer(help="Studios' stored scenes and files.", no_args_is_help=True)
app.add_typer(assets_app, name="assets", rich_help_panel=OPERATE)
operator_app = typer.Typer(help="Operators and their keys for the admin API.", no_args_is_help=True)
app.add_typer(operator_app, name="operator", rich_help_panel=OPERATE)
node_app = typer.Typer(help="Drain, disable or enable a render node.", no_args_is_help=True)
app.add_typer(node_app, name="node", rich_help_panel=OPERATE)
for command in studio_commands.COMMANDS:  # the studio's commands, over the REST API
    app.command(rich_help_panel="Studios")(command)
console = Console()


def _logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Alembic logs each migration with its whole docstring: the revision numbers say it
    logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)


@app.command(rich_help_panel=RUN)
def api(
    host: Annotated[str | None, typer.Option(help="address to listen on")] = None,
    port: Annotated[int | None, typer.Option(help="port to listen on")] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, max=64, help="processes serving the port [RENDERFARM_API_WORKERS: 1]"),
    ] = None,
) -> None:
    """Serve the REST API (and /metrics, /docs)."""
    import uvicorn

    from api.app import create_app
    from scheduler.db import create_tables, farm_engine

    settings = Settings()
    _logging()
    where: dict[str, Any] = {
        "host": host or settings.api_host,
        "port": port or settings.api_port,
        "log_level": "info",
    }
    processes = workers or settings.api_workers
    if processes == 1:
        uvicorn.run(create_app(settings), **where)
        return
    # The schema is brought up to date once, here; each worker then builds the app
    # from the same environment (its own connections, caches and /metrics reads).
    engine = farm_engine(settings, "renderfarm-api")
    create_tables(engine)
    engine.dispose()  # the workers open their own
    uvicorn.run("api.app:from_environment", factory=True, workers=processes, **where)


@app.command(rich_help_panel=RUN)
def scheduler(
    metrics_port: Annotated[
        int | None, typer.Option(help="serve the scheduler's own metrics on this port")
    ] = None,
) -> None:
    """Run the dispatch loop: ingest node events, dispatch chunks, reconcile."""
    from prometheus_client import start_http_server

    from scheduler.dispatch.loop import run_scheduler

    _logging()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if metrics_port:
        start_http_server(metrics_port)
    run_scheduler(Settings(), stop)


@app.command(rich_help_panel=RUN)
def worker(
    pool: Annotated[str, typer.Option(help="the pool this node renders for")] = "cpu",
    slots: Annotated[int, typer.Option(min=1, help="chunks rendered at once")] = 1,
    name: Annotated[str | None, typer.Option(help="node name; default: the host name")] = None,
    tag: Annotated[
        list[str] | None, typer.Option(help="a tag jobs can require (repeatable)")
    ] = None,
    attr: Annotated[
        list[str] | None,
        typer.Option(
            help="an OpenJD attribute the node has, NAME=VALUE (repeatable; e.g. "
            "attr.studio.software=houdini); OS family and CPU architecture are detected"
        ),
    ] = None,
    amount: Annotated[
        list[str] | None,
        typer.Option(
            help="an OpenJD amount the node has, NAME=N (repeatable; e.g. "
            "amount.studio.licences=2); vCPUs, memory, GPUs and GPU memory are detected"
        ),
    ] = None,
    gpus: Annotated[
        int | None,
        typer.Option(min=0, help="GPUs this node offers to jobs; default: what NVML finds"),
    ] = None,
    region: Annotated[
        str | None, typer.Option(help="where the node stands (default: RENDERFARM_REGION)")
    ] = None,
    energy_meter: Annotated[
        str | None, typer.Option(help="auto, rapl, model or off (default: auto)")
    ] = None,
    idle_watts: Annotated[
        float | None, typer.Option(min=0, help="the node's IT power at idle, for the model")
    ] = None,
    max_watts: Annotated[
        float | None, typer.Option(min=0, help="the node's IT power at full load, for the model")
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="serve the node's own metrics on this port")
    ] = None,
    blender: Annotated[
        str | None,
        typer.Option(help="the blender executable (default: on PATH, else the bpy module)"),
    ] = None,
    sandbox: Annotated[
        str | None,
        typer.Option(
            help="renderers in a bubblewrap sandbox: auto (where bwrap runs), bwrap "
            "(required) or off (default: RENDERFARM_SANDBOX, else auto)"
        ),
    ] = None,
    run_as: Annotated[
        str | None,
        typer.Option(
            "--run-as",
            help="run OpenJD templates' commands as this unprivileged user, through sudo; "
            "USER,USER,... gives each session running at once a user of its own, so that "
            "they cannot see each other (default: RENDERFARM_RUN_AS, else the node's user)",
        ),
    ] = None,
    loglevel: Annotated[str, typer.Option(help="Celery log level")] = "INFO",
    events: Annotated[
        bool,
        typer.Option(
            "--events",
            envvar="RENDERFARM_WORKER_EVENTS",
            help="send Celery task events, for Flower (they cost throughput)",
        ),
    ] = False,
) -> None:
    """Run a render node: a Celery worker on its own queue (node.<name>)."""
    from prometheus_client import start_http_server

    from workers.job_user import RunAsUnavailable
    from workers.meters import MeterUnavailable, count_gpus
    from workers.metrics import WORKER_REGISTRY
    from workers.node import NodeConfig, operator_capabilities, start_worker, with_capabilities
    from workers.renderers.blender import BlenderUnavailable
    from workers.sandbox import SandboxUnavailable

    _logging(loglevel)
    overrides = {
        key: value
        for key, value in (
            ("region", region),
            ("energy_meter", energy_meter),
            ("idle_watts", idle_watts),
            ("max_watts", max_watts),
            ("blender", blender),
            ("sandbox", sandbox),
            ("run_as", run_as),
        )
        if value is not None
    }
    settings = Settings(**overrides)  # type: ignore[arg-type]
    tags = list(tag or [])
    if settings.node_labels:  # its machine's labels say where it stands, what it has
        from workers.kubernetes import NodeLabelsUnavailable, read_labels, region_and_tags

        try:
            labelled, labelled_tags = region_and_tags(read_labels(settings.node_labels))
        except NodeLabelsUnavailable as error:
            console.print(f"[red]the machine's labels: {error}[/red]")
            raise typer.Exit(2) from None
        if labelled and region is None:
            settings = settings.model_copy(update={"region": labelled})
        tags += [t for t in labelled_tags if t not in tags]
    try:
        node = NodeConfig(
            name=name or socket.gethostname().split(".")[0],
            pool=pool,
            slots=slots,
            tags=tags,
            gpus=gpus if gpus is not None else count_gpus(),
            region=settings.region,
        )
        node = with_capabilities(node, *operator_capabilities(attr or [], amount or []))
    except ValueError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    if metrics_port:
        start_http_server(metrics_port, registry=WORKER_REGISTRY)
    try:
        start_worker(settings, node, loglevel, events)
    except MeterUnavailable as error:  # --energy-meter rapl on a node without it
        console.print(f"[red]energy meter {settings.energy_meter}: {error}[/red]")
        raise typer.Exit(2) from None
    except BlenderUnavailable as error:  # --blender PATH that does not run
        console.print(f"[red]blender: {error}[/red]")
        raise typer.Exit(2) from None
    except SandboxUnavailable as error:  # --sandbox bwrap on a node where it does not run
        console.print(f"[red]sandbox: {error}[/red]")
        raise typer.Exit(2) from None
    except RunAsUnavailable as error:  # --run-as USER that this node cannot run as
        console.print(f"[red]run as {settings.run_as}: {error}[/red]")
        raise typer.Exit(2) from None


@contextlib.contextmanager
def _reported() -> Iterator[None]:
    """A domain error ends the command with its message and exit status 1."""
    from scheduler.errors import RenderfarmError

    try:
        yield
    except RenderfarmError as error:
        say_problem(str(error))
        raise typer.Exit(1) from None


def say_problem(line: str) -> None:
    """A problem, in red, as written: no markup read into it, no wrapping."""
    console.print(line, style="red", markup=False, highlight=False, soft_wrap=True)


def _me() -> Actor:
    """The operator at this terminal, as the audit log names them."""
    from scheduler.usecases.audit import Actor

    return Actor.command_line()


def _operators(service: StudioService) -> OperatorService:
    from scheduler.usecases.jobs import scheduler_bell
    from scheduler.usecases.operators import OperatorService

    return OperatorService(service.engine, wake=scheduler_bell(service.settings))


def _studio_service() -> StudioService:
    from scheduler.db import create_tables, farm_engine
    from scheduler.launch.problems import existing_farm
    from scheduler.usecases.jobs import StudioService

    settings = Settings()
    existing_farm(settings)
    engine = farm_engine(settings, "renderfarm-cli")
    create_tables(engine)
    return StudioService(engine, settings)


@studio_app.command("create")
def studio_create(
    name: str,
    weight: Annotated[float, typer.Option(min=0.001, help="fair-share weight")] = 1.0,
    scene_scripts: Annotated[
        bool,
        typer.Option(
            "--allow-scene-scripts/--no-scene-scripts",
            help="whether its jobs may run the scripts inside their scenes",
        ),
    ] = False,
    templates: Annotated[
        bool | None,
        typer.Option(
            "--allow-templates/--no-templates",
            help="whether it may submit OpenJD job templates (default: "
            "RENDERFARM_NEW_STUDIO_TEMPLATES; else yes on the embedded SQLite, no on a server)",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Create a studio and print its API key (shown once)."""
    with _reported():
        service = _studio_service()
        _studio, key = service.create_studio(name, weight, scene_scripts, templates, _me())
    typer.echo(key)
    if scene_scripts:
        _warn_if_scripts_off(service.settings)


@studio_app.command("scripts")
def studio_scripts(
    name: str,
    allow: Annotated[
        bool,
        typer.Option(
            "--allow/--forbid", help="let the studio's jobs run the scripts inside their scenes"
        ),
    ],
) -> None:
    """Allow or forbid the scripts inside a studio's scenes (for jobs that ask for them:
    renderer.allow_scripts). It applies to jobs submitted from now on: jobs accepted
    before keep what they asked for (cancel them to stop their scripts)."""
    with _reported():
        service = _studio_service()
        studio = service.set_scene_scripts(name, allow, _me())
    typer.echo(f"{studio.name}: scene scripts {_allowed(studio.allow_scene_scripts)}")
    if allow:
        _warn_if_scripts_off(service.settings)


@studio_app.command("region")
def studio_region(
    name: str,
    region: Annotated[
        str | None, typer.Argument(help="a region the farm knows; none given: forget it")
    ] = None,
) -> None:
    """Name where a studio's own machines would render: its bills then say what the
    farm's placement saved against rendering there at once."""
    with _reported():
        studio = _studio_service().set_home_region(name, region, _me())
    typer.echo(f"{studio.name}: home region {studio.home_region or 'none'}")


@studio_app.command("templates")
def studio_templates(
    name: str,
    allow: Annotated[
        bool,
        typer.Option("--allow/--forbid", help="let the studio submit OpenJD job templates"),
    ],
) -> None:
    """Allow or forbid a studio to submit OpenJD job templates, whose commands the nodes
    run (as the user of their --run-as, where given). Templates accepted before keep
    running (cancel them to stop them)."""
    with _reported():
        studio = _studio_service().set_templates(name, allow, _me())
    typer.echo(f"{studio.name}: templates {_allowed(studio.allow_templates)}")


UNFINISHED_HELP = "unfinished jobs at once (0: no bound)"
QUEUED_HELP = "frames waiting for a node at once (0: no bound)"
RATE_HELP = "API requests per second (0: no bound)"


@studio_app.command("quota")
def studio_quota(
    name: str,
    jobs: Annotated[int, typer.Option(min=0, max=COUNT_MAX, help=UNFINISHED_HELP)] = 0,
    frames: Annotated[int, typer.Option(min=0, max=COUNT_MAX, help=QUEUED_HELP)] = 0,
    rate: Annotated[int, typer.Option(min=0, max=COUNT_MAX, help=RATE_HELP)] = 0,
) -> None:
    """Bound what a studio may ask: past a bound its submissions (or requests) get
    429 with Retry-After. Each bound not given is removed."""
    with _reported():
        studio = _studio_service().set_quota(
            name, jobs or None, frames or None, rate or None, _me()
        )
    typer.echo(f"{studio.name}: {_quota(studio)}")


def _quota(studio: Any) -> str:
    bounds = [
        f"{studio.max_queued_jobs} unfinished jobs" if studio.max_queued_jobs else "",
        f"{studio.max_queued_frames} queued frames" if studio.max_queued_frames else "",
        f"{studio.requests_per_second} requests/s" if studio.requests_per_second else "",
    ]
    return "at most " + ", ".join(b for b in bounds if b) if any(bounds) else "no quota"


@studio_app.command("list")
def studio_list() -> None:
    """Every studio, its fair-share weight, whether its scene scripts may run and
    whether it may submit templates, and its quota."""
    service = _studio_service()
    for studio in service.list_studios():
        typer.echo(
            f"{studio.name}: weight {studio.weight:g}, "
            f"scene scripts {_allowed(studio.allow_scene_scripts)}, "
            f"templates {_allowed(studio.allow_templates)}, {_quota(studio)}"
        )
    _warn_if_scripts_off(service.settings)


def _allowed(allowed: bool) -> str:
    return "allowed" if allowed else "not allowed"


def _warn_if_scripts_off(settings: Settings) -> None:
    """The farm's switch overrides every studio's grant: say so where it is off."""
    if not settings.allow_scene_scripts:
        typer.echo(
            "note: RENDERFARM_ALLOW_SCENE_SCRIPTS is off: this farm runs no scene scripts, "
            "whatever a studio is allowed",
            err=True,
        )


@studio_app.command("key")
def studio_key(name: str) -> None:
    """Print a new API key for an existing studio."""
    with _reported():
        typer.echo(_studio_service().create_key(name, _me()))


@studio_app.command("weight")
def studio_weight(
    name: str, weight: Annotated[float, typer.Argument(help="fair-share weight, default 1")]
) -> None:
    """Set a studio's fair-share weight: slots are shared by weight while studios compete."""
    with _reported():
        studio = _studio_service().set_weight(name, weight, _me())
    typer.echo(f"{studio.name}: weight {studio.weight:g}")


@studio_app.command("terms")
def studio_terms(
    name: str,
    pool: Annotated[str, typer.Option(help="the pool the terms apply to")] = "cpu",
    minimum: Annotated[int, typer.Option("--min", min=0, help="guaranteed slots")] = 0,
    maximum: Annotated[int | None, typer.Option("--max", min=0, help="burst cap of slots")] = None,
) -> None:
    """Guarantee a studio a minimum of a pool's slots and cap its bursts."""
    with _reported():
        terms = _studio_service().set_terms(name, pool, minimum, maximum, _me())
    cap = "no cap" if terms.max_slots is None else f"at most {terms.max_slots}"
    typer.echo(f"{name} in {pool}: at least {terms.min_slots} slot(s), {cap}")


@limit_app.command("set")
def limit_set(name: str, capacity: Annotated[int, typer.Argument(min=0)]) -> None:
    """Create or change a limit: at most CAPACITY chunks naming it render at once."""
    with _reported():
        limit = _studio_service().set_limit(name, capacity, _me())
    typer.echo(f"{limit.name}: {limit.capacity}")


@limit_app.command("list")
def limit_list() -> None:
    """Every limit and its capacity."""
    for limit in _studio_service().list_limits():
        typer.echo(f"{limit.name}: {limit.capacity}")


@region_app.command("set")
def region_set(
    name: str,
    pue: Annotated[float | None, typer.Option(help="facility energy / IT energy")] = None,
    price: Annotated[float | None, typer.Option(help="electricity price per kWh")] = None,
    carbon: Annotated[float | None, typer.Option(help="grid carbon intensity, gCO2/kWh")] = None,
    source: Annotated[str | None, typer.Option(help="where the figures come from")] = None,
    tariff: Annotated[
        str | None,
        typer.Option(
            help="a time-of-use price, HOUR:PRICE steps in local hours from 0, such as "
            "0:0.25,8:1.0,11:0.6,18:1.0,22:0.25 (in place of --price; '' for flat again)"
        ),
    ] = None,
    carbon_profile: Annotated[
        str | None,
        typer.Option(
            help="grid carbon over the day, HOUR:GCO2 steps from 0 (in place of --carbon; '' "
            "for flat again)"
        ),
    ] = None,
    utc_offset: Annotated[
        float | None, typer.Option(help="the region's local time, hours from UTC (China: 8)")
    ] = None,
) -> None:
    """Create or change a region; frames already billed keep their bills."""
    service = _studio_service()
    figures = {
        "pue": pue, "price_per_kwh": price, "carbon_g_per_kwh": carbon, "source": source,
        "tariff": _steps("--tariff", tariff),
        "carbon_profile": _steps("--carbon-profile", carbon_profile),
        "utc_offset_hours": utc_offset,
    }  # fmt: skip
    with _reported():
        given = {k: v for k, v in figures.items() if v is not None}
        region = _operators(service).set_region(name, _me(), **given)
        typer.echo(_region_line(region, service.settings.currency))


@region_app.command("list")
def region_list() -> None:
    """Every region and its figures."""
    from sqlmodel import Session

    from scheduler.usecases.regions import list_regions

    service = _studio_service()
    with Session(service.engine) as session:
        for region in list_regions(session):
            typer.echo(_region_line(region, service.settings.currency))


@region_app.command("link")
def region_link(
    a: str,
    b: str,
    bandwidth_mbps: Annotated[float | None, typer.Option(help="megabits per second")] = None,
    latency_ms: Annotated[float | None, typer.Option(help="one way, milliseconds")] = None,
    price_per_gb: Annotated[float, typer.Option(help="per 10^9 bytes moved")] = 0.0,
    source: Annotated[str | None, typer.Option(help="where the figures come from")] = None,
    remove: Annotated[bool, typer.Option("--remove", help="forget the link")] = False,
) -> None:
    """Set (or --remove) the network between two regions, the same both ways: a job
    placed for cost or time pays to move its scene and frames from its studio's home
    region (renderfarm studio region) over it."""
    from scheduler.errors import InvalidRequest

    service = _studio_service()
    operators = _operators(service)
    with _reported():
        if not remove and (bandwidth_mbps is None or latency_ms is None):
            raise InvalidRequest("link", "give --bandwidth-mbps and --latency-ms (or --remove)")
        if remove:
            found = operators.remove_link(a, b, _me())
            typer.echo(f"{a} - {b}: {'forgotten' if found else 'no such link'}: near")
            return
        link = operators.set_link(
            a, b, _me(), bandwidth_mbps=bandwidth_mbps, latency_ms=latency_ms,
            price_per_gb=price_per_gb, source=source,
        )  # fmt: skip
        typer.echo(_link_line(link, service.settings.currency))


@region_app.command("links")
def region_links() -> None:
    """Every link between regions (regions with none between them are near)."""
    from sqlmodel import Session

    from scheduler.usecases.regions import list_links

    service = _studio_service()
    with Session(service.engine) as session:
        for link in list_links(session):
            typer.echo(_link_line(link, service.settings.currency))


def _link_line(link: Any, currency: str) -> str:
    return (
        f"{link.region_a} - {link.region_b}: {link.bandwidth_mbps:g} Mbit/s, "
        f"{link.latency_ms:g} ms, {link.price_per_gb:g} {currency}/GB "
        f"({link.source or 'no source given'})"
    )


@assets_app.command("collect")
def assets_collect() -> None:
    """Forget contents no manifest of their studio names, sent longer than
    RENDERFARM_BLOB_RETENTION_SECONDS ago, and delete those no studio keeps; forget
    expired idempotency keys (run it from cron, or a Kubernetes CronJob, daily)."""
    from scheduler.usecases.assets import AssetService
    from scheduler.usecases.blobstore import BlobStore, open_storage
    from scheduler.usecases.idempotency import IdempotencyKeys

    service = _studio_service()
    settings = service.settings
    assets = AssetService(service.engine, settings, BlobStore(open_storage(settings)))
    collected = assets.collect_garbage()
    keys = IdempotencyKeys(service.engine).collect()
    typer.echo(
        f"{collected.studio_contents} studio content(s) released; "
        f"{collected.blobs} content(s), {collected.bytes} bytes, deleted; "
        f"{collected.spooled} abandoned upload(s) removed; {keys} expired idempotency key(s)"
    )


@app.command(rich_help_panel=OPERATE)
def nodes() -> None:
    """The render nodes as the scheduler last heard from them, with their host names.

    An operator's view: studios see the nodes over the API without them."""
    now = time.time()
    for node in _studio_service().list_nodes():
        admin = "" if node.admin == "enabled" else f" ({node.admin})"
        typer.echo(
            f"{node.name} ({node.hostname}): {node.state}{admin}, pool {node.pool}, region "
            f"{node.region}, {node.running}/{node.slots} slots busy, {node.cores} cores, "
            f"{node.gpus} GPUs, heard {now - node.last_heartbeat:.0f} s ago"
        )


def _node_action(action: str, name: str) -> None:
    with _reported():
        change = _operators(_studio_service()).set_node(name, action, _me())
    moved = f"; {change.requeued} chunk(s) sent to other nodes" if change.requeued else ""
    typer.echo(f"{change.node.name}: {change.node.admin}{moved}")


@node_app.command("drain")
def node_drain(name: str) -> None:
    """The node finishes the chunks it has and takes no new one."""
    _node_action("drain", name)


@node_app.command("disable")
def node_disable(name: str) -> None:
    """The node takes no new chunk; the ones it has go to other nodes at once."""
    _node_action("disable", name)


@node_app.command("enable")
def node_enable(name: str) -> None:
    """The node takes chunks again."""
    _node_action("enable", name)


@operator_app.command("create")
def operator_create(name: str) -> None:
    """Create an operator and print its key for the admin API (shown once)."""
    with _reported():
        _operator, key = _operators(_studio_service()).create_operator(name, _me())
    typer.echo(key)


@operator_app.command("key")
def operator_key(name: str) -> None:
    """Print a new key for the operator (its others keep working until revoked)."""
    with _reported():
        typer.echo(_operators(_studio_service()).create_key(name, _me()))


@operator_app.command("list")
def operator_list() -> None:
    """Every operator and its keys (their first characters)."""
    for operator, keys in _operators(_studio_service()).list_operators():
        shown = ", ".join(k.prefix + (" (revoked)" if k.revoked_at else "") for k in keys)
        typer.echo(f"{operator.name}: {shown or 'no key'}")


@operator_app.command("revoke-key")
def operator_revoke_key(prefix: str) -> None:
    """Revoke the operator key that starts with PREFIX (operator list shows them)."""
    with _reported():
        key = _operators(_studio_service()).revoke_key(prefix, _me())
    typer.echo(f"{key.prefix}: revoked")


@studio_app.command("keys")
def studio_keys(name: str) -> None:
    """The studio's keys: their first characters, when made, whether revoked."""
    with _reported():
        keys = _studio_service().list_keys(name)
    for key in keys:
        made = dt.datetime.fromtimestamp(key.created_at).strftime("%Y-%m-%d %H:%M")
        revoked = " (revoked)" if key.revoked_at is not None else ""
        typer.echo(f"{key.prefix}: made {made}{revoked}")


@studio_app.command("revoke-key")
def studio_revoke_key(name: str, prefix: str) -> None:
    """Revoke the studio's key that starts with PREFIX (studio keys NAME shows them):
    refused from then on, within 10 s on every API process."""
    with _reported():
        key = _studio_service().revoke_key(name, prefix, _me())
    typer.echo(f"{name}: key {key.prefix} revoked")


@app.command(rich_help_panel=OPERATE)
def audit(
    actor: Annotated[str | None, typer.Option(help="only this actor's (cli:USER, a name)")] = None,
    action: Annotated[
        str | None, typer.Option(help="only this action (job.cancel), or a prefix (job.)")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
) -> None:
    """Who changed what, when: operators' actions and studios' on their jobs."""
    from sqlmodel import Session

    from scheduler.usecases.audit import read_audit

    service = _studio_service()
    with Session(service.engine) as session:
        rows, total = read_audit(session, limit, 0, actor, action)
    for row in rows:
        at = dt.datetime.fromtimestamp(row.at).strftime("%Y-%m-%d %H:%M:%S")
        detail = json.dumps(row.detail, ensure_ascii=False) if row.detail else ""
        typer.echo(f"{at} {row.actor_kind} {row.actor}: {row.action} {row.target} {detail}")
    if total > len(rows):
        typer.echo(f"{len(rows)} of {total} entries shown")


def _steps(option: str, text: str | None) -> list[tuple[float, float]] | None:
    """``HOUR:VALUE,HOUR:VALUE`` as steps; None where not given, [] for ''."""
    from scheduler.errors import InvalidRequest

    if text is None:
        return None
    steps = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        hour, colon, value = part.partition(":")
        try:
            steps.append((float(hour), float(value)))
        except ValueError:
            raise InvalidRequest(option, f"{part!r} is not HOUR:VALUE") from None
        if not colon:
            raise InvalidRequest(option, f"{part!r} is not HOUR:VALUE")
    return steps


def _region_line(region: Any, currency: str) -> str:
    price = _curve_text(region.tariff) or f"{region.price_per_kwh:g}"
    carbon = _curve_text(region.carbon_profile) or f"{region.carbon_g_per_kwh:g}"
    return (
        f"{region.name}: PUE {region.pue:g}, {price} {currency}/kWh, {carbon} gCO2/kWh, "
        f"UTC{region.utc_offset_hours:+g} ({region.source or 'no source given'})"
    )


def _curve_text(steps: list[list[float]] | None) -> str:
    return ",".join(f"{h:g}h:{v:g}" for h, v in steps) if steps else ""


@app.command(rich_help_panel=OPERATE)
def plan(
    workload: Annotated[
        Path, typer.Option(exists=True, dir_okay=False, help="a CSV of shots (see the README)")
    ],
    farm: Annotated[
        Path, typer.Option(exists=True, dir_okay=False, help="regions and their slots (YAML)")
    ],
    policy: Annotated[
        list[str] | None,
        typer.Option(help="fastest, cheapest or greenest (repeatable; default: all three)"),
    ] = None,
    start: Annotated[
        str | None,
        typer.Option(help="when the plan starts, ISO 8601 with a time zone (default: now)"),
    ] = None,
    chart: Annotated[
        Path | None, typer.Option(dir_okay=False, help="a PNG or SVG of busy slots and carbon")
    ] = None,
    overhead: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="seconds a slot waits between frames: the dispatch and its event's return "
            "(default: RENDERFARM_TICK_SECONDS, about what the farm takes)",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="the reports as JSON")] = False,
) -> None:
    """Simulate a workload under each placement policy, side by side; nothing renders.

    Makespan, utilisation, energy, cost, CO2, data moved and deadlines missed."""
    import datetime as dt
    import json

    from scheduler.core.planner import compare
    from scheduler.core.siting import POLICIES
    from scheduler.usecases import plans

    names = policy or list(POLICIES)
    with _reported():
        unknown = [name for name in names if name not in POLICIES]
        if unknown:
            raise _invalid("policy", f"unknown {unknown}; known: {list(POLICIES)}")
        try:
            began = dt.datetime.fromisoformat(start) if start else dt.datetime.now(dt.UTC)
        except ValueError as error:
            raise _invalid("start", str(error)) from None
        if began.tzinfo is None:
            raise _invalid("start", "give a time zone, such as +08:00")
        shots = plans.read_workload(workload.read_text(encoding="utf-8"))
        regions = plans.read_farm(farm.read_text(encoding="utf-8"))
        wait = overhead if overhead is not None else Settings().tick_seconds
        reports = compare(shots, regions, names, began.timestamp(), wait)
        if chart is not None:
            plans.chart(reports, regions, began.timestamp(), str(chart))
    if as_json:
        typer.echo(json.dumps([r.as_dict() for r in reports], indent=2))
    else:
        typer.echo(plans.table(reports, Settings().currency))
    if chart is not None:
        typer.echo(f"chart: {chart}")


def _invalid(field: str, message: str) -> Exception:
    from scheduler.errors import InvalidRequest

    return InvalidRequest(field, message)


@app.command(rich_help_panel=RUN)
def up(
    workers: Annotated[int, typer.Option(min=1, help="local render nodes")] = 2,
    slots: Annotated[int, typer.Option(min=1, help="slots per node")] = 1,
    port: Annotated[int | None, typer.Option(help="API port")] = None,
) -> None:
    """Run the embedded farm (own Redis, SQLite, local workers) until Ctrl-C."""
    from scheduler.launch.embedded import LocalFarm
    from scheduler.launch.problems import check_broker, check_port

    _logging()
    settings = Settings()
    check_port(settings.api_host, port or settings.api_port)
    if settings.broker_url:
        check_broker(settings.broker_url)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    farm = LocalFarm(settings, workers=workers, slots=slots, api_port=port)
    with farm:
        typer.echo(f"renderfarm is up: API {farm.api_url} (docs at {farm.api_url}/docs)")
        typer.echo(f"logs in {farm.logs}; storage in {settings.storage_root}")
        typer.echo("create a studio key, from any folder, with:")
        typer.echo(f"  {_this_farm(settings)} renderfarm studio create NAME")
        typer.echo("Ctrl-C stops.")
        while not stop.wait(1.0):
            farm.check_children()
        console.print("stopping ...")


@app.command(rich_help_panel=RUN)
def demo(
    frames: Annotated[str, typer.Option(help="frames to render")] = "1-48",
    width: Annotated[int, typer.Option(min=16)] = 320,
    height: Annotated[int, typer.Option(min=16)] = 180,
    samples: Annotated[int, typer.Option(min=1)] = 2,
    workers: Annotated[int, typer.Option(min=1, help="local render nodes")] = 2,
) -> None:
    """Start the embedded farm, render a sample job with the built-in renderer, stop."""
    from scheduler.core.frames import parse_frame_spec
    from scheduler.errors import InvalidRequest
    from scheduler.launch.demo import run_demo
    from scheduler.launch.problems import check_broker

    _logging("WARNING")
    settings = Settings()
    try:  # said now, not after the whole farm has started
        parse_frame_spec(frames, settings.max_frames_per_job)
    except ValueError as error:
        raise InvalidRequest("--frames", str(error)) from None
    if settings.broker_url:
        check_broker(settings.broker_url)
    ok = run_demo(settings, frames, width, height, samples, workers, console)
    raise typer.Exit(0 if ok else 1)


def _this_farm(settings: Settings) -> str:
    """The variables that point a command run elsewhere at this farm."""
    import shlex

    from scheduler.db.engine import safe_url

    if settings.database_url:  # its password hidden: the operator has it
        url = safe_url(settings.database_url)
        return f"RENDERFARM_DATABASE_URL={shlex.quote(url)}"
    return f"RENDERFARM_DATA_DIR={shlex.quote(str(settings.data_dir.resolve()))}"


def main() -> None:
    """The command, with what a person can fix said in one line (exit status 2)."""
    from scheduler.launch.problems import explain

    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        app()
    except Exception as error:
        line = explain(error)
        if line is None:
            raise
        say_problem(line)
        sys.exit(2)


if __name__ == "__main__":
    main()
