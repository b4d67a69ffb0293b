"""The Kubernetes deployment (deploy/kustomization.yaml, examples/kubernetes-trial),
validated without a cluster: rendered by kubectl's kustomize, every object against the
Kubernetes schemas (strict: a misspelt field fails), KEDA's ScaledObjects against KEDA's
CRD, and what schemas cannot see: references that resolve, the autoscaler reading
metrics the farm exports, a grace period longer than the nodes' drain."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from sqlalchemy.engine import Engine

from api.metrics import FarmCollector
from scheduler.settings import Settings
from scheduler.usecases.jobs import StudioService
from scheduler.usecases.submissions import JobRequest

ROOT = Path(__file__).resolve().parents[2]
LAYOUTS = {"managed": ROOT / "deploy", "trial": ROOT / "examples" / "kubernetes-trial"}
KUBERNETES_VERSIONS = ("1.30.0", "1.34.0")  # the oldest and a recent one we stand by
KEDA_CRD = ROOT / "tests" / "schemas" / "keda.sh_scaledobjects.yaml"


def render(layout: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        if os.environ.get("RENDERFARM_REQUIRE_KUBECTL"):
            pytest.fail("kubectl (its kustomize renders deploy/) is not installed")
        pytest.skip("no kubectl to render the kustomization")
    out = subprocess.run(
        [kubectl, "kustomize", str(layout)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(params=sorted(LAYOUTS), scope="module")
def objects(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(LAYOUTS[request.param])


def named(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def keda_schema() -> dict[str, Any]:
    crd = yaml.safe_load(KEDA_CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return dict(version["schema"]["openAPIV3Schema"])


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_is_valid_for_kubernetes_and_keda(
    objects: list[dict[str, Any]], version: str
) -> None:
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ScaledObject"} <= kinds
    for thing in objects:
        where = f"{thing['kind']} {thing['metadata']['name']}"
        if thing["apiVersion"].startswith("keda.sh/"):
            try:
                jsonschema.validate(thing, keda_schema())
            except jsonschema.ValidationError as error:
                pytest.fail(f"{where}: {error.message} at {list(error.absolute_path)}")
            continue
        try:
            kubernetes_validate.validate(thing, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{where} (Kubernetes {version}): {error.message}")


def test_the_validation_fails_on_a_misspelt_field() -> None:
    """The checks above can fail: a typo in a Deployment, a ScaledObject without target."""
    deployment = next(o for o in render(LAYOUTS["managed"]) if o["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)
    scaled = next(o for o in render(LAYOUTS["managed"]) if o["kind"] == "ScaledObject")
    del scaled["spec"]["scaleTargetRef"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, keda_schema())


def test_every_reference_resolves(objects: list[dict[str, Any]]) -> None:
    config_maps, secrets = named(objects, "ConfigMap"), named(objects, "Secret")
    deployments = named(objects, "Deployment")
    accounts = named(objects, "ServiceAccount")
    for name, deployment in {**deployments, **named(objects, "StatefulSet")}.items():
        spec = deployment["spec"]["template"]["spec"]
        assert spec.get("serviceAccountName", "default") in {*accounts, "default"}, name
        for container in spec["containers"]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in config_maps, name
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets, name
    for scaled in named(objects, "ScaledObject").values():
        assert scaled["spec"]["scaleTargetRef"]["name"] in deployments
    for hpa in named(objects, "HorizontalPodAutoscaler").values():
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
    for service in named(objects, "Service").values():
        selector = service["spec"]["selector"]
        assert any(
            selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
            for d in [*deployments.values(), *named(objects, "StatefulSet").values()]
        ), service["metadata"]["name"]


def test_render_nodes_see_no_database_and_drain_within_their_grace(
    objects: list[dict[str, Any]],
) -> None:
    settings = next(
        c for c in named(objects, "ConfigMap").values() if "RENDERFARM_DRAIN_SECONDS" in c["data"]
    )
    drain = float(settings["data"]["RENDERFARM_DRAIN_SECONDS"])
    workers = [d for n, d in named(objects, "Deployment").items() if "worker" in n]
    assert workers
    for worker in workers:
        pod = worker["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] >= drain + 10  # time to say "left"
        # Only the init container holds a token for the cluster's API; the renderers
        # the worker runs are studios' code.
        assert pod["automountServiceAccountToken"] is False
        (init,) = pod["initContainers"]
        token_volumes = {
            v["name"] for v in pod["volumes"] if "serviceAccountToken" in str(v.get("projected"))
        }
        assert {m["name"] for m in init["volumeMounts"]} & token_volumes
        (container,) = pod["containers"]
        assert not {m["name"] for m in container["volumeMounts"]} & token_volumes
        secrets = [s["secretRef"]["name"] for s in container["envFrom"] if "secretRef" in s]
        for name in secrets:
            keys = set(named(objects, "Secret")[name]["data"])
            assert "RENDERFARM_DATABASE_URL" not in keys and "AWS_SECRET_ACCESS_KEY" not in keys


@pytest.fixture
def farm_metrics(engine: Engine, settings: Settings) -> Iterator[set[str]]:
    """The names the API's /metrics exports for a farm with work in a pool."""
    service = StudioService(engine, settings)
    studio, _ = service.create_studio("k8s")
    assert studio.id is not None
    request = {"name": "s", "frames": "1-4", "renderer": {"kind": "noop"}}
    service.submit_job(studio.id, JobRequest.model_validate(request))
    yield {family.name for family in FarmCollector(engine, max_age=0).collect()}


