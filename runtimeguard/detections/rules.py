"""The default detection rules, each with its MITRE ATT&CK tactic and technique.

Every list a rule matches against is an option of its own, tuned in the
YAML (default.yaml holds these defaults, documented). Names of executables
(shells, interpreters, downloaders) are shell-style patterns matched against
the executable's file name, both as exec'd and as resolved (``/bin/sh`` is
``dash`` here); paths are ``paths.PathPattern``s.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from typing import Iterable, Iterator, Literal, Optional, Union

import msgspec

from ..schema import EVENT_IDS, PTRACE_REQUESTS, Event, FdKind, ProcessExecData
from .engine import (
    Finding,
    Names,
    Recent,
    Rule,
    RuleConfigError,
    RuleContext,
    RuleException,
    RuleOptions,
    Technique,
    basename,
    parse_address,
    parse_network,
)
from .paths import PathSet, pattern_error

__all__ = [
    "DEFAULT_RULES", "CloudMetadata", "CredentialRead", "DownloadExecute", "ExecFromTemp", "InterpreterShell",
    "PersistenceWrite", "ProcessMemoryAccess", "PtraceAttach", "ReverseShell", "UnauthorizedConnection",
]

_EXIT, _OPEN, _CONNECT = (EVENT_IDS[n] for n in ("process_exit", "file_open", "net_connect"))

# ---- ATT&CK ----

UNIX_SHELL = Technique("TA0002", "Execution", "T1059.004", "Unix Shell")
MALICIOUS_FILE = Technique("TA0002", "Execution", "T1204.002", "Malicious File")
CRON = Technique("TA0003", "Persistence", "T1053.003", "Cron")
SYSTEMD_SERVICE = Technique("TA0003", "Persistence", "T1543.002", "Systemd Service")
SHELL_CONFIG = Technique("TA0003", "Persistence", "T1546.004", "Unix Shell Configuration Modification")
AUTHORIZED_KEYS = Technique("TA0003", "Persistence", "T1098.004", "SSH Authorized Keys")
PTRACE = Technique("TA0004", "Privilege Escalation", "T1055.008", "Ptrace System Calls")
PROC_MEMORY = Technique("TA0004", "Privilege Escalation", "T1055.009", "Proc Memory")
INJECTION = Technique("TA0004", "Privilege Escalation", "T1055", "Process Injection")
REFLECTIVE_LOADING = Technique("TA0005", "Defense Evasion", "T1620", "Reflective Code Loading")
PROC_FILESYSTEM = Technique("TA0006", "Credential Access", "T1003.007", "Proc Filesystem")
CREDENTIALS_IN_FILES = Technique("TA0006", "Credential Access", "T1552.001", "Credentials In Files")
PRIVATE_KEYS = Technique("TA0006", "Credential Access", "T1552.004", "Private Keys")
METADATA_API = Technique("TA0006", "Credential Access", "T1552.005", "Cloud Instance Metadata API")
INGRESS_TOOL_TRANSFER = Technique("TA0011", "Command and Control", "T1105", "Ingress Tool Transfer")
APPLICATION_LAYER = Technique("TA0011", "Command and Control", "T1071", "Application Layer Protocol")

# ---- default lists ----

SHELLS = ("sh", "bash", "rbash", "dash", "zsh", "ksh", "ksh93", "mksh", "ash", "csh", "tcsh", "fish", "yash")
INTERPRETERS = ("python*", "pypy*", "node", "nodejs", "deno", "bun", "ruby*", "perl*", "php*", "java", "lua*",
                "luajit", "Rscript", "tclsh*", "pwsh")
DOWNLOADERS = ("curl", "wget", "wget2", "fetch", "aria2c", "axel", "lwp-download", "lftp", "tftp")
# Linkers and compilers write executables as their job.
BUILD_TOOLS = ("ld", "ld.*", "collect2", "mold", "lld", "rustc", "go", "link", "cc1*")
TEMP_DIRS = ("/tmp/", "/var/tmp/", "/dev/shm/", "/run/shm/")
CREDENTIAL_FILES = (
    "/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-", "/etc/security/opasswd",
    "~/.aws/credentials", "~/.config/gcloud/credentials.db", "~/.config/gcloud/access_tokens.db",
    "~/.config/gcloud/application_default_credentials.json", "~/.azure/accessTokens.json",
    "~/.azure/msal_token_cache.json", "~/.docker/config.json", "~/.kube/config", "~/.netrc", "~/.git-credentials",
    "~/.pgpass", "~/.my.cnf", "~/.npmrc", "~/.pypirc", "~/.vault-token",
    "/var/run/secrets/kubernetes.io/serviceaccount/token", "/run/secrets/kubernetes.io/serviceaccount/token",
)
PRIVATE_KEY_FILES = (
    "~/.ssh/id_*", "~/.ssh/*.pem", "~/.ssh/*.key", "/etc/ssh/ssh_host_*_key", "/etc/ssl/private/",
    "/etc/pki/tls/private/", "~/.gnupg/private-keys-v1.d/", "~/.gnupg/secring.gpg",
)
CRON_PATHS = ("/etc/crontab", "/etc/anacrontab", "/etc/cron.d/", "/etc/cron.hourly/", "/etc/cron.daily/",
              "/etc/cron.weekly/", "/etc/cron.monthly/", "/var/spool/cron/", "/var/spool/cron/crontabs/")
SYSTEMD_PATHS = ("/etc/systemd/system/", "/etc/systemd/user/", "/usr/lib/systemd/system/", "/lib/systemd/system/",
                 "/usr/local/lib/systemd/system/", "~/.config/systemd/user/", "~/.local/share/systemd/user/")
SHELL_PROFILE_PATHS = ("~/.bashrc", "~/.bash_profile", "~/.bash_login", "~/.bash_logout", "~/.profile", "~/.zshrc",
                       "~/.zshenv", "~/.zprofile", "~/.zlogin", "~/.config/fish/config.fish", "/etc/profile",
                       "/etc/profile.d/", "/etc/bash.bashrc", "/etc/bashrc", "/etc/zsh/")
AUTHORIZED_KEYS_PATHS = ("~/.ssh/authorized_keys", "~/.ssh/authorized_keys2")
METADATA_ADDRESSES = ("169.254.169.254", "fd00:ec2::254", "169.254.170.2", "100.100.100.200")
# Programs that read keys and password hashes as their job: OpenSSH, and the
# PAM and account tools (both the merged-/usr and the split layouts' paths).
KEY_READERS = RuleException(executable=(
    "/usr/sbin/sshd", "/usr/bin/ssh", "/usr/bin/scp", "/usr/bin/sftp", "/usr/bin/ssh-add", "/usr/bin/ssh-agent",
    "/usr/bin/ssh-keygen", "/usr/bin/ssh-keyscan", "/usr/lib/openssh/*"))
ACCOUNT_TOOLS = RuleException(executable=(
    "/usr/bin/sudo", "/usr/bin/su", "/bin/su", "/usr/bin/login", "/bin/login", "/usr/bin/passwd", "/usr/bin/chage",
    "/usr/sbin/chpasswd", "/usr/sbin/unix_chkpwd", "/sbin/unix_chkpwd", "/usr/sbin/useradd", "/usr/sbin/usermod",
    "/usr/sbin/userdel", "/usr/sbin/cron", "/usr/sbin/crond", "/usr/lib/systemd/systemd*"))
# Native package managers install units and cron files as their job.
PACKAGE_MANAGERS = RuleException(executable=(
    "/usr/bin/dpkg", "/usr/bin/rpm", "/usr/sbin/apk", "/sbin/apk", "/usr/bin/pacman"))
# runc re-executes itself from a memfd on every container start.
RUNC_CLONE = RuleException(executable=("/memfd:runc_cloned:*",))

# An open refused this way was still tried: worth reporting. Other failures
# (ENOENT above all) touched nothing.
_REFUSED = (-errno.EACCES, -errno.EPERM)
_SUMMARY_ARGV = 200


# ---- what events say ----

def _reads(flags: int) -> bool:
    return not flags & os.O_PATH and flags & os.O_ACCMODE in (os.O_RDONLY, os.O_RDWR)


def _writes(flags: int, syscall: str) -> bool:
    return syscall == "creat" or flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR) or bool(
        flags & (os.O_CREAT | os.O_TRUNC))


def _open_paths(d) -> tuple[Optional[str], ...]:
    """The paths an open names: the file really opened, and the absolute
    path the caller passed (a symlink's own name; a refused open's only one)."""
    return d.resolved_path, d.path if d.path.startswith("/") else None


def _script_path(d: ProcessExecData) -> Optional[str]:
    """The file an exec was given, absolute: for a script, the script (the
    resolved executable is then its interpreter)."""
    if d.executable.startswith("/"):
        return os.path.normpath(d.executable)
    return os.path.normpath(os.path.join(d.cwd, d.executable)) if d.cwd else None


def _exec_names(d: ProcessExecData) -> tuple[str, ...]:
    return tuple(n for n in (basename(d.executable), basename(d.resolved_executable)) if n)


def _argv(d: ProcessExecData) -> str:
    text = " ".join(d.argv) if d.argv else d.executable
    return text if len(text) <= _SUMMARY_ARGV else text[:_SUMMARY_ARGV] + "…"


def _who(ev: Event) -> str:
    """The acting process, in words."""
    wl = ev.workload
    name = basename(wl.process.executable) if wl is not None and wl.process.executable else ev.comm
    return f"{name or '?'} (pid {ev.pid})"


def _outcome(result: int) -> str:
    return "" if result >= 0 else f" (failed: {errno.errorcode.get(-result, -result)})"


def _target(ev: Event) -> str:
    tc = ev.target_context
    return tc.formatted if tc is not None else ""


def _own_process(ev: Event, target: int) -> bool:
    """target is the acting process or one of its threads."""
    return target in (ev.pid, ev.tid) or os.path.exists(f"/proc/{ev.pid}/task/{target}")


def _ok_exec(ev: Event) -> Optional[ProcessExecData]:
    d = ev.data
    return d if d.return_code == 0 else None


def _patterns_problems(field: str, patterns: Iterable[str]) -> Iterator[tuple[str, str]]:
    for i, p in enumerate(patterns):
        why = pattern_error(p)
        if why is not None:
            yield f"{field}[{i}]", why


def _names_problems(field: str, names: Iterable[str]) -> Iterator[tuple[str, str]]:
    for i, n in enumerate(names):
        if not n or "/" in n:
            yield f"{field}[{i}]", f"{n!r} is not a file name pattern (no '/', not empty)"


# ---- shells ----

class InterpreterShellOptions(RuleOptions):
    shells: tuple[str, ...] = SHELLS
    """File names of shells."""
    parents: tuple[str, ...] = INTERPRETERS
    """File names of the interpreters and agents whose starting a shell is reported."""

    def problems(self):
        yield from super().problems()
        yield from _names_problems("shells", self.shells)
        yield from _names_problems("parents", self.parents)


class InterpreterShell(Rule):
    """A shell started by an interpreter or an agent (Python, Node, Ruby,
    Perl, ...), not by another shell: code running in the interpreter asked
    for a shell (a command injection, an agent's tool call, a web shell)."""

    id = "interpreter_shell"
    title = "Shell started by an interpreter or agent"
    techniques = (UNIX_SHELL,)
    severity = "low"
    events = frozenset({"process_exec"})
    Options = InterpreterShellOptions

    def __init__(self, options=None):
        super().__init__(options)
        self._shells, self._parents = Names(self.options.shells), Names(self.options.parents)

    def check(self, ev: Event, ctx: RuleContext) -> Iterator[Finding]:
        d = _ok_exec(ev)
        shell = d and self._shells.first(_exec_names(d))
        if not shell:
            return
        wl = ev.workload
        parent = wl.process.parent if wl is not None else None
        if parent is None:
            return
        names = tuple(n for n in (basename(parent.executable), parent.name) if n)
        if self._shells.first(names) or not self._parents.first(names):
            return
        who = f"{names[0]} (pid {parent.pid})"
        yield Finding(
            summary=f"{shell} started by {who}: {_argv(d)}",
            description=f"The interpreter {who} started the shell {shell} (pid {ev.pid}): code running in the "
                        f"interpreter, or an agent's tool, runs shell commands.",
            events=(ev,))


class ReverseShellOptions(RuleOptions):
    shells: tuple[str, ...] = SHELLS
    socket_kinds: tuple[FdKind, ...] = ("inet_socket",)
    """What stdin or stdout must be for the shell to be reported."""
    connect_window_s: float = 60.0
    """How long before the exec a connect by the shell's process (or its
    parent) is taken as the socket's, to name the other end."""

    def problems(self):
        yield from super().problems()
        yield from _names_problems("shells", self.shells)
        if not 0 <= self.connect_window_s <= 3600:
            yield "connect_window_s", "must be between 0 and 3600 seconds"


class ReverseShell(Rule):
    """A shell whose stdin or stdout is a network socket: whoever is at the
    other end types its commands (a reverse shell, or a bind shell). Falco's
    "Redirect STDOUT/STDIN to Network Connection" and Elastic's reverse
    shell rules map this to Execution, T1059; the shell makes it T1059.004.
    The connection is also command and control (T1071, Application Layer
    Protocol), which the description says."""

    id = "reverse_shell"
    title = "Reverse shell"
    techniques = (UNIX_SHELL,)
    severity = "critical"
    events = frozenset({"process_exec", "net_connect"})
    Options = ReverseShellOptions

    def __init__(self, options=None):
        super().__init__(options)
        # Every process's connects pass through here: few kept per process.
        self._connects = Recent(self.options.connect_window_s, max_keys=4096, max_per_key=4)
        self._shells = Names(self.options.shells)

    def check(self, ev: Event, ctx: RuleContext) -> Iterator[Finding]:
        if ev.id == _CONNECT:
            if ev.data.result in (0, -errno.EINPROGRESS):
                self._connects.add(ev.entity_id, ev.timestamp, ev)
            return
        d = _ok_exec(ev)
        shell = d and self._shells.first(_exec_names(d))
        if not shell:
            return
        kinds = self.options.socket_kinds
        ends = [name for name, kind in (("stdin", d.stdin), ("stdout", d.stdout)) if kind in kinds]
        if not ends:
            return
        earlier = [c for key in (ev.entity_id, d.parent_entity_id) if key
                   for t, c in self._connects.within(key, ev.timestamp) if t <= ev.timestamp]
        connect = max(earlier, key=lambda c: c.timestamp) if earlier else None
        peer = f" connected to {_target(connect)}" if connect is not None else ""
        yield Finding(
            summary=f"reverse shell: {shell} (pid {ev.pid}) with its {' and '.join(ends)} on a network socket"
                    f"{peer}: {_argv(d)}",
            description=f"The shell {shell} (pid {ev.pid}) started with its {' and '.join(ends)} on a network "
                        f"socket{peer}: whoever is at the other end of the connection runs commands on this "
                        f"host (T1059.004, and command and control over the connection, T1071).",
            events=(connect, ev) if connect is not None else (ev,))


# ---- other processes' memory ----

MemoryMethod = Literal["proc_mem_open", "process_vm_readv", "process_vm_writev", "proc_environ_open"]


class ProcessMemoryOptions(RuleOptions):
    methods: tuple[MemoryMethod, ...] = ("proc_mem_open", "process_vm_readv")
    """Which ways into another process's memory are reported."""


class ProcessMemoryAccess(Rule):
    """A process reading another process's memory: opening /proc/<pid>/mem
    or calling process_vm_readv on it, as credential dumpers do with the
    memory of sshd, a browser or an agent holding keys. A process's own
    memory (/proc/self/mem, its threads') is benign and never reported.
    Writing into another process's memory (/proc/<pid>/mem opened for
    writing, process_vm_writev when listed) is process injection."""

    id = "process_memory_access"
    title = "Another process's memory read"
    techniques = (PROC_FILESYSTEM, PROC_MEMORY, INJECTION)
    severity = "high"
    events = frozenset({"process_memory"})
    Options = ProcessMemoryOptions

    def check(self, ev: Event, ctx: RuleContext) -> Iterator[Finding]:
        d = ev.data
        if d.method not in self.options.methods or not d.target_pid or _own_process(ev, d.target_pid):
            return
        technique = None
        verb = "read"
        if d.method == "process_vm_writev":
            technique, verb = INJECTION, "wrote into"
        elif d.method == "proc_mem_open" and d.flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR):
            technique, verb = PROC_MEMORY, "opened for writing"
        elif d.method == "proc_mem_open":
            verb = "opened"
        target = _target(ev) or f"pid {d.target_pid}"
        yield Finding(
            summary=f"{_who(ev)} {verb} the memory of {target} ({d.method}){_outcome(d.result)}",
            description=f"{_who(ev)} {verb} the memory of another process, {target}, through {d.method}: "
                        f"a process's memory holds its secrets (keys, tokens, passwords){_outcome(d.result)}.",
            events=(ev,), technique=technique, key=(d.target_pid, d.method))


