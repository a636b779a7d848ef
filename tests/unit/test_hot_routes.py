"""The hot-route shortcut: the same answers as Starlette's router, inside the same middleware."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from modelfence.gateway.hot_routes import HotRoutes, hot_routes


async def infer(request: Request) -> Response:
    return JSONResponse({"name": request.path_params["name"], "routed": "endpoint" in
                         request.scope, "body": (await request.body()).decode()})


async def boom(request: Request) -> Response:
    raise RuntimeError("unexpected")


async def metadata(request: Request) -> Response:
    return JSONResponse({"get": request.path_params["name"]})


async def catch_all(request: Request) -> Response:
    return JSONResponse({"catch_all": request.url.path}, 404)


async def after(request: Request) -> Response:
    return JSONResponse({"after": True})


ROUTES = [Route("/v2/models/{name}/infer", infer, methods=["POST"]),
          Route("/v2/models/{name}", metadata, methods=["GET"]),
          Route("/boom", boom, methods=["POST"]),
          Route("/v1{rest:path}", catch_all, methods=["GET", "POST"]),
          Route("/v1/after", after, methods=["POST"])]


def make_app(seen: list[str]) -> Starlette:
    class Outer:  # stands for the body deadline and proxy headers: must see every request
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            seen.append(scope.get("path", scope["type"]))
            await self.app(scope, receive, send)

    async def internal(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": "internal error"}, 500)

    return Starlette(routes=ROUTES, middleware=[
        Middleware(Outer), Middleware(HotRoutes, routes=hot_routes(ROUTES))],
        exception_handlers={Exception: internal})


def test_only_post_routes_before_a_catch_all_are_hot() -> None:
    assert [r.path for r in hot_routes(ROUTES)] == ["/v2/models/{name}/infer", "/boom"]


def test_a_hot_post_skips_the_router_and_answers_the_same() -> None:
    seen: list[str] = []
    with TestClient(make_app(seen)) as client:
        r = client.post("/v2/models/digits/infer", content=b"{}")
        assert r.status_code == 200
        # Starlette's router sets scope["endpoint"]: the shortcut does not pass through it
        assert r.json() == {"name": "digits", "routed": False, "body": "{}"}
        assert seen[-1] == "/v2/models/digits/infer"  # the outer middleware saw it


def test_other_methods_and_paths_go_to_the_router() -> None:
    seen: list[str] = []
    with TestClient(make_app(seen), raise_server_exceptions=False) as client:
        assert client.get("/v2/models/digits").json() == {"get": "digits"}
        assert client.get("/v2/models/digits/infer").status_code == 405
        # a trailing slash: the router's redirect, as before
        assert client.post("/v2/models/digits/infer/", follow_redirects=False).status_code == 307
        assert client.post("/nowhere").status_code == 404
        # the catch-all keeps its place: a POST route after it is not taken by the shortcut
        assert client.post("/v1/after").json() == {"catch_all": "/v1/after"}


def test_an_unexpected_error_still_reaches_the_error_shield() -> None:
    with TestClient(make_app([]), raise_server_exceptions=False) as client:
        r = client.post("/boom")
    assert r.status_code == 500
    assert r.json() == {"error": "internal error"}
