"""``converge_service``'s record statements: what a new Service costs, and a wrong guess.

The controller passes ``recorded=False`` for a Service it knows no record of; the record is
then inserted (conditionally) after the decision without being looked for first. Both
databases.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from lbprovider.db.models import ServiceRecord
from lbprovider.db.session import transaction
from lbprovider.ipam.allocator import Reason
from lbprovider.services.loadbalancers import Converged, converge_service
from lbprovider.services.records import ServiceData, get_record
from tests.services.helpers import ACTOR, POLICY, make_pool, statements, svc_request


def on_records(seen: list[str]) -> list[str]:
    """The first word of each statement that names the records table."""
    return [s.split(None, 1)[0].upper() for s in seen if "service_records" in s]


def data(name: str, **kw: Any) -> ServiceData:
    return ServiceData(namespace="default", name=name, uid=f"uid-default-{name}", ports=[], **kw)


def converge(sessions: sessionmaker[Session], name: str, *, recorded: bool, **kw: Any) -> Converged:
    with transaction(sessions) as s:
        return converge_service(
            session=s,
            data=data(name, **kw),
            request=svc_request(name),
            status_ips=(),
            actor=ACTOR,
            policy=POLICY,
            recorded=recorded,
        )


def test_a_service_without_a_record_costs_one_statement_less(
    sessions: sessionmaker[Session],
) -> None:
    """No read of the record: its INSERT (after the decision) is the only statement on the
    table, and the whole transaction is one statement shorter than with the read."""
    make_pool(sessions, "web", "127.20.0.0/24")
    converge(sessions, "warm", recorded=True)  # the first decision also loads the pools
    with statements(sessions) as looked:
        converge(sessions, "a", recorded=True)
    with statements(sessions) as guessed:
        first = converge(sessions, "b", recorded=False)
    assert on_records(looked) == ["SELECT", "INSERT"], looked
    assert on_records(guessed) == ["INSERT"], guessed
    assert len(guessed) == len(looked) - 1, (looked, guessed)
    assert first.outcome.reason is Reason.SATISFIED and not first.serving
    with sessions() as s:
        rec = get_record(s, "default", "b")
        assert rec is not None
        assert (rec.condition_reason, rec.condition_message) == (
            "Satisfied",
            first.outcome.decision.message,
        )
        assert rec.uid == "uid-default-b"


def test_a_record_that_exists_after_all_is_updated_and_read(
    sessions: sessionmaker[Session],
) -> None:
    """A wrong guess (the record exists): the INSERT writes nothing, the record is read and
    only what differs is updated; the answer carries the record's serving state."""
    make_pool(sessions, "web", "127.20.0.0/24")
    first = converge(sessions, "shop", recorded=True)
    with transaction(sessions) as s:
        s.execute(
            update(ServiceRecord)
            .where(ServiceRecord.name == "shop")
            .values(serving=True, serving_message="2 of 2 hosts")
        )
    with statements(sessions) as seen:
        again = converge(sessions, "shop", recorded=False, labels={"team": "blue"})
    assert on_records(seen) == ["INSERT", "SELECT", "UPDATE"], seen
    assert again.outcome.ips == first.outcome.ips and not again.outcome.changed
    assert (again.serving, again.serving_message) == (True, "2 of 2 hosts")
    with sessions() as s:
        rec = get_record(s, "default", "shop")
        assert rec is not None and rec.labels == {"team": "blue"}
        assert rec.condition_reason == "Satisfied" and rec.serving


def test_a_wrong_guess_at_steady_state_writes_nothing(sessions: sessionmaker[Session]) -> None:
    make_pool(sessions, "web", "127.20.0.0/24")
    converge(sessions, "shop", recorded=True)
    with statements(sessions) as seen:
        converge(sessions, "shop", recorded=False)
    assert on_records(seen) == ["INSERT", "SELECT"], seen


def test_the_guessed_insert_writes_what_the_looked_up_one_writes(
    sessions: sessionmaker[Session],
) -> None:
    """The ``recorded=False`` INSERT (on PostgreSQL a statement of its own on the driver) and
    the plain one store the same record, JSON columns and defaults included."""
    make_pool(sessions, "web", "127.20.0.0/24")
    full: dict[str, Any] = {
        "load_balancer_class": "lbprovider.io/lb",
        "external_traffic_policy": "Local",
        "health_check_node_port": 31000,
        "source_ranges": ["10.0.0.0/8"],
        "session_affinity": "ClientIP",
        "ip_families": ["IPv4"],
        "labels": {"team": "blue"},
        "annotations": {"a/b": "c"},
        "options": {"pool": "web", "ips": []},
    }
    converge(sessions, "looked", recorded=True, **full)
    converge(sessions, "guessed", recorded=False, **full)
    skip = {"id", "name", "uid", "created_at", "updated_at", "condition_message"}
    with sessions() as s:
        looked, guessed = (get_record(s, "default", n) for n in ("looked", "guessed"))
        assert looked is not None and guessed is not None
        columns = [c.key for c in ServiceRecord.__table__.columns if c.key not in skip]
        assert {c: getattr(guessed, c) for c in columns} == {c: getattr(looked, c) for c in columns}
        assert guessed.created_at.tzinfo is not None
        assert abs((guessed.updated_at - guessed.created_at).total_seconds()) < 1
        assert guessed.ports == [] and guessed.serving is False
