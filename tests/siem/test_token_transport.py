"""A collector's token never crosses the network in the clear: a destination with a token
and an http:// url is refused unless the collector is on this host."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from modelfence.config.siem import HttpDestination

BASE = {"name": "soc", "token_env": "SOC_TOKEN"}


@pytest.mark.parametrize("kind", ["hec", "json"])
def test_a_token_over_plain_http_to_another_host_is_refused(kind: str) -> None:
    for url in ("http://splunk.example.internal:8088/services/collector/event",
                "http://10.0.0.7/ingest", "http://127.0.0.1.example.com/x"):
        with pytest.raises(ValidationError, match="in the clear"):
            HttpDestination.model_validate({**BASE, "type": kind, "url": url})


def test_https_loopback_and_tokenless_http_are_allowed() -> None:
    for url in ("https://splunk.example.internal:8088/services/collector/event",
                "http://127.0.0.1:8088/x", "http://[::1]:8088/x", "http://localhost/x"):
        HttpDestination.model_validate({**BASE, "type": "hec", "url": url})
    HttpDestination.model_validate({"name": "soc", "type": "json", "url": "http://10.0.0.7/x"})
