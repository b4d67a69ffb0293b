"""A render node on Kubernetes takes its region and tags from its machine's labels
(workers/kubernetes.py), read from the cluster's API with its service account: here an
HTTP server of the test answers as that API would."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from workers.kubernetes import NodeLabelsUnavailable, machine_labels, region_and_tags

LABELS = {
    "kubernetes.io/hostname": "gz-r12-07",
    "topology.kubernetes.io/region": "cn-southwest-2",
    "renderfarm.io/region": "guizhou",
    "tag.renderfarm.io/blender": "true",
    "tag.renderfarm.io/houdini": "false",
    "tag.renderfarm.io/nvme": "True",
}


def test_the_farms_region_label_wins_and_tags_are_those_set_true() -> None:
    assert region_and_tags(LABELS) == ("guizhou", ["blender", "nvme"])
    cloud = {k: v for k, v in LABELS.items() if k != "renderfarm.io/region"}
    assert region_and_tags(cloud)[0] == "cn-southwest-2"  # the cloud's, failing the farm's
    assert region_and_tags({}) == (None, [])


@pytest.fixture
def cluster_api() -> Iterator[tuple[dict[str, str], list[tuple[str, str]]]]:
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
    environ = {
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": str(server.server_address[1]),
        "RENDERFARM_KUBERNETES_SCHEME": "http",
    }
    yield environ, asked
    server.shutdown()


def test_a_node_reads_its_machines_labels_with_its_service_account(
    cluster_api: tuple[dict[str, str], list[tuple[str, str]]], tmp_path: Path
) -> None:
    environ, asked = cluster_api
    (tmp_path / "token").write_text("the-pods-token\n")
    assert machine_labels("gz-r12-07", environ, tmp_path) == LABELS
    assert asked == [("/api/v1/nodes/gz-r12-07", "Bearer the-pods-token")]


def test_a_node_that_cannot_read_its_labels_says_why(
    cluster_api: tuple[dict[str, str], list[tuple[str, str]]], tmp_path: Path
) -> None:
    environ, _ = cluster_api
    with pytest.raises(NodeLabelsUnavailable, match="no service account"):
        machine_labels("gz-r12-07", environ, tmp_path)  # no token mounted
    (tmp_path / "token").write_text("t")
    with pytest.raises(NodeLabelsUnavailable, match="404"):
        machine_labels("gz-r99-01", environ, tmp_path)
    with pytest.raises(NodeLabelsUnavailable, match="not in a Kubernetes pod"):
        machine_labels("gz-r12-07", {}, tmp_path)
