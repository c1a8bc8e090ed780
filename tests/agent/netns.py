"""Run part of a test inside a network namespace the test made: a thread that entered it.

Linux keeps the network namespace per thread; a thread that called ``setns(2)`` creates its
sockets and starts its subprocesses (HAProxy, BIRD) inside that namespace, and so do the threads
it starts. A listening socket created there keeps accepting there whichever thread serves it.
Python 3.11 has no ``os.setns``; libc's is called through ctypes.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def enter(ns: str) -> None:
    """Move the calling thread into the named namespace (``ip netns add`` names)."""
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {ns}: {os.strerror(err)}")
    finally:
        os.close(fd)


def call_in(ns: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a short-lived thread inside ``ns`` and return its result."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            enter(ns)
            box["value"] = fn()
        except BaseException as e:  # handed back to the caller
            box["error"] = e

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def listen_in(ns: str, address: str = "127.0.0.1") -> socket.socket:
    """A bound TCP socket (port chosen by the kernel) inside ``ns``."""

    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((address, 0))
        return sock

    result: socket.socket = call_in(ns, make)
    return result


def thread_in(ns: str, fn: Callable[[], None], name: str) -> threading.Thread:
    """A started thread running ``fn`` inside ``ns``."""

    def target() -> None:
        enter(ns)
        fn()

    thread = threading.Thread(target=target, name=name)
    thread.start()
    return thread