class PtraceAttachOptions(RuleOptions):
    requests: tuple[str, ...] = ("PTRACE_ATTACH", "PTRACE_SEIZE")
    """The ptrace requests reported, by name."""

    def problems(self):
        yield from super().problems()
        known = set(PTRACE_REQUESTS.values())
        for i, r in enumerate(self.requests):
            if r not in known:
                yield f"requests[{i}]", f"unknown ptrace request {r!r} (known: {', '.join(sorted(known))})"


class PtraceAttach(Rule):
    """A process attaching to another with ptrace (PTRACE_ATTACH,
    PTRACE_SEIZE): from then on it can read and change the other's memory
    and registers. PTRACE_TRACEME (a debugger's child asking to be traced)
    and requests that are not an attach are not reported."""

    id = "ptrace_attach"
    title = "ptrace attach to another process"
    techniques = (PTRACE,)
    severity = "high"
    events = frozenset({"ptrace"})
    Options = PtraceAttachOptions

    def check(self, ev: Event, ctx: RuleContext) -> Iterator[Finding]:
        d = ev.data
        name = d.request_name
        if name not in self.options.requests or d.target_pid <= 0 or _own_process(ev, d.target_pid):
            return
        target = _target(ev) or f"pid {d.target_pid}"
        yield Finding(
            summary=f"{_who(ev)} {name} {target}{_outcome(d.result)}",
            description=f"{_who(ev)} attached to {target} with {name}: a tracer can read and change the "
                        f"traced process's memory and registers, and run code in it{_outcome(d.result)}.",
            events=(ev,), key=d.target_pid)


