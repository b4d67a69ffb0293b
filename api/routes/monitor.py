"""The web monitor: one page (api/monitor/) served by the API, logging in with a studio's
or an operator's key, which becomes a session cookie (HttpOnly, SameSite=Strict, Secure
behind HTTPS; scheduler/usecases/sessions.py). The page then calls the same REST API as
every client, authenticated by the cookie, each change carrying the session's CSRF
token (api/deps.py), and watches the server-sent streams (api/routes/streams.py)."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, ConfigDict, Field

from api.deps import CSRF_HEADER, SESSION_COOKIE, check_csrf
from api.schemas import Problem
from scheduler.errors import Unauthorized
from scheduler.usecases.sessions import SESSION_SECONDS, Login, WebSessions

router = APIRouter(
    tags=["monitor"],
    responses={
        400: {"model": Problem, "description": "the body is not JSON (not even UTF-8)"},
        401: {"model": Problem, "description": "an unknown or revoked key; no session"},
        403: {"model": Problem, "description": "a change without the session's CSRF token"},
        413: {"model": Problem},
        422: {"model": Problem},
    },
)
FILES = {"app.js": "text/javascript", "app.css": "text/css", "index.html": "text/html"}
SECURITY = {  # the page runs only its own script, and nobody frames it
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class LoginBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1, max_length=200, description="a studio's or operator's key")


class SessionPublic(BaseModel):
    kind: str = Field(description="studio or operator")
    name: str
    csrf: str = Field(description=f"send it as {CSRF_HEADER} with every change")

    @classmethod
    def of(cls, login: Login) -> SessionPublic:
        return cls(kind=login.kind, name=login.name, csrf=login.csrf)


def _file(name: str) -> Response:
    body = resources.files("api.monitor").joinpath(name).read_bytes()
    return Response(body, media_type=FILES[name], headers=SECURITY)


@router.get("/", include_in_schema=False)
def root() -> RedirectResponse:
    return RedirectResponse("/monitor")


@router.get("/monitor", include_in_schema=False)
def page() -> Response:
    return _file("index.html")


@router.get("/monitor/static/{name}", include_in_schema=False)
def static(name: str) -> Response:
    if name not in FILES:
        return Response(status_code=404)
    return _file(name)


def _sessions(request: Request) -> WebSessions:
    return WebSessions(request.app.state.engine)


@router.post("/monitor/login", response_model=SessionPublic)
def login(body: LoginBody, request: Request, response: Response) -> SessionPublic:
    """Exchange a key for a session cookie (the key is not kept by the page)."""
    token, found = _sessions(request).open(body.key)
    secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
    response.set_cookie(
        SESSION_COOKIE, token, max_age=SESSION_SECONDS, path="/", httponly=True,
        samesite="strict", secure=secure,
    )  # fmt: skip
    return SessionPublic.of(found)


@router.get("/monitor/session", response_model=SessionPublic)
def session(request: Request) -> SessionPublic:
    token = request.cookies.get(SESSION_COOKIE)
    if token is None:
        raise Unauthorized("not logged in")
    return SessionPublic.of(_sessions(request).find(token))


@router.post("/monitor/logout", status_code=204)
def logout(request: Request, response: Response) -> None:
    token = request.cookies.get(SESSION_COOKIE)
    if token is not None:
        check_csrf(request, _sessions(request).find(token))
        _sessions(request).close(token)
    response.delete_cookie(SESSION_COOKIE, path="/")
