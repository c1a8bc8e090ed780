"""ExternalName Services: record the mapping on change, check its DNS off the reconcile path.

``ExternalNameReconciler`` writes (namespace/name → target, ports) and marks the mapping removed
when the Service goes or changes type. ``DNSChecker`` runs on its own thread, resolving targets
that are due (never checked, or older than ``dns_check_seconds``) and storing resolves /
nxdomain / timeout with the time of the check, so a slow resolver never delays a reconcile.
Nothing here writes to Kubernetes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from lbprovider.controller.dns import Resolver
from lbprovider.controller.loadbalancers import Reader
from lbprovider.controller.mirror import ports_of
from lbprovider.controller.result import DONE, Result
from lbprovider.controller.status import spec
from lbprovider.db.session import transaction
from lbprovider.db.types import utcnow
from lbprovider.services.externalnames import (
    mark_external_name_removed,
    names_due_for_check,
    set_dns_status,
    upsert_external_name,
)

logger = logging.getLogger(__name__)


class ExternalNameReconciler:
    def __init__(
        self,
        *,
        services: Reader,
        sessions: sessionmaker[Session],
        on_new_target: Callable[[], None] = lambda: None,
    ) -> None:
        self._services = services
        self._sessions = sessions
        self._on_new_target = on_new_target

    def reconcile(self, key: str) -> Result:
        namespace, _, name = key.partition("/")
        svc = self._services.get(key)
        with transaction(self._sessions) as session:
            # Gone, or no longer an ExternalName: keep the row as history, stamped removed.
            if svc is None or spec(svc).get("type") != "ExternalName":
                mark_external_name_removed(session=session, namespace=namespace, name=name)
                return DONE
            changed = upsert_external_name(
                session=session,
                namespace=namespace,
                name=name,
                external_name=str(spec(svc).get("externalName") or ""),
                ports=ports_of(svc),
            )
        if changed:
            self._on_new_target()
        return DONE


class DNSChecker:
    """Refreshes the DNS status of due mappings; ``wake()`` checks new targets at once."""

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        resolver: Resolver,
        every_seconds: float,
        active: Callable[[], bool],
    ) -> None:
        self._sessions = sessions
        self._resolver = resolver
        self._every = every_seconds
        self._active = active
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.checks = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dns-checker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            if self._active():
                try:
                    self.check_due()
                except Exception as exc:  # the database may be away; try again next round
                    logger.warning(
                        "dns check round failed", extra={"event": "dns_error", "error": str(exc)}
                    )
            self._wake.wait(min(self._every, 5.0))

    def check_due(self) -> int:
        """Resolve every due mapping once; returns how many were checked."""
        cutoff = utcnow() - timedelta(seconds=self._every)
        with transaction(self._sessions) as session:
            due = names_due_for_check(session=session, checked_before=cutoff)
        for item in due:
            if self._stop.is_set():
                break
            result = self._resolver.resolve(item.external_name)
            with transaction(self._sessions) as session:
                set_dns_status(
                    session=session,
                    namespace=item.namespace,
                    name=item.name,
                    external_name=item.external_name,
                    status=result.status,
                    addresses=list(result.addresses),
                )
            self.checks += 1
            logger.debug(
                "dns checked",
                extra={
                    "event": "dns_checked",
                    "service": f"{item.namespace}/{item.name}",
                    "status": result.status,
                },
            )
        return len(due)
