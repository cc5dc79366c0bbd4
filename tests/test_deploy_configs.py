"""deploy/: every file parses, and every metric the dashboard plots is one the service exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import generate_latest

from service.metrics import ServiceMetrics

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_yaml_files_parse():
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert len(files) >= 5
    for path in files:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert documents, f"{path} is empty"


def test_dashboard_metrics_exist_in_the_service():
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "ptychoscan.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {re.sub(r"_(bucket|count|sum)$", "", name) for e in exprs for name in re.findall(r"ptychoscan_[a-z_]+", e)}
    exported = generate_latest(ServiceMetrics().registry).decode()
    families = set(re.findall(r"^# TYPE (ptychoscan_[a-z_]+) ", exported, flags=re.M))
    # Counters are exported as <name>_total with the family named without it in some client versions.
    families |= {f"{name}_total" for name in families}
    missing = sorted(used - families)
    assert not missing, f"dashboard plots metrics the service does not export: {missing}"


def test_compose_and_k8s_point_at_the_health_endpoints():
    k8s = list(yaml.safe_load_all((DEPLOY / "k8s" / "ptychoscan.yaml").read_text()))
    container = next(d for d in k8s if d and d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    assert prom["scrape_configs"][0]["metrics_path"] == "/metrics"
