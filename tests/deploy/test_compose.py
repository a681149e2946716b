"""deploy/compose.yaml: the services the issue asks for, and every reference resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.helpers.project import DEPLOY, REPO

COMPOSE_FILE = DEPLOY / "compose.yaml"
INTERPOLATION = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::?[-?+]([^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with the defaults (the environment of a fresh checkout)."""
    return INTERPOLATION.sub(lambda m: m.group(2) or "", value)


def depends_on(service: dict) -> dict[str, dict]:
    deps = service.get("depends_on", {})
    return {name: {} for name in deps} if isinstance(deps, list) else deps


def bind_source(spec: str) -> str | None:
    """Host path of a short-syntax bind mount, None for a named volume."""
    source = spec.split(":", 1)[0]
    return source if source.startswith((".", "/", "~")) else None


def test_services_present(compose: dict) -> None:
    assert {"minio", "minio-init", "mlflow", "api", "prometheus", "grafana", "pipeline"} <= set(compose["services"])


def test_every_reference_is_defined(compose: dict) -> None:
    services = compose["services"]
    networks = set(compose.get("networks", {}))
    volumes = set(compose.get("volumes", {}))
    configs = set(compose.get("configs", {}))
    for name, service in services.items():
        for dep, cond in depends_on(service).items():
            assert dep in services, f"{name} depends on undefined service {dep}"
            assert dep != name
            assert cond.get("condition", "service_started") in {
                "service_started",
                "service_healthy",
                "service_completed_successfully",
            }
            if cond.get("condition") == "service_healthy":
                has_check = "healthcheck" in services[dep] or services[dep].get("build")
                assert has_check, f"{name} waits for {dep} to be healthy but {dep} has no health check"
        for net in service.get("networks", []):
            assert net in networks, f"{name} uses undefined network {net}"
        for vol in service.get("volumes", []):
            source = bind_source(vol)
            if source is None:
                assert vol.split(":")[0] in volumes, f"{name} uses undefined volume {vol}"
            else:
                assert (COMPOSE_FILE.parent / source).resolve().exists() or source == "../models", (
                    f"{name} mounts missing path {source}"
                )
        for cfg in service.get("configs", []):
            assert (cfg["source"] if isinstance(cfg, dict) else cfg) in configs
        for key in ("<<",):
            assert key not in service.get("environment", {}), "YAML merge key was not resolved"


def test_no_unused_definitions(compose: dict) -> None:
    services = compose["services"].values()
    used_volumes = {v.split(":")[0] for s in services for v in s.get("volumes", []) if not bind_source(v)}
    used_networks = {n for s in services for n in s.get("networks", [])}
    assert used_volumes == set(compose["volumes"])
    assert used_networks == set(compose["networks"])


def test_env_interpolations_have_defaults() -> None:
    """`docker compose up` must work without a .env file: every ${VAR} has a default."""
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    for match in re.finditer(r"(?<!\$)\$\{([^}]*)\}", text):
        assert ":-" in match.group(1), f"${{{match.group(1)}}} has no default"


def test_published_ports_are_loopback_only(compose: dict) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_builds_point_at_existing_dockerfiles(compose: dict) -> None:
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            context = (COMPOSE_FILE.parent / build["context"]).resolve()
            assert context == REPO, f"{name}: build context must be the repository root"
            assert (context / build["dockerfile"]).is_file()


def test_api_contract(compose: dict) -> None:
    api = compose["services"]["api"]
    assert api["build"]["dockerfile"] == "deploy/docker/serve.Dockerfile"
    env = api["environment"]
    assert env["HOST"] == "0.0.0.0" and str(env["PORT"]) == "8000"
    assert "RELOAD_TOKEN" in env
    assert env["AWS_ACCESS_KEY_ID"] and env["AWS_SECRET_ACCESS_KEY"], "the S3 credentials anchor merged"
    dvc_cfg = compose["configs"]["dvc-remote"]["content"]
    assert "endpointurl = http://minio:9000" in dvc_cfg


def test_bucket_job_creates_the_dvc_bucket(compose: dict) -> None:
    job = compose["services"]["minio-init"]
    assert job["depends_on"]["minio"]["condition"] == "service_healthy"
    assert job.get("restart") == "no"
    script = " ".join(job["command"])
    assert "mc mb --ignore-existing" in script
    dvc_bucket = interpolate(job["environment"]["DVC_BUCKET"])
    remote_url = re.search(r"url = s3://([^/\s]+)", (REPO / ".dvc" / "config").read_text()).group(1)
    assert dvc_bucket == remote_url, "the bucket job must create the bucket of the DVC remote"
    mlflow_bucket = interpolate(job["environment"]["MLFLOW_BUCKET"])
    mlflow_cmd = " ".join(compose["services"]["mlflow"]["entrypoint"])
    assert f"--artifacts-destination=s3://{mlflow_bucket}/" in interpolate(mlflow_cmd)
    assert compose["services"]["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"


def test_monitoring_mounts(compose: dict) -> None:
    prom = compose["services"]["prometheus"]
    config_mount = next(v for v in prom["volumes"] if v.endswith(":/etc/prometheus/prometheus.yml:ro"))
    config = yaml.safe_load((COMPOSE_FILE.parent / bind_source(config_mount)).read_text())
    api_job = next(j for j in config["scrape_configs"] if j["job_name"] == "greenr-api")
    assert api_job["static_configs"][0]["targets"] == ["api:8000"]
    assert any(v.endswith(":/etc/prometheus/rules:ro") for v in prom["volumes"])
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]

    grafana = compose["services"]["grafana"]
    mounts = {
        v.split(":")[1]: Path(COMPOSE_FILE.parent / v.split(":")[0]) for v in grafana["volumes"] if bind_source(v)
    }
    provisioning = mounts["/etc/grafana/provisioning"]
    provider = yaml.safe_load((provisioning / "dashboards" / "greenr.yml").read_text())
    dashboards_path = provider["providers"][0]["options"]["path"]
    assert dashboards_path in mounts, "the dashboard provider reads a folder compose does not mount"
    assert list(mounts[dashboards_path].glob("*.json")), "no dashboard JSON to provision"
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
