"""The on-disk spool: order, bound, restart, adoption of a stopped process's alerts."""

from __future__ import annotations

from pathlib import Path

from modelfence.siem.spool import HEADER, Spool


def rec(i: int, size: int = 20) -> bytes:
    return f'{{"n":{i},"pad":"{"x" * size}"}}'.encode()


def spool(folder: Path, max_bytes: int = 10_000, drops: list[int] | None = None) -> Spool:
    s = Spool(folder, max_bytes, fsync=False,
              on_drop=(drops.append if drops is not None else None))
    s.open()
    return s


def test_append_peek_ack_in_order(tmp_path: Path) -> None:
    s = spool(tmp_path)
    s.append([rec(i) for i in range(5)])
    assert s.peek(3) == [rec(0), rec(1), rec(2)]
    s.ack(3)
    assert s.peek(10) == [rec(3), rec(4)]
    s.ack(2)
    assert len(s) == 0 and s.pending_bytes == 0
    assert s.path is not None and s.path.stat().st_size == HEADER  # cut back when drained
    s.close()


def test_full_spool_drops_oldest_and_counts(tmp_path: Path) -> None:
    drops: list[int] = []
    one = len(rec(0)) + 1
    s = spool(tmp_path, max_bytes=one * 4, drops=drops)
    s.append([rec(i) for i in range(6)])
    assert s.peek(10) == [rec(2), rec(3), rec(4), rec(5)]
    assert sum(drops) == 2
    s.append([b"y" * (one * 5)])  # larger than the whole spool: dropped itself
    assert sum(drops) == 3 and len(s) == 4
    s.close()


def test_file_stays_bounded_while_alerts_come_and_go(tmp_path: Path) -> None:
    one = len(rec(0)) + 1
    s = spool(tmp_path, max_bytes=one * 10)
    for i in range(200):
        s.append([rec(i)])
        if i % 3:
            s.ack(1)
    assert s.path is not None and s.path.stat().st_size <= HEADER + 2 * one * 10
    assert len(s.peek(100)) == len(s)
    s.close()


def test_a_restart_adopts_what_was_not_delivered(tmp_path: Path) -> None:
    s = spool(tmp_path)
    s.append([rec(i) for i in range(4)])
    s.ack(1)
    s.close()  # the process stops with three alerts undelivered
    again = spool(tmp_path)
    assert again.peek(10) == [rec(1), rec(2), rec(3)]
    assert len(list(tmp_path.glob("spool-*.log"))) == 1  # the old segment is gone
    again.close()


def test_a_torn_last_line_is_ignored(tmp_path: Path) -> None:
    s = spool(tmp_path)
    s.append([rec(1), rec(2)])
    assert s.path is not None
    with s.path.open("ab") as f:
        f.write(b'{"n":3,"pa')  # a crash mid-append
    s.close()
    again = spool(tmp_path)
    assert again.peek(10) == [rec(1), rec(2)]
    again.close()


def test_a_living_process_keeps_its_segment(tmp_path: Path) -> None:
    mine = spool(tmp_path)
    mine.append([rec(1)])
    other = spool(tmp_path)  # another worker, same folder
    assert len(other) == 0 and mine.peek(1) == [rec(1)]
    mine.close()
    other.close()


def test_a_killed_process_leaves_its_alerts_to_the_next(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from modelfence.siem.spool import Spool\n"
        "s = Spool(Path(sys.argv[1]), 10_000)\n"
        "s.open()\n"
        "s.append([b'{\"n\":1}', b'{\"n\":2}'])\n"
        "s.ack(1)\n"
        "os._exit(9)  # no close: as a kill would leave it\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=False)
    assert done.returncode == 9
    again = spool(tmp_path)
    assert again.peek(10) == [b'{"n":2}']
    again.close()
