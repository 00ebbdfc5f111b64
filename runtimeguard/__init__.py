"""runtimeguard: see and control what processes do on Linux, through eBPF."""

from .capabilities import Capabilities, Feature, capabilities
from .errors import BPFError, EnvironmentSetupError, PrivilegeError, RuntimeGuardError, TracerStateError
from .schema import (
    EVENT_IDS,
    SCHEMA_VERSION,
    Container,
    Event,
    EventRecord,
    Process,
    ProcessRef,
    TargetContext,
    Workload,
)
from .tracer import ALL_EVENTS, DEFAULT_EVENTS, Tracer, TracerStats
from .batch import EventBatch
from .audit import AuditLogError, AuditLogger, NotificationTracker, read_audit_log
from .policy import Policy, PolicyError, check_policy
from .guard import Guard, GuardResult, GuardStats, guard

__all__ = [
    "ALL_EVENTS", "BPFError", "Capabilities", "Container", "DEFAULT_EVENTS", "EVENT_IDS", "EnvironmentSetupError",
    "Event", "EventBatch", "EventRecord", "Feature", "PrivilegeError", "Process", "ProcessRef", "RuntimeGuardError", "SCHEMA_VERSION",
    "TargetContext", "Tracer", "TracerStateError", "TracerStats", "Workload", "capabilities",
    "AuditLogError", "AuditLogger", "NotificationTracker", "read_audit_log", "Policy", "PolicyError",
    "check_policy", "Guard", "GuardResult", "GuardStats", "guard",
]
