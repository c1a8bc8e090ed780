"""A tiny authoritative DNS server on loopback UDP: known names answer, others are NXDOMAIN,
names listed as ``silent`` never get an answer (a timeout)."""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading


class DNSServer:
    def __init__(self, records: dict[str, list[str]], silent: set[str] | None = None) -> None:
        self.records = {k.rstrip(".").lower(): v for k, v in records.items()}
        self.silent = {s.rstrip(".").lower() for s in silent or set()}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.queries: list[str] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> DNSServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
        self._thread.join(5)

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(512)
            except OSError:
                return
            reply = self._answer(data)
            if reply is not None:
                self.sock.sendto(reply, peer)

    def _answer(self, data: bytes) -> bytes | None:
        qid = struct.unpack("!H", data[:2])[0]
        labels, offset = [], 12
        while data[offset]:
            length = data[offset]
            labels.append(data[offset + 1 : offset + 1 + length].decode())
            offset += 1 + length
        qtype = struct.unpack("!H", data[offset + 1 : offset + 3])[0]
        question = data[12 : offset + 5]
        name = ".".join(labels).lower()
        self.queries.append(name)
        if name in self.silent:
            return None
        if name not in self.records:
            return struct.pack("!HHHHHH", qid, 0x8183, 1, 0, 0, 0) + question
        answers = b""
        count = 0
        for text in self.records[name]:
            addr = ipaddress.ip_address(text)
            rtype = 1 if addr.version == 4 else 28
            if rtype != qtype:
                continue
            answers += struct.pack("!HHHIH", 0xC00C, rtype, 1, 30, len(addr.packed)) + addr.packed
            count += 1
        return struct.pack("!HHHHHH", qid, 0x8180, 1, count, 0, 0) + question + answers
