"""The insider alert on artifact downloads: volume against own history and peers, and hours."""

from __future__ import annotations

from datetime import UTC, datetime

from modelfence.gateway.downloads import DownloadWatch


async def _never(*args: object) -> None:
    raise AssertionError("no alert expected here")


def at(day: int, hour: int) -> float:
    return datetime(2026, 11, day, hour, 0, tzinfo=UTC).timestamp()


def test_a_regular_pattern_is_quiet_and_a_burst_is_not() -> None:
    watch = DownloadWatch(_never)
    for day in range(1, 20):  # two downloads a working day at 09h and 14h
        for hour in (9, 14):
            watch.record("ci-bot", at(day, hour))
            assert watch.unusual("ci-bot", at(day, hour)) is None
    for n, hour in enumerate((9, 10, 10, 11, 11, 12, 13)):
        watch.record("ci-bot", at(21, hour) + n)
    why = watch.unusual("ci-bot", at(21, 13) + 7)
    assert why is not None and "7 downloads in 24 h" in why and "median day 2" in why


def test_peers_raise_the_bar_for_everyone() -> None:
    watch = DownloadWatch(_never)
    for i in range(10):
        watch.record("release-team", at(3, 10) + i)  # a busy peer day: 10 downloads
    for i in range(6):
        watch.record("newcomer", at(20, 10) + i)
    assert watch.unusual("newcomer", at(20, 10) + 5) is None  # 6 <= the busiest peer day


def test_a_download_at_an_hour_never_used_is_flagged() -> None:
    watch = DownloadWatch(_never)
    for day in range(1, 8):
        watch.record("analyst", at(day, 10))
    watch.record("analyst", at(9, 3))
    why = watch.unusual("analyst", at(9, 3))
    assert why is not None and "03h UTC" in why and "10h" in why
    watch.record("analyst", at(10, 4))  # 04h is within 2 h of 03h, now in its history
    assert watch.unusual("analyst", at(10, 4)) is None
