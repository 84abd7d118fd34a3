"""Sample attack logs shipped with cscapi (sshd ``auth.log``, nginx ``access.log``), for ``cscapi demo`` and examples.

Every address in them is from the documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32).
"""

from __future__ import annotations

from importlib import resources

__all__ = ["SAMPLE_FILES", "sample_lines", "sample_text"]

#: The shipped sample logs.
SAMPLE_FILES = ("auth.log", "access.log")


def sample_text(name: str) -> str:
    """The content of one shipped sample log (``auth.log`` or ``access.log``)."""
    if name not in SAMPLE_FILES:
        raise ValueError(f"unknown sample {name!r}; choose one of {', '.join(SAMPLE_FILES)}")
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def sample_lines() -> list[tuple[str, str]]:
    """Every line of every sample log, as ``(file name, line)`` pairs, in file order."""
    return [(name, line) for name in SAMPLE_FILES for line in sample_text(name).splitlines() if line.strip()]
