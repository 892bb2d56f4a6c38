"""monitoring/ checked without a Docker engine: Prometheus scrapes the API and every
worker where compose serves their metrics, and the Grafana dashboard asks only for metrics
the code defines."""

from __future__ import annotations

import json
import re

import yaml

from tests.service_stack import REPO

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
PROMETHEUS = yaml.safe_load((REPO / "monitoring" / "prometheus.yml").read_text())
DASHBOARD = json.loads((REPO / "monitoring/grafana/dashboards/gistnet.json").read_text())


def _targets(job: str) -> list[str]:
    """host:port of a job's static targets, and of the names it resolves by DNS (every
    replica of a scaled service)."""
    (config,) = [c for c in PROMETHEUS["scrape_configs"] if c["job_name"] == job]
    static = [t for group in config.get("static_configs", []) for t in group["targets"]]
    looked_up = [
        f"{name}:{group['port']}"
        for group in config.get("dns_sd_configs", [])
        for name in group["names"]
    ]
    return static + looked_up


def test_prometheus_scrapes_the_api_with_the_key_file_compose_writes():
    (config,) = [c for c in PROMETHEUS["scrape_configs"] if c["job_name"] == "gistnet-api"]
    assert config["metrics_path"] == "/metrics"
    assert _targets("gistnet-api") == ["api:8000"]
    assert "8000:8000" in SERVICES["api"]["ports"]
    key_file = config["authorization"]["credentials_file"]
    assert key_file in " ".join(SERVICES["prometheus"]["entrypoint"])
    mounted = {v.split(":")[1] for v in SERVICES["prometheus"]["volumes"]}
    assert "/etc/prometheus/config/prometheus.yml" in mounted


def test_prometheus_scrapes_every_worker_on_its_metrics_port():
    workers = {name for name, s in SERVICES.items() if "worker" in s.get("command", [])}
    assert workers == {"worker-prep", "worker-train"}
    expected = {
        f"{name}:{SERVICES[name]['environment']['GISTNET_WORKER_METRICS_PORT']}" for name in workers
    }
    assert set(_targets("gistnet-workers")) == expected


def test_the_grafana_dashboard_asks_only_for_metrics_the_code_defines():
    source = (REPO / "api/metrics.py").read_text() + (REPO / "workers/metrics.py").read_text()
    defined = set(re.findall(r'"(gistnet_[a-z_]+)"', source))
    asked = {
        re.sub(r"_(total|bucket|sum|count)$", "", name)
        for panel in DASHBOARD["panels"]
        for target in panel["targets"]
        for name in re.findall(r"gistnet_[a-z_]+", target["expr"])
    }
    assert asked and asked <= defined, sorted(asked - defined)
    mounted = {v.split(":")[1] for v in SERVICES["grafana"]["volumes"]}
    assert {"/etc/grafana/provisioning", "/var/lib/grafana/dashboards"} <= mounted
