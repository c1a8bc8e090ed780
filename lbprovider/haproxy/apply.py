"""Make a running HAProxy serve a desired state: runtime changes first, reload only if needed.

Why: a per-Service change must not cost a reload, and the agent may have restarted or someone
may have edited HAProxy by hand, so the diff is taken against HAProxy's *live* state (maps and
servers read through the socket), not against a snapshot. Order protects traffic: servers are
added and made ready before a map line points at them; a map line is removed before its servers
drain and go. A runtime command that fails, or a skeleton that changed, falls back to a full
reload of freshly written files; a file that fails ``haproxy -c`` or a reload that fails to bind
never replaces what is serving.

What it must not do: fetch desired state, talk to Kubernetes, or hide a failure: every problem
ends up in :class:`ApplyResult.errors`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from lbprovider.haproxy import runtime as rt
from lbprovider.haproxy.layout import (
    NODES_BACKEND,
    ROUTES_MAP,
    Layout,
    LiveAssignments,
    Profile,
    ServerSpec,
    allow_map_name,
    build_layout,
    build_skeleton,
    parse_route_value,
    profile_of,
    route_value,
)
from lbprovider.haproxy.model import BindMode, DesiredState, Route, RouteOptions, Settings
from lbprovider.haproxy.process import HAProxyProcess, ReloadFailed
from lbprovider.haproxy.render import (
    ADMIN_SOCKET,
    CONFIG_NAME,
    MASTER_SOCKET,
    STATE_FILE,
    ConfigCheckFailed,
    RenderError,
    RouteMapText,
    config_digest,
    render_config,
    server_arguments,
    write_atomic,
    write_config,
    write_maps,
)
from lbprovider.haproxy.runtime import CommandFailed, HAProxyError, RuntimeClient, ServerState

logger = logging.getLogger(__name__)

SWAP_THRESHOLD = 200  # more route changes than this: replace the map atomically
# routes.map of route-only changes is written at most this often (seconds): a burst of changes
# writes the last map once, instead of rendering and fsyncing every route for each change
ROUTE_MAP_WRITE_GAP = 0.5


@dataclass
class ApplyResult:
    """What an apply did. ``applied`` means HAProxy now serves the desired state."""

    applied: bool = False
    reloaded: bool = False
    errors: list[str] = field(default_factory=list)
    commands: int = 0
    pending: list[str] = field(default_factory=list)  # e.g. servers kept until idle


@dataclass(frozen=True)
class LiveState:
    """HAProxy's state as read through the socket."""

    routes: list[tuple[str, str]]
    allow: dict[int, list[str]]
    servers: list[ServerState]

    def assignments(self) -> LiveAssignments:
        """Slot ownership, for :func:`build_layout` to keep."""
        backends = {}
        for key, value in self.routes:
            parsed = parse_route_value(value)
            if parsed is not None:
                backends[key] = parsed[0]
        contents = {s: frozenset(c) for s, c in self.allow.items() if c}
        return LiveAssignments(backends, contents)


@dataclass
class RuntimePlan:
    """Runtime commands in the order that keeps traffic flowing."""

    up: list[rt.Command] = field(default_factory=list)  # add/ready servers, set check ports
    maps: list[rt.Command] = field(default_factory=list)  # allow lists, then routes
    down: list[rt.Command] = field(default_factory=list)  # unmap, drain, maint
    deletes: list[rt.Command] = field(default_factory=list)  # del server, one by one

    def __len__(self) -> int:
        return len(self.up) + len(self.maps) + len(self.down) + len(self.deletes)


def paths(settings: Settings) -> tuple[Path, Path, Path]:
    """(config, admin socket, master socket) under ``settings.run_dir``."""
    run = Path(settings.run_dir)
    return run / CONFIG_NAME, run / ADMIN_SOCKET, run / MASTER_SOCKET


def read_live(client: RuntimeClient, settings: Settings, allow_slots: int) -> LiveState:
    """Read maps and servers from the running worker."""
    run = settings.run_dir
    routes = client.show_map(f"{run}/{ROUTES_MAP}")
    allow: dict[int, list[str]] = {}
    for slot in range(1, allow_slots + 1):
        try:
            allow[slot] = [k for k, _ in client.show_map(f"{run}/{allow_map_name(slot)}")]
        except CommandFailed:
            break  # the running skeleton has fewer slots
    return LiveState(routes, allow, client.show_servers_state())


