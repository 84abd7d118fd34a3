"""Fault injection and request counters: what goes wrong with each request, and how many were answered."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from cscapi.emulator.config import FaultSpec
from cscapi.emulator.state.base import StateContext

__all__ = ["FaultAction", "Faults"]


@dataclass(frozen=True)
class FaultAction:
    """What to do to one request: wait ``latency`` seconds, then ``kind`` (``None``, ``drop``, ``429`` or ``5xx``)."""

    latency: float = 0.0
    kind: str | None = None
    status: int = 500
    retry_after: int = 0


_NO_FAULT = FaultAction()


class Faults:
    """The installed faults per endpoint (``specs``), their random source, and the request and bug counters."""

    def __init__(self, ctx: StateContext) -> None:
        self.ctx = ctx
        self.rng = random.Random(ctx.config.seed ^ 0x5EED)
        self.request_counts: Counter[tuple[str, int]] = Counter()
        self.internal_errors = 0
        self.specs: dict[str, FaultSpec] = {}
        self.reset()

    def reset(self) -> None:
        """Back to the configured faults, counters at zero (the random source goes on)."""
        self.specs = {k: FaultSpec.from_dict(v.to_dict()) for k, v in self.ctx.config.faults.items()}
        self.request_counts.clear()
        self.internal_errors = 0

    def set_fault(self, endpoint: str, spec: FaultSpec) -> None:
        """Install (or replace) the fault of one endpoint (``*`` = every CAPI endpoint without its own)."""
        with self.ctx.lock:
            self.specs[endpoint] = spec

    def clear_faults(self, endpoint: str | None = None) -> None:
        """Remove one endpoint's fault, or all of them."""
        with self.ctx.lock:
            if endpoint is None:
                self.specs.clear()
            else:
                self.specs.pop(endpoint, None)

    def take_fault(self, endpoint: str) -> FaultAction:
        """Decide what goes wrong with this request (counts down ``remaining``)."""
        with self.ctx.lock:
            name = endpoint if endpoint in self.specs else "*"
            spec = self.specs.get(name)
            if spec is None:
                return _NO_FAULT
            if spec.remaining is not None:
                spec.remaining -= 1
                if spec.remaining <= 0:
                    del self.specs[name]
            rng = self.rng
            kind: str | None = None
            if spec.drop_rate and rng.random() < spec.drop_rate:
                kind = "drop"
            elif spec.rate_limit_rate and rng.random() < spec.rate_limit_rate:
                kind = "429"
            elif spec.error_rate and rng.random() < spec.error_rate:
                kind = "5xx"
            if kind is None and not spec.latency:
                return _NO_FAULT
            return FaultAction(spec.latency, kind, spec.error_status, spec.retry_after)

    def token_lifetime(self) -> float | None:
        """The shortened token lifetime a ``login`` (or ``*``) fault asks for, if any."""
        spec = self.specs.get("login") or self.specs.get("*")
        if spec is None or spec.token_lifetime is None:
            return None
        return float(spec.token_lifetime)

    def count_request(self, endpoint: str, status: int) -> None:
        """Count one answered request (admin ``/admin/requests``)."""
        with self.ctx.lock:
            self.request_counts[(endpoint, status)] += 1
