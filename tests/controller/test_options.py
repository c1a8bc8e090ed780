"""Annotation parsing: ours win over aliases, every bad value becomes a problem line."""

from __future__ import annotations

from typing import Any

import pytest

from lbprovider.controller.changes import needs_update
from lbprovider.controller.options import foreign_ips, parse_options


def svc(annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"annotations": annotations or {}, "labels": {}}, "spec": spec}


@pytest.mark.parametrize(
    ("annotations", "spec", "ips", "pool", "key"),
    [
        pytest.param(
            {"lbprovider.io/ips": "10.0.0.1, 2001:db8::1"},
            {},
            ("10.0.0.1", "2001:db8::1"),
            None,
            None,
            id="ours, dual stack",
        ),
        pytest.param(
            {"lbprovider.io/ips": "10.0.0.1", "metallb.io/loadBalancerIPs": "10.0.0.2"},
            {},
            ("10.0.0.1",),
            None,
            None,
            id="ours beats metallb",
        ),
        pytest.param(
            {"metallb.universe.tf/loadBalancerIPs": "10.0.0.3"},
            {},
            ("10.0.0.3",),
            None,
            None,
            id="old metallb prefix",
        ),
        pytest.param(
            {"lbipam.cilium.io/ips": "10.0.0.4"}, {}, ("10.0.0.4",), None, None, id="cilium"
        ),
        pytest.param(
            {"kube-vip.io/loadbalancerIPs": "10.0.0.5"},
            {},
            ("10.0.0.5",),
            None,
            None,
            id="kube-vip",
        ),
        pytest.param(
            {"purelb.io/addresses": "10.0.0.6"}, {}, ("10.0.0.6",), None, None, id="purelb"
        ),
        pytest.param(
            {}, {"loadBalancerIP": "10.0.0.7"}, ("10.0.0.7",), None, None, id="spec.loadBalancerIP"
        ),
        pytest.param(
            {"metallb.io/address-pool": "blue", "metallb.io/allow-shared-ip": "k"},
            {},
            (),
            "blue",
            "k",
            id="metallb pool and sharing",
        ),
        pytest.param(
            {"lbipam.cilium.io/sharing-key": "c", "lbprovider.io/pool": "red"},
            {},
            (),
            "red",
            "c",
            id="cilium sharing, our pool",
        ),
    ],
)
def test_sources_and_precedence(
    annotations: dict[str, str],
    spec: dict[str, Any],
    ips: tuple[str, ...],
    pool: str | None,
    key: str | None,
) -> None:
    opts = parse_options(svc(annotations, **spec))
    assert (opts.ips, opts.pool, opts.sharing_key, opts.problems) == (ips, pool, key, [])


@pytest.mark.parametrize(
    ("annotations", "fragment"),
    [
        pytest.param({"lbprovider.io/ips": "10.0.0.300"}, "not an IP address", id="bad IP"),
        pytest.param(
            {"lbprovider.io/ips": "10.0.0.1,10.0.0.2"}, "one address per family", id="two IPv4"
        ),
        pytest.param({"lbprovider.io/pool": "Not_A_Pool"}, "not a pool name", id="bad pool name"),
        pytest.param(
            {"lbprovider.io/timeout-server": "ten"}, "timeout-server", id="non-numeric timeout"
        ),
        pytest.param({"lbprovider.io/timeout-client": "25h"}, "at most 24h", id="timeout too long"),
        pytest.param(
            {"lbprovider.io/proxy-protocol": "v3"}, "proxy-protocol", id="bad proxy protocol"
        ),
        pytest.param(
            {"lbprovider.io/balance": "static-rr"}, "balance", id="balance not runtime safe"
        ),
        pytest.param({"lbprovider.io/maxconn": "-1"}, "maxconn", id="negative maxconn"),
        pytest.param({"lbprovider.io/sharing-key": "a b"}, "sharing key", id="space in key"),
    ],
)
def test_invalid_values_become_problems(annotations: dict[str, str], fragment: str) -> None:
    problems = parse_options(svc(annotations)).problems
    assert problems and fragment in problems[0]


def test_fleet_options_parsed_for_the_record() -> None:
    opts = parse_options(
        svc(
            {
                "lbprovider.io/proxy-protocol": "V2",
                "lbprovider.io/timeout-client": "5m",
                "lbprovider.io/timeout-connect": "500ms",
                "lbprovider.io/balance": "leastconn",
                "lbprovider.io/maxconn": "1000",
            }
        )
    )
    record = opts.as_record({"team": "a"})
    assert record["proxy_protocol"] == "v2"
    assert (record["timeout_client_ms"], record["timeout_connect_ms"]) == (300_000, 500)
    assert record["timeout_server_ms"] is None
    assert (record["balance"], record["maxconn"]) == ("leastconn", 1000)
    assert record["namespace_labels"] == {"team": "a"}


def test_foreign_ips_ignore_ours_and_garbage() -> None:
    assert foreign_ips(svc({"lbprovider.io/ips": "10.0.0.1"})) == ()
    assert foreign_ips(svc({"metallb.io/loadBalancerIPs": "x, 10.0.0.2"})) == ("10.0.0.2",)


def test_needs_update_like_occm() -> None:
    base = svc({"a": "1"}, type="LoadBalancer", ports=[{"port": 80, "protocol": "TCP"}])
    relabelled = {**base, "metadata": {**base["metadata"], "labels": {"tier": "x"}}}
    annotated = {**base, "metadata": {**base["metadata"], "annotations": {"a": "2"}}}
    ranges = {**base, "spec": {**base["spec"], "loadBalancerSourceRanges": ["10.0.0.0/8"]}}
    assert not needs_update(base, relabelled)
    assert needs_update(base, annotated)
    assert needs_update(base, ranges)
