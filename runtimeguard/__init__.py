"""runtimeguard: see and control what processes do on Linux, through eBPF."""

from .errors import BPFError, EnvironmentSetupError, PrivilegeError, RuntimeGuardError, TracerStateError
from .schema import (
    EVENT_IDS,
    SCHEMA_VERSION,
    Container,
    Event,
    Process,
    ProcessRef,
    TargetContext,
    Workload,
)
from .tracer import ALL_EVENTS, DEFAULT_EVENTS, Tracer, TracerStats

__all__ = [
    "ALL_EVENTS", "BPFError", "Container", "DEFAULT_EVENTS", "EVENT_IDS", "EnvironmentSetupError", "Event",
    "PrivilegeError", "Process", "ProcessRef", "RuntimeGuardError", "SCHEMA_VERSION", "TargetContext",
    "Tracer", "TracerStateError", "TracerStats", "Workload", "capabilities",
]


def capabilities():
    """What this kernel allows runtimeguard to do, probed once (see capabilities.py)."""
    from .capabilities import capabilities as probe

    return probe()