def _wanted_admin(spec: ServerSpec) -> str:
    if spec.maintenance:
        return "maint"
    return "drain" if spec.drain else "ready"


def _live_admin(server: ServerState) -> str:
    if server.admin_state & 0x01:
        return "maint"
    return "drain" if server.drain else "ready"


def _plan_servers(layout: Layout, live: LiveState, plan: RuntimePlan) -> None:
    sk = layout.skeleton
    current = {(s.backend, s.name): s for s in live.servers}
    for spec in layout.servers:
        have = current.get((spec.backend, spec.name))
        wanted = _wanted_admin(spec)
        if have is None:
            args = server_arguments(spec, sk, dynamic=True).replace(" disabled", "")
            plan.up.append(rt.add_server(spec.backend, spec.name, args))
            plan.up.append(rt.enable_health(spec.backend, spec.name))
            if wanted != "maint":
                plan.up.append(rt.set_server_state(spec.backend, spec.name, wanted))
            continue
        if have.address != str(spec.address):
            plan.up.append(rt.set_server_addr(spec.backend, spec.name, str(spec.address)))
        if spec.check_port is not None and have.check_port != spec.check_port:
            plan.up.append(rt.set_server_check_port(spec.backend, spec.name, spec.check_port))
        state = _live_admin(have)
        if state != wanted:
            up = wanted == "ready" or state == "maint"
            (plan.up if up else plan.down).append(
                rt.set_server_state(spec.backend, spec.name, wanted)
            )
    _plan_deletes(layout, live, plan)


def _plan_deletes(layout: Layout, live: LiveState, plan: RuntimePlan) -> None:
    wanted = {(s.backend, s.name) for s in layout.servers}
    ours = set(layout.backends())
    gone = [s for s in live.servers if s.backend in ours and (s.backend, s.name) not in wanted]
    # Trackers first: a server of be_nodes cannot go while others track it.
    gone.sort(key=lambda s: (s.backend == NODES_BACKEND, s.backend, s.name))
    for server in gone:
        if not server.admin_state & 0x01:
            plan.down.append(rt.set_server_state(server.backend, server.name, "maint"))
        plan.deletes.append(rt.del_server(server.backend, server.name))


def _plan_allow_maps(layout: Layout, live: LiveState, plan: RuntimePlan) -> None:
    run = layout.skeleton.settings.run_dir
    for slot, cidrs in layout.allow_maps.items():
        have = live.allow.get(slot, [])
        if sorted(have) == sorted(cidrs):
            continue
        path = f"{run}/{allow_map_name(slot)}"
        target = plan.maps if cidrs else plan.down
        target.append(rt.prepare_map(path))  # the answer carries the version: see _swap
        target.append(_SWAP_MARK)
        target.extend(rt.Command(f"{_ADD_PREFIX}{path} {rt.arg(c)} 1") for c in cidrs)
        target.append(rt.Command(f"{_COMMIT_PREFIX}{path}"))


# prepare/add @ver/commit need the version HAProxy answers; these markers are resolved while
# sending (see _execute): the version is substituted in the following add/commit lines.
_SWAP_MARK = rt.Command("#swap")
_ADD_PREFIX = "add map @VER "
_COMMIT_PREFIX = "commit map @VER "


def _plan_routes(layout: Layout, live: LiveState, plan: RuntimePlan) -> None:
    path = f"{layout.skeleton.settings.run_dir}/{ROUTES_MAP}"
    have: dict[str, list[str]] = {}
    for key, value in live.routes:
        have.setdefault(key, []).append(value)
    wanted = layout.route_map
    changes = [k for k, v in wanted.items() if have.get(k) != [v]]
    removals = [k for k in have if k not in wanted]
    if len(changes) + len(removals) > SWAP_THRESHOLD:
        plan.maps += [rt.prepare_map(path), _SWAP_MARK]
        plan.maps += [
            rt.Command(f"{_ADD_PREFIX}{path} {rt.arg(k)} {rt.arg(v)}")
            for k, v in sorted(wanted.items())
        ]
        plan.maps.append(rt.Command(f"{_COMMIT_PREFIX}{path}"))
        return
    for key in changes:
        if key not in have:
            plan.maps.append(rt.add_map(path, key, wanted[key]))
        elif len(have[key]) == 1:
            plan.maps.append(rt.set_map(path, key, wanted[key]))
        else:  # duplicates (a hand edit): replace them by one line
            plan.maps += [rt.del_map(path, key), rt.add_map(path, key, wanted[key])]
    plan.down[:0] = [rt.del_map(path, key) for key in sorted(removals)]


