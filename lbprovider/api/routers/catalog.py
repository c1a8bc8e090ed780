"""``/api/v1/services``, ``/externalnames`` and ``/ingress-routes``: what Kubernetes asked for
and what it got — a Service's addresses (or why it is ``<pending>``), ExternalName mappings with
their DNS status, Ingress routes with the nodePort they reach. Read-only."""

from __future__ import annotations

import ipaddress
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from pydantic import AfterValidator

from lbprovider.api.auth import READ
from lbprovider.api.deps import PageDep, SessionDep
from lbprovider.api.paging import paginate
from lbprovider.api.problems import problem_responses
from lbprovider.api.schemas.catalog import (
    ExternalNamePage,
    ExternalNameRead,
    IngressRoutePage,
    IngressRouteRead,
    ServiceDetailRead,
    ServicePage,
    ServiceRead,
)
from lbprovider.api.schemas.common import Str63, Str253
from lbprovider.db.models import ServiceRecord
from lbprovider.services import catalog

router = APIRouter(dependencies=[READ])

ERRORS = problem_responses(401, 403, 422, 429)

Namespace = Annotated[Str253 | None, Query()]
Search = Annotated[Str253 | None, Query(description="Part of the name, any case.")]
IPQuery = Annotated[
    Str63 | None,
    AfterValidator(lambda v: str(ipaddress.ip_address(v)) if v is not None else None),
    Query(description="An address the Service holds (any spelling; compared canonically)."),
]


def _identity(record: ServiceRecord) -> ServiceRecord:
    return record


@router.get("/services", responses=ERRORS, tags=["services"])
def list_services(
    request: Request,
    session: SessionDep,
    page: PageDep,
    namespace: Namespace = None,
    name: Annotated[Str253 | None, Query(description="Exact Service name.")] = None,
    pool: Annotated[Str63 | None, Query(description="Holds an address of this pool.")] = None,
    ip: IPQuery = None,
    state: Annotated[catalog.ServiceState | None, Query(description="Omit for both.")] = None,
    reason: Annotated[
        Str63 | None, Query(description="Condition reason, e.g. `OutOfIPs`, `Satisfied`.")
    ] = None,
    q: Search = None,
) -> ServicePage:
    stmt = catalog.service_search(
        namespace=namespace, name=name, pool=pool, ip=ip, state=state, reason=reason, q=q
    )
    fields = paginate(request, session, stmt, page, _identity)
    rows = catalog.service_rows(session, fields.pop("results"))
    return ServicePage(**fields, results=[ServiceRead.of(r) for r in rows])


@router.get(
    "/services/{namespace}/{name}",
    responses=problem_responses(401, 403, 404, 422, 429),
    tags=["services"],
)
def get_service(
    namespace: Annotated[Str253, Path()],
    name: Annotated[Str253, Path()],
    session: SessionDep,
) -> ServiceDetailRead:
    detail = catalog.service_detail(session=session, namespace=namespace, name=name)
    return ServiceDetailRead.of_detail(detail)


@router.get("/externalnames", responses=ERRORS, tags=["externalnames"])
def list_external_names(
    request: Request,
    session: SessionDep,
    page: PageDep,
    namespace: Namespace = None,
    dns_status: Annotated[catalog.DnsStatus | None, Query()] = None,
    removed: Annotated[
        bool | None, Query(description="true: only removed; false: only live; omit for both.")
    ] = None,
    q: Annotated[Str253 | None, Query(description="Part of the name or target, any case.")] = None,
) -> ExternalNamePage:
    stmt = catalog.external_name_search(
        namespace=namespace, dns_status=dns_status, removed=removed, q=q
    )
    return ExternalNamePage(**paginate(request, session, stmt, page, ExternalNameRead.of))


@router.get("/ingress-routes", responses=ERRORS, tags=["ingress-routes"])
def list_ingress_routes(
    request: Request,
    session: SessionDep,
    page: PageDep,
    namespace: Namespace = None,
    host: Annotated[
        Str253 | None, Query(description="Exact host; empty for the any-host rules.")
    ] = None,
    ingress: Annotated[Str253 | None, Query(description="Ingress name.")] = None,
    has_error: Annotated[
        bool | None, Query(description="true: only routes not served (see `error`).")
    ] = None,
    q: Annotated[
        Str253 | None, Query(description="Part of the host, Ingress or backend, any case.")
    ] = None,
) -> IngressRoutePage:
    stmt = catalog.ingress_route_search(
        namespace=namespace, host=host, ingress=ingress, has_error=has_error, q=q
    )
    return IngressRoutePage(**paginate(request, session, stmt, page, IngressRouteRead.of))
