"""The console's static files: one stylesheet and vendored htmx, served from the package.

Read once and answered from memory with a content type, a long cache lifetime (the script's
name carries its version) and the console's security headers; any other name is a 404, so
nothing outside this folder is ever served.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from .headers import SECURITY_HEADERS

HTMX = "htmx-2.0.11.min.js"
_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
_FILES = ("console.css", HTMX)


class StaticFiles:
    """The console's fixed set of static files, kept in memory."""

    def __init__(self) -> None:
        folder = Path(__file__).with_name("static")
        self._files = {name: (folder / name).read_bytes() for name in _FILES}

    def routes(self) -> list[Route]:
        return [Route("/console/static/{name}", self.serve, methods=["GET"])]

    async def serve(self, request: Request) -> Response:
        name = request.path_params["name"]
        body = self._files.get(name)
        if body is None:
            return PlainTextResponse("no such console file", 404, headers=SECURITY_HEADERS)
        headers = {**SECURITY_HEADERS, "Cache-Control": "public, max-age=86400"}
        return Response(body, media_type=_TYPES[Path(name).suffix], headers=headers)