def plan_runtime(layout: Layout, live: LiveState) -> RuntimePlan:
    """The runtime commands that turn ``live`` into ``layout`` (skeleton unchanged)."""
    plan = RuntimePlan()
    _plan_servers(layout, live, plan)
    _plan_allow_maps(layout, live, plan)
    _plan_routes(layout, live, plan)
    return plan


def _execute(client: RuntimeClient, commands: Sequence[rt.Command]) -> int:
    """Send ``commands`` pipelined, resolving map swaps; return how many were sent."""
    sent = 0
    chunk: list[rt.Command] = []
    version = ""
    for cmd in commands:
        if cmd is _SWAP_MARK:
            answer = client.execute(chunk)[-1]
            sent += len(chunk)
            version, chunk = answer.rsplit(" ", 1)[-1], []
            continue
        if cmd.text.startswith(("add map @VER ", "commit map @VER ")):
            cmd = rt.Command(cmd.text.replace("@VER", f"@{rt.arg(version)}", 1), cmd.ok)
        chunk.append(cmd)
    client.execute(chunk)
    return sent + len(chunk)


def _execute_deletes(
    client: RuntimeClient, deletes: Sequence[rt.Command], result: ApplyResult
) -> None:
    answers = client.send(deletes)
    for cmd, answer in zip(deletes, answers, strict=True):
        if cmd.succeeded(answer):
            continue
        # Still has connections, or a static server others point at: it stays in maintenance
        # (no traffic) and goes with the next reload, whose config no longer declares it.
        if "connection" in answer.lower() or "cannot be removed" in answer:
            result.pending.append(f"{cmd.text}: {answer}")
        else:
            raise CommandFailed([(cmd.text, answer)])
    result.commands += len(deletes)


@dataclass(frozen=True)
class Known:
    """What this applier last made HAProxy serve (equal to its live state at that moment):
    the base of the next apply's layout, so a change of a few routes costs a few routes."""

    desired: DesiredState
    layout: Layout
    by_key: dict[str, Route]
    binds: Counter[tuple[object, int]]  # routes per skeleton bind
    profiles: Counter[Profile]  # routes per profile
    # derived: (the layout it was derived from, the route-map keys set, those dropped)
    moved: tuple[Layout, tuple[str, ...], tuple[str, ...]] | None = None

    @classmethod
    def of(cls, desired: DesiredState, layout: Layout) -> Known:
        settings = layout.skeleton.settings
        return cls(
            desired,
            layout,
            {r.key: r for r in desired.routes},
            Counter(_bind_of(r, settings) for r in desired.routes),
            Counter(profile_of(r.options, settings) for r in desired.routes),
        )


def _bind_of(route: Route, settings: Settings) -> tuple[object, int]:
    address = route.address if settings.bind_mode is BindMode.PER_VIP else None
    return (address, route.port)


def derive_layout(known: Known, desired: DesiredState) -> Known | None:
    """``desired``'s layout derived from the known one when only Cluster routes without
    source ranges changed and the skeleton stays the same; ``None`` when it must be built
    from scratch (nodes, health check, Local or allow-listed routes, a new bind or profile)."""
    old = known.desired
    if desired.nodes != old.nodes or desired.health_check != old.health_check:
        return None
    settings = known.layout.skeleton.settings
    if desired.change is not None and desired.change[0]() is old:
        # made from the known state by DesiredState.with_changes: the change is known
        _, added, removed = desired.change
        new_keys = desired.route_keys
        changed = [r for r in added if known.by_key.get(r.key) is not r]
        gone = [r for r in removed if r.key not in new_keys]
    else:
        new_keys = {r.key for r in desired.routes}
        changed = [r for r in desired.routes if known.by_key.get(r.key) is not r]
        gone = [r for key, r in known.by_key.items() if key not in new_keys]
    replaced = [o for r in changed if (o := known.by_key.get(r.key)) is not None]
    if any(r.is_local or r.options.source_ranges for r in (*changed, *gone, *replaced)):
        return None
    binds, profiles = known.binds.copy(), known.profiles.copy()
    for r in (*gone, *replaced):
        binds[_bind_of(r, settings)] -= 1
        profiles[profile_of(r.options, settings)] -= 1
    for r in changed:
        binds[_bind_of(r, settings)] += 1
        profiles[profile_of(r.options, settings)] += 1
    binds, profiles = +binds, +profiles  # drop the zero counts
    sk = known.layout.skeleton
    default = profile_of(RouteOptions(), settings)
    if set(binds) != {b for b in sk.binds} or set(profiles) | {default} != set(sk.profiles):
        return None
    route_map = dict(known.layout.route_map)
    for r in gone:
        del route_map[r.key]
    for r in changed:
        prof = profile_of(r.options, settings)
        route_map[r.key] = route_value(prof.shared_backend, r.node_port, r.options.maxconn, 0)
    old_layout = known.layout
    layout = Layout(sk, route_map, old_layout.allow_maps, old_layout.servers, old_layout.nodes)
    by_key = dict(known.by_key)
    for r in gone:
        del by_key[r.key]
    by_key.update((r.key, r) for r in changed)
    moved = (old_layout, tuple(r.key for r in changed), tuple(r.key for r in gone))
    return Known(desired, layout, by_key, binds, profiles, moved)