# ---- files ----

class CredentialReadOptions(RuleOptions):
    exceptions: tuple[RuleException, ...] = (KEY_READERS, ACCOUNT_TOOLS)
    credential_files: tuple[str, ...] = CREDENTIAL_FILES
    """Files holding passwords, tokens and cloud credentials (T1552.001)."""
    private_keys: tuple[str, ...] = PRIVATE_KEY_FILES
    """Private keys (T1552.004)."""
    ignore: tuple[str, ...] = ("**/*.pub",)
    """Paths never reported, whatever matched them (public keys)."""

    def problems(self):
        yield from super().problems()
        for field in ("credential_files", "private_keys", "ignore"):
            yield from _patterns_problems(field, getattr(self, field))


class CredentialRead(Rule):
    """An open for reading of a credentials file or a private key. Opens
    refused for permission count (someone tried); opens of files that do
    not exist do not (SDKs look for their credentials files all the time)."""

    id = "credential_read"
    title = "Credentials file or private key read"
    techniques = (CREDENTIALS_IN_FILES, PRIVATE_KEYS)
    severity = "high"
    events = frozenset({"file_open"})
    Options = CredentialReadOptions

    def __init__(self, options=None):
        super().__init__(options)
        o = self.options
        self._sets = ((PathSet(o.private_keys, o.ignore), PRIVATE_KEYS, "private key"),
                      (PathSet(o.credential_files, o.ignore), CREDENTIALS_IN_FILES, "credentials file"))

    @property
    def watch_paths(self) -> tuple[str, ...]:
        return tuple(p for paths, _, _ in self._sets for p in paths.watch_roots(created=False))

    def check(self, ev: Event, ctx: RuleContext) -> Iterator[Finding]:
        d = ev.data
        if not _reads(d.flags) or (d.result < 0 and d.result not in _REFUSED):
            return
        yield from _opened_finding(ev, self._sets, "reading", "whoever reads it can act with what it holds.")


