"""The siem: section: what it refuses, and tokens read at start without showing them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from modelfence.config.siem import HttpDestination, SiemSettings
from modelfence.errors import ConfigurationError

HEC = {"type": "hec", "name": "splunk", "url": "https://splunk:8088/services/collector/event"}


def siem(*destinations: dict[str, Any], **extra: Any) -> SiemSettings:
    return SiemSettings.model_validate({"destinations": list(destinations), **extra})


@pytest.mark.parametrize(("destinations", "says"), [
    ([HEC], "needs token_file or token_env"),
    ([{**HEC, "token_env": "A", "token_file": "t"}], "not both"),
    ([{**HEC, "token_env": "A"}, {**HEC, "token_env": "B"}], "repeated: splunk"),
    ([{**HEC, "token_env": "A", "url": "ftp://x"}], "url"),
    ([{"type": "syslog", "name": "s", "host": "h", "port": 70000}], "port"),
    ([{"type": "syslog", "name": "s", "host": "h", "port": 6514,
       "tls": {"cert_file": "c.pem"}}], "cert_file and key_file together"),
    ([{"type": "kafka", "name": "k"}], "type"),
])
def test_bad_destinations_are_refused(destinations: list[dict[str, Any]], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        siem(*destinations)


def test_off_by_default_and_retry_bounds_checked() -> None:
    assert SiemSettings().destinations == []
    with pytest.raises(ValidationError, match="retry_max_s"):
        siem(retry_initial_s=10, retry_max_s=1)


def test_token_is_read_at_start_and_a_missing_one_is_named_not_shown(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "t").write_text("s3cret-token\n")
    assert HttpDestination.model_validate({**HEC, "token_file": tmp_path / "t"}).token() \
        == "s3cret-token"
    monkeypatch.setenv("HEC_TOKEN", "from-env")
    assert HttpDestination.model_validate({**HEC, "token_env": "HEC_TOKEN"}).token() \
        == "from-env"
    monkeypatch.delenv("HEC_TOKEN")
    with pytest.raises(ConfigurationError, match="HEC_TOKEN is not set"):
        HttpDestination.model_validate({**HEC, "token_env": "HEC_TOKEN"}).token()
    with pytest.raises(ConfigurationError, match="cannot read"):
        HttpDestination.model_validate({**HEC, "token_file": tmp_path / "nope"}).token()
