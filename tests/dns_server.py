"""A DNS server for tests, on a loopback address (nothing leaves the machine).

Serves a zone of A, AAAA, CNAME and PTR records over UDP and TCP on
``address:53``, with dnspython building the answers. ``forge`` lets a test
send answers of its own to a client: from another address, with another
name, or unasked.
"""

from __future__ import annotations

import socket
import struct
import threading
from typing import Optional

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset


class DnsServer:
    def __init__(self, address: str = "127.0.0.153", port: int = 53):
        self.address, self.port = address, port
        self.records: dict[tuple[str, str], tuple[int, list[str]]] = {}
        """(name, type) -> (ttl, values); names lower case with the final dot."""
        self.queries: list[tuple[str, str, tuple]] = []
        """(name, type, client) of every query, in order."""
        self.on_query = None
        """Called with (query message, client address, send) before answering;
        returning False suppresses the answer."""
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._udp.bind((address, port))
        self._tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._tcp.bind((address, port))
        self._tcp.listen(16)
        self._stop = False
        self._threads = [threading.Thread(target=self._serve_udp, daemon=True),
                         threading.Thread(target=self._serve_tcp, daemon=True)]
        for t in self._threads:
            t.start()

    def add(self, name: str, rtype: str, *values: str, ttl: int = 60) -> None:
        self.records[(name.lower().rstrip(".") + ".", rtype)] = (ttl, list(values))

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        question = query.question[0]
        name, rtype = question.name.to_text().lower(), dns.rdatatype.to_text(question.rdtype)
        for _ in range(8):  # follow CNAMEs within the zone
            cname = self.records.get((name, "CNAME"))
            if cname is None or rtype == "CNAME":
                break
            ttl, (target,) = cname
            response.answer.append(dns.rrset.from_text(name, ttl, "IN", "CNAME", target))
            name = target.lower().rstrip(".") + "."
        found = self.records.get((name, rtype))
        if found is not None:
            ttl, values = found
            response.answer.append(dns.rrset.from_text(name, ttl, "IN", rtype, *values))
        elif not any(key[0] == name for key in self.records):
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response

    def _serve_udp(self) -> None:
        while not self._stop:
            try:
                data, client = self._udp.recvfrom(4096)
            except OSError:
                return
            self._handle(data, client, lambda wire, c=client: self._udp.sendto(wire, c))

    def _serve_tcp(self) -> None:
        while not self._stop:
            try:
                conn, client = self._tcp.accept()
            except OSError:
                return
            with conn:
                try:
                    while True:
                        head = _recv_exact(conn, 2)
                        if head is None:
                            break
                        data = _recv_exact(conn, struct.unpack("!H", head)[0])
                        if data is None:
                            break
                        self._handle(data, client, lambda wire, c=conn: c.sendall(struct.pack("!H", len(wire)) + wire))
                except OSError:
                    pass

    def _handle(self, data: bytes, client, send) -> None:
        try:
            query = dns.message.from_wire(data)
        except Exception:
            return
        q = query.question[0]
        self.queries.append((q.name.to_text().lower().rstrip("."), dns.rdatatype.to_text(q.rdtype), client))
        if self.on_query is not None and self.on_query(query, client, send) is False:
            return
        send(self.answer(query).to_wire())

    def close(self) -> None:
        self._stop = True
        for s in (self._udp, self._tcp):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        for t in self._threads:
            t.join(2)


def _recv_exact(conn: socket.socket, n: int) -> Optional[bytes]:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def forged_answer(query: dns.message.Message, name: str, address: str, ttl: int = 60) -> bytes:
    """An answer to query's id that says name is at address."""
    response = dns.message.make_response(query)
    response.question = [dns.rrset.RRset(dns.name.from_text(name), 1, 1)]
    response.answer.append(dns.rrset.from_text(name, ttl, "IN", "A", address))
    return response.to_wire()
