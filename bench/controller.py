"""Controller benchmark on the lab API server (separate processes: API server, controller).

(a) create -> IP in status, against a bare status PATCH round trip measured in the same run,
    with 0 and with N existing Services (goal <= 3x);
(b) cold start with N Services: IP changes (must be 0), Kubernetes writes, and time from
    process start to a drained start-up backlog (goal <= 30 s);
(c) controller RSS at N Services (goal <= 300 MB).

    .venv/bin/python bench/controller.py [--services 10000] [--samples 30] [--db sqlite|postgres]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kubernetes import client as k8s_client  # noqa: E402

from lbprovider.config import Settings  # noqa: E402
from lbprovider.db.migrate import upgrade  # noqa: E402
from lbprovider.db.session import make_engine, session_factory, transaction  # noqa: E402
from lbprovider.kube.client import load_api_client  # noqa: E402
from lbprovider.services.context import Actor  # noqa: E402
from lbprovider.services.pools import PoolFields, create_pool  # noqa: E402

NS = "bench"
MERGE = "application/merge-patch+json"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_lab(tmp: Path) -> tuple[subprocess.Popen[bytes], Path]:
    port = free_port()
    kubeconfig = tmp / "kubeconfig"
    code = (
        "from lbprovider.lab.apiserver import run_lab_apiserver; "
        f"run_lab_apiserver('127.0.0.1', {port}, '1.30', {str(kubeconfig)!r})"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not kubeconfig.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("lab API server did not start")
        time.sleep(0.1)
    return proc, kubeconfig


def db_url(kind: str, tmp: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp / 'bench.db'}"
    out = subprocess.run(
        ["bash", str(ROOT / "scripts/postgres.sh")], check=True, capture_output=True, text=True
    )
    url = out.stdout.strip().splitlines()[-1]
    from sqlalchemy import text

    admin = make_engine(url)
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.execute(text("DROP DATABASE IF EXISTS lbprovider_ctl_bench WITH (FORCE)"))
        c.execute(text("CREATE DATABASE lbprovider_ctl_bench"))
    admin.dispose()
    return url.rsplit("/", 1)[0] + "/lbprovider_ctl_bench"


def prepare_db(url: str) -> None:
    upgrade(url)
    engine = make_engine(url)
    with transaction(session_factory(engine)) as s:
        create_pool(
            session=s, data=PoolFields(name="bench", ranges=["10.200.0.0/16"]), actor=Actor("bench")
        )
    engine.dispose()


def start_controller(kubeconfig: Path, url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "LBP_KUBECONFIG": str(kubeconfig),
        "LBP_DATABASE_URL": url,
        "LBP_LEASE_NAMESPACE": NS,
        "LBP_LOG_LEVEL": "INFO",
        # Not the default 127.0.0.1:9101: another controller on the machine may hold it.
        "LBP_CONTROLLER_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "lbprovider", "controller"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)


def log_event(log: Path, event: str, after: int = 0) -> dict[str, Any] | None:
    text = log.read_text(errors="replace")[after:]
    for line in text.splitlines():
        if f'"event": "{event}"' in line:
            found: dict[str, Any] = json.loads(line)
            return found
    return None


def body(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": NS},
        # 10,000 Services would exhaust the 2,768 NodePorts of the default range.
        "spec": {
            "type": "LoadBalancer",
            "allocateLoadBalancerNodePorts": False,
            "ports": [{"port": 80, "protocol": "TCP"}],
        },
    }


def create_ip_latency(core: Any, name: str) -> float:
    """Seconds from sending the create to the bench's watch showing an IP in status.

    The watch is open before the clock starts (its response headers are in: the server has
    registered it), and its lines are read as JSON, as the controller's caches read theirs:
    neither opening the watch nor the client's model classes are part of what is measured."""
    stream = core.list_namespaced_service(
        NS,
        watch=True,
        field_selector=f"metadata.name={name}",
        timeout_seconds=60,
        _preload_content=False,
    )
    try:
        started = time.perf_counter()
        _read(core.create_namespaced_service(NS, body(name), _preload_content=False))
        for line in _lines(stream):
            event = json.loads(line)
            if event.get("type") == "ERROR":
                raise RuntimeError(f"watch of {name} failed: {event.get('object')}")
            obj = event.get("object") or {}
            ingress = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress")
            if ingress:
                return time.perf_counter() - started
    finally:
        stream.close()
    raise RuntimeError(f"{name} got no IP within 60 s")


def _lines(response: Any) -> Iterator[bytes]:
    """The newline-separated lines of a watch stream, as they arrive."""
    buffer = b""
    for chunk in response.stream(amt=None, decode_content=True):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        yield from (line for line in lines if line.strip())


def _read(response: Any) -> None:
    """Read the body of a ``_preload_content=False`` answer: that puts its connection back in
    the client's pool (as any client reusing keep-alive connections does). Left unread, the
    next request opens a new TCP connection (and the lab server a new thread for it)."""
    response.data  # noqa: B018


def patch_round_trip(core: Any, name: str) -> float:
    started = time.perf_counter()
    _read(
        core.patch_namespaced_service_status(
            name,
            NS,
            {"status": {"conditions": [_condition(started)]}},
            _content_type=MERGE,
            _preload_content=False,
        )
    )
    return time.perf_counter() - started


def _condition(stamp: float) -> dict[str, Any]:
    return {
        "type": "bench.example/Probe",
        "status": "True",
        "reason": "Probe",
        "message": str(stamp),
        "lastTransitionTime": "2024-01-01T00:00:00Z",
    }