def _opened_finding(ev: Event, sets, purpose: str, consequence: str) -> Iterator[Finding]:
    """The finding for an open of the first path set's file the open reached."""
    d = ev.data
    paths = _open_paths(d)
    for matcher, technique, what in sets:
        path = matcher.first_match(paths)
        if path is not None:
            summary = f"{_who(ev)} opened the {what} {path} for {purpose}{_outcome(d.result)}"
            yield Finding(summary=summary, description=f"{summary}: {consequence}", events=(ev,),
                          technique=technique, key=path)
            return


class PersistenceWriteOptions(RuleOptions):
    exceptions: tuple[RuleException, ...] = (PACKAGE_MANAGERS,)
    cron: tuple[str, ...] = CRON_PATHS
    """Cron tables and directories (T1053.003)."""
    systemd: tuple[str, ...] = SYSTEMD_PATHS
    """systemd unit directories, system and user (T1543.002)."""
    shell_profiles: tuple[str, ...] = SHELL_PROFILE_PATHS
    """Shell start-up files (T1546.004)."""
    authorized_keys: tuple[str, ...] = AUTHORIZED_KEYS_PATHS
    """SSH authorized_keys files (T1098.004)."""
    ignore: tuple[str, ...] = ()

    def problems(self):
        yield from super().problems()
        for field in ("cron", "systemd", "shell_profiles", "authorized_keys", "ignore"):
            yield from _patterns_problems(field, getattr(self, field))


