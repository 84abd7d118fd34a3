"""Request-body validation against the official swagger, compiled once per process.

Each definition is turned into a self-contained JSON schema (``$ref`` inlined) and a ``jsonschema.Draft4Validator``
built at import of the app, so the hot path (250 signals per POST) only runs ``is_valid``; the slower error
walk happens only for bodies that fail. ``null`` optional fields are dropped first: they count as absent.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache
from typing import Any

import jsonschema

from cscapi._spec import load_capi_spec, load_lapi_spec

__all__ = ["BodyValidator", "compile_schema", "drop_nulls", "validator_for"]

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


Predicate = Callable[[Any], bool]

_TYPES: dict[str, Predicate] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),  # Draft 4: 1.0 is not an integer
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "null": lambda v: v is None,
}
_ANNOTATIONS = {"title", "description", "format", "readOnly", "default", "example", "x-nullable", "x-omitempty"}
_SUPPORTED = _ANNOTATIONS | {
    "type",
    "properties",
    "required",
    "items",
    "pattern",
    "minLength",
    "maxLength",
    "additionalProperties",
    "allOf",
}


def compile_schema(schema: Any) -> Predicate | None:
    """A plain-Python predicate equivalent to Draft 4 validation of ``schema``, or ``None`` if it uses a keyword
    this small compiler does not handle (then jsonschema alone is used). Keywords apply only to their own JSON type,
    as in JSON Schema; ``format`` is an annotation (jsonschema does not check it without a format checker)."""
    if not isinstance(schema, dict) or set(schema) - _SUPPORTED:
        return None
    checks: list[Predicate] = []
    kind = schema.get("type")
    if kind is not None:
        if not isinstance(kind, str) or kind not in _TYPES:
            return None
        checks.append(_TYPES[kind])
    required = schema.get("required")
    if required is not None:
        keys = tuple(required)
        checks.append(lambda v: not isinstance(v, dict) or all(k in v for k in keys))
    props = schema.get("properties")
    if props is not None:
        compiled_props: dict[str, Predicate] = {}
        for key, sub in props.items():
            fn = compile_schema(sub)
            if fn is None:
                return None
            compiled_props[key] = fn
        extra = schema.get("additionalProperties")
        extra_fn: Predicate | None = None
        if isinstance(extra, dict):
            extra_fn = compile_schema(extra)
            if extra_fn is None:
                return None
        elif extra is not None and extra is not True:
            return None

        def check_props(v: Any) -> bool:
            if not isinstance(v, dict):
                return True
            for key, value in v.items():
                fn = compiled_props.get(key, extra_fn)
                if fn is not None and not fn(value):
                    return False
            return True

        checks.append(check_props)
    elif "additionalProperties" in schema:
        extra = schema["additionalProperties"]
        if not isinstance(extra, dict):
            return None
        only = compile_schema(extra)
        if only is None:
            return None
        checks.append(lambda v: not isinstance(v, dict) or all(only(x) for x in v.values()))
    if "items" in schema:
        item_fn = compile_schema(schema["items"])
        if item_fn is None:
            return None
        checks.append(lambda v: not isinstance(v, list) or all(map(item_fn, v)))
    if "pattern" in schema:
        regex = re.compile(schema["pattern"])
        checks.append(lambda v: not isinstance(v, str) or regex.search(v) is not None)
    if "minLength" in schema:
        low = int(schema["minLength"])
        checks.append(lambda v: not isinstance(v, str) or len(v) >= low)
    if "maxLength" in schema:
        high = int(schema["maxLength"])
        checks.append(lambda v: not isinstance(v, str) or len(v) <= high)
    if "allOf" in schema:
        parts = [compile_schema(sub) for sub in schema["allOf"]]
        if any(p is None for p in parts):
            return None
        checks.extend(p for p in parts if p is not None)
    if not checks:
        return lambda v: True
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        c0, c1 = checks
        return lambda v: c0(v) and c1(v)
    if len(checks) == 3:
        d0, d1, d2 = checks
        return lambda v: d0(v) and d1(v) and d2(v)
    return lambda v: all(check(v) for check in checks)


class BodyValidator:
    """A compiled validator for one swagger definition; :meth:`errors` returns readable messages naming the field.

    ``is_valid`` runs the plain-Python predicate from :func:`compile_schema` (much faster than jsonschema on a
    signal: docs/benchmarks.md); a body it refuses is re-checked by jsonschema, which also writes the error messages.
    """

    def __init__(self, schema: dict[str, Any], name: str) -> None:
        self.name = name
        self.schema = schema
        self._validator = jsonschema.Draft4Validator(schema)
        self._fast = compile_schema(schema)

    def is_valid(self, body: Any) -> bool:
        """True when ``body`` fits the definition (the fast path)."""
        if self._fast is not None and self._fast(body):
            return True
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
