"""`modelfence watermark plan`: marks needed per model, the rate used, its honest cost.

Being written (issue 16); until then it says so.
"""

from __future__ import annotations

from .common import fail


def plan() -> None:
    """Print, per model, the marks a holder needs and the marking rate that gives them."""
    raise fail("watermark plan is not available yet", 2)
