"""deploy/ against the real thing: promtool checks the configuration and the alert rules
and runs the rules' unit tests (deploy/prometheus/alerts_test.yml: each alert fires on
the series it is for, and not before), and a real Prometheus server scrapes a real farm
while it renders, then answers every query of the Grafana dashboard and every rule.

Prometheus comes from Debian's ``prometheus`` package (``apt-get install prometheus``,
which .ci/run does). Without it these tests skip, unless RENDERFARM_REQUIRE_PROMETHEUS
is set (CI sets it), where a missing server is a failure, not a skip.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml
from sqlalchemy.engine import Engine

from scheduler.settings import Settings
from tests.conftest import Processes, farm_env, free_port, wait_for
from workers.processes import stop_process

pytestmark = pytest.mark.end_to_end

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "renderfarm.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"


def tool(name: str, package: str = "prometheus") -> str:
    found = shutil.which(name)
    if found is None:
        message = f"{name} is not installed (Debian: apt-get install {package})"
        if os.environ.get("RENDERFARM_REQUIRE_PROMETHEUS"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def dashboard_queries(chosen: str = ".*") -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel, with the dashboard's
    variables ($pool, $region) as Grafana fills them in: ``chosen`` (All: ``.*``)."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"].replace("$pool", chosen).replace("$region", chosen))
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]


def alert_rules() -> list[tuple[str, str]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [(rule["alert"], rule["expr"]) for group in groups for rule in group["rules"]]


@pytest.mark.parametrize(
    "args",
    [
        ["check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
        ["check", "rules", str(ALERTS)],
        ["test", "rules", str(DEPLOY / "prometheus" / "alerts_test.yml")],
    ],
    ids=["config", "rules", "alerts fire when they should"],
)
def test_promtool_accepts_the_deploy_files(args: list[str]) -> None:
    checked = subprocess.run([tool("promtool"), *args], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


POOL_AND_REGION = (  # the dashboard's metrics that carry both labels (api/metrics.py)
    "renderfarm_frames_rendered_total", "renderfarm_frame_energy_joules",
    "renderfarm_facility_energy_joules_total", "renderfarm_energy_cost_total",
    "renderfarm_carbon_dioxide_grams_total", "renderfarm_frame_render_seconds",
    "renderfarm_node_power_watts", "renderfarm_placement_saved_",
)  # fmt: skip
POOL_ONLY = (
    "renderfarm_queue_depth", "renderfarm_nodes{", "renderfarm_attempts_failed_total",
    "renderfarm_attempt_energy_joules_total",
)  # fmt: skip


def test_the_dashboard_filters_by_pool_and_region() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert set(variables) == {"pool", "region"}
    for name, variable in variables.items():
        assert variable["includeAll"] and variable["allValue"] == ".*" and variable["multi"]
        assert variable["query"]["query"].startswith("label_values(renderfarm_")
        assert variable["query"]["query"].endswith(f", {name})")
    for title, expr in [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]:
        for selector in re.findall(r"renderfarm_[a-z_]+\{?[^}(\[]*\}?", expr):
            if selector.startswith(POOL_AND_REGION):
                assert 'pool=~"$pool"' in selector and 'region=~"$region"' in selector, title
            elif selector.startswith(POOL_ONLY):
                assert 'pool=~"$pool"' in selector, title


@pytest.mark.parametrize(
    "args",
    [
        ["check-config", str(DEPLOY / "alertmanager" / "alertmanager.yml")],
    ],
)
def test_amtool_accepts_the_alertmanager_config(args: list[str]) -> None:
    checked = subprocess.run([tool("amtool", "prometheus-alertmanager"), *args],
                             capture_output=True, text=True)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        (["severity=critical", "alertname=FarmCannotRender"], "farm-on-call,farm-operators"),
        (["severity=warning", "alertname=NodesLost"], "farm-operators"),
        (["severity=info"], "farm-operators"),
    ],
)  # fmt: skip
def test_alerts_route_to_the_operators_and_critical_ones_to_on_call(
    labels: list[str], receivers: str
) -> None:
    config = DEPLOY / "alertmanager" / "alertmanager.yml"
    routed = subprocess.run(
        [tool("amtool", "prometheus-alertmanager"), "config", "routes", "test",
         f"--config.file={config}", *labels],
        capture_output=True, text=True,
    )  # fmt: skip
    assert routed.returncode == 0 and routed.stdout.strip() == receivers, routed


def test_prometheus_sends_alerts_to_the_compose_alertmanager() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    [target] = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    compose = yaml.safe_load((DEPLOY.parent / "docker-compose.yml").read_text())
    service = compose["services"]["alertmanager"]
    assert target == "alertmanager:9093" and "9093:9093" in service["ports"]
    assert "./deploy/alertmanager:/etc/alertmanager:ro" in service["volumes"]


def test_grafana_provisioning_points_the_dashboard_at_its_datasource() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "renderfarm.yml").read_text())[
        "providers"
    ]
    compose = yaml.safe_load((DEPLOY.parent / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in mounts
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "renderfarm" and dashboard["title"] == "Render farm"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        assert panel["targets"], panel["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


class PrometheusServer:
    def __init__(self, folder: Path, targets: dict[str, list[str]]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": addresses}]}
                for job, addresses in targets.items()
            ],
        }
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = open(folder / "prometheus.log", "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [
                tool("prometheus"),
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = answer.json()
        assert answer.status_code == 200 and body["status"] == "success", (expr, body)
        return body["data"]["result"]  # type: ignore[no-any-return]

    def total(self, expr: str) -> float:
        return sum(float(r["value"][1]) for r in self.query(expr))

    def stop(self) -> None:
        stop_process(self.process, grace=5.0)
        self.log.close()


@pytest.fixture
def farm_with_metrics(
    processes: Processes, settings: Settings, engine: Engine, broker: redis.Redis
) -> Iterator[tuple[httpx.Client, dict[str, list[str]]]]:
    api, scheduler, node1, node2 = (free_port() for _ in range(4))
    processes.start("api", "api", "--host", "127.0.0.1", "--port", str(api))
    processes.start("scheduler", "scheduler", "--metrics-port", str(scheduler))
    for name, port in (("node-1", node1), ("node-2", node2)):
        processes.start(
            name, "worker", "--pool", "cpu", "--name", name, "--metrics-port", str(port)
        )
    key = subprocess.run(
        [sys.executable, "-m", "scheduler.launch.cli", "studio", "create", "studio-obs"],
        env=farm_env(settings), capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{api}", headers={"Authorization": f"Bearer {key}"}, timeout=10
    )
    wait_for(lambda: _answers(client), 60, "the API to answer")
    wait_for(lambda: len(client.get("/v1/nodes").json()) == 2, 60, "two nodes online")
    yield (
        client,
        {
            "renderfarm-api": [f"127.0.0.1:{api}"],
            "renderfarm-scheduler": [f"127.0.0.1:{scheduler}"],
            "renderfarm-worker": [f"127.0.0.1:{node1}", f"127.0.0.1:{node2}"],
        },
    )
    client.close()


def _answers(client: httpx.Client) -> bool:
    try:
        return client.get("/healthz").status_code == 200
    except httpx.HTTPError:
        return False


def test_prometheus_scrapes_the_farm_and_every_panel_and_alert_answers(
    farm_with_metrics: tuple[httpx.Client, dict[str, list[str]]], tmp_path: Path
) -> None:
    client, targets = farm_with_metrics
    prometheus = PrometheusServer(tmp_path, targets)
    try:
        wait_for(prometheus.ready, 60, "Prometheus to start")
        wait_for(lambda: prometheus.total('up{job=~"renderfarm-.*"}') == 4, 60, "all 4 targets up")
        # A first frame, scraped before the other twelve: a rate needs two samples of a
        # series, and a job that renders all its frames between two scrapes (a second
        # here) gives its new series one sample, already at its last value.
        for frames, total in (("1", 1), ("1-12", 13)):
            job = client.post(
                "/v1/jobs",
                json={
                    "name": "observed", "frames": frames,
                    "renderer": {"kind": "builtin", "width": 64, "height": 36},
                },
            ).json()  # fmt: skip
            wait_for(
                lambda job=job: client.get(f"/v1/jobs/{job['id']}").json()["state"] == "done",
                180,
                "the job to render",
            )
            wait_for(
                lambda total=total: (
                    prometheus.total("sum(renderfarm_frames_rendered_total)") == total
                ),
                30,
                f"Prometheus to scrape the {total} frames",
            )
        wait_for(
            lambda: prometheus.total("sum(renderfarm_worker_frames_rendered_total)") == 13,
            30,
            "Prometheus to scrape both nodes' frames",
        )

        answers = {(title, expr): prometheus.query(expr) for title, expr in dashboard_queries()}
        by_title = {title: result for (title, _), result in answers.items()}
        assert _positive(by_title["Frames per minute"])
        assert _positive(by_title["Energy per frame by pool and region"])
        assert _positive(by_title["Facility energy per hour"])
        assert _positive(by_title["Total CO2"])
        assert _positive(by_title["Node power"])
        assert prometheus.total("sum(renderfarm_worker_energy_joules_total)") > 0

        for _alert, expr in alert_rules():
            prometheus.query(expr)  # every rule's expression evaluates
        wait_for(lambda: _rules_evaluated(prometheus), 30, "every alert rule to be evaluated")
        firing = {
            a["labels"]["alertname"]
            for a in httpx.get(f"{prometheus.url}/api/v1/alerts").json()["data"]["alerts"]
        }
        assert not firing & {"RenderfarmNoLiveNodes", "RenderfarmComponentDown"}
    finally:
        prometheus.stop()


def _positive(result: list[dict[str, Any]]) -> bool:
    values = [float(r["value"][1]) for r in result]
    return bool(values) and all(math.isfinite(v) for v in values) and any(v > 0 for v in values)


def _rules_evaluated(prometheus: PrometheusServer) -> bool:
    groups = httpx.get(f"{prometheus.url}/api/v1/rules").json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert all(rule["health"] != "err" for rule in rules), rules
    return len(rules) == len(alert_rules()) and all(rule["health"] == "ok" for rule in rules)