class PersistenceWrite(Rule):
    """An open for writing (or a create, or a truncate) of a file that runs
    something later on its own: a cron table, a systemd unit, a shell's
    start-up file, an authorized_keys file. Reads of them are not reported.
    Refused opens count (someone tried)."""

    id = "persistence_write"
    title = "Persistence location written"
    techniques = (CRON, SYSTEMD_SERVICE, SHELL_CONFIG, AUTHORIZED_KEYS)
    severity = "high"
    events = frozenset({"file_open"})
    Options = PersistenceWriteOptions

    def __init__(self, options=None):
        super().__init__(options)
        o = self.options
        self._sets = ((PathSet(o.cron, o.ignore), CRON, "cron table"),
                      (PathSet(o.systemd, o.ignore), SYSTEMD_SERVICE, "systemd unit"),
                      (PathSet(o.shell_profiles, o.ignore), SHELL_CONFIG, "shell start-up file"),
                      (PathSet(o.authorized_keys, o.ignore), AUTHORIZED_KEYS, "SSH authorized_keys file"))

    @property
    def watch_paths(self) -> tuple[str, ...]:
        return tuple(p for paths, _, _ in self._sets for p in paths.watch_roots())

    def check(self, ev: Event, ctx: RuleContext) -> Iterator[Finding]:
        d = ev.data
        if not _writes(d.flags, d.syscall) or (d.result < 0 and d.result not in _REFUSED):
            return
        yield from _opened_finding(ev, self._sets, "writing",
                                   "what is written there runs again later on its own (persistence).")


# ---- downloads ----

class DownloadExecuteOptions(RuleOptions):
    window_s: float = 10.0
    """How close in time the download and the run must be."""
    shells: tuple[str, ...] = SHELLS
    downloaders: tuple[str, ...] = DOWNLOADERS
    """File names of programs that fetch from the network."""
    write_dirs: tuple[str, ...] = TEMP_DIRS
    """Where a file written and then run within the window is reported."""
    ignore_writers: tuple[str, ...] = BUILD_TOOLS
    """File names of programs whose writing an executable is their job."""

    def problems(self):
        yield from super().problems()
        if not 0 < self.window_s <= 3600:
            yield "window_s", "must be more than 0 and at most 3600 seconds"
        yield from _names_problems("shells", self.shells)
        yield from _names_problems("downloaders", self.downloaders)
        yield from _names_problems("ignore_writers", self.ignore_writers)
        yield from _patterns_problems("write_dirs", self.write_dirs)


def _reads_script_from_stdin(argv: list[str]) -> bool:
    """Whether a shell with these arguments runs what its stdin says: no
    -c, and no script file operand (or -s, which reads stdin with operands
    as its arguments)."""
    from_stdin = False
    args = iter(argv[1:])
    for a in args:
        if a == "-":
            return True
        if a == "--":
            return from_stdin or next(args, None) is None
        if a.startswith("--"):
            if a in ("--rcfile", "--init-file"):
                next(args, None)
            continue
        if a[:1] in ("-", "+") and len(a) > 1:
            flags = a[1:]
            if "c" in flags:
                return False
            from_stdin = from_stdin or "s" in flags
            if flags[-1] in ("o", "O"):
                next(args, None)  # set -o NAME / shopt -O NAME take the next argument
            continue
        return from_stdin
    return True


