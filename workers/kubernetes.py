"""A render node on Kubernetes takes its region and tags from the labels of the machine
its pod runs on, as a node administrator sets them once per machine
(``kubectl label node gz-r12-07 renderfarm.io/region=guizhou tag.renderfarm.io/blender=true``),
not from each pool's manifest.

The pod names its machine (``RENDERFARM_KUBERNETES_NODE``, from the downward API's
``spec.nodeName``); the node reads that machine's labels from the cluster's API with its
service account (deploy/kubernetes/node-reader.yaml: ``get`` on nodes, nothing else).
"""

from __future__ import annotations

import json
import ssl
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path

ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
REGION_LABELS = ("renderfarm.io/region", "topology.kubernetes.io/region")
TAG_PREFIX = "tag.renderfarm.io/"  # tag.renderfarm.io/blender=true: the tag "blender"


class NodeLabelsUnavailable(RuntimeError):
    """The cluster's API did not tell this machine's labels; the message says why."""


def region_and_tags(labels: Mapping[str, str]) -> tuple[str | None, list[str]]:
    """The node's region (the first region label set; None: none) and its tags (each
    ``tag.renderfarm.io/NAME`` label whose value is "true"), from its machine's labels."""
    region = next((labels[key] for key in REGION_LABELS if labels.get(key)), None)
    tags = sorted(
        key.removeprefix(TAG_PREFIX)
        for key, value in labels.items()
        if key.startswith(TAG_PREFIX) and value.lower() == "true"
    )
    return region, tags


def machine_labels(
    machine: str,
    environ: Mapping[str, str],
    account: Path = ACCOUNT,
    timeout: float = 10.0,
) -> dict[str, str]:
    """The labels of the cluster's node ``machine``, read with the pod's service account."""
    host = environ.get("KUBERNETES_SERVICE_HOST")
    port = environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise NodeLabelsUnavailable("not in a Kubernetes pod: KUBERNETES_SERVICE_HOST unset")
    scheme = environ.get("RENDERFARM_KUBERNETES_SCHEME", "https")  # http: tests only
    url = f"{scheme}://{host}:{port}/api/v1/nodes/{urllib.parse.quote(machine, safe='')}"
    try:
        token = (account / "token").read_text().strip()
        context = (
            ssl.create_default_context(cafile=str(account / "ca.crt"))
            if scheme == "https"
            else None
        )
    except (OSError, ssl.SSLError) as error:
        raise NodeLabelsUnavailable(f"no service account in {account}: {error}") from None
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as answer:
            node = json.load(answer)
    except (OSError, ValueError) as error:
        raise NodeLabelsUnavailable(f"{url}: {error}") from None
    labels = node.get("metadata", {}).get("labels") if isinstance(node, dict) else None
    if not isinstance(labels, dict):
        raise NodeLabelsUnavailable(f"{url}: the answer has no metadata.labels")
    return {str(k): str(v) for k, v in labels.items()}
