"""docker-compose.yml and deploy/Dockerfile, checked without a Docker engine: the compose
file against the compose specification, pinned images, a healthcheck on every farm
service, and the image's filesystem: every folder a farm service mounts a named volume
on is made in the image and owned by the user its processes run as (a new named volume
starts as a copy of that folder, ownership included)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
FARM = ("api", "scheduler", "worker")


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def test_the_compose_file_follows_the_compose_specification() -> None:
    checker = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    assert checker, "check-jsonschema comes with the test extras"
    out = subprocess.run(
        [checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_broken_compose_file_fails_the_check(tmp_path: Path) -> None:
    broken = compose()
    broken["services"]["api"]["healthcheck"]["intervall"] = "5s"
    (tmp_path / "docker-compose.yml").write_text(yaml.safe_dump(broken))
    checker = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    assert checker
    out = subprocess.run(
        [checker, "--builtin-schema", "vendor.compose-spec", str(tmp_path / "docker-compose.yml")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode != 0


def test_every_image_is_pinned_to_a_release() -> None:
    images = [s["image"] for s in compose()["services"].values() if "image" in s]
    images.append(re.search(r"^FROM (\S+)", DOCKERFILE.read_text(), re.M)[1])  # type: ignore[index]
    for image in images:
        if image == "renderfarm:latest":
            continue  # built here, from this checkout
        tag = image.partition(":")[2]  # PostgreSQL's releases are MAJOR.MINOR
        assert re.match(r"v?\d+\.\d+", tag), f"{image}: not pinned to a release"


def test_every_farm_service_has_a_healthcheck() -> None:
    services = compose()["services"]
    for name in (*FARM, "redis", "postgres"):
        check = services[name].get("healthcheck")
        assert check and check["test"][0] in ("CMD", "CMD-SHELL"), name
    assert services["worker"]["stop_grace_period"] == "120s"
    drain = float(services["worker"]["environment"]["RENDERFARM_DRAIN_SECONDS"])
    assert drain + 10 <= 120  # time to hand back and say so before SIGKILL
    assert "RENDERFARM_DATABASE_URL" not in services["worker"]["environment"]


def test_every_farm_process_gets_dockers_sigterm_itself() -> None:
    """A farm process must be its container's PID 1: a shell there ignores SIGTERM (PID 1
    has no default handlers), so a node would never drain, only be killed."""
    for name in FARM:
        command = compose()["services"][name]["command"]
        if command[0] in ("sh", "bash"):  # a shell for $(hostname): it must exec
            assert command[-1].startswith("exec renderfarm "), f"{name}: {command}"
        else:
            assert command[0] == "renderfarm", f"{name}: {command}"


def image_tree(dockerfile: str) -> tuple[str, dict[str, str]]:
    """What the Dockerfile's steps leave: the user processes run as, and the folders its
    RUN steps make with their owners (``mkdir -p``, ``chown USER:GROUP``), in order."""
    user, owners = "root", {}
    text = dockerfile.replace("\\\n", " ")
    for line in text.splitlines():
        instruction, _, rest = line.strip().partition(" ")
        if instruction == "USER":
            user = rest.strip().split(":")[0]
        if instruction != "RUN":
            continue
        for command in re.split(r"&&|;", rest):
            words = shlex.split(command)
            if words[:2] == ["mkdir", "-p"]:
                owners.update(dict.fromkeys(words[2:], "root" if user == "root" else user))
            elif words[:1] == ["chown"]:
                owner = words[1].split(":")[0]
                for folder in words[2:]:
                    assert folder in owners, f"chown of {folder}, never made"
                    owners[folder] = owner
    return user, owners


def test_the_image_owns_every_folder_a_volume_is_mounted_on() -> None:
    user, owners = image_tree(DOCKERFILE.read_text())
    assert user not in ("root", "0"), "farm processes must not run as root"
    services = compose()["services"]
    for name in FARM:
        for volume in services[name].get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith((".", "/")):
                continue  # a bind mount of the host's, read-only configuration
            assert owners.get(target) == user, f"{name}: {target} is not {user}'s in the image"
    environment = re.search(r"^ENV RENDERFARM_DATA_DIR=(\S+)", DOCKERFILE.read_text(), re.M)
    assert environment and owners.get(environment[1]) == user


def test_the_image_check_sees_a_folder_left_to_root() -> None:
    made_only = DOCKERFILE.read_text().replace(
        "chown render:render /srv/renderfarm/storage", "chown render:render"
    )
    _, owners = image_tree(made_only)
    assert owners["/srv/renderfarm/storage"] == "root"
