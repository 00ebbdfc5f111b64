"""Reverse names for destinations no observed DNS answer named.

A connect to a hard-coded address, or one resolved where the guard could not
see (another host's cache, DNS over HTTPS), has no hostname. Its PTR name
says what the address's owner calls it, which proves nothing on its own:
whoever owns the address writes its PTR record. So the name is looked up
forward again, and only a name that resolves back to the address is
"confirmed" (forward-confirmed reverse DNS).

Lookups go to the servers the policy trusts, from a small pool of threads,
never from the thread that drains the ring buffer; answers are cached for
their TTL (bounded). At most ``max_pending`` lookups wait at once: past that,
an address gets no reverse name (counted in ``skipped``), so a workload that
connects to a million addresses cannot queue a million lookups.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Optional, Sequence

import msgspec

__all__ = ["ReverseLookup", "ReverseName"]


class ReverseName(msgspec.Struct, frozen=True):
    name: Optional[str]
    """The PTR name, lower case, no final dot; None when there is none."""
    confirmed: bool
    """The name resolves forward to the address again."""
    ttl: float
    """Seconds the answer holds (the PTR record's TTL)."""


_NONE = ReverseName(None, False, 60.0)


class ReverseLookup:
    def __init__(self, servers: Sequence[str], *, timeout: float = 1.0, max_pending: int = 64,
                 min_ttl: float = 5.0, max_ttl: float = 3600.0, cache_size: int = 4096):
        import dns.resolver

        self._resolver = dns.resolver.Resolver(configure=False)
        self._resolver.nameservers = list(servers)
        self._resolver.lifetime = timeout
        self._resolver.timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="runtimeguard-ptr")
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, ReverseName]] = {}
        self._inflight: dict[str, Future] = {}
        self._max_pending = max_pending
        self._min_ttl, self._max_ttl = min_ttl, max_ttl
        self._cache_size = cache_size
        self.timeout = timeout
        self.skipped = 0
        """Addresses given no reverse name: too many lookups were waiting."""
        self.failed = 0
        """Lookups that ended in an error other than "no such name" (timeouts, refusals)."""

    def lookup(self, address: str) -> Optional["Future[ReverseName]"]:
        """The address's reverse name, cached or on its way; None when skipped."""
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(address)
            if hit is not None and hit[0] > now:
                done: Future = Future()
                done.set_result(hit[1])
                return done
            pending = self._inflight.get(address)
            if pending is not None:
                return pending
            if len(self._inflight) >= self._max_pending:
                self.skipped += 1
                return None
            future = self._pool.submit(self._resolve, address)
            self._inflight[address] = future
        future.add_done_callback(lambda f, a=address: self._settle(a, f))
        return future

    def _settle(self, address: str, future: Future) -> None:
        result = future.result() if not future.cancelled() and future.exception() is None else _NONE
        with self._lock:
            self._inflight.pop(address, None)
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[address] = (time.monotonic() + result.ttl, result)

    def _resolve(self, address: str) -> ReverseName:
        import dns.exception
        import dns.resolver
        import dns.reversename

        try:
            answer = self._resolver.resolve(dns.reversename.from_address(address), "PTR")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return _NONE
        except dns.exception.DNSException:
            self.failed += 1
            return _NONE
        name = str(answer[0].target).rstrip(".").lower()
        ttl = min(max(float(answer.rrset.ttl), self._min_ttl), self._max_ttl)
        ip = ipaddress.ip_address(address)
        try:
            forward = self._resolver.resolve(name, "A" if ip.version == 4 else "AAAA")
            confirmed = any(ipaddress.ip_address(r.address) == ip for r in forward)
        except dns.exception.DNSException:
            confirmed = False
        return ReverseName(name, confirmed, ttl)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
