"""Host names in policies: what a pattern is, what it matches, and how the
kernel finds it.

A host rule names ``api.example.com`` (that name only) or ``*.example.com``
(any name under example.com, one label deep or more; not example.com
itself). Names are compared as lower-case text without the final dot; a
label holds letters, digits, ``-`` and ``_`` only, as the kernel's DNS
reader requires (a name with any other byte matches no pattern).

The kernel (bpf/dns.bpf.h) finds patterns by :func:`name_hash`: FNV-1a over
the text from its last byte back, so that the hash at each ``.`` is the hash
of the suffix from there, and ``*`` hashed on top of it is the key of the
glob naming that suffix. A hit is confirmed by comparing the text.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Iterable, Optional

__all__ = ["DOH_ADDRESSES", "DOH_HOSTS", "host_matches", "name_hash", "nameservers", "normalize_host"]

_LABEL = re.compile(r"[a-z0-9_-]{1,63}\Z")
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK = (1 << 64) - 1
NAME_MAX = 253

# Public DNS-over-HTTPS resolvers, by address and by name, refused under
# network.dns.refuse_unobserved: their answers travel inside TLS, where no
# guard can read them. Not every such service: any HTTPS server can answer
# DNS queries. The policy's default deny is what holds the rest.
DOH_ADDRESSES = (
    "1.1.1.1/32", "1.0.0.1/32", "2606:4700:4700::1111/128", "2606:4700:4700::1001/128",  # Cloudflare
    "8.8.8.8/32", "8.8.4.4/32", "2001:4860:4860::8888/128", "2001:4860:4860::8844/128",  # Google
    "9.9.9.9/32", "149.112.112.112/32", "2620:fe::fe/128", "2620:fe::9/128",  # Quad9
    "208.67.222.222/32", "208.67.220.220/32", "2620:119:35::35/128", "2620:119:53::53/128",  # OpenDNS
    "94.140.14.14/32", "94.140.15.15/32", "2a10:50c0::ad1:ff/128", "2a10:50c0::ad2:ff/128",  # AdGuard
    "45.90.28.0/24", "45.90.30.0/24",  # NextDNS
)
DOH_HOSTS = (
    "cloudflare-dns.com", "*.cloudflare-dns.com", "dns.google", "dns.google.com", "dns.quad9.net",
    "doh.opendns.com", "dns.adguard-dns.com", "dns.nextdns.io", "*.dns.nextdns.io",
)


def normalize_host(text: str) -> tuple[Optional[str], str]:
    """(the pattern, "") for a valid host name or glob, else (None, why)."""
    host = text.strip().lower()
    if host.endswith(".") and not host.endswith(".."):
        host = host[:-1]
    if not host:
        return None, "empty host name"
    try:
        ipaddress.ip_network(host, strict=False)
    except ValueError:
        pass
    else:
        return None, "an address, not a host name (use cidr: for addresses and networks)"
    if "/" in host:
        return None, "a host name, not a CIDR (use cidr: for networks)"
    name = host[2:] if host.startswith("*.") else host
    if "*" in name:
        return None, "only a leading '*.' makes a glob (*.example.com)"
    if len(host) > NAME_MAX:
        return None, f"longer than {NAME_MAX} characters"
    for label in name.split("."):
        if not _LABEL.match(label):
            return None, (f"label {label!r} is not 1 to 63 letters, digits, '-' or '_'" if label
                          else "empty label (two dots, or a dot at the start)")
    return host, ""


def host_matches(pattern: str, name: str) -> bool:
    """Whether a DNS name (lower case, no final dot) falls under a normalized pattern."""
    if pattern.startswith("*."):
        return name.endswith(pattern[1:]) and len(name) > len(pattern) - 1
    return name == pattern


def matched(patterns: Iterable[str], name: str) -> tuple[str, ...]:
    """The patterns a name matches, in the order given."""
    return tuple(p for p in patterns if host_matches(p, name))


def name_hash(text: str) -> int:
    """The kernel's key for a name or pattern (see the module docstring)."""
    h = _FNV_OFFSET
    for byte in reversed(text.encode()):
        h = ((h ^ byte) * _FNV_PRIME) & _MASK
    return h


def nameservers(path: str = "/etc/resolv.conf") -> tuple[str, ...]:
    """The nameserver addresses a resolv.conf names (glibc's reading: the
    ``nameserver`` lines, scope ids dropped); () when it cannot be read."""
    found: list[str] = []
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return ()
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                address = str(ipaddress.ip_address(parts[1].split("%", 1)[0]))
            except ValueError:
                continue
            if address not in found:
                found.append(address)
    return tuple(found)
