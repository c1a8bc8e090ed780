"""HTTP transport of the lab API server: a threaded HTTP/1.1 server with chunked watch streams.

One thread per connection keeps the server dependency-free and lets a watch block on the
store's condition variable while other requests are served. Watch events are written in
batches (everything newer than the last position at once), so a watcher keeps up with
thousands of writes a second; a watch whose client hung up ends at the next wake-up.
`close()` ends every watch stream cleanly (a terminating chunk) and shuts down idle keep-alive
connections, so no thread or socket outlives the server.
This module moves bytes; it must not decide API semantics (see `lbprovider.lab.api`).
"""

from __future__ import annotations

import json
import logging
import select
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from lbprovider.lab.api import Api, Request, Response, WatchSpec
from lbprovider.lab.errors import expired
from lbprovider.lab.store import Store, WatchEvent
from lbprovider.lab.tables import to_table

logger = logging.getLogger(__name__)

JSON = dict[str, Any]


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class LabHTTPServer(ThreadingHTTPServer):
    """Tracks its connections so that stopping the server really ends them."""

    daemon_threads = True
    block_on_close = False

    def __init__(
        self, address: tuple[str, int], api: Api, store: Store, bookmark_interval: float
    ) -> None:
        self.api = api
        self.store = store
        self.bookmark_interval = bookmark_interval
        self.stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        self.stopping.set()
        self.store.wake_all()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with self._connections_lock:
                remaining = list(self._connections)
            if not remaining:
                return
            for sock in remaining:
                try:
                    sock.shutdown(socket.SHUT_RD)
                except OSError:
                    logger.debug("connection already closed", extra={"event": "lab_close"})
            time.sleep(0.02)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms stalls
    server: LabHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("lab request: " + format, *args)

    def _handle(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = Request(
            self.command,
            url.path,
            dict(parse_qsl(url.query)),
            self.headers.get("Accept", ""),
            self.headers.get("Content-Type", ""),
            body,
        )
        result = self.server.api.handle(request)
        if isinstance(result, WatchSpec):
            self._stream(result)
        else:
            self._respond(result)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def _respond(self, response: Response) -> None:
        if isinstance(response.body, bytes):
            data, content_type = response.body, "text/plain; charset=utf-8"
        else:
            data, content_type = _dumps(response.body), "application/json"
        self.send_response(response.code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        self.wfile.write(data)

    # --- watch --------------------------------------------------------------------------------

    def _chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

    def _client_gone(self) -> bool:
        """The client closed its end (EOF readable): a real server ends the watch then, instead
        of filtering every later event for nobody until the watch times out."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _stream(self, spec: WatchSpec) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        try:
            _WatchStream(spec, self.server, self._chunk, self._client_gone).run()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            logger.debug("watch client went away", extra={"event": "lab_watch_closed"})
            self.close_connection = True


class _WatchStream:
    """Writes one watch: initial events, then the log from the start RV, then bookmarks."""

    def __init__(
        self,
        spec: WatchSpec,
        server: LabHTTPServer,
        write: Callable[[bytes], None],
        gone: Callable[[], bool] = lambda: False,
    ) -> None:
        self.spec = spec
        self.server = server
        self.write = write
        self.gone = gone
        self.position = spec.start_rv
        self.deadline = time.monotonic() + spec.timeout

    def run(self) -> None:
        self.write(b"".join(self._line("ADDED", obj) for obj in self.spec.initial))
        if self.spec.initial_events_end:
            self.write(self._bookmark({"k8s.io/initial-events-end": "true"}))
        next_bookmark = time.monotonic() + self.server.bookmark_interval
        while not self.server.stopping.is_set():
            events = self.server.store.events_after(self.position, self.spec.kind.storage_key)
            if events is None:
                message = (
                    f"too old resource version: {self.position} ({self.server.store.compacted + 1})"
                )
                self.write(_dumps({"type": "ERROR", "object": expired(message).status()}) + b"\n")
                return
            if events:
                data = b"".join(self._encode(e) for e in events)
                self.write(data)
                self.position = events[-1].rv
                # Woken for nothing this watch shows: is anyone still there? (A client that
                # receives events is found gone by the failing write instead.)
                if not data and self.gone():
                    return
                continue
            now = time.monotonic()
            if now >= self.deadline:
                if self.spec.bookmarks:
                    self.write(self._bookmark({}))
                return
            if self.spec.bookmarks and now >= next_bookmark:
                self.write(self._bookmark({}))
                next_bookmark = now + self.server.bookmark_interval
            wait = min(self.deadline, next_bookmark if self.spec.bookmarks else self.deadline)
            self.server.store.wait_beyond(
                self.position,
                max(0.0, wait - now),
                self.server.stopping.is_set,
                self.spec.kind.storage_key,
            )

    def _line(self, kind: str, obj: JSON) -> bytes:
        shown = self.spec.present(obj)
        if self.spec.table:
            meta = {"resourceVersion": obj["metadata"]["resourceVersion"]}
            shown = to_table(
                self.spec.kind.kind if self.spec.kind.group != "events.k8s.io" else "Event",
                [obj],
                meta,
                self.spec.include,
            )
        return b'{"type":"%s","object":%s}\n' % (kind.encode(), _dumps(shown))

    def _encode(self, event: WatchEvent) -> bytes:
        if event.storage != self.spec.kind.storage_key:
            return b""
        now_matches = self.spec.matches(event.obj)
        was_matching = event.old is not None and self.spec.matches(event.old)
        kind = event.type
        if kind == "MODIFIED" and now_matches != was_matching:
            kind = "ADDED" if now_matches else "DELETED"
        elif not now_matches:
            return b""
        if self.spec.table:
            return self._line(kind, event.obj)
        key = f"{kind}:{self.spec.kind.group}"
        cached = event.encoded.get(key)
        if cached is None:
            cached = event.encoded[key] = self._line(kind, event.obj)
        return cached

    def _bookmark(self, annotations: dict[str, str]) -> bytes:
        meta: JSON = {"resourceVersion": str(self.position)}
        if annotations:
            meta["annotations"] = annotations
        obj = {
            "kind": self.spec.kind.kind,
            "apiVersion": self.spec.kind.api_version,
            "metadata": meta,
        }
        return _dumps({"type": "BOOKMARK", "object": obj}) + b"\n"
