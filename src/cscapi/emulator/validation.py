"""Request-body validation against the official swagger, compiled once per process.

Each definition is turned into a self-contained JSON schema (``$ref`` inlined) and a ``jsonschema.Draft4Validator``
built at import of the app, so the hot path (250 signals per POST) only runs ``is_valid``; the slower error
walk happens only for bodies that fail. ``null`` optional fields are dropped first: they count as absent.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import jsonschema

from cscapi._spec import load_capi_spec, load_lapi_spec

__all__ = ["BodyValidator", "drop_nulls", "validator_for"]

_MAX_REPORTED = 10


def _inline(node: Any, definitions: dict[str, Any], stack: tuple[str, ...] = ()) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/definitions/"):
            name = ref.rsplit("/", 1)[1]
            if name in stack:  # recursive definition: keep the reference (none in the CAPI spec)
                return node
            return _inline(definitions[name], definitions, (*stack, name))
        return {k: _inline(v, definitions, stack) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, definitions, stack) for v in node]
    return node


def drop_nulls(value: Any) -> Any:
    """A copy of ``value`` with every ``null`` object member removed, recursively (array ``null`` items are kept)."""
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value]
    return value


def _path(error: jsonschema.ValidationError, root: str) -> str:
    out = root
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


class BodyValidator:
    """A compiled validator for one swagger definition; :meth:`errors` returns readable messages naming the field."""

    def __init__(self, schema: dict[str, Any], name: str) -> None:
        self.name = name
        self.schema = schema
        self._validator = jsonschema.Draft4Validator(schema)

    def is_valid(self, body: Any) -> bool:
        """True when ``body`` fits the definition (the fast path)."""
        return bool(self._validator.is_valid(body))

    def errors(self, body: Any, root: str = "body") -> list[str]:
        """Messages such as ``body[3].source.value: 12 is not of type 'string'`` (at most ten, most specific first)."""
        found = sorted(self._validator.iter_errors(body), key=lambda e: (list(e.absolute_path), e.message))
        out: list[str] = []
        for error in found[:_MAX_REPORTED]:
            best = jsonschema.exceptions.best_match([error])
            message = best.message
            if len(message) > 200:
                message = message[:200] + "..."
            out.append(f"{_path(best, root)}: {message}")
        return out


@cache
def validator_for(definition: str, spec: str = "capi") -> BodyValidator:
    """The compiled validator for ``definition`` of the ``capi`` or ``lapi`` swagger (built once, then cached)."""
    document = load_capi_spec() if spec == "capi" else load_lapi_spec()
    definitions = document["definitions"]
    schema = _inline(definitions[definition], definitions)
    return BodyValidator(schema, definition)
