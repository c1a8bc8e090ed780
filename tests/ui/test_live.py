"""Live updates over server-sent events: a change written by another writer reaches an open
stream as the topic to re-fetch, and streams end cleanly when the server shuts down — in a
thread (our exit flag) and as a real process receiving SIGTERM (uvicorn's own flag)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from .conftest import Server, Ui, add_service, make_pool, make_token, start_ui

ROOT = Path(__file__).resolve().parents[2]


def read_events(response: httpx.Response, sink: list[tuple[str, str]]) -> None:
    event = ""
    for line in response.iter_lines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            sink.append((event, line[6:]))


def wait_for(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_a_new_allocation_is_announced_as_a_ledger_and_services_change(ui: Ui) -> None:
    make_pool(ui.sessions, "web", "127.1.0.0/29")
    b = ui.signed_in("read")
    seen: list[tuple[str, str]] = []
    with b.http.stream("GET", "/events", timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        reader = threading.Thread(target=read_events, args=(r, seen), daemon=True)
        reader.start()
        assert wait_for(lambda: ("hello", "live") in seen)
        time.sleep(0.5)  # the hub has read its first fingerprint
        add_service(ui.sessions, "shop", "front", pool="web")
        assert wait_for(lambda: any(e == "change" and "ledger" in d for e, d in seen)), seen
        change = next(d for e, d in seen if e == "change" and "ledger" in d)
        assert "services" in change.split(",")
        ui.server.ui.hub.close()
        reader.join(timeout=5)
    assert ("bye", "shutdown") in seen


@pytest.mark.parametrize("engine", ["sqlite"], indirect=True)
def test_streams_end_cleanly_when_the_server_stops(engine, sessions) -> None:  # type: ignore[no-untyped-def]
    gen = start_ui(engine, sessions)
    ui = next(gen)
    b = ui.signed_in("read")
    seen: list[tuple[str, str]] = []
    with b.http.stream("GET", "/events", timeout=30) as r:
        reader = threading.Thread(target=read_events, args=(r, seen), daemon=True)
        reader.start()
        assert wait_for(lambda: ("hello", "live") in seen)
        started = time.monotonic()
        stopper = threading.Thread(target=ui.server.stop)
        stopper.start()
        stopper.join(timeout=10)
        took = time.monotonic() - started
        reader.join(timeout=5)
    assert not stopper.is_alive() and took < 5, took
    assert ("bye", "shutdown") in seen
    assert not reader.is_alive()
    with pytest.raises(StopIteration):
        next(gen)  # the fixture's own stop on an already stopped server is harmless


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SERVE = """
import sys, uvicorn
from lbprovider.api.app import create_app
from lbprovider.config import Settings
from lbprovider.db.models import Base
from lbprovider.db.session import make_engine
engine = make_engine(sys.argv[1])
app = create_app(Settings(database_url=sys.argv[1], session_secret="s"), engine=engine)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


def test_sigterm_ends_open_streams_and_the_process_exits(tmp_path: Path) -> None:
    from lbprovider.db.models import Base
    from lbprovider.db.session import make_engine, session_factory

    url = f"sqlite:///{tmp_path / 'sig.db'}"
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    secret = make_token(session_factory(engine), "admin", ["admin"])
    engine.dispose()
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, url, str(port)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        base = f"http://127.0.0.1:{port}"
        assert wait_for(lambda: _up(base), timeout=20)
        ui_like = httpx.Client(base_url=base, timeout=30)
        from .conftest import CSRF_RE

        csrf = CSRF_RE.search(ui_like.get("/login").text)
        assert csrf
        ui_like.post("/login", data={"token": secret, "csrf_token": csrf.group(1)})
        seen: list[tuple[str, str]] = []
        with ui_like.stream("GET", "/events") as r:
            reader = threading.Thread(target=read_events, args=(r, seen), daemon=True)
            reader.start()
            assert wait_for(lambda: ("hello", "live") in seen)
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            # uvicorn shuts down gracefully, then re-raises the signal it caught.
            assert proc.wait(timeout=10) in (0, -signal.SIGTERM)
            took = time.monotonic() - started
            reader.join(timeout=5)
        ui_like.close()
        assert ("bye", "shutdown") in seen and took < 5, (seen, took)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _up(base: str) -> bool:
    try:
        return httpx.get(base + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


assert Server  # re-exported fixture helper used by the browser tests
