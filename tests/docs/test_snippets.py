"""Every command and code snippet of README.md and docs/ works as pasted.

Runnable snippets are executed against a real `modelfence demo` (the one `make demo` starts)
on free ports; the others must say on the line before their fence why they cannot run here,
and the session's summary lists them.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ..support import free_port, free_port_pair
from .conftest import Demo, demo_snippet, repository_copy
from .held import HELD, SHARED_STARTS, Context, check_for
from .snippets import (
    MARKER,
    PAGE_SECONDS,
    RESTART_PORT,
    ROOT,
    Snippet,
    all_snippets,
    convention_problems,
    map_ports,
    page_script,
    pages,
    snippets,
)
from .stand_ins import STAND_INS, World

README_MAX_LINES = 250


def test_the_snippets_are_found() -> None:
    found = all_snippets()
    runnable = [s for s in found if s.runnable]
    assert any(s.page.name == "README.md" for s in runnable), "README has no runnable snippet"
    assert {s.kind for s in runnable} == {"shell", "python", "yaml"}
    assert len(found) >= 30


def test_every_snippet_follows_the_fresh_machine_conventions() -> None:
    problems = [f"{s.where}: {p}" for s in all_snippets() for p in convention_problems(s)]
    assert not problems, "\n".join(problems)


def test_every_marker_sits_on_a_snippet_and_gives_a_reason() -> None:
    """A marker that no fence follows is a typo that would leave a snippet unexplained."""
    fences = {(s.page, s.line) for page in pages() for s in snippets(page)}
    stray = []
    for page in pages():
        lines = page.read_text().splitlines()
        for n, line in enumerate(lines):
            text = line.strip()
            if not text.startswith("<!--") or not re.search(
                    r"not-run|serves|stand-in|extends", text):
                continue
            if not MARKER.match(text):
                stray.append(f"{page.relative_to(ROOT)}:{n + 1}: malformed marker")
                continue
            following = next((i for i in range(n + 1, len(lines))
                              if lines[i].strip() and not MARKER.match(lines[i].strip())), None)
            if following is None or (page, following + 1) not in fences:
                stray.append(f"{page.relative_to(ROOT)}:{n + 1}: no fence follows the marker")
    assert not stray, "\n".join(stray)


def test_every_configuration_snippet_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    """A YAML block made of modelfence's top-level keys is a configuration: it must pass the
    settings models as the gateway loads them (files it names are not read here). A part of a
    config that cannot stand alone says so with a not-run marker (tests/docs/held.py merges it
    into what it extends); any other YAML must be one tests/docs/held.py reads."""
    import yaml

    from modelfence.config import Settings, settings_from_mapping

    checked, problems, others = 0, [], []
    for snip in all_snippets():
        if snip.kind != "yaml" or snip.not_run or snip.extends:
            continue
        doc = yaml.safe_load(snip.code)
        if not isinstance(doc, dict) or not set(doc) <= set(Settings.model_fields):
            others.append((str(snip.page.relative_to(ROOT)), doc))
            continue
        for name in re.findall(r"\$\{(\w+)\}", snip.code):
            monkeypatch.setenv(name, "placeholder")
        try:
            settings_from_mapping(doc, source=snip.where)
        except Exception as exc:  # the one-line error the gateway would print
            problems.append(str(exc))
        checked += 1
    assert checked >= 8
    assert not problems, "\n".join(problems)
    # another tool's YAML: the KServe tutorial's manifests, which its kubectl check reads
    kinds = sorted((page, doc.get("kind")) for page, doc in others if isinstance(doc, dict))
    assert kinds == [("docs/tutorials/kserve.md", "InferenceService"),
                     ("docs/tutorials/kserve.md", "NetworkPolicy")], others


def test_every_policy_snippet_validates_against_the_schema(tmp_path: Path) -> None:
    """Cedar blocks are checked as the gateway checks policy files at start."""
    from modelfence.policy.engine import load_bundle

    policies = [s for s in all_snippets() if s.kind == "cedar" and not s.not_run]
    assert policies
    problems = []
    for n, snip in enumerate(policies):
        path = tmp_path / f"snippet_{n}.cedar"
        path.write_text(snip.code)
        try:
            load_bundle([path], ROOT / "src/modelfence/policy/schema.cedarschema")
        except Exception as exc:  # the one-line error the gateway would print
            problems.append(f"{snip.where}: {exc}")
    assert not problems, "\n".join(problems)


def test_the_readme_is_short() -> None:
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES})"


#: The pages whose snippets take longest (the summary's timings), started first so that the
#: three workers finish together instead of one page running alone at the end.
SLOW_FIRST = ("docs/getting-started.md", "docs/tutorials/prove-a-copy.md",
              "docs/concepts/monitor.md", "docs/concepts/redteam.md",
              "docs/tutorials/investigate-an-alert.md", "README.md", "docs/concepts/artifacts.md")


def _runnable_pages() -> list[Path]:
    found = [p for p in pages() if any(s.runnable for s in snippets(p))]
    rank = {name: n for n, name in enumerate(SLOW_FIRST)}
    return sorted(found, key=lambda p: rank.get(str(p.relative_to(ROOT)), len(rank)))


#: Ports the pages document for gateways and servers of their own: each page gets free ones.
PAGE_PORTS = (8010, 8100, 9100, 8200, 8201)


def _page_ports(demo: Demo) -> dict[int, int]:
    ports = {8000: demo.port, 8001: demo.port + 1, RESTART_PORT: free_port_pair()}
    base = free_port_pair()
    ports.update({8200: base, 8201: base + 1})
    for documented in PAGE_PORTS:
        if documented not in ports:
            ports[documented] = free_port()
    return ports


def _run_page(page: Path, demo: Demo, tmp_path: Path) -> str | None:
    """Run one page's snippets in order; the failure, said with its snippet, or None."""
    name = str(page.relative_to(ROOT))
    runnable = [s for s in snippets(page) if s.runnable]
    folder = tmp_path / name.replace("/", "_")
    folder.mkdir()
    workdir = repository_copy(folder / "repo")  # its own: a page may write files there
    ports = _page_ports(demo)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        world = (stack.enter_context(STAND_INS[name](snippets(page), workdir))
                 if name in STAND_INS else World())
        ports.update(world.ports)
        for name_of_file, text in world.files.items():
            (workdir / name_of_file).write_text(map_ports(text, ports))
        homes = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mf")))
        script = page_script(runnable, folder, ports, world.substitutions, homes)
        # A session of its own: whatever a page started in the background (a gateway it
        # serves itself) is stopped with it, even when a snippet fails before the page stops it.
        proc = subprocess.Popen([sys.executable, "-c", _AS_TYPED, script], cwd=workdir,
                                env={**demo.env, **world.env}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=600)
        finally:
            _kill_session(proc.pid)
            if proc.returncode is None:
                proc.kill()
                proc.communicate(timeout=30)
            PAGE_SECONDS[name] = time.monotonic() - started
    if proc.returncode == 0:
        return _reset_said(runnable, homes, stdout + stderr)
    markers = [ln for ln in stderr.splitlines() if ln.startswith(">>> ")]
    where = markers[-1][4:] if markers else name
    return (f"{where} exited {proc.returncode}\n--- stdout\n{stdout[-2000:]}\n"
            f"--- stderr\n{stderr[-3000:]}")


