"""The hot routes (a POST to infer or to an LLM endpoint) straight to their endpoint.

Starlette's exception middleware, router and `request_response` wrapper cost tens of
microseconds a request (measured with bench/path_inproc.py) and do nothing for these
endpoints: they answer every error themselves and raise no `HTTPException`. This
middleware sits inside the body deadline and the proxy headers, so every protection of the
public app still applies, and an unexpected exception still reaches the app's error shield
(its 500 handler). A path or method it does not serve goes on to the app unchanged.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send


def hot_routes(routes: Sequence[BaseRoute]) -> list[Route]:
    """The POST-only routes with async endpoints, in order, up to the first route that takes
    POST otherwise (a catch-all): none of them can shadow a route listed before it."""
    hot: list[Route] = []
    for route in routes:
        methods = getattr(route, "methods", None)
        if (isinstance(route, Route) and methods == {"POST"}
                and inspect.iscoroutinefunction(route.endpoint)):
            hot.append(route)
        elif methods is None or "POST" in methods:
            break
    return hot


class HotRoutes:
    """ASGI middleware: a POST matching one of `routes` is answered by its endpoint here."""

    def __init__(self, app: ASGIApp, routes: Sequence[Route]) -> None:
        self.app = app
        self._routes = tuple((r.path_regex, r.param_convertors, r.endpoint) for r in routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            path = scope["path"]
            for regex, convertors, endpoint in self._routes:
                match = regex.match(path)
                if match is None:
                    continue
                scope["path_params"] = {key: convertors[key].convert(value)
                                        for key, value in match.groupdict().items()}
                response: Any = await endpoint(Request(scope, receive, send))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
