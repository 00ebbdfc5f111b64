"""The exceptions runtimeguard raises. Each says what failed and why."""


class RuntimeGuardError(Exception):
    """Base of every runtimeguard error."""


class PrivilegeError(RuntimeGuardError, PermissionError):
    """The process lacks a capability it needs; nothing was loaded."""

    def __init__(self, missing: list[str], detail: str = ""):
        self.missing = missing
        names = ", ".join(missing[:-1]) + " and " + missing[-1] if len(missing) > 1 else "".join(missing)
        text = f"loading BPF programs needs {names} (run as root)"
        super().__init__(text + (f": {detail}" if detail else ""))


class EnvironmentSetupError(RuntimeGuardError):
    """A kernel interface runtimeguard needs is missing and could not be set up."""


class BPFError(RuntimeGuardError):
    """Loading, attaching or driving a BPF program failed.

    The message names the step and the program or map, and carries what
    libbpf and the verifier said.
    """

    def __init__(self, message: str, errno: int = 0):
        self.errno = errno
        super().__init__(message)


class TracerStateError(RuntimeGuardError):
    """The tracer was used in a state that does not allow it (closed, forked)."""


class ProbeError(RuntimeGuardError, ValueError):
    """A function probe cannot be attached as written: its file, symbol or
    USDT note is missing, or the spec is malformed. Nothing was attached."""
