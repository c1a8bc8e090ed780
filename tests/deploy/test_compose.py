"""compose.yaml: the structure `docker compose up` needs, and every command it runs exists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from typer.main import get_command

from lbprovider.cli import app
from lbprovider.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return data


def test_services_and_dependencies() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "serve", "agent"}
    assert services["serve"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["agent"]["depends_on"]["serve"]["condition"] == "service_healthy"
    assert services["serve"]["build"] == "." and (ROOT / "Dockerfile").exists()
    assert services["agent"]["network_mode"] == "host"


def test_every_command_is_an_lbprovider_subcommand() -> None:
    commands = set(get_command(app).commands)  # type: ignore[attr-defined]
    for name in ("serve", "agent"):
        argv = compose()["services"][name]["command"]
        assert argv[0] in commands, f"{name} runs unknown subcommand {argv[0]!r}"


def test_every_lbp_variable_is_a_setting() -> None:
    fields = {f"LBP_{name.upper()}" for name in Settings.model_fields}
    for name, svc in compose()["services"].items():
        for var in svc.get("environment", {}):
            if var.startswith("LBP_"):
                assert var in fields, f"{name}: {var} is not a setting"


def test_serve_database_points_at_the_postgres_service() -> None:
    env = compose()["services"]["serve"]["environment"]
    pg = compose()["services"]["postgres"]["environment"]
    url = env["LBP_DATABASE_URL"]
    assert url.startswith("postgresql+psycopg://")
    assert (
        f"{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgres:5432/{pg['POSTGRES_DB']}" in url
    )


def test_dockerfile_is_multistage_slim_and_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.count("FROM ") >= 2 and "slim" in text
    assert "\nUSER 10001" in text and 'ENTRYPOINT ["lbprovider"]' in text
    assert "haproxy" in text, "the image runs the agent too"
