"""HAProxy's runtime API (the stats socket and the master CLI), and nothing else.

Why: per-Service changes go live through this socket without a reload: maps, servers, health.
One persistent connection in ``prompt`` mode carries pipelined commands (1,000 in about 10 ms
here), in payloads kept under HAProxy's 16 KB buffer. Every argument is checked against a
strict token pattern before it is sent, because ``;`` and newlines separate CLI commands: a
hostile value can never become a second command. HAProxy answers in free text, so each command
carries the answers that mean success; anything else raises :class:`CommandFailed`.

What it must not do: decide what to change (apply.py does), or write files.
"""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType

logger = logging.getLogger(__name__)

MAX_PAYLOAD = 15_000  # bytes per write; HAProxy's CLI buffer is 16 KB
_ARG_RE = re.compile(r"[A-Za-z0-9._:/@\[\]|-]+")
_MASTER_PROMPT = re.compile(rb"(?:^|\n)master(?:\[[^\]\n]*\])?> $")


class HAProxyError(Exception):
    """Base of every error this package raises about a running HAProxy."""


class RuntimeUnavailable(HAProxyError):
    """The socket could not be reached or closed mid-answer."""


class UnsafeArgument(HAProxyError, ValueError):
    """A command argument that could smuggle a second command or a map line."""


class CommandFailed(HAProxyError):
    """HAProxy answered a command with something other than a success."""

    def __init__(self, failures: Sequence[tuple[str, str]]) -> None:
        self.failures = list(failures)
        first = "; ".join(f"{c!r} -> {a!r}" for c, a in self.failures[:3])
        super().__init__(f"{len(self.failures)} runtime command(s) failed: {first}")


def arg(value: object) -> str:
    """``str(value)`` if it is one safe CLI word, else raise :class:`UnsafeArgument`."""
    text = str(value)
    if not _ARG_RE.fullmatch(text):
        raise UnsafeArgument(f"unsafe runtime argument {text!r}")
    return text


@dataclass(frozen=True)
class Command:
    """One CLI line and the answers that mean it worked (``""`` always does)."""

    text: str
    ok: tuple[str, ...] = ()

    def succeeded(self, answer: str) -> bool:
        """True when ``answer`` is empty or starts with one of the success answers."""
        return answer == "" or any(answer.startswith(p) for p in self.ok)


def _cmd(*words: object, ok: tuple[str, ...] = ()) -> Command:
    return Command(" ".join(arg(w) for w in words), ok)


def add_map(path: str, key: str, value: str, version: int | None = None) -> Command:
    """``add map [@ver] <map> <key> <value>`` (adds a line even if the key exists)."""
    if version is None:
        return _cmd("add", "map", path, key, value)
    return _cmd("add", "map", f"@{arg(version)}", path, key, value)


def set_map(path: str, key: str, value: str) -> Command:
    """``set map``: change the value of every line with ``key``."""
    return _cmd("set", "map", path, key, value)


def del_map(path: str, key: str) -> Command:
    """``del map``: remove every line with ``key``."""
    return _cmd("del", "map", path, key)


def prepare_map(path: str) -> Command:
    """``prepare map``: a new empty version, answered ``New version created: N``."""
    return _cmd("prepare", "map", path, ok=("New version created:",))


def commit_map(path: str, version: int) -> Command:
    """``commit map @ver``: atomically replace the map's content with that version."""
    return _cmd("commit", "map", f"@{arg(version)}", path)


def add_server(backend: str, name: str, arguments: str) -> Command:
    """``add server b/s <addr> <keywords>``; the server starts in maintenance."""
    words = [arg(w) for w in arguments.split(" ")]
    return _cmd("add", "server", f"{arg(backend)}/{arg(name)}", *words, ok=("New server",))


def del_server(backend: str, name: str) -> Command:
    """``del server``: only a server in maintenance with no connection can go."""
    return _cmd("del", "server", f"{arg(backend)}/{arg(name)}", ok=("Server deleted",))


def set_server_state(backend: str, name: str, state: str) -> Command:
    """``set server b/s state ready|drain|maint``."""
    if state not in ("ready", "drain", "maint"):
        raise UnsafeArgument(f"bad server state {state!r}")
    return _cmd("set", "server", f"{arg(backend)}/{arg(name)}", "state", state)


def set_server_addr(backend: str, name: str, address: str) -> Command:
    """``set server b/s addr <ip>``."""
    return _cmd(
        "set",
        "server",
        f"{arg(backend)}/{arg(name)}",
        "addr",
        address,
        ok=("IP changed", "no need to change"),
    )


def set_server_check_port(backend: str, name: str, port: int) -> Command:
    """``set server b/s check-port <port>``."""
    return _cmd("set", "server", f"{arg(backend)}/{arg(name)}", "check-port", port)