class DownloadExecute(Rule):
    """Something fetched from the network and run at once: a downloader
    (curl, wget, ...) whose output is a pipe, and a shell that runs its
    stdin from a pipe, started by one parent (or the shell one wrapper
    below, as ``| sudo sh``) within the window and both running at once, as
    the two ends of a pipeline are (``curl URL | sh``; the event does not
    say which pipe, so a downloader piped elsewhere that is still running
    when a shell reading another pipe starts under the same parent is taken
    for one); or a file written in a temporary directory and executed within
    the window (by file, or for a script by its path)."""

    id = "download_execute"
    title = "Downloaded and executed"
    techniques = (INGRESS_TOOL_TRANSFER,)
    severity = "high"
    events = frozenset({"process_exec", "process_exit", "file_open"})
    Options = DownloadExecuteOptions

    def __init__(self, options=None):
        super().__init__(options)
        o = self.options
        self._dirs = PathSet(o.write_dirs)
        self._shells, self._downloaders = Names(o.shells), Names(o.downloaders)
        self._ignored_writers = Names(o.ignore_writers)
        self._pipes = Recent(o.window_s)
        self._paired = Recent(o.window_s)
        self._exited = Recent(o.window_s, max_per_key=1)
        self._running = Recent(o.window_s, max_per_key=1)
        self._written = Recent(o.window_s, max_per_key=4)

    @property
    def watch_paths(self) -> tuple[str, ...]:
        return tuple(self._dirs.watch_roots())

    def check(self, ev: Event, ctx: RuleContext) -> Iterator[Finding]:
        if ev.id == _OPEN:
            self._note_write(ev)
            return
        if ev.id == _EXIT:
            if self._running.within(ev.entity_id, ev.timestamp):
                self._exited.add(ev.entity_id, ev.timestamp, True)
            return
        d = _ok_exec(ev)
        if d is None:
            return
        yield from self._piped(ev, d)
        yield from self._fresh_file(ev, d)

    def _note_write(self, ev: Event) -> None:
        d = ev.data
        if d.result < 0 or not d.resolved_path or not _writes(d.flags, d.syscall):
            return
        if not self._dirs.matches(d.resolved_path):
            return
        wl = ev.workload
        writer = (basename(wl.process.executable) if wl is not None else "") or ev.comm
        if self._ignored_writers.first((writer,)):
            return
        self._written.add(("inode", d.device, d.inode), ev.timestamp, ev)
        self._written.add(("path", d.resolved_path), ev.timestamp, ev)

    def _fresh_file(self, ev: Event, d: ProcessExecData) -> Iterator[Finding]:
        keys = [("inode", d.executable_device, d.executable_inode)] if d.executable_inode else []
        script = _script_path(d)
        if script:
            keys.append(("path", script))
        writes = [w for key in keys for t, w in self._written.within(key, ev.timestamp) if t <= ev.timestamp]
        if not writes:
            return
        write = max(writes, key=lambda w: w.timestamp)
        age = (ev.timestamp - write.timestamp) / 1e9
        path = write.data.resolved_path
        yield Finding(
            summary=f"{path} run {age:.1f} s after {_who(write)} wrote it: {_argv(d)}",
            description=f"{_who(write)} wrote {path}, and {age:.1f} s later pid {ev.pid} ran it: a file dropped "
                        f"in a temporary directory and executed at once (T1105, then T1059 or T1204).",
            events=(write, ev), key=path)

    def _piped(self, ev: Event, d: ProcessExecData) -> Iterator[Finding]:
        names = _exec_names(d)
        if d.stdout == "pipe" and self._downloaders.first(names):
            role, partner_role = "downloader", "shell"
            keys = [d.parent_entity_id]
        elif d.stdin == "pipe" and self._shells.first(names) and _reads_script_from_stdin(d.argv):
            role, partner_role = "shell", "downloader"
            wl = ev.workload
            ancestors = wl.process.ancestors if wl is not None else []
            keys = [d.parent_entity_id] + [a.entity_id for a in ancestors[1:2]]
        else:
            return
        keys = [k for k in keys if k]
        # The two ends of a pipeline run at once: a partner that had exited
        # before this exec was in another command.
        partners = [p for key in keys for _, (r, p) in self._pipes.within(key, ev.timestamp)
                    if r == partner_role and not self._paired.within(p.entity_id, ev.timestamp)
                    and not any(t <= ev.timestamp for t, _ in self._exited.within(p.entity_id, ev.timestamp))]
        for key in keys:
            self._pipes.add(key, ev.timestamp, (role, ev))
        self._running.add(ev.entity_id, ev.timestamp, True)
        if not partners:
            return
        partner = min(partners, key=lambda p: abs(p.timestamp - ev.timestamp))
        self._paired.add(partner.entity_id, ev.timestamp, True)
        self._paired.add(ev.entity_id, ev.timestamp, True)
        downloader, shell = (ev, partner) if role == "downloader" else (partner, ev)
        pipeline = f"{_argv(downloader.data)} | {_argv(shell.data)}"
        yield Finding(
            summary=f"downloaded and run by a shell: {pipeline}",
            description=f"{_who(downloader)} fetched from the network into a pipe that the shell {_who(shell)} "
                        f"runs as its script: downloaded code runs without ever being on disk (T1105, then "
                        f"T1059.004).",
            events=tuple(sorted((downloader, shell), key=lambda e: e.timestamp)))


