"""Red-team assessment reports and evidence bundles in `console.reports_dir`, for download.

The folder holds files, and folders of files one level down (`modelfence redteam` writes
`assessment.json` and `report.html` into a folder per run). Nothing outside it is ever
served: a name is at most two plain parts (no `..`, no slash inside a part, no leading
dot), each part is opened relative to the folder's descriptor with `O_NOFOLLOW`, so a
symbolic link (even one swapped in after the listing) is refused, and only regular files
are answered. The content type comes from a fixed table, never from the file. A listing
looks at `MAX_SCANNED` entries at most and lists the newest `MAX_LISTED` files.

Every file is sent as an attachment. An HTML report is never rendered in the console's
origin: its text comes from attack runs (model and principal names a caller chose), and
rendered here it would run with the admin's session. As an attachment it opens from the
admin's disk instead; its response also carries `Content-Security-Policy: sandbox`, so a
browser that renders it anyway gives it no origin and no script.
"""

from __future__ import annotations

import heapq
import os
import re
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import anyio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from ..errors import BadRequest, NotFound, RequestError
from .headers import SECURITY_HEADERS
from .kit import ConsoleKit
from .session import ConsoleSession

REPORTS_SCOPE = "audit:read"
MAX_LISTED = 500  # the newest files listed
MAX_SCANNED = 10_000  # folder entries looked at per listing, at most
_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_CHUNK = 256 * 1024
TYPES = {".html": "text/html; charset=utf-8", ".json": "application/json",
         ".pdf": "application/pdf", ".zip": "application/zip", ".gz": "application/gzip",
         ".tgz": "application/gzip", ".csv": "text/csv; charset=utf-8",
         ".txt": "text/plain; charset=utf-8", ".md": "text/plain; charset=utf-8",
         ".tsr": "application/timestamp-reply"}
_KINDS = {".html": "report (HTML)", ".json": "assessment or evidence (JSON)",
          ".tsr": "timestamp (RFC 3161)"}
_OPEN = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True, slots=True)
class ReportFile:
    name: str  # "file" or "folder/file"
    kind: str
    size: int
    modified: str


def check_name(name: str) -> list[str]:
    """The parts of a requested name; BadRequest for anything but one or two plain parts."""
    parts = name.split("/")
    if len(name) > 401 or not 1 <= len(parts) <= 2 or not all(
            _PART.fullmatch(p) and p not in (".", "..") for p in parts):
        raise BadRequest("not a report name")
    return parts


def _entries(folder: Path) -> tuple[list[ReportFile], bool]:
    """The newest `MAX_LISTED` regular files of `folder` and of its plain subfolders, newest
    first (no links), and whether the scan stopped at `MAX_SCANNED` entries.

    The work is bounded, whatever the folder holds: at most `MAX_SCANNED` entries are looked
    at, the subfolders newest first (a folder's time is its last file's creation), so a
    bounded scan still finds the latest runs; a heap keeps the newest files seen, and once
    it is full no folder older than its oldest file is opened (a file rewritten after its
    folder's last creation may then be missed: runs write their files once).
    """
    newest: list[tuple[float, str, ReportFile]] = []
    folders: list[tuple[float, str, str]] = []
    seen = 0

    def add(entry: os.DirEntry[str], prefix: str) -> None:
        if _PART.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            st = entry.stat(follow_symlinks=False)
            item = (st.st_mtime, prefix + entry.name, ReportFile(
                prefix + entry.name, _KINDS.get(Path(entry.name).suffix, "file"), st.st_size,
                datetime.fromtimestamp(st.st_mtime, UTC).isoformat()[:19]))
            if len(newest) < MAX_LISTED:
                heapq.heappush(newest, item)
            elif item[:2] > newest[0][:2]:
                heapq.heapreplace(newest, item)

    with os.scandir(folder) as top:
        for entry in top:
            seen += 1
            if seen > MAX_SCANNED:
                break
            if entry.is_dir(follow_symlinks=False):
                if _PART.fullmatch(entry.name):
                    folders.append((entry.stat(follow_symlinks=False).st_mtime, entry.name,
                                    entry.path))
            else:
                add(entry, "")
    for mtime, name, path in sorted(folders, reverse=True):
        if seen > MAX_SCANNED or (len(newest) == MAX_LISTED and mtime < newest[0][0]):
            break
        with os.scandir(path) as inner:
            for sub in inner:
                seen += 1
                if seen > MAX_SCANNED:
                    break
                add(sub, name + "/")
    files = [item[2] for item in sorted(newest, key=lambda i: i[:2], reverse=True)]
    return files, seen > MAX_SCANNED


