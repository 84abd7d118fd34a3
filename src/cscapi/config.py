"""Alias of :mod:`cscapi.settings`, the CLI/agent settings module's name before it was renamed.

``import cscapi.config`` gives the very same module object as ``import cscapi.settings`` (one set of globals:
patching one patches the other), so code and docs written for the old name keep working.
"""

from __future__ import annotations

import sys

from cscapi import settings as _settings
from cscapi.settings import *  # noqa: F403 - the names, for type checkers reading this module
from cscapi.settings import __all__ as __all__

sys.modules[__name__] = _settings
