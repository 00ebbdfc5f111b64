"""Secrets kept out of captured plaintext.

A captured buffer (TLS before encryption) may hold the very keys a workload
uses: the values of its secret-bearing environment variables (the identity
patterns, ``OPENAI_API_KEY``, ``*_TOKEN``) and anything a pattern names
(``Bearer \\S+``). Each is replaced before the buffer leaves the library,
and a capture cut in the middle of a secret loses the secret's visible start
too: a cut keeps no prefix of a secret long enough to guess from.
"""

from __future__ import annotations

import fnmatch
import os
import re
from typing import Iterable, Mapping, Optional

#: Shorter values are not treated as secrets: "1", "true" and "en" would
#: redact ordinary text.
MIN_SECRET_LENGTH = 6


class Redactor:
    """Redacts the values of environment variables whose names match
    ``env_patterns`` (fnmatch: ``OPENAI_API_KEY``, ``*_TOKEN``, ``AWS_*``)
    and the matches of ``patterns`` (regular expressions over bytes)."""

    def __init__(self, env_patterns: Iterable[str] = (), patterns: Iterable[str] = (),
                 environ: Optional[Mapping[str, str]] = None):
        self.env_patterns = tuple(env_patterns)
        self.patterns = []
        for p in patterns:
            try:
                self.patterns.append(re.compile(p.encode() if isinstance(p, str) else p))
            except re.error as exc:
                raise ValueError(f"redaction pattern {p!r}: {exc}") from exc
        self._secrets: dict[bytes, str] = {}
        self._pids_read: set[int] = set()
        self.learn(os.environ if environ is None else environ)

    @property
    def active(self) -> bool:
        return bool(self.env_patterns or self.patterns)

    def learn(self, environ: Mapping[str, str]) -> None:
        """Takes the secret values of an environment (names matching the patterns)."""
        for name, value in environ.items():
            if len(value) >= MIN_SECRET_LENGTH and any(fnmatch.fnmatchcase(name, p) for p in self.env_patterns):
                self._secrets[value.encode(errors="surrogateescape")] = name

    def learn_process(self, pid: int) -> None:
        """Takes the secret values of a process's environment, once per pid
        (its values stay in this process's memory; they never reach a record)."""
        if not self.env_patterns or pid in self._pids_read:
            return
        self._pids_read.add(pid)
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                raw = f.read()
        except OSError:
            return
        env = {}
        for item in raw.split(b"\0"):
            name, sep, value = item.partition(b"=")
            if sep:
                env[name.decode(errors="replace")] = value.decode(errors="surrogateescape")
        self.learn(env)

    def redact(self, data: bytes, truncated: bool = False) -> tuple[bytes, int]:
        """The data with every secret replaced (``[REDACTED:NAME]``, or
        ``[REDACTED]`` for a pattern's match), and how many were."""
        count = 0
        for value, name in sorted(self._secrets.items(), key=lambda kv: -len(kv[0])):
            if value in data:
                count += data.count(value)
                data = data.replace(value, f"[REDACTED:{name}]".encode())
        for pattern in self.patterns:
            data, n = pattern.subn(b"[REDACTED]", data)
            count += n
        if truncated:
            data, cut = self._cut_secret(data)
            count += cut
        return data, count

    def _cut_secret(self, data: bytes) -> tuple[bytes, int]:
        # The capture ended inside a secret: its start is the data's end.
        for value, name in self._secrets.items():
            for keep in range(min(len(value) - 1, len(data)), 3, -1):
                if data.endswith(value[:keep]):
                    return data[:-keep] + f"[REDACTED:{name}]".encode(), 1
        return data, 0
