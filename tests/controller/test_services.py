"""LoadBalancer Service stories through the lab API server and a real database."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from lbprovider.services.records import get_record
from lbprovider.db.session import transaction

from .conftest import StartController
from .helpers import (
    CLASS,
    FINALIZER,
    condition,
    create_service,
    db_ips,
    delete_service,
    event_reasons,
    get_service,
    ip_of,
    ledger,
    make_pool,
    patch_service,
    wait_until,
)


def test_create_gets_ip_in_status_and_db(
    core: Any, db: sessionmaker[Session], pool: str, start_controller: StartController
) -> None:
    start_controller(db)
    create_service(core, "web", ports=((80, "TCP"), (443, "TCP")))

    ip = wait_until(lambda: ip_of(core, "web"))

    assert ip and ip.startswith("127.0.10.")
    svc = get_service(core, "web")
    assert svc is not None
    assert svc["status"]["loadBalancer"]["ingress"] == [
        {
            "ip": ip,
            "ipMode": "Proxy",
            "ports": [{"port": 80, "protocol": "TCP"}, {"port": 443, "protocol": "TCP"}],
        }
    ]
    assert FINALIZER in svc["metadata"]["finalizers"]
    allocated = condition(svc, "lbprovider.io/IPAllocated")
    assert allocated and allocated["status"] == "True" and allocated["reason"] == "Satisfied"
    serving = condition(svc, "lbprovider.io/Serving")
    assert serving and serving["status"] == "False" and serving["reason"] == "NotYetServed"
    assert db_ips(db, "web") == [ip]
    assert ledger(db, "web") == [("allocated", ip)]
    assert wait_until(lambda: "IPAllocated" in event_reasons(core, "web"))
