"""The web monitor's sessions against a real database: a key becomes a cookie that is
HttpOnly, SameSite=Strict (and Secure behind HTTPS); the cookie authenticates the REST
API, changes only with the session's CSRF token; a studio's session reaches no admin
route and an operator's no studio route; logout and a revoked key end a session; the
page is served with its security headers and nothing else from its folder."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from scheduler.usecases.jobs import StudioService
from scheduler.usecases.operators import OperatorService

pytestmark = pytest.mark.integration


def login(client: TestClient, key: str, **headers: str) -> dict[str, str]:
    answer = client.post("/monitor/login", json={"key": key}, headers=headers)
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def test_a_studio_key_becomes_a_session_cookie_that_the_api_accepts(
    client: TestClient, studios: StudioService
) -> None:
    key = studios.create_studio("pixel-east")[1]
    answer = client.post("/monitor/login", json={"key": key})
    cookie = answer.headers["set-cookie"]
    assert "rf_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Secure" not in cookie  # plain HTTP here: a Secure cookie would not come back
    assert key not in cookie  # a token of its own, not the key
    session = answer.json()
    assert session["kind"] == "studio" and session["name"] == "pixel-east"
    assert client.get("/monitor/session").json() == session
    job = {"name": "beauty", "frames": "1-2", "renderer": {"kind": "noop"}}
    refused = client.post("/v1/jobs", json=job)  # the cookie, but no CSRF token
    assert refused.status_code == 403 and "X-CSRF-Token" in refused.text
    wrong = client.post("/v1/jobs", json=job, headers={"X-CSRF-Token": "guess"})
    assert wrong.status_code == 403
    made = client.post("/v1/jobs", json=job, headers={"X-CSRF-Token": session["csrf"]})
    assert made.status_code == 201, made.text
    assert client.get("/v1/jobs").json()["total"] == 1  # reading needs no token
    assert client.get("/v1/admin/studios").status_code == 403  # no operator's route


def test_behind_https_the_cookie_is_secure(client: TestClient, studios: StudioService) -> None:
    key = studios.create_studio("pixel-east")[1]
    answer = client.post(
        "/monitor/login", json={"key": key}, headers={"X-Forwarded-Proto": "https"}
    )
    assert "Secure" in answer.headers["set-cookie"]


def test_an_operators_session_reaches_the_admin_routes_only(
    client: TestClient, studios: StudioService, engine: object
) -> None:
    operators = OperatorService(engine)  # type: ignore[arg-type]
    session = login(client, operators.create_operator("mei.ops")[1])
    assert session["kind"] == "operator"
    assert client.get("/v1/admin/studios").status_code == 200
    assert client.get("/v1/jobs").status_code == 403
    limit = client.put("/v1/admin/limits/houdini", json={"capacity": 2})
    assert limit.status_code == 403  # a change needs the token here too
    headers = {"X-CSRF-Token": session["csrf"]}
    assert (
        client.put("/v1/admin/limits/houdini", json={"capacity": 2}, headers=headers).status_code
        == 200
    )
    audit = client.get("/v1/admin/audit?action=limit.set").json()["items"]
    assert audit[0]["actor"] == "mei.ops"


def test_logout_and_a_revoked_key_end_the_session(
    client: TestClient, studios: StudioService
) -> None:
    key = studios.create_studio("pixel-east")[1]
    session = login(client, key)
    assert client.post("/monitor/logout").status_code == 403  # a logout needs the token too
    assert (
        client.post("/monitor/logout", headers={"X-CSRF-Token": session["csrf"]}).status_code == 204
    )
    assert client.get("/monitor/session").status_code == 401
    assert client.get("/v1/jobs").status_code == 401
    login(client, key)
    studios.revoke_key("pixel-east", key[:10])
    gone = client.get("/v1/jobs")
    assert gone.status_code == 401 and "revoked" in gone.text


@pytest.mark.parametrize("key", ["", "rf_not-a-key", "rfo_not-a-key", "x" * 201])
def test_a_login_with_a_key_that_is_not_one_is_refused(client: TestClient, key: str) -> None:
    answer = client.post("/monitor/login", json={"key": key})
    assert answer.status_code in (401, 422)
    assert "set-cookie" not in answer.headers


def test_the_page_is_served_with_its_security_headers_and_nothing_else(
    client: TestClient,
) -> None:
    page = client.get("/monitor")
    assert page.status_code == 200 and "renderfarm monitor" in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    script = client.get("/monitor/static/app.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith(
        "text/javascript"
    )
    assert "textContent" in script.text and "innerHTML" not in script.text
    for name in ("../app.py", "__init__.py", "app.js.map"):
        assert client.get(f"/monitor/static/{name}").status_code == 404
    assert client.get("/", follow_redirects=False).headers["location"] == "/monitor"
