"""The agent's HTTP client for the fleet protocol: pull the desired state, push status.

Why: the agent never touches the database; everything it knows comes through these two calls
with its own ``agent`` token. Any transport failure or server error becomes
:class:`ApiUnavailable`, which the loop treats as "keep serving what you have".

What it must not do: interpret states or retry on its own (the loop decides when).
"""

from __future__ import annotations

import httpx
from pydantic import ValidationError

from lbprovider.fleet.models import FleetDelta, FleetState, HostStatus, StatusAck

DELTA_HEADER = "X-Fleet-Delta"  # the API's mark on an answer that is a FleetDelta


class ApiUnavailable(Exception):
    """The API could not be reached, or answered with an error or something unreadable."""


class FleetApi:
    """``GET .../state`` (long-poll) and ``POST .../status`` for one host."""

    def __init__(self, base_url: str, token: str, host: str, *, timeout: float = 10.0) -> None:
        self.host = host
        self.timeout = timeout
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers)
        self._prefix = f"/api/v1/fleet/hosts/{host}"

    def close(self) -> None:
        self._http.close()

    def fetch_state(
        self, version: str, wait: float, held: FleetState | None = None
    ) -> FleetState | None:
        """The host's state if its version differs from ``version``; ``None`` after ``wait``
        seconds without news (304).

        With ``held`` (the state of that version), the API may answer with a delta against it,
        which is applied here; a delta that does not rebuild a state of its announced version
        is dropped and the whole state fetched at once instead."""
        delta = held is not None and held.version == version and bool(version)
        params = {"version": version, "wait": f"{max(wait, 0.0):.3f}"}
        if delta:
            params["delta"] = "true"
        r = self._request("GET", "/state", params=params, timeout=wait + self.timeout)
        if r.status_code == 304:
            return None
        if r.headers.get(DELTA_HEADER) is not None and held is not None:
            try:
                return FleetDelta.model_validate_json(r.content).apply_to(held)
            except ValueError:  # pydantic's ValidationError is one
                return self.fetch_state(version, 0.0)
        try:
            state = FleetState.model_validate_json(r.content)
        except ValidationError as e:
            raise ApiUnavailable(f"unreadable state: {e}") from e
        if state.host != self.host or state.version != state.content_digest():
            raise ApiUnavailable("state for another host, or its version does not match it")
        return state

    def post_status(self, status: HostStatus) -> StatusAck:
        """Send one report; the answer names the version the API wants applied."""
        body = status.model_dump_json()
        headers = {"Content-Type": "application/json"}
        r = self._request("POST", "/status", content=body, headers=headers, timeout=self.timeout)
        try:
            return StatusAck.model_validate_json(r.content)
        except ValidationError as e:
            raise ApiUnavailable(f"unreadable status answer: {e}") from e

    def _request(self, method: str, path: str, **kw: object) -> httpx.Response:
        try:
            r = self._http.request(method, self._prefix + path, **kw)  # type: ignore[arg-type]
        except httpx.HTTPError as e:
            raise ApiUnavailable(f"{method} {path}: {e.__class__.__name__}: {e}") from e
        if r.status_code >= 400:
            raise ApiUnavailable(f"{method} {path}: HTTP {r.status_code}: {r.text[:300]}")
        return r