def plan_delta(
    before: Layout,
    after: Layout,
    moved: tuple[Layout, tuple[str, ...], tuple[str, ...]] | None = None,
) -> RuntimePlan:
    """Map commands from one route map to another (skeleton, servers and allow maps equal).

    ``moved``: ``after`` was derived from the layout it names by setting and dropping those
    keys (:attr:`Known.moved`); when that is ``before``, only those keys are looked at (every
    other key holds the same value in both), else every key of both maps."""
    plan = RuntimePlan()
    path = f"{after.skeleton.settings.run_dir}/{ROUTES_MAP}"
    old, new = before.route_map, after.route_map
    if moved is not None and moved[0] is before:
        upserted, dropped = dict.fromkeys(moved[1]), moved[2]
        candidates: Iterable[tuple[str, str]] = ((k, new[k]) for k in upserted if k in new)
        leaving: Iterable[str] = sorted(k for k in set(dropped) if k in old)
    else:
        candidates, leaving = new.items(), sorted(old)
    for key, value in candidates:
        have = old.get(key)
        if have is None:
            plan.maps.append(rt.add_map(path, key, value))
        elif have != value:
            plan.maps.append(rt.set_map(path, key, value))
    plan.down = [rt.del_map(path, key) for key in leaving if key not in new]
    return plan


