"""Follows /v2/events with marathon-python's event_stream (PyPI `marathon`, not our
code) while it creates an app, and checks the app's task is reported running and its
deployment successful; then deletes the app and waits for app_terminated_event.

Usage: marathon_events.py URL TOKEN CA_FILE APP_ID
marathon-python's event stream sends HTTP Basic credentials only, so the token goes as
the password.
"""
import queue
import sys
import threading
import time

from marathon import MarathonClient
from marathon.models import MarathonApp

url, token, ca, app_id = sys.argv[1:5]
api = MarathonClient([url], auth_token=token, verify=ca)
bus = MarathonClient([url], username="token", password=token, verify=ca)
seen = queue.Queue()


def follow():
    for e in bus.event_stream():
        seen.put(e)


threading.Thread(target=follow, daemon=True).start()


def wait_for(what, ok, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            e = seen.get(timeout=max(0.1, deadline - time.time()))
        except queue.Empty:
            break
        print("event", e.event_type, getattr(e, "app_id", ""), getattr(e, "task_status", ""), flush=True)
        if ok(e):
            return e
    raise SystemExit(f"timed out waiting for {what}")


wait_for("event_stream_attached", lambda e: e.event_type == "event_stream_attached")
api.create_app(app_id, MarathonApp(cmd="sleep 1000", cpus=0.1, mem=32, instances=1))
info = wait_for("deployment_info", lambda e: e.event_type == "deployment_info")
running = wait_for(
    "the app's task running",
    lambda e: e.event_type == "status_update_event" and e.app_id == app_id and e.task_status == "TASK_RUNNING",
)
print("running", running.task_id, flush=True)
wait_for("deployment_success", lambda e: e.event_type == "deployment_success" and e.id == info.plan.id)
api.delete_app(app_id)
wait_for("app_terminated_event", lambda e: e.event_type == "app_terminated_event" and e.app_id == app_id)
print("followed", flush=True)
