"""Request dispatch of the lab API server: URL -> kind/namespace/name -> store call -> response.

This is the REST layer of the apiserver (`/api/v1/namespaces/{ns}/services/{name}/status`,
list with selectors and pagination, create/update/patch/delete, Table output for kubectl,
and the parameters of a watch). It turns every failure into a `Status`. It must not do
socket I/O or stream watches itself: it returns a `Response` or a `WatchSpec` for the
transport (`lbprovider.lab.http`) to carry out.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lbprovider.lab import discovery, errors
from lbprovider.lab.kinds import Kind, find_kind, resource_list
from lbprovider.lab.patch import PatchError, json_patch, merge_patch, strategic_merge_patch
from lbprovider.lab.selectors import labels_match, parse_field_selector, parse_label_selector
from lbprovider.lab.store import Store
from lbprovider.lab.strategies import event_from_core, event_to_core, new_event_errors
from lbprovider.lab.tables import to_table

logger = logging.getLogger(__name__)

JSON = dict[str, Any]
DEFAULT_WATCH_TIMEOUT = 1800.0


@dataclass
class Request:
    method: str
    path: str
    query: Mapping[str, str]
    accept: str
    content_type: str
    body: bytes


@dataclass
class Response:
    code: int
    body: Any  # a JSON value, or bytes sent as text/plain


@dataclass
class WatchSpec:
    """Everything the transport needs to stream one watch."""

    kind: Kind
    matches: Callable[[JSON], bool]
    start_rv: int
    initial: list[JSON]  # synthetic ADDED events sent before the stream
    timeout: float
    bookmarks: bool
    initial_events_end: bool
    table: bool
    include: str
    present: Callable[[JSON], JSON]  # storage form -> the form this API group serves


@dataclass(frozen=True)
class Selection:
    """What a list or watch selects: ``matches`` decides; ``name`` is the single object name a
    ``metadata.name=`` field selector pins down (the registry then reads that one key instead
    of scanning the kind, as kube-apiserver does for ``MatchesSingle`` predicates)."""

    matches: Callable[[JSON], bool]
    name: str | None


@dataclass(frozen=True)
class Target:
    kind: Kind
    namespace: str
    name: str
    subresource: str


def _split_path(path: str) -> tuple[str, str, list[str]] | None:
    """`/api/v1/...` or `/apis/g/v/...` -> (group, version, remaining segments)."""
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 2 and parts[0] == "api":
        return "", parts[1], parts[2:]
    if len(parts) >= 3 and parts[0] == "apis":
        return parts[1], parts[2], parts[3:]
    return None


def resolve(group: str, version: str, rest: list[str]) -> Target | None:
    namespace = ""
    if (
        len(rest) >= 3
        and rest[0] == "namespaces"
        and not (len(rest) == 3 and rest[2] in ("status", "finalize"))
    ):
        namespace, rest = rest[1], rest[2:]
    if not 1 <= len(rest) <= 3:
        return None
    kind = find_kind(group, version, rest[0])
    if kind is None or (namespace and not kind.namespaced):
        return None
    name = rest[1] if len(rest) > 1 else ""
    sub = rest[2] if len(rest) > 2 else ""
    if sub and (sub != "status" or not kind.has_status):
        return None
    return Target(kind, namespace, name, sub)


def _present(kind: Kind) -> Callable[[JSON], JSON]:
    return event_from_core if kind.group == "events.k8s.io" else (lambda obj: obj)


def _storage_kind(kind: Kind) -> Kind:
    core = find_kind("", "v1", "events")
    return core if kind.group == "events.k8s.io" and core is not None else kind


class Api:
    """The apiserver's REST semantics over one `Store`."""

    def __init__(self, store: Store, minor: int, address: Callable[[], str]) -> None:
        self._store = store
        self._minor = minor
        self._address = address

    def handle(self, request: Request) -> Response | WatchSpec:
        try:
            return self._route(request)
        except errors.ApiError as error:
            return Response(error.code, error.status())

    # --- routing ------------------------------------------------------------------------------

    def _route(self, request: Request) -> Response | WatchSpec:
        path = request.path.rstrip("/") or "/"
        fixed = self._fixed(path)
        if fixed is not None:
            if request.method != "GET":
                raise errors.method_not_allowed(request.method)
            return fixed
        split = _split_path(path)
        if split is None:
            raise errors.no_such_path()
        group, version, rest = split
        target = resolve(group, version, rest)
        if target is None:
            raise errors.no_such_path()
        if target.name:
            return self._object(request, target)
        return self._collection(request, target)

    def _fixed(self, path: str) -> Response | None:
        documents: dict[str, Callable[[], Any]] = {
            "/api": lambda: discovery.api_versions(self._address()),
            "/apis": discovery.api_group_list,
            "/version": lambda: discovery.version_info(self._minor),
            "/openapi/v3": discovery.openapi_root,
        }
        if path in documents:
            return Response(200, documents[path]())
        if path in ("/healthz", "/readyz", "/livez"):
            return Response(200, b"ok")
        if path.startswith("/openapi/v3/"):
            document = discovery.openapi_group_version(path[len("/openapi/v3/") :])
            return Response(200, document) if document else None
        parts = [p for p in path.split("/") if p]
        if len(parts) == 2 and parts[0] == "apis":
            group = discovery.api_group(parts[1])
            return Response(200, group) if group else None
        if path == "/api/v1" or (len(parts) == 3 and parts[0] == "apis"):
            gv = ("", "v1") if path == "/api/v1" else (parts[1], parts[2])
            resources = resource_list(*gv)
            return Response(200, resources) if resources else None
        return None

    # --- collections --------------------------------------------------------------------------

    def _collection(self, request: Request, target: Target) -> Response | WatchSpec:
        if request.method == "GET":
            if request.query.get("watch") in ("true", "1"):
                return self._watch(request, target)
            return self._list(request, target)
        if request.method == "POST":
            return self._create(request, target)
        if request.method == "DELETE":
            return self._delete_collection(request, target)
        raise errors.method_not_allowed(request.method)

    def _selection(self, request: Request, target: Target) -> Selection:
        """The request's selectors as a predicate, and the one name they pin down (if any)."""
        labels = parse_label_selector(request.query.get("labelSelector"))
        getters = target.kind.field_labels
        terms = parse_field_selector(request.query.get("fieldSelector"), getters)
        namespace = target.namespace
        names = {t.value for t in terms if t.field == "metadata.name" and not t.negate}

        def matches(obj: JSON) -> bool:
            meta = obj["metadata"]
            if namespace and meta.get("namespace") != namespace:
                return False
            if labels and not labels_match(labels, meta.get("labels") or {}):
                return False
            return all((getters[t.field](obj) == t.value) != t.negate for t in terms)

        return Selection(matches, names.pop() if len(names) == 1 else None)

    def _select(self, kind: Kind, target: Target, selection: Selection) -> tuple[list[JSON], int]:
        return self._store.list_objects(
            kind, target.namespace, selection.matches, name=selection.name
        )

    def _list(self, request: Request, target: Target) -> Response:
        self._check_future_rv(request)
        kind = _storage_kind(target.kind)
        items, rv = self._select(kind, target, self._selection(request, target))
        start = self._continue_from(request.query.get("continue"))
        if start is not None:
            rv, position = start
            items = [o for o in items if _sort_key(o) > position]
        meta: JSON = {"resourceVersion": str(rv)}
        limit = int(request.query.get("limit") or 0)
        if 0 < limit < len(items):
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
            meta["continue"] = _encode_continue(rv, _sort_key(items[-1]))
        present = _present(target.kind)
        shown = [present(o) for o in items]
        if "as=Table" in request.accept:
            include = request.query.get("includeObject", "Metadata")
            return Response(200, to_table(kind.kind, items, meta, include))
        body = {
            "kind": f"{target.kind.kind}List",
            "apiVersion": target.kind.api_version,
            "metadata": meta,
            "items": [
                {k: v for k, v in o.items() if k not in ("kind", "apiVersion")} for o in shown
            ],
        }
        return Response(200, body)

    def _check_future_rv(self, request: Request) -> None:
        wanted = request.query.get("resourceVersion")
        if wanted and wanted.isdigit() and int(wanted) > self._store.resource_version:
            raise errors.too_large_resource_version(int(wanted), self._store.resource_version)

    def _continue_from(self, token: str | None) -> tuple[int, tuple[str, str]] | None:
        if not token:
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(token.encode()))
            rv, position = int(data["rv"]), (str(data["start"][0]), str(data["start"][1]))
        except (ValueError, KeyError, IndexError, TypeError, binascii.Error) as error:
            raise errors.bad_request("continue key is not valid: " + str(error)) from error
        if rv < self._store.compacted:
            raise errors.expired(
                "The provided continue parameter is too old to display a "
                "consistent list result. You can start a new list without "
                "the continue parameter."
            )
        return rv, position

    def _watch(self, request: Request, target: Target) -> WatchSpec:
        query = request.query
        selection = self._selection(request, target)
        rv_text = query.get("resourceVersion", "")
        send_initial = query.get("sendInitialEvents") == "true"
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        if send_initial and not bookmarks:
            raise errors.invalid_object(
                "meta.k8s.io",
                "ListOptions",
                "",
                [
                    errors.forbidden(
                        "allowWatchBookmarks",
                        "sendInitialEvents requires setting allowWatchBookmarks to true",
                    )
                ],
            )
        initial: list[JSON] = []
        if rv_text in ("", "0") or send_initial:
            initial, start = self._select(_storage_kind(target.kind), target, selection)
        else:
            if not rv_text.isdigit():
                raise errors.bad_request(f"invalid resource version: {rv_text}")
            start = int(rv_text)
        timeout = float(query.get("timeoutSeconds") or DEFAULT_WATCH_TIMEOUT)
        return WatchSpec(
            target.kind,
            selection.matches,
            start,
            initial,
            timeout,
            bookmarks,
            send_initial,
            "as=Table" in request.accept,
            query.get("includeObject", "Metadata"),
            _present(target.kind),
        )

    def _create(self, request: Request, target: Target) -> Response:
        obj = self._body(request)
        self._check_kind(obj, target.kind)
        kind = _storage_kind(target.kind)
        if target.kind.group == "events.k8s.io":
            causes = new_event_errors(obj)
            if causes:
                raise errors.invalid_object(
                    target.kind.group, "Event", str(obj.get("metadata", {}).get("name", "")), causes
                )
            obj = event_to_core(obj)
        if request.query.get("dryRun"):
            raise errors.bad_request("dryRun is not supported by the lab API server")
        created = self._store.create(kind, target.namespace, obj)
        return Response(201, _present(target.kind)(created))

    def _delete_collection(self, request: Request, target: Target) -> Response:
        kind = _storage_kind(target.kind)
        items, _ = self._select(kind, target, self._selection(request, target))
        for obj in items:
            try:
                self._store.delete(
                    kind, obj["metadata"].get("namespace", ""), obj["metadata"]["name"], {}
                )
            except errors.ApiError as error:
                if error.code != 404:
                    raise
        return Response(
            200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
        )

    # --- single objects -----------------------------------------------------------------------

    def _object(self, request: Request, target: Target) -> Response:
        kind = _storage_kind(target.kind)
        status = target.subresource == "status"
        present = _present(target.kind)
        if request.method == "GET":
            obj = self._store.get(kind, target.namespace, target.name)
            if "as=Table" in request.accept:
                meta = {"resourceVersion": obj["metadata"]["resourceVersion"]}
                include = request.query.get("includeObject", "Metadata")
                return Response(200, to_table(kind.kind, [obj], meta, include))
            return Response(200, present(obj))
        if request.method == "PUT":
            body = self._body(request)
            self._check_kind(body, target.kind)
            if target.kind.group == "events.k8s.io":
                body = event_to_core(body)
            return Response(
                200,
                present(
                    self._store.update(kind, target.namespace, target.name, body, status=status)
                ),
            )
        if request.method == "PATCH":
            apply = self._patcher(request, target)
            return Response(
                200,
                present(
                    self._store.patch(kind, target.namespace, target.name, apply, status=status)
                ),
            )
        if request.method == "DELETE" and not status:
            return self._delete(request, target, kind)
        raise errors.method_not_allowed(request.method)

    def _delete(self, request: Request, target: Target, kind: Kind) -> Response:
        options = self._body(request) if request.body.strip() else {}
        obj, gone = self._store.delete(kind, target.namespace, target.name, options)
        if not gone or target.kind.returns_deleted:
            return Response(200, _present(target.kind)(obj))
        details: JSON = {
            "name": target.name,
            "kind": target.kind.plural,
            "uid": obj["metadata"]["uid"],
        }
        if target.kind.group:
            details["group"] = target.kind.group
        return Response(
            200,
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": details,
            },
        )

    def _patcher(self, request: Request, target: Target) -> Callable[[JSON], JSON]:
        content_type = request.content_type.split(";")[0].strip()
        patch = self._parse(request.body)
        kind = target.kind
        convert = target.kind.group == "events.k8s.io"
        dialects: dict[str, Callable[[JSON], Any]] = {
            "application/merge-patch+json": lambda obj: merge_patch(obj, patch),
            "application/json-patch+json": lambda obj: json_patch(obj, patch),
            "application/strategic-merge-patch+json": lambda obj: strategic_merge_patch(
                obj, patch, kind.list_strategy
            ),
        }
        if content_type not in dialects:
            raise errors.unsupported_media_type(content_type)

        def apply(obj: JSON) -> JSON:
            view = event_from_core(obj) if convert else obj
            try:
                result = dialects[content_type](view)
            except PatchError as error:
                raise errors.unprocessable_patch(str(error)) from error
            if not isinstance(result, dict):
                raise errors.bad_request("the patch did not produce an object")
            return event_to_core(result) if convert else result

        return apply

    # --- bodies -------------------------------------------------------------------------------

    @staticmethod
    def _parse(body: bytes) -> Any:
        try:
            return json.loads(body or b"null")
        except ValueError as error:
            raise errors.bad_request(
                f"the body of the request was in an unknown format: {error}"
            ) from error

    def _body(self, request: Request) -> JSON:
        content_type = request.content_type.split(";")[0].strip()
        if content_type and content_type != "application/json":
            raise errors.unsupported_media_type(content_type)
        body = self._parse(request.body)
        if not isinstance(body, dict):
            raise errors.bad_request("the body of the request must be a JSON object")
        return body

    @staticmethod
    def _check_kind(obj: JSON, kind: Kind) -> None:
        if obj.get("kind") not in (None, kind.kind) or obj.get("apiVersion") not in (
            None,
            kind.api_version,
        ):
            raise errors.bad_request(
                f"the API version in the data ({obj.get('apiVersion')}) "
                f"does not match the expected API version "
                f"({kind.api_version})"
            )


def _sort_key(obj: JSON) -> tuple[str, str]:
    return str(obj["metadata"].get("namespace", "")), str(obj["metadata"]["name"])


def _encode_continue(rv: int, position: tuple[str, str]) -> str:
    raw = json.dumps({"rv": rv, "start": list(position)}).encode()
    return base64.urlsafe_b64encode(raw).decode()
