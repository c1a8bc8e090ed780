"""A small stdlib DNS client: does an ExternalName target resolve, and to what?

The controller reports, per ExternalName Service, whether its target resolves, does not exist
(NXDOMAIN) or times out, so an operator sees a broken mapping before traffic does. It asks the
configured nameservers directly over UDP (A and AAAA, recursion desired) with a hard timeout;
``/etc/hosts`` is not consulted because the fleet's HAProxy resolvers do not consult it either.
It must never be called on the reconcile path: the checker thread calls it.
"""

from __future__ import annotations

import ipaddress
import random
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path

A, AAAA = 1, 28
RCODE_NXDOMAIN = 3


@dataclass(frozen=True)
class Resolution:
    status: str  # resolves | nxdomain | timeout | error
    addresses: tuple[str, ...] = ()
    detail: str = ""


def system_nameservers(path: Path = Path("/etc/resolv.conf")) -> list[str]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    return [ln.split()[1] for ln in lines if ln.startswith("nameserver") and len(ln.split()) > 1]


def parse_server(text: str) -> tuple[str, int]:
    """``1.2.3.4``, ``1.2.3.4:5353``, ``[::1]:53`` or ``::1`` → (host, port)."""
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
        return host.rstrip("]"), int(port or 53)
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, int(port)
    return text, 53


def encode_query(qid: int, name: str, qtype: int) -> bytes:
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    labels = b"".join(
        bytes([len(part)]) + part for part in (p.encode("idna") for p in name.strip(".").split("."))
    )
    return header + labels + b"\x00" + struct.pack("!HH", qtype, 1)


def _skip_name(data: bytes, offset: int) -> int:
    while True:
        length = data[offset]
        if length & 0xC0 == 0xC0:
            return offset + 2
        if length == 0:
            return offset + 1
        offset += 1 + length


def decode_answer(data: bytes, qid: int) -> tuple[int, list[str]]:
    """(rcode, addresses) of a response to query ``qid``; ValueError on a malformed one."""
    if len(data) < 12:
        raise ValueError("short DNS response")
    rid, flags, qd, an, _, _ = struct.unpack("!HHHHHH", data[:12])
    if rid != qid:
        raise ValueError("response id does not match")
    offset = 12
    for _ in range(qd):
        offset = _skip_name(data, offset) + 4
    addresses = []
    for _ in range(an):
        offset = _skip_name(data, offset)
        rtype, _, _, length = struct.unpack("!HHIH", data[offset : offset + 10])
        offset += 10
        rdata = data[offset : offset + length]
        offset += length
        if rtype == A and length == 4:
            addresses.append(str(ipaddress.IPv4Address(rdata)))
        elif rtype == AAAA and length == 16:
            addresses.append(str(ipaddress.IPv6Address(rdata)))
    return flags & 0x000F, addresses


class Resolver:
    """Resolves names against ``servers`` (default: the system's nameservers)."""

    def __init__(self, servers: list[str] | None = None, *, timeout: float = 2.0) -> None:
        self._servers = [parse_server(s) for s in (servers or system_nameservers())]
        self._timeout = timeout

    def resolve(self, name: str) -> Resolution:
        try:
            return Resolution("resolves", (str(ipaddress.ip_address(name)),))
        except ValueError:
            pass
        if not self._servers:
            return Resolution("error", detail="no nameserver configured")
        answers = [self._query(name, qtype) for qtype in (A, AAAA)]
        addresses = tuple(a for answer in answers if isinstance(answer, tuple) for a in answer[1])
        if addresses:
            return Resolution("resolves", addresses)
        if any(isinstance(a, tuple) and a[0] == RCODE_NXDOMAIN for a in answers):
            return Resolution("nxdomain", detail=f"{name} does not exist")
        if all(a == "timeout" for a in answers):
            return Resolution("timeout", detail=f"no answer within {self._timeout:g}s")
        return Resolution("error", detail=f"{name} has no address records")

    def _query(self, name: str, qtype: int) -> tuple[int, list[str]] | str:
        deadline = time.monotonic() + self._timeout
        for host, port in self._servers:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            answer = self._ask(host, port, name, qtype, remaining)
            if answer is not None:
                return answer
        return "timeout"

    def _ask(
        self, host: str, port: int, name: str, qtype: int, timeout: float
    ) -> tuple[int, list[str]] | None:
        qid = random.randrange(1 << 16)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            try:
                sock.sendto(encode_query(qid, name, qtype), (host, port))
                while True:
                    data, _ = sock.recvfrom(4096)
                    try:
                        return decode_answer(data, qid)
                    except (ValueError, struct.error, IndexError):
                        continue  # a stray or broken datagram: keep waiting for ours
            except (TimeoutError, OSError):
                return None
