"""docker-compose.yml: `docker compose config` when Docker Compose is installed; otherwise (as in CI without
Docker) the YAML is parsed with PyYAML and its structure checked by hand."""

from __future__ import annotations

import shutil
import subprocess

import yaml

from tests.utils.servicekit import REPO

COMPOSE = REPO / "docker-compose.yml"


def _compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0


def test_compose_file_is_valid():
    if _compose_available():
        r = subprocess.run(
            ["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"], capture_output=True, text=True
        )
        assert r.returncode == 0, r.stderr
    # structural checks (always; the only check without Docker Compose)
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    assert set(services) == {"postgres", "redis", "migrate", "api", "worker"}
    for name in ("postgres", "redis", "api", "worker"):
        assert "healthcheck" in services[name], name
    assert services["migrate"]["command"] == ["skillkd", "migrate"]
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"] and gpu["count"] == 1
    env = services["worker"]["environment"]
    assert env["SKILLKD_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert env["SKILLKD_BROKER_URL"].startswith("redis://")
    assert (REPO / "Dockerfile").is_file()
