"""A render node on Kubernetes takes its region and tags from the labels of the machine
its pod runs on, as a node administrator sets them once per machine
(``kubectl label node gz-r12-07 renderfarm.io/region=guizhou tag.renderfarm.io/blender=true``),
not from each pool's manifest.

The labels are read by the pod's init container (``python -m workers.kubernetes OUT``)
with the pod's service account, which may only ``get`` nodes
(deploy/kubernetes/node-reader.yaml), and written to a file the worker reads
(``RENDERFARM_NODE_LABELS``): the render node itself, and the studios' renderers it
runs, never hold a token for the cluster's API.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path

ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
REGION_LABEL = "renderfarm.io/region"
TAG_PREFIX = "tag.renderfarm.io/"  # tag.renderfarm.io/blender=true: the tag "blender"


class NodeLabelsUnavailable(RuntimeError):
    """The machine's labels could not be read; the message says why."""


def region_and_tags(labels: Mapping[str, str]) -> tuple[str | None, list[str]]:
    """The node's region (``renderfarm.io/region``; None: unlabelled: a cloud's own
    region label names its data centre, not the farm's region with its PUE, price and
    carbon) and its tags (each ``tag.renderfarm.io/NAME`` whose value is "true")."""
    tags = sorted(
        key.removeprefix(TAG_PREFIX)
        for key, value in labels.items()
        if key.startswith(TAG_PREFIX) and value.lower() == "true"
    )
    return labels.get(REGION_LABEL) or None, tags


def cluster_api(environ: Mapping[str, str]) -> str:
    """The cluster's API as a pod reaches it (``KUBERNETES_SERVICE_HOST``/``_PORT``)."""
    host = environ.get("KUBERNETES_SERVICE_HOST")
    if not host:
        raise NodeLabelsUnavailable("not in a Kubernetes pod: KUBERNETES_SERVICE_HOST unset")
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return f"https://{host}:{environ.get('KUBERNETES_SERVICE_PORT', '443')}"


def machine_labels(
    machine: str, api: str, account: Path = ACCOUNT, timeout: float = 10.0
) -> dict[str, str]:
    """The labels of the cluster's node ``machine``, read with the service account in
    ``account`` (its token, and for https its CA), never through a proxy."""
    url = f"{api}/api/v1/nodes/{urllib.parse.quote(machine, safe='')}"
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    try:
        token = (account / "token").read_text().strip()
        if api.startswith("https:"):
            context = ssl.create_default_context(cafile=str(account / "ca.crt"))
            handlers.append(urllib.request.HTTPSHandler(context=context))
    except (OSError, ssl.SSLError) as error:
        raise NodeLabelsUnavailable(f"no service account in {account}: {error}") from None
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.build_opener(*handlers).open(request, timeout=timeout) as answer:
            node = json.load(answer)
    except (OSError, ValueError) as error:
        raise NodeLabelsUnavailable(f"{url}: {error}") from None
    labels = node.get("metadata", {}).get("labels") if isinstance(node, dict) else None
    if not isinstance(labels, dict):
        raise NodeLabelsUnavailable(f"{url}: the answer has no metadata.labels")
    return {str(k): str(v) for k, v in labels.items()}


def read_labels(path: Path) -> dict[str, str]:
    """The labels the init container wrote (``NodeLabelsUnavailable`` if none)."""
    try:
        labels = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise NodeLabelsUnavailable(f"{path}: {error}") from None
    if not isinstance(labels, dict):
        raise NodeLabelsUnavailable(f"{path}: not a JSON object of labels")
    return {str(k): str(v) for k, v in labels.items()}


def main(argv: list[str], environ: Mapping[str, str]) -> int:
    """The init container: the labels of the machine ``RENDERFARM_KUBERNETES_NODE``
    (the pod's ``spec.nodeName``) into the file ``argv[0]``."""
    if len(argv) != 1 or not environ.get("RENDERFARM_KUBERNETES_NODE"):
        print("usage: RENDERFARM_KUBERNETES_NODE=NODE python -m workers.kubernetes OUT",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        labels = machine_labels(environ["RENDERFARM_KUBERNETES_NODE"], cluster_api(environ))
    except NodeLabelsUnavailable as error:
        print(f"labels of {environ['RENDERFARM_KUBERNETES_NODE']}: {error}", file=sys.stderr)
        return 1
    Path(argv[0]).write_text(json.dumps(labels, sort_keys=True))
    region, tags = region_and_tags(labels)
    print(f"region {region or '(unlabelled)'}, tags {', '.join(tags) or '(none)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], os.environ))