# ---- network ----

def _port_problems(field: str, ports: Iterable[int]) -> Iterator[tuple[str, str]]:
    for i, p in enumerate(ports):
        if not 0 <= p <= 65535:
            yield f"{field}[{i}]", f"port {p} out of range 0-65535"


def _network_problems(field: str, addresses: Iterable[str]) -> Iterator[tuple[str, str]]:
    for i, a in enumerate(addresses):
        try:
            parse_network(a)
        except ValueError as e:
            yield f"{field}[{i}]", f"not an address or CIDR: {e}"


class CloudMetadataOptions(RuleOptions):
    addresses: tuple[str, ...] = METADATA_ADDRESSES
    """Metadata services' addresses (or CIDRs): AWS, GCP, Azure and Oracle
    (169.254.169.254, AWS's IPv6 fd00:ec2::254), AWS ECS task credentials
    (169.254.170.2), Alibaba Cloud (100.100.100.200)."""
    ports: tuple[int, ...] = ()
    """Empty: every port."""

    def problems(self):
        yield from super().problems()
        yield from _network_problems("addresses", self.addresses)
        yield from _port_problems("ports", self.ports)


class CloudMetadata(Rule):
    """A connect or send to a cloud instance metadata service, which hands
    out the instance's cloud credentials to whoever asks from the host."""

    id = "cloud_metadata"
    title = "Cloud instance metadata service contacted"
    techniques = (METADATA_API,)
    severity = "medium"
    events = frozenset({"net_connect", "net_sendmsg"})
    Options = CloudMetadataOptions

    def __init__(self, options=None):
        super().__init__(options)
        self._networks = [parse_network(a) for a in self.options.addresses]

    def check(self, ev: Event, ctx: RuleContext) -> Iterator[Finding]:
        d = ev.data
        address = parse_address(d.address)
        if address is None or not any(address in n for n in self._networks):
            return
        if self.options.ports and d.port not in self.options.ports:
            return
        target = _target(ev)
        yield Finding(
            summary=f"{_who(ev)} contacted the cloud metadata service at {target}{_outcome(d.result)}",
            description=f"{_who(ev)} connected to {target}, a cloud instance metadata service, which gives the "
                        f"instance's cloud credentials to any process that asks{_outcome(d.result)}.",
            events=(ev,), key=(str(address), d.port))