def measure_a(core: Any, label: str, samples: int) -> dict[str, float]:
    _read(core.create_namespaced_service(NS, body(f"probe-{label}"), _preload_content=False))
    patch = [patch_round_trip(core, f"probe-{label}") for _ in range(samples)]
    create = [create_ip_latency(core, f"lat-{label}-{i}") for i in range(samples)]
    p50c, p50p = statistics.median(create), statistics.median(patch)
    return {
        "create_to_ip_p50_ms": p50c * 1000,
        "create_to_ip_p95_ms": sorted(create)[int(0.95 * (len(create) - 1))] * 1000,
        "patch_p50_ms": p50p * 1000,
        "ratio": p50c / p50p,
    }


def create_one(core: Any, name: str) -> None:
    for attempt in range(5):
        try:
            _read(core.create_namespaced_service(NS, body(name), _preload_content=False))
            return
        except k8s_client.ApiException as exc:
            if exc.status == 409:
                return  # an earlier attempt got through before the connection dropped
            time.sleep(0.2 * (attempt + 1))
        except Exception:  # the lab server resets connections under load: retry
            time.sleep(0.2 * (attempt + 1))
    raise RuntimeError(f"could not create {name}")


def bulk_create(core: Any, count: int) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: create_one(core, f"svc-{i:05d}"), range(count)))
    return time.perf_counter() - started


def service_ips(core: Any) -> dict[str, tuple[str, str]]:
    """name -> (first status IP, resourceVersion) of every Service in the namespace."""
    out: dict[str, tuple[str, str]] = {}
    token = None
    while True:
        kwargs: dict[str, Any] = {"limit": 2000, "_preload_content": False}
        if token:
            kwargs["_continue"] = token
        page = json.loads(core.list_namespaced_service(NS, **kwargs).data)
        for item in page["items"]:
            ingress = (item.get("status") or {}).get("loadBalancer", {}).get("ingress") or []
            ip = ingress[0]["ip"] if ingress else ""
            out[item["metadata"]["name"]] = (ip, item["metadata"]["resourceVersion"])
        token = page["metadata"].get("continue")
        if not token:
            return out


def wait_all_ips(core: Any, prefix: str, count: int, timeout: float) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        ips = service_ips(core)
        done = sum(1 for n, (ip, _) in ips.items() if n.startswith(prefix) and ip)
        if done >= count:
            return time.perf_counter() - started
        time.sleep(1.0)
    raise RuntimeError(f"only {done}/{count} Services got an IP within {timeout:.0f} s")


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmpdir:
        run(Path(tmpdir), args.services, args.samples, args.db)


def run(tmp: Path, count: int, samples: int, db: str) -> None:
    lab, kubeconfig = start_lab(tmp)
    try:
        measure(tmp, kubeconfig, count, samples, db)
    finally:
        stop(lab)


def measure(tmp: Path, kubeconfig: Path, count: int, samples: int, db: str) -> None:
    url = db_url(db, tmp)
    prepare_db(url)
    api = load_api_client(Settings(kubeconfig=str(kubeconfig)))
    core = k8s_client.CoreV1Api(api)
    _read(core.create_namespace({"metadata": {"name": NS}}, _preload_content=False))
    log = tmp / "controller.log"
    ctl = start_controller(kubeconfig, url, log)
    try:
        while log_event(log, "controller_active") is None:
            if ctl.poll() is not None:
                raise RuntimeError(f"controller exited: see {log}")
            time.sleep(0.1)
        print(f"db={db} services={count} samples={samples}")
        a0 = measure_a(core, "empty", samples)
        print("(a) 0 existing:      " + _fmt(a0))

        created = bulk_create(core, count)
        settled = wait_all_ips(core, "svc-", count, timeout=3600)
        print(
            f"    bulk: created {count} in {created:.1f} s; all had an IP "
            f"{settled:.1f} s after the last create ({count / (created + settled):.0f}/s overall)"
        )
        an = measure_a(core, "full", samples)
        print(f"(a) {count} existing: " + _fmt(an))
        print(f"(c) controller RSS at {count} Services (after the load): {rss_mb(ctl.pid):.0f} MB")
    finally:
        stop(ctl)

    before = service_ips(core)
    mark = len(log.read_text(errors="replace"))
    started = time.perf_counter()
    ctl = start_controller(kubeconfig, url, log)
    try:
        while (converged := log_event(log, "controller_converged", mark)) is None:
            if ctl.poll() is not None:
                raise RuntimeError("controller exited")
            time.sleep(0.05)
        wall = time.perf_counter() - started
        active = log_event(log, "controller_active", mark) or {}
        after = service_ips(core)
        changed = sum(1 for n, (ip, _) in before.items() if after.get(n, ("", ""))[0] != ip)
        rewritten = sum(1 for n, (_, rv) in before.items() if after.get(n, ("", ""))[1] != rv)
        print(
            f"(b) cold start with {len(before)} Services: IP changes {changed}, Services rewritten "
            f"{rewritten}, writes {converged['writes']}; steady state {wall:.1f} s after process "
            f"start ({converged['seconds']:.1f} s after becoming leader); "
            f"{active.get('settled', 0)} of {active.get('services', 0)} found settled by the "
            "bulk check"
        )
        print(
            f"(c) controller RSS at {len(before)} Services (fresh start): {rss_mb(ctl.pid):.0f} MB"
        )
    finally:
        stop(ctl)
        api.close()


def _fmt(m: dict[str, float]) -> str:
    return (
        f"create->IP p50 {m['create_to_ip_p50_ms']:.1f} ms (p95 {m['create_to_ip_p95_ms']:.1f}), "
        f"bare status PATCH p50 {m['patch_p50_ms']:.1f} ms, ratio {m['ratio']:.1f}x"
    )


if __name__ == "__main__":
    main()
