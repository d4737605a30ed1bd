"""Drives a master's Marathon API with marathon-python (PyPI `marathon`, not our code):
create an app from Marathon JSON, scale it, list its tasks, restart it, delete it.

Usage: marathon_client.py URL TOKEN CA_FILE APP_ID
Prints one line per step; exits non-zero on the first failure.
"""
import sys
import time

from marathon import MarathonClient
from marathon.models import MarathonApp

url, token, ca, app_id = sys.argv[1:5]
c = MarathonClient([url], auth_token=token, verify=ca)


def wait(what, ok, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = ok()
        if v:
            return v
        time.sleep(0.5)
    raise SystemExit(f"timed out: {what}")


app = MarathonApp(cmd="sleep 1000", cpus=0.1, mem=32, instances=1)
created = c.create_app(app_id, app)
assert created and created.id == app_id, created
print("created", created.id, created.instances)

wait("1 task running", lambda: len([t for t in c.list_tasks(app_id) if t.state == "TASK_RUNNING"]) == 1)
print("running 1")
# As with Marathon, an app is locked while a deployment of it runs (409 without force):
# scripts wait for the deployment to finish.
wait("the create deployment done", lambda: not c.get_app(app_id).deployments)

d = c.scale_app(app_id, instances=3)
assert "deploymentId" in d, d
tasks = wait("3 tasks running", lambda: (lambda t: t if len(t) == 3 else None)(
    [t for t in c.list_tasks(app_id) if t.state == "TASK_RUNNING"]))
print("scaled to", len(tasks), sorted(t.id for t in tasks))
assert c.get_app(app_id).instances == 3
wait("the scale deployment done", lambda: not c.get_app(app_id).deployments)
assert any(a.id == app_id for a in c.list_apps())

before = {t.id for t in tasks}
d = c.restart_app(app_id)
assert "deploymentId" in d, d
wait("restarted: 3 new tasks running", lambda: (lambda t: len(t) == 3 and not (set(x.id for x in t) & before))(
    [t for t in c.list_tasks(app_id) if t.state == "TASK_RUNNING"]), timeout=90)
print("restarted")

assert c.list_deployments() is not None
info = c.get_info()
print("leader", info.leader)

c.delete_app(app_id)
wait("app gone", lambda: all(a.id != app_id for a in c.list_apps()))
print("deleted")
