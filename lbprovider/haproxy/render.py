"""Render the HAProxy skeleton config and its map files, and write them atomically.

Design (measured on Debian's HAProxy 2.6, see issue 6): a frontend or backend per Service costs
about 400 MB and a 2 s reload at 10,000 Services; this skeleton costs tens of MB and a reload
well under a second, and a new Service goes live with ``add map``, without a reload.

* **One frontend** ``fe_main``. Wildcard mode binds once per distinct port (a new VIP on a bound
  port needs no reload); per-VIP mode binds each VIP:port (``transparent`` for VIPs routed to
  the host but not configured on it).
* **Routing by map**: ``routes.map`` is keyed on ``%[dst]:%[dst_port]``; its value is
  ``backend|nodeport|maxconn|allowslot``. ``tcp-request content set-dst-port`` writes the
  NodePort into the destination, and servers carry no port, so one backend of all nodes serves
  every Service. One map line per Service means one ``add map``/``del map`` per change, with no
  moment where half of a route is defined. An unknown key is rejected.
* **Per-route options**: what HAProxy can only express per backend (PROXY protocol as a server
  keyword, balance, timeouts) selects a *profile*; each distinct profile present gets one
  shared backend ``bs_<profile>``, so the count follows option combinations, not Services.
  ``maxconn`` is per route through a stick table keyed by the same key (connections over the
  limit are refused, not queued). ``loadBalancerSourceRanges`` use a bounded set of pre-declared
  ip maps ``allow-N.map``; routes with the same list share a slot.
* **Health**: ``be_nodes`` checks each node once (kube-proxy ``:10256/healthz`` or TCP); the
  shared backends ``track`` it. HAProxy cannot track a server added at runtime, so a node added
  live gets its own check in each backend until the next reload declares it.
* **Local policy**: a power-of-two number of pre-declared backends ``bl_<profile>_<i>`` per
  profile, their servers checked with ``GET /healthz`` on the Service's healthCheckNodePort
  (set live with ``set server ... check-port``). Free slots hold servers in maintenance.
  More Local Services than slots is a skeleton change (reload).
* **Global**: master-worker, admin ``stats socket`` with ``expose-fd listeners`` (seamless
  reload), ``hard-stop-after`` so old workers kept by long connections die, a server-state file
  loaded on reload, ``maxconn`` (HAProxy derives its file limit from it).

Every file is written atomically, with the dynamic state (map lines, servers, check ports)
included, so a reload or a master restart loses nothing. Every interpolated token is checked
against a strict pattern here too, on top of model.py: a hostile string can never add a line.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import subprocess
import tempfile
from pathlib import Path

from lbprovider.haproxy.layout import (
    LOCAL_CHECK_PATH,
    NODES_BACKEND,
    REJECT_BACKEND,
    ROUTES_MAP,
    TABLE_BACKEND,
    Layout,
    Profile,
    ServerSpec,
    Skeleton,
    allow_map_name,
    server_address,
)
from lbprovider.haproxy.model import Balance, HealthCheckKind, IPAddress

logger = logging.getLogger(__name__)

CONFIG_NAME = "haproxy.cfg"
ADMIN_SOCKET = "admin.sock"
MASTER_SOCKET = "master.sock"
STATE_FILE = "server-state"
DIGEST_PREFIX = "# lbprovider skeleton "
_TOKEN_RE = re.compile(r"[A-Za-z0-9._:/@\[\]|-]+")


class RenderError(Exception):
    """A value that would break the file format reached the renderer."""


class ConfigCheckFailed(Exception):
    """``haproxy -c`` refused the rendered config; the file in place was not touched."""


def token(value: object) -> str:
    """``str(value)`` if it is a single safe token (no space, '#', quote, ';', newline...)."""
    text = str(value)
    if not _TOKEN_RE.fullmatch(text):
        raise RenderError(f"unsafe token {text!r}")
    return text


def _ms(value: int) -> str:
    return f"{token(value)}ms"


def render_config(layout: Layout) -> str:
    """The full config text: global, defaults, frontend, backends with current servers."""
    sk = layout.skeleton
    lines = [DIGEST_PREFIX + token(sk.digest)]
    lines += _global(sk) + _defaults(sk) + _frontend(sk) + _fixed_backends(sk)
    lines += _nodes_backend(sk, layout)
    for prof in sk.profiles:
        lines += _profile_backend(prof, prof.shared_backend, sk, layout, local=False)
    for prof, count in sk.local_slots:
        for slot in range(count):
            lines += _profile_backend(prof, prof.local_backend(slot), sk, layout, local=True)
    return "\n".join(lines) + "\n"


def _global(sk: Skeleton) -> list[str]:
    run = sk.settings.run_dir
    return [
        "global",
        "    master-worker",
        f"    nbthread {token(sk.settings.nbthread)}",
        f"    maxconn {token(sk.settings.maxconn)}",
        f"    stats socket {token(run)}/{ADMIN_SOCKET} mode 600 level admin expose-fd listeners",
        f"    hard-stop-after {_ms(sk.settings.hard_stop_after_ms)}",
        f"    server-state-file {token(run)}/{STATE_FILE}",
        "",
    ]


def _defaults(sk: Skeleton) -> list[str]:
    s = sk.settings
    return [
        "defaults",
        "    mode tcp",
        f"    timeout connect {_ms(s.timeout_connect_ms)}",
        f"    timeout client {_ms(s.timeout_client_ms)}",
        f"    timeout server {_ms(s.timeout_server_ms)}",
        "    load-server-state-from-file global",
        "",
    ]


def _bind_line(address: IPAddress | None, port: int, sk: Skeleton) -> str:
    s = sk.settings
    addr = address if address is not None else s.bind_address
    if addr is None:
        return f"    bind ipv4@0.0.0.0:{token(port)}"
    family = "ipv6" if isinstance(addr, ipaddress.IPv6Address) else "ipv4"
    extra = " transparent" if (address is not None and s.transparent) else ""
    return f"    bind {family}@{token(addr)}:{token(port)}{extra}"


def _frontend(sk: Skeleton) -> list[str]:
    run = token(sk.settings.run_dir)
    rule = "    tcp-request content"
    lines = ["frontend fe_main"]
    lines += [_bind_line(addr, port, sk) for addr, port in sk.binds]
    lines += [
        f'{rule} set-var-fmt(txn.key) "%[dst]:%[dst_port]"',
        f"{rule} set-var(txn.route) var(txn.key),map_str({run}/{ROUTES_MAP})",
        f"{rule} reject unless {{ var(txn.route) -m found }}",
        f"{rule} set-var(txn.nodeport) var(txn.route),field(2,|)",
        f"{rule} set-var(txn.maxconn) var(txn.route),field(3,|)",
        f"{rule} set-var(txn.allow) var(txn.route),field(4,|)",
    ]
    for slot in range(1, sk.allow_slots + 1):
        path = f"{run}/{allow_map_name(slot)}"
        lines.append(
            f"{rule} reject if {{ var(txn.allow) -m int eq {slot} }} "
            f"!{{ src,map_ip({path}) -m found }}"
        )
    lines += [
        f"{rule} track-sc0 var(txn.key) table {TABLE_BACKEND}",
        f"{rule} reject if {{ var(txn.maxconn) -m int gt 0 }} "
        "{ sc0_conn_cur,sub(txn.maxconn) -m int gt 0 }",
        f"{rule} set-dst-port var(txn.nodeport)",
        "    use_backend %[var(txn.route),field(1,|)]",
        f"    default_backend {REJECT_BACKEND}",
        "",
    ]
    return lines


def _fixed_backends(sk: Skeleton) -> list[str]:
    return [
        f"backend {TABLE_BACKEND}",
        "    stick-table type string len 64 size 200k store conn_cur,conn_cnt,"
        "bytes_in_cnt,bytes_out_cnt",
        "",
        f"backend {REJECT_BACKEND}",
        "    tcp-request content reject",
        "",
    ]


def _check_lines(sk: Skeleton, local: bool) -> list[str]:
    hc = sk.health_check
    if local:
        return [f"    option httpchk GET {LOCAL_CHECK_PATH}"]
    if hc.kind is HealthCheckKind.HTTP:
        return [f"    option httpchk GET {token(hc.path)}"]
    return []


def _nodes_backend(sk: Skeleton, layout: Layout) -> list[str]:
    lines = [f"backend {NODES_BACKEND}", *_check_lines(sk, local=False)]
    lines += [_server_line(s, sk) for s in layout.servers if s.backend == NODES_BACKEND]
    return [*lines, ""]


def _profile_backend(
    prof: Profile, name: str, sk: Skeleton, layout: Layout, *, local: bool
) -> list[str]:
    lines = [f"backend {token(name)}", f"    balance {token(prof.balance.value)}"]
    if prof.balance is Balance.SOURCE:
        lines.append("    hash-type consistent")
    lines += [
        f"    timeout connect {_ms(prof.timeout_connect_ms)}",
        f"    timeout server {_ms(prof.timeout_server_ms)}",
        f"    timeout tunnel {_ms(prof.timeout_tunnel_ms)}",
        *_check_lines(sk, local),
    ]
    lines += [_server_line(s, sk) for s in layout.servers if s.backend == name]
    return [*lines, ""]


def server_arguments(spec: ServerSpec, sk: Skeleton, *, dynamic: bool) -> str:
    """Address and keywords of a server, shared by the config and ``add server``.

    A server added at runtime cannot ``track`` (HAProxy refuses dynamic tracked servers), so
    it gets its own check instead.
    """
    inter = _ms(sk.health_check.interval_ms)
    words = [token(server_address(spec.address)), *(token(o) for o in spec.options)]
    if spec.check_port is not None:
        words += ["check", "port", token(spec.check_port), "inter", inter]
    elif dynamic:
        words += ["check", "port", token(sk.health_check.port), "inter", inter]
    else:
        words += ["track", f"{NODES_BACKEND}/{token(spec.name)}"]
    if spec.maintenance:
        words.append("disabled")
    return " ".join(words)


def _server_line(spec: ServerSpec, sk: Skeleton) -> str:
    return f"    server {token(spec.name)} {server_arguments(spec, sk, dynamic=False)}"


def render_route_map(layout: Layout) -> str:
    """``routes.map`` content: ``<vip>:<port> <backend>|<nodeport>|<maxconn>|<slot>``."""
    return "".join(_route_line(k, v) for k, v in sorted(layout.route_map.items()))


def _route_line(key: str, value: str) -> str:
    return f"{token(key)} {token(value)}\n"


class RouteMapText:
    """:func:`render_route_map` that keeps each line it rendered: a line is checked and built
    (``token``) once per key and value, so a map that differs from the last one rendered by a
    few routes costs those routes, a dictionary pass and the sort. Same text, same checks."""

    def __init__(self) -> None:
        self._lines: dict[str, tuple[str, str]] = {}  # key -> (value, line)

    def render(self, layout: Layout) -> str:
        old: dict[str, tuple[str, str]] = self._lines
        lines: dict[str, tuple[str, str]] = {}
        for k, v in layout.route_map.items():
            hit = old.get(k)
            lines[k] = hit if hit is not None and hit[0] == v else (v, _route_line(k, v))
        self._lines = lines
        return "".join([lines[k][1] for k in sorted(lines)])


def render_allow_map(cidrs: tuple[str, ...]) -> str:
    """An ``allow-N.map`` content: one CIDR per line, value 1."""
    return "".join(f"{token(c)} 1\n" for c in cidrs)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so a reader sees the old or the new file, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_maps(layout: Layout, routes: RouteMapText | None = None) -> None:
    """Write every map file of ``layout`` (read by HAProxy only when it (re)loads); with
    ``routes``, the route map is rendered by it (same text)."""
    run = Path(layout.skeleton.settings.run_dir)
    text = routes.render(layout) if routes is not None else render_route_map(layout)
    write_atomic(run / ROUTES_MAP, text)
    for slot, cidrs in layout.allow_maps.items():
        write_atomic(run / allow_map_name(slot), render_allow_map(cidrs))


def check_config(path: Path, haproxy_bin: str = "haproxy") -> None:
    """Run ``haproxy -c``; raise :class:`ConfigCheckFailed` with its output on refusal."""
    proc = subprocess.run(
        [haproxy_bin, "-c", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        raise ConfigCheckFailed((proc.stdout + proc.stderr).strip()[-4000:])


def write_config(layout: Layout, haproxy_bin: str = "haproxy") -> Path:
    """Write maps, then the config through a checked temp file; return the config path.

    The config in place is only replaced once ``haproxy -c`` accepts the new one.
    """
    run = Path(layout.skeleton.settings.run_dir)
    write_maps(layout)
    target = run / CONFIG_NAME
    fd, tmp = tempfile.mkstemp(dir=run, prefix=".haproxy.", suffix=".cfg")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(render_config(layout))
            f.flush()
            os.fsync(f.fileno())
        check_config(Path(tmp), haproxy_bin)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.info("haproxy config written", extra={"event": "config_written", "path": str(target)})
    return target


def config_digest(path: Path) -> str | None:
    """The skeleton digest a config file was rendered from, ``None`` if absent or foreign."""
    try:
        with path.open() as f:
            first = f.readline()
    except FileNotFoundError:
        return None
    if not first.startswith(DIGEST_PREFIX):
        return None
    return first[len(DIGEST_PREFIX) :].strip()
