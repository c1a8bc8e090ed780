"""The ``lbprovider`` command: one entry point for every process the project runs."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from lbprovider.config import get_settings
from lbprovider.logs import setup_logging

app = typer.Typer(no_args_is_help=True, help="LoadBalancer provider for bare-metal Kubernetes.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema management.")
token_app = typer.Typer(no_args_is_help=True, help="API tokens.")
app.add_typer(db_app, name="db")
app.add_typer(token_app, name="token")

logger = logging.getLogger(__name__)


@app.callback()
def _main() -> None:
    settings = get_settings()
    setup_logging(settings.log_level, json_logs=settings.log_json)


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply migrations up to REVISION (default: head) on LBP_DATABASE_URL."""
    from lbprovider.db.migrate import upgrade

    upgrade(get_settings().database_url, revision)
    typer.echo(f"database at {revision}")


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option(help="Unique token name, shown in audit rows.")],
    scope: Annotated[
        list[str], typer.Option(help="read, write, admin or agent; repeat for several.")
    ],
    host: Annotated[str | None, typer.Option(help="Fleet host name (agent tokens).")] = None,
    days: Annotated[int | None, typer.Option(help="Expire after this many days.")] = None,
) -> None:
    """Create a token (e.g. the first admin token) and print its secret once."""
    from lbprovider.db.session import get_engine, session_factory, transaction
    from lbprovider.services.context import Actor
    from lbprovider.services.errors import DomainError
    from lbprovider.services.tokens import create_token

    expires = datetime.now(UTC) + timedelta(days=days) if days else None
    try:
        with transaction(session_factory(get_engine())) as session:
            _, secret = create_token(
                session=session,
                name=name,
                scopes=scope,
                host=host,
                expires_at=expires,
                actor=Actor("cli"),
            )
    except DomainError as e:
        typer.echo(f"error: {e.detail}", err=True)
        raise typer.Exit(2) from e
    typer.echo(secret)


@app.command()
def serve(
    listen: Annotated[str | None, typer.Option(help="host:port (default LBP_LISTEN).")] = None,
) -> None:
    """Run the REST API and dashboard (and the controller when a cluster is configured)."""
    from lbprovider.server import run_server

    run_server(get_settings(), listen=listen)


@app.command()
def controller(
    metrics_listen: Annotated[
        str | None,
        typer.Option(
            help="host:port of /metrics and /healthz (default LBP_CONTROLLER_METRICS_LISTEN)."
        ),
    ] = None,
) -> None:
    """Run the Kubernetes controller alone (leader-elected; cluster from LBP_KUBECONFIG,
    in-cluster or ~/.kube/config; database from LBP_DATABASE_URL, migrated with `db upgrade`)."""
    from lbprovider.controller.runner import run_controller

    settings = get_settings()
    if metrics_listen:
        settings = settings.model_copy(update={"controller_metrics_listen": metrics_listen})
    run_controller(settings)


@app.command()
def agent() -> None:
    """Run the fleet agent of this HAProxy host: pull its state from LBP_AGENT_API_URL with
    LBP_AGENT_TOKEN, serve it through a supervised HAProxy, report health. HAProxy keeps
    running when the agent exits; the next agent attaches to it."""
    import signal

    from lbprovider.agent.loop import Agent, AgentConfig

    runner = Agent(AgentConfig.from_settings(get_settings()))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: runner.stop())
    runner.start()
    try:
        runner.run()
    finally:
        runner.close()


@app.command()
def lab(
    listen: Annotated[str, typer.Option(help="host:port of the API and dashboard.")] = (
        "127.0.0.1:8080"
    ),
    state_dir: Annotated[str, typer.Option(help="Where the lab keeps its files (wiped).")] = ".lab",
    kube_version: Annotated[str, typer.Option(help="Lab API server version, 1.28+.")] = "1.30",
) -> None:
    """Run the local lab: lab Kubernetes API server, serve (SQLite), one agent with a real
    haproxy on loopback, two demo nodes and a demo LoadBalancer Service."""
    import signal
    import threading
    from pathlib import Path

    from lbprovider.labstack import LabOptions, LabStack

    stack = LabStack(
        LabOptions(state_dir=Path(state_dir), listen=listen, kube_version=kube_version)
    )
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    typer.echo("lab: starting (lab API server, serve, agent + haproxy, demo nodes)...")
    info = stack.start()
    try:
        typer.echo(
            f"""
lbprovider lab is up.

  dashboard   {info.dashboard_url}   (sign in with the admin token)
  admin token {info.admin_token}
  kubeconfig  {info.kubeconfig}
              kubectl --kubeconfig {info.kubeconfig} get svc -A
  demo        {info.curl}
              (Service demo/hello got {info.service_ip} from pool 'demo'; HAProxy carries the
               traffic to the NodePorts of two demo nodes)

Ctrl-C stops everything."""
        )
        done.wait()
    finally:
        stack.stop()


def main() -> None:
    app()
