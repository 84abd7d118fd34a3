"""Every ``CAPIError`` subclass survives pickling on its own (a process pool, a multiprocessing queue), keyword-only
``__init__`` arguments included: same class, message, hint, status and extra attributes."""

from __future__ import annotations

import importlib
import inspect
import pickle
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from cscapi.errors import CAPIError

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules_defining_errors() -> list[str]:
    """Every module under src/cscapi whose source defines a class deriving from an ``...Error``."""
    found = []
    for path in sorted((SRC / "cscapi").rglob("*.py")):
        if re.search(r"^class \w+\([^)]*Error\b", path.read_text(encoding="utf-8"), re.M):
            found.append(".".join(path.relative_to(SRC).with_suffix("").parts))
    return found


def _all_subclasses() -> list[type[CAPIError]]:
    for name in _modules_defining_errors():
        importlib.import_module(name)
    seen: list[type[CAPIError]] = []
    todo: list[type[CAPIError]] = [CAPIError]
    while todo:
        cls = todo.pop()
        if cls not in seen:
            seen.append(cls)
            todo.extend(cls.__subclasses__())
    return sorted((c for c in seen if c.__module__.startswith("cscapi")), key=lambda c: c.__qualname__)


def _sample(name: str, annotation: Any) -> Any:
    text = str(annotation)
    if "datetime" in text:
        return datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    if "float" in text:
        return 12.5
    if "int" in text:
        return 1024
    return f"{name}-value"


def _make(cls: type[CAPIError]) -> CAPIError:
    """An instance with every keyword argument given (required or not), so extra attributes are set."""
    kwargs = {}
    for param in list(inspect.signature(cls.__init__).parameters.values())[2:]:
        if param.kind is inspect.Parameter.KEYWORD_ONLY and param.name != "hint":
            kwargs[param.name] = _sample(param.name, param.annotation)
    return cls("something failed", **kwargs)


SUBCLASSES = _all_subclasses()


def test_the_subclasses_of_other_modules_are_found() -> None:
    names = {c.__name__ for c in SUBCLASSES}
    assert {"LoginBannedError", "ResponseTooLargeError", "IncompatibleStorageError", "EmulatorAdminError"} <= names
    assert len(SUBCLASSES) >= 25


@pytest.mark.parametrize("cls", SUBCLASSES, ids=lambda c: c.__name__)
def test_every_error_pickles_on_its_own(cls: type[CAPIError]) -> None:
    error = _make(cls)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    assert (copy.message, copy.hint, copy.status_code, str(copy)) == (
        error.message,
        error.hint,
        error.status_code,
        str(error),
    )
    assert vars(copy) == vars(error)
    assert copy.args == error.args