def enable_health(backend: str, name: str) -> Command:
    """``enable health b/s``: start the server's health checks."""
    return _cmd("enable", "health", f"{arg(backend)}/{arg(name)}")


@dataclass(frozen=True)
class ServerState:
    """One row of ``show servers state``."""

    backend: str
    name: str
    address: str
    op_state: int  # 0 stopped, 1 starting, 2 running, 3 stopping
    admin_state: int  # bit field, see the properties
    check_port: int

    @property
    def maintenance(self) -> bool:
        """Forced (0x01) or configured (0x04) maintenance."""
        return bool(self.admin_state & 0x05)

    @property
    def drain(self) -> bool:
        """Forced drain (0x08) set by us."""
        return bool(self.admin_state & 0x08)


@dataclass(frozen=True)
class ProcInfo:
    """The master CLI's ``show proc``."""

    master_pid: int
    reloads: int
    failed_reloads: int
    workers: tuple[int, ...]  # current worker PIDs
    old_workers: tuple[int, ...] = field(default=())


class _IdleClosed(Exception):
    """The connection was gone before HAProxy answered the first command of a batch."""


class RuntimeClient:
    """A persistent ``prompt``-mode connection to the admin stats socket."""

    def __init__(self, socket_path: str, timeout: float = 10.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = b""

    def __enter__(self) -> RuntimeClient:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (a later call reconnects)."""
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._buf = b""

    def _connect(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
            sock.sendall(b"prompt\n")
        except OSError as e:
            sock.close()
            raise RuntimeUnavailable(f"{self.socket_path}: {e}") from e
        self._sock, self._buf = sock, b""
        self._read_answer()
        return sock

    def _read_answer(self) -> str:
        # In prompt mode every answer ends with "\n> " (an empty answer is just that).
        assert self._sock is not None
        while (end := self._buf.find(b"\n> ")) < 0:
            try:
                chunk = self._sock.recv(65536)
            except OSError as e:
                self.close()
                raise RuntimeUnavailable(f"{self.socket_path}: {e}") from e
            if not chunk:
                self.close()
                raise RuntimeUnavailable(f"{self.socket_path}: connection closed")
            self._buf += chunk
        answer, self._buf = self._buf[:end], self._buf[end + 3 :]
        return answer.decode(errors="replace").rstrip("\n")

    def send(self, commands: Sequence[Command]) -> list[str]:
        """Pipeline ``commands`` and return their raw answers, in order."""
        answers: list[str] = []
        for batch in _batches([c.text for c in commands]):
            reused = self._sock is not None
            try:
                answers += self._send_batch(batch)
            except _IdleClosed:
                if not reused:
                    raise RuntimeUnavailable(f"{self.socket_path}: connection closed") from None
                # HAProxy closed our idle connection (its `stats timeout`) before it read a
                # single command of this batch, so nothing ran: send it again, once.
                logger.debug(
                    "runtime socket was closed while idle; reconnecting",
                    extra={"event": "runtime_reconnect"},
                )
                answers += self._send_batch(batch)
        return answers

    def _send_batch(self, batch: Sequence[str]) -> list[str]:
        sock = self._connect()
        try:
            sock.sendall(("\n".join(batch) + "\n").encode())
        except (BrokenPipeError, ConnectionResetError) as e:
            self.close()
            raise _IdleClosed from e
        except OSError as e:
            self.close()
            raise RuntimeUnavailable(f"{self.socket_path}: {e}") from e
        try:
            first = self._read_answer()
        except RuntimeUnavailable as e:
            raise _IdleClosed from e
        return [first] + [self._read_answer() for _ in batch[1:]]

    def execute(self, commands: Sequence[Command]) -> list[str]:
        """Pipeline ``commands``; raise :class:`CommandFailed` listing every refusal."""
        answers = self.send(commands)
        failures = [
            (c.text, a) for c, a in zip(commands, answers, strict=True) if not c.succeeded(a)
        ]
        if failures:
            raise CommandFailed(failures)
        return answers

    def show(self, *words: object) -> str:
        """A read-only command's answer; an error answer raises :class:`CommandFailed`."""
        cmd = _cmd("show", *words)
        answer = self.send([cmd])[0]
        if answer.startswith(("Unknown", "Missing", "Permission denied", "No such", "Can't")):
            raise CommandFailed([(cmd.text, answer)])
        return answer

    def show_map(self, path: str) -> list[tuple[str, str]]:
        """Every (key, value) line of a map, duplicates included."""
        entries = []
        for line in self.show("map", path).splitlines():
            parts = line.split(" ", 2)
            if len(parts) >= 2 and parts[0].startswith("0x"):
                entries.append((parts[1], parts[2] if len(parts) == 3 else ""))
        return entries

    def show_servers_state(self) -> list[ServerState]:
        """``show servers state`` of every backend."""
        return [s for line in self.show("servers", "state").splitlines() if (s := _server(line))]

    def show_stat(self) -> list[dict[str, str]]:
        """``show stat`` as one dict per proxy/server row, keyed by the CSV header."""
        lines = self.show("stat").splitlines()
        if not lines or not lines[0].startswith("# "):
            return []
        header = lines[0][2:].split(",")
        return [dict(zip(header, ln.split(","), strict=False)) for ln in lines[1:] if ln]

    def show_table(self, table: str) -> dict[str, dict[str, int]]:
        """A stick table's entries: key -> counters (``conn_cur``, ``bytes_in_cnt``...)."""
        result: dict[str, dict[str, int]] = {}
        for line in self.show("table", table).splitlines():
            if not line.startswith("0x"):
                continue
            fields = dict(p.split("=", 1) for p in line.split()[1:] if "=" in p)
            key = fields.pop("key", None)
            if key is not None:
                result[key] = {k: int(v) for k, v in fields.items() if v.isdigit()}
        return result

    def show_info(self) -> dict[str, str]:
        """``show info`` as a dict (``Pid``, ``Uptime_sec``, ``CurrConns``...)."""
        info = {}
        for line in self.show("info").splitlines():
            key, sep, value = line.partition(": ")
            if sep:
                info[key] = value
        return info


def _server(line: str) -> ServerState | None:
    parts = line.split(" ")
    if line.startswith("#") or len(parts) < 22 or not parts[0].isdigit():
        return None
    return ServerState(
        backend=parts[1],
        name=parts[3],
        address=parts[4],
        op_state=int(parts[5]),
        admin_state=int(parts[6]),
        check_port=int(parts[21]) if parts[21].isdigit() else 0,
    )


def _batches(lines: Sequence[str]) -> list[list[str]]:
    batches: list[list[str]] = [[]]
    size = 0
    for line in lines:
        if "\n" in line or ";" in line:
            raise UnsafeArgument(f"unsafe command line {line!r}")
        if batches[-1] and size + len(line) + 1 > MAX_PAYLOAD:
            batches.append([])
            size = 0
        batches[-1].append(line)
        size += len(line) + 1
    return [b for b in batches if b]


class MasterClient:
    """The master CLI (``haproxy -W -S <socket>``): ``show proc`` and ``reload``.

    The master answers one command per connection here; ``reload`` re-executes the master,
    so its connection closes before the new worker is ready: confirm with :meth:`show_proc`.
    """

    def __init__(self, socket_path: str, timeout: float = 10.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def command(self, text: str) -> str:
        """Send one command and return its answer (empty when the master closed)."""
        words = " ".join(arg(w) for w in text.split(" "))
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(self.socket_path)
                sock.sendall(b"prompt\n")
                _read_master(sock)
                sock.sendall(words.encode() + b"\n")
                return _read_master(sock)
        except OSError as e:
            raise RuntimeUnavailable(f"{self.socket_path}: {e}") from e

    def show_proc(self) -> ProcInfo:
        """Parse ``show proc``: reload counters and the worker PIDs."""
        return parse_show_proc(self.command("show proc"))

    def reload(self) -> None:
        """Ask the master to reload; returns before the reload is done."""
        try:
            self.command("reload")
        except RuntimeUnavailable:
            logger.debug("master closed the connection on reload")


def _read_master(sock: socket.socket) -> str:
    buf = b""
    while not (m := _MASTER_PROMPT.search(buf)):
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return buf.decode(errors="replace")
        buf += chunk
    return buf[: m.start()].decode(errors="replace")


def parse_show_proc(text: str) -> ProcInfo:
    """Parse the master's ``show proc`` table."""
    section, master, reloads, failed = "", 0, 0, 0
    workers: list[int] = []
    old: list[int] = []
    for line in text.splitlines():
        if line.startswith("# "):
            section = line[2:].strip()
            continue
        parts = line.split()
        if not parts or not parts[0].isdigit():
            continue
        if len(parts) > 1 and parts[1] == "master":
            master, reloads = int(parts[0]), int(parts[2])
            m = re.search(r"failed: (\d+)", line)
            failed = int(m.group(1)) if m else 0
        elif section == "workers":
            workers.append(int(parts[0]))
        elif section == "old workers":
            old.append(int(parts[0]))
    if not master:
        raise RuntimeUnavailable(f"unexpected show proc answer: {text[:200]!r}")
    return ProcInfo(master, reloads, failed, tuple(workers), tuple(old))
