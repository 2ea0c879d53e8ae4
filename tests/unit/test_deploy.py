"""The deployment files (docker-compose.yml, the Dockerfile, deploy/): no Docker engine runs here,
so their structure is checked instead: the services and their ports, Prometheus's scrape target
against Predis's admin address, the mounted paths that exist, Grafana's provisioned data source and
dashboard. (That the dashboard's metrics are the proxy's is checked against a real scrape in
tests/e2e/test_metrics.py.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from proxy.config import parse_listen

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_compose_services_ports_and_scrape_target() -> None:
    services = compose()["services"]
    assert set(services) == {"redis", "predis", "prometheus", "grafana"}
    predis = services["predis"]
    assert flag(predis["command"], "--upstream") == "redis://redis:6379"
    admin_host, admin_port = parse_listen(flag(predis["command"], "--admin"))
    assert admin_host == "0.0.0.0"  # (in its container: Prometheus's container must reach it)
    # Every published port is on the host's loopback only.
    for service in services.values():
        for mapping in service.get("ports", []):
            assert mapping.startswith("127.0.0.1:"), mapping
    assert f"127.0.0.1:{admin_port}:{admin_port}" in predis["ports"]
    assert "127.0.0.1:6380:6380" in predis["ports"]
    # Prometheus scrapes the admin listener at the compose service's name and admin port.
    prom = services["prometheus"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in prom["volumes"]}
    assert mounts["./deploy/prometheus.yml"] == flag_value(prom["command"], "--config.file")
    config = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"predis:{admin_port}"]
    # Every mounted path exists in the repository.
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert (ROOT / source).exists(), volume
    # The image publishes both ports and runs the proxy.
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(rf"^EXPOSE .*\b6380\b.*\b{admin_port}\b", dockerfile, re.M)
    assert '"predis", "serve"' in dockerfile


def flag_value(command: list[str], name: str) -> str:
    (value,) = [c.split("=", 1)[1] for c in command if c.startswith(name + "=")]
    return value


def test_grafana_is_provisioned_with_the_dashboard() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"]}
    provisioning = ROOT / "deploy/grafana/provisioning"
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards/predis.yml").read_text())["providers"]
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(provider["options"]["path"] + "/")
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards" / Path(home).name).read_text())
    assert dashboard["uid"] == "predis" and dashboard["panels"]
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == source["uid"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"])
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {panel['title']!r} overlaps another"
        cells |= mine
