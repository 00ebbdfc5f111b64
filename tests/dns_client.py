"""The workload of tests/test_guard_hostnames.py: runs steps, one JSON line
each to the file named first.

connect NAME [PORT]          getaddrinfo (glibc), then connect
resolve NAME                 getaddrinfo only
connect_address ADDR [PORT]  connect, no lookup
tcp_connect NAME [PORT]      resolve over TCP (dnspython, /etc/resolv.conf), then connect
ask SERVER NAME              resolve over UDP at SERVER (dnspython)
udp_send ADDR PORT           a datagram
self_forge NAME ADDR         an answer "NAME is at ADDR", sent from port 53 of
                             127.0.0.155 to a socket of this process
sleep S
"""

import errno
import json
import os
import socket
import sys
import time

PORT = 8443


def connect(address, port):
    s = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
    s.settimeout(2)
    try:
        s.connect((address, port))
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    finally:
        s.close()


def resolve(name):
    return socket.getaddrinfo(name, PORT, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]


def main():
    out = open(sys.argv[1], "w")
    for step in sys.argv[2:]:
        op, *args = step.split()
        result = {"step": op, "args": args, "pid": os.getpid()}
        try:
            if op == "connect":
                address = resolve(args[0])
                result.update(address=address, result=connect(address, int(args[1]) if len(args) > 1 else PORT))
            elif op == "resolve":
                result.update(address=resolve(args[0]), result="ok")
            elif op == "connect_address":
                result["result"] = connect(args[0], int(args[1]) if len(args) > 1 else PORT)
            elif op == "tcp_connect":
                import dns.resolver
                r = dns.resolver.Resolver()
                address = r.resolve(args[0], "A", tcp=True)[0].address
                result.update(address=address, result=connect(address, int(args[1]) if len(args) > 1 else PORT))
            elif op == "ask":
                import dns.resolver
                r = dns.resolver.Resolver(configure=False)
                r.nameservers = [args[0]]
                result.update(address=r.resolve(args[1], "A")[0].address, result="ok")
            elif op == "udp_send":
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    s.sendto(b"x", (args[0], int(args[1])))
                    result["result"] = "ok"
                except OSError as e:
                    result["result"] = errno.errorcode.get(e.errno, str(e.errno))
                s.close()
            elif op == "self_forge":
                import dns.message
                import dns.rrset
                client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                client.bind(("127.0.0.1", 0))
                query = dns.message.make_query(args[0], "A")
                answer = dns.message.make_response(query)
                answer.answer.append(dns.rrset.from_text(args[0] + ".", 60, "IN", "A", args[1]))
                server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                server.bind(("127.0.0.155", 53))
                server.sendto(answer.to_wire(), client.getsockname())
                client.settimeout(2)
                client.recv(4096)
                client.close()
                server.close()
                result["result"] = "ok"
            elif op == "sleep":
                time.sleep(float(args[0]))
                result["result"] = "ok"
        except Exception as e:
            result["result"] = f"error: {e}"
        out.write(json.dumps(result) + "\n")
        out.flush()


main()