class Destination(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where a process may connect: exactly one of ``cidr`` (an address or
    network) or ``host`` (resolved when the detector is built, to every
    address it has then); ``ports`` empty means every port."""

    cidr: Optional[str] = None
    host: Optional[str] = None
    ports: tuple[int, ...] = ()


def _destination_problems(field: str, destinations: Iterable[Destination]) -> Iterator[tuple[str, str]]:
    for i, dest in enumerate(destinations):
        if (dest.cidr is None) == (dest.host is None):
            yield f"{field}[{i}]", "give exactly one of cidr or host"
        elif dest.cidr is not None:
            yield from _network_problems(f"{field}[{i}].cidr", [dest.cidr])
        elif not dest.host:
            yield f"{field}[{i}].host", "empty host name"
        yield from _port_problems(f"{field}[{i}].ports", dest.ports)


class UnauthorizedConnectionOptions(RuleOptions):
    allowed: dict[str, tuple[Destination, ...]] = {}
    """Identity (as ``workload.process.identities`` names it:
    ``env:OPENAI_API_KEY``, ``argv:openai``) -> where a process holding it
    may connect. Processes holding none of these identities are not judged."""
    always_allowed: tuple[Destination, ...] = (Destination(cidr="127.0.0.0/8"), Destination(cidr="::1/128"))
    """Where any of them may connect (local services, a proxy, DNS)."""

    def problems(self):
        yield from super().problems()
        for identity, destinations in self.allowed.items():
            if not identity:
                yield "allowed", "an identity must be a non-empty string"
            yield from _destination_problems(f"allowed.{identity}", destinations)
        yield from _destination_problems("always_allowed", self.always_allowed)


_Networks = list[tuple[Union[ipaddress.IPv4Network, ipaddress.IPv6Network], tuple[int, ...]]]


def _compile_destinations(field: str, destinations: Iterable[Destination]) -> _Networks:
    out: _Networks = []
    for i, dest in enumerate(destinations):
        if dest.cidr is not None:
            out.append((parse_network(dest.cidr), dest.ports))
            continue
        try:
            infos = socket.getaddrinfo(dest.host, None, type=socket.SOCK_STREAM)
        except OSError as e:
            raise RuleConfigError(f"{field}[{i}].host", f"cannot resolve {dest.host!r}: {e.strerror or e}") from None
        for address in sorted({info[4][0] for info in infos}):
            out.append((parse_network(address), dest.ports))
    return out


class UnauthorizedConnection(Rule):
    """A process holding a machine identity (an API key in its environment,
    a token in its arguments: ``workload.process.identities``) connecting
    where that identity is not meant to go: the credential, or what it
    unlocks, may be on its way elsewhere. Mapped as Falco maps its
    unexpected-outbound-connection rules: command and control, with T1071."""

    id = "unauthorized_connection"
    title = "Identity-bearing process connected to an unexpected destination"
    techniques = (APPLICATION_LAYER,)
    severity = "high"
    events = frozenset({"net_connect", "net_sendmsg"})
    Options = UnauthorizedConnectionOptions

    def __init__(self, options=None):
        super().__init__(options)
        o = self.options
        self._allowed = {identity: _compile_destinations(f"allowed.{identity}", dests)
                         for identity, dests in o.allowed.items()}
        self._always = _compile_destinations("always_allowed", o.always_allowed)

    def identity_patterns(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        env = tuple(i[len("env:"):] for i in self.options.allowed if i.startswith("env:"))
        argv = tuple(i[len("argv:"):] for i in self.options.allowed if i.startswith("argv:"))
        return env, argv

    def check(self, ev: Event, ctx: RuleContext) -> Iterator[Finding]:
        if not self._allowed:
            return
        wl = ev.workload
        held = [i for i in (wl.process.identities if wl is not None else ()) if i in self._allowed]
        if not held:
            return
        d = ev.data
        address = parse_address(d.address)
        if address is None:
            return
        for networks in (self._always, *(self._allowed[i] for i in held)):
            if any(address in net and (not ports or d.port in ports) for net, ports in networks):
                return
        target = _target(ev)
        holding = ", ".join(held)
        yield Finding(
            summary=f"{_who(ev)} holding {holding} connected to {target}, not allowed for it{_outcome(d.result)}",
            description=f"{_who(ev)} holds {holding} and connected to {target}, which is not among the "
                        f"destinations allowed for {'it' if len(held) == 1 else 'them'}: the credential, or "
                        f"what it unlocks, may be leaving for somewhere else{_outcome(d.result)}.",
            events=(ev,), key=(str(address), d.port))


# ---- exec from temporary places ----

class ExecFromTempOptions(RuleOptions):
    exceptions: tuple[RuleException, ...] = (RUNC_CLONE,)
    dirs: tuple[str, ...] = TEMP_DIRS
    """World-writable places programs are not installed in."""
    fileless: bool = True
    """Report execs of a file with no name on disk (a memfd, a file deleted before the exec)."""

    def problems(self):
        yield from super().problems()
        yield from _patterns_problems("dirs", self.dirs)


class ExecFromTemp(Rule):
    """A program run from a temporary directory (/tmp, /var/tmp, /dev/shm),
    or from no file at all (a memfd, a deleted file). Fileless execution is
    T1620, Reflective Code Loading, as Falco's "Fileless execution via
    memfd_create" maps it. For a temporary directory, Falco's "Execution
    from /dev/shm" says Execution and T1059.004; what runs there is a
    dropped file, not necessarily a shell, so this rule reports Execution
    with T1204.002 (User Execution: Malicious File)."""

    id = "exec_from_temp"
    title = "Program run from a temporary directory or from memory"
    techniques = (MALICIOUS_FILE, REFLECTIVE_LOADING)
    severity = "medium"
    events = frozenset({"process_exec"})
    Options = ExecFromTempOptions

    def __init__(self, options=None):
        super().__init__(options)
        self._dirs = PathSet(self.options.dirs)

    def check(self, ev: Event, ctx: RuleContext) -> Iterator[Finding]:
        d = _ok_exec(ev)
        if d is None:
            return
        if d.fileless and self.options.fileless:
            yield Finding(
                summary=f"fileless exec: {d.resolved_executable} (pid {ev.pid}): {_argv(d)}",
                description=f"pid {ev.pid} ran {d.resolved_executable}, a program with no file on disk (a memfd, "
                            f"or a file deleted before it ran): code loaded straight into memory.",
                events=(ev,), technique=REFLECTIVE_LOADING)
            return
        path = self._dirs.first_match((d.resolved_executable, _script_path(d)))
        if path is not None:
            yield Finding(
                summary=f"exec from a temporary directory: {path} (pid {ev.pid}): {_argv(d)}",
                description=f"pid {ev.pid} ran {path}, from a world-writable temporary directory where "
                            f"programs are dropped, not installed.",
                events=(ev,), technique=MALICIOUS_FILE)


DEFAULT_RULES: tuple[type[Rule], ...] = (
    InterpreterShell, ReverseShell, ProcessMemoryAccess, PtraceAttach, CredentialRead, PersistenceWrite,
    DownloadExecute, CloudMetadata, ExecFromTemp, UnauthorizedConnection,
)