class Applier:
    """Applies desired states to one HAProxy; keeps one persistent runtime connection.

    After a successful apply it keeps what it applied (:class:`Known`). The next apply derives
    its layout from that when it can (see :func:`derive_layout`) and then either diffs it
    against HAProxy's live state (``live=True``: maps and servers read through the socket) or,
    with ``live=False``, sends only what changed since the known state. Any failure forgets the
    known state, so the next apply reads everything again.
    """

    def __init__(self, settings: Settings, process: HAProxyProcess, haproxy_bin: str = "haproxy"):
        self.settings = settings
        self.process = process
        self.haproxy_bin = haproxy_bin
        self.config_path, admin, _ = paths(settings)
        self.client = RuntimeClient(str(admin))
        self.known: Known | None = None
        self._derived: tuple[Known, DesiredState, Known | None] | None = None
        self._route_map_text = RouteMapText()
        # routes.map of a route-only change is written by a thread of its own, after the
        # runtime commands (see _persist_later). Every write of the files holds _write_lock
        # and bumps _generation under _files, so a write handed over earlier never lands
        # after a newer one
        self._files = threading.Condition()
        self._write_lock = threading.Lock()
        self._generation = 0
        self._waiting: tuple[int, Layout] | None = None  # the route map to write next
        self._writing = False
        self._write_error: str | None = None  # the last deferred write's failure, reported
        self._behind = False  # the last write of this thread's own failed
        self._writer: threading.Thread | None = None
        self._closed = False
        self._hurry = 0  # flush() calls waiting: the writer writes at once
        self._written_at = float("-inf")  # monotonic time of the writer's last write
        self.write_gap = ROUTE_MAP_WRITE_GAP

    def close(self) -> None:
        """Write the route map still waiting, then close the runtime connection (the process
        keeps running)."""
        self.flush()
        with self._files:
            self._closed = True
            self._files.notify_all()
        if self._writer is not None:
            self._writer.join(timeout=30)
        self.client.close()

    def flush(self) -> None:
        """Return once no route map waits to be written or is being written (the one
        waiting is written at once, not after the writer's gap)."""
        with self._files:
            self._hurry += 1
            self._files.notify_all()
            try:
                while self._waiting is not None or self._writing:
                    self._files.wait()
            finally:
                self._hurry -= 1

    def apply(self, desired: DesiredState, *, live: bool = True) -> ApplyResult:
        """Converge HAProxy to ``desired``; never raises for a HAProxy-side failure.

        ``live=False`` trusts that HAProxy still serves the known state and sends only the
        difference (when the layout can be derived); ``True`` diffs against the live state."""
        derived = self.derive(desired)
        if (
            derived is not None
            and config_digest(self.config_path) == derived.layout.skeleton.digest
        ):
            result = self._apply_derived(derived, live=live)
            if result is not None:
                return result
        self.known = None
        result = ApplyResult()
        self._take_write_error(result)
        try:
            layout, seen = self._layout(desired)
        except HAProxyError as e:
            result.errors.append(f"reading live state: {e}")
            return result
        if config_digest(self.config_path) != layout.skeleton.digest:
            return self._reload(desired, result)
        try:
            self._apply_runtime(layout, seen, result)
        except HAProxyError as e:
            logger.warning("runtime apply failed, reloading", extra={"error": str(e)})
            result.errors.append(f"runtime: {e}")
            return self._reload(desired, result)
        self._persist(layout, result)
        self.known = Known.of(desired, layout)
        result.applied = True
        return result

    def derive(self, desired: DesiredState) -> Known | None:
        """:func:`derive_layout` from the known state (remembered for the same ``desired``)."""
        known = self.known
        if known is None:
            return None
        last = self._derived
        if last is not None and last[0] is known and last[1] is desired:
            return last[2]
        derived = derive_layout(known, desired)
        self._derived = (known, desired, derived)
        return derived

    def _apply_derived(self, derived: Known, *, live: bool) -> ApplyResult | None:
        """Apply a derived layout; ``None`` (known state forgotten) when that failed."""
        assert self.known is not None
        result = ApplyResult()
        with self._files:
            behind = self._behind or self._write_error is not None
        if behind:  # a write of the files failed: the whole path persists them (and says so)
            self.known = None
            return None
        try:
            if live:
                state = read_live(self.client, self.settings, derived.layout.skeleton.allow_slots)
                plan = plan_runtime(derived.layout, state)
            else:
                plan = plan_delta(self.known.layout, derived.layout, derived.moved)
            self._execute_plan(plan, result)
        except HAProxyError as e:
            logger.warning("incremental apply failed, reading everything", extra={"error": str(e)})
            self.known = None
            return None
        # Only routes.map changed (a derived layout keeps the skeleton, servers and allow
        # maps, so the config and the other maps on disk already hold it): written by the
        # writer thread, so the agent asks for the next change meanwhile.
        self._persist_later(derived.layout)
        self.known = derived
        result.applied = True
        return result

    def _persist_later(self, layout: Layout) -> None:
        with self._files:
            self._generation += 1
            self._waiting = (self._generation, layout)
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_maps, name="haproxy-route-map", daemon=True
                )
                self._writer.start()
            self._files.notify_all()

    def _write_maps(self) -> None:
        """The writer thread: write each route map handed over (of several, the latest; none
        that a newer write superseded), at most once per ``write_gap`` seconds unless a
        :meth:`flush` waits. A reload or whole apply in between writes every file itself
        (``_writing_files`` supersedes what waits), and an agent restarted meanwhile diffs
        against HAProxy's live maps, so a file up to ``write_gap`` behind loses nothing."""
        while True:
            with self._files:
                while self._waiting is None and not self._closed:
                    self._files.wait()
                while self._waiting is not None and not self._closed and not self._hurry:
                    left = self._written_at + self.write_gap - time.monotonic()
                    if left <= 0:
                        break
                    self._files.wait(left)  # newer maps replace the waiting one meanwhile
                if self._waiting is None:
                    if self._closed:
                        return
                    continue  # superseded by a write of the applier's own
                (generation, layout), self._waiting = self._waiting, None
                self._writing = True
            try:
                with self._write_lock:
                    with self._files:
                        current = generation == self._generation
                    if current:
                        text = self._route_map_text.render(layout)
                        write_atomic(Path(layout.skeleton.settings.run_dir) / ROUTES_MAP, text)
            except (OSError, RenderError) as e:
                logger.warning("could not write the route map", extra={"error": str(e)})
                with self._files:
                    self._write_error = f"persisting files: {e}"
            finally:
                with self._files:
                    self._writing = False
                    self._written_at = time.monotonic()
                    self._files.notify_all()

    @contextmanager
    def _writing_files(self) -> Iterator[None]:
        """Hold the files for a write of this thread's own, superseding any handed over."""
        with self._write_lock:
            with self._files:
                self._generation += 1
                self._waiting = None
                self._files.notify_all()
            yield

    def _take_write_error(self, result: ApplyResult) -> bool:
        """Move a failed deferred write's error into ``result``; whether there was one."""
        with self._files:
            error, self._write_error = self._write_error, None
        if error is not None:
            result.errors.append(error)
        return error is not None

    def _layout(self, desired: DesiredState) -> tuple[Layout, LiveState]:
        slots = build_skeleton(desired, self.settings).allow_slots
        live = read_live(self.client, self.settings, slots)
        return build_layout(desired, self.settings, live.assignments()), live

    def _apply_runtime(self, layout: Layout, live: LiveState, result: ApplyResult) -> None:
        self._execute_plan(plan_runtime(layout, live), result)

    def _execute_plan(self, plan: RuntimePlan, result: ApplyResult) -> None:
        for phase in (plan.up, plan.maps, plan.down):
            result.commands += _execute(self.client, phase)
        if plan.deletes:
            _execute_deletes(self.client, plan.deletes, result)
        if len(plan):
            logger.info(
                "runtime changes applied", extra={"event": "runtime_apply", "commands": len(plan)}
            )

    def _persist(self, layout: Layout, result: ApplyResult) -> None:
        """Keep files equal to what runs, so a reload or restart loses nothing."""
        try:
            with self._writing_files():
                write_maps(layout, self._route_map_text)
                if _read(self.config_path) != render_config(layout):
                    write_config(layout, self.haproxy_bin)
            self._behind = False
        except (OSError, ConfigCheckFailed) as e:
            self._behind = True
            result.errors.append(f"persisting files: {e}")

    def _save_server_state(self) -> None:
        state = self.client.show("servers", "state")
        write_atomic(Path(self.settings.run_dir) / STATE_FILE, state + "\n")

    def _reload(self, desired: DesiredState, result: ApplyResult) -> ApplyResult:
        previous = _read(self.config_path)
        try:
            layout, _ = self._layout(desired)
            self._save_server_state()
            with self._writing_files():
                write_config(layout, self.haproxy_bin)
        except (HAProxyError, ConfigCheckFailed, OSError) as e:
            result.errors.append(f"config refused, old config kept: {e}")
            self._restore(previous)
            return result
        self.client.close()  # the admin socket moves to the new worker
        try:
            self.process.reload()
        except (ReloadFailed, HAProxyError) as e:
            result.errors.append(f"reload failed, previous worker still serving: {e}")
            self._restore(previous)
            return result
        result.reloaded = True
        return self._converge_after_reload(desired, result)

    def _converge_after_reload(self, desired: DesiredState, result: ApplyResult) -> ApplyResult:
        try:
            layout, live = self._layout(desired)
            self._apply_runtime(layout, live, result)
        except HAProxyError as e:
            result.errors.append(f"after reload: {e}")
            return result
        self._persist(layout, result)
        self.known = Known.of(desired, layout)
        result.applied = True
        return result

    def _restore(self, previous: str | None) -> None:
        """Put back the config that runs, and map files equal to the live maps."""
        if previous is not None:
            write_atomic(self.config_path, previous)
        try:
            run = Path(self.settings.run_dir)
            routes = self.client.show_map(f"{run}/{ROUTES_MAP}")
            with self._writing_files():
                write_atomic(run / ROUTES_MAP, "".join(f"{k} {v}\n" for k, v in routes))
        except (HAProxyError, OSError) as e:
            logger.warning("could not restore map files", extra={"error": str(e)})


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def start_or_attach(
    desired: DesiredState, settings: Settings, haproxy_bin: str = "haproxy"
) -> HAProxyProcess:
    """Attach to the master socket if a master answers there, else write files and start one."""
    config, _, master = paths(settings)
    if master.exists():
        try:
            return HAProxyProcess.attach(master)
        except HAProxyError:
            logger.info("stale master socket, starting haproxy", extra={"path": str(master)})
    write_config(build_layout(desired, settings), haproxy_bin)
    return HAProxyProcess.start(config, master, haproxy_bin=haproxy_bin)
