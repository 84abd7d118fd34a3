"""The official CAPI v3 and LAPI swagger documents (MIT, from the crowdsec repository), shipped as JSON.

Used by the emulator to validate what it receives, and by the tests to validate what the client sends.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any


@cache
def load_capi_spec() -> dict[str, Any]:
    """The CAPI v3 swagger (``basePath: /v3``) as a dict."""
    return dict(json.loads(resources.files(__name__).joinpath("capi_v3.json").read_text("utf-8")))


@cache
def load_lapi_spec() -> dict[str, Any]:
    """The LAPI swagger, whose ``AllMetrics`` model CAPI's ``/v3/usage-metrics`` takes."""
    return dict(json.loads(resources.files(__name__).joinpath("lapi.json").read_text("utf-8")))
