"""Path patterns for the rules that watch files, and the files they watch.

A pattern is an absolute path with shell-style wildcards, matched against
the path an open really opened (``resolved_path``) and the absolute path the
caller passed:

- ``*`` and ``?`` and ``[...]`` stay within one name (they never match ``/``);
- ``**`` matches any run of characters, ``/`` included (``/etc/**/x`` also
  matches ``/etc/x``);
- a trailing ``/`` means everything beneath that directory;
- a leading ``~/`` means any home directory: ``/root/`` and ``/home/<user>/``.

Patterns are matched as text: no file is looked at, so a pattern can name a
file that does not exist yet. Only ``watch_roots()`` looks at the disk, to
tell a Tracer which existing files and directories to report opens of.
"""

from __future__ import annotations

import glob
import os
import re
from typing import Iterable, Optional

__all__ = ["PathPattern", "PathSet", "pattern_error"]

# Where "~/" points. /home/<user> covers every login user on the usual
# layouts; root's home is its own.
HOMES = ("/root", "/home/*")
# Directories never watched for a missing file to appear in: every
# dynamically linked program opens /etc/ld.so.cache, so watching /etc would
# report an open per exec.
_TOO_BUSY = frozenset({"/", "/etc"})
_META = re.compile(r"[*?\[]")


def pattern_error(pattern: str) -> Optional[str]:
    """Why pattern is not a usable path pattern, or None."""
    if not isinstance(pattern, str) or not pattern:
        return "a path pattern must be a non-empty string"
    if "\0" in pattern:
        return "a path pattern cannot contain NUL"
    if not pattern.startswith(("/", "~/", "**")):
        return f"{pattern!r} is not absolute (start it with /, ~/ or **)"
    return None


def _translate(pattern: str) -> str:
    """The regular expression (without anchors) of one pattern."""
    if pattern.startswith("~/"):
        head, pattern = r"(?:/root|/home/[^/]+)/", pattern[2:]
    else:
        head = ""
    if pattern.endswith("/"):
        pattern += "**"
    out, i, n = [head], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                i += 2
                if pattern.startswith("/", i) and (i == 2 or pattern[i - 3] == "/"):
                    # "a/**/b": any number of directories between, none included.
                    out.append(r"(?:.*/)?")
                    i += 1
                else:
                    out.append(r".*")
                continue
            out.append(r"[^/]*")
        elif c == "?":
            out.append(r"[^/]")
        elif c == "[":
            # As fnmatch reads a class: "!" first negates, a "]" first is a member.
            j = i + 1
            if pattern.startswith("!", j):
                j += 1
            if pattern.startswith("]", j):
                j += 1
            end = pattern.find("]", j)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1:end]
                negate = body.startswith("!")
                body = (body[1:] if negate else body).replace("\\", "\\\\").replace("[", "\\[").replace("^", "\\^")
                # A class never matches "/": a name stays a name.
                out.append("(?!/)[" + ("^" if negate else "") + body + "]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


class PathPattern:
    """One pattern, compiled."""

    __slots__ = ("pattern", "_regex")

    def __init__(self, pattern: str):
        why = pattern_error(pattern)
        if why is not None:
            raise ValueError(why)
        self.pattern = pattern
        self._regex = re.compile(_translate(pattern), re.S)

    def matches(self, path: str) -> bool:
        return self._regex.fullmatch(path) is not None

    def __repr__(self) -> str:
        return f"PathPattern({self.pattern!r})"

    def watch_roots(self, homes: Iterable[str] = HOMES, created: bool = True) -> list[str]:
        """The existing files and directories whose opens (a directory: of
        the entries directly in it) this pattern needs reported: the files
        it names that exist, else the directory they would appear in; for a
        pattern over a whole tree, the tree's top directory (never / or
        /etc). created=False (opens of files that exist are what matters,
        not their creation): a missing file is left out rather than have its
        whole directory (a home) reported."""
        bases = [self.pattern]
        if self.pattern.startswith("~/"):
            bases = [os.path.join(h, self.pattern[2:]) for home in homes for h in sorted(glob.glob(home))]
        roots: list[str] = []
        for base in bases:
            if base.endswith("/"):
                base += "**"
            parts = base.split("/")
            static = next((i for i, p in enumerate(parts) if _META.search(p)), len(parts))
            if static == len(parts):
                # A literal path: the file, or where it would appear.
                if os.path.exists(base):
                    roots.append(base)
                elif created and os.path.isdir(os.path.dirname(base)) and os.path.dirname(base) not in _TOO_BUSY:
                    roots.append(os.path.dirname(base))
                continue
            top = "/".join(parts[:static]) or "/"
            if "**" in parts[static]:
                if os.path.isdir(top) and top not in _TOO_BUSY:
                    roots.append(top)
                continue
            # A dangling symlink reaches no file: a Tracer would refuse to watch it.
            found = sorted(f for f in glob.glob("/".join(parts[:static + 1])) if os.path.exists(f))
            if static + 1 < len(parts):
                # A wildcard directory with more below: each such directory's tree top.
                roots += [f for f in found if os.path.isdir(f)]
            elif found:
                roots += found
            elif os.path.isdir(top) and top not in _TOO_BUSY:
                roots.append(top)
        return roots


class PathSet:
    """Include patterns less ignore patterns."""

    __slots__ = ("include", "ignore")

    def __init__(self, include: Iterable[str], ignore: Iterable[str] = ()):
        self.include = tuple(PathPattern(p) for p in include)
        self.ignore = tuple(PathPattern(p) for p in ignore)

    def matches(self, path: Optional[str]) -> bool:
        if not path:
            return False
        return any(p.matches(path) for p in self.include) and not any(p.matches(path) for p in self.ignore)

    def first_match(self, paths: Iterable[Optional[str]]) -> Optional[str]:
        """The first of paths this set matches."""
        for path in paths:
            if self.matches(path):
                return path
        return None

    def watch_roots(self, created: bool = True) -> list[str]:
        out: list[str] = []
        for p in self.include:
            out += p.watch_roots(created=created)
        return out
