#!/usr/bin/env python3
"""Keeps HAProxy's backends equal to a cluster's healthy tasks.

It long-polls a master's discovery feed (GET /v1/discovery?index=N&wait=30s on the
HTTP face), writes an HAProxy configuration with one frontend per routed service and
one server per healthy task, and reloads HAProxy when that configuration changes.
HAProxy runs in master-worker mode under this script; a reload (SIGUSR2) lets the old
workers finish their connections.

Usage:
  cluster-haproxy.py --url https://MASTER:HTTP_PORT --token TOKEN --cacert CA \\
      --route /web=127.0.0.1:8080 [--route /api=127.0.0.1:8081] \\
      --config /run/cluster-haproxy.cfg [--haproxy /usr/sbin/haproxy]

TOKEN is a reader token (`cluster token issue-http --role reader`). Several --url
flags name several masters: when one does not answer, the next is asked. Only the
Python standard library is used.
"""
import argparse
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request


def fetch(urls, token, ctx, index):
    """The discovery answer after `index` (or now), from the first master that answers."""
    last_error = None
    for url in urls:
        q = f"?index={index}&wait=30s" if index is not None else ""
        req = urllib.request.Request(f"{url.rstrip('/')}/v1/discovery{q}")
        req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=40) as r:
                return json.load(r)
        except (urllib.error.URLError, OSError, ValueError) as e:
            last_error = e
    raise ConnectionError(f"no master answered: {last_error}")


def render(services, routes):
    """HAProxy's configuration for the routed services, deterministic for a given state."""
    out = [
        "# Written by cluster-haproxy.py; edits are overwritten.",
        "global",
        "    maxconn 4096",
        "defaults",
        "    mode http",
        "    timeout connect 2s",
        "    timeout client 30s",
        "    timeout server 30s",
        "    retries 2",
        "    option redispatch",
    ]
    for service, bind in routes:
        name = service.strip("/").replace("/", "_") or "root"
        out += [f"frontend fe_{name}", f"    bind {bind}", f"    default_backend be_{name}"]
        out += [f"backend be_{name}", "    balance roundrobin"]
        eps = services.get(service, {}).get("endpoints", [])
        for e in eps:
            if not e.get("ports"):
                continue
            server = e["taskId"].replace(".", "_")
            out.append(f"    server {server} {e['address']}:{e['ports'][0]} check inter 1s fall 2 rise 1")
    return "\n".join(out) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", action="append", required=True, help="a master's HTTP face, https://HOST:PORT")
    p.add_argument("--token", required=True, help="a token from `cluster token issue-http`")
    p.add_argument("--cacert", required=True, help="the cluster's CA certificate (tls/ca.crt)")
    p.add_argument("--route", action="append", required=True, metavar="SERVICE=BIND",
                   help="route a service to a listening address, e.g. /web=127.0.0.1:8080")
    p.add_argument("--config", required=True, help="where to write HAProxy's configuration")
    p.add_argument("--haproxy", default="haproxy", help="the haproxy binary")
    a = p.parse_args()
    routes = []
    for r in a.route:
        service, sep, bind = r.partition("=")
        if not sep or not service.startswith("/"):
            p.error(f"--route {r!r}: use /SERVICE=HOST:PORT")
        routes.append((service, bind))
    ctx = ssl.create_default_context(cafile=a.cacert)
    proxy = None
    written = None
    index = None

    def stop(*_):
        if proxy and proxy.poll() is None:
            proxy.terminate()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        try:
            answer = fetch(a.url, a.token, ctx, index)
        except ConnectionError as e:
            print(f"cluster-haproxy: {e}; retrying in 1 s", file=sys.stderr, flush=True)
            time.sleep(1)
            continue
        index = answer["index"]
        cfg = render(answer["services"], routes)
        if cfg != written:
            tmp = a.config + ".tmp"
            with open(tmp, "w") as f:
                f.write(cfg)
            os.replace(tmp, a.config)
            written = cfg
            servers = cfg.count("    server ")
            if proxy is None or proxy.poll() is not None:
                proxy = subprocess.Popen([a.haproxy, "-W", "-db", "-f", a.config])
                print(f"cluster-haproxy: started haproxy with {servers} server(s) at index {index}", flush=True)
            else:
                proxy.send_signal(signal.SIGUSR2)
                print(f"cluster-haproxy: reloaded haproxy with {servers} server(s) at index {index}", flush=True)


if __name__ == "__main__":
    main()
