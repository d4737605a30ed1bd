"""Drives a master's Chronos API with chronos-python (PyPI `chronos-python`, not our
code): add a scheduled job and a dependent one, list and search them, run the parent,
see the child run after it, delete both.

Usage: chronos_client.py HOST:PORT TOKEN CA_FILE
Prints one line per step; exits non-zero on the first failure.
"""
import os
import sys
import time

hostport, token, ca = sys.argv[1:4]
os.environ["HTTPLIB2_CA_CERTS"] = ca
import chronos  # noqa: E402  (httplib2 reads the CA path when imported)

c = chronos.connect([hostport], proto="https", extra_headers={"Authorization": f"Bearer {token}"})

parent = {
    "name": "extract", "command": "echo extracted", "owner": "ops@example.com",
    "schedule": "R/2100-01-01T00:00:00Z/P1D", "epsilon": "PT30S", "cpus": 0.1, "mem": 32, "disabled": False,
}
child = {
    "name": "load", "command": "echo loaded", "owner": "ops@example.com", "parents": ["extract"],
    "cpus": 0.1, "mem": 32, "disabled": False,
}
c.add(parent)
c.add(child)
names = sorted(j["name"] for j in c.list())
assert names == ["extract", "load"], names
print("added", names)
assert [j["name"] for j in c.search(name="ext")] == ["extract"]

parent["command"] = "echo extracted again"
c.update(parent)
assert [j["command"] for j in c.list() if j["name"] == "extract"] == ["echo extracted again"]
print("updated")

c.run("extract")
deadline = time.time() + 60
while time.time() < deadline:
    jobs = {j["name"]: j for j in c.list()}
    if jobs["extract"]["successCount"] == 1 and jobs["load"]["successCount"] == 1:
        break
    time.sleep(0.5)
else:
    raise SystemExit(f"timed out waiting for the parent and child runs: {c.list()}")
print("ran parent and child")

c.delete("load")
c.delete("extract")
assert c.list() == []
print("deleted")
