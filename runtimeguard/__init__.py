"""runtimeguard: see and control what processes do on Linux, through eBPF."""

# The one place the version is written: pyproject.toml reads it for the wheel's
# metadata and runtimeguard/_build_native.py records it in the extension.
__version__ = "0.1.0"


def _check_native_extension() -> None:
    """Every module reaches ``_native`` through this package, so checking here,
    before any of them imports it, covers them all: the wire structs and the C
    API change between versions, and an extension from another version would
    misread events rather than fail."""
    import importlib

    try:
        # Not `from . import _native`, whose ImportError for a missing module
        # does not say which module was missing.
        _native = importlib.import_module(f"{__name__}._native")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}._native":
            raise
        raise ImportError(f"runtimeguard {__version__}: its native extension (runtimeguard/_native*.so) is not "
                          "built; build it in the source tree with `make build`, or install the wheel") from e
    recorded_version = getattr(_native.lib, "rg_package_version", None)
    built_from = None if recorded_version is None else _native.ffi.string(recorded_version()).decode()
    if built_from != __version__:
        origin = ("a runtimeguard older than the version check" if built_from is None
                  else f"runtimeguard {built_from}")
        raise ImportError(f"runtimeguard {__version__} cannot use the native extension {_native.__file__}: it was "
                          f"built from {origin}; rebuild it with `make build` in the source tree, or reinstall "
                          f"the wheel (pip install --force-reinstall runtimeguard-{__version__}-*.whl)")


_check_native_extension()
del _check_native_extension

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
