"""Drive this host's VIP announcer (BGP or VRRP, ``lbprovider.announce``) from what HAProxy serves.

Why: the network must only send a VIP's traffic to a host whose HAProxy serves it. The order is
what matters: a VIP is held on the host before HAProxy binds it, announced only after HAProxy
serves it, withdrawn *before* HAProxy stops serving it, and every VIP is withdrawn while HAProxy
is down or when the agent stops. A small watcher thread probes HAProxy's master between applies,
so a dead HAProxy withdraws its routes within about a second, not at the next heartbeat.

What it must not do: talk to HAProxy itself (it gets a probe), render daemon configs, or raise
into the agent loop: an announcer failure becomes an error line in the heartbeat.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager

from lbprovider.announce import AnnounceError, Announcer, InvalidValue, NullAnnouncer
from lbprovider.announce.model import check_vips
from lbprovider.fleet.models import AnnouncementStatus

logger = logging.getLogger(__name__)


MAX_VERDICTS = 100_000  # remembered announceability verdicts (one per VIP seen)


class AnnounceDriver:
    """Keeps ``announcer`` in step with the VIPs HAProxy serves and with HAProxy's health."""

    def __init__(
        self,
        announcer: Announcer,
        probe: Callable[[], bool],  # HAProxy serves; must not raise
        *,
        interval: float = 0.25,
        failures: int = 3,
    ) -> None:
        self.announcer = announcer
        self.probe = probe
        self.interval = interval
        self.failures = failures
        self.serving: frozenset[str] = frozenset()
        self.healthy = False
        self.errors: list[str] = []
        self._lock = threading.RLock()  # one announcer call at a time; held while applying
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._misses = 0
        self._verdicts: dict[str, str | None] = {}  # VIP -> why it cannot be announced
        self._refused: set[str] = set()  # the VIPs of _verdicts with a reason

    @property
    def enabled(self) -> bool:
        return not isinstance(self.announcer, NullAnnouncer)

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the announcer's daemon (nothing announced yet) and the HAProxy watcher."""
        self.healthy = self._probe()
        self._call("start", self.announcer.start)
        if self.enabled:
            self._thread = threading.Thread(target=self._watch, name="announce-watch", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Withdraw everything, then stop the announcer's daemon (the agent is stopping)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            self.serving = frozenset()
            self._call("withdraw all", lambda: self.announcer.update((), False))
            self._call("close", self.announcer.close)

    # -- the apply protocol ------------------------------------------------------------------

    @contextmanager
    def applying(self) -> Iterator[None]:
        """Hold the lock across an apply: the watcher does not judge HAProxy mid-reload."""
        with self._lock:
            yield

    def hold(self, vips: Collection[str]) -> None:
        """Put these VIPs on the host (BGP: on ``lo``) before HAProxy binds them."""
        if not self.enabled:
            return  # nothing to hold them for
        with self._lock:
            wanted = self._announceable(vips)
            self._call("hold addresses", lambda: self.announcer.hold_addresses(wanted))

    def withdraw_leaving(self, staying: Collection[str]) -> None:
        """Before an apply: stop announcing the VIPs the apply is about to remove."""
        with self._lock:
            keep = self.serving.intersection(staying)
            if keep != self.serving:
                self.serving = keep
                self._update()

    def served(self, vips: Collection[str]) -> None:
        """After a successful apply (so HAProxy is up): announce exactly the VIPs it serves."""
        with self._lock:
            self.errors = []
            self.healthy, self._misses = True, 0
            self.serving = frozenset(self._announceable_set(vips))
            self._update()

    def status(self) -> list[AnnouncementStatus]:
        """Who announces which VIP since when, for the heartbeat."""
        with self._lock:
            try:
                found = self.announcer.status()
            except AnnounceError as e:
                self._note(f"announcer status: {e}")
                return []
        return [
            AnnouncementStatus(vip=a.vip, state=str(a.state), since=a.since, detail=a.detail)
            for a in found
        ]

    # -- internals ---------------------------------------------------------------------------

    def _update(self) -> None:
        if not self.enabled:  # mode none: nothing to tell (every VIP in serving was checked)
            return
        serving, healthy = self.serving, self.healthy
        self._call("update", lambda: self.announcer.update(serving, healthy))

    def _announceable(self, vips: Collection[str]) -> list[str]:
        """The VIPs an announcer accepts (loopback and the like cannot be announced), sorted."""
        return sorted(self._announceable_set(vips))

    def _announceable_set(self, vips: Collection[str]) -> set[str]:
        """:meth:`_announceable`, as a set: a VIP is checked once (a verdict depends on the
        address only, and is kept), then sets do the rest, so an apply that adds one VIP to
        10,000 checks one and walks none in Python."""
        wanted = set(vips)
        new = wanted - self._verdicts.keys()
        if len(self._verdicts) + len(new) > MAX_VERDICTS:
            self._verdicts.clear()
            self._refused.clear()
            new = wanted
        for vip in sorted(new):
            try:
                check_vips([vip])
                self._verdicts[vip] = None
            except InvalidValue as e:
                self._verdicts[vip] = str(e)
                self._refused.add(vip)
        refused = wanted & self._refused
        if self.enabled:
            for vip in sorted(refused):
                self._note(f"not announced: {self._verdicts[vip]}")
        return wanted - refused

    def _probe(self) -> bool:
        return self.probe()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            if not self._lock.acquire(blocking=False):
                continue  # an apply (maybe a reload) is running: judge later
            try:
                self._judge(self._probe())
            finally:
                self._lock.release()

    def _judge(self, ok: bool) -> None:
        self._misses = 0 if ok else self._misses + 1
        if ok and not self.healthy:
            logger.info("haproxy healthy: announcing", extra={"event": "announce_resume"})
            self.healthy = True
            self._update()
        elif self.healthy and self._misses >= self.failures:
            logger.warning("haproxy down: withdrawing every VIP", extra={"event": "announce_off"})
            self.healthy = False
            self._update()

    def _call(self, what: str, action: Callable[[], None]) -> None:
        try:
            action()
        except AnnounceError as e:
            self._note(f"announcer {what}: {e}")

    def _note(self, error: str) -> None:
        logger.warning("announcement problem", extra={"event": "announce_error", "error": error})
        if error not in self.errors:
            self.errors.append(error[:500])