#: The page's bash, as a reader's terminal starts it: Ctrl+C (SIGINT) and SIGQUIT at their
#: defaults. A test run started in the background (`make test &`) ignores both, every child
#: inherits that, and bash cannot undo it: a served snippet that does not install its own
#: handler (`mkdocs serve`) then never stops on the page's Ctrl+C.
_AS_TYPED = ("import os, signal, sys\n"
             "signal.signal(signal.SIGINT, signal.SIG_DFL)\n"
             "signal.signal(signal.SIGQUIT, signal.SIG_DFL)\n"
             "os.execvp('bash', ['bash', '-c', sys.argv[1]])\n")


def _kill_session(sid: int) -> None:
    """SIGKILL to every process of the page's session: a served snippet runs in a process
    group of its own, and one left running holds the page's output open forever."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.getsid(int(entry.name)) == sid:
                os.kill(int(entry.name), signal.SIGKILL)


def _reset_said(runnable: list[Snippet], homes: Path, stdout: str) -> str | None:
    """A restarted demo (`make demo RESET=1`) says what Getting started says it removes and
    keeps, with its home where the page has `~`; None when it does, or nothing restarted."""
    page = (ROOT / "docs/getting-started.md").read_text()
    expected = next(ln for ln in page.splitlines() if ln.startswith("reset ~/.modelfence/demo:"))
    said = " ".join(stdout.split())  # the console wraps long lines
    for n, snip in enumerate(runnable):
        line = expected.replace("~", str(homes / str(n)))
        if snip.restarts_demo and line not in said:
            return f"{snip.where} did not say {line!r}:\n{stdout[-2000:]}"
    return None


def test_every_runnable_snippet_runs_against_the_demo(demo: Demo, tmp_path: Path) -> None:
    """Pages are independent of each other (each mints its own keys), so they run side by
    side; within a page the snippets run in order, as a reader pastes them."""
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda page: _run_page(page, demo, tmp_path), _runnable_pages()))
    failures = [r for r in results if r]
    assert not failures, "\n\n".join(failures)


def test_the_readme_links_point_at_files() -> None:
    """README is read on the forge, outside the site's strict build: check its links here."""
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if not t.startswith(("http://", "https://"))]
    assert local, "README links to no docs page"
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, missing


