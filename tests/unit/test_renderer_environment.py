"""A renderer's environment: the node's, less anything that may be a node's secret (a
scene's script reads its environment and can print it into the log or a frame)."""

from __future__ import annotations

import pytest

from workers.runner import is_secret_variable, renderer_environment

KEPT = [
    "PATH", "HOME", "USER", "LANG", "LC_ALL", "LC_NUMERIC", "TMPDIR", "TERM",
    "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "PYTHONPATH",
    "BLENDER_USER_SCRIPTS", "BLENDER_SYSTEM_RESOURCES", "OCIO", "LD_LIBRARY_PATH",
    "KEYBOARD_LAYOUT", "MONKEY",  # "KEY" elsewhere than at the end is no secret
]  # fmt: skip
STRIPPED = [
    "RENDERFARM_NODE_TOKEN", "RENDERFARM_DATABASE_URL", "RENDERFARM_BROKER_URL",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
    "AZURE_CLIENT_SECRET", "AZURE_STORAGE_CONNECTION_STRING", "GOOGLE_APPLICATION_CREDENTIALS",
    "GCP_PROJECT", "GITHUB_TOKEN", "HF_TOKEN", "github_token", "Stripe_Secret",
    "PGPASSWORD", "MYSQL_PWD_PASSWD", "DOCKER_CREDENTIALS", "OPENAI_API_KEY", "SSH_KEY",
    "api_key", "MY_TOKEN_FILE", "CLIENT_SECRET_PATH",
]  # fmt: skip


@pytest.mark.parametrize("name", KEPT)
def test_what_renderers_need_stays(name: str) -> None:
    assert not is_secret_variable(name)


@pytest.mark.parametrize("name", STRIPPED)
def test_what_may_be_a_secret_goes(name: str) -> None:
    assert is_secret_variable(name)


def test_the_environment_keeps_values_and_drops_secrets() -> None:
    node = {name: f"value of {name}" for name in [*KEPT, *STRIPPED]}
    assert renderer_environment(node) == {name: f"value of {name}" for name in KEPT}


def test_without_an_argument_it_is_this_processs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI")
    monkeypatch.setenv("RENDERFARM_TEST_KEPT_OUT", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    environment = renderer_environment()
    assert environment["OMP_NUM_THREADS"] == "4"
    assert "AWS_SECRET_ACCESS_KEY" not in environment
    assert "RENDERFARM_TEST_KEPT_OUT" not in environment
