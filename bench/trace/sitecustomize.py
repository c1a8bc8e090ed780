"""Timeline tracing for bench/fleet.py ``--timeline`` (not part of lbprovider).

Loaded by the API and agent processes the bench starts (``PYTHONPATH`` = the tree, then this
directory) when ``BENCH_TRACE_FILE`` is set: it wraps the functions on the path from a commit to
a live VIP and appends one line per call, ``<role> <name> <start> <end>`` (``time.monotonic``,
which is one clock for every process of the machine), to that file. Nothing else changes.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from typing import Any

_FILE = os.environ.get("BENCH_TRACE_FILE")
_ROLE = os.environ.get("BENCH_TRACE_ROLE", "?")
_lock = threading.Lock()


def _emit(name: str, start: float, end: float, note: str = "") -> None:
    line = f"{_ROLE} {name} {start:.6f} {end:.6f} {note}\n"
    with _lock, open(_FILE, "a") as f:  # type: ignore[arg-type]
        f.write(line)


def _wrap(owner: Any, attr: str, name: str, note: Any = None) -> None:
    original = getattr(owner, attr)

    @functools.wraps(original)
    def traced(*args: Any, **kwargs: Any) -> Any:
        start = time.monotonic()
        result = original(*args, **kwargs)
        extra = ""
        if note is not None:
            try:
                extra = note(args, kwargs, result)
            except Exception:  # tracing never breaks the traced
                extra = "?"
        if extra is not None:
            _emit(name, start, time.monotonic(), extra)
        return result

    setattr(owner, attr, traced)


def _api() -> None:
    from lbprovider.fleet import compile as fc
    from lbprovider.fleet import incremental, protocol

    def refreshed(args: Any, kwargs: Any, result: Any) -> str | None:
        return "compiled"

    _wrap(incremental.IncrementalCompiler, "refresh", "api.compile", refreshed)
    _wrap(fc.Compiled, "state_for", "api.state_for", lambda a, k, r: r.version[:8])
    _wrap(protocol, "current_state", "api.poll", lambda a, k, r: r.version[:8])
    _wrap(protocol, "state_answer", "api.answer", lambda a, k, r: str(len(r[0])))
    _wrap(protocol, "accept_status", "api.report", lambda a, k, r: "")
    _wrap(protocol, "_prepare", "api.prepare", lambda a, k, r: "")
    _wrap(fc, "change_stamp", "api.stamp", lambda a, k, r: "")


def _agent() -> None:
    from lbprovider.agent import client, loop, translate
    from lbprovider.fleet import models
    from lbprovider.haproxy import apply, runtime

    def got(args: Any, kwargs: Any, result: Any) -> str | None:
        return None if result.status_code == 304 or args[1] != "GET" else str(result.status_code)

    _wrap(client.FleetApi, "_request", "agent.http", got)
    _wrap(client.FleetApi, "fetch_state", "agent.fetch", lambda a, k, r: None if r is None else "")
    _wrap(models.FleetDelta, "apply_to", "agent.apply_to", lambda a, k, r: "")
    _wrap(translate.Translator, "__call__", "agent.translate", lambda a, k, r: "")
    _wrap(loop.Agent, "_needs_reload", "agent.needs_reload", lambda a, k, r: str(r))
    _wrap(loop.Agent, "_apply", "agent.apply_all", lambda a, k, r: "")
    _wrap(apply.Applier, "apply", "agent.applier", lambda a, k, r: str(r.commands))
    _wrap(apply.Applier, "derive", "agent.derive", lambda a, k, r: "")
    _wrap(apply, "plan_delta", "agent.plan_delta", lambda a, k, r: "")

    def sent(args: Any, kwargs: Any, result: Any) -> str:
        return args[1][0].text.split(" ", 2)[0] + ":" + str(len(args[1])) if args[1] else "0"

    _wrap(runtime.RuntimeClient, "execute", "agent.execute", sent)
    _wrap(apply.Applier, "_persist", "agent.persist", lambda a, k, r: "")
    _wrap(loop.Agent, "_record", "agent.record", lambda a, k, r: "")
    _wrap(loop.Agent, "_heartbeat", "agent.report", lambda a, k, r: "")
    _wrap(loop.Agent, "_check_round", "agent.checks", lambda a, k, r: "")
    _wrap(loop.Agent, "_save_applied", "agent.save", lambda a, k, r: "")


if _FILE:
    {"api": _api, "agent": _agent}.get(_ROLE, lambda: None)()

if os.environ.get("BENCH_SWITCH_INTERVAL") and _ROLE == "api":  # an experiment's knob
    import sys

    sys.setswitchinterval(float(os.environ["BENCH_SWITCH_INTERVAL"]))

if _FILE:  # every collection of the cyclic GC, as a span
    import gc

    _gc_start: list[float] = [0.0]

    def _gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            _gc_start[0] = time.monotonic()
        elif info.get("generation", 0) >= 1:
            _emit(f"gc{info['generation']}", _gc_start[0], time.monotonic(), str(info["collected"]))

    gc.callbacks.append(_gc)
