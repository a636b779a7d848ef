"""Settings of the response watermark (`watermark:` in modelfence.yaml).

They live in `modelfence.config.watermark`; this module keeps the watermark package's own
name for them.
"""

from ..config.watermark import WatermarkKeySettings, WatermarkSettings

__all__ = ["WatermarkKeySettings", "WatermarkSettings"]