def _held() -> list[Snippet]:
    return [s for s in all_snippets() if s.not_run]


def test_every_make_demo_block_is_the_one_the_demo_was_started_with() -> None:
    """The demo is README's block run as pasted (conftest.py); a page's `make demo` block only
    waits for it, so it must be that block, word for word."""
    started = demo_snippet().code
    blocks = [s for s in all_snippets() if s.is_demo]
    assert {s.page.name for s in blocks} >= {"README.md", "getting-started.md"}
    other = [s.where for s in blocks if s.code != started]
    assert not other, f"`make demo` blocks unlike README's: {other}"


def test_every_held_snippet_is_checked_and_every_check_holds_one() -> None:
    """The goal: no snippet that no test touches. A new not-run snippet needs a check."""
    unchecked = [s.where for s in _held() if check_for(s) is None]
    assert not unchecked, f"not-run snippets without a check in tests/docs/held.py: {unchecked}"
    stale = [key for key in HELD if not any(
        str(s.page.relative_to(ROOT)) == key[0] and s.first_line.startswith(key[1])
        for s in _held())]
    assert not stale, f"checks in tests/docs/held.py for no held snippet: {stale}"


def test_every_stand_in_snippet_has_its_stand_ins() -> None:
    marked = {str(s.page.relative_to(ROOT)) for s in all_snippets() if s.stand_in}
    assert marked == set(STAND_INS), (marked, set(STAND_INS))
    both = [s.where for s in all_snippets() if s.not_run and (s.stand_in or s.serves)]
    assert not both, f"held snippets cannot also run: {both}"


@pytest.fixture(scope="module")
def held_context(request: pytest.FixtureRequest,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Context]:
    with contextlib.ExitStack() as stack:
        yield Context(tmp_path_factory.mktemp("held"), lambda: request.getfixturevalue("demo"),
                      stack)


def _held_groups() -> list[list[Snippet]]:
    """Held snippets, one test each, but a page's snippets whose checks share what they start
    (a local replica) in one test: test workers each start what their tests need."""
    groups: list[list[Snippet]] = []
    for snip in _held():
        last = groups[-1][-1] if groups else None
        if (last is not None and last.page == snip.page and check_for(snip) in SHARED_STARTS
                and check_for(last) == check_for(snip)):
            groups[-1].append(snip)
        else:
            groups.append([snip])
    return groups


@pytest.mark.parametrize("group", _held_groups(),
                         ids=lambda g: g[0].where + (f"+{len(g) - 1}" if len(g) > 1 else ""))
def test_what_can_be_checked_of_a_held_snippet_holds(group: list[Snippet],
                                                     held_context: Context) -> None:
    for snip in group:
        check = check_for(snip)
        assert check is not None, snip.where
        check(snip, held_context)


@pytest.mark.parametrize("page", ["README.md", "docs/getting-started.md"])
def test_the_newcomer_pages_run_everything_they_show(page: str) -> None:
    """README and Getting started hold back only the test suite itself (a command that serves
    until Ctrl+C runs too: `serves:`)."""
    held = [s for s in snippets(ROOT / page) if s.kind in {"shell", "python"} and s.not_run]
    other = [f"{s.where}: {s.not_run}" for s in held if "test suite" not in (s.not_run or "")]
    assert not other, other
    assert [s.first_line.split()[:2] for s in held] == [["make", "test"]], held
