"""Machine identity patterns: which environment variable names and argument
substrings mark a process (``Tracer(identity_env=..., identity_argv=...)``,
a policy's ``identity`` section). Checked here before anything is loaded;
the kernel's environment scan (bpf/process.bpf.c) and the registry that
names what it finds (csrc/identity.c) take them as they pass."""

from __future__ import annotations

from typing import Iterable, Optional

from ._native import lib

NAME_MAX = lib.RG_IDENTITY_NAME_MAX      # bytes of a variable name or an argv pattern
AFFIX_MAX = lib.RG_IDENTITY_AFFIX_MAX    # bytes of a prefix (NAME*) or suffix (*NAME)
PATTERNS_MAX = lib.RG_IDENTITY_MAX       # patterns of each kind at once, per Python process


def pattern_problem(pattern: object, env: bool) -> Optional[str]:
    """Why pattern is not one, or None. Environment: a variable name
    ("OPENAI_API_KEY"), a prefix ("AWS_*") or a suffix ("*_TOKEN").
    Arguments: a substring ("openai")."""
    if not isinstance(pattern, str) or not pattern or "\0" in pattern:
        return f"{pattern!r} is not a pattern (a non-empty string)"
    if not env:
        if len(pattern.encode()) > NAME_MAX:
            return f"{pattern!r} is longer than {NAME_MAX} bytes"
        return None
    name = pattern[:-1] if pattern.endswith("*") else pattern[1:] if pattern.startswith("*") else pattern
    if not name or "*" in name or "=" in name:
        return f"{pattern!r} must be a variable name, NAME*, or *NAME (one '*', no '=')"
    limit = NAME_MAX if name == pattern else AFFIX_MAX
    if len(name.encode()) > limit:
        return f"{pattern!r} is longer than {limit} bytes"
    return None


def checked(patterns: Iterable[str], option: str, env: bool) -> tuple[str, ...]:
    """The patterns, each once, or ValueError naming option and the first bad one."""
    if isinstance(patterns, str):
        patterns = [patterns]
    out = tuple(dict.fromkeys(patterns))
    for p in out:
        problem = pattern_problem(p, env)
        if problem:
            raise ValueError(f"{option}: {problem}")
    if len(out) > PATTERNS_MAX:
        raise ValueError(f"{option}: {len(out)} patterns; at most {PATTERNS_MAX}")
    return out
