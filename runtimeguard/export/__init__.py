"""Where events go besides the caller: exporters a fleet already runs.

Every exporter is a *sink*: ``write(record)`` takes one ``EventRecord`` and
returns at once (it never blocks the consumer that polls the ring buffer;
what it cannot keep up with it drops and counts), and ``close()`` flushes
what it holds and releases it. ``Guard`` and the CLI's ``trace``, ``watch``
and ``run`` hand every event to each sink they were given.

- :mod:`runtimeguard.export.otlp`: OpenTelemetry logs over OTLP/HTTP
  (extra ``runtimeguard[otlp]``).
- :mod:`runtimeguard.export.metrics`: Prometheus metrics (extra
  ``runtimeguard[metrics]``).
- :mod:`runtimeguard.export.summary`: a Markdown report of a guarded run.
"""

from __future__ import annotations

from typing import Protocol

from ..schema import EventRecord

__all__ = ["Sink"]


class Sink(Protocol):
    def write(self, record: EventRecord) -> None:
        """Takes one event; never blocks, never raises for the sink's own failures."""

    def close(self) -> None:
        """Flushes and releases; the sink takes no event after."""
