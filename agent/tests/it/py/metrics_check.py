"""Reads a master's /metrics with prometheus-client's text-format parser (PyPI
`prometheus-client`, not our code), checks the families a scrape must have, and prints
the values the test compares, as JSON.

Usage: metrics_check.py URL TOKEN CA_FILE
"""
import json
import ssl
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

url, token, ca = sys.argv[1:4]
req = urllib.request.Request(f"{url}/metrics")
req.add_header("Authorization", f"Bearer {token}")
with urllib.request.urlopen(req, context=ssl.create_default_context(cafile=ca), timeout=10) as r:
    ctype = r.headers.get("Content-Type", "")
    text = r.read().decode()
assert ctype.startswith("text/plain"), ctype

families = {f.name: f for f in text_string_to_metric_families(text)}
# The parser names a counter family without its _total suffix.
required = {
    "cluster_server_has_leader": "gauge",
    "cluster_server_leader_changes_seen": "counter",
    "cluster_disk_wal_fsync_duration_seconds": "histogram",
    "grpc_server_handled": "counter",
    "cluster_agents": "gauge",
    "cluster_tasks": "gauge",
    "cluster_ipam_addresses_used": "gauge",
    "cluster_scheduler_placement_duration_seconds": "histogram",
    "cluster_leases": "gauge",
    "cluster_watchers": "gauge",
}
for name, kind in required.items():
    assert name in families, f"{name} missing; have {sorted(families)}"
    assert families[name].type == kind, f"{name} is a {families[name].type}, not a {kind}"


def value(name, sample=None, **labels):
    for s in families[name].samples:
        if (sample is None or s.name == sample) and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


handled = [s for s in families["grpc_server_handled"].samples if s.name == "grpc_server_handled_total"]
assert handled and all({"grpc_service", "grpc_method", "grpc_code"} <= set(s.labels) for s in handled), handled[:3]
fsyncs = value("cluster_disk_wal_fsync_duration_seconds", "cluster_disk_wal_fsync_duration_seconds_count")
print(json.dumps({
    "leader_changes": value("cluster_server_leader_changes_seen", "cluster_server_leader_changes_seen_total"),
    "has_leader": value("cluster_server_has_leader"),
    "fsyncs": fsyncs,
    "agents_active": value("cluster_agents", state="active"),
    "tasks_healthy": value("cluster_tasks", state="healthy") or 0,
    "grpc_ok": sum(s.value for s in handled if s.labels["grpc_code"] == "OK"),
    "ipam_used": value("cluster_ipam_addresses_used", network="overlay"),
}))