def test_what_autoscalers_size_has_no_replicas_to_reset(objects: list[dict[str, Any]]) -> None:
    """A Deployment an HPA or KEDA sizes must not say how many: each apply would reset
    them (every render node drained and killed, until the autoscaler scales up again)."""
    scaled = {o["spec"]["scaleTargetRef"]["name"] for o in objects
              if o["kind"] in ("ScaledObject", "HorizontalPodAutoscaler")}  # fmt: skip
    assert scaled
    for name in scaled:
        assert "replicas" not in named(objects, "Deployment")[name]["spec"], name


def test_the_autoscaler_reads_what_the_farm_exports(
    farm_metrics: set[str],
) -> None:
    for layout in LAYOUTS.values():
        for scaled in named(render(layout), "ScaledObject").values():
            triggers = scaled["spec"]["triggers"]
            assert {t["type"] for t in triggers} == {"prometheus"}
            for trigger in triggers:
                query = trigger["metadata"]["query"]
                assert query.startswith("max("), query  # every API replica says the same
                metrics = set(re.findall(r"renderfarm_[a-z_]+", query))
                assert metrics and metrics <= farm_metrics, query
                assert "celery" not in query and "queue" not in query  # the farm's demand
            pool = scaled["spec"]["scaleTargetRef"]["name"].removeprefix("renderfarm-worker-")
            assert all(f'pool="{pool}"' in t["metadata"]["query"] for t in triggers)
            assert scaled["spec"]["minReplicaCount"] == 0


def test_the_clusters_prometheus_configuration_loads(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("RENDERFARM_REQUIRE_PROMETHEUS"):
            pytest.fail("promtool is not installed")
        pytest.skip("no promtool")
    # Debian's Prometheus is built without Kubernetes service discovery: promtool checks
    # the rest (relabelling, rules) with the discovery swapped for a static target.
    config = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"renderfarm-api", "renderfarm-scheduler", "renderfarm-worker"}
    assert "kubernetes_sd_configs" not in jobs["renderfarm-api"]  # once, by its Service
    for job in jobs.values():
        if "kubernetes_sd_configs" in job:
            assert job.pop("kubernetes_sd_configs")[0]["role"] == "pod"
            job["static_configs"] = [{"targets": ["pod:9101"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    shutil.copy(ROOT / "deploy" / "prometheus" / "alerts.yml", tmp_path)
    out = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
