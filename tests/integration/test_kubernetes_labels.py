"""A render node on Kubernetes takes its region and tags from its machine's labels
(workers/kubernetes.py): its init container reads them from the cluster's API with the
pod's service account (here an HTTP server of the test answers as that API would) and
writes them to a file the worker reads."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from workers.kubernetes import (
    NodeLabelsUnavailable,
    cluster_api,
    machine_labels,
    main,
    read_labels,
    region_and_tags,
)

LABELS = {
    "kubernetes.io/hostname": "gz-r12-07",
    "topology.kubernetes.io/region": "cn-southwest-2",
    "renderfarm.io/region": "guizhou",
    "tag.renderfarm.io/blender": "true",
    "tag.renderfarm.io/houdini": "false",
    "tag.renderfarm.io/nvme": "True",
}


def test_the_farms_region_label_and_the_tags_set_true() -> None:
    assert region_and_tags(LABELS) == ("guizhou", ["blender", "nvme"])
    cloud_only = {k: v for k, v in LABELS.items() if k != "renderfarm.io/region"}
    assert region_and_tags(cloud_only)[0] is None  # a cloud's region is not the farm's
    assert region_and_tags({}) == (None, [])


def test_the_cluster_api_of_a_pod() -> None:
    assert cluster_api({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}) == "https://10.96.0.1:443"
    v6 = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"}
    assert cluster_api(v6) == "https://[fd00::1]:6443"
    with pytest.raises(NodeLabelsUnavailable, match="not in a Kubernetes pod"):
        cluster_api({})


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    asked: list[tuple[str, str]] = []

    class Api(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append((self.path, self.headers.get("Authorization", "")))
            if self.path != "/api/v1/nodes/gz-r12-07":
                self.send_error(404)
                return
            body = json.dumps({"kind": "Node", "metadata": {"labels": LABELS}}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # never used: no proxy
    yield f"http://127.0.0.1:{server.server_address[1]}", asked
    server.shutdown()


def test_the_labels_are_read_with_the_service_account_and_no_proxy(
    api: tuple[str, list[tuple[str, str]]], tmp_path: Path
) -> None:
    url, asked = api
    (tmp_path / "token").write_text("the-pods-token\n")
    assert machine_labels("gz-r12-07", url, tmp_path) == LABELS
    assert asked == [("/api/v1/nodes/gz-r12-07", "Bearer the-pods-token")]


def test_labels_that_cannot_be_read_say_why(
    api: tuple[str, list[tuple[str, str]]], tmp_path: Path
) -> None:
    url, _ = api
    with pytest.raises(NodeLabelsUnavailable, match="no service account"):
        machine_labels("gz-r12-07", url, tmp_path)  # no token mounted
    (tmp_path / "token").write_text("t")
    with pytest.raises(NodeLabelsUnavailable, match="404"):
        machine_labels("gz-r99-01", url, tmp_path)
    with pytest.raises(NodeLabelsUnavailable, match="not a JSON object"):
        (tmp_path / "labels.json").write_text("[1]")
        read_labels(tmp_path / "labels.json")


def test_the_init_container_writes_what_the_worker_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = tmp_path / "labels.json"
    monkeypatch.setattr("workers.kubernetes.machine_labels", lambda node, api: dict(LABELS))
    environ = {"RENDERFARM_KUBERNETES_NODE": "gz-r12-07", "KUBERNETES_SERVICE_HOST": "10.0.0.1"}
    assert main([str(written)], environ) == 0
    assert region_and_tags(read_labels(written)) == ("guizhou", ["blender", "nvme"])
    assert main([str(written)], {}) == 2  # no node named: usage