def open_report(folder: Path, parts: list[str]) -> int:
    """A descriptor of the regular file `parts` names under `folder`, no link followed."""
    fds: list[int] = []
    try:
        fds.append(os.open(folder, _OPEN | os.O_DIRECTORY))
        for part in parts[:-1]:
            fds.append(os.open(part, _OPEN | os.O_DIRECTORY, dir_fd=fds[-1]))
        fd = os.open(parts[-1], _OPEN, dir_fd=fds[-1])
    except OSError:
        raise NotFound("no such report") from None
    finally:
        for d in fds:
            os.close(d)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotFound("no such report")
    return fd


async def _stream(fd: int) -> AsyncIterator[bytes]:
    try:
        while chunk := await anyio.to_thread.run_sync(os.read, fd, _CHUNK):
            yield chunk
    finally:
        os.close(fd)


class ReportPages:
    """`/console/reports` and `/console/reports/{name}`."""

    def __init__(self, kit: ConsoleKit, folder: Path | None) -> None:
        self._kit = kit
        self._folder = folder

    def routes(self) -> list[BaseRoute]:
        return [Route("/console/reports", self.listing, methods=["GET"]),
                Route("/console/reports/{name:path}", self.download, methods=["GET"])]

    def _session(self, request: Request) -> ConsoleSession | Response:
        """The session of an admin of every model and tenant: a report or bundle is not
        labelled with the models and tenants it tells of, so a scoped admin reads none."""
        session = self._kit.page(request, REPORTS_SCOPE)
        if isinstance(session, Response) or ("*" in session.models
                                             and "*" in session.tenants):
            return session
        return self._kit.render("denied.html", 403, session=session, title="Not allowed",
                                message="reports are for admins of every model and tenant")

    async def listing(self, request: Request) -> Response:
        session = self._session(request)
        if isinstance(session, Response):
            return session
        if self._folder is None:
            return self._kit.render("rec-reports.html", session=session, title="Reports",
                                    files=[], message="no console.reports_dir configured")
        try:
            files, cut = await anyio.to_thread.run_sync(_entries, self._folder)
        except OSError:
            return self._kit.render("rec-reports.html", 503, session=session,
                                    title="Reports", files=[],
                                    message="the reports folder cannot be read now")
        note = (f"the reports folder holds more than {MAX_SCANNED:,} entries: the newest "
                f"files of the {MAX_SCANNED:,} looked at (the newest runs first) are listed; "
                "move old runs elsewhere" if cut else None)
        return self._kit.render("rec-reports.html", session=session, title="Reports",
                                files=files, message=note, limit=MAX_LISTED)

    async def download(self, request: Request) -> Response:
        session = self._session(request)
        if isinstance(session, Response):
            return session
        name = request.path_params["name"]
        try:
            if self._folder is None:
                raise NotFound("no console.reports_dir configured")
            parts = check_name(name)
            fd = open_report(self._folder, parts)
        except RequestError as exc:
            await self._kit.record("console:report-download", session.admin, exc.status,
                                   request, target=name[:200])
            return self._kit.render("denied.html", exc.status, session=session,
                                    title="Reports", message=exc.message)
        await self._kit.record("console:report-download", session.admin, 200, request,
                               target=name)
        suffix = Path(parts[-1]).suffix
        headers = {**SECURITY_HEADERS,
                   "Content-Disposition": f'attachment; filename="{parts[-1]}"',
                   "Content-Length": str(os.fstat(fd).st_size)}
        if suffix == ".html":
            headers["Content-Security-Policy"] = "sandbox; default-src 'none'"
        return StreamingResponse(_stream(fd), headers=headers,
                                 media_type=TYPES.get(suffix, "application/octet-stream"))
