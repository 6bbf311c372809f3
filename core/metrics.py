"""In-process counters, gauges and latency samples, rendered in the Prometheus text format."""

from __future__ import annotations

from collections import defaultdict, deque

import numpy as np

__all__ = ["Metrics"]


class Metrics:
    """Service metrics. Not thread-safe: update it from the event loop only."""

    def __init__(self, window: int = 2048) -> None:
        self.counters: defaultdict[str, float] = defaultdict(float)
        self.gauges: dict[str, float] = {}
        self.samples: defaultdict[str, deque[float]] = defaultdict(lambda: deque(maxlen=window))

    def inc(self, name: str, value: float = 1.0) -> None:
        """Add ``value`` to counter ``name``."""
        self.counters[name] += value

    def set_gauge(self, name: str, value: float) -> None:
        """Set gauge ``name``."""
        self.gauges[name] = value

    def set_gauge_max(self, name: str, value: float) -> None:
        """Raise gauge ``name`` to ``value`` if larger."""
        self.gauges[name] = max(self.gauges.get(name, 0.0), value)

    def observe(self, name: str, value: float) -> None:
        """Record one sample of ``name`` (kept in a sliding window)."""
        self.samples[name].append(value)

    def quantile(self, name: str, q: float) -> float | None:
        """The ``q`` quantile of the recent samples of ``name``, or None without samples."""
        values = self.samples.get(name)
        if not values:
            return None
        return float(np.quantile(np.fromiter(values, dtype=float), q))

    def render(self) -> str:
        """Prometheus exposition text."""
        lines: list[str] = []
        for name, value in sorted(self.counters.items()):
            lines += [f"# TYPE omi_letta_{name} counter", f"omi_letta_{name} {value:g}"]
        for name, value in sorted(self.gauges.items()):
            lines += [f"# TYPE omi_letta_{name} gauge", f"omi_letta_{name} {value:g}"]
        for name in sorted(self.samples):
            lines.append(f"# TYPE omi_letta_{name} summary")
            for q in (0.5, 0.95, 0.99):
                quantile = self.quantile(name, q)
                if quantile is not None:
                    lines.append(f'omi_letta_{name}{{quantile="{q}"}} {quantile:.4f}')
            lines.append(f"omi_letta_{name}_count {len(self.samples[name])}")
        return "\n".join(lines) + "\n"
